"""The ``spark_kms`` data source on S3 (moto's S3 server over HTTP on 127.0.0.1; real pyarrow and
boto3 clients): writes, appends and overwrites read back through both readers, ``s3://`` and
``s3a://`` as one dataset, listings past 1,000 objects, task retries, KMS and S3 outages mid-write,
an interrupted commit refused by readers and completed, and no secret anywhere.

pyarrow's S3 filesystem keeps a zero-byte "directory marker" object (``prefix/``) where it deletes
a prefix's last object; readers treat those as directories. Snapshots below compare the objects
that hold bytes (every key not ending in ``/``), by key and ETag.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from spark_kms.errors import JobError, KeyStateError
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_decrypted_table
from spark_kms.spark import errors_translated
from spark_kms.spark._commit import (
    STAGING_DIR,
    TRASH_DIR,
    commit_staged,
    decide_commit,
    final_name,
    pending_commits,
    recover_interrupted_commits,
    remove_abandoned_writes,
    start_staging,
)
from spark_kms.spark._options import RESULT_OPTION
from spark_kms.storage import resolve

pytestmark = [pytest.mark.spark]

KEY_URI = "local://alias/pii"
ROWS_SCHEMA = "id long, email string, ssn string, day string"


@pytest.fixture(autouse=True)
def _quiet_moto() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per HTTP request otherwise


# -- helpers --------------------------------------------------------------------------------------


def _rows(start: int, n: int, tag: str) -> list[tuple[Any, ...]]:
    return [(i, f"user{i % 7}@example.org", f"{tag}-ssn-{i:04d}", f"2024-01-0{1 + i % 3}") for i in range(start, start + n)]


def _df(spark: Any, rows: list[tuple[Any, ...]], partitions: int = 2) -> Any:
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, partitions), ROWS_SCHEMA)


def _write(df: Any, uri: str, kms: Any, storage: dict[str, str], mode: str = "append", **options: str) -> None:
    writer = (df.write.format("spark_kms").mode(mode).option("key_uri", KEY_URI)
              .option("kms_options", json.dumps(kms)).option("storage_options", json.dumps(storage)))
    for name, value in {"columns": "ssn", **options}.items():
        writer = writer.option(name, value)
    with errors_translated():
        writer.save(uri)


def _read(spark: Any, uri: str, kms: Any, storage: dict[str, str]) -> list[tuple[Any, ...]]:
    with errors_translated():
        df = (spark.read.format("spark_kms").option("kms_options", json.dumps(kms))
              .option("storage_options", json.dumps(storage)).load(uri))
        return sorted((r.id, r.email, r.ssn, str(r.day)) for r in df.collect())


def _pyarrow_rows(uri: str, kms: Any, storage: dict[str, str]) -> list[tuple[Any, ...]]:
    table = read_decrypted_table(resolve(uri, storage), kms_options=kms)
    return sorted((r["id"], r["email"], r["ssn"], str(r["day"])) for r in table.to_pylist())


def _objects(s3: Any, prefix: str) -> dict[str, str]:
    """Key -> ETag of every object holding bytes under ``prefix`` (directory markers left out)."""
    out: dict[str, str] = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", []) if not o["Key"].endswith("/")})
    return out


def _hidden(keys: Iterable[str], prefix: str) -> list[str]:
    return [k for k in keys if k[len(prefix):].lstrip("/").startswith(("_spark_kms_staging", "_spark_kms_trash"))]


def _put_many(s3: Any, keys: list[str], body: bytes = b"x") -> None:
    client = s3.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3.bucket, Key=k, Body=body), keys))


def _held_write(spark: Any, release: Path, write: Callable[[Any], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``write(df)`` in a thread, its one task held (before its first batch reaches the writer)
    until ``release`` exists. Returns the thread and the list its error lands in."""
    from pyspark.sql import functions as F

    @F.udf("string")
    def held(value):  # no type hints: pyspark would read a pandas UDF type from them
        deadline = time.monotonic() + 120
        while not os.path.exists(str(release)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return value

    df = _df(spark, _rows(500, 20, "held"), 1).withColumn("ssn", held("ssn"))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            # A Python data source is found through the JVM thread's active session, which a new thread lacks.
            spark._jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
            write(df)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def _wait_for_start(s3: Any, prefix: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and thread.is_alive():
        if any(k.endswith("/_STARTED") for k in s3.keys(f"{prefix}/{STAGING_DIR}/")):
            return
        time.sleep(0.05)
    raise AssertionError("the held write never started staging")


# -- writes and reads -----------------------------------------------------------------------------


def test_write_append_overwrite_read_back_through_both_readers_and_both_schemes(spark, local_kms, s3, s3_prefix):
    kms = local_kms.kms_options
    uri, uri_a = s3.uri(f"{s3_prefix}/ds"), s3.uri(f"{s3_prefix}/ds", scheme="s3a")
    first, second, third = _rows(0, 30, "a"), _rows(30, 12, "b"), _rows(100, 9, "c")

    _write(_df(spark, first, 3), uri, kms, s3.options, mode="overwrite", deterministic_columns="email",
           partition_by="day")
    objects = _objects(s3, s3_prefix)
    data = sorted(k for k in objects if k.endswith(".parquet"))
    assert len(data) == 9 and all(f"{s3_prefix}/ds/day=2024-01-0" in k for k in data)  # 3 tasks x 3 days
    assert not _hidden(objects, f"{s3_prefix}/ds")  # no staging, trash or journal left
    assert _read(spark, uri, kms, s3.options) == sorted(first)

    # s3a:// names the same objects: the append lands beside them, both schemes read all of it.
    _write(_df(spark, second, 1), uri_a, kms, s3.options, deterministic_columns="email", partition_by="day")
    both = sorted(first + second)
    assert _read(spark, uri, kms, s3.options) == both == _read(spark, uri_a, kms, s3.options)
    assert _pyarrow_rows(uri, kms, s3.options) == both == _pyarrow_rows(uri_a, kms, s3.options)
    # One identity in the encryption context whichever scheme wrote: s3://bucket/key.
    contexts = {e.encryption_context["spark_kms.dataset"] for e in _footer_deks(s3, uri)
                if "spark_kms.dataset" in e.encryption_context}
    assert contexts == {f"s3://{s3.bucket}/{s3_prefix}/ds"}
    # Equal emails give equal cells across both writes (one join-domain key): 7 distinct of 42.
    assert len(set(_raw_column(s3, uri, "email"))) == 7

    _write(_df(spark, third, 2), uri_a, kms, s3.options, mode="overwrite", partition_by="day")
    assert _read(spark, uri, kms, s3.options) == sorted(third) == _pyarrow_rows(uri_a, kms, s3.options)
    after = _objects(s3, s3_prefix)
    assert not set(data) & set(after)  # the old files went
    assert not _hidden(after, f"{s3_prefix}/ds")


def _footer_deks(s3: Any, uri: str) -> list[Any]:
    from spark_kms.parquet.dataset import read_key_table

    root = resolve(uri, s3.options)
    return [d for e in root.list_files() for d in read_key_table(e.location).deks.values()]


def _raw_column(s3: Any, uri: str, column: str) -> list[bytes]:
    import pyarrow.parquet as pq

    root = resolve(uri, s3.options)
    out: list[bytes] = []
    for e in root.list_files():
        with e.location.open_input_file() as fh:
            out.extend(pq.read_table(fh, columns=[column]).column(column).to_pylist())
    return out


def test_listings_past_1000_objects_commit_and_collect(s3, s3_prefix):
    """Pagination: with 1,010 objects of an abandoned write in staging, a commit still finds its
    own staged files (listed on the second page, after the abandoned ones), and gc lists and
    removes all 1,010 (batched deletes)."""
    root = resolve(s3.uri(f"{s3_prefix}/ds"), s3.options)
    n = 1010
    _put_many(s3, [f"{s3_prefix}/ds/{STAGING_DIR}/dead/x=1/part-{i:05d}-dead-a0.parquet" for i in range(n)])
    start_staging(root, "w1", mode="append")
    staged = [f"x=1/part-{i:05d}-w1-a0.parquet" for i in range(3)]
    _put_many(s3, [f"{s3_prefix}/ds/{STAGING_DIR}/w1/{rel}" for rel in staged], b"data")
    assert len(root.list_files(include_hidden=True)) == n + 4  # more than one page

    final = commit_staged(root, "w1", staged, overwrite=False)  # its listing of the dataset pages past "dead"
    assert sorted(e.location.uri for e in root.list_files()) == sorted(final)
    assert [x.removed for x in remove_abandoned_writes(root)] == [False]  # fresh: may be a write in progress

    found = remove_abandoned_writes(root, grace_s=0)
    assert [(x.kind, x.removed) for x in found] == [("staging", True)] and found[0].path.endswith("/dead")
    assert sorted(_objects(s3, s3_prefix)) == sorted(f"{s3_prefix}/ds/{final_name(r)}" for r in staged)


# -- failures -------------------------------------------------------------------------------------

_RETRY_JOB = r'''
import json, sys
from pathlib import Path
from pyspark import TaskContext
from spark_kms.spark import errors_translated
from spark_kms.spark.session import local_session

workdir, uri, storage, kms = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def failing(partitions, every_attempt):
    def fn(batches):
        tc = TaskContext.get()
        doomed = tc.partitionId() in partitions and (every_attempt or tc.attemptNumber() == 0)
        for i, batch in enumerate(batches):
            if doomed and i == 2:  # two batches reached the writer: a half-written staged file
                raise RuntimeError(f"injected failure: partition {tc.partitionId()} attempt {tc.attemptNumber()}")
            yield batch
        if doomed:
            raise RuntimeError(f"injected failure: partition {tc.partitionId()} attempt {tc.attemptNumber()}")
    return fn

def write(df, mode, result=None):
    w = (df.write.format("spark_kms").mode(mode).option("key_uri", "local://alias/pii").option("columns", "ssn")
         .option("kms_options", kms).option("storage_options", storage))
    if result:
        w = w.option("_spark_kms_result_file", str(result))
    with errors_translated():
        w.save(uri)

spark = local_session("local[2,3]", "spark_kms-s3-retries", conf={
    "spark.local.dir": str(workdir / "spark-local"), "spark.sql.execution.arrow.maxRecordsPerBatch": "50"})
df = spark.range(0, 1000, numPartitions=4).selectExpr("id", "concat('PIISECRET-', id) as ssn")
report = {}
write(df.limit(100), "overwrite")
Path(workdir / "v1.done").write_text("")
while not (workdir / "v1.snapshot").exists():
    import time; time.sleep(0.05)
try:
    write(df.mapInArrow(failing({1}, True), df.schema), "overwrite")
    report["failed_job_error"] = None
except Exception as exc:
    report["failed_job_error"] = f"{type(exc).__name__}: {exc}"[:2000]
Path(workdir / "failed.done").write_text("")
while not (workdir / "failed.snapshot").exists():
    import time; time.sleep(0.05)
write(df.mapInArrow(failing({1, 2}, False), df.schema), "overwrite", workdir / "result.json")
back = (spark.read.format("spark_kms").option("kms_options", kms).option("storage_options", storage).load(uri))
rows = back.collect()
report["rows"] = len(rows)
report["distinct_ids"] = len({r.id for r in rows})
report["ssn_ok"] = all(r.ssn == f"PIISECRET-{r.id}" for r in rows)
spark.stop()
(workdir / "report.json").write_text(json.dumps(report))
'''


@pytest.mark.slow
def test_task_failures_and_retries_on_local_2_3(s3, s3_prefix, local_kms, tmp_path):
    """Task attempts that fail once (``local[2,3]``: retries on) leave no duplicate rows; a job whose
    task always fails leaves the previous dataset object-for-object identical."""
    uri = s3.uri(f"{s3_prefix}/ds")
    script = tmp_path / "retry_job.py"
    script.write_text(_RETRY_JOB)
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(workdir), uri, json.dumps(s3.options), json.dumps(local_kms.kms_options)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=workdir,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout))  # type: ignore[arg-type]
    reader.start()

    def wait(name: str) -> None:
        deadline = time.monotonic() + 400
        while not (workdir / name).exists():
            assert proc.poll() is None, "".join(output)[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {name}"
            time.sleep(0.1)

    try:
        wait("v1.done")
        v1 = _objects(s3, s3_prefix)
        (workdir / "v1.snapshot").touch()
        wait("failed.done")
        after_failure = _objects(s3, s3_prefix)
        (workdir / "failed.snapshot").touch()
        assert proc.wait(timeout=400) == 0, "".join(output)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=30)
    report = json.loads((workdir / "report.json").read_text())
    logs = "".join(output)

    assert report["failed_job_error"] and "injected failure" in report["failed_job_error"]
    assert after_failure == v1  # same objects, same bytes: nothing of the failed job is left
    assert report["rows"] == 1000 == report["distinct_ids"] and report["ssn_ok"]
    result = json.loads((workdir / "result.json").read_text())
    assert result["rows"] == 1000 and len(result["files"]) == 4
    assert result["kms_calls"] == {"local:GenerateDataKey": 4}  # the successful attempts' only
    final = _objects(s3, s3_prefix)
    assert sorted(k.split("/ds/", 1)[1] for k in final) == sorted(result["files"])  # no staging, no half files
    assert s3.secret not in logs and s3.secret not in json.dumps(result) and s3.secret not in str(report)
    assert "PIISECRET" not in logs


