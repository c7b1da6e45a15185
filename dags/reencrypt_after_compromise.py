"""Full re-encryption after a suspected compromise, then the old key version is disabled.

Rewrapping is not enough when a data key or a key version may have leaked: whoever holds
the old material can still read the cells. This DAG

1. ``setup``: the embedded keystore and key ``alias/pii`` (created if absent), and a seeded
   dataset when none under ``<base>/encrypted/`` uses the key.
2. ``rotate_key``: records the current primary version as compromised (or takes the
   ``compromised_version`` param) and makes a new version primary.
3. ``reencrypt``: (after ``datasets_to_reencrypt`` lists them) one mapped task per dataset under the key,
   ``force=True``: new data keys under the new version for every file, every cell re-encrypted (resumable
   if interrupted). A plain dataset's files are swapped atomically; a Delta or Iceberg table gets new files
   and one commit through its own log, and its older snapshots keep the old files -- still under the old
   data keys -- until vacuumed: the ``vacuum_retention_hours`` param (opt-in; ``0`` after a compromise)
   vacuums / expires them in the same task, so the old data keys are then nowhere in the table
   (docs/TABLES.md, "Older snapshots hold old data keys"). Time travel to the older versions ends.
4. ``retire_compromised_version``: only when no dataset still has a data key under the
   compromised version, disable that version; then every dataset must still decrypt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_plugins.demo import (
    DEMO_KEY_URI,
    datasets_under_key,
    demo_settings,
    ensure_demo_key,
    resolve_base,
    seed_dataset,
)
from airflow_plugins.operators.spark_kms import ReencryptDatasetOperator

_KEY_REF = DEMO_KEY_URI.removeprefix("local://")

with DAG(
    dag_id="reencrypt_after_compromise",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["spark_kms", "example"],
    doc_md=__doc__,
    params={"compromised_version": Param(None, type=["null", "integer"],
                                         description="Key version to retire (default: the current primary)."),
            "vacuum_retention_hours": Param(None, type=["null", "number"], minimum=0,
                                            description="Tables: then vacuum / expire older snapshots with this "
                                                        "retention (0: crypto-shredding; default: no vacuum).")},
):

    @task(multiple_outputs=True)
    def setup() -> dict[str, Any]:
        settings = demo_settings(resolve_base())
        ensure_demo_key(settings["keystore"])
        if not datasets_under_key(settings["encrypted"], DEMO_KEY_URI):
            seed_dataset(f"{settings['encrypted']}/customers_archive", settings["kms_options"])
        settings["datasets"] = datasets_under_key(settings["encrypted"], DEMO_KEY_URI)
        return settings

    @task(multiple_outputs=True)
    def rotate_key(keystore: str, params: dict[str, Any] | None = None) -> dict[str, str]:
        from spark_kms.kms.local import LocalKms

        kms = LocalKms(keystore)
        chosen = (params or {}).get("compromised_version")
        compromised = str(chosen) if chosen is not None else kms.describe_key(_KEY_REF).primary_version
        return {"compromised_version": compromised, "new_version": str(kms.rotate_key(_KEY_REF))}

    @task
    def datasets_to_reencrypt(datasets: list[str]) -> list[str]:
        # Mapping needs a task's return value, not one of its named outputs.
        return list(datasets)

    settings = setup()
    rotation = rotate_key(settings["keystore"])

    reencrypt = ReencryptDatasetOperator.partial(
        task_id="reencrypt", mode="reencrypt", force=True, kms_options=settings["kms_options"],
        vacuum_retention_hours="{{ params.vacuum_retention_hours }}",
    ).expand(path=datasets_to_reencrypt(settings["datasets"]))

    @task
    def retire_compromised_version(datasets: list[str], kms_options: dict[str, Any], keystore: str,
                                   compromised_version: str) -> dict[str, Any]:
        from spark_kms import tables
        from spark_kms.jobs import inspect_dataset
        from spark_kms.kms.local import LocalKms
        from spark_kms.parquet import read_decrypted_table

        still_used = [
            path for path in datasets
            if any(d.key_version == compromised_version for d in inspect_dataset(path, kms_options=kms_options).deks)
        ]
        if still_used:
            raise RuntimeError(f"key version {compromised_version} still wraps data keys of {still_used}; "
                               "not disabling it")
        LocalKms(keystore).disable_key_version(_KEY_REF, int(compromised_version))
        rows = {path: (tables.read_table_decrypted(path, kms_options=kms_options) if tables.detect_table(path)
                       else read_decrypted_table(path, kms_options=kms_options)).num_rows for path in datasets}
        return {"disabled_version": compromised_version, "rows": rows}

    rotation >> reencrypt
    reencrypt >> retire_compromised_version(
        settings["datasets"], settings["kms_options"], settings["keystore"], rotation["compromised_version"]
    )
