"""Arrow UDFs and SQL functions (spark_kms.spark.udfs, .sql, .key_registry), on the real session-scoped
Spark and the embedded local KMS (whose audit log every executor process appends to)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.functions import arrow_udf
from pyspark.sql.types import BinaryType, IntegerType, LongType, StringType, StructField, StructType

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX, parse_cell_header
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig
from spark_kms.parquet import (
    EncryptedParquetWriter,
    EncryptionSpec,
    new_deterministic_entry,
)
from spark_kms.spark import (
    blind_index_udf,
    decrypt_udf,
    deterministic_udf,
    encrypt_udf,
    read_key_registry,
    register_functions,
)

from ._helpers import kms_ops

pytestmark = pytest.mark.spark

SCHEMA = StructType(
    [
        StructField("id", LongType(), False),
        StructField("ssn", StringType(), True),
        StructField("age", IntegerType(), True),
    ]
)
ROWS = [
    (1, "123-45-6789", 31),
    (2, None, None),
    (3, "Zoë Ångström ✓ 北京 🙂", 47),
    (4, "", 0),
    (5, "123-45-6789", -5),
    (6, "x" * 300, 2**31 - 1),
]






@arrow_udf(StringType())
def _worker_and_dek(cells: pa.Array) -> pa.Array:
    """``"<pid>:<dek id>"`` of each cell: which worker process saw which data key."""
    pid = os.getpid()
    return pa.array([None if c is None else f"{pid}:{parse_cell_header(c).dek_id.hex()}" for c in cells.to_pylist()])


def _dek_ids(cells: list[bytes | None]) -> set[str]:
    return {parse_cell_header(c).dek_id.hex() for c in cells if c is not None}


def test_encrypt_udf_round_trip_through_native_parquet(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    source = spark.createDataFrame(ROWS, SCHEMA).repartition(2, "id")
    enc_ssn = encrypt_udf("ssn", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry,
                          encryption_context={"dataset": "people"})
    enc_age = encrypt_udf("age", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry)
    encrypted = source.withColumn("ssn", enc_ssn(F.col("ssn"))).withColumn("age", enc_age(F.col("age")))
    out = str(tmp_path / "people")
    encrypted.write.parquet(out)

    stored = spark.read.parquet(out)
    assert dict(stored.dtypes) == {"id": "bigint", "ssn": "binary", "age": "binary"}
    cells = {r.id: (r.ssn, r.age) for r in stored.collect()}
    assert cells[2] == (None, None)  # nulls stay null, never encrypted
    # Randomised: the same SSN twice gives two different cells; no cell holds its plaintext.
    assert cells[1][0] != cells[5][0]
    assert all(b"123-45-6789" not in c for c, _ in cells.values() if c is not None)

    table = read_key_registry(registry)
    assert table.columns["ssn"].arrow_type == "string"
    assert table.columns["age"].arrow_type == "int32"
    assert {e.algorithm for e in table.deks.values()} == {AES_256_GCM}
    assert _dek_ids([c for c, _ in cells.values()]) | _dek_ids([a for _, a in cells.values()]) == set(table.deks)
    ssn_entries = {k: e for k, e in table.deks.items() if e.encryption_context == {"dataset": "people"}}
    assert ssn_entries and _dek_ids([c for c, _ in cells.values()]) == set(ssn_entries)

    dec_ssn = decrypt_udf("ssn", table.columns["ssn"].arrow_type, table.deks, local_kms.kms_options)
    dec_age = decrypt_udf("age", table.columns["age"].arrow_type, table.deks, local_kms.kms_options)
    decrypted = stored.withColumn("ssn", dec_ssn(stored["ssn"])).withColumn("age", dec_age(stored["age"]))
    assert_df_equality(decrypted, source, ignore_row_order=True, ignore_nullable=True)


def test_one_generate_data_key_per_non_empty_task(
    spark: Any, local_kms: Any, tmp_path: Path, small_batches: None
) -> None:
    registry = tmp_path / "registry"
    # Range partitions hold ids 0-9, 10-19, 20-29, 30-39: the filter leaves two of them empty.
    df = spark.range(0, 40, 1, numPartitions=4).where("id < 20").select(
        F.col("id"), F.concat(F.lit("user-"), F.col("id").cast("string")).alias("email")
    )
    enc = encrypt_udf("email", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry)
    before = kms_ops(local_kms.keystore_dir)["GenerateDataKey"]
    rows = df.select("id", enc(F.col("email")).alias("email")).collect()
    generated = kms_ops(local_kms.keystore_dir)["GenerateDataKey"] - before

    assert len(rows) == 20
    # 2 non-empty tasks, each fed 3 batches of at most 4 rows: 2 data keys, not 6 nor 20.
    assert generated == 2
    per_task = {}
    for r in rows:
        per_task.setdefault(r.id // 10, set()).update(_dek_ids([r.email]))
    assert [len(ids) for ids in per_task.values()] == [1, 1]
    assert sorted(p.name for p in registry.glob("*.json")) == sorted(
        f"{dek}.json" for ids in per_task.values() for dek in ids
    )


def test_roll_over_publishes_every_data_key(spark: Any, local_kms: Any, tmp_path: Path, small_batches: None) -> None:
    registry = tmp_path / "registry"
    df = spark.range(0, 10, 1, numPartitions=1).select(F.col("id").cast("string").alias("v"))
    enc = encrypt_udf("v", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry,
                      max_cells_per_dek=3)
    encrypted = df.select(enc(F.col("v")).alias("v")).collect()
    used = _dek_ids([r.v for r in encrypted])
    assert len(used) == 4  # ceil(10 / 3)
    table = read_key_registry(registry)
    assert set(table.deks) == used
    dec = decrypt_udf("v", "string", table.deks, local_kms.kms_options)
    back = spark.createDataFrame([(r.v,) for r in encrypted], "v binary").select(dec(F.col("v")).alias("v"))
    assert sorted(r.v for r in back.collect()) == sorted(str(i) for i in range(10))


def test_decrypt_unwraps_each_dek_at_most_once_per_worker_process(
    spark: Any, local_kms: Any, tmp_path: Path, small_batches: None
) -> None:
    registry = tmp_path / "registry"
    out = str(tmp_path / "data")
    df = spark.range(0, 48, 1, numPartitions=4).select(F.col("id"), F.col("id").cast("string").alias("v"))
    enc = encrypt_udf("v", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry)
    df.select("id", enc(F.col("v")).alias("v")).write.parquet(out)
    table = read_key_registry(registry)
    assert len(table.deks) == 4

    stored = spark.read.parquet(out).repartition(4)
    dec = decrypt_udf("v", "string", table.deks, local_kms.kms_options)
    pairs: set[str] = set()
    total = 0
    for _ in range(2):
        before = kms_ops(local_kms.keystore_dir)["Decrypt"]
        # Both Arrow UDFs run in the same Python worker process of each task.
        rows = stored.select("id", dec(F.col("v")).alias("v"), _worker_and_dek(F.col("v")).alias("seen")).collect()
        decrypts = kms_ops(local_kms.keystore_dir)["Decrypt"] - before
        assert sorted((r.id, r.v) for r in rows) == [(i, str(i)) for i in range(48)]
        new_pairs = {r.seen for r in rows} - pairs
        # At most one Decrypt per (worker process, DEK) never seen before.
        assert decrypts <= len(new_pairs)
        pairs |= new_pairs
        total += decrypts
    # 24 batches of at most 4 rows over both rounds, yet one unwrap per DEK per process at most.
    assert 0 < total <= len(pairs) <= 4 * len({p.split(":")[0] for p in pairs})
    assert {p.split(":")[1] for p in pairs} == set(table.deks)


def test_decrypt_with_missing_dek_names_dek_and_column(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    df = spark.createDataFrame([("secret-value-42",)], "ssn string")
    enc = encrypt_udf("ssn", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry)
    cell = df.select(enc(F.col("ssn")).alias("ssn")).collect()[0].ssn
    dek = parse_cell_header(cell).dek_id.hex()

    stored = spark.createDataFrame([(cell,)], StructType([StructField("ssn", BinaryType())]))
    dec = decrypt_udf("ssn", "string", {}, local_kms.kms_options)
    with pytest.raises(Exception) as info:
        stored.select(dec(F.col("ssn"))).collect()
    text = str(info.value)
    assert f"unknown DEK {dek}" in text
    assert "column 'ssn'" in text
    assert "secret-value-42" not in text

    # With the registry as fallback the same cell decrypts.
    dec = decrypt_udf("ssn", "string", {}, local_kms.kms_options, key_registry=str(registry))
    assert stored.select(dec(F.col("ssn")).alias("v")).collect()[0].v == "secret-value-42"


def test_cell_bound_to_its_column(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    df = spark.createDataFrame([("a",)], "ssn string")
    enc = encrypt_udf("ssn", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry=registry)
    cells = df.select(enc(F.col("ssn")).alias("ssn")).collect()
    # The cell of column 'ssn' stored under the name 'phone': its AAD no longer matches.
    stored = spark.createDataFrame([(r.ssn,) for r in cells], "phone binary")
    dec = decrypt_udf("phone", "string", read_key_registry(registry).deks, local_kms.kms_options)
    with pytest.raises(Exception, match="authentication failed"):
        stored.select(dec(F.col("phone"))).collect()


def test_encrypting_udfs_refuse_without_registry(local_kms: Any) -> None:
    with pytest.raises(ConfigurationError, match="key_registry"):
        encrypt_udf("ssn", local_kms.key_uri, kms_options=local_kms.kms_options, key_registry="")


def test_deterministic_and_blind_index_udfs_share_one_key(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    provider = KmsConfig(local_kms.kms_options).provider(local_kms.key_uri)
    shared = new_deterministic_entry(provider, {"dataset": "contacts"})
    df = spark.createDataFrame(
        [(i, f"user{i % 3}@example.org" if i != 4 else None) for i in range(9)], "id long, email string"
    ).repartition(3, "id")
    det = deterministic_udf("email", local_kms.key_uri, kms_options=local_kms.kms_options,
                            key_registry=registry, deterministic_entry=shared,
                            encryption_context={"dataset": "contacts"})
    bidx = blind_index_udf("email", local_kms.key_uri, kms_options=local_kms.kms_options,
                           key_registry=registry, deterministic_entry=shared,
                           encryption_context={"dataset": "contacts"})
    before = kms_ops(local_kms.keystore_dir)["GenerateDataKey"]
    rows = df.select("id", det(F.col("email")).alias("email"), bidx(F.col("email")).alias("email_bidx")).collect()
    assert kms_ops(local_kms.keystore_dir)["GenerateDataKey"] == before  # the driver-made key serves every task
    by_id = {r.id: r for r in rows}
    assert by_id[4].email is None and by_id[4].email_bidx is None
    # Equal values -> equal cells across partitions (joinable), different values differ.
    assert by_id[0].email == by_id[3].email == by_id[6].email != by_id[1].email
    assert by_id[0].email_bidx == by_id[3].email_bidx != by_id[1].email_bidx
    assert _dek_ids([r.email for r in rows]) == {shared.dek_id}

    table = read_key_registry(registry)
    assert set(table.deks) == {shared.dek_id}
    assert table.columns["email"].algorithm == AES_256_SIV
    assert table.columns["email_bidx"].algorithm == HMAC_SHA256_BIDX
    assert table.columns["email_bidx"].source == "email"

    stored = spark.createDataFrame([(r.id, r.email, r.email_bidx) for r in rows],
                                   "id long, email binary, email_bidx binary")
    dec = decrypt_udf("email", "string", table.deks, local_kms.kms_options)
    assert_df_equality(stored.select("id", dec(F.col("email")).alias("email")), df,
                       ignore_row_order=True, ignore_nullable=True)

    register_functions(spark, key_registry=registry, kms_options=local_kms.kms_options)
    stored.createOrReplaceTempView("contacts_udf")
    hits = spark.sql(
        "SELECT id FROM contacts_udf WHERE email_bidx = kms_blind_index('user1@example.org', 'email')"
    ).collect()
    assert sorted(r.id for r in hits) == [1, 7]


def test_sql_functions_round_trip(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    spark.createDataFrame(ROWS, SCHEMA).createOrReplaceTempView("people_plain")
    register_functions(spark, key_uri=local_kms.key_uri, key_registry=registry, kms_options=local_kms.kms_options)
    out = str(tmp_path / "people_sql")
    spark.sql(
        "SELECT id, kms_encrypt(ssn, 'ssn') AS ssn, kms_encrypt(name) AS name "
        "FROM (SELECT id, ssn, concat('n', id) AS name FROM people_plain)"
    ).write.parquet(out)
    spark.read.parquet(out).createOrReplaceTempView("people_sql")

    # Registered again: the registry now names 'ssn' as an encrypted column, so the
    # one-argument form finds the label by itself.
    register_functions(spark, key_registry=registry, kms_options=local_kms.kms_options)
    got = spark.sql(
        "SELECT id, kms_decrypt(ssn) AS ssn, kms_decrypt(ssn, 'ssn') AS ssn2, kms_decrypt(name) AS name, "
        "kms_decrypt_binary(ssn, 'ssn') AS raw FROM people_sql"
    ).collect()
    expected = {r[0]: r[1] for r in ROWS}
    assert {r.id: r.ssn for r in got} == expected
    assert {r.id: r.ssn2 for r in got} == expected
    assert {r.id: r.name for r in got} == {i: f"n{i}" for i in expected}
    assert {r.id: r.raw for r in got} == {i: None if v is None else v.encode() for i, v in expected.items()}


def test_sql_kms_encrypt_refuses_a_label_that_varies_by_row(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    # It used to bind every cell to the default label 'sql' when the rows named several
    # labels, so kms_decrypt(cell, <the label asked for>) could never open them.
    register_functions(spark, key_uri=local_kms.key_uri, key_registry=tmp_path / "registry",
                       kms_options=local_kms.kms_options)
    with pytest.raises(Exception, match="kms_encrypt: the column label argument must be the same on every row"):
        spark.sql(
            "SELECT kms_encrypt(v, IF(id % 2 = 0, 'ssn', 'email')) FROM "
            "(SELECT id, CAST(id AS STRING) AS v FROM range(0, 4, 1, 1))"
        ).collect()


def test_sql_kms_encrypt_needs_a_key_uri(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    register_functions(spark, key_registry=tmp_path / "registry", kms_options=local_kms.kms_options)
    with pytest.raises(Exception, match="kms_encrypt is not enabled"):
        spark.sql("SELECT kms_encrypt('x')").collect()


def test_sql_over_a_file_layer_dataset(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    dataset = tmp_path / "contacts"
    dataset.mkdir()
    provider = KmsConfig(local_kms.kms_options).provider(local_kms.key_uri)
    spec = EncryptionSpec(columns=["ssn"], deterministic=["email"], blind_index={"email": "email_bidx"})
    table = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "ssn": ["111", None, "333"],
        "email": ["a@x.org", "b@x.org", "a@x.org"],
    })
    entry = new_deterministic_entry(provider, {"dataset": "contacts"})
    with EncryptedParquetWriter(dataset / "part-0.parquet", table.schema, spec, provider,
                                deterministic_entry=entry, kms_options=local_kms.kms_options) as writer:
        writer.write_batch(table)
    spark.read.parquet(str(dataset)).createOrReplaceTempView("contacts_files")
    register_functions(spark, datasets=[dataset], kms_options=local_kms.kms_options)

    got = spark.sql(
        "SELECT id, kms_decrypt(ssn) AS ssn, kms_decrypt(email) AS email FROM contacts_files "
        "WHERE email_bidx = kms_blind_index('a@x.org', 'email')"
    ).collect()
    assert sorted((r.id, r.ssn, r.email) for r in got) == [(1, "111", "a@x.org"), (3, "333", "a@x.org")]

    with pytest.raises(Exception, match="no blind-index column for source column 'phone'"):
        spark.sql("SELECT kms_blind_index('1', 'phone')").collect()
