"""The subject key store (spark_kms.subjects) on SQLite and on a real PostgreSQL: keys, erasure, permissions,
the audit log, KEK rotation, pickling, and what never leaks (key bytes, subject ids, URL passwords)."""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spark_kms.errors import AccessDeniedError, ConfigurationError, SparkKmsError, UnknownSubjectError
from spark_kms.kms import kms_call_counts, process_dek_cache, reset_kms_call_counts
from spark_kms.subjects import (
    DEFAULT_STORE_ENV,
    ErasureRecord,
    SubjectKeyStore,
    store_of,
)
from spark_kms.subjects._backends import backend_for, mask_url
from spark_kms.subjects._cache import CACHE_TTL_ENV, subject_key_cache
from spark_kms.testing.connect import free_port

REPO = Path(__file__).resolve().parents[2]


def open_store(url: str, local_kms: Any, principal: str = "alice", create: bool = False) -> SubjectKeyStore:
    return SubjectKeyStore.open(url, local_kms.kms_options, key_uri=local_kms.key_uri, principal=principal,
                                create=create)


def test_round_trip_10000_subjects(store_url: str, local_kms: Any) -> None:
    reset_kms_call_counts()
    store = open_store(store_url, local_kms, create=True)
    assert kms_call_counts() == {"local:GenerateDataKey": 1}
    assert len(store.store_id) == 32 and int(store.store_id, 16) >= 0
    assert store.key_uri == local_kms.key_uri

    ids = [f"user-{i}" for i in range(10_000)]
    before = store.statements
    keys = store.keys_for(ids, create=True)
    # One KMS call in all (the KEK's GenerateDataKey); SQL in chunks of 500, a few statements each.
    assert kms_call_counts() == {"local:GenerateDataKey": 1}
    assert store.statements - before <= 10 * (10_000 // 500) + 10
    assert list(keys) == ids
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys.values())
    assert len(set(keys.values())) == 10_000

    # Stable: the same call again, and a reopened store with a cold cache (one KMS Decrypt for the KEK).
    assert store.keys_for(ids[:10], create=True) == {i: keys[i] for i in ids[:10]}
    store.close()
    subject_key_cache().clear()
    process_dek_cache().clear()
    reset_kms_call_counts()
    reopened = open_store(store_url, local_kms)
    assert reopened.keys_for(ids) == keys
    assert kms_call_counts() == {"local:Decrypt": 1}


def test_unknown_subject_without_create(store_url: str, local_kms: Any) -> None:
    store = open_store(store_url, local_kms, create=True)
    store.keys_for(["known"], create=True)
    with pytest.raises(UnknownSubjectError) as info:
        store.keys_for(["known", "secret-subject-1", "secret-subject-2"])
    assert "2 of 3" in str(info.value)
    assert "secret-subject" not in str(info.value)


def test_opening_a_missing_store_needs_create(tmp_path: Path, local_kms: Any) -> None:
    url = f"sqlite://{tmp_path / 'nothing' / 'subjects.db'}"
    with pytest.raises(ConfigurationError, match="no subject key store"):
        open_store(url, local_kms)
    assert not (tmp_path / "nothing" / "subjects.db").exists()


def test_concurrent_writers_get_one_key_per_subject(store_url: str, local_kms: Any) -> None:
    open_store(store_url, local_kms, create=True).close()
    ids = [f"s{i}" for i in range(2_000)]
    results: list[dict[str, bytes | None]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            store = open_store(store_url, local_kms)  # its own connection
            results.append(store.keys_for(ids, create=True))
            store.close()
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    subject_key_cache().clear()
    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0] == results[1] == results[2]
    subject_key_cache().clear()
    assert open_store(store_url, local_kms).keys_for(ids) == results[0]


