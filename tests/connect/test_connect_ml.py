"""``ColumnEncryptor`` / ``ColumnDecryptor`` over Spark Connect, deterministic columns included: the join
domain's key record lives in a domain store on the server side, and is made and read there."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spark_kms.spark import ColumnDecryptor, ColumnEncryptor, read_encrypted
from spark_kms.spark.remote import run_near_data

from ._support import COLUMNS, ROWS, Kms, assert_client_sees_nothing, rows_of, server_side_calls, source_df


def _encryptor(key_uri: str, kms: Kms, store: Path) -> ColumnEncryptor:
    return ColumnEncryptor(inputCols=["ssn", "email"], deterministicCols=["name"], blindIndexCols=["email"],
                           keyUri=key_uri, kmsOptions=kms.kms_options, joinDomain="people",
                           joinDomainStore=str(store))


def _name_cells(spark: Any, path: Path) -> dict[int, bytes]:
    return {r["id"]: bytes(r["name"]) for r in spark.read.parquet(str(path)).select("id", "name").collect()}


def test_deterministic_cells_are_equal_across_two_writes(spark: Any, kms: Kms, data_dir: Path, dirs: Any) -> None:
    key_uri = kms.new_key("ml")
    store = data_dir / "domains"
    first, second = data_dir / "first", data_dir / "second"
    # Two transforms (two jobs), two writes: Spark's own Parquet writer keeps the key-table column.
    _encryptor(key_uri, kms, store).transform(source_df(spark, ROWS[:30])).write.parquet(str(first))
    _encryptor(key_uri, kms, store).transform(source_df(spark, ROWS[30:])).write.parquet(str(second))

    assert_client_sees_nothing(dirs.data)
    assert "people.json" in run_near_data(spark, os.listdir, str(store))  # the domain store, server side
    cells = {**_name_cells(spark, first), **_name_cells(spark, second)}
    by_name: dict[str, set[bytes]] = {}
    for row in ROWS:
        by_name.setdefault(row[1], set()).add(cells[row[0]])
    assert all(len(c) == 1 for c in by_name.values()), "equal names must give equal cells in both writes"
    assert len({next(iter(c)) for c in by_name.values()}) == len(by_name)

    # Back to plaintext: the transformer (keys from the rows' key-table column) and read_encrypted.
    both = spark.read.parquet(str(first)).unionByName(spark.read.parquet(str(second)))
    decrypted = ColumnDecryptor(kmsOptions=kms.kms_options).transform(both)
    assert rows_of(decrypted) == sorted(ROWS)
    assert "email_bidx" in decrypted.columns
    assert rows_of(read_encrypted(spark, str(first), kms_options=kms.kms_options)) == sorted(ROWS[:30])
    server_side_calls(kms, key_uri)


def test_spark_kms_write_of_transformed_rows(spark: Any, kms: Kms, data_dir: Path) -> None:
    """The data source moves the key-table column into the footers; both readers decrypt."""
    key_uri = kms.new_key("ml")
    encrypted = ColumnEncryptor(inputCols=["ssn"], deterministicCols=["name"], keyUri=key_uri,
                                kmsOptions=kms.kms_options).transform(source_df(spark))
    encrypted.write.format("spark_kms").mode("overwrite").save(str(data_dir))
    assert "_spark_kms_keys" not in spark.read.parquet(str(data_dir)).columns
    assert rows_of(read_encrypted(spark, str(data_dir), kms_options=kms.kms_options)) == sorted(ROWS)
    loaded = spark.read.format("spark_kms").option("kms_options", json.dumps(kms.kms_options)).load(str(data_dir))
    assert rows_of(loaded, COLUMNS) == sorted(ROWS)
    server_side_calls(kms, key_uri)
