"""Spark Connect and an object store together: a dataset in S3 (moto's S3 server on 127.0.0.1, which the
Connect server reaches too), written and read through the ``spark_kms`` data source and rotated by the jobs,
all on the server side. (Spark's own Parquet scan of ``s3a://`` needs the hadoop-aws jars, not installable
here: ``read_encrypted`` is covered on local paths.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from spark_kms.jobs import collect_garbage, inspect_dataset, reencrypt_dataset, rewrap_dataset
from spark_kms.spark import write_encrypted

from ._support import ROWS, Kms, rows_of, server_side_calls, source_df


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from spark_kms.testing.s3 import S3Server

    with S3Server() as server:
        yield server


def test_s3_dataset_over_spark_connect(spark: Any, kms: Kms, s3: Any) -> None:
    key_uri = kms.new_key("s3")
    uri = s3.uri("connect/customers")
    result = write_encrypted(source_df(spark), uri, key_uri=key_uri, columns=["ssn", "email"],
                             deterministic_columns=["name"], kms_options=kms.kms_options, storage_options=s3.options)
    assert result.rows == len(ROWS) and result.path == uri
    assert any(k.endswith(".parquet") for k in s3.keys("connect/customers/"))

    def load() -> Any:
        return (spark.read.format("spark_kms").option("kms_options", json.dumps(kms.kms_options))
                .option("storage_options", json.dumps(s3.options)).load(uri))

    assert rows_of(load()) == sorted(ROWS)
    seen = inspect_dataset(uri, kms_options=kms.kms_options, spark=spark, storage_options=s3.options)
    assert seen.rows == len(ROWS) and seen.up_to_date is True

    kms.admin.rotate_key(key_uri[len("local://"):])
    rewrapped = rewrap_dataset(uri, kms_options=kms.kms_options, spark=spark, storage_options=s3.options)
    assert rewrapped.ok and rewrapped.deks == len(result.deks)
    assert "connect/customers/_spark_kms_keys.json" in s3.keys("connect/customers/")  # the manifest, in S3
    reencrypted = reencrypt_dataset(uri, kms_options=kms.kms_options, spark=spark, storage_options=s3.options,
                                    force=True)
    assert reencrypted.ok and reencrypted.files == len(result.files)
    assert rows_of(load()) == sorted(ROWS)
    assert collect_garbage(uri, spark=spark, storage_options=s3.options).removed == []
    server_side_calls(kms, key_uri)
