"""The dataset jobs on an object store: inspect, rewrap, re-encrypt (SIGKILLed mid-run, then resumed), gc,
decrypt's destination swap, the rotation lock and a KMS outage -- against moto's S3 server over HTTP
(pyarrow's S3 client and boto3 on 127.0.0.1), every job given ``storage_options=`` explicitly.

Datasets are built with the file layer (``EncryptedParquetWriter`` on ``s3://`` Locations), in the layout
of tests/jobs/conftest.py: four files in three hive partitions, one GCM data key per file, one SIV key (the
dataset's join-domain key, recorded in ``_spark_kms_join_keys.json`` as the Spark writer records it).
Spark's own scan of ``s3a://`` needs hadoop-aws, which is not installed here: decrypt, which writes through
Spark, is shown as far as it goes (its swap on S3 without Spark; with Spark, a failed write that leaves the
S3 destination as it was).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spark_kms.crypto import AES_256_SIV
from spark_kms.errors import ConfigurationError, JobError, SparkKmsError
from spark_kms.jobs import (
    RUN_ID_CONTEXT_KEY,
    collect_garbage,
    decrypt_dataset,
    inspect_dataset,
    needs_rotation,
    reencrypt_dataset,
    rewrap_dataset,
)
from spark_kms.jobs._lock import TIMEOUT_ENV
from spark_kms.jobs._replace import recover_replacement, staged_replacement
from spark_kms.jobs.reencrypt import journal_location
from spark_kms.kms import KmsConfig, kms_call_counts, process_dek_cache, reset_kms_call_counts
from spark_kms.kms.local import LocalKms
from spark_kms.kms.retry import RetryPolicy
from spark_kms.parquet import (
    EncryptedParquetWriter,
    EncryptionSpec,
    new_deterministic_entry,
    read_decrypted_table,
)
from spark_kms.parquet.dataset import Dataset, read_key_table
from spark_kms.parquet.join_domains import DEFAULT_DOMAIN, DOMAIN_CONTEXT_KEY, JOIN_KEYS_NAME
from spark_kms.storage import Location, resolve
from spark_kms.testing.faults import LOCAL_KMS_FAULTS, set_throttle

SPEC = EncryptionSpec(columns=["email", "amount"], deterministic=["ssn"], blind_index={"email": "email_bidx"})
FILES = ["date=2024-01-01/part-0.parquet", "date=2024-01-01/part-1.parquet",
         "date=2024-01-02/part-0.parquet", "date=2024-01-03/part-0.parquet"]
ROWS_PER_FILE = 40
DAY = 24 * 3600.0


def plain_table(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "email": pa.array([None if i % 7 == 3 else f"user{i}@example.com" for i in ids], pa.string()),
        "ssn": pa.array([f"{i % 5:03d}-00-{i:04d}" for i in ids], pa.string()),
        "amount": pa.array([None if i % 11 == 5 else i * 1.25 for i in ids], pa.float64()),
    })


@dataclass
class S3Dataset:
    root: Location
    key: str  # the root's key prefix in the bucket
    kms_options: dict[str, dict[str, Any]]
    expected: pa.Table

    @property
    def uri(self) -> str:
        return self.root.uri

    def decrypted(self) -> pa.Table:
        process_dek_cache().clear()  # a cold cache: the KMS is really asked
        t = read_decrypted_table(self.root, kms_options=self.kms_options)
        return t.select(["id", "email", "ssn", "amount"]).sort_by("id")

    def data_keys(self, s3: Any) -> list[str]:
        return [k for k in s3.keys(self.key + "/") if k.endswith(".parquet") and "/." not in k and "/_" not in k]


def build(root: Location, key: str, local_kms: Any) -> S3Dataset:
    """The rotation test dataset, written by the file layer wherever ``root`` is."""
    provider = KmsConfig.of(local_kms.kms_options).provider(local_kms.key_uri)
    det = new_deterministic_entry(provider, {DOMAIN_CONTEXT_KEY: DEFAULT_DOMAIN})
    root.join(JOIN_KEYS_NAME).write_json_atomic({  # as the data source's writer records its join domain
        "format_version": 1,
        "domains": {DEFAULT_DOMAIN: {"format_version": 1, "current": det.to_dict(), "history": []}},
    })
    tables = []
    for i, rel in enumerate(FILES):
        table = plain_table(i * ROWS_PER_FILE, ROWS_PER_FILE)
        tables.append(table)
        with EncryptedParquetWriter(root.join(rel), table.schema, SPEC, provider,
                                    encryption_context={"dataset": "customers"}, deterministic_entry=det,
                                    kms_options=local_kms.kms_options) as w:
            w.write_batch(table)
    reset_kms_call_counts()
    return S3Dataset(root, key, {k: dict(v) for k, v in local_kms.kms_options.items()},
                     pa.concat_tables(tables).sort_by("id"))


@pytest.fixture(autouse=True)
def _quiet_server() -> None:
    # moto's HTTP server logs every request at INFO: keep reports readable (and caplog small).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture
def ds(s3: Any, s3_prefix: str, local_kms: Any) -> S3Dataset:
    key = f"{s3_prefix}/customers"
    return build(resolve(s3.uri(key), s3.options), key, local_kms)


def bodies(s3: Any, prefix: str) -> dict[str, str]:
    """sha256 of every object under ``prefix`` (pyarrow's empty directory markers, ``.../``, left out)."""
    return {k: hashlib.sha256(body(s3, k)).hexdigest() for k in s3.keys(prefix) if not k.endswith("/")}


def etags(s3: Any, prefix: str) -> dict[str, str]:
    """The ETag (a digest of the content) of every object under ``prefix``, from the listing alone: for
    comparisons over many objects (one GET each would make them slow)."""
    out: dict[str, str] = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", []) if not o["Key"].endswith("/")})
    return out


def body(s3: Any, key: str) -> bytes:
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def _moto_backend() -> Any:
    # The moto server runs in this process (S3Server): fixtures may reach its key store directly.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def age_objects(s3: Any, prefix: str, seconds: float) -> None:
    """Make the objects under ``prefix`` look last modified ``seconds`` ago (S3 cannot set LastModified)."""
    bucket = _moto_backend().buckets[s3.bucket]
    when = (datetime.now(timezone.utc) - timedelta(seconds=seconds)).replace(tzinfo=None)
    names = [name for name in list(bucket.keys.keys()) if name.startswith(prefix)]
    assert names, f"no object under {prefix}"
    for name in names:
        bucket.keys[name].last_modified = when


def put_many(s3: Any, keys: list[str], data: bytes = b"x") -> None:
    """Objects for a fixture, straight into the server's key store (a PUT over HTTP each would take
    seconds per thousand); everything the jobs do with them goes over HTTP."""
    backend = _moto_backend()
    for key in keys:
        backend.put_object(s3.bucket, key, data)


def rotate(local_kms: Any) -> LocalKms:
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    return kms


# -- inspect --------------------------------------------------------------------------------------------


def test_inspect_on_s3_reports_every_file_with_its_keys_and_versions(s3, ds, local_kms):
    key_id = next(iter(read_key_table(ds.root.join(FILES[0])).deks.values())).key_id
    fresh = inspect_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
    assert fresh.up_to_date is True and fresh.path == ds.uri and fresh.rows == 4 * ROWS_PER_FILE
    rotate(local_kms)

    inspection = inspect_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
    assert [f.path for f in inspection.files] == FILES
    sizes = {k: s3.client().head_object(Bucket=s3.bucket, Key=k)["ContentLength"] for k in ds.data_keys(s3)}
    for f in inspection.files:
        assert f.rows == ROWS_PER_FILE and f.behind is True
        assert f.key_versions == {key_id: ["1"]}
        assert f.size == sizes[f"{ds.key}/{f.path}"]
        assert len(f.dek_ids) == 2  # its own GCM key and the dataset's SIV key
    assert [(k.key_uri, k.primary_version, k.deks, k.deks_behind) for k in inspection.keys] == [
        (local_kms.key_uri, "2", 5, 5)]
    assert {c.name: c.algorithm for c in inspection.columns}["ssn"] == AES_256_SIV
    assert needs_rotation(ds.uri, kms_options=ds.kms_options, storage_options=s3.options) is True
    # the same objects through s3a:// and through one partition (its root's manifest and runs)
    part = inspect_dataset(s3.uri(f"{ds.key}/date=2024-01-01", scheme="s3a"), kms_options=ds.kms_options,
                           storage_options=s3.options)
    assert part.path == s3.uri(ds.key, scheme="s3a") and [f.path for f in part.files] == FILES[:2]
    with pytest.raises(ConfigurationError, match="does not exist"):
        inspect_dataset(s3.uri(f"{ds.key}-absent"), kms_options=ds.kms_options, storage_options=s3.options)


# -- rewrap ---------------------------------------------------------------------------------------------


def test_rewrap_on_s3_rewraps_every_key_and_leaves_the_data_objects_byte_identical(s3, ds, local_kms):
    admin = rotate(local_kms)
    before = bodies(s3, ds.key + "/")

    summary = rewrap_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options, run_id="rw-1")

    assert summary.ok and summary.dataset == ds.uri and summary.path == f"{ds.uri}/_spark_kms_runs/rw-1.json"
    assert (summary.deks, summary.files, summary.rows) == (5, 4, 4 * ROWS_PER_FILE)
    assert kms_call_counts()["local:ReEncrypt"] == 5
    after = bodies(s3, ds.key + "/")
    assert {k: after[k] for k in before} == before  # every data object (and the rest) byte-identical
    assert set(after) - set(before) == {f"{ds.key}/_spark_kms_keys.json", f"{ds.key}/_spark_kms_runs/rw-1.json"}
    assert json.loads(body(s3, f"{ds.key}/_spark_kms_runs/rw-1.json"))["status"] == "succeeded"
    assert {v for vs in summary.key_versions.values() for v in vs} == {"2"}
    inspection = inspect_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
    assert inspection.up_to_date is True and {d.source for d in inspection.deks} == {"manifest"}

    admin.disable_key_version("alias/pii", 1)  # only the manifest's wraps open now
    assert ds.decrypted().equals(ds.expected)
    reset_kms_call_counts()
    again = rewrap_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
    assert again.deks == 0 and again.details["deks_skipped"] == 5 and "local:ReEncrypt" not in kms_call_counts()


