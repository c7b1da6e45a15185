"""Every Spark reader reads a REWRAPPED dataset under its new wrapping -- given the dataset root,
one hive partition directory, or one data file -- because each applies the dataset root's
manifest. The old key version is disabled, so a reader that used the footers' copies (still
wrapped under it) fails with KeyStateError, as the control at the end shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from spark_kms.crypto import DATASET_MANIFEST_NAME
from spark_kms.jobs import rewrap_dataset
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_key_table
from spark_kms.spark import read_encrypted

from ._helpers import data_files, sorted_rows

pytestmark = pytest.mark.spark

DATES = ("2026-11-29", "2026-11-30")


def _rows(n: int) -> list[tuple[Any, ...]]:
    return [(i, f"name-{i}", f"{i:03d}-45-{i:04d}", DATES[i % 2]) for i in range(n)]


@pytest.fixture
def rewrapped(spark: Any, local_kms: Any, tmp_path: Path) -> tuple[Path, dict[str, Any], list[tuple[Any, ...]]]:
    """A partitioned dataset written by the data source, rewrapped to key version 2, version 1 disabled.

    Randomised columns only: their data keys never sit in a worker's key cache under the old
    wrapping (a writer does not cache the keys it generates), so nothing can hide a reader that
    unwraps the footers' copies.
    """
    keystore, key_uri, opts = local_kms
    rows = _rows(40)
    df = spark.createDataFrame(rows, "id long, name string, ssn string, event_date string").repartition(2)
    root = tmp_path / "customers"
    (df.write.format("spark_kms")
       .option("key_uri", key_uri)
       .option("columns", "name,ssn")
       .option("partition_by", "event_date")
       .option("kms_options", json.dumps(opts))
       .mode("overwrite")
       .save(str(root)))

    kms = LocalKms(keystore)
    kms.rotate_key("alias/pii")
    summary = rewrap_dataset(root, kms_options=opts)
    assert summary.deks == 2 and list(summary.key_versions.values()) == [["2"]]
    kms.disable_key_version("alias/pii", 1)

    files = [root / f for f in data_files(root)]
    assert {f.parent.name for f in files} == {f"event_date={d}" for d in DATES}
    # The footers still hold the old wrapping; only the root's manifest has the new one.
    assert {e.key_version for f in files for e in read_key_table(f).deks.values()} == {"1"}
    assert (root / DATASET_MANIFEST_NAME).exists()
    return root, opts, rows


def _load(spark: Any, path: Path, opts: dict[str, Any]) -> Any:
    return spark.read.format("spark_kms").option("kms_options", json.dumps(opts)).load(str(path))


def _plain(rows: list[tuple[Any, ...]], date: str | None = None, ids: set[int] | None = None) -> list[tuple[Any, ...]]:
    """The expected (id, name, ssn) rows, optionally of one partition or some ids."""
    return sorted(
        (r[:3] for r in rows if (date is None or r[3] == date) and (ids is None or r[0] in ids)), key=repr
    )


def test_every_reader_decrypts_a_rewrapped_dataset_from_root_partition_dir_and_file(spark, rewrapped):
    root, opts, rows = rewrapped
    partition = root / f"event_date={DATES[0]}"
    one_file = next(p for p in sorted(partition.iterdir()) if p.suffix == ".parquet")
    file_ids = set(pq.read_table(one_file, columns=["id"]).column("id").to_pylist())
    assert file_ids
    with_date = sorted(rows, key=repr)

    # read_encrypted: Spark's native scan + decrypt UDFs
    full = read_encrypted(spark, str(root), kms_options=opts)
    assert sorted_rows(full.select("id", "name", "ssn", F.col("event_date").cast("string"))) == with_date
    assert sorted_rows(read_encrypted(spark, str(partition), kms_options=opts).select("id", "name", "ssn")) == \
        _plain(rows, DATES[0])
    assert sorted_rows(read_encrypted(spark, str(one_file), kms_options=opts).select("id", "name", "ssn")) == \
        _plain(rows, ids=file_ids)

    # format("spark_kms"): the data source's own reader
    full = _load(spark, root, opts)
    assert sorted_rows(full.select("id", "name", "ssn", F.col("event_date").cast("string"))) == with_date
    assert sorted_rows(_load(spark, partition, opts).select("id", "name", "ssn")) == _plain(rows, DATES[0])
    assert sorted_rows(_load(spark, one_file, opts).select("id", "name", "ssn")) == _plain(rows, ids=file_ids)


def test_without_the_manifest_the_footers_old_wrapping_no_longer_opens(spark, rewrapped):
    """The control: the same reads fail once only the footers' copies are left."""
    root, opts, _rows_ = rewrapped
    partition = root / f"event_date={DATES[1]}"
    (root / DATASET_MANIFEST_NAME).rename(root.parent / "manifest.bak")
    with pytest.raises(Exception, match="KeyStateError"):
        read_encrypted(spark, str(partition), kms_options=opts).select("ssn").collect()
    with pytest.raises(Exception, match="KeyStateError"):
        _load(spark, partition, opts).collect()
