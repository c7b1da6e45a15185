"""The operators and the sensor against an Airflow ``spark`` connection whose host is a Spark Connect
server (``sc://127.0.0.1:PORT``).

The DAG runs with ``dag.test()`` as the other tests here do, but in a child process (this file run
as a script, with a fresh Airflow home of its own through ``conftest.py``): this test process holds
the suite's classic ``local[2]`` SparkContext, and pyspark makes a process that opened a Spark
Connect session a Connect client for good, so the two cannot share one process. The server is a
real ``SparkConnectServer`` in its own process (:mod:`spark_kms.testing.connect`) on the same
filesystem; tests/connect/ covers a client that cannot see the data.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = "SPARK_KMS_CONNECT_DAG_RESULT "
CONN_ID = "spark_connect"
ROWS = 120

pytestmark = pytest.mark.airflow


# -- spark_master_from_connection -----------------------------------------------------------------------
def test_a_spark_connection_may_name_a_spark_connect_server() -> None:
    from airflow.sdk import Connection

    from airflow_plugins.operators.spark_kms import spark_master_from_connection
    from spark_kms.errors import ConfigurationError

    def master(**fields: Any) -> str:
        return spark_master_from_connection(Connection(conn_id="s", conn_type="spark", **fields))

    assert master(host="sc://127.0.0.1:15002") == "sc://127.0.0.1:15002"
    assert master(host="sc://127.0.0.1", port=15003) == "sc://127.0.0.1:15003"
    assert master(host="sc://spark.internal/;use_ssl=true", port=443) == "sc://spark.internal:443/;use_ssl=true"
    # the password is the server's bearer token, URL-quoted
    assert master(host="sc://spark.internal", port=443, password="t;k=n") == "sc://spark.internal:443/;token=t%3Bk%3Dn"
    assert master(host="localhost") == "spark://localhost:7077"  # a bare host name: a standalone master
    with pytest.raises(ConfigurationError, match=r"Spark connection 's'.*path component '/x' must be empty"):
        master(host="sc://127.0.0.1:15002/x")
    with pytest.raises(ConfigurationError, match="unsupported master 'http://h'"):
        master(host="http://h")


def test_a_classic_task_process_refuses_a_spark_connect_connection_clearly(
    spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_plugins.operators.spark_kms import spark_session_from_connection
    from spark_kms.errors import ConfigurationError

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "spark",
                                                                      "host": "sc://127.0.0.1:1"}))
    with pytest.raises(ConfigurationError, match="already runs a classic SparkContext on local"):
        spark_session_from_connection(CONN_ID, "t")
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ  # this process stayed a classic one


# -- a DAG on a real Spark Connect server -----------------------------------------------------------------
def _people(path: Path) -> list[dict[str, str]]:
    rows = [{"id": str(i), "name": f"name{i}", "ssn": f"{100 + i:03d}-{i % 99 + 1:02d}-{i:04d}"} for i in range(ROWS)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.mark.spark
@pytest.mark.slow
def test_operators_and_sensor_over_a_spark_connect_connection(tmp_path: Path) -> None:
    from spark_kms.kms.local import LocalKms
    from spark_kms.testing.connect import connect_server

    rows = _people(tmp_path / "people.csv")
    LocalKms(tmp_path / "keystore").create_key(alias="alias/pii")
    spec = {"source": str(tmp_path / "people.csv"), "encrypted": str(tmp_path / "encrypted"),
            "plain": str(tmp_path / "plain"), "keystore": str(tmp_path / "keystore")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    with connect_server(cwd=tmp_path, log_dir=tmp_path) as server:
        env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
            "PYSPARK_PYTHON": sys.executable,
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps({"conn_type": "spark", "host": server.url}),
        })
        child = subprocess.run([sys.executable, __file__, str(tmp_path / "spec.json")], env=env,
                               capture_output=True, text=True, timeout=900)
        log = server.log_tail()
    lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT)]
    assert child.returncode == 0 and lines, child.stdout[-4000:] + child.stderr[-4000:] + log
    result = json.loads(lines[-1][len(RESULT):])

    assert result["states"] == {"encrypt": "success", "rotate": "success", "behind": "success",
                                "rewrap": "success", "decrypt": "success"}, child.stdout[-4000:] + child.stderr[-4000:]
    assert result["classic_spark_context"] is False  # the tasks ran Spark over Connect only: no JVM in the child
    assert result["encrypt"]["rows"] == ROWS
    assert result["encrypt"]["deks"] > 1  # spark_conf reached the server's session: small input splits
    assert result["behind"] == [spec["encrypted"]]  # the sensor, over Spark Connect, saw the rotation
    assert result["rewrap"]["deks"] == result["encrypt"]["deks"]
    assert set(result["rewrap"]["key_versions"]) and all(v == ["2"] for v in result["rewrap"]["key_versions"].values())
    assert result["decrypt"]["rows"] == ROWS

    encrypted = pq.read_table(spec["encrypted"], columns=["ssn"]).column("ssn").to_pylist()
    assert len(encrypted) == ROWS and not {c for c in encrypted} & {r["ssn"].encode() for r in rows}
    plain = pq.read_table(spec["plain"]).to_pylist()
    assert sorted((str(r["id"]), r["name"], r["ssn"]) for r in plain) == \
        sorted((r["id"], r["name"], r["ssn"]) for r in rows)


# -- the child process ------------------------------------------------------------------------------------
def _load_conftest() -> Any:
    """tests/airflow/conftest.py, imported before airflow: it points this process at a fresh Airflow home."""
    spec = importlib.util.spec_from_file_location("spark_kms_airflow_conftest", Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dag(spec: dict[str, str]) -> Any:
    from airflow.sdk import DAG, task

    from airflow_plugins.operators.spark_kms import (
        DecryptDatasetOperator,
        EncryptDatasetOperator,
        ReencryptDatasetOperator,
    )
    from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

    kms = {"local": {"keystore": spec["keystore"]}}
    with DAG("spark_kms_over_spark_connect", schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
             catchup=False) as dag:
        encrypt = EncryptDatasetOperator(
            task_id="encrypt", source=spec["source"], source_format="csv", destination=spec["encrypted"],
            columns=["ssn"], key_uri="local://alias/pii", kms_options=kms, spark_conn_id=CONN_ID,
            spark_conf={"spark.sql.files.maxPartitionBytes": "1024"},
        )

        @task
        def rotate() -> str:
            from spark_kms.kms.local import LocalKms

            return LocalKms(spec["keystore"]).rotate_key("alias/pii")

        behind = DatasetRotationSensor(task_id="behind", path=spec["encrypted"], kms_options=kms,
                                       spark_conn_id=CONN_ID, poke_interval=1, timeout=300)
        rewrap = ReencryptDatasetOperator(task_id="rewrap", path=spec["encrypted"], mode="rewrap", kms_options=kms,
                                          spark_conn_id=CONN_ID)
        decrypt = DecryptDatasetOperator(task_id="decrypt", source=spec["encrypted"], destination=spec["plain"],
                                         kms_options=kms, spark_conn_id=CONN_ID)
        encrypt >> rotate() >> behind >> rewrap >> decrypt
    return dag


def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    conftest = _load_conftest()
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.utils import db

    db.resetdb()
    DagBundlesManager().sync_bundles_to_db()
    dag = _dag(spec)
    conftest.sync_dag(dag)
    dag_run = dag.test()
    states = conftest.task_states(dag_run)
    from pyspark.core.context import SparkContext

    result: dict[str, Any] = {"states": states, "classic_spark_context": SparkContext._active_spark_context is not None}
    for task_id in ("encrypt", "behind", "rewrap", "decrypt"):
        if states.get(task_id) == "success":
            result[task_id] = conftest.xcom(dag_run, task_id)
    print(RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