# -- re-encrypt, SIGKILLed mid-run ---------------------------------------------------------------------

CHILD = r"""
import json, sys, time
import spark_kms.jobs.reencrypt as job

args = json.loads(sys.stdin.read())
point, after = args["point"], args["after"]
published = []
real_publish = job.publish_file

def publish(temp, target):
    if point == "after the copy" and len(published) + 1 == after:
        temp.copy_to(target)  # the new object is in place; its temp is not deleted, the journal not updated
        print("ready", flush=True)
        time.sleep(600)
    published.append(target.uri)
    real_publish(temp, target)

def progress(rel, done, total):
    if point == "between files" and done == after:
        print("ready", flush=True)
        time.sleep(600)

job.publish_file = publish
job.reencrypt_dataset(args["uri"], kms_options=args["kms"], storage_options=args["storage"],
                      run_id=args["run_id"], progress=progress)
print("finished", flush=True)
"""


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout).strip()
    except queue.Empty:
        return ""


def _gcm_run_ids(ds: S3Dataset) -> dict[str, set[str]]:
    return {rel: {e.encryption_context.get(RUN_ID_CONTEXT_KEY, "") for e in read_key_table(ds.root.join(rel))
                  .deks.values() if e.algorithm != AES_256_SIV} for rel in FILES}


