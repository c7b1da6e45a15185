"""Key rotation, then rewrap: every dataset under the key moves to the new key version.

1. ``setup``: the embedded keystore and key ``alias/pii`` (created if absent), and, when no
   dataset under ``<base>/encrypted/`` uses the key yet, two small seeded datasets.
2. ``rotate_key``: a new version of the key in the embedded KMS (with a cloud KMS, rotation
   is usually scheduled by the KMS itself; drop this task and keep the rest).
3. ``wait_until_behind``: :class:`DatasetRotationSensor` on every dataset under the key; it
   returns the datasets whose data keys are wrapped by an older version.
4. ``rewrap``: one mapped task per such dataset. Each data key is re-wrapped server side by
   the new primary version; no cell is re-encrypted, so the cost is one KMS call per data key.
5. ``verify``: inspection must show every data key on the primary version, and each dataset
   must still decrypt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_plugins.demo import (
    DEMO_KEY_URI,
    datasets_under_key,
    demo_settings,
    ensure_demo_key,
    resolve_base,
    seed_dataset,
)
from airflow_plugins.operators.spark_kms import ReencryptDatasetOperator
from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

with DAG(
    dag_id="key_rotation_rewrap",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["spark_kms", "example"],
    doc_md=__doc__,
):

    @task(multiple_outputs=True)
    def setup() -> dict[str, Any]:
        settings = demo_settings(resolve_base())
        ensure_demo_key(settings["keystore"])
        if not datasets_under_key(settings["encrypted"], DEMO_KEY_URI):
            for name in ("payments", "customers_archive"):
                seed_dataset(f"{settings['encrypted']}/{name}", settings["kms_options"])
        settings["datasets"] = datasets_under_key(settings["encrypted"], DEMO_KEY_URI)
        return settings

    @task
    def rotate_key(keystore: str) -> str:
        from spark_kms.kms.local import LocalKms

        return str(LocalKms(keystore).rotate_key(DEMO_KEY_URI.removeprefix("local://")))

    settings = setup()
    new_version = rotate_key(settings["keystore"])

    behind = DatasetRotationSensor(
        task_id="wait_until_behind",
        path=settings["datasets"],
        kms_options=settings["kms_options"],
        poke_interval=5,
        timeout=600,
    )

    rewrap = ReencryptDatasetOperator.partial(
        task_id="rewrap", mode="rewrap", kms_options=settings["kms_options"],
    ).expand(path=behind.output)

    @task
    def verify(datasets: list[str], kms_options: dict[str, Any], version: str) -> dict[str, Any]:
        from spark_kms.jobs import inspect_dataset
        from spark_kms.parquet import read_decrypted_table

        report = {}
        for path in datasets:
            inspection = inspect_dataset(path, kms_options=kms_options)
            versions = sorted({d.key_version for d in inspection.deks})
            if inspection.up_to_date is not True or versions != [version]:
                raise RuntimeError(f"{path}: data keys on versions {versions}, expected only {version} "
                                   f"(behind: {inspection.behind_files})")
            rows = read_decrypted_table(path, kms_options=kms_options).num_rows
            report[path] = {"rows": rows, "key_versions": versions}
        return report

    new_version >> behind
    rewrap >> verify(settings["datasets"], settings["kms_options"], new_version)
