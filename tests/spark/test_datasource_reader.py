"""spark.read.format("spark_kms"): the full-scan reader that decrypts in the Python worker."""

from __future__ import annotations

import datetime
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from pyspark.sql import types as T

from spark_kms.crypto import KEY_TABLE_METADATA_KEY
from spark_kms.spark import write_encrypted

from ._helpers import data_files, kms_ops, sorted_rows

pytestmark = pytest.mark.spark

_PUSHDOWN_CONF = "spark.sql.python.filterPushdown.enabled"

_SCHEMA = T.StructType([
    T.StructField("id", T.LongType()),
    T.StructField("amount", T.DoubleType()),
    T.StructField("name", T.StringType()),
    T.StructField("age", T.IntegerType()),
    T.StructField("born", T.DateType()),
    T.StructField("ssn", T.StringType()),
    T.StructField("country", T.StringType()),
    T.StructField("bucket", T.IntegerType()),
])


def _rows(n: int) -> list[tuple]:
    countries = ["FR", "日本", "US/CA", None]  # unicode, a value Spark escapes, the null partition
    return [
        (
            i,
            i * 1.25,
            None if i % 7 == 0 else f"Zoë Ñandú 名前 {i} 😀",
            None if i % 5 == 0 else 20 + i % 60,
            None if i % 11 == 0 else datetime.date(1950, 1, 1) + datetime.timedelta(days=i * 97),
            f"{i:03d}-11-{i:04d}",
            countries[i % 4],
            i % 3,
        )
        for i in range(n)
    ]


def _load(spark, path, opts, *, schema=None, **options):
    reader = spark.read.format("spark_kms").option("kms_options", json.dumps(opts))
    for k, v in options.items():
        reader = reader.option(k, v)
    if schema is not None:
        reader = reader.schema(schema)
    return reader.load(str(path))


@pytest.fixture(scope="module")
def partitioned(spark, tmp_path_factory):
    """A hive-partitioned dataset with strings, ints, dates, nulls, unicode; written once."""
    from spark_kms.kms.local import LocalKms

    root = tmp_path_factory.mktemp("ds_reader")
    ks = root / "keystore"
    LocalKms(ks).create_key(alias="alias/pii")
    opts = {"local": {"keystore": str(ks)}}
    df = spark.createDataFrame(_rows(240), _SCHEMA).repartition(1)
    out = root / "ds"
    write_encrypted(df, str(out), key_uri="local://alias/pii", columns=["name", "age", "born", "ssn"],
                    blind_index={"ssn": "ssn_bidx"}, partition_by=["country", "bucket"], kms_options=opts)
    return out, opts, df


def test_round_trip_with_hive_partitions_equals_the_input(spark, partitioned):
    out, opts, df = partitioned
    got = _load(spark, out, opts)
    # Encrypted columns get their types back, the blind index stays binary, partition
    # columns come last in directory order, typed like Spark's partition discovery.
    assert got.dtypes == [
        ("id", "bigint"), ("amount", "double"), ("name", "string"), ("age", "int"), ("born", "date"),
        ("ssn", "string"), ("ssn_bidx", "binary"), ("country", "string"), ("bucket", "int"),
    ]
    expected = df.select("id", "amount", "name", "age", "born", "ssn", "country", "bucket")
    assert_df_equality(got.drop("ssn_bidx"), expected, ignore_row_order=True, ignore_nullable=True)


