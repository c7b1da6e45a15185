"""Deterministic columns stay joinable across appends and across the datasets of one join domain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from spark_kms.parquet import list_data_files, read_key_table
from spark_kms.parquet.join_domains import JOIN_KEYS_NAME


def _write(spark: Any, rows: list[tuple[int, str, str]], path: Path, kms_options: dict, mode: str, **options: str) -> None:
    df = spark.createDataFrame(rows, "id int, email string, country string")
    writer = (df.write.format("spark_kms").mode(mode).option("key_uri", "local://alias/pii")
              .option("deterministic_columns", "email").option("blind_index", "email:email_bidx")
              .option("kms_options", json.dumps(kms_options)))
    for name, value in options.items():
        writer = writer.option(name, value)
    writer.save(str(path))


def _siv_keys(path: Path) -> set[str]:
    return {e.dek_id for f in list_data_files(path) for e in read_key_table(f).deks.values()
            if e.algorithm == "AES_256_SIV"}


def test_appends_reuse_the_dataset_join_key_so_group_by_matches_plaintext(spark, tmp_path, local_kms) -> None:
    path = tmp_path / "customers"
    first = [(i, f"user{i % 7}@example.com", "DE") for i in range(40)]
    second = [(100 + i, f"user{i % 7}@example.com", "FR") for i in range(40)]
    _write(spark, first, path, local_kms.kms_options, "overwrite")
    _write(spark, second, path, local_kms.kms_options, "append")
    assert (path / JOIN_KEYS_NAME).exists()
    assert len(_siv_keys(path)) == 1  # one join key for both writes

    stored = spark.read.parquet(str(path))
    by_cell = sorted(r["n"] for r in stored.groupBy("email").count().withColumnRenamed("count", "n").collect())
    plain = first + second
    expected = sorted(sum(1 for r in plain if r[1] == e) for e in {r[1] for r in plain})
    assert by_cell == expected  # GROUP BY on ciphertext gives the plaintext's groups
    # An overwrite keeps the domain's key too: cells of equal values stay equal across rewrites.
    before = {pq.read_table(f).column("email")[0].as_py() for f in list_data_files(path)}
    _write(spark, first, path, local_kms.kms_options, "overwrite")
    after = {c for f in list_data_files(path) for c in pq.read_table(f).column("email").to_pylist()}
    assert before & after


def test_two_datasets_of_one_named_domain_join_on_the_encrypted_column(spark, tmp_path, local_kms) -> None:
    store = tmp_path / "domains"
    customers = [(i, f"user{i}@example.com", "DE") for i in range(30)]
    orders = [(1000 + i, f"user{i % 45}@example.com", "NL") for i in range(60)]
    _write(spark, customers, tmp_path / "customers", local_kms.kms_options, "overwrite",
           join_domain="people", join_domain_store=str(store))
    _write(spark, orders, tmp_path / "orders", local_kms.kms_options, "overwrite",
           join_domain="people", join_domain_store=str(store))
    assert _siv_keys(tmp_path / "customers") == _siv_keys(tmp_path / "orders")

    c = spark.read.parquet(str(tmp_path / "customers")).select("email", "email_bidx")
    o = spark.read.parquet(str(tmp_path / "orders")).select("email", "email_bidx")
    joined = c.join(o, "email").count()
    by_index = c.join(o, "email_bidx").count()
    expected = sum(1 for _, e, _ in orders for _, e2, _ in customers if e == e2)
    assert joined == by_index == expected == 45


def test_the_transformer_joins_a_named_domain_too(spark, tmp_path, local_kms) -> None:
    from spark_kms.spark import ColumnEncryptor

    store = tmp_path / "domains"
    _write(spark, [(1, "a@example.com", "DE"), (2, "b@example.com", "DE")], tmp_path / "customers",
           local_kms.kms_options, "overwrite", join_domain="people", join_domain_store=str(store))
    df = spark.createDataFrame([(7, "b@example.com", "PL")], "id int, email string, country string")
    encryptor = ColumnEncryptor(inputCols=[], deterministicCols=["email"], keyUri="local://alias/pii",
                                kmsOptions=local_kms.kms_options, joinDomain="people", joinDomainStore=str(store))
    cell = encryptor.transform(df).collect()[0]["email"]
    stored = spark.read.parquet(str(tmp_path / "customers")).collect()
    assert cell in {r["email"] for r in stored}  # same value, same domain key: the same cell
