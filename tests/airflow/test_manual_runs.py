"""Runs without a logical date (Airflow 3's manual trigger) and lineage URIs as users write them, in real
Airflow 3 (``dag.test()``; the deployment test drives the same through a scheduler and the REST API)."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import pytest

from spark_kms.parquet import read_decrypted_table

pytestmark = pytest.mark.airflow

RUN_AFTER = datetime(2025, 3, 5, 12, 30, tzinfo=timezone.utc)


def test_pii_encrypt_daily_without_a_logical_date_uses_the_day_of_run_after(
    airflow_db: dict, spark: object, demo_base: Path,
) -> None:
    from .conftest import task_states, xcom

    dag_run = airflow_db["pii_encrypt_daily"].test(logical_date=None, run_after=RUN_AFTER)
    assert dag_run.logical_date is None
    assert task_states(dag_run) == {"setup": "success", "encrypt_customers": "success", "audit": "success",
                                    "export_for_analytics": "success"}
    assert xcom(dag_run, "setup", key="day") == "2025-03-05"
    with (demo_base / "landing" / "2025-03-05" / "customers.csv").open(newline="") as fh:
        expected = sorted((int(r["customer_id"]), r["email"]) for r in csv.DictReader(fh))
    partition = demo_base / "encrypted" / "customers" / "event_date=2025-03-05"
    table = read_decrypted_table(str(partition), kms_options={"local": {"keystore": str(demo_base / "keystore")}})
    assert sorted((r["customer_id"], r["email"]) for r in table.to_pylist()) == expected
    assert (demo_base / "exports" / "2025-03-05" / "customers").is_dir()
    assert not list(demo_base.rglob("None*"))  # no landing/None, event_date=None, exports/None


def test_a_ds_template_in_a_run_without_a_logical_date_fails_with_a_hint(
    airflow_db: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import EncryptDatasetOperator

    from .conftest import sync_dag, task_states

    with DAG("ds_without_logical_date", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        EncryptDatasetOperator(task_id="encrypt", source=str(tmp_path / "landing" / "{{ ds }}"),
                               destination=str(tmp_path / "enc"), columns=["email"],
                               key_uri="local://alias/pii", kms_options={"local": {"keystore": str(tmp_path)}})
    sync_dag(dag)
    dag_run = dag.test(logical_date=None, run_after=RUN_AFTER)
    assert task_states(dag_run) == {"encrypt": "failed"}
    out = capfd.readouterr()
    text = caplog.text + out.out + out.err
    assert "'ds' is undefined" in text and "dag_run.logical_date or dag_run.run_after" in text
    assert not (tmp_path / "landing").exists() and not (tmp_path / "enc").exists()


def test_lineage_asset_uris_are_written_as_users_write_them(airflow_db: dict) -> None:
    from airflow.sdk import Asset

    from airflow_plugins.operators.spark_kms import DecryptDatasetOperator, EncryptDatasetOperator

    local = EncryptDatasetOperator(task_id="enc", source="/landing/x.csv", columns=["email"],
                                   destination="/lake/customers/event_date=2026-11-29")
    remote = DecryptDatasetOperator(task_id="dec", source="/lake/customers",
                                    destination="s3://bucket/exports/event_date=2026-11-29")
    plain = "file:///lake/customers/event_date=2026-11-29"
    assert [a.uri for a in local.outlets] == [plain]
    assert local.outlets == [Asset(plain)]  # the Asset a consumer DAG declares is the same asset
    assert [a.uri for a in remote.outlets] == ["s3://bucket/exports/event_date=2026-11-29"]
