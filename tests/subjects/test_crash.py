"""Crash safety of the subject key store: a process killed with SIGKILL in the middle of an erasure leaves every
subject either fully erased (no key, a tombstone) or fully intact, every other key unchanged, and a store that
opens (SQLite: ``PRAGMA integrity_check`` ok)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache
from spark_kms.subjects.store import PAUSE_ERASE_ENV

REPO = Path(__file__).resolve().parents[2]

# Erases the subjects named on stdin, one per line, printing each when done; "ready" once the store is open.
WORKER = """
import sys
from spark_kms.subjects import SubjectKeyStore
store = SubjectKeyStore.open(sys.argv[1], {"local": {"keystore": sys.argv[2]}}, principal="alice")
store.store_id
print("ready", flush=True)
for line in sys.stdin:
    store.erase(line.strip(), reason="crash test")
    print("erased", line.strip(), flush=True)
"""


def start_worker(url: str, keystore: Path, subjects: list[str], pause: float | None) -> subprocess.Popen[str]:
    env = {**os.environ}
    if pause is not None:
        env[PAUSE_ERASE_ENV] = str(pause)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, str(keystore)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("".join(f"{s}\n" for s in subjects))
    proc.stdin.flush()
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def check_consistent(store: SubjectKeyStore, before: dict[str, bytes | None]) -> set[str]:
    """Every subject fully erased or fully intact (key equal to before); returns the erased ones."""
    subject_key_cache().clear()
    after = store.keys_for(list(before))
    erased = store.erased(list(before))
    for sid, key in after.items():
        if sid in erased:
            assert key is None
        else:
            assert key == before[sid]
    raw = store._backend.connect(create=False)
    cur = raw.cursor()
    cur.execute("SELECT count(*) FROM subject_keys k JOIN erased_subjects e ON k.subject_id = e.subject_id")
    assert cur.fetchone()[0] == 0  # never a key beside a tombstone
    if store._backend.name == "sqlite":
        cur.execute("PRAGMA integrity_check")
        assert cur.fetchone()[0] == "ok"
    raw.close()
    return erased


def sqlite_write_locked(path: Path) -> bool:
    """Whether another connection holds the write lock (an IMMEDIATE transaction is open)."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    finally:
        conn.close()


def postgres_in_transaction(url: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND state = 'idle in transaction' AND query LIKE 'DELETE FROM subject_keys%%'")
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def make_store(url: str, local_kms: Any, n: int) -> tuple[SubjectKeyStore, dict[str, bytes | None]]:
    store = SubjectKeyStore.open(url, local_kms.kms_options, key_uri=local_kms.key_uri, principal="alice",
                                 create=True)
    return store, store.keys_for([f"c{i}" for i in range(n)], create=True)


def test_sigkill_between_delete_and_commit(store_url: str, local_kms: Any) -> None:
    store, before = make_store(store_url, local_kms, 300)
    store.erase("c1")
    before["c1"] = None
    proc = start_worker(store_url, local_kms.keystore_dir, ["c7"], pause=60)
    try:
        if store._backend.name == "sqlite":
            path = Path(store_url[len("sqlite://"):])
            wait_until(lambda: sqlite_write_locked(path))
            time.sleep(0.3)  # BEGIN IMMEDIATE, then the DELETE (milliseconds), then the pause
        else:
            wait_until(lambda: postgres_in_transaction(store_url))
    finally:
        kill(proc)
    # Killed before COMMIT: the erasure of c7 never happened, and nothing else changed.
    erased = check_consistent(store, before)
    assert erased == {"c1"}
    assert store.keys_for(["c7"]) == {"c7": before["c7"]}
    assert [e["detail"].get("subject_id") for e in store.audit_events("erase_subject")] == ["c1"]
    # The store still works: the erasure can be done again, for real.
    assert store.erase("c7").already_erased is False
    assert store.keys_for(["c7", "c8"]) == {"c7": None, "c8": before["c8"]}


def test_sigkill_during_a_stream_of_erasures(tmp_path: Path, local_kms: Any) -> None:
    url = f"sqlite://{tmp_path / 'subjects.db'}"
    store, before = make_store(url, local_kms, 400)
    targets = [f"c{i}" for i in range(0, 400, 2)]
    proc = start_worker(url, local_kms.keystore_dir, targets, pause=None)
    assert proc.stdout is not None
    done = [proc.stdout.readline() for _ in range(5)]  # let a few commit, then kill at some random point
    kill(proc)
    erased = check_consistent(store, before)
    assert {line.split()[1] for line in done} <= erased <= set(targets)
    # Each committed erasure has its audit row, in the same transaction.
    audited = {e["detail"]["subject_id"] for e in store.audit_events("erase_subject")}
    assert audited == erased


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PAUSE_ERASE_ENV, raising=False)
