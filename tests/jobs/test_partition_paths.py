"""After a rewrap, inspection given one hive partition directory uses the dataset root's manifest
(issue #14, item 9): ``inspect_dataset``, ``needs_rotation`` and ``spark-kms inspect``.

The old key version is disabled after the rewrap, so only the manifest holds wraps that still
open; the footers hold version 1. The control at the end moves the manifest away: the same calls
then see the footers' version 1 and report the partition behind.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.crypto import DATASET_MANIFEST_NAME
from spark_kms.jobs import inspect_dataset, needs_rotation, rewrap_dataset
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_decrypted_table, read_key_table

PARTITION = "date=2024-01-01"  # two of the dataset's four files


@pytest.fixture
def rewrapped(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    kms.disable_key_version("alias/pii", 1)
    partition = dataset.root / PARTITION
    assert {e.key_version for f in partition.iterdir() for e in read_key_table(f).deks.values()} == {"1"}
    return dataset, partition


def test_inspect_and_needs_rotation_of_a_partition_use_the_root_manifest(rewrapped):
    dataset, partition = rewrapped
    inspection = inspect_dataset(partition, kms_options=dataset.kms_options)
    assert inspection.path == str(dataset.root)
    assert sorted(f.path for f in inspection.files) == [f"{PARTITION}/part-0.parquet", f"{PARTITION}/part-1.parquet"]
    assert inspection.up_to_date is True and inspection.behind_files == []
    assert {v for f in inspection.files for vs in f.key_versions.values() for v in vs} == {"2"}
    assert {d.key_version for d in inspection.deks} == {"2"}
    assert {d.source for d in inspection.deks} == {"manifest"}
    assert needs_rotation(partition, kms_options=dataset.kms_options) is False
    assert needs_rotation(partition, min_version=2, kms_options=dataset.kms_options) is False
    # and the partition still decrypts, with version 1 disabled
    table = read_decrypted_table(str(partition), kms_options=dataset.kms_options)
    assert table.num_rows == inspection.rows == 80


def test_spark_kms_inspect_of_a_partition(rewrapped, local_kms):
    dataset, partition = rewrapped
    ks = ["--keystore", str(local_kms.keystore_dir)]
    as_json = CliRunner().invoke(cli, ["inspect", str(partition), *ks, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["up_to_date"] is True and data["behind_files"] == [] and len(data["files"]) == 2
    assert {d["key_version"] for d in data["deks"]} == {"2"}
    table = CliRunner().invoke(cli, ["inspect", str(partition), *ks], env={"COLUMNS": "300"})  # no wrapping
    assert table.exit_code == 0, table.output
    assert "up to date" in table.stdout and f"{PARTITION}/part-0.parquet" in table.stdout


def test_control_without_the_manifest_the_partition_is_behind(rewrapped, local_kms):
    dataset, partition = rewrapped
    (dataset.root / DATASET_MANIFEST_NAME).rename(dataset.root.parent / "manifest.bak")
    inspection = inspect_dataset(partition, kms_options=dataset.kms_options)
    assert inspection.up_to_date is False and len(inspection.behind_files) == 2
    assert needs_rotation(partition, kms_options=dataset.kms_options) is True
    table = CliRunner().invoke(cli, ["inspect", str(partition), "--keystore", str(local_kms.keystore_dir), "--json"])
    assert json.loads(table.stdout)["up_to_date"] is False
