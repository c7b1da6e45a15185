"""A real ``spark-kms reencrypt`` process is SIGKILLed midway; the dataset stays whole and a re-run
finishes only the files left.

Determinism without timing: once the journal shows a finished file, the test takes the local
KMS's keystore lock (the cross-process file lock every KMS call holds), so the job blocks at its
next KMS call -- it can finish at most the file it is in -- and is killed there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock

from spark_kms.jobs import RUN_ID_CONTEXT_KEY, reencrypt_dataset
from spark_kms.jobs.reencrypt import journal_path
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.kms._local_store import LOCK_FILE
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_key_table

SPARK_KMS = str(Path(sys.executable).parent / "spark-kms")


def _done_files(root: Path, run_id: str) -> list[str]:
    out = []
    for f in sorted(root.rglob("*.parquet")):
        deks = read_key_table(f).deks.values()
        if deks and all(e.encryption_context.get(RUN_ID_CONTEXT_KEY) == run_id for e in deks):
            out.append(str(f))
    return out


def _wait_for_first_done(journal: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists():
            try:
                if "done" in json.loads(journal.read_text())["files"].values():
                    return
            except ValueError:
                pass  # cannot happen with atomic replace, but never fail the poll on it
        assert proc.poll() is None, f"reencrypt exited early: {proc.communicate()}"
        time.sleep(0.005)
    raise AssertionError("reencrypt never finished a file")


def test_sigkill_midway_then_rerun_finishes_only_the_remaining_files(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    run_id = "kill-1"
    journal = journal_path(dataset.root, run_id)
    proc = subprocess.Popen(
        [SPARK_KMS, "reencrypt", str(dataset.root), "--keystore", str(local_kms.keystore_dir), "--run-id", run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_first_done(journal, proc)
        with filelock.FileLock(str(local_kms.keystore_dir / LOCK_FILE), timeout=30):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = _done_files(dataset.root, run_id)
    assert 0 < len(done) < len(dataset.files()), "the kill must land midway"
    # Killed midway: every file is either old or new, and the whole dataset still reads, equal.
    assert dataset.decrypted().equals(dataset.expected)
    digests = dataset.file_digests()
    reset_kms_call_counts()

    rest = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)  # no run id: resumes kill-1

    remaining = len(dataset.files()) - len(done)
    assert rest.run_id == run_id and rest.details.get("resumed") is True
    assert rest.files == remaining
    calls = kms_call_counts()
    assert calls["local:GenerateDataKey"] == remaining  # no new deterministic key: the journal kept it
    assert "local:DescribeKey" not in calls  # the plan came from the journal
    for f in done:  # files finished before the kill are not touched again
        assert dataset.file_digests()[f] == digests[f]
    assert len(_done_files(dataset.root, run_id)) == len(dataset.files())
    assert dataset.decrypted().equals(dataset.expected)
    assert not list(dataset.root.rglob(".*.reencrypt"))
    assert json.loads(journal.read_text())["status"] == "succeeded"
