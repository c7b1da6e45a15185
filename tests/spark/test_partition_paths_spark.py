"""SQL ``kms_decrypt`` with ``register_functions(spark, datasets=[<hive partition dir>])`` after a
rewrap (issue #14, item 9): the key table gathered at registration is the partition's footers with
the *dataset root's* manifest applied. The old key version is disabled, so the footers' wraps no
longer open -- the control registers again without the manifest and fails with KeyStateError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spark_kms.crypto import DATASET_MANIFEST_NAME
from spark_kms.jobs import rewrap_dataset
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_key_table
from spark_kms.spark.sql import register_functions

from ._helpers import sorted_rows

pytestmark = pytest.mark.spark

DATES = ("2026-11-29", "2026-11-30")


@pytest.fixture
def rewrapped_partition(spark: Any, local_kms: Any, tmp_path: Path) -> tuple[Path, Path, dict[str, Any], list[Any]]:
    keystore, key_uri, opts = local_kms
    rows = [(i, f"name-{i}", f"{i:03d}-45-{i:04d}", DATES[i % 2]) for i in range(30)]
    df = spark.createDataFrame(rows, "id long, name string, ssn string, event_date string").repartition(2)
    root = tmp_path / "customers"
    (df.write.format("spark_kms").option("key_uri", key_uri).option("columns", "name,ssn")
       .option("partition_by", "event_date").option("kms_options", json.dumps(opts)).mode("overwrite")
       .save(str(root)))
    kms = LocalKms(keystore)
    kms.rotate_key("alias/pii")
    rewrap_dataset(root, kms_options=opts)
    kms.disable_key_version("alias/pii", 1)
    partition = root / f"event_date={DATES[0]}"
    files = [p for p in partition.iterdir() if p.suffix == ".parquet"]
    assert files and {e.key_version for f in files for e in read_key_table(f).deks.values()} == {"1"}
    expected = sorted(((r[0], r[1], r[2]) for r in rows if r[3] == DATES[0]), key=repr)  # as sorted_rows
    return root, partition, opts, expected


def _decrypt_sql(spark: Any, partition: Path) -> list[Any]:
    spark.read.parquet(str(partition)).createOrReplaceTempView("one_day")
    return sorted_rows(spark.sql(
        "SELECT id, kms_decrypt(name, 'name') AS name, kms_decrypt(ssn) AS ssn FROM one_day"
    ))


def test_sql_kms_decrypt_registered_on_a_partition_uses_the_root_manifest(spark, rewrapped_partition):
    root, partition, opts, expected = rewrapped_partition
    table = register_functions(spark, datasets=[str(partition)], kms_options=opts)
    assert {e.key_version for e in table.deks.values()} == {"2"}  # the manifest's wraps
    assert _decrypt_sql(spark, partition) == expected


def test_control_registered_without_the_manifest_the_old_wraps_fail(spark, rewrapped_partition):
    root, partition, opts, _expected = rewrapped_partition
    (root / DATASET_MANIFEST_NAME).rename(root.parent / "manifest.bak")
    table = register_functions(spark, datasets=[str(partition)], kms_options=opts)
    assert {e.key_version for e in table.deks.values()} == {"1"}
    with pytest.raises(Exception, match="KeyStateError"):
        _decrypt_sql(spark, partition)