@pytest.mark.parametrize("point", ["between files", "after the copy"])
def test_reencrypt_on_s3_sigkilled_mid_run_resumes_and_completes(s3, ds, local_kms, monkeypatch, point):
    rotate(local_kms)
    run_id, after = "kill-1", 2
    env = {**os.environ, "SPARK_KMS_LOCK_LEASE_S": "6"}  # the killed holder's lock lease runs out in 6 s
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.stdin.write(json.dumps({"point": point, "after": after, "uri": ds.uri, "kms": ds.kms_options,
                                     "storage": s3.options, "run_id": run_id}))
        proc.stdin.close()
        line = _first_line(proc, timeout=180)
        assert line == "ready", f"the job did not reach the kill point: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # Right after the kill its lock lease is still running: gc keeps the job's temp object.
    temps = [k for k in s3.keys(ds.key + "/") if k.endswith(".reencrypt")]
    report = collect_garbage(ds.uri, grace_s=0, storage_options=s3.options)
    if point == "after the copy":
        assert len(temps) == 1
        assert [(x.kind, x.removed, x.reason) for x in report.leftovers] == [
            ("temp", False, "a rotation job is running on the dataset")]
    else:
        assert temps == [] and report.leftovers == []

    journal = json.loads(body(s3, f"{ds.key}/_spark_kms_runs/{run_id}.state.json"))
    done_in_journal = sorted(r for r, state in journal["files"].items() if state == "done")
    assert journal["status"] == "running" and len(done_in_journal) == (after if point == "between files" else after - 1)
    new_files = [rel for rel, ids in _gcm_run_ids(ds).items() if ids == {run_id}]
    assert new_files == FILES[:after]  # the file being published when killed is whole and new (after the copy)
    assert ds.decrypted().equals(ds.expected)  # killed midway, every object old or new, all readable
    digests = bodies(s3, ds.key + "/")

    monkeypatch.setenv(TIMEOUT_ENV, "30")  # wait for the killed job's lease to run out, then take the lock
    reset_kms_call_counts()
    rest = reencrypt_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)  # resumes kill-1

    assert rest.run_id == run_id and rest.details.get("resumed") is True and rest.ok
    assert rest.files == len(FILES) - after  # the file new by its footer is not rewritten again
    assert kms_call_counts()["local:GenerateDataKey"] == len(FILES) - after
    after_digests = bodies(s3, ds.key + "/")
    for rel in FILES[:after]:
        assert after_digests[f"{ds.key}/{rel}"] == digests[f"{ds.key}/{rel}"]  # not touched again
    assert all(ids == {run_id} for ids in _gcm_run_ids(ds).values())
    got = ds.decrypted()
    assert got.equals(ds.expected) and len(set(got.column("id").to_pylist())) == got.num_rows  # none lost or doubled
    assert sorted(ds.data_keys(s3)) == sorted(f"{ds.key}/{rel}" for rel in FILES)
    assert not [k for k in s3.keys(ds.key + "/") if k.endswith(".reencrypt") or k.endswith("/.lock")]
    assert json.loads(journal_location(ds.root, run_id).read_bytes())["status"] == "succeeded"
    assert collect_garbage(ds.uri, grace_s=0, storage_options=s3.options).leftovers == []


