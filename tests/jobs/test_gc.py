"""Nothing is left behind (issue #14, item 8): the staging of killed writes, the trash of broken
commits and the temp files of killed jobs are removed -- by the next write and by ``spark-kms gc``
-- while committed data, a write in progress and a decided commit are never touched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.jobs import collect_garbage
from spark_kms.jobs._lock import dataset_lock
from spark_kms.spark._commit import DEFAULT_GRACE_S, JOURNAL_NAME, commit_staged

DAY = 24 * 3600.0


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything under it look last modified ``seconds`` ago."""
    when = time.time() - seconds
    for p in sorted([path, *path.rglob("*")], key=lambda p: -len(p.parts)):
        os.utime(p, (when, when), follow_symlinks=False)


def _put(path: Path, data: bytes = b"x", *, age: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age is not None:
        _age(path, age)
    return path


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def littered(dataset) -> dict[str, Path]:
    """The rotation test dataset with what killed writes and jobs leave behind, and what is live."""
    root = dataset.root
    staging, trash = root / "_spark_kms_staging", root / "_spark_kms_trash"
    items = {
        # a write killed before its commit, long ago: staged files in hive dirs
        "dead": _put(staging / "dead" / "date=2024-01-01" / "part-00000-dead-a0.parquet").parents[1],
        # a write in progress: created now
        "live": _put(staging / "live" / "part-00000-live-a0.parquet").parent,
        # an old staging dir a task is still writing into: its newest file is fresh
        "writing": _put(staging / "writing" / "part-00001-writing-a0.parquet").parent,
        # a decided commit whose driver died: the next write completes it, gc must not touch it
        "decided": _put(staging / "decided" / JOURNAL_NAME, b"{}").parent,
        "decided_trash": _put(trash / "decided" / "date=2024-01-01" / "part-0.parquet").parents[1],
        # trash a broken commit left behind (no journal any more)
        "dead_trash": _put(trash / "gone" / "part-9.parquet").parent,
        # temp files of killed jobs: a re-encrypt's next to a data file, an atomic write's in the runs dir
        "dead_temp": _put(root / "date=2024-01-02" / ".part-0.parquet.k3j_x9a2.reencrypt"),
        "dead_tmp": _put(root / "_spark_kms_runs" / ".r1.json.ab12cd34.tmp"),
        "live_temp": _put(root / "date=2024-01-03" / ".part-0.parquet.zz99yy88.reencrypt"),
    }
    for name in ("dead", "decided", "decided_trash", "dead_trash", "dead_temp", "dead_tmp"):
        _age(items[name], 2 * DAY)
    _age(items["writing"], 2 * DAY)
    os.utime(items["writing"] / "part-00001-writing-a0.parquet")  # ... but a task wrote into it just now
    return items


def _drop_stand_in_commit(littered: dict[str, Path]) -> None:
    """Readers refuse a dataset while a decided commit is unfinished (its files may be a mix of old and
    new); the fixture's "decided" commit is a stand-in with an empty journal that no write can complete,
    so it goes before the data is read back."""
    shutil.rmtree(littered["decided"])
    shutil.rmtree(littered["decided_trash"])


def test_gc_dry_run_lists_and_removes_nothing_then_gc_removes_only_the_abandoned(dataset, littered):
    before = _snapshot(dataset.root)

    dry = collect_garbage(dataset.root, dry_run=True)
    assert _snapshot(dataset.root) == before  # a dry run removes nothing
    abandoned = {Path(x.path) for x in dry.abandoned}
    expected = {littered[n] for n in ("dead", "dead_trash", "dead_temp", "dead_tmp")}
    assert abandoned == expected and not dry.removed
    kept = {Path(x.path): x.reason for x in dry.leftovers if not x.abandoned}
    assert set(kept) == {littered[n] for n in ("live", "writing", "decided", "decided_trash", "live_temp")}
    assert "commit was decided" in kept[littered["decided"]]
    assert "write in progress" in kept[littered["writing"]]

    report = collect_garbage(dataset.root)
    assert {Path(x.path) for x in report.removed} == expected
    for name in ("dead", "dead_trash", "dead_temp", "dead_tmp"):
        assert not littered[name].exists(), name
    for name in ("live", "writing", "decided", "decided_trash", "live_temp"):
        assert littered[name].exists(), name
    after = _snapshot(dataset.root)
    assert after.pop("_spark_kms_runs/.lock") == hashlib.sha256(b"").hexdigest()  # the rotation lock gc took
    removed = {k for k in before if k not in after}
    assert all(k.split("/")[0].startswith("_") or Path(k).name.startswith(".") for k in removed)
    assert {k: v for k, v in before.items() if k not in removed} == after  # nothing else changed
    _drop_stand_in_commit(littered)
    assert dataset.decrypted().equals(dataset.expected)  # committed data untouched


def test_grace_period_and_partition_path(dataset, littered):
    # Everything is older than 0 s: only decided commits are still kept. A partition path gcs its root.
    report = collect_garbage(dataset.root / "date=2024-01-01", grace_s=0)
    assert report.dataset == str(dataset.root)
    assert {Path(x.path) for x in report.leftovers if not x.removed} == {littered["decided"],
                                                                          littered["decided_trash"]}
    _drop_stand_in_commit(littered)
    assert dataset.decrypted().equals(dataset.expected)
    with pytest.raises(ConfigurationError, match="non-negative number of seconds"):
        collect_garbage(dataset.root, grace_s=-1)
    with pytest.raises(ConfigurationError, match="does not exist"):
        collect_garbage(dataset.root / "nope")


def test_gc_leaves_temp_files_while_a_rotation_job_holds_the_dataset(dataset, littered):
    with dataset_lock(dataset.root, "reencrypt"):
        report = collect_garbage(dataset.root)
    assert littered["dead_temp"].exists() and littered["dead_tmp"].exists()
    reasons = {Path(x.path): x.reason for x in report.leftovers}
    assert reasons[littered["dead_temp"]] == "a rotation job is running on the dataset"
    assert not littered["dead"].exists()  # staging does not depend on the rotation lock


def test_the_gc_verb(dataset, littered):
    dry = CliRunner().invoke(cli, ["gc", str(dataset.root), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    data = json.loads(dry.stdout)
    assert data["dry_run"] is True and data["grace_s"] == DEFAULT_GRACE_S == 6 * 3600
    assert sum(x["abandoned"] for x in data["leftovers"]) == 4 and littered["dead"].exists()

    text = CliRunner().invoke(cli, ["gc", str(dataset.root), "--grace", "3600"])
    assert text.exit_code == 0, text.output
    assert "removed 4, kept 5" in text.stdout and "_spark_kms_staging/dead" in text.stdout
    assert not littered["dead"].exists() and littered["live"].exists()

    assert CliRunner().invoke(cli, ["gc", str(dataset.root / "nope")]).exit_code == ExitCode.USAGE
    assert CliRunner().invoke(cli, ["gc", str(dataset.root), "--grace", "-5"]).exit_code == ExitCode.USAGE
    assert "gc" in CliRunner().invoke(cli, ["--help"]).stdout


def test_a_commit_whose_staged_files_were_collected_fails_before_deciding(tmp_path):
    root = tmp_path / "ds"
    _put(root / "part-0.parquet", b"old data")
    _put(root / "_spark_kms_staging" / "w1" / "part-00000-w1-a0.parquet", b"new")
    with pytest.raises(JobError, match="staged files are gone.*part-00001-w1-a0.parquet"):
        commit_staged(str(root), "w1", ["part-00000-w1-a0.parquet", "part-00001-w1-a0.parquet"], overwrite=True)
    assert (root / "part-0.parquet").read_bytes() == b"old data"
    assert not (root / "_spark_kms_staging" / "w1" / JOURNAL_NAME).exists()  # nothing was decided


# -- through Spark: the next write collects, a write in progress survives ------------------------------


def _write(spark: Any, root: Path, opts: dict[str, Any], rows: list[tuple[Any, ...]], df: Any = None) -> None:
    if df is None:
        df = spark.createDataFrame(rows, "id long, name string").coalesce(1)
    (df.write.format("spark_kms").option("key_uri", "local://alias/pii").option("columns", "name")
       .option("kms_options", json.dumps(opts)).mode("append").save(str(root)))


def _rows(spark: Any, root: Path, opts: dict[str, Any]) -> list[tuple[Any, ...]]:
    df = spark.read.format("spark_kms").option("kms_options", json.dumps(opts)).load(str(root))
    return sorted(tuple(r) for r in df.select("id", "name").collect())


@pytest.mark.spark
def test_the_next_write_removes_killed_staging_but_not_a_write_in_progress(spark, local_kms, tmp_path):
    from pyspark.sql import functions as F

    opts = local_kms.kms_options
    root = tmp_path / "people"
    _write(spark, root, opts, [(1, "ann")])
    staging = root / "_spark_kms_staging"
    killed = _put(staging / "killed" / "part-00000-killed-a0.parquet", b"half a file").parent
    _age(killed, 2 * DAY)
    released = tmp_path / "release"

    @F.udf("string")
    def held(name):  # no type hints: pyspark would try to read a pandas UDF type from them
        # Runs in the task of the first write: holds it in progress until the test releases it.
        deadline = time.monotonic() + 120
        while not os.path.exists(str(released)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return name

    blocked = spark.createDataFrame([(2, "bob")], "id long, name string").coalesce(1)
    errors: list[BaseException] = []

    def slow_write() -> None:
        try:
            # A Python data source is found through the JVM thread's active session, which a new thread lacks.
            spark._jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
            _write(spark, root, opts, [], df=blocked.withColumn("name", held("name")))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=slow_write)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and {p.name for p in staging.iterdir()} <= {"killed"}:
            time.sleep(0.05)
        live = [p for p in staging.iterdir() if p.name != "killed"]
        assert len(live) == 1, f"the held write never started: {errors}"
        _age(live[0], 600)  # in progress for 10 minutes: well inside the grace period

        _write(spark, root, opts, [(3, "cy")])  # the next write: collects the killed one only
        assert not killed.exists()
        assert live[0].exists()
        assert {x.path for x in collect_garbage(root).removed} == set()  # gc keeps it too
        assert live[0].exists()
    finally:
        released.touch()
        thread.join(timeout=120)
    assert not errors, errors
    assert _rows(spark, root, opts) == [(1, "ann"), (2, "bob"), (3, "cy")]
    assert not staging.exists()  # every write cleaned up after itself
