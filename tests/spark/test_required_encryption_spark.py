"""Spark readers refuse a file that stores a must-be-encrypted column in plaintext."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.errors import SparkKmsError
from spark_kms.parquet import list_data_files
from spark_kms.parquet.dataset import declare_encryption
from spark_kms.spark import errors_translated, read_encrypted


def _dataset(spark: Any, path: Path, kms_options: dict) -> None:
    df = spark.createDataFrame([(i, f"{i:03d}-00-0000") for i in range(20)], "id int, ssn string")
    (df.write.format("spark_kms").mode("overwrite").option("key_uri", "local://alias/pii").option("columns", "ssn")
     .option("kms_options", json.dumps(kms_options)).save(str(path)))


def _plant_plaintext_file(path: Path) -> None:
    # An attacker who can write to storage adds a file whose ssn column is plaintext and whose
    # footer (copied from a real file) no longer describes ssn.
    real = list_data_files(path)[0]
    table = json.loads(pq.read_metadata(real).metadata[b"spark_kms.key_table"])
    table["columns"].pop("ssn")
    planted = pa.table({"id": pa.array([999], pa.int32()), "ssn": [b"999-99-9999"]})
    planted = planted.replace_schema_metadata({"spark_kms.key_table": json.dumps(table)})
    pq.write_table(planted, path / "part-99999-planted.parquet")


def _spark_scan(spark: Any, path: Path, kms_options: dict, **options: str) -> list[Any]:
    reader = spark.read.format("spark_kms").option("kms_options", json.dumps(kms_options))
    for name, value in options.items():
        reader = reader.option(name, value)
    with errors_translated():
        return reader.load(str(path)).collect()


def test_required_columns_refuse_a_planted_plaintext_file(spark, tmp_path: Path, local_kms) -> None:
    path = tmp_path / "customers"
    _dataset(spark, path, local_kms.kms_options)
    assert sorted(r.ssn for r in read_encrypted(spark, str(path), kms_options=local_kms.kms_options,
                                                require_encrypted=["ssn"]).collect())[0] == "000-00-0000"
    _plant_plaintext_file(path)
    with pytest.raises(SparkKmsError, match=r"ssn"):
        read_encrypted(spark, str(path), kms_options=local_kms.kms_options, require_encrypted=["ssn"])
    with pytest.raises(SparkKmsError, match=r"ssn"):
        _spark_scan(spark, path, local_kms.kms_options, require_encrypted="ssn")


def test_a_declared_dataset_is_checked_without_being_told(spark, tmp_path: Path, local_kms) -> None:
    path = tmp_path / "customers"
    _dataset(spark, path, local_kms.kms_options)
    declare_encryption(path, kms_options=local_kms.kms_options)
    rows = read_encrypted(spark, str(path), kms_options=local_kms.kms_options).collect()
    assert len(rows) == 20
    assert len(_spark_scan(spark, path, local_kms.kms_options)) == 20
    _plant_plaintext_file(path)
    assert len(list_data_files(path)) > 1
    with pytest.raises(SparkKmsError, match=r"ssn"):
        read_encrypted(spark, str(path), kms_options=local_kms.kms_options)
    with pytest.raises(SparkKmsError, match=r"ssn"):
        _spark_scan(spark, path, local_kms.kms_options)
