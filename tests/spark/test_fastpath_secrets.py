"""No plaintext data key of the JVM fast path in explain(mode="extended"), the event log or the driver and
executor logs, with the fast path on and used: in local mode and on a standalone cluster (the jar shipped to
the executors by spark.jars). Each app runs in a subprocess (tests/spark/_fastpath_job.py): the event log
must be on when a session starts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_kms.parquet import DekResolver
from spark_kms.parquet.dataset import Dataset
from spark_kms.spark import fastpath
from tests.spark.test_cluster import cluster  # noqa: F401 - the module-scoped standalone cluster fixture

pytestmark = [pytest.mark.spark, pytest.mark.slow]

JOB = Path(__file__).with_name("_fastpath_job.py")


def _run(master: str, workdir: Path, env: dict[str, str]) -> tuple[dict, str]:
    assert fastpath.jar_path() is not None, "the fast-path jar is not built: run `make jar`"
    proc = subprocess.run([sys.executable, str(JOB), master, str(workdir)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((workdir / "report.json").read_text()), proc.stdout + proc.stderr


def _key_forms(workdir: Path) -> dict[str, bytes]:
    """Every data key of the job's dataset, as raw bytes, hex (both cases) and base64 (both alphabets)."""
    table = Dataset.open(str(workdir / "out")).key_table()
    resolver = DekResolver(table.deks, kms_options={"local": {"keystore": str(workdir / "keystore")}})
    forms: dict[str, bytes] = {}
    for dek_id in table.deks:
        key = bytes(resolver.lookup(bytes.fromhex(dek_id)))
        forms.update({
            f"{dek_id} raw": key, f"{dek_id} hex": key.hex().encode(), f"{dek_id} HEX": key.hex().upper().encode(),
            f"{dek_id} b64": base64.b64encode(key), f"{dek_id} b64url": base64.urlsafe_b64encode(key),
            f"{dek_id} b64 unpadded": base64.b64encode(key).rstrip(b"="),
        })
    assert len(forms) >= 6
    return forms


def _leaks(forms: dict[str, bytes], blobs: dict[str, bytes]) -> list[str]:
    return [f"{form} in {where}" for where, blob in blobs.items() for form, raw in forms.items() if raw in blob]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _check(report: dict) -> None:
    assert report["fast_used"] is True and fastpath.PLUGIN_CLASS in report["plugins"]
    assert report["columnar_used"] is True, "the columns decrypt batch by batch (the SQL extension's columnar rule)"
    assert report["equal"] is True and report["count"] == 2000
    assert report["sample"] == {"id": 42, "email": "user42@example.org"}
    # executors hold a read's keys only while its tasks run; once forget() dropped them on the driver, the same
    # DataFrame fails (the executors' copies are gone too), and a new read works
    assert report["forgotten"] >= 1
    assert "no longer holds the fast path's data keys" in report["after_forget"], report["after_forget"]
    assert report["again_equal"] is True


def test_no_key_in_explain_event_log_or_logs_local(tmp_path: Path) -> None:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_KMS_FAST_PATH", None)
    report, output = _run("local[2]", tmp_path, env)
    _check(report)
    assert report["held_after"] == 0  # local mode: the executor is this JVM; its tasks' keys went with them
    events = _files(tmp_path / "events")
    assert events and any(b"SparkListenerSQLExecutionStart" in b for b in events.values())
    assert any(fastpath.UDF_STRING.encode() in b for b in events.values())  # the plan is in the event log
    assert "DEBUG" in output  # spark_kms and py4j logged at DEBUG, Spark at INFO (executors: same JVM)
    blobs = {"explain": (tmp_path / "explain.txt").read_bytes(), "driver/executor log": output.encode(), **events}
    assert _leaks(_key_forms(tmp_path), blobs) == []


@pytest.mark.cluster
def test_fast_path_on_standalone_cluster_leaks_no_key(cluster, tmp_path: Path) -> None:  # noqa: F811
    url, env = cluster
    report, output = _run(url, tmp_path, env)
    _check(report)
    assert report["executor_hosts"] == 2  # both workers' executors ran (and fetched keys over the plugin's RPC)
    work = Path(env["SPARK_WORKER_DIR"]).parent
    executor_logs = {p: b for p, b in _files(work).items() if report["app_id"] in p and p.endswith(("stderr", "stdout"))}
    assert len(executor_logs) >= 2
    blobs = {"explain": (tmp_path / "explain.txt").read_bytes(), "driver log": output.encode(),
             **_files(tmp_path / "events"), **executor_logs}
    assert _leaks(_key_forms(tmp_path), blobs) == []