def test_kms_outage_mid_write_leaves_the_previous_dataset_unchanged(spark, local_kms, s3, s3_prefix, tmp_path):
    kms = local_kms.kms_options
    uri = s3.uri(f"{s3_prefix}/ds")
    v1 = _rows(0, 20, "v1")
    _write(_df(spark, v1), uri, kms, s3.options, mode="overwrite", partition_by="day")
    before = _objects(s3, s3_prefix)

    release = tmp_path / "release"
    thread, errors = _held_write(spark, release, lambda df: _write(df, uri, kms, s3.options, mode="overwrite"))
    admin = LocalKms(local_kms.keystore_dir)
    try:
        _wait_for_start(s3, f"{s3_prefix}/ds", thread)
        admin.disable_key("alias/pii")  # the KMS refuses every GenerateDataKey from now on
    finally:
        release.touch()
        thread.join(timeout=180)
    admin.enable_key("alias/pii")
    assert len(errors) == 1 and isinstance(errors[0], KeyStateError), errors
    assert _objects(s3, s3_prefix) == before  # same objects, same bytes; its staging is gone too
    assert _read(spark, uri, kms, s3.options) == sorted(v1)


def test_s3_outage_mid_write_leaves_the_previous_dataset_unchanged(spark, local_kms, s3, s3_prefix, tmp_path):
    """The write reaches S3 through a second endpoint (same bucket) that goes away while its task
    runs: the task fails, and so does the abort -- the previous data is intact, and the staging the
    abort could not remove is hidden from readers and removed by the next gc."""
    from spark_kms.testing.s3 import S3Server

    kms = local_kms.kms_options
    uri = s3.uri(f"{s3_prefix}/ds")
    v1 = _rows(0, 20, "v1")
    _write(_df(spark, v1), uri, kms, s3.options, mode="overwrite")
    before = _objects(s3, s3_prefix)

    doomed = S3Server(bucket=s3.bucket).start()  # moto's state is per process: the same bucket
    doomed_options = {**doomed.options, "s3.connect_timeout": "1", "s3.request_timeout": "3"}
    release = tmp_path / "release"
    thread, errors = _held_write(spark, release, lambda df: _write(df, uri, kms, doomed_options, mode="overwrite"))
    try:
        _wait_for_start(s3, f"{s3_prefix}/ds", thread)
        doomed.stop()  # the endpoint is gone: connections are refused
    finally:
        release.touch()
        thread.join(timeout=180)
    assert len(errors) == 1, errors
    assert doomed.secret not in str(errors[0])
    during = _objects(s3, s3_prefix)
    assert {k: v for k, v in during.items() if not _hidden([k], f"{s3_prefix}/ds")} == before
    assert _hidden(during, f"{s3_prefix}/ds")  # the abort could not delete its staging
    assert _read(spark, uri, kms, s3.options) == sorted(v1)  # staging is invisible

    assert recover_interrupted_commits(resolve(uri, s3.options), grace_s=0) == []  # nothing was decided
    assert _objects(s3, s3_prefix) == before