def test_kms_decrypt_calls_at_most_one_per_dek(spark, local_kms, tmp_path):
    ks, key_uri, opts = local_kms
    df = spark.createDataFrame(_rows(120), _SCHEMA).drop("country").repartition(4)
    out = tmp_path / "ds"
    result = write_encrypted(df, str(out), key_uri=key_uri, columns=["name", "ssn"], kms_options=opts)
    assert len(result.deks) == 4 and len(data_files(out)) == 4  # one task key, one file per task

    before = kms_ops(ks)["Decrypt"]
    lazy = _load(spark, out, opts)
    assert lazy.columns == [*df.columns]  # schema inference reads footers only...
    assert _load(spark, out, opts, schema="id bigint, age int").count() == 120  # ...plain columns too
    assert kms_ops(ks)["Decrypt"] == before  # no KMS call for either

    assert sorted_rows(lazy) == sorted_rows(df)
    # Fresh keys, one file per key, one task per file: each key is unwrapped exactly once.
    assert kms_ops(ks)["Decrypt"] - before == 4
    assert lazy.count() == 120
    # Another scan: a worker process unwraps a key at most once, whichever files it gets.
    assert kms_ops(ks)["Decrypt"] - before <= 8


def test_narrower_user_schema_reads_and_casts_only_those_columns(spark, partitioned):
    out, opts, df = partitioned
    got = _load(spark, out, opts, schema="ssn string, bucket long, id bigint")
    assert got.dtypes == [("ssn", "string"), ("bucket", "bigint"), ("id", "bigint")]
    assert sorted_rows(got) == sorted_rows(df.selectExpr("ssn", "cast(bucket as bigint) as bucket", "id"))
    with pytest.raises(Exception, match="has no columns \\['nope'\\]"):
        _load(spark, out, opts, schema="id bigint, nope string").collect()


def test_large_file_is_split_by_row_groups(spark, local_kms, tmp_path):
    ks, key_uri, opts = local_kms
    df = spark.createDataFrame(_rows(3000), _SCHEMA).drop("country").repartition(1)
    out = tmp_path / "ds"
    write_encrypted(df, str(out), key_uri=key_uri, columns=["name", "ssn"], kms_options=opts)
    [only] = data_files(out)
    # Cut the file into row groups of 500 rows (cells are bound to column and key, not position).
    table = pq.read_table(out / only).replace_schema_metadata(pq.read_metadata(out / only).metadata)
    pq.write_table(table, out / only, row_group_size=500)
    groups = pq.ParquetFile(out / only).metadata.num_row_groups
    assert groups == 6
    split = _load(spark, out, opts, max_partition_bytes="1")
    assert split.rdd.getNumPartitions() == groups
    assert _load(spark, out, opts).rdd.getNumPartitions() == 1
    assert sorted_rows(split) == sorted_rows(df)


def test_tampered_cell_names_the_file_and_column(spark, local_kms, tmp_path):
    ks, key_uri, opts = local_kms
    df = spark.createDataFrame(_rows(60), _SCHEMA).drop("country").repartition(2)
    out = tmp_path / "ds"
    write_encrypted(df, str(out), key_uri=key_uri, columns=["name", "ssn"], kms_options=opts)
    victim = out / data_files(out)[1]
    table = pq.read_table(victim)
    cells = table.column("ssn").to_pylist()
    cells[3] = cells[3][:-1] + bytes([cells[3][-1] ^ 1])
    table = table.set_column(table.schema.get_field_index("ssn"), "ssn", pa.array(cells, pa.binary()))
    pq.write_table(table.replace_schema_metadata(pq.read_metadata(victim).metadata), victim)

    with pytest.raises(Exception) as err:
        _load(spark, out, opts).collect()
    text = str(err.value)
    assert "DecryptionError" in text and f"file {victim}" in text and "'ssn'" in text
    assert "-11-" not in text  # no plaintext in the message
    # the other encrypted column and plain columns of that file still read
    assert _load(spark, out, opts, schema="id bigint, name string").count() == 60


def test_missing_key_table_names_the_file(spark, local_kms, tmp_path):
    _ks, _key_uri, opts = local_kms
    out = tmp_path / "ds"
    out.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "ssn": [b"x", b"y"]}), out / "part-0.parquet")
    with pytest.raises(Exception) as err:
        _load(spark, out, opts).collect()
    text = str(err.value)
    assert "MissingKeyTableError" in text and str(out / "part-0.parquet") in text
    # a footer stripped of its key table, with a user schema (no inference), fails the same way
    with pytest.raises(Exception, match="MissingKeyTableError"):
        _load(spark, out, opts, schema="id bigint").collect()
    assert KEY_TABLE_METADATA_KEY not in str(pq.read_metadata(out / "part-0.parquet").metadata)


