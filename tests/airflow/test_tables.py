"""Delta and Iceberg tables through the Airflow provider (``dag.test()`` in real Airflow 3): the operators
encrypt into a table and re-encrypt it (the jobs hand tables to ``spark_kms.tables``), the rotation sensor
inspects a table, and the ``reencrypt_after_compromise`` DAG re-encrypts a Delta table with ``force=True``
and its opt-in vacuum, after which no file of the table holds the old data keys."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms import tables
from spark_kms.kms.local import LocalKms

from .conftest import xcom

pytestmark = pytest.mark.airflow

LOGICAL_DATE = datetime(2025, 3, 4, tzinfo=timezone.utc)
SOURCE = pa.table({
    "id": pa.array(range(1, 7), pa.int64()),
    "ssn": [f"078-05-112{i}" for i in range(6)],
    "day": ["2025-03-03"] * 3 + ["2025-03-04"] * 3,
})


def _plain(table: pa.Table) -> pa.Table:
    return table.select(["id", "ssn", "day"]).sort_by("id")


def test_operators_encrypt_into_tables_reencrypt_and_the_sensor(run_dag, tmp_path: Path) -> None:
    from airflow.sdk import DAG
    from deltalake import DeltaTable

    from airflow_plugins.operators.spark_kms import EncryptDatasetOperator, ReencryptDatasetOperator
    from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

    keystore = tmp_path / "keystore"
    admin = LocalKms(keystore)
    admin.create_key(alias="alias/pii")
    kms = {"local": {"keystore": str(keystore)}}
    land = tmp_path / "land"
    land.mkdir()
    pq.write_table(SOURCE, land / "part-0.parquet")
    root = tmp_path / "people"
    (tmp_path / "iceberg").mkdir()
    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg/catalog.db",
               "warehouse": f"file://{tmp_path}/iceberg/warehouse"}
    iceberg = "iceberg://demo/crm.people"

    with DAG("tables", schedule=None, start_date=datetime(2025, 1, 1),
             params={"fmt": "delta", "mode": "overwrite", "warehouse": catalog["warehouse"]}) as dag:
        delta = EncryptDatasetOperator(
            task_id="encrypt_delta", source=str(land), destination=str(root), columns=["ssn"], partition_by=["day"],
            key_uri="local://alias/pii", kms_options=kms, table_format="{{ params.fmt }}", mode="{{ params.mode }}")
        ice = EncryptDatasetOperator(
            task_id="encrypt_iceberg", source=str(land), destination=iceberg, columns=["ssn"], partition_by=["day"],
            key_uri="local://alias/pii", kms_options=kms, mode="error",
            catalog_properties={**catalog, "warehouse": "{{ params.warehouse }}"})
        again = ReencryptDatasetOperator(
            task_id="reencrypt_delta", path=str(root), mode="reencrypt", force=True, batch_files="1",
            vacuum_retention_hours="{{ params.get('vacuum', None) }}", kms_options=kms)
        delta >> again
    assert [a.uri for a in delta.outlets] == [root.as_uri()] and [a.uri for a in ice.outlets] == [iceberg]
    dag_run, states = run_dag(dag, logical_date=LOGICAL_DATE)
    assert states == {"encrypt_delta": "success", "encrypt_iceberg": "success", "reencrypt_delta": "success"}, states

    written = xcom(dag_run, "encrypt_delta")
    assert written["details"]["table_format"] == "delta" and written["files"] == 2 and written["rows"] == 6
    assert written["run_id"].startswith("af-tables-encrypt_delta-")
    rewritten = xcom(dag_run, "reencrypt_delta")
    assert rewritten["files"] == 2 and rewritten["details"]["batches"] == 2 and "vacuum" not in rewritten["details"]
    own = DeltaTable(str(root))  # delta-rs reads it: new files, the old ones kept for time travel
    assert own.version() == 2 and own.to_pyarrow_table().num_rows == 6
    assert [h.get("spark_kms.job") for h in sorted(own.history(), key=lambda h: h["version"])] == [
        "encrypt", "reencrypt", "reencrypt"]
    assert _plain(tables.read_table_decrypted(root, kms_options=kms)).equals(_plain(SOURCE))
    assert _plain(tables.read_table_decrypted(root, version=0, kms_options=kms)).equals(_plain(SOURCE))
    assert _plain(tables.read_table_decrypted(iceberg, kms_options=kms, catalog_properties=catalog)).equals(
        _plain(SOURCE))

    def poke(path: str, **kwargs: object) -> bool:
        return bool(DatasetRotationSensor(task_id="sen", path=path, kms_options=kms, **kwargs).poke({}).is_done)

    assert not poke(str(root)) and not poke(iceberg, catalog_properties=catalog)
    admin.rotate_key("alias/pii")
    assert poke(str(root)) and poke(iceberg, catalog_properties=catalog)  # behind: the tables' keys are on v1


def test_reencrypt_after_compromise_dag_on_a_delta_table_with_vacuum(run_dag, demo_base: Path) -> None:
    from deltalake import DeltaTable

    from airflow_plugins.demo import DEMO_KEY_URI, ensure_demo_key

    ensure_demo_key(demo_base / "keystore")
    kms = {"local": {"keystore": str(demo_base / "keystore")}}
    root = demo_base / "encrypted" / "people"
    tables.encrypt_into_table(SOURCE, root, format="delta", columns=["ssn"], key_uri=DEMO_KEY_URI, kms_options=kms,
                              partition_by=["day"])
    first = sorted(root.glob("day=*/*.parquet"))

    dag_run, states = run_dag("reencrypt_after_compromise", run_conf={"vacuum_retention_hours": 0})
    assert dag_run.state == "success", states
    assert states == {"setup": "success", "rotate_key": "success", "datasets_to_reencrypt": "success",
                      "reencrypt[0]": "success", "retire_compromised_version": "success"}, states

    summary = xcom(dag_run, "reencrypt", map_index=0)
    assert summary["details"]["table_format"] == "delta" and summary["files"] == 2
    assert summary["details"]["vacuum"]["status"] == "succeeded"
    assert len(summary["details"]["vacuum"]["details"]["files_deleted"]) == 2
    assert not any(p.exists() for p in first)  # the files under the compromised data keys are gone
    assert LocalKms(demo_base / "keystore").describe_key("alias/pii").versions["1"] == "disabled"
    assert DeltaTable(str(root)).to_pyarrow_table().num_rows == 6
    assert _plain(tables.read_table_decrypted(root, kms_options=kms)).equals(_plain(SOURCE))
    assert xcom(dag_run, "retire_compromised_version")["rows"] == {str(root): 6}