# -- a KMS outage mid-job --------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["rewrap", "reencrypt"])
def test_a_kms_outage_mid_job_leaves_the_dataset_on_s3_whole(s3, ds, local_kms, job):
    rotate(local_kms)
    keystore = local_kms.keystore_dir
    faulty = {"local": {**ds.kms_options["local"], "request_interceptor": LOCAL_KMS_FAULTS,
                        "_retry": RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.01, deadline=5.0)}}
    before = bodies(s3, ds.key + "/")

    def outage(*_args: Any) -> None:  # the KMS goes down once the first DEK / file is done
        set_throttle(keystore, 1, 1)

    run = rewrap_dataset if job == "rewrap" else reencrypt_dataset
    # One KMS request at a time, so "the first DEK done" is exactly one (rewrap keeps the DEKs in flight too).
    one_at_a_time = {"kms_concurrency": 1} if job == "rewrap" else {}
    try:
        with pytest.raises(SparkKmsError) as err:
            run(ds.uri, kms_options=faulty, storage_options=s3.options, run_id="out-1", progress=outage,
                **one_at_a_time)
    finally:
        set_throttle(keystore, 0, 1)
    assert type(err.value).__name__ == "ThrottlingError"
    after = bodies(s3, ds.key + "/")
    record = json.loads(body(s3, f"{ds.key}/_spark_kms_runs/out-1.json"))
    assert record["status"] == "failed" and record["error"].startswith("ThrottlingError: ")
    assert not [k for k in after if k.endswith(".reencrypt") or k.endswith("/.lock")]
    data = [f"{ds.key}/{rel}" for rel in FILES]
    if job == "rewrap":
        # No data object is written; the manifest keeps the one DEK rewrapped before the outage (whole: one PUT).
        assert {k: after[k] for k in before} == before
        assert set(after) - set(before) == {f"{ds.key}/_spark_kms_keys.json", f"{ds.key}/_spark_kms_runs/out-1.json"}
        assert len(Dataset.open(ds.root).manifest) == 1
    else:
        # The file rewritten before the outage is new (whole); the one being rewritten and the rest are untouched.
        assert [k for k in data if after[k] != before[k]] == [data[0]]
        assert {k: after[k] for k in before if k not in data} == {k: v for k, v in before.items() if k not in data}
        assert set(after) - set(before) == {f"{ds.key}/_spark_kms_runs/out-1.state.json",
                                            f"{ds.key}/_spark_kms_runs/out-1.json"}
    assert ds.decrypted().equals(ds.expected)

    done = run(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)  # the KMS is back
    assert done.ok and done.run_id == "out-1" if job == "reencrypt" else done.ok  # re-encrypt resumes its run
    inspection = inspect_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
    if job == "rewrap":
        assert inspection.up_to_date is True
    else:  # every file under a new data key of the current version (the join-domain key is kept, not rotated)
        assert all(d.behind is False for d in inspection.deks if d.algorithm != AES_256_SIV)
        assert all(ids == {"out-1"} for ids in _gcm_run_ids(ds).values())
    assert ds.decrypted().equals(ds.expected)