def test_erase(store_url: str, local_kms: Any) -> None:
    store = open_store(store_url, local_kms, create=True)
    keys = store.keys_for(["a", "b", "c"], create=True)
    record = store.erase("b", reason="GDPR art. 17", datasets=["s3://bucket/customers"])
    assert isinstance(record, ErasureRecord)
    assert (record.kind, record.subject, record.store_id, record.principal) == ("subject", "b", store.store_id,
                                                                                  "alice")
    assert record.already_erased is False and record.datasets == ("s3://bucket/customers",)
    assert record.at.endswith("Z")

    # Evicted from this process's cache at once; the others unchanged.
    assert store.keys_for(["a", "b", "c"]) == {"a": keys["a"], "b": None, "c": keys["c"]}
    # create=True never resurrects an erased subject.
    assert store.keys_for(["b"], create=True) == {"b": None}
    assert store.erased(["a", "b", "zz"]) == {"b"}

    again = store.erase("b")
    assert again.already_erased is True and again.receipt_id > record.receipt_id
    events = store.audit_events("erase_subject")
    assert [e["id"] for e in events] == [record.receipt_id, again.receipt_id]
    assert events[0]["outcome"] == "ok" and events[0]["principal"] == "alice"
    assert events[0]["detail"]["subject_id"] == "b"
    assert events[0]["detail"]["store_id"] == store.store_id
    assert events[0]["detail"]["datasets"] == ["s3://bucket/customers"]
    assert events[0]["detail"]["reason"] == "GDPR art. 17"
    assert events[0]["detail"]["kek_id"] and events[1]["detail"]["kek_id"] is None
    assert [e["detail"]["already_erased"] for e in events] == [False, True]

    # Erasing a subject that never had a key still leaves a tombstone: it will never get one.
    store.erase("never-written")
    assert store.keys_for(["never-written"], create=True) == {"never-written": None}

    # A reopened store, cold cache, sees the erasure.
    subject_key_cache().clear()
    assert open_store(store_url, local_kms).keys_for(["a", "b"]) == {"a": keys["a"], "b": None}


