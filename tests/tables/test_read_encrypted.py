"""``read_encrypted`` (Spark's native scan + decrypt UDFs) and ``read_decrypted_table`` (pyarrow) take a Delta or
Iceberg table directly: the snapshot's files come from the table's own log, time travel included."""

from __future__ import annotations

import pytest

from spark_kms import tables
from spark_kms.errors import ConfigurationError
from spark_kms.parquet import read_decrypted_table
from spark_kms.spark import read_encrypted

pytestmark = pytest.mark.spark

READ = ["id", "ssn", "amount", "birth", "day"]


def test_read_encrypted_reads_a_table_snapshot_and_travels_in_time(spark, target, source, local_kms):
    kms = local_kms.kms_options
    kw = dict(target.kw)
    tables.encrypt_into_table(source.slice(0, 5), target.uri, columns=["ssn", "amount", "birth"],
                              key_uri=local_kms.key_uri, kms_options=kms, partition_by=["day"], **kw)
    first = target.current_version()
    tables.encrypt_into_table(source.slice(5), target.uri, columns=["ssn", "amount", "birth"],
                              key_uri=local_kms.key_uri, kms_options=kms, **kw)
    table_kw = {k: v for k, v in kw.items() if k != "format"}

    df = read_encrypted(spark, target.uri, kms_options=kms, **table_kw)
    assert "_spark_kms_keys" not in df.columns
    got = df.select(*READ).toArrow().sort_by("id")
    want = source.select(READ)
    assert got.column("ssn").to_pylist() == want.column("ssn").to_pylist()
    assert got.column("amount").to_pylist() == want.column("amount").to_pylist()
    assert got.column("birth").to_pylist() == want.column("birth").to_pylist()
    assert got.column("day").to_pylist() == want.column("day").to_pylist()  # a string, as written (not a date)

    old = read_encrypted(spark, target.uri, kms_options=kms, version=first, columns=["id", "ssn"], **table_kw)
    rows = sorted(old.collect())
    assert [r.id for r in rows] == [1, 2, 3, 4, 5]
    assert [r.ssn for r in rows] == source.column("ssn").to_pylist()[:5]

    if target.format == "delta":  # the pyarrow reader takes a table path too (an Iceberg table needs its catalog)
        by_pyarrow = read_decrypted_table(target.uri, kms_options=kms).sort_by("id")
        assert by_pyarrow.column("ssn").to_pylist() == want.column("ssn").to_pylist()


def test_table_arguments_on_a_plain_dataset_are_refused(spark, tmp_path, local_kms):
    import pyarrow as pa

    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

    t = pa.table({"id": [1], "ssn": ["x"]})
    with EncryptedParquetWriter(tmp_path / "plain" / "part-0.parquet", t.schema, EncryptionSpec(columns=["ssn"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as w:
        w.write_batch(t)
    with pytest.raises(ConfigurationError, match="apply to tables only"):
        read_encrypted(spark, str(tmp_path / "plain"), kms_options=local_kms.kms_options, version=3)
