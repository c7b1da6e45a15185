"""read_encrypted: native scan (pushdown, pruning), lazy unwraps, and tamper detection."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import KEY_TABLE_METADATA_KEY
from spark_kms.errors import MissingKeyTableError
from spark_kms.spark import read_encrypted, write_encrypted

from ._helpers import data_files, kms_ops

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def _written(spark, tmp_path_factory):
    """Written once per module; tests that tamper get their own copy (``dataset``)."""
    from spark_kms.kms.local import LocalKms

    tmp_path = tmp_path_factory.mktemp("reader")
    ks = tmp_path / "keystore"
    LocalKms(ks).create_key(alias="alias/pii")
    key_uri, opts = "local://alias/pii", {"local": {"keystore": str(ks)}}
    df = spark.range(0, 200, numPartitions=4).selectExpr(
        "id",
        "cast(id % 10 as int) as bucket",
        "concat('pii-email-', id, '@example.org') as email",
        "format_string('%03d-11-%04d', id, id) as ssn",
    )
    out = tmp_path / "ds"
    result = write_encrypted(df, str(out), key_uri=key_uri, columns=["email", "ssn"],
                             blind_index={"email": "email_bidx"}, kms_options=opts)
    return ks, opts, out, df, result


@pytest.fixture
def dataset(_written, tmp_path):
    ks, opts, out, df, result = _written
    copy = tmp_path / "ds"
    shutil.copytree(out, copy)
    return ks, opts, copy, df, result


def test_plain_reads_keep_pushdown_and_pruning_and_make_no_kms_call(spark, _written):
    ks, opts, out, _df, _result = _written
    before = kms_ops(ks)
    q = read_encrypted(spark, str(out), kms_options=opts).filter("bucket = 3").select("id", "bucket")
    plan = q._jdf.queryExecution().executedPlan().toString()
    assert "PushedFilters: [IsNotNull(bucket), EqualTo(bucket,3)]" in plan
    assert "ReadSchema: struct<id:bigint,bucket:int>" in plan
    assert sorted(r.id for r in q.collect()) == list(range(3, 200, 10))
    assert read_encrypted(spark, str(out), columns=["id", "email_bidx"], kms_options=opts).count() == 200
    assert kms_ops(ks) == before  # no Decrypt (nor anything else) for plain-only reads


def test_decrypting_read_unwraps_each_key_at_most_once_per_process(spark, _written):
    ks, opts, out, df, result = _written
    # 4 task keys + the blind-index key (never unwrapped by a read: index columns stay binary)
    assert len(result.deks) == 5
    before = kms_ops(ks)["Decrypt"]
    q = read_encrypted(spark, str(out), columns=["id", "ssn"], kms_options=opts).filter("id >= 150")
    plan = q._jdf.queryExecution().executedPlan().toString()
    assert "PushedFilters: [IsNotNull(id), GreaterThanOrEqual(id,150)]" in plan
    assert "ReadSchema: struct<id:bigint,ssn:binary>" in plan
    got = {r.id: r.ssn for r in q.collect()}
    assert got == {i: f"{i:03d}-11-{i:04d}" for i in range(150, 200)}
    # Each file is scanned by one task in one worker process, so one query unwraps each key
    # at most once (worker processes cache keys across queries too, but which process runs
    # which task is Spark's choice).
    assert 1 <= kms_ops(ks)["Decrypt"] - before <= 4
    full = read_encrypted(spark, str(out), kms_options=opts)
    assert dict(full.dtypes)["email_bidx"] == "binary" and dict(full.dtypes)["email"] == "string"
    before = kms_ops(ks)["Decrypt"]
    assert full.select("id", "bucket", "email", "ssn").exceptAll(df).count() == 0
    assert kms_ops(ks)["Decrypt"] - before <= 4


def _rewrite_cells(path, fn):
    """Rewrite a Parquet file with ``fn(table) -> table``, keeping its footer metadata."""
    table = pq.read_table(path)
    meta = pq.read_metadata(path).metadata
    new = fn(table)
    pq.write_table(new.replace_schema_metadata(meta), path)


def test_tampered_cell_fails_naming_column_and_key(spark, dataset):
    _ks, opts, out, _df, _result = dataset
    victim = out / data_files(out)[0]

    def flip(table):
        cells = table.column("ssn").to_pylist()
        cells[5] = cells[5][:-1] + bytes([cells[5][-1] ^ 1])
        return table.set_column(table.schema.get_field_index("ssn"), "ssn", pa.array(cells, pa.binary()))

    _rewrite_cells(victim, flip)
    with pytest.raises(Exception) as err:
        read_encrypted(spark, str(out), columns=["ssn"], kms_options=opts).collect()
    text = str(err.value)
    assert "DecryptionError" in text and "'ssn'" in text
    assert "-11-" not in text  # no plaintext in the message
    # plain columns of the same file are still readable
    assert read_encrypted(spark, str(out), columns=["id"], kms_options=opts).count() == 200


def test_cells_swapped_between_columns_fail(spark, dataset):
    _ks, opts, out, _df, _result = dataset
    victim = out / data_files(out)[1]

    def swap(table):
        e, s = table.column("email"), table.column("ssn")
        table = table.set_column(table.schema.get_field_index("email"), "email", s)
        return table.set_column(table.schema.get_field_index("ssn"), "ssn", e)

    _rewrite_cells(victim, swap)
    with pytest.raises(Exception) as err:
        read_encrypted(spark, str(out), columns=["email"], kms_options=opts).collect()
    assert "DecryptionError" in str(err.value) and "'email'" in str(err.value)


def test_missing_footer_key_table_names_the_file(spark, dataset):
    _ks, opts, out, _df, _result = dataset
    victim = out / data_files(out)[2]
    table = pq.read_table(victim)
    meta = {k: v for k, v in (pq.read_metadata(victim).metadata or {}).items()
            if k != KEY_TABLE_METADATA_KEY.encode()}
    pq.write_table(table.replace_schema_metadata(meta), victim)
    with pytest.raises(MissingKeyTableError, match=str(victim)):
        read_encrypted(spark, str(out), kms_options=opts)