def test_erase_seen_by_another_process_at_once_and_cache_ttl(tmp_path: Path, local_kms: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite://{tmp_path / 'subjects.db'}"
    store = open_store(url, local_kms, create=True)
    keys = store.keys_for(["p", "q"], create=True)
    code = (
        "import sys; from spark_kms.subjects import SubjectKeyStore\n"
        "s = SubjectKeyStore.open(sys.argv[1], {'local': {'keystore': sys.argv[2]}}, principal='alice')\n"
        "s.erase('p')\n"
        "print(s.keys_for(['p', 'q'])['p'] is None, s.keys_for(['q'])['q'].hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, url, str(local_kms.keystore_dir)], capture_output=True,
                         text=True, timeout=120, cwd=REPO, check=True).stdout.split()
    assert out == ["True", keys["q"].hex()]
    # This process cached p's key before the other erased it: every call checks the tombstones of cached ids
    # in its permission round trip, so the erasure is seen at once, and the cached key is dropped.
    before = store.statements
    assert store.keys_for(["p", "q"]) == {"p": None, "q": keys["q"]}
    assert store.statements - before <= 3  # grants + tombstones of the cached ids: no key row read again
    monkeypatch.setenv(CACHE_TTL_ENV, "0")
    assert store.keys_for(["p"]) == {"p": None}
    monkeypatch.setenv(CACHE_TTL_ENV, "soon")
    with pytest.raises(ConfigurationError, match=CACHE_TTL_ENV):
        store.keys_for(["q"])


def test_permissions(store_url: str, local_kms: Any) -> None:
    alice = open_store(store_url, local_kms, principal="alice", create=True)
    assert alice.grants() == {"*": ["read", "write"], "alice": ["admin", "erase", "read", "write"]}
    bob = open_store(store_url, local_kms, principal="bob")
    keys = bob.keys_for(["x", "y"], create=True)  # everyone may read and write by default

    with pytest.raises(AccessDeniedError) as info:
        bob.erase("x")
    assert "'bob'" in str(info.value) and "'erase'" in str(info.value)
    denied = [e for e in alice.audit_events("erase_subject") if e["outcome"] == "denied"]
    assert len(denied) == 1 and denied[0]["principal"] == "bob"
    assert bob.keys_for(["x"]) == {"x": keys["x"]}  # the refused erasure changed nothing

    with pytest.raises(AccessDeniedError, match="'admin'"):
        bob.grant("bob", "erase")
    assert [e["outcome"] for e in alice.audit_events("grant")] == ["denied"]

    alice.grant("bob", "erase")
    assert bob.erase("x").principal == "bob"
    assert bob.keys_for(["x", "y"]) == {"x": None, "y": keys["y"]}

    # Readers only: revoke write from everyone; bob may still read, not create.
    alice.revoke("*", "write")
    with pytest.raises(AccessDeniedError, match="'write'"):
        bob.keys_for(["new"], create=True)
    assert bob.keys_for(["y"]) == {"y": keys["y"]}
    alice.revoke("*", "read")
    with pytest.raises(AccessDeniedError, match="'read'"):
        bob.keys_for(["y"])  # refused even though the key is in this process's cache
    with pytest.raises(ConfigurationError, match="permissions from"):
        alice.grant("bob", "superuser")


def test_record_and_audit_log(store_url: str, local_kms: Any) -> None:
    store = open_store(store_url, local_kms, create=True)
    bob = open_store(store_url, local_kms, principal="bob")
    receipt = bob.record("erase_tenant", "ok", {"tenant": "acme", "key_uri": "local://alias/tenant-acme"})
    events = store.audit_events("erase_tenant")
    assert events == [{"id": receipt, "at": events[0]["at"], "principal": "bob", "action": "erase_tenant",
                       "outcome": "ok", "detail": {"tenant": "acme", "key_uri": "local://alias/tenant-acme"}}]
    assert [e["action"] for e in store.audit_events()][0] == "create_store"
    with pytest.raises(ConfigurationError):
        store.record("x", "maybe", {})


def test_rotate_kek(store_url: str, local_kms: Any) -> None:
    store = open_store(store_url, local_kms, create=True)
    ids = [f"r{i}" for i in range(1_200)]
    keys = store.keys_for(ids, create=True)
    store.erase("r0")
    (old,) = store.kek_entries()
    assert old["current"] is True

    assert store.rotate_kek() == len(ids) - 1
    entries = {e["kek_id"]: e for e in store.kek_entries()}
    assert len(entries) == 2 and entries[old["kek_id"]]["current"] is False
    (new_id,) = [k for k, e in entries.items() if e["current"]]

    subject_key_cache().clear()
    reopened = open_store(store_url, local_kms)
    assert reopened.keys_for(ids) == {**keys, "r0": None}
    # New subjects are wrapped by the new KEK; no row is left under the old one.
    reopened.keys_for(["after"], create=True)
    backend = backend_for(reopened._backend.url)
    conn = backend.connect(create=False)
    cur = conn.cursor()
    cur.execute("SELECT DISTINCT kek_id FROM subject_keys")
    assert [r[0] for r in cur.fetchall()] == [new_id]
    conn.close()
    assert store.audit_events("rotate_kek")[0]["detail"]["rewrapped"] == len(ids) - 1

    bob = open_store(store_url, local_kms, principal="bob")
    with pytest.raises(AccessDeniedError):
        bob.rotate_kek()


def test_tampered_row_does_not_authenticate(tmp_path: Path, local_kms: Any) -> None:
    url = f"sqlite://{tmp_path / 's.db'}"
    store = open_store(url, local_kms, create=True)
    store.keys_for(["m", "n"], create=True)
    with sqlite3.connect(tmp_path / "s.db") as conn:  # move n's wrapped key to m
        conn.execute("UPDATE subject_keys SET wrapped = (SELECT wrapped FROM subject_keys WHERE subject_id = 'n') "
                     "WHERE subject_id = 'm'")
    subject_key_cache().clear()
    with pytest.raises(SparkKmsError, match="does not authenticate") as info:
        open_store(url, local_kms).keys_for(["m"])
    assert "'m'" not in str(info.value)


def test_pickle_ships_configuration_only(tmp_path: Path, local_kms: Any) -> None:
    url = f"sqlite://{tmp_path / 's.db'}"
    store = open_store(url, local_kms, principal="carol", create=True)
    keys = store.keys_for(["k1"], create=True)
    blob = pickle.dumps(store)
    assert keys["k1"] not in blob
    clone = pickle.loads(blob)
    assert clone._conn is None and clone.principal == "carol"
    subject_key_cache().clear()
    assert clone.keys_for(["k1"]) == keys and clone.store_id == store.store_id
    # In another process too (a Spark worker).
    code = ("import pickle, sys; s = pickle.loads(bytes.fromhex(sys.stdin.read()));"
            "print(s.keys_for(['k1'])['k1'].hex(), s.principal)")
    out = subprocess.run([sys.executable, "-c", code], input=blob.hex(), capture_output=True, text=True,
                         timeout=120, cwd=REPO, check=True).stdout.split()
    assert out == [keys["k1"].hex(), "carol"]


def test_store_of_and_the_default_store(tmp_path: Path, local_kms: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "home" / "subjects.db"
    monkeypatch.setenv(DEFAULT_STORE_ENV, str(path))
    store = store_of(None, local_kms.kms_options, principal="dave")
    assert store.url == f"sqlite://{path}" and not path.exists()
    with pytest.raises(ConfigurationError, match="no subject key store"):
        store.keys_for(["a"])  # reading does not create it
    monkeypatch.setenv("SPARK_KMS_PRINCIPAL", "dave")
    keys = store.keys_for(["a"], create=True)  # the first write does, under the default local key
    assert path.exists() and oct(path.stat().st_mode & 0o777) == "0o600"
    assert store.key_uri == "local://alias/spark-kms-subjects"
    assert store_of(store) is store
    same = store_of(str(path), local_kms.kms_options)
    assert same.keys_for(["a"]) == keys and same.principal == "dave"
    assert store_of(f"sqlite://{path}", local_kms.kms_options).store_id == store.store_id
    with pytest.raises(ConfigurationError, match="scheme"):
        store_of("mysql://x@y/z")
    with pytest.raises(ConfigurationError):
        store_of(42)  # type: ignore[arg-type]


def test_url_password_never_shown(new_postgres_database: Any, local_kms: Any) -> None:
    port = free_port()
    url = f"postgresql://spark_kms:Sup3rSecretPw@127.0.0.1:{port}/nothing"
    assert mask_url(url) == f"postgresql://spark_kms:***@127.0.0.1:{port}/nothing"
    store = SubjectKeyStore(url, local_kms.kms_options)
    assert "Sup3rSecretPw" not in repr(store) and "Sup3rSecretPw" not in str(store) and "***" in store.url
    with pytest.raises(SparkKmsError) as info:
        store.keys_for(["a"])
    assert "Sup3rSecretPw" not in str(info.value) and "connecting failed" in str(info.value)
    # The test server trusts local connections, so a password in a working URL is ignored: it still works.
    host_db = new_postgres_database().split("@", 1)[1]
    working = SubjectKeyStore.open(f"postgresql://spark_kms:Sup3rSecretPw@{host_db}", local_kms.kms_options,
                                   key_uri=local_kms.key_uri, create=True)
    assert "Sup3rSecretPw" not in repr(working)
    assert working.keys_for(["a"], create=True)["a"] is not None


def test_nothing_secret_in_logs_reprs_or_errors(store_url: str, local_kms: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    subject, other = "person-7f3a9c-unique", "person-b21e44-unique"
    with caplog.at_level(logging.DEBUG):
        store = open_store(store_url, local_kms, create=True)
        keys = store.keys_for([subject, other], create=True)
        record = store.erase(subject, reason="request")
        bob = open_store(store_url, local_kms, principal="bob")
        texts = [repr(store), str(store), repr(record), repr(bob)]
        for call in (lambda: bob.erase(other), lambda: bob.keys_for([other, "person-unknown-1"]),
                     lambda: store.keys_for([other, "person-unknown-2"])):
            with pytest.raises(SparkKmsError) as info:
                call()
            texts.append(str(info.value))
        store.rotate_kek()
        store.grant("bob", "erase")
    texts.append(caplog.text)
    assert "erased a subject" in caplog.text  # the log does say what happened
    secrets = [subject, other, "person-unknown"] + [form for k in keys.values() if k
                                                     for form in (k.hex(), repr(k)[2:-1])]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_subject_ids_are_checked(tmp_path: Path, local_kms: Any) -> None:
    store = open_store(f"sqlite://{tmp_path / 's.db'}", local_kms, create=True)
    with pytest.raises(ConfigurationError, match="not one string"):
        store.keys_for("abc")
    with pytest.raises(ConfigurationError, match="1 of 2"):
        store.keys_for(["a", ""], create=True)
    assert store.keys_for(["é👤", "a", "a"], create=True).keys() == {"é👤", "a"}
    assert os.stat(tmp_path / "s.db").st_mode & 0o077 == 0


def test_erasure_racing_writers_never_leaves_a_key_beside_a_tombstone(store_url: str, local_kms: Any) -> None:
    open_store(store_url, local_kms, create=True).close()
    ids = [f"race{i}" for i in range(150)]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            store = open_store(store_url, local_kms)
            for i in range(0, len(ids), 10):
                subject_key_cache().clear()
                store.keys_for(ids[i:i + 10], create=True)
            store.close()
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    def eraser() -> None:
        try:
            store = open_store(store_url, local_kms)
            for sid in ids[::3]:
                store.erase(sid)
            store.close()
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=writer), threading.Thread(target=eraser)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = open_store(store_url, local_kms)
    conn = store._backend.connect(create=False)
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM subject_keys k JOIN erased_subjects e ON k.subject_id = e.subject_id")
    assert cur.fetchone()[0] == 0
    conn.close()
    subject_key_cache().clear()
    keys = store.keys_for(ids, create=True)
    assert {sid for sid, key in keys.items() if key is None} == set(ids[::3])


# The statements docs/ERASURE.md gives for PostgreSQL roles (defence in depth under the store's own grants).
ROLE_SQL = """
CREATE ROLE subjects_reader LOGIN;
CREATE ROLE subjects_writer LOGIN;
CREATE ROLE subjects_eraser LOGIN;
GRANT SELECT ON meta, keks, subject_keys, erased_subjects, grants TO subjects_reader, subjects_writer, subjects_eraser;
GRANT SELECT, INSERT ON audit TO subjects_reader, subjects_writer, subjects_eraser;
GRANT USAGE ON SEQUENCE audit_id_seq TO subjects_reader, subjects_writer, subjects_eraser;
GRANT INSERT ON subject_keys TO subjects_writer;
GRANT DELETE ON subject_keys TO subjects_eraser;
GRANT INSERT ON erased_subjects TO subjects_eraser;
"""


def test_postgres_roles_defence_in_depth(new_postgres_database: Any, local_kms: Any) -> None:
    import psycopg2

    url = new_postgres_database()
    owner = SubjectKeyStore.open(url, local_kms.kms_options, key_uri=local_kms.key_uri, principal="owner",
                                 create=True)
    keys = owner.keys_for(["a", "b"], create=True)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(ROLE_SQL)
    conn.close()
    owner.grant("*", "erase")  # the store would let anyone erase: the database still says no to readers

    def as_role(role: str) -> SubjectKeyStore:
        subject_key_cache().clear()
        return SubjectKeyStore(url.replace("spark_kms@", f"{role}@"), local_kms.kms_options, principal=role)

    reader = as_role("subjects_reader")
    assert reader.keys_for(["a"]) == {"a": keys["a"]}
    with pytest.raises(SparkKmsError, match="permission denied"):
        reader.keys_for(["new"], create=True)
    with pytest.raises(SparkKmsError, match="permission denied"):
        reader.erase("a")
    assert as_role("subjects_writer").keys_for(["c"], create=True)["c"] is not None
    with pytest.raises(SparkKmsError, match="permission denied"):
        as_role("subjects_writer").erase("a")
    # The refusals by the database are in the audit log as errors (readers and writers may append to it).
    assert [e["outcome"] for e in owner.audit_events("erase_subject")] == ["error", "error"]
    assert as_role("subjects_eraser").erase("a").already_erased is False
    assert as_role("subjects_reader").keys_for(["a", "b"]) == {"a": None, "b": keys["b"]}


def test_a_writer_waits_for_an_erasure_in_flight(store_url: str, local_kms: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer asking for a subject's key while the subject's erasure is between its DELETE and its COMMIT
    waits for it, then gets None: it never makes a new key the tombstone would sit beside."""
    store = open_store(store_url, local_kms, create=True)
    store.keys_for(["z"], create=True)
    monkeypatch.setenv("SPARK_KMS_TEST_PAUSE_ERASE_S", "1.5")
    eraser = threading.Thread(target=lambda: open_store(store_url, local_kms).erase("z"))
    eraser.start()
    time.sleep(0.7)  # the eraser has deleted the key and sleeps before its COMMIT
    subject_key_cache().clear()
    assert open_store(store_url, local_kms).keys_for(["z"], create=True) == {"z": None}
    eraser.join()
    conn = store._backend.connect(create=False)
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM subject_keys")
    assert cur.fetchone()[0] == 0
    conn.close()


def test_create_with_known_and_new_ids_in_one_call(store_url: str, local_kms: Any) -> None:
    # Regression: ids already in the store (not cached) and new ids in one keys_for(create=True) call.
    store = open_store(store_url, local_kms, create=True)
    first = store.keys_for(["a"], create=True)["a"]
    subject_key_cache().clear()
    keys = store.keys_for(["a", "b"], create=True)
    assert keys["a"] == first and keys["b"] is not None and len(keys["b"]) == 32
