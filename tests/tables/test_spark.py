"""The Spark side, with the parts that run here (Delta's and Iceberg's Spark jars come from a Maven repository,
which these machines cannot reach, so Spark itself never writes or reads a table format here):

* the Spark writer path: ``ColumnEncryptor`` output converted with ``toArrow()`` and committed by delta-rs
  (``write_deltalake``) and pyiceberg (``table.append``) -- what ``df.write.format("delta")`` /
  ``df.writeTo(...).append()`` do on a cluster with the jars; the wrapped keys travel in ``_spark_kms_keys``;
* the Spark reader path: the snapshot's files from :func:`spark_kms.tables.table_scan`, read by Spark's native
  Parquet scan (``spark.read.parquet(*files)``) and decrypted by the ``spark_kms.spark`` decrypt UDFs.

One Spark session, small data: the session fixture is shared with the rest of the suite.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from spark_kms import tables
from spark_kms.kms.local import LocalKms

pytestmark = pytest.mark.spark

READ = ["id", "name", "ssn", "amount"]


def _spark_read(spark, scan, kms) -> pa.Table:
    from spark_kms.spark.udfs import decrypt_udf

    reader = spark.read.option("basePath", scan.base_path) if scan.base_path else spark.read
    df = reader.parquet(*scan.files).drop(tables.KEYS_COLUMN)
    for column, arrow_type in scan.encrypted_columns.items():
        df = df.withColumn(column, decrypt_udf(column, arrow_type, scan.key_table.deks, kms)(df[column]))
    return df.select(*READ).toArrow().sort_by("id")


def test_column_encryptor_output_in_delta_and_iceberg_read_by_spark(spark, tmp_path, source, local_kms,
                                                                    iceberg_catalog):
    from deltalake import write_deltalake
    from pyiceberg.catalog import load_catalog

    from spark_kms.spark import ColumnEncryptor

    kms = local_kms.kms_options
    expected = source.sort_by("id").select(READ)
    frame = spark.createDataFrame(source.select(["id", "name", "ssn", "amount", "day"]).to_pandas()).repartition(2)
    encrypted = ColumnEncryptor(inputCols=["ssn", "amount"], keyUri=local_kms.key_uri, kmsOptions=kms).transform(frame)
    arrow = encrypted.toArrow()
    assert tables.KEYS_COLUMN in arrow.column_names

    # the Spark writer path, committed by each format's own library
    delta_root = tmp_path / "delta_from_spark"
    write_deltalake(str(delta_root), arrow, partition_by=["day"])
    catalog = load_catalog("test", **iceberg_catalog)
    catalog.create_namespace("crm")
    catalog.create_table("crm.from_spark", schema=arrow.schema).append(arrow)
    ice = "iceberg://test/crm.from_spark"
    ice_kw = {"catalog_properties": iceberg_catalog}

    for uri, kw in ((delta_root, {}), (ice, ice_kw)):
        seen = tables.inspect_table(uri, kms_options=kms, **kw)
        assert seen.files and all(f.key_source == "column" for f in seen.files)
        assert tables.read_table_decrypted(uri, kms_options=kms, **kw).sort_by("id").select(READ).equals(expected)
        assert _spark_read(spark, tables.table_scan(uri, **kw), kms).equals(expected)

    # rotation of tables whose keys are only in the column: rewrap (manifest over column entries), re-encrypt
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    for uri, kw in ((delta_root, {}), (ice, ice_kw)):
        assert tables.rewrap_table(uri, kms_options=kms, **kw).deks >= 1
        assert _spark_read(spark, tables.table_scan(uri, **kw), kms).equals(expected)
        assert tables.reencrypt_table(uri, kms_options=kms, **kw).ok
        after = tables.inspect_table(uri, kms_options=kms, **kw)
        assert after.up_to_date and all(f.key_source == "footer" for f in after.files)
        assert tables.read_table_decrypted(uri, kms_options=kms, **kw).sort_by("id").select(READ).equals(expected)

    # a table spark_kms wrote (keys in footers and in the column), scanned by Spark
    ours = tmp_path / "delta_from_spark_kms"
    tables.encrypt_into_table(source, ours, format="delta", columns=["ssn", "amount"], key_uri=local_kms.key_uri,
                              kms_options=kms, partition_by=["day"])
    assert _spark_read(spark, tables.table_scan(ours), kms).equals(expected)
