"""Daily PII encryption: landing CSV -> encrypted Parquet partitioned by date, then an export.

1. ``setup``: resolve the demo base directory (Variable ``spark_kms_demo_base``, env
   ``SPARK_KMS_DEMO_BASE``, else ``$AIRFLOW_HOME/spark_kms_demo``), create the embedded
   keystore and the key ``alias/pii`` if absent, and land sample data at
   ``<base>/landing/<day>/customers.csv`` if none is there.
2. ``encrypt_customers``: name, email and ssn encrypted (one data key per Spark task) into
   ``<base>/encrypted/customers/event_date=<day>/``. Each day overwrites only its own
   partition, so a re-run of a day is idempotent.
3. ``audit``: inspect the partition (rows, files, key versions) without decrypting anything.
4. ``export_for_analytics``: decrypt the day's partition, keeping only the columns analytics
   needs, to ``<base>/exports/<day>/customers/``.

``<day>`` is the run's logical date (``{{ ds }}``) for scheduled runs and runs triggered with one; a run
triggered without a logical date (Airflow 3's default for a manual trigger) uses the day of its
``run_after`` instead: the template :data:`airflow_plugins.demo.RUN_DAY`.

Runs on the embedded local KMS out of the box; point ``kms_conn_id`` at a ``spark_kms_aws``
(or GCP, Azure, Vault) connection to use a cloud KMS instead (docs/AIRFLOW.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_plugins.demo import (
    PII_COLUMNS,
    RUN_DAY,
    demo_settings,
    ensure_demo_key,
    resolve_base,
    write_landing,
)
from airflow_plugins.operators.spark_kms import DecryptDatasetOperator, EncryptDatasetOperator

_SETUP = "ti.xcom_pull(task_ids='setup', key='{}')"
BASE = "{{ " + _SETUP.format("base") + " }}"
ENCRYPTED = "{{ " + _SETUP.format("encrypted") + " }}"
PARTITION = ENCRYPTED + "/customers/event_date=" + RUN_DAY

with DAG(
    dag_id="pii_encrypt_daily",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    # One run at a time: a manual run (no logical date: today's partition) and the scheduled run of the same
    # day write the same partition, and the second would find the dataset locked.
    max_active_runs=1,
    tags=["spark_kms", "example"],
    doc_md=__doc__,
):

    @task(multiple_outputs=True)
    def setup(day: str) -> dict[str, Any]:
        base = resolve_base()
        settings = demo_settings(base)
        ensure_demo_key(settings["keystore"])
        settings["landing"] = str(write_landing(base, day))
        settings["day"] = day
        return settings

    settings = setup(RUN_DAY)

    encrypt = EncryptDatasetOperator(
        task_id="encrypt_customers",
        source=BASE + "/landing/" + RUN_DAY + "/customers.csv",
        source_format="csv",
        destination=PARTITION,
        columns=list(PII_COLUMNS),
        key_uri="{{ " + _SETUP.format("key_uri") + " }}",
        kms_options=settings["kms_options"],
        encryption_context={"dataset": "customers", "event_date": RUN_DAY},
        asset_alias="spark_kms_demo_customers",
    )

    @task
    def audit(partition: str, kms_options: dict[str, Any]) -> dict[str, Any]:
        from spark_kms.jobs import inspect_dataset

        inspection = inspect_dataset(partition, kms_options=kms_options)
        return {
            "rows": inspection.rows,
            "files": len(inspection.files),
            "deks": len(inspection.deks),
            "encrypted_columns": sorted(c.name for c in inspection.columns),
            "up_to_date": inspection.up_to_date,
        }

    export = DecryptDatasetOperator(
        task_id="export_for_analytics",
        source=PARTITION,
        destination=BASE + "/exports/" + RUN_DAY + "/customers",
        columns=["customer_id", "email", "country", "amount"],
        kms_options=settings["kms_options"],
    )

    checked = audit(PARTITION, settings["kms_options"])
    settings >> encrypt >> checked >> export
