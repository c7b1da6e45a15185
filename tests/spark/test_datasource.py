"""The spark_kms data source: round trips, modes, hive partitions, KMS call counts, key columns."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import types as T

from spark_kms.crypto import KEY_TABLE_METADATA_KEY, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.spark import read_encrypted, write_encrypted

from ._helpers import data_files, files_under, kms_ops

pytestmark = pytest.mark.spark

SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("name", T.StringType()),
        T.StructField("email", T.StringType()),
        T.StructField("photo", T.BinaryType()),
        T.StructField("born", T.DateType()),
        T.StructField("score", T.IntegerType()),
        T.StructField("amount", T.DecimalType(10, 2)),
    ]
)


def _rows(n: int = 40) -> list[tuple]:
    rows = []
    for i in range(n):
        rows.append(
            (
                i,
                None if i % 7 == 3 else f"Zoë Ångström 名前 {i} 🎉",
                None if i % 5 == 1 else f"person{i}@example.org",
                None if i % 6 == 2 else bytes([i % 256, 0, 255, 10]) * (i % 4),
                None if i % 9 == 4 else dt.date(1950, 1, 1) + dt.timedelta(days=i * 300),
                None if i % 8 == 5 else -(i**3),
                None if i % 10 == 7 else Decimal(i * 1234) / 100,
            )
        )
    return rows


def test_round_trip_types_nulls_unicode_and_one_data_key_per_partition(spark, local_kms, tmp_path):
    ks, key_uri, opts = local_kms
    # 4 slices of 10 rows; the filter empties slice 2 entirely.
    df = spark.createDataFrame(spark.sparkContext.parallelize(_rows(40), 4), SCHEMA).filter("id < 20 or id >= 30")
    out = tmp_path / "ds"
    encrypted = ["name", "email", "photo", "born", "score", "amount"]
    result = write_encrypted(df, str(out), key_uri=key_uri, columns=encrypted, kms_options=opts)

    assert result.rows == 30
    assert len(result.files) == 3 == len(data_files(out))  # the empty partition made no file
    assert result.kms_calls == {"local:GenerateDataKey": 3}
    assert kms_ops(ks)["GenerateDataKey"] == 3  # the KMS itself saw exactly one per non-empty partition
    assert len(result.deks) == 3
    assert not (out / "_spark_kms_staging").exists() and not (out / "_spark_kms_trash").exists()

    # On disk: encrypted columns are binary, the footer holds the key table of that file.
    one = out / result.files[0]
    schema = pq.read_schema(one)
    for c in encrypted:
        assert str(schema.field(c).type) == "binary"
    assert str(schema.field("id").type) == "int64"
    table = KeyTable.from_json(pq.read_metadata(one).metadata[KEY_TABLE_METADATA_KEY.encode()])
    assert len(table.deks) == 1 and set(table.columns) == set(encrypted)
    entry = next(iter(table.deks.values()))
    assert entry.encryption_context["spark_kms.dataset"] == str(out)
    assert entry.encryption_context["spark_kms.job_id"] == result.job_id
    assert entry.encryption_context["spark_kms.columns"] == ",".join(sorted(encrypted))
    raw = pq.read_table(one).to_pylist()
    assert not any("example.org" in repr(r) for r in raw)

    back = read_encrypted(spark, str(out), kms_options=opts)
    assert_df_equality(back, df, ignore_row_order=True, ignore_nullable=True)


def test_modes_overwrite_and_append(spark, local_kms, tmp_path):
    _ks, key_uri, opts = local_kms
    out = str(tmp_path / "ds")
    a = spark.range(0, 10, numPartitions=2).selectExpr("id", "concat('a', id) as ssn")
    b = spark.range(10, 16, numPartitions=1).selectExpr("id", "concat('b', id) as ssn")
    c = spark.range(100, 103, numPartitions=1).selectExpr("id", "concat('c', id) as ssn")

    write_encrypted(a, out, key_uri=key_uri, columns=["ssn"], kms_options=opts)
    r = write_encrypted(b, out, key_uri=key_uri, columns=["ssn"], kms_options=opts, mode="append")
    assert r.mode == "append" and len(data_files(out)) == 3
    assert_df_equality(read_encrypted(spark, out, kms_options=opts), a.union(b), ignore_row_order=True,
                       ignore_nullable=True)

    write_encrypted(c, out, key_uri=key_uri, columns=["ssn"], kms_options=opts, mode="overwrite")
    assert data_files(out) == sorted(f for f in files_under(out))  # no staging, trash or journal left
    assert len(data_files(out)) == 1
    assert_df_equality(read_encrypted(spark, out, kms_options=opts), c, ignore_row_order=True, ignore_nullable=True)

    # The format API, with options as strings.
    (c.write.format("spark_kms").option("key_uri", key_uri).option("columns", "ssn")
     .option("kms_options", json.dumps(opts)).mode("append").save(out))
    assert read_encrypted(spark, out, kms_options=opts).count() == 6


def test_hive_partitioning_deterministic_and_blind_index(spark, local_kms, tmp_path):
    ks, key_uri, opts = local_kms
    out = tmp_path / "ds"
    df = spark.range(0, 60, numPartitions=3).selectExpr(
        "id",
        "date_add(date'2024-01-01', cast(id % 3 as int)) as day",
        "concat('user', id % 20, '@example.org') as email",
        "format_string('%03d-55-%04d', id, id) as ssn",
    )
    result = write_encrypted(
        df, str(out), key_uri=key_uri, columns=["ssn"], deterministic_columns=["email"],
        blind_index={"email": "email_bidx"}, partition_by=["day"], kms_options=opts,
        encryption_context={"team": "payments"}, run_id="run-42",
    )
    dirs = sorted({f.split("/")[0] for f in data_files(out)})
    assert dirs == ["day=2024-01-01", "day=2024-01-02", "day=2024-01-03"]
    # one GDK per task (3 tasks, each spanning 3 hive dirs) + the job-wide deterministic key
    assert result.kms_calls["local:GenerateDataKey"] == 4
    assert kms_ops(ks)["GenerateDataKey"] == 4
    assert len(result.files) == 9
    table = KeyTable.from_json(pq.read_metadata(out / result.files[0]).metadata[KEY_TABLE_METADATA_KEY.encode()])
    per_task = [e for e in table.deks.values() if e.algorithm != "AES_256_SIV"]
    assert all(e.encryption_context["team"] == "payments" for e in per_task)
    assert all(e.encryption_context["spark_kms.job_id"] == "run-42" for e in per_task)
    # The deterministic key belongs to the dataset's join domain, not to one job.
    assert [e.encryption_context for e in table.deks.values() if e.algorithm == "AES_256_SIV"] == [
        {"spark_kms_join_domain": "dataset"}]

    back = read_encrypted(spark, str(out), kms_options=opts)
    assert dict(back.dtypes)["email_bidx"] == "binary"
    assert_df_equality(back.drop("email_bidx"), df.select(*back.drop("email_bidx").columns),
                       ignore_row_order=True, ignore_nullable=True)
    # Deterministic cells and blind indexes are equal for equal emails, across tasks and files.
    raw = spark.read.parquet(str(out))
    assert raw.select("email").distinct().count() == 20
    assert raw.select("email_bidx").distinct().count() == 20


def test_rejects_bad_options_naming_what(spark, local_kms, tmp_path):
    _ks, key_uri, opts = local_kms
    df = spark.range(3).selectExpr("id", "cast(id as string) as ssn", "array(id) as tags")
    out = str(tmp_path / "ds")
    with pytest.raises(Exception, match="nope"):
        write_encrypted(df, out, key_uri=key_uri, columns=["ssn", "nope"], kms_options=opts)
    with pytest.raises(Exception, match="partition_by columns \\['ssn'\\] are encrypted"):
        write_encrypted(df, out, key_uri=key_uri, columns=["ssn"], partition_by=["ssn"], kms_options=opts)
    with pytest.raises(Exception, match="'tags' has type array<bigint>"):
        write_encrypted(df, out, key_uri=key_uri, columns=["tags"], kms_options=opts)
    with pytest.raises(Exception, match="nothing to encrypt"):
        write_encrypted(df, out, key_uri=key_uri, columns=[], kms_options=opts)
    with pytest.raises(ConfigurationError, match="mode must be"):
        write_encrypted(df, out, key_uri=key_uri, columns=["ssn"], mode="error", kms_options=opts)
    # Was a bare ValueError from int() ("invalid literal"), naming no option.
    with pytest.raises(Exception, match="option max_cells_per_dek must be a positive integer, got 'lots'"):
        (df.write.format("spark_kms").option("key_uri", key_uri).option("columns", "ssn")
         .option("kms_options", json.dumps(opts)).option("max_cells_per_dek", "lots").mode("overwrite").save(out))
    assert not (tmp_path / "ds").exists() or data_files(out) == []


def test_key_column_from_transformer_output_is_stripped_into_footers(spark, local_kms, tmp_path):
    """A DataFrame whose cells were encrypted upstream carries ``_spark_kms_keys``; both the data
    source (footer) and Spark's own Parquet writer (column kept) must stay readable."""
    import pyarrow as pa

    from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec

    _ks, key_uri, opts = local_kms
    plain = pa.table({"id": pa.array(range(6), pa.int64()), "ssn": [f"123-45-{i:04d}" for i in range(6)]})
    enc = BatchEncryptor(EncryptionSpec(columns=["ssn"]), key_uri, kms_options=opts)
    cipher = enc.encrypt_table(plain)
    keys = enc.key_table().to_json().decode()
    enc.close()
    df = spark.createDataFrame(cipher.append_column("_spark_kms_keys", pa.array([keys] * 6)).to_pandas())

    via_source = str(tmp_path / "source")
    result = write_encrypted(df, via_source, key_uri=None, kms_options=opts)
    assert result.kms_calls == {} and result.rows == 6
    assert "_spark_kms_keys" not in pq.read_schema(tmp_path / "source" / result.files[0]).names
    expected = spark.createDataFrame(plain.to_pandas())
    assert_df_equality(read_encrypted(spark, via_source, kms_options=opts), expected, ignore_row_order=True,
                       ignore_nullable=True)

    via_spark = str(tmp_path / "spark")
    df.write.parquet(via_spark)
    assert_df_equality(read_encrypted(spark, via_spark, kms_options=opts), expected, ignore_row_order=True,
                       ignore_nullable=True)