def test_an_interrupted_commit_is_refused_by_readers_then_completed(spark, local_kms, s3, s3_prefix):
    kms = local_kms.kms_options
    uri = s3.uri(f"{s3_prefix}/ds")
    v1, v2, v3 = _rows(0, 20, "v1"), _rows(100, 10, "v2"), _rows(200, 5, "v3")
    _write(_df(spark, v1), uri, kms, s3.options, mode="overwrite")
    source = s3.uri(f"{s3_prefix}/src")
    _write(_df(spark, v2), source, kms, s3.options, mode="overwrite")  # files to stage below
    root = resolve(uri, s3.options)

    def stage(write_id: str, mode: str) -> list[str]:
        staging = start_staging(root, write_id, mode=mode)
        rels = []
        for i, entry in enumerate(resolve(source, s3.options).list_files()):
            rels.append(f"part-{i:05d}-{write_id}-a0.parquet")
            entry.location.copy_to(staging.join(rels[-1]))
        return rels

    # A driver killed in the middle of rolling an overwrite forward: one old file already parked in
    # the trash, one new file copied in but not yet deleted from staging.
    rels = stage("wkilled", "overwrite")
    journal = decide_commit(root, "wkilled", rels, overwrite=True)
    old = journal["old"][0]
    root.join(old).move_to(root.join(TRASH_DIR, "wkilled", old))
    root.join(STAGING_DIR, "wkilled", rels[0]).copy_to(root.join(final_name(rels[0])))
    assert pending_commits(root) == ["wkilled"]

    with pytest.raises(JobError) as refused:
        _read(spark, uri, kms, s3.options)
    message = str(refused.value)
    assert "wkilled" in message and "commit in progress or interrupted" in message
    assert "next write" in message and "recover_interrupted_commits" in message
    with pytest.raises(JobError, match="wkilled"):
        _pyarrow_rows(uri, kms, s3.options)

    assert recover_interrupted_commits(root) == ["wkilled"]
    assert _read(spark, uri, kms, s3.options) == sorted(v2) == _pyarrow_rows(uri, kms, s3.options)
    assert not _hidden(_objects(s3, s3_prefix), f"{s3_prefix}/ds")

    # A decided append whose driver died before moving anything: the next write completes it first.
    rels = stage("wdecided", "append")
    decide_commit(root, "wdecided", rels, overwrite=False)
    with pytest.raises(JobError, match="wdecided"):
        _read(spark, uri, kms, s3.options)
    _write(_df(spark, v3, 1), uri, kms, s3.options)
    assert _read(spark, uri, kms, s3.options) == sorted(v2 + v2 + v3)
    assert pending_commits(root) == [] and not _hidden(_objects(s3, s3_prefix), f"{s3_prefix}/ds")


