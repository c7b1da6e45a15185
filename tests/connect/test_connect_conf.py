"""The ``spark.spark_kms.*`` conf and SQL without registration arguments over Spark Connect: the KMS options
come from the server-side session's conf (set by the client), and ``kms_decrypt`` finds each row's key
table from the file it came from, on the server's workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spark_kms.spark import read_encrypted, register, write_encrypted
from spark_kms.spark.conf import PREFIX, SparkKmsConf
from spark_kms.spark.datasource import register as register_source

from ._support import ROWS, Kms, assert_client_sees_nothing, source_df


@pytest.fixture
def conf_kms(spark: Any, kms: Kms) -> Iterator[None]:
    """The shared keystore's KMS options, as Spark conf settings of the Connect session."""
    names = [f"{PREFIX}kms.{scheme}.{name}" for scheme, opts in kms.kms_options.items() for name in opts]
    for (scheme, opts) in kms.kms_options.items():
        for name, value in opts.items():
            spark.conf.set(f"{PREFIX}kms.{scheme}.{name}", str(value))
    try:
        yield
    finally:
        for name in names:
            spark.conf.unset(name)
        register_source(spark)


def test_conf_and_sql_without_datasets_over_connect(spark: Any, kms: Kms, data_dir: Any, dirs: Any,
                                                    conf_kms: None) -> None:
    assert SparkKmsConf.of(spark).kms_options() == {s: {k: str(v) for k, v in o.items()}
                                                    for s, o in kms.kms_options.items()}
    key_uri = kms.new_key()
    path = str(data_dir)
    write_encrypted(source_df(spark), path, key_uri=key_uri, columns=["ssn", "amount"])  # no kms_options
    assert sorted(tuple(r) for r in read_encrypted(spark, path).select("id", "ssn").collect()) == \
        sorted((r[0], r[2]) for r in ROWS)

    register(spark)  # the data source and the SQL functions, options from the conf
    got = spark.sql(
        f"SELECT id, kms_decrypt(ssn) AS ssn, kms_decrypt_double(amount) AS amount FROM parquet.`{path}`"
    ).collect()
    assert sorted(tuple(r) for r in got) == sorted((r[0], r[2], r[4]) for r in ROWS)
    assert all(isinstance(r[2], float) for r in got)
    assert_client_sees_nothing(dirs.data)
