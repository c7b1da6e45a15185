"""The example DAGs run end to end in real Airflow 3 (SQLite, ``dag.test()``), and the data
they leave behind decrypts to what went in."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spark_kms.jobs import inspect_dataset
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import list_data_files, read_decrypted_table

from .conftest import DAGS_FOLDER, airflow_env, xcom

pytestmark = pytest.mark.airflow

DAG_FILES = ["pii_encrypt_daily.py", "key_rotation_rewrap.py", "reencrypt_after_compromise.py"]
DS = "2025-03-04"


def _opts(base: Path) -> dict[str, dict[str, str]]:
    return {"local": {"keystore": str(base / "keystore")}}


def test_dag_files_import_no_pyspark() -> None:
    code = (
        "import runpy, sys\n"
        f"for f in {[str(DAGS_FOLDER / f) for f in DAG_FILES]!r}:\n"
        "    runpy.run_path(f)\n"
        "bad = sorted(m for m in sys.modules if m == 'pyspark' or m.startswith('pyspark.'))\n"
        "print('PYSPARK', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PYSPARK []" in out.stdout


def test_pii_encrypt_daily(run_dag, demo_base: Path) -> None:
    dag_run, states = run_dag("pii_encrypt_daily", logical_date=datetime(2025, 3, 4, tzinfo=timezone.utc))
    assert states == {"setup": "success", "encrypt_customers": "success", "audit": "success",
                      "export_for_analytics": "success"}, states
    assert dag_run.state == "success"

    landing = demo_base / "landing" / DS / "customers.csv"
    with landing.open(newline="") as fh:
        expected = sorted(csv.DictReader(fh), key=lambda r: int(r["customer_id"]))
    partition = demo_base / "encrypted" / "customers" / f"event_date={DS}"
    files = list_data_files(str(partition))
    assert files
    # On disk the PII columns are ciphertext: no e-mail address appears in any data file.
    raw = pq.read_table(files[0])
    assert raw.schema.field("email").type == "binary"
    blob = b"".join(Path(f).read_bytes() for f in files)
    assert expected[0]["email"].encode() not in blob and expected[0]["ssn"].encode() not in blob

    decrypted = read_decrypted_table(str(partition), kms_options=_opts(demo_base)).to_pylist()
    got = sorted(decrypted, key=lambda r: r["customer_id"])
    assert [(r["customer_id"], r["name"], r["email"], r["ssn"]) for r in got] == [
        (int(r["customer_id"]), r["name"], r["email"], r["ssn"]) for r in expected
    ]

    summary = xcom(dag_run, "encrypt_customers")
    assert summary["job"] == "encrypt" and summary["status"] == "succeeded"
    assert summary["rows"] == len(expected)
    assert summary["kms_calls"].get("local:GenerateDataKey", 0) == summary["deks"] >= 1
    assert list(summary["key_versions"].values()) == [["1"]]
    assert summary["run_id"].startswith("af-pii_encrypt_daily-encrypt_customers-")
    audit = xcom(dag_run, "audit")
    assert audit["rows"] == len(expected) and audit["up_to_date"] is True
    assert audit["encrypted_columns"] == ["email", "name", "ssn"]

    export = pq.read_table(demo_base / "exports" / DS / "customers").to_pylist()
    assert sorted((r["customer_id"], r["email"]) for r in export) == [
        (int(r["customer_id"]), r["email"]) for r in expected
    ]
    assert set(export[0]) == {"customer_id", "email", "country", "amount"}


def _dataset_versions(path: str, base: Path) -> list[str]:
    return sorted({d.key_version for d in inspect_dataset(path, kms_options=_opts(base)).deks})


def test_key_rotation_rewrap(run_dag, demo_base: Path) -> None:
    dag_run, states = run_dag("key_rotation_rewrap")
    assert dag_run.state == "success", states
    assert states == {"setup": "success", "rotate_key": "success", "wait_until_behind": "success",
                      "rewrap[0]": "success", "rewrap[1]": "success", "verify": "success"}, states

    datasets = sorted(str(p) for p in (demo_base / "encrypted").iterdir())
    assert [Path(p).name for p in datasets] == ["customers_archive", "payments"]
    kms = LocalKms(demo_base / "keystore")
    assert kms.describe_key("alias/pii").primary_version == "2"
    for path in datasets:
        assert _dataset_versions(path, demo_base) == ["2"]
        assert inspect_dataset(path, kms_options=_opts(demo_base)).up_to_date is True
        assert read_decrypted_table(path, kms_options=_opts(demo_base)).num_rows == 40
    # Rewrap touched no data file: every file still carries its version-1 footer wraps.
    assert all(pq.read_metadata(f).num_rows == 20 for p in datasets for f in list_data_files(p))
    assert xcom(dag_run, "wait_until_behind") == datasets
    rewrap = xcom(dag_run, "rewrap", map_index=0)
    assert rewrap["job"] == "rewrap" and rewrap["status"] == "succeeded"
    assert rewrap["deks"] == 2 and rewrap["files"] == 2
    assert rewrap["kms_calls"].get("local:ReEncrypt") == 2
    assert sorted(xcom(dag_run, "verify")) == datasets


def test_reencrypt_after_compromise(run_dag, demo_base: Path) -> None:
    dag_run, states = run_dag("reencrypt_after_compromise")
    assert dag_run.state == "success", states
    assert states == {"setup": "success", "rotate_key": "success", "datasets_to_reencrypt": "success",
                      "reencrypt[0]": "success", "retire_compromised_version": "success"}, states

    dataset = demo_base / "encrypted" / "customers_archive"
    kms = LocalKms(demo_base / "keystore")
    description = kms.describe_key("alias/pii")
    assert description.primary_version == "2"
    assert description.versions["1"] == "disabled"
    assert _dataset_versions(str(dataset), demo_base) == ["2"]
    # The files were rewritten: their own footers name version 2 only, and the data survived.
    table = read_decrypted_table(str(dataset), kms_options=_opts(demo_base))
    assert table.num_rows == 40
    assert all("@example.com" in e for e in table.column("email").to_pylist())
    summary = xcom(dag_run, "reencrypt", map_index=0)
    assert summary["job"] == "reencrypt" and summary["status"] == "succeeded"
    assert summary["key_versions_before"] and list(summary["key_versions"].values()) == [["2"]]
    assert xcom(dag_run, "retire_compromised_version")["disabled_version"] == "1"
