"""ColumnEncryptor / ColumnDecryptor: pyspark.ml Transformers on the real session-scoped
Spark and the embedded local KMS."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, KeyTable, parse_cell_header
from spark_kms.errors import ConfigurationError
from spark_kms.spark.ml import KEYS_COLUMN, ColumnDecryptor, ColumnEncryptor

from ._helpers import kms_ops

pytestmark = pytest.mark.spark

SCHEMA = StructType(
    [
        StructField("id", LongType(), False),
        StructField("name", StringType(), True),
        StructField("email", StringType(), True),
        StructField("age", IntegerType(), True),
        StructField("score", DoubleType(), True),
        StructField("born", DateType(), True),
        StructField("seen", TimestampType(), True),
        StructField("vip", BooleanType(), True),
        StructField("balance", DecimalType(10, 2), True),
    ]
)
ROWS = [
    (1, "Zoë Ångström", "a@x.org", 31, 0.1, dt.date(1990, 1, 2),
     dt.datetime(2024, 5, 6, 7, 8, 9, 123456), True, Decimal("12.34")),
    (2, None, None, None, None, None, None, None, None),
    (3, "李雷 🙂", "b@x.org", -7, -1e300, dt.date(1970, 1, 1),
     dt.datetime(1999, 12, 31, 23, 59, 59), False, Decimal("-0.01")),
    (4, "", "a@x.org", 0, 2.5, dt.date(2000, 2, 29), dt.datetime(2020, 1, 1), True, Decimal("99999999.99")),
]
ENCRYPTED = ["name", "age", "score", "born", "seen", "vip", "balance"]






def _encryptor(local_kms: Any, **params: Any) -> ColumnEncryptor:
    return ColumnEncryptor(keyUri=local_kms.key_uri, kmsOptions=local_kms.kms_options, **params)


def test_save_and_load_keep_every_param(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    enc = _encryptor(
        local_kms,
        inputCols=["name", "age"],
        deterministicCols=["email"],
        blindIndexCols=["email=email_idx"],
        encryptionContext={"dataset": "people", "job": "nightly"},
        maxCellsPerDek=1000,
    )
    enc.save(str(tmp_path / "enc"))
    loaded = ColumnEncryptor.load(str(tmp_path / "enc"))
    assert isinstance(loaded, ColumnEncryptor)
    assert loaded.getOrDefault(loaded.inputCols) == ["name", "age"]
    assert loaded.getKeyUri() == local_kms.key_uri
    assert loaded.getDeterministicCols() == ["email"]
    assert loaded.getBlindIndexCols() == ["email=email_idx"]
    assert loaded.getEncryptionContext() == {"dataset": "people", "job": "nightly"}
    assert loaded.getKmsOptions() == local_kms.kms_options
    assert loaded.getMaxCellsPerDek() == 1000
    assert dict(loaded.encryption_spec().blind_index) == {"email": "email_idx"}

    table = KeyTable(deks={}, columns={})
    dec = ColumnDecryptor(inputCols=["name"], keyTable=table, kmsOptions=local_kms.kms_options)
    dec.save(str(tmp_path / "dec"))
    loaded_dec = ColumnDecryptor.load(str(tmp_path / "dec"))
    assert loaded_dec.getOrDefault(loaded_dec.inputCols) == ["name"]
    assert loaded_dec.key_table_for(None) == table  # type: ignore[arg-type]
    assert loaded_dec.getKmsOptions() == local_kms.kms_options


def test_bad_params_are_refused_clearly(local_kms: Any) -> None:
    with pytest.raises(TypeError, match="JSON"):
        ColumnEncryptor(encryptionContext="{not json")
    with pytest.raises(Exception, match="key table"):
        ColumnDecryptor(keyTable='{"format_version": 1}')


def test_pipeline_round_trip_through_spark_native_parquet(spark: Any, local_kms: Any, tmp_path: Path) -> None:
    source = spark.createDataFrame(ROWS, SCHEMA).repartition(2, "id")
    stage = _encryptor(local_kms, inputCols=ENCRYPTED, deterministicCols=["email"], blindIndexCols=["email"],
                       encryptionContext={"dataset": "people"})
    model = Pipeline(stages=[stage]).fit(source)
    assert isinstance(model.stages[0], ColumnEncryptor)

    out = str(tmp_path / "people")
    model.transform(source).write.parquet(out)  # Spark's own Parquet writer
    stored = spark.read.parquet(out)
    types = dict(stored.dtypes)
    assert {c: types[c] for c in [*ENCRYPTED, "email", "email_bidx"]} == dict.fromkeys(
        [*ENCRYPTED, "email", "email_bidx"], "binary"
    )
    assert types["id"] == "bigint" and types[KEYS_COLUMN] == "string"
    emails = {r.id: r.email for r in stored.select("id", "email").collect()}
    assert emails[1] == emails[4] != emails[3]  # deterministic: equal values, equal cells

    decrypted = ColumnDecryptor(kmsOptions=local_kms.kms_options).transform(stored)
    assert KEYS_COLUMN not in decrypted.columns
    assert_df_equality(decrypted.drop("email_bidx"), source, ignore_row_order=True, ignore_nullable=True)

    # Only the columns asked for are decrypted; the others stay binary.
    partial = ColumnDecryptor(inputCols=["name"], kmsOptions=local_kms.kms_options).transform(stored)
    assert dict(partial.dtypes)["name"] == "string" and dict(partial.dtypes)["age"] == "binary"


def test_one_data_key_per_non_empty_partition(spark: Any, local_kms: Any, small_batches: None) -> None:
    # Range partitions hold ids 0-9, 10-19, 20-29: the filter empties the last one.
    df = spark.range(0, 30, 1, numPartitions=3).where("id < 20").select(
        "id", F.concat(F.lit("n"), F.col("id").cast("string")).alias("name")
    )
    before = kms_ops(local_kms.keystore_dir)["GenerateDataKey"]
    rows = _encryptor(local_kms, inputCols=["name"]).transform(df).collect()
    assert kms_ops(local_kms.keystore_dir)["GenerateDataKey"] - before == 2  # not one per batch of 4 rows

    deks_by_partition: dict[int, set[str]] = {}
    for r in rows:
        deks_by_partition.setdefault(r.id // 10, set()).add(parse_cell_header(r.name).dek_id.hex())
    assert sorted(len(v) for v in deks_by_partition.values()) == [1, 1]
    tables = {r[KEYS_COLUMN] for r in rows}
    assert len(tables) == 2  # one key table per partition, repeated on its rows
    for doc in tables:
        table = KeyTable.from_json(doc)
        assert [e.algorithm for e in table.deks.values()] == [AES_256_GCM]


def test_each_batch_carries_the_keys_of_its_own_cells_on_roll_over(
    spark: Any, local_kms: Any, small_batches: None
) -> None:
    df = spark.range(0, 10, 1, numPartitions=1).select("id", F.col("id").cast("string").alias("name"))
    rows = _encryptor(local_kms, inputCols=["name"], maxCellsPerDek=3).transform(df).collect()
    used = set()
    for r in rows:
        dek = parse_cell_header(r.name).dek_id.hex()
        used.add(dek)
        assert dek in KeyTable.from_json(r[KEYS_COLUMN]).deks
    assert len(used) == 4  # ceil(10 / 3) data keys in one partition
    back = ColumnDecryptor(kmsOptions=local_kms.kms_options).transform(
        spark.createDataFrame(rows)
    ).collect()
    assert sorted((r.id, r.name) for r in back) == [(i, str(i)) for i in range(10)]


def test_deterministic_key_is_made_once_on_the_driver(spark: Any, local_kms: Any) -> None:
    df = spark.createDataFrame([(i, f"u{i % 2}@x.org") for i in range(6)], "id long, email string").repartition(3)
    before = kms_ops(local_kms.keystore_dir)["GenerateDataKey"]
    rows = _encryptor(local_kms, deterministicCols=["email"]).transform(df).collect()
    assert kms_ops(local_kms.keystore_dir)["GenerateDataKey"] - before == 1
    tables = [KeyTable.from_json(r[KEYS_COLUMN]) for r in rows]
    assert {tuple(t.deks) for t in tables} == {tuple(tables[0].deks)}
    assert [e.algorithm for e in tables[0].deks.values()] == [AES_256_SIV]


def test_decryptor_with_key_table_param_and_clear_errors(spark: Any, local_kms: Any) -> None:
    df = spark.createDataFrame([(1, "alice")], "id long, name string")
    encrypted = _encryptor(local_kms, inputCols=["name"]).transform(df).collect()
    table_json = encrypted[0][KEYS_COLUMN]
    bare = spark.createDataFrame([(r.id, r.name) for r in encrypted], "id long, name binary")

    with pytest.raises(ConfigurationError, match=f"no '{KEYS_COLUMN}' column"):
        ColumnDecryptor(kmsOptions=local_kms.kms_options).transform(bare)
    with pytest.raises(ConfigurationError, match=r"\['age'\] are not decryptable"):
        ColumnDecryptor(inputCols=["age"], keyTable=table_json).transform(bare)

    got = ColumnDecryptor(keyTable=table_json, kmsOptions=json.dumps(local_kms.kms_options)).transform(bare)
    assert [tuple(r) for r in got.collect()] == [(1, "alice")]

    with pytest.raises(ConfigurationError, match="columns \\['nope'\\] to encrypt are not in the data"):
        _encryptor(local_kms, inputCols=["nope"]).transform(df)
    with pytest.raises(ConfigurationError, match="encrypted already"):
        _encryptor(local_kms, inputCols=["name"]).transform(spark.createDataFrame(encrypted))


def test_saved_stages_hold_no_secret_option_and_load_takes_them_again(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #14, item 7: a root key given in kmsOptions is not written by save -- of a stage, a
    Pipeline or a PipelineModel; after load it is given again with setKmsOptions."""
    import base64
    import secrets

    from spark_kms.errors import KeystoreError
    from spark_kms.kms.local import LocalKms

    monkeypatch.delenv("SPARK_KMS_ROOT_KEY", raising=False)
    root_key = secrets.token_bytes(32)
    root_b64 = base64.b64encode(root_key).decode()
    keystore = tmp_path / "keystore"
    LocalKms(keystore, root_key=root_key).create_key(alias="alias/pii")  # injected: no root.key file
    opts = {"local": {"keystore": str(keystore), "root_key": root_b64}}
    public = {"local": {"keystore": str(keystore)}}
    enc = ColumnEncryptor(keyUri="local://alias/pii", inputCols=["name"], deterministicCols=["email"],
                          kmsOptions=opts)
    dec = ColumnDecryptor(kmsOptions=opts)
    df = spark.createDataFrame([(1, "alice", "a@x.org"), (2, "bob", None)], "id long, name string, email string")

    enc.save(str(tmp_path / "saved" / "enc"))
    dec.save(str(tmp_path / "saved" / "dec"))
    Pipeline(stages=[enc, dec]).save(str(tmp_path / "saved" / "pipeline"))
    Pipeline(stages=[enc, dec]).fit(df).save(str(tmp_path / "saved" / "model"))
    written = [p for p in (tmp_path / "saved").rglob("*") if p.is_file()]
    assert len(written) > 8
    for p in written:
        data = p.read_bytes()
        for form in (root_key, root_b64.encode(), root_key.hex().encode(), b"root_key"):
            assert form not in data, f"{p} holds the root key"
    assert enc.getKmsOptions() == opts  # the live stage keeps what it was given

    loaded = ColumnEncryptor.load(str(tmp_path / "saved" / "enc"))
    assert loaded.getKmsOptions() == public
    with pytest.raises(KeystoreError, match="no root key was given"):  # the provider's own error
        loaded.transform(df)
    loaded_dec = ColumnDecryptor.load(str(tmp_path / "saved" / "dec"))
    assert loaded_dec.getKmsOptions() == public

    out = str(tmp_path / "people")
    loaded.setKmsOptions(opts).transform(df).write.parquet(out)  # once: each evaluation makes new keys
    encrypted = spark.read.parquet(out)
    back = loaded_dec.setKmsOptions(opts).transform(encrypted)
    assert_df_equality(back, df, ignore_row_order=True, ignore_nullable=True)
