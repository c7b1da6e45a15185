"""The storage layer (spark_kms.storage): URI forms, identities, and every primitive against moto's S3
server over HTTP (pyarrow's S3 client and boto3), beside the local filesystem."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spark_kms.errors import ConfigurationError
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table
from spark_kms.parquet.dataset import Dataset, dataset_path, dataset_root_of, list_data_files
from spark_kms.storage import (
    STORAGE_OPTIONS_ENV,
    Location,
    LockTimeout,
    lock,
    resolve,
    storage_options_from,
)

# -- URI forms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "scheme", "fs_path", "identity"),
    [
        ("s3://bkt/a/b", "s3", "bkt/a/b", "s3://bkt/a/b"),
        ("s3a://bkt/a/b/", "s3", "bkt/a/b", "s3://bkt/a/b"),
        ("gs://bkt/x", "gs", "bkt/x", "gs://bkt/x"),
        ("abfss://cont@acct.dfs.core.windows.net/x/y", "abfs", "cont/x/y", "abfs://cont@acct.dfs.core.windows.net/x/y"),
        ("abfs://cont@acct.dfs.core.windows.net/x/y", "abfs", "cont/x/y", "abfs://cont@acct.dfs.core.windows.net/x/y"),
        ("hdfs://nn:8020/data/x", "hdfs", "/data/x", "hdfs://nn:8020/data/x"),
    ],
)
def test_uri_forms(uri: str, scheme: str, fs_path: str, identity: str) -> None:
    loc = resolve(uri)
    assert (loc.scheme, loc.path, loc.identity) == (scheme, fs_path, identity)
    assert loc.uri == uri.rstrip("/")
    child = loc.join("date=2024-01-01", "part-0.parquet")
    assert child.uri == f"{uri.rstrip('/')}/date=2024-01-01/part-0.parquet"
    assert child.parent.parent.uri == loc.uri
    assert child.relative_to(loc) == "date=2024-01-01/part-0.parquet"
    assert dataset_path(uri) == loc.uri  # no longer refused


def test_local_forms(tmp_path: Path) -> None:
    for text in (str(tmp_path), f"file://{tmp_path}", f"file:{tmp_path}"):
        loc = resolve(text)
        assert loc.is_local and loc.uri == str(tmp_path) and os.fspath(loc) == str(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    assert resolve(link).identity == str(tmp_path / "real")


@pytest.mark.parametrize("bad", ["ftp://h/x", "s3:///nobucket", "abfs://nocontainer/x", "wasb://c@a/x"])
def test_unsupported_uris_are_refused_clearly(bad: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        resolve(bad)
    assert bad in str(err.value)


def test_options_are_checked_and_secrets_never_shown() -> None:
    with pytest.raises(ConfigurationError, match="unknown storage options"):
        storage_options_from({"s3.endpoint": "x"})
    with pytest.raises(ConfigurationError, match="JSON object"):
        storage_options_from("{not json")
    loc = resolve("s3://bkt/x", {"s3.secret_key": "TOPSECRET-123", "s3.access_key": "AK"})
    assert "TOPSECRET" not in repr(loc) and "TOPSECRET" not in str(loc)
    assert "TOPSECRET" not in repr(loc.join("y"))
    # options travel with the location, and through pickling
    clone = pickle.loads(pickle.dumps(loc.join("y")))
    assert clone.options["s3.secret_key"] == "TOPSECRET-123" and clone.uri == "s3://bkt/x/y"


def test_environment_options_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"s3.region": "eu-west-1", "s3.access_key": "env"}))
    loc = resolve("s3://bkt/x", {"s3.access_key": "given"})
    assert loc.options == {"s3.region": "eu-west-1", "s3.access_key": "given"}


# -- primitives on S3 and on a local disk ---------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "local":
        return resolve(tmp_path / "base")
    s3 = request.getfixturevalue("s3")
    return resolve(s3.uri(request.getfixturevalue("s3_prefix")), s3.options)


def test_primitives(base: Location) -> None:
    f = base.join("a/b.txt")
    assert not f.exists() and f.read_bytes_or_none() is None
    f.write_bytes_atomic(b"one")
    assert f.read_bytes() == b"one" and f.is_file() and f.size() == 3 and base.join("a").is_dir()
    f.write_json_atomic({"k": 1})
    assert json.loads(f.read_bytes()) == {"k": 1}
    assert base.join("c.bin").create_exclusive(b"x") is True
    assert base.join("c.bin").create_exclusive(b"y") is False
    assert base.join("c.bin").read_bytes() == b"x"
    with base.join("_hidden/d.parquet").open_output_stream() as out:
        out.write(b"hidden")
    base.join(".tmp.e").write_bytes_atomic(b"e")
    assert [e.location.relative_to(base) for e in base.list_files()] == ["a/b.txt", "c.bin"]
    every = [e.location.relative_to(base) for e in base.list_files(include_hidden=True)]
    assert every == [".tmp.e", "_hidden/d.parquet", "a/b.txt", "c.bin"]
    assert all(e.mtime and abs(e.mtime - time.time()) < 300 for e in base.list_files())
    f.move_to(base.join("moved/b.txt"))
    assert not f.exists() and base.join("moved/b.txt").read_bytes() == b'{\n  "k": 1\n}\n'
    base.join("_hidden").delete_dir()
    assert not base.join("_hidden/d.parquet").exists()
    base.join("nothing").delete_dir()  # absent: no error
    base.join("c.bin").delete_file()
    base.join("c.bin").delete_file()  # missing_ok
    assert base.join("nothing").list_files() == []


def test_listing_pages_past_1000_objects(s3: Any, s3_prefix: str) -> None:
    client = s3.client()
    for i in range(1205):
        client.put_object(Bucket=s3.bucket, Key=f"{s3_prefix}/many/p={i % 3}/f{i:05d}.bin", Body=b"")
    loc = resolve(s3.uri(f"{s3_prefix}/many"), s3.options)
    files = loc.list_files()
    assert len(files) == 1205 == len({f.location.uri for f in files})
    assert [d.name for d in loc.list_dirs()] == ["p=0", "p=1", "p=2"]


def _hold_lock(uri: str, options: dict[str, str], hold_s: float, ready: Any) -> None:
    with lock(resolve(uri, options), timeout=5, lease_s=3):
        ready.set()
        time.sleep(hold_s)


def test_lock_on_s3_excludes_another_process_and_expires_with_a_dead_holder(s3: Any, s3_prefix: str) -> None:
    where = resolve(s3.uri(f"{s3_prefix}/_spark_kms_runs/.lock"), s3.options)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(where.uri, s3.options, 60, ready))
    holder.start()
    try:
        assert ready.wait(60)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            with lock(where, timeout=1, lease_s=3):
                pass
        assert time.monotonic() - t0 >= 1 and ":" in err.value.holder
        time.sleep(2)  # the holder's renewals keep its lease alive beyond lease_s
        with pytest.raises(LockTimeout):
            with lock(where, timeout=0, lease_s=3):
                pass
    finally:
        holder.kill()  # SIGKILL: its lease is never released nor renewed again
        holder.join()
    with lock(where, timeout=10, lease_s=3):  # taken over once the lease ran out
        assert json.loads(where.read_bytes())["owner"].split(":")[1] == str(os.getpid())
    assert not where.exists()


def test_local_lock_is_dropped_when_its_holder_is_killed(tmp_path: Path) -> None:
    where = resolve(tmp_path / "_spark_kms_runs" / ".lock")
    code = (
        "import sys, time; from spark_kms.storage import lock, resolve\n"
        f"with lock(resolve({str(where.path)!r})):\n    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout):
            with lock(where, timeout=0):
                pass
    finally:
        proc.kill()
        proc.wait()
    with lock(where, timeout=5):
        pass


def test_two_threads_on_one_s3_lock_never_overlap(s3: Any, s3_prefix: str) -> None:
    where = resolve(s3.uri(f"{s3_prefix}/x.lock"), s3.options)
    inside: list[int] = []
    overlaps: list[int] = []

    def work(n: int) -> None:
        for _ in range(3):
            with lock(where, timeout=30, lease_s=30):
                inside.append(n)
                if len(inside) > 1:
                    overlaps.append(n)
                time.sleep(0.05)
                inside.remove(n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


# -- the dataset module and the pyarrow layer on S3 ----------------------------------------------------


def test_dataset_on_s3_through_the_file_layer(s3: Any, s3_prefix: str, local_kms: Any, caplog: Any) -> None:
    caplog.set_level("DEBUG")
    root = resolve(s3.uri(f"{s3_prefix}/customers", scheme="s3a"), s3.options)
    table = pa.table({"id": pa.array(range(30), pa.int64()), "email": [f"u{i}@example.com" for i in range(30)]})
    spec = EncryptionSpec(columns=["email"])
    for i, day in enumerate(["2024-01-01", "2024-01-02"]):
        part = table.slice(i * 15, 15)
        with EncryptedParquetWriter(root.join(f"date={day}/part-0.parquet"), part.schema, spec, local_kms.key_uri,
                                    kms_options=local_kms.kms_options) as w:
            w.write_batch(part)
    # an aborted writer leaves no object
    w = EncryptedParquetWriter(root.join("date=2024-01-03/part-0.parquet"), table.schema, spec, local_kms.key_uri,
                               kms_options=local_kms.kms_options)
    w.write_batch(table)
    w.abort()
    # (pyarrow may leave an empty directory marker, "<prefix>/", which no reader takes for a file)
    assert [k for k in s3.keys(f"{s3_prefix}/customers/date=2024-01-03") if not k.endswith("/")] == []

    ds = Dataset.open(root)
    assert ds.root == root.uri and len(ds.files) == 2 and all(f.startswith("s3a://") for f in ds.files)
    assert dataset_root_of(root.join("date=2024-01-01")) == root.uri
    assert list_data_files(root.join("date=2024-01-02/part-0.parquet")) == [root.join("date=2024-01-02/part-0.parquet").uri]
    ds.declare(local_kms.kms_options)
    # the same objects through s3:// verify: the identity (bound into the manifest) is scheme-neutral
    same = resolve(s3.uri(f"{s3_prefix}/customers"), s3.options)
    again = Dataset.open(same, kms_options=local_kms.kms_options)
    assert again.declaration is not None and set(again.declaration.columns) == {"email"}
    got = read_decrypted_table(same, kms_options=local_kms.kms_options).sort_by("id")
    assert got.column("email").to_pylist() == table.column("email").to_pylist()
    assert got.column("date").to_pylist() == ["2024-01-01"] * 15 + ["2024-01-02"] * 15
    one = read_decrypted_table(root.join("date=2024-01-02"), kms_options=local_kms.kms_options)
    assert sorted(one.column("id").to_pylist()) == list(range(15, 30))
    assert s3.secret not in caplog.text
    assert not any(r.getMessage().count("@example.com") for r in caplog.records)


def test_a_missing_s3_dataset_is_named(s3: Any, s3_prefix: str) -> None:
    with pytest.raises(ConfigurationError, match=r"does not exist") as err:
        Dataset.open(resolve(s3.uri(f"{s3_prefix}/absent"), s3.options))
    assert s3.uri(f"{s3_prefix}/absent") in str(err.value)


def test_readers_refuse_a_dataset_whose_commit_is_unfinished(s3: Any, s3_prefix: str, local_kms: Any) -> None:
    from spark_kms.errors import JobError
    from spark_kms.parquet.dataset import pending_commits

    root = resolve(s3.uri(f"{s3_prefix}/d"), s3.options)
    table = pa.table({"id": [1, 2], "email": ["a@example.com", "b@example.com"]})
    with EncryptedParquetWriter(root.join("part-0.parquet"), table.schema, EncryptionSpec(columns=["email"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as w:
        w.write_batch(table)
    journal = root.join("_spark_kms_staging/w123/_COMMITTING")
    journal.write_json_atomic({"write_id": "w123"})
    root.join("_spark_kms_staging/w456/part-0.parquet").write_bytes_atomic(b"staged, undecided")
    assert pending_commits(root) == ["w123"]
    with pytest.raises(JobError, match=r"write w123 is committing, or stopped while committing"):
        read_decrypted_table(root, kms_options=local_kms.kms_options)
    journal.delete_file()
    assert read_decrypted_table(root, kms_options=local_kms.kms_options).num_rows == 2


def test_a_holder_stalled_past_its_lease_never_removes_the_new_holders_lock(s3: Any, s3_prefix: str) -> None:
    where = resolve(s3.uri(f"{s3_prefix}/stalled.lock"), s3.options)
    with lock(where, timeout=0, lease_s=30):
        # another process took the lock over (as after a lease ran out while this holder was stalled)
        where.write_json_atomic({"owner": "other-host:1:abcd", "expires_at": time.time() + 600})
    assert json.loads(where.read_bytes())["owner"] == "other-host:1:abcd"  # not deleted on release
    with pytest.raises(LockTimeout) as err:
        with lock(where, timeout=0, lease_s=30):
            pass
    assert err.value.holder == "other-host:1:abcd"
