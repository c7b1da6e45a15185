"""SQL that works as users write it: ``SELECT kms_decrypt(ssn) FROM t`` finds each cell's key table by
itself (the file the row came from), for paths and for ``CREATE TABLE ... USING parquet LOCATION``
tables; the typed functions return the column's original type; one call (or a conf setting) registers
them. On the real session-scoped Spark and the embedded local KMS."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spark_kms.errors import ConfigurationError, UnknownDataKeyError
from spark_kms.kms.local import LocalKms
from spark_kms.spark import errors_translated, register, register_functions, write_encrypted
from spark_kms.spark.conf import PREFIX
from spark_kms.spark.datasource import register as register_source
from spark_kms.spark.sql import SQL_FUNCTIONS, TYPED_FUNCTIONS

pytestmark = pytest.mark.spark

SCHEMA = "id long, name string, ssn string, amount long, score double, born date"
ROWS = [
    (1, "Ada", "078-05-1120", 42, 1.5, datetime.date(1815, 12, 10)),
    (2, "Alan", None, -7, None, datetime.date(1912, 6, 23)),
    (3, "Grace", "219-09-9999", 2**40, 0.25, None),
]
ENCRYPTED = ["ssn", "amount", "score", "born"]


@pytest.fixture
def people(spark: Any, local_kms: Any, tmp_path: Path) -> str:
    path = str(tmp_path / "people")
    df = spark.createDataFrame(ROWS, SCHEMA).repartition(2)  # two files, two data keys
    write_encrypted(df, path, key_uri=local_kms.key_uri, columns=ENCRYPTED, kms_options=local_kms.kms_options)
    return path


@pytest.fixture
def fresh_functions(spark: Any) -> Iterator[None]:
    """No spark_kms SQL function registered before the test, nor left registered by it."""
    def drop() -> None:
        for name in SQL_FUNCTIONS:
            spark.sql(f"DROP TEMPORARY FUNCTION IF EXISTS {name}")

    drop()
    try:
        yield
    finally:
        drop()


def _by_id(rows: list[Any]) -> dict[int, tuple[Any, ...]]:
    return {r[0]: tuple(r[1:]) for r in rows}


def test_kms_decrypt_on_a_path_without_registration_arguments(spark: Any, local_kms: Any, people: str,
                                                              fresh_functions: None) -> None:
    table = register(spark, kms_options=local_kms.kms_options)  # no datasets=, no key_registry=
    assert table.deks == {}
    rows = spark.sql(
        "SELECT id, kms_decrypt(ssn) AS ssn, kms_decrypt(amount) AS amount_text, kms_decrypt_bigint(amount) AS amount, "
        f"kms_decrypt_double(score) AS score, kms_decrypt_date(born) AS born FROM parquet.`{people}`"
    ).collect()
    got = _by_id(rows)
    assert got == {
        1: ("078-05-1120", "42", 42, 1.5, datetime.date(1815, 12, 10)),
        2: (None, "-7", -7, None, datetime.date(1912, 6, 23)),
        3: ("219-09-9999", str(2**40), 2**40, 0.25, None),
    }
    assert type(got[1][2]) is int  # an integer 42, not '42'
    df = spark.sql(f"SELECT kms_decrypt_bigint(amount) AS amount FROM parquet.`{people}`")
    assert dict(df.dtypes)["amount"] == "bigint"

    # A temporary view of spark.read.parquet, with a filter and the column label given.
    spark.read.parquet(people).createOrReplaceTempView("people_auto_view")
    got = spark.sql("SELECT id, kms_decrypt(ssn, 'ssn') FROM people_auto_view WHERE id > 1").collect()
    assert _by_id(got) == {2: (None,), 3: ("219-09-9999",)}


def test_kms_decrypt_on_a_table_created_over_the_files(spark: Any, local_kms: Any, people: str,
                                                       fresh_functions: None) -> None:
    """``CREATE TABLE ... USING parquet LOCATION`` in the session catalog; the KMS options from the conf."""
    spark.conf.set(PREFIX + "kms.local.keystore", str(local_kms.keystore_dir))
    try:
        register(spark)  # one call, options from the Spark conf
        spark.sql("DROP TABLE IF EXISTS people_auto_tbl")
        spark.sql(f"CREATE TABLE people_auto_tbl USING parquet LOCATION '{people}'")
        try:
            rows = spark.sql(
                "SELECT id, name, kms_decrypt(ssn) AS ssn, kms_decrypt_bigint(amount) AS amount "
                "FROM people_auto_tbl ORDER BY id"
            ).collect()
        finally:
            spark.sql("DROP TABLE IF EXISTS people_auto_tbl")  # external: the files stay
    finally:
        spark.conf.unset(PREFIX + "kms.local.keystore")
        register_source(spark)
    assert [tuple(r) for r in rows] == [(1, "Ada", "078-05-1120", 42), (2, "Alan", None, -7),
                                        (3, "Grace", "219-09-9999", 2**40)]
    assert Path(people).is_dir()


def test_rows_of_two_datasets_under_two_keys_in_one_query(spark: Any, local_kms: Any, people: str,
                                                         tmp_path: Path, fresh_functions: None) -> None:
    LocalKms(local_kms.keystore_dir).create_key(alias="alias/other")
    other = str(tmp_path / "other")
    write_encrypted(spark.createDataFrame([(9, "Edsger", "111-22-3333", 1, 2.0, None)], SCHEMA), other,
                    key_uri="local://alias/other", columns=["ssn"], kms_options=local_kms.kms_options)
    register_functions(spark, kms_options=local_kms.kms_options)
    rows = spark.sql(
        f"SELECT id, kms_decrypt(ssn) FROM parquet.`{people}` UNION ALL "
        f"SELECT id, kms_decrypt(ssn) FROM parquet.`{other}`"
    ).collect()
    assert _by_id(rows) == {1: ("078-05-1120",), 2: (None,), 3: ("219-09-9999",), 9: ("111-22-3333",)}


def test_rows_that_lost_their_file_say_what_to_do(spark: Any, local_kms: Any, people: str,
                                                  fresh_functions: None) -> None:
    """After a shuffle input_file_name() is empty: the error names the cause and the two ways out."""
    register_functions(spark, kms_options=local_kms.kms_options)
    spark.read.parquet(people).repartition(3).createOrReplaceTempView("people_shuffled")
    with pytest.raises(UnknownDataKeyError) as info, errors_translated():
        spark.sql("SELECT kms_decrypt(ssn) FROM people_shuffled").collect()
    message = str(info.value)
    assert "input_file_name() is empty" in message and "datasets=" in message
    assert "078-05-1120" not in message
    # Registered with the dataset's key tables, the same query decrypts.
    register_functions(spark, datasets=[people], kms_options=local_kms.kms_options)
    got = spark.sql("SELECT kms_decrypt(ssn) FROM people_shuffled").collect()
    assert sorted(r[0] for r in got if r[0]) == ["078-05-1120", "219-09-9999"]


def test_typed_decrypt_refuses_another_type(spark: Any, local_kms: Any, people: str,
                                            fresh_functions: None) -> None:
    register_functions(spark, kms_options=local_kms.kms_options)
    with pytest.raises(ConfigurationError) as info, errors_translated():
        spark.sql(f"SELECT kms_decrypt_bigint(ssn) FROM parquet.`{people}`").collect()
    assert "kms_decrypt_bigint" in str(info.value) and "use kms_decrypt(ssn)" in str(info.value)
    with pytest.raises(ConfigurationError) as info, errors_translated():
        spark.sql(f"SELECT kms_decrypt_int(amount) FROM parquet.`{people}`").collect()  # 2**40 does not fit
    assert "kms_decrypt_bigint(amount)" in str(info.value)
    assert set(TYPED_FUNCTIONS) <= set(SQL_FUNCTIONS)


def test_auto_register_from_the_conf(spark: Any, local_kms: Any, people: str, fresh_functions: None) -> None:
    """spark.spark_kms.sql.autoRegister=true: the functions appear when spark_kms first touches the session."""
    assert not spark.catalog.functionExists("kms_decrypt")
    spark.conf.set(PREFIX + "sql.autoRegister", "true")
    spark.conf.set(PREFIX + "keystore", str(local_kms.keystore_dir))
    try:
        register_source(spark)  # what local_session, spark_session, write_encrypted, ... do
        assert spark.catalog.functionExists("kms_decrypt")
        got = spark.sql(f"SELECT id, kms_decrypt(ssn) FROM parquet.`{people}` WHERE id = 1").collect()
    finally:
        spark.conf.unset(PREFIX + "sql.autoRegister")
        spark.conf.unset(PREFIX + "keystore")
        register_source(spark)
    assert _by_id(got) == {1: ("078-05-1120",)}


def test_typed_decrypt_of_timestamps_booleans_and_widened_ints(spark: Any, local_kms: Any, tmp_path: Path,
                                                               fresh_functions: None) -> None:
    ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 123456)
    path = str(tmp_path / "events")
    df = spark.createDataFrame([(1, ts, ts, True, 7)], "id long, t timestamp, n timestamp_ntz, b boolean, i int")
    write_encrypted(df, path, key_uri=local_kms.key_uri, columns=["t", "n", "b", "i"],
                    kms_options=local_kms.kms_options)
    register_functions(spark, kms_options=local_kms.kms_options)
    got = spark.sql(
        "SELECT kms_decrypt_timestamp(t), kms_decrypt_timestamp_ntz(n), kms_decrypt_boolean(b), kms_decrypt_int(i), "
        f"kms_decrypt_bigint(i) FROM parquet.`{path}`"
    ).collect()
    assert [tuple(r) for r in got] == [tuple(df.select("t", "n", "b", "i", "i").first())]
