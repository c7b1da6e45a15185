"""A real ``spark-kms reencrypt`` process is SIGKILLed midway; the dataset stays whole and a re-run
finishes only the files left.

Determinism without timing: the test looks at the journal only while holding the local KMS's
keystore lock (the cross-process file lock every KMS call holds), so the job is blocked at a KMS
call whenever the test decides, and is killed as soon as one file is done.
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
from spark_kms.kms.local import LOCK_FILE, LocalKms
from spark_kms.parquet import read_key_table

SPARK_KMS = str(Path(sys.executable).parent / "spark-kms")


def _done_files(root: Path, run_id: str) -> list[str]:
    out = []
    for f in sorted(root.rglob("*.parquet")):
        # The per-file (GCM) keys name the run; the deterministic key is the dataset's join-domain key.
        deks = [e for e in read_key_table(f).deks.values() if e.algorithm != "AES_256_SIV"]
        if deks and all(e.encryption_context.get(RUN_ID_CONTEXT_KEY) == run_id for e in deks):
            out.append(str(f))
    return out


def _kill_after_first_done(journal: Path, proc: subprocess.Popen, lock_path: Path, timeout: float = 60.0) -> None:
    """SIGKILL the job once its journal shows a finished file. The test holds the keystore lock
    all the time except for short windows, and looks at the journal only while holding it: the
    job needs the lock for every KMS call (at least one per file), so between two looks it can
    make about one call and cannot run through the remaining files unseen."""
    lock = filelock.FileLock(str(lock_path), timeout=30, poll_interval=0.0005)
    deadline = time.monotonic() + timeout
    lock.acquire()
    try:
        while time.monotonic() < deadline:
            if journal.exists() and "done" in json.loads(journal.read_text())["files"].values():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            assert proc.poll() is None, f"reencrypt exited early: {proc.communicate()}"
            lock.release()
            time.sleep(0.002)  # the job's lock polls every 1 ms: room for about one KMS call
            lock.acquire()
        raise AssertionError("reencrypt never finished a file")
    finally:
        lock.release(force=True)


def test_sigkill_midway_then_rerun_finishes_only_the_remaining_files(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    run_id = "kill-1"
    journal = journal_path(dataset.root, run_id)
    proc = subprocess.Popen(
        [SPARK_KMS, "reencrypt", str(dataset.root), "--keystore", str(local_kms.keystore_dir), "--run-id", run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        _kill_after_first_done(journal, proc, local_kms.keystore_dir / LOCK_FILE)
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
