"""``DatasetRotationSensor`` given one hive partition directory (issue #14, item 9): after a rotation
the partition is behind; after a rewrap -- old key version disabled, so only the dataset root's
manifest holds wraps that open -- it is up to date, because the sensor reads that manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from spark_kms.crypto import DATASET_MANIFEST_NAME
from spark_kms.jobs import rewrap_dataset
from spark_kms.kms import KmsConfig
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_key_table

pytestmark = pytest.mark.airflow


def _partitioned(root: Path, options: dict) -> None:
    provider = KmsConfig.of(options).provider("local://alias/pii")
    for day in ("2025-03-03", "2025-03-04"):
        for n in range(2):
            path = root / f"day={day}" / f"part-{n}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            table = pa.table({"id": [n, n + 10], "ssn": [f"{day}-{n}", None]})
            with EncryptedParquetWriter(path, table.schema, EncryptionSpec(columns=["ssn"]), provider,
                                        encryption_context={"dataset": "customers"}) as writer:
                writer.write_batch(table)


def test_the_sensor_on_a_partition_reads_the_root_manifest(airflow_db: object, tmp_path: Path) -> None:
    from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

    keystore = tmp_path / "keystore"
    kms = LocalKms(keystore)
    kms.create_key(alias="alias/pii")
    options = {"local": {"keystore": str(keystore)}}
    root = tmp_path / "customers"
    _partitioned(root, options)
    partition = root / "day=2025-03-04"

    def poke(**kwargs: object) -> tuple[bool, list[str]]:
        result = DatasetRotationSensor(task_id="sen", path=str(partition), kms_options=options, **kwargs).poke({})
        return result.is_done, result.xcom_value

    kms.rotate_key("alias/pii")
    assert poke() == (True, [str(partition)])  # rotated: the partition's keys are behind

    rewrap_dataset(root, kms_options=options)
    kms.disable_key_version("alias/pii", 1)
    assert {e.key_version for f in partition.iterdir() for e in read_key_table(f).deks.values()} == {"1"}
    assert poke() == (False, [])  # up to date: the root's manifest holds version 2
    assert poke(min_version="2") == (False, [])

    # The control: without the manifest the footers' version 1 is all there is.
    (root / DATASET_MANIFEST_NAME).rename(tmp_path / "manifest.bak")
    assert poke() == (True, [str(partition)])
