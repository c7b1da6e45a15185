"""Encrypt + decrypt round trip on a real standalone cluster (master + two workers on 127.0.0.1),
driven by a new SparkSession in a subprocess (the session fixture is local)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow]

SPARK_HOME = Path(pyspark.__file__).parent
JOB = Path(__file__).with_name("_cluster_job.py")
AIRFLOW_JOB = Path(__file__).with_name("_cluster_airflow_job.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spark master exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _wait_for_log(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{text!r} not in {path}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # One master and two workers for the module: starting JVMs is the slow part.
    tmp_path = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "SPARK_WORKER_DIR": str(tmp_path / "work")}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port = _free_port()
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        mlog = tmp_path / "master.log"
        logs.append(mlog)
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(_free_port())], stdout=mlog.open("w"), stderr=subprocess.STDOUT, env=env))
        _wait_for_port(port, procs[0])
        url = f"spark://127.0.0.1:{port}"
        for i in range(2):
            wlog = tmp_path / f"worker{i}.log"
            logs.append(wlog)
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1g", "--webui-port", str(_free_port()), "--work-dir", str(tmp_path / f"work{i}")],
                stdout=wlog.open("w"), stderr=subprocess.STDOUT, env=env))
        for wlog in logs[1:]:
            _wait_for_log(wlog, "Successfully registered with master")
        yield url, env
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_round_trip_on_standalone_cluster(cluster, tmp_path):
    url, env = cluster
    workdir = tmp_path / "job"
    workdir.mkdir()
    proc = subprocess.run([sys.executable, str(JOB), url, str(workdir)], capture_output=True, text=True,
                          timeout=150, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["executor_hosts"] == 2  # both workers ran executors
    assert report["diff"] == 0 and report["count"] == 3000
    assert report["result"]["kms_calls"] == {"local:GenerateDataKey": 4}
    assert report["decrypted_sample"] == {"id": 42, "email": "user42@example.org", "ssn": "000000042"}


def test_airflow_operator_runs_on_the_master_of_its_spark_connection(cluster, tmp_path):
    url, env = cluster
    workdir = tmp_path / "airflow_job"
    workdir.mkdir()
    proc = subprocess.run([sys.executable, str(AIRFLOW_JOB), url, str(workdir)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["master"] == url  # from the Airflow connection, not the local default
    assert report["executor_hosts"] >= 1
    assert report["equal"] is True
    assert report["summary"]["rows"] == 500 and report["summary"]["status"] == "succeeded"
    assert report["summary"]["run_id"] == "cluster-run"
