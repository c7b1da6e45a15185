"""``ReencryptDatasetOperator(mode="rewrap", kms_concurrency=N)`` reaches the job (issue #16)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa

from spark_kms.kms.local import AUDIT_FILE, LocalKms
from spark_kms.kms.local._audit import read_events
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_dataset_key_table

LOGICAL_DATE = datetime(2025, 3, 4, tzinfo=timezone.utc)


def test_rewrap_operator_passes_kms_concurrency(tmp_path, local_kms, run_dag) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import ReencryptDatasetOperator
    from spark_kms.kms import KmsConfig

    provider = KmsConfig.of(local_kms.kms_options).provider(local_kms.key_uri)
    root = tmp_path / "ds"
    for i in range(6):
        t = pa.table({"id": [i], "email": [f"u{i}@x.org"]})
        root.mkdir(exist_ok=True)
        with EncryptedParquetWriter(root / f"part-{i}.parquet", t.schema, EncryptionSpec(columns=["email"]),
                                    provider) as w:
            w.write_batch(t)
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    with DAG("rewrap_concurrency", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ReencryptDatasetOperator(task_id="rewrap", path=str(root), mode="rewrap",
                                 kms_options=local_kms.kms_options, kms_concurrency=4)
    _, states = run_dag(dag, logical_date=LOGICAL_DATE)
    assert states == {"rewrap": "success"}, states
    assert {e.key_version for e in read_dataset_key_table(root).deks.values()} == {"2"}
    record = json.loads(next((root / "_spark_kms_runs").glob("*.json")).read_text())
    assert record["kms_calls"]["local:ReEncrypt"] == 6
    tag = record["run_id"]
    audited = [e for e in read_events(local_kms.keystore_dir / AUDIT_FILE)
               if e.get("request_tag") == tag and e["operation"] == "ReEncrypt"]
    assert len(audited) == 6

