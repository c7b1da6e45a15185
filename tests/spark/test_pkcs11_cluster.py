"""A Spark write + read through the PKCS#11 provider (SoftHSM2) on a real standalone cluster
(master + two workers on 127.0.0.1), driven by a SparkSession in a subprocess.

The workers start without ``SOFTHSM2_CONF``: the job passes it to the executors with
``spark.executorEnv.SOFTHSM2_CONF``; the token directory is on this machine, so every executor
sees the same token. The PIN comes from a 0600 file (``pin_file``), read in each executor.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest

from spark_kms.testing.pkcs11 import Pkcs11Harness

pytestmark = [pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow]

SPARK_HOME = Path(pyspark.__file__).parent
JOB = Path(__file__).with_name("_pkcs11_cluster_job.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def hsm(tmp_path_factory) -> Iterator[Pkcs11Harness]:
    harness = Pkcs11Harness(tmp_path_factory.mktemp("softhsm"))
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, hsm: Pkcs11Harness) -> Iterator[tuple[str, dict[str, str]]]:
    tmp_path = tmp_path_factory.mktemp("pkcs11_cluster")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env.update({"SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
                "SPARK_WORKER_DIR": str(tmp_path / "work")})
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(_free_port())], stdout=(tmp_path / "master.log").open("w"),
            stderr=subprocess.STDOUT, env=env))

        def listening() -> bool:
            if procs[0].poll() is not None:
                raise RuntimeError(f"spark master exited with {procs[0].returncode}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(listening, f"nothing listens on 127.0.0.1:{port}")
        url = f"spark://127.0.0.1:{port}"
        wlogs = []
        for i in range(2):
            wlog = tmp_path / f"worker{i}.log"
            wlogs.append(wlog)
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1g", "--webui-port", str(_free_port()), "--work-dir", str(tmp_path / f"work{i}")],
                stdout=wlog.open("w"), stderr=subprocess.STDOUT, env=env))
        for wlog in wlogs:
            _wait(lambda w=wlog: w.exists() and "Successfully registered with master" in w.read_text(errors="replace"),
                  f"worker {wlog} did not register")
        yield url, env
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_write_and_read_through_softhsm2_on_standalone_cluster(cluster, hsm: Pkcs11Harness, tmp_path) -> None:
    url, env = cluster
    workdir = tmp_path / "job"
    workdir.mkdir()
    options = {"module": hsm.module, "pin_file": str(hsm.pin_file)}
    driver_env = {**env, "SOFTHSM2_CONF": str(hsm.conf_path)}
    proc = subprocess.run([sys.executable, str(JOB), url, str(workdir), hsm.key_uri, json.dumps(options)],
                          capture_output=True, text=True, timeout=240, env=driver_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["diff"] == 0 and report["count"] == 2000
    assert report["executor_softhsm2_conf"] == [str(hsm.conf_path)]  # through spark.executorEnv only
    assert report["result"]["kms_calls"] == {"pkcs11:GenerateDataKey": 4}
    assert report["decrypted_sample"] == {"id": 42, "email": "user42@example.org", "ssn": "000000042"}
    assert hsm.user_pin not in proc.stdout + proc.stderr
    # The PIN is in no file the job wrote (Parquet footers, key tables, manifests, run records).
    for path in (workdir / "out").rglob("*"):
        if path.is_file():
            assert hsm.user_pin.encode() not in path.read_bytes(), path