# -- gc, and listings of more than 1,000 objects ---------------------------------------------------------


def test_gc_and_inspect_on_s3_page_through_more_than_1000_objects(s3, ds):
    staging, trash = f"{ds.key}/_spark_kms_staging", f"{ds.key}/_spark_kms_trash"
    # a write killed long ago, with 1,100 staged objects: they sort before the data files, so the data
    # files are on the second page of the dataset's listing
    put_many(s3, [f"{staging}/dead/date=2024-01-01/part-{i:05d}-dead-a0.parquet" for i in range(1100)])
    age_objects(s3, f"{staging}/dead/", 2 * DAY)
    listing = s3.keys(ds.key + "/")
    assert len(listing) > 1000 and all(listing.index(k) >= 1000 for k in ds.data_keys(s3))

    inspection = inspect_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
    assert [f.path for f in inspection.files] == FILES and inspection.rows == 4 * ROWS_PER_FILE

    items = {
        "live": f"{staging}/live/part-00000-live-a0.parquet",  # a write in progress
        "decided": f"{staging}/decided/_COMMITTING",  # a decided commit: the next write completes it
        "decided_trash": f"{trash}/decided/date=2024-01-01/part-0.parquet",
        "dead_trash": f"{trash}/gone/part-9.parquet",
        "dead_temp": f"{ds.key}/date=2024-01-02/.part-0.parquet.k3j9x2ab.reencrypt",
        "dead_tmp": f"{ds.key}/_spark_kms_runs/.r1.json.ab12cd34.tmp",
        "live_temp": f"{ds.key}/date=2024-01-03/.part-0.parquet.zz99yy88.reencrypt",
    }
    put_many(s3, [items["decided"]], b"{}")
    put_many(s3, [v for k, v in items.items() if k != "decided"])
    for name in ("decided", "decided_trash", "dead_trash", "dead_temp", "dead_tmp"):
        age_objects(s3, items[name], 2 * DAY)
    before = etags(s3, ds.key + "/")

    dry = collect_garbage(ds.uri, dry_run=True, storage_options=s3.options)
    assert etags(s3, ds.key + "/") == before  # a dry run removes nothing
    expected = {s3.uri(f"{staging}/dead"), s3.uri(f"{trash}/gone"), s3.uri(items["dead_temp"]),
                s3.uri(items["dead_tmp"])}
    assert {x.path for x in dry.abandoned} == expected and not dry.removed
    kept = {x.path: x.reason for x in dry.leftovers if not x.abandoned}
    assert set(kept) == {s3.uri(f"{staging}/live"), s3.uri(f"{staging}/decided"), s3.uri(f"{trash}/decided"),
                         s3.uri(items["live_temp"])}
    assert "commit was decided" in kept[s3.uri(f"{staging}/decided")]

    report = collect_garbage(ds.uri, storage_options=s3.options)
    assert {x.path for x in report.removed} == expected
    after = etags(s3, ds.key + "/")
    assert not [k for k in after if k.startswith(f"{staging}/dead/")]  # all 1,100, past the first page
    removed = set(before) - set(after)
    assert len(removed) == 1100 + 3
    assert {k: v for k, v in before.items() if k not in removed} == after  # nothing else changed
    for name in ("live", "decided", "decided_trash", "live_temp"):
        assert items[name] in after, name
    # (readers refuse a dataset while a decided commit is unfinished; this one is a stand-in)
    resolve(s3.uri(f"{staging}/decided"), s3.options).delete_dir()
    assert ds.decrypted().equals(ds.expected)


# -- the rotation lock ------------------------------------------------------------------------------------

