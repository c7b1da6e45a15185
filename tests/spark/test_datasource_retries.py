"""Commit protocol under failure, in a ``local[2,3]`` session (task retries on) in a subprocess:
first attempts that fail leave no duplicates nor orphans; a job whose task always fails leaves
the previous dataset byte-identical; no sample PII value leaks into logs, errors or files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

JOB = Path(__file__).with_name("_retry_job.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("retries")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(JOB), str(workdir)], capture_output=True, text=True,
                          timeout=400, env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, json.loads((workdir / "report.json").read_text()), proc.stdout + proc.stderr


def test_failed_first_attempts_leave_exactly_the_input(run):
    workdir, report, _logs = run
    assert report["got"] == report["expected"]
    assert report["distinct_ids"] == 2000
    result = report["retry_result"]
    assert result["rows"] == 2000
    assert result["kms_calls"] == {"local:GenerateDataKey": 4}  # successful attempts only
    # Only the committed files, one per task, no staging / trash / journal / half files.
    assert report["after_retry_files"] == sorted(result["files"])
    assert len(result["files"]) == 4
    assert not (workdir / "out" / "_spark_kms_staging").exists()


def test_failed_job_leaves_previous_dataset_byte_identical(run):
    _workdir, report, _logs = run
    assert report["failed_job_error"] is not None
    assert "injected failure" in report["failed_job_error"]
    assert report["after_failure_hashes"] == report["v1_hashes"]
    assert all(not f.startswith("_") for f in report["v1_hashes"])


def test_no_pii_leaks_into_logs_errors_or_files(run):
    workdir, report, logs = run
    assert "PIISECRET" not in logs
    assert "PIISECRET" not in report["failed_job_error"]
    leaked = []
    for dirpath, _dirs, files in os.walk(workdir):
        for f in files:
            p = Path(dirpath) / f
            if f != "report.json" and b"PIISECRET" in p.read_bytes():
                leaked.append(str(p.relative_to(workdir)))
    assert leaked == []
    assert (workdir / "keystore" / "audit.log").exists()  # the grep did cover the KMS's own files
