"""Writing and reading over Spark Connect: ``format("spark_kms")`` both ways, ``write_encrypted``,
``read_encrypted`` and the SQL functions, with a server whose data directory the client cannot see."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spark_kms.parquet.dataset import list_data_files
from spark_kms.spark import (
    decrypt_udf,
    deterministic_udf,
    encrypt_udf,
    read_encrypted,
    read_key_registry,
    register_functions,
    write_encrypted,
)
from spark_kms.spark.remote import is_connect, run_near_data

from ._support import COLUMNS, ROWS, Kms, assert_client_sees_nothing, rows_of, server_side_calls, source_df

EXPECTED = sorted(ROWS)


@pytest.fixture(scope="module")
def key_uri(kms: Kms) -> str:
    return kms.new_key()


@pytest.fixture(scope="module")
def written(spark: Any, kms: Kms, key_uri: str, dirs: Any) -> Path:
    """A dataset written with ``df.write.format("spark_kms")``: randomised, deterministic and
    blind-index columns."""
    path = dirs.data / "customers"
    (source_df(spark).write.format("spark_kms")
        .option("key_uri", key_uri)
        .option("columns", "ssn,email")
        .option("deterministic_columns", "name")
        .option("blind_index", "email:email_bidx")
        .option("kms_options", json.dumps(kms.kms_options))
        .mode("overwrite")
        .save(str(path)))
    return path


def test_the_session_is_a_spark_connect_client(spark: Any) -> None:
    assert is_connect(spark)
    assert type(spark).__module__ == "pyspark.sql.connect.session"


def test_data_source_write_lands_on_the_server_side_only(spark: Any, written: Path, dirs: Any) -> None:
    assert_client_sees_nothing(dirs.data)
    files = run_near_data(spark, list_data_files, str(written))  # functions of spark_kms (or builtins) only
    assert files and all(f.endswith(".parquet") for f in files)


def test_cells_are_encrypted_and_deterministic_columns_repeat(spark: Any, written: Path) -> None:
    raw = spark.read.parquet(str(written)).collect()
    assert len(raw) == len(ROWS)
    plain = {r[0]: r for r in ROWS}
    by_name: dict[str, set[bytes]] = {}
    for row in raw:
        assert isinstance(row["ssn"], (bytes, bytearray)) or row["ssn"] is None
        assert plain[row["id"]][3].encode() not in bytes(row["email"])
        by_name.setdefault(plain[row["id"]][1], set()).add(bytes(row["name"]))
    # AES-SIV: one cell per distinct name, however many tasks wrote it.
    assert all(len(cells) == 1 for cells in by_name.values())
    assert len({c for cells in by_name.values() for c in cells}) == len(by_name)


def test_read_encrypted_decrypts_on_the_server_side(spark: Any, written: Path, kms: Kms, key_uri: str) -> None:
    df = read_encrypted(spark, str(written), kms_options=kms.kms_options)
    assert rows_of(df) == EXPECTED
    assert set(df.columns) == {*COLUMNS, "email_bidx"}
    # Only the columns asked for: plain ones need no key at all.
    assert sorted(tuple(r) for r in read_encrypted(spark, str(written), columns=["id", "amount"]).collect()) == \
        sorted((r[0], r[4]) for r in ROWS)
    server_side_calls(kms, key_uri)


def test_read_encrypted_of_one_file(spark: Any, written: Path, kms: Kms) -> None:
    first = run_near_data(spark, list_data_files, str(written))[0]
    df = read_encrypted(spark, first, kms_options=kms.kms_options)
    rows = rows_of(df)
    assert rows and set(rows) <= set(EXPECTED)


def test_spark_kms_reader(spark: Any, written: Path, kms: Kms) -> None:
    df = spark.read.format("spark_kms").option("kms_options", json.dumps(kms.kms_options)).load(str(written))
    assert rows_of(df) == EXPECTED


def test_write_encrypted_returns_the_commit_totals(spark: Any, kms: Kms, key_uri: str, data_dir: Path,
                                                   dirs: Any) -> None:
    result = write_encrypted(source_df(spark), str(data_dir), key_uri=key_uri, columns=["ssn"],
                             deterministic_columns=["name"], partition_by=["born"], kms_options=kms.kms_options)
    assert result.path == str(data_dir)
    assert result.rows == len(ROWS)
    assert result.files and all("born=" in f for f in result.files)
    # One data key per non-empty task, plus the join domain's deterministic key.
    assert len(result.deks) == 4
    assert result.kms_calls["local:GenerateDataKey"] == 4
    appended = write_encrypted(source_df(spark, ROWS[:5]), str(data_dir), key_uri=key_uri, columns=["ssn"],
                               deterministic_columns=["name"], partition_by=["born"], mode="append",
                               kms_options=kms.kms_options)
    assert appended.rows == 5
    assert result.deks[0] in appended.deks  # the dataset's join domain key, reused
    df = read_encrypted(spark, str(data_dir), kms_options=kms.kms_options)
    assert df.count() == len(ROWS) + 5
    assert_client_sees_nothing(dirs.data)


def test_sql_kms_decrypt_with_datasets(spark: Any, written: Path, kms: Kms) -> None:
    table = register_functions(spark, datasets=[str(written)], kms_options=kms.kms_options)
    assert {"ssn", "email", "name"} <= set(table.columns)
    spark.read.parquet(str(written)).createOrReplaceTempView("customers_enc")
    got = spark.sql(
        "SELECT id, kms_decrypt(name, 'name') AS name, kms_decrypt(ssn, 'ssn') AS ssn, kms_decrypt(email) AS email "
        "FROM customers_enc"
    ).collect()
    assert sorted(tuple(r) for r in got) == sorted((r[0], r[1], r[2], r[3]) for r in ROWS)


def test_sql_kms_encrypt_publishes_to_a_server_side_key_registry(spark: Any, kms: Kms, key_uri: str,
                                                                 data_dir: Path, dirs: Any) -> None:
    registry = str(data_dir / "registry")
    register_functions(spark, key_uri=key_uri, key_registry=registry, kms_options=kms.kms_options)
    source_df(spark).createOrReplaceTempView("customers_plain")
    got = spark.sql("SELECT id, kms_decrypt(kms_encrypt(ssn)) AS ssn FROM customers_plain").collect()
    assert sorted(tuple(r) for r in got) == sorted((r[0], r[2]) for r in ROWS)
    published = read_key_registry(registry, spark=spark)
    assert published.deks
    assert_client_sees_nothing(dirs.data)


def test_udfs_publish_and_find_keys_on_the_server_side(spark: Any, kms: Kms, key_uri: str, data_dir: Path,
                                                       dirs: Any) -> None:
    registry = str(data_dir / "registry")
    df = source_df(spark)
    encrypted = df.select(
        "id", "ssn",
        encrypt_udf("ssn", key_uri, kms_options=kms.kms_options, key_registry=registry)(df["ssn"]).alias("ssn_enc"),
        deterministic_udf("name", key_uri, kms_options=kms.kms_options, key_registry=registry)(df["name"])
        .alias("name_enc"),
    )
    encrypted.write.parquet(str(data_dir / "cells"))
    table = read_key_registry(registry, spark=spark)
    assert table.columns["ssn"].arrow_type == "string"
    cells = spark.read.parquet(str(data_dir / "cells"))
    decrypted = cells.select("id", "ssn", decrypt_udf("ssn", "string", {}, kms.kms_options, key_registry=registry)(
        cells["ssn_enc"]).alias("back"))
    assert all(r["ssn"] == r["back"] for r in decrypted.collect())
    assert_client_sees_nothing(dirs.data)