HOLDER = r"""
import json, sys, time
from spark_kms.jobs._lock import dataset_lock

args = json.loads(sys.stdin.read())
with dataset_lock(args["uri"], "reencrypt", storage_options=args["storage"], lease_s=3):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_rotation_lock_on_s3_is_held_across_processes_and_expires_with_a_killed_holder(
    s3, ds, local_kms, monkeypatch
):
    rotate(local_kms)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(json.dumps({"uri": ds.uri, "storage": s3.options}))
        proc.stdin.close()
        assert _first_line(proc, timeout=60) == "held"
        lock = f"{ds.key}/_spark_kms_runs/.lock"

        def data() -> dict[str, str]:  # the holder renews its lease every second: its lock body changes
            return {k: v for k, v in bodies(s3, ds.key + "/").items() if k != lock}

        before = data()
        for job in (rewrap_dataset, reencrypt_dataset):
            with pytest.raises(JobError, match="another rotation job is running") as err:
                job(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)
            assert f"{ds.uri}/_spark_kms_runs/.lock" in str(err.value) and f":{proc.pid}:" in str(err.value)
        assert data() == before  # refused before anything was written
        assert f":{proc.pid}:" in json.loads(body(s3, lock))["owner"]  # and the lock is still the holder's
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    monkeypatch.setenv(TIMEOUT_ENV, "20")
    summary = rewrap_dataset(ds.uri, kms_options=ds.kms_options, storage_options=s3.options)  # after the lease
    assert summary.ok and summary.deks == 5


# -- decrypt's destination swap -------------------------------------------------------------------------


def _put_tree(s3: Any, prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/{rel}", Body=data)


def _tree(s3: Any, prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) + 1:]: body(s3, k) for k in s3.keys(prefix + "/") if not k.endswith("/")}


def _beside(s3: Any, prefix: str) -> list[str]:
    parent, name = prefix.rsplit("/", 1)
    return [k for k in s3.keys(f"{parent}/.{name}.spark_kms-") if not k.endswith("/")]


OLD = {"part-0.parquet": b"old data", "extra.csv": b"id\n1\n", "_SUCCESS": b""}
NEW = {"part-00000-a.parquet": b"new 0", "part-00001-a.parquet": b"new 1", "_SUCCESS": b""}


def test_the_destination_swap_on_s3_replaces_the_prefix_or_leaves_it_as_it_was(s3, s3_prefix):
    prefix = f"{s3_prefix}/plain"
    _put_tree(s3, prefix, OLD)
    with pytest.raises(RuntimeError), staged_replacement(s3.uri(prefix), "test", storage_options=s3.options) as st:
        st.join("part-00000-a.parquet").write_bytes_atomic(b"half written")
        raise RuntimeError("the write failed")
    assert _tree(s3, prefix) == OLD and _beside(s3, prefix) == []

    with staged_replacement(s3.uri(prefix), "test", storage_options=s3.options) as staging:
        assert isinstance(staging, Location) and staging.uri.startswith(s3.uri(f"{s3_prefix}/.plain.spark_kms-staging-"))
        for rel, data in NEW.items():
            staging.join(rel).write_bytes_atomic(data)
    assert _tree(s3, prefix) == NEW and _beside(s3, prefix) == []

    fresh = f"{s3_prefix}/fresh/plain"  # no destination yet
    with staged_replacement(s3.uri(fresh), "test", storage_options=s3.options) as staging:
        staging.join("data.txt").write_bytes_atomic(b"first")
    assert _tree(s3, fresh) == {"data.txt": b"first"}


@pytest.mark.parametrize(("phase", "copies_before_crash"), [("park", 1), ("publish", len(OLD) + 1)])
def test_a_swap_on_s3_killed_midway_never_mixes_old_and_new_and_is_finished_by_recovery(
    s3, s3_prefix, monkeypatch, phase, copies_before_crash
):
    prefix = f"{s3_prefix}/plain"
    _put_tree(s3, prefix, OLD)
    orphan = f"{s3_prefix}/.plain.spark_kms-staging-dead/part-0.parquet"  # a killed job's plaintext
    _put_tree(s3, orphan.rsplit("/", 1)[0], {"part-0.parquet": b"leftover"})
    copies = []
    real_copy = Location.copy_to

    def crashing_copy(self: Location, target: Location) -> None:
        if len(copies) == copies_before_crash:
            raise KeyboardInterrupt("killed")  # the process dies here: nothing after runs
        copies.append(target.uri)
        real_copy(self, target)

    monkeypatch.setattr(Location, "copy_to", crashing_copy)
    with pytest.raises(KeyboardInterrupt), staged_replacement(s3.uri(prefix), "test",
                                                              storage_options=s3.options) as staging:
        for rel, data in NEW.items():
            staging.join(rel).write_bytes_atomic(data)
    monkeypatch.setattr(Location, "copy_to", real_copy)

    seen = _tree(s3, prefix)
    journal = json.loads(body(s3, f"{s3_prefix}/.plain.spark_kms-replace.json"))
    assert journal["phase"] == phase and orphan not in _beside(s3, prefix)
    assert "_SUCCESS" not in seen  # parked first, published last: a reader waiting for it sees no partial state
    if phase == "park":
        assert set(seen) < set(OLD) and all(seen[k] == OLD[k] for k in seen)
    else:
        assert set(seen) < set(NEW) and all(seen[k] == NEW[k] for k in seen)  # never a mix of old and new

    assert recover_replacement(s3.uri(prefix), storage_options=s3.options) is True
    assert _tree(s3, prefix) == NEW and _beside(s3, prefix) == []
    assert recover_replacement(s3.uri(prefix), storage_options=s3.options) is False  # idempotent


@pytest.mark.spark
def test_decrypt_to_s3_without_hadoop_aws_fails_and_leaves_the_destination_as_it_was(
    spark, s3, s3_prefix, local_kms, tmp_path
):
    source = build(resolve(tmp_path / "customers"), "", local_kms)  # local source: Spark reads it
    prefix = f"{s3_prefix}/plain"
    _put_tree(s3, prefix, OLD)
    with pytest.raises(ConfigurationError, match="hadoop-aws") as err:
        decrypt_dataset(source.uri, s3.uri(prefix, scheme="s3a"), kms_options=source.kms_options, spark=spark,
                        storage_options=s3.options, run_id="dec-s3")
    assert s3.secret not in str(err.value)
    assert _tree(s3, prefix) == OLD and _beside(s3, prefix) == []
    record = json.loads((Path(source.root.path) / "_spark_kms_runs" / "dec-s3.json").read_text())
    assert record["status"] == "failed" and "hadoop-aws" in record["error"]


# -- secrets ---------------------------------------------------------------------------------------------


def test_the_s3_secret_is_in_no_log_record_error_or_run_record(s3, ds, local_kms, caplog):
    caplog.set_level("DEBUG")
    rotate(local_kms)
    opts = json.dumps(s3.options)  # the JSON form is accepted too
    errors: list[BaseException] = []
    inspect_dataset(ds.uri, kms_options=ds.kms_options, storage_options=opts)
    rewrap_dataset(ds.uri, kms_options=ds.kms_options, storage_options=opts, run_id="s-rw")
    reencrypt_dataset(ds.uri, kms_options=ds.kms_options, storage_options=opts, run_id="s-re")
    collect_garbage(ds.uri, grace_s=0, storage_options=opts)
    for bad in (lambda: inspect_dataset(s3.uri(f"{ds.key}/nope"), storage_options=opts),
                lambda: reencrypt_dataset(ds.uri, kms_options=ds.kms_options, storage_options=opts, abandon="x"),
                lambda: rewrap_dataset(ds.uri, kms_options={"local": {"keystore": "/nonexistent"}},
                                       storage_options=opts, run_id="s-fail")):
        with pytest.raises(SparkKmsError) as err:
            bad()
        errors.append(err.value)
    assert len(errors) == 3
    assert s3.secret not in caplog.text
    assert not [r for r in caplog.records if s3.secret in repr(r.args) or s3.secret in str(r.msg)]
    assert not [e for e in errors if s3.secret in str(e) or s3.secret in repr(e)]
    records = [k for k in s3.keys(f"{ds.key}/_spark_kms_runs/") if k.endswith(".json")]
    assert {k.rsplit("/", 1)[1] for k in records} >= {"s-rw.json", "s-re.json", "s-re.state.json", "s-fail.json"}
    assert not [k for k in s3.keys(ds.key + "/") if not k.endswith("/") and s3.secret.encode() in body(s3, k)]
    assert json.loads(body(s3, f"{ds.key}/_spark_kms_runs/s-fail.json"))["status"] == "failed"