def test_filter_pushdown_prunes_files_and_row_groups_and_matches_spark(spark, partitioned):
    out, opts, df = partitioned

    def pushed():
        # A fresh DataFrame per query: Spark 4.3 keeps a pushed reader on the DataFrame
        # (see test_spark_reuses_the_pushed_reader_of_a_dataframe).
        return _load(spark, out, opts, filter_pushdown="true")

    spark.conf.set(_PUSHDOWN_CONF, "true")
    try:
        everything = pushed().rdd.getNumPartitions()
        # partition columns: whole files dropped at planning
        assert everything == 12  # 4 countries x 3 buckets, one file each
        assert pushed().filter("bucket = 1").rdd.getNumPartitions() == 4
        assert pushed().filter("country is null and bucket in (0, 2)").rdd.getNumPartitions() == 2
        # plain columns: row groups whose statistics cannot match are dropped at planning
        assert pushed().filter("id > 100000").rdd.getNumPartitions() == 1  # Spark's placeholder for none
        assert pushed().filter("id > 100000").count() == 0
        # pushed filters leave no Filter for Spark; filters on encrypted columns stay with Spark
        plan = pushed().filter("id >= 100 and amount < 200 and bucket = 1")._jdf.queryExecution().executedPlan()
        assert "Filter (" not in plan.toString()
        plan = pushed().filter("id >= 100 and age > 40")._jdf.queryExecution().executedPlan().toString()
        assert "Filter (isnotnull(age" in plan and "id#" not in plan.split("Filter", 1)[1].split("\n")[0]
        # exact results, SQL null semantics included (Spark does not re-check pushed filters)
        for condition in [
            "country = '日本' and id >= 100 and amount < 200", "not (country <=> 'FR')", "id in (3, 4, 5, 300)",
            "not (bucket in (0, 1))", "country like 'US%' or country like '%本'", "country like '%S/C%'",
            "not (country = 'FR') and bucket > 0 and not (id <= 50)", "country <=> null",
            "age > 40 and name is null",  # encrypted: left to Spark, still correct
        ]:
            got = pushed().drop("ssn_bidx").filter(condition)
            assert sorted_rows(got) == sorted_rows(df.filter(condition)), condition
    finally:
        spark.conf.unset(_PUSHDOWN_CONF)


def test_spark_reuses_the_pushed_reader_of_a_dataframe(spark, partitioned):
    """Pins a Spark 4.3 behaviour the docs warn about: the reader of a query whose filters were
    pushed stays attached to the DataFrame, and a later query on it with no pushable filter
    reuses it. When this test fails, Spark fixed it and the warning can go."""
    out, opts, _df = partitioned
    spark.conf.set(_PUSHDOWN_CONF, "true")
    try:
        reused = _load(spark, out, opts, filter_pushdown="true")
        assert reused.filter("bucket = 1").count() == 80
        assert reused.count() == 80  # not 240: the bucket = 1 reader again
        assert _load(spark, out, opts, filter_pushdown="true").count() == 240
        plain = _load(spark, out, opts)  # without filter_pushdown nothing is pushed, nothing goes stale
        assert plain.filter("bucket = 1").count() == 80 and plain.count() == 240
    finally:
        spark.conf.unset(_PUSHDOWN_CONF)


def test_filter_pushdown_needs_spark_conf(spark, partitioned):
    out, opts, _df = partitioned
    with pytest.raises(Exception, match=_PUSHDOWN_CONF.replace(".", "\\.")):
        _load(spark, out, opts, filter_pushdown="true").count()
    with pytest.raises(Exception, match="option filter_pushdown must be 'true' or 'false'"):
        _load(spark, out, opts, filter_pushdown="yes").count()