# -- secrets --------------------------------------------------------------------------------------


def test_the_s3_secret_appears_in_no_log_repr_error_or_result(spark, local_kms, s3, s3_prefix, tmp_path, caplog):
    """The writer and reader objects run here, in this process, so every log line they make is
    captured; a Spark write and read around them, and their errors, are checked too."""
    import pyarrow as pa
    from pyspark.sql import types as T

    from spark_kms.errors import ConfigurationError
    from spark_kms.spark._source_scan import SparkKmsReader, _ScanOptions
    from spark_kms.spark._source_write import SparkKmsWriter

    caplog.set_level(logging.DEBUG)
    kms = local_kms.kms_options
    uri = s3.uri(f"{s3_prefix}/ds")
    secret = s3.secret
    options = {"path": uri, "key_uri": KEY_URI, "columns": "ssn", "kms_options": json.dumps(kms),
               "storage_options": json.dumps(s3.options), RESULT_OPTION: str(tmp_path / "result.json")}
    schema = T.StructType([T.StructField(n, T.LongType() if n == "id" else T.StringType())
                           for n in ("id", "email", "ssn", "day")])

    writer = SparkKmsWriter(options, schema, overwrite=True)
    batch = pa.record_batch({"id": [1, 2], "email": ["a@x", "b@x"], "ssn": ["s-1", "s-2"], "day": ["d", "d"]})
    message = writer.write(iter([batch]))
    writer.commit([message])
    doomed = SparkKmsWriter(options, schema, overwrite=False)
    doomed.abort([None])
    scan = _ScanOptions.from_options({"path": uri, "kms_options": json.dumps(kms),
                                      "storage_options": json.dumps(s3.options)})
    spark_schema = scan.plan().spark_schema()
    reader = SparkKmsReader(scan, spark_schema)
    batches = [b for p in reader.partitions() for b in reader.read(p)]
    assert sorted(pa.Table.from_batches(batches).column("ssn").to_pylist()) == ["s-1", "s-2"]

    _write(_df(spark, _rows(0, 5, "x")), uri, kms, s3.options)
    assert len(_read(spark, uri, kms, s3.options)) == 7
    failures = []
    for bad in ({**s3.options, "s3.nope": secret},  # an unknown option: named, its value not
                {**s3.options, "s3.endpoint_override": "http://127.0.0.1:9"}):  # nothing listens there
        with pytest.raises(Exception) as failed:  # noqa: PT011 (any error: its text is what is checked)
            _read(spark, uri, kms, bad)
        failures.append(failed.value)
    assert isinstance(failures[0], ConfigurationError) and "s3.nope" in str(failures[0])

    result = (tmp_path / "result.json").read_text()
    assert json.loads(result)["rows"] == 2
    texts = {
        "logs": caplog.text + "".join(str(r.args) for r in caplog.records),
        "result": result,
        "reprs": " ".join(repr(x) for x in (writer, writer.location, writer.stage, scan, reader, message)),
        "errors": " ".join(f"{e!r} {e} {e.__cause__!r}" for e in failures),
    }
    assert {name for name, text in texts.items() if secret in text} == set()
    assert any("committed" in r.getMessage() for r in caplog.records)  # the capture did see the writer
