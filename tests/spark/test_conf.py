"""Spark-native configuration (spark_kms.spark.conf): every option from the session's
``spark.spark_kms.*`` conf, per-call options over it, the environment under it; secrets from the conf
never echoed. On the real session-scoped Spark and the embedded local KMS."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spark_kms.errors import ConfigurationError, KeyNotFoundError, SparkKmsError
from spark_kms.kms import KmsConfig
from spark_kms.kms.local import LocalKms
from spark_kms.spark import errors_translated, read_encrypted, write_encrypted
from spark_kms.spark.conf import PREFIX, REDACTION_REGEX, SparkKmsConf, option_name
from spark_kms.spark.datasource import register as register_source

pytestmark = pytest.mark.spark

ROWS = [(1, "Ada", "078-05-1120"), (2, "Alan", None), (3, "Grace", "219-09-9999")]
SCHEMA = "id long, name string, ssn string"


@pytest.fixture
def conf(spark: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Set ``spark.spark_kms.<name>`` for one test; every setting is unset afterwards and the data
    source registered again without them (the session is shared by the whole suite)."""
    monkeypatch.delenv("SPARK_KMS_KEYSTORE", raising=False)
    names: list[str] = []

    def set_conf(name: str, value: str) -> None:
        spark.conf.set(PREFIX + name, value)
        names.append(PREFIX + name)

    try:
        yield set_conf
    finally:
        for name in names:
            spark.conf.unset(name)
        register_source(spark)


def _rows(df: Any) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in df.select("id", "name", "ssn").collect())


def test_option_names_take_either_spelling() -> None:
    assert option_name("keyUri") == "key_uri"
    assert option_name("key_uri") == "key_uri"
    assert option_name("maxCellsPerDek") == "max_cells_per_dek"
    both = SparkKmsConf({"keyUri": "local://alias/a", "key_uri": "local://alias/b"})
    with pytest.raises(ConfigurationError, match="twice"):
        both.options()
    assert "local://alias/a" not in repr(both)  # names only


def test_kms_options_per_scheme_aliases_and_shortcut() -> None:
    conf = SparkKmsConf({
        "keystore": "/ks/short",
        "kms.local.principal": "etl",
        "kms.aws.region": "eu-west-1",
        "kms.aws-kms.endpoint_url": "http://127.0.0.1:1",
        "kms.vault.timeout": "5",
        "storage.s3.region": "eu-west-1",
    })
    assert conf.kms_options() == {
        "local": {"keystore": "/ks/short", "principal": "etl"},
        "aws-kms": {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:1"},
        "vault": {"timeout": 5},
    }
    # Per call over the conf, per option: the conf's region stays, the call's profile is added.
    merged = conf.kms_config({"aws-kms": {"profile": "etl"}, "local": {"keystore": "/ks/call"}}).options()
    assert merged["aws-kms"] == {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:1", "profile": "etl"}
    assert merged["local"] == {"keystore": "/ks/call", "principal": "etl"}
    assert conf.merged_storage({"s3.region": "us-east-1"}) == {"s3.region": "us-east-1"}
    with pytest.raises(ConfigurationError, match="unknown storage options"):
        SparkKmsConf({"storage.s3.regoin": "x"}).storage_options()


def test_conf_keystore_and_key_uri_reach_every_entry_point(spark: Any, conf: Any, local_kms: Any,
                                                          tmp_path: Path) -> None:
    """Nothing but the Spark conf says where the keystore is and which key to use."""
    path = str(tmp_path / "people")
    df = spark.createDataFrame(ROWS, SCHEMA)
    conf("kms.local.keystore", str(local_kms.keystore_dir))
    conf("keyUri", local_kms.key_uri)
    conf("columns", "ssn")
    register_source(spark)  # the data source takes the conf as it is at registration

    df.write.format("spark_kms").mode("overwrite").save(path)  # no key_uri, columns or kms_options
    stored = spark.read.parquet(path)
    assert dict(stored.dtypes)["ssn"] == "binary"
    assert _rows(spark.read.format("spark_kms").load(path)) == sorted(ROWS)
    assert _rows(read_encrypted(spark, path)) == sorted(ROWS)
    result = write_encrypted(df, path, key_uri=None, columns=["ssn"], mode="append")
    assert result.rows == 3

    from spark_kms.jobs import inspect_dataset

    assert inspect_dataset(path, spark=spark).up_to_date is True  # the job described the key through the conf

    # Without the conf the same read cannot find the key (no keystore anywhere else).
    spark.conf.unset(PREFIX + "kms.local.keystore")
    with pytest.raises(KeyNotFoundError), errors_translated():
        read_encrypted(spark, path).collect()


def test_per_call_options_override_the_conf(spark: Any, conf: Any, local_kms: Any, tmp_path: Path) -> None:
    other = tmp_path / "other-keystore"
    LocalKms(other).create_key(alias="alias/other")
    conf("keystore", str(other))                  # the conf names another keystore and key...
    conf("keyUri", "local://alias/other")
    path = str(tmp_path / "people")
    df = spark.createDataFrame(ROWS, SCHEMA)
    register_source(spark)
    (df.write.format("spark_kms").option("key_uri", local_kms.key_uri).option("columns", "ssn")
       .option("kms_options", json.dumps(local_kms.kms_options)).mode("overwrite").save(path))  # ...the call wins
    footer_keys = read_encrypted(spark, path, kms_options=local_kms.kms_options)
    assert _rows(footer_keys) == sorted(ROWS)
    from spark_kms.parquet.dataset import read_dataset_key_table

    table = read_dataset_key_table(path)
    assert {e.key_uri for e in table.deks.values()} == {local_kms.key_uri}
    # The conf's keystore does not hold alias/pii: reading with the conf alone fails.
    with pytest.raises(KeyNotFoundError), errors_translated():
        read_encrypted(spark, path).collect()


def test_conf_beats_the_environment(spark: Any, conf: Any, local_kms: Any, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """$SPARK_KMS_KEYSTORE names an empty keystore; the conf names the real one and wins (driver side:
    a job given the session runs there)."""
    path = str(tmp_path / "people")
    write_encrypted(spark.createDataFrame(ROWS, SCHEMA), path, key_uri=local_kms.key_uri, columns=["ssn"],
                    kms_options=local_kms.kms_options)
    empty = tmp_path / "empty-keystore"
    LocalKms(empty).create_key(alias="alias/unrelated")
    monkeypatch.setenv("SPARK_KMS_KEYSTORE", str(empty))
    with pytest.raises(KeyNotFoundError):
        KmsConfig().provider(local_kms.key_uri).describe_key()  # the environment alone: the wrong keystore
    conf("kms.local.keystore", str(local_kms.keystore_dir))
    assert SparkKmsConf.of(spark).kms_config(None).provider(local_kms.key_uri).describe_key().key_id

    from spark_kms.jobs import rewrap_dataset

    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    summary = rewrap_dataset(path, spark=spark)  # KMS options from the conf, not the environment
    assert summary.kms_calls


def test_storage_options_from_conf(spark: Any, conf: Any, local_kms: Any, s3: Any, s3_prefix: str) -> None:
    """The S3 endpoint and credentials come from spark.spark_kms.storage.*, for the data source and the jobs."""
    for name, value in s3.options.items():
        conf(f"storage.{name}", str(value))
    conf("kms.local.keystore", str(local_kms.keystore_dir))
    register_source(spark)
    uri = f"s3://{s3.bucket}/{s3_prefix}/people"
    df = spark.createDataFrame(ROWS, SCHEMA)
    df.write.format("spark_kms").option("key_uri", local_kms.key_uri).option("columns", "ssn").mode("overwrite").save(uri)
    assert _rows(spark.read.format("spark_kms").load(uri)) == sorted(ROWS)

    from spark_kms.jobs import inspect_dataset

    assert len(inspect_dataset(uri, spark=spark).files) >= 1


def test_a_secret_from_the_conf_is_never_echoed(spark: Any, conf: Any, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture, capsys: Any) -> None:
    root_key = base64.b64encode(os.urandom(32)).decode()
    keystore = tmp_path / "sealed"
    LocalKms(keystore, root_key=root_key).create_key(alias="alias/pii")
    conf("kms.local.keystore", str(keystore))
    conf("kms.local.root_key", root_key)
    conf("keyUri", "local://alias/pii")
    register_source(spark)
    path = str(tmp_path / "people")
    caplog.set_level(logging.DEBUG, logger="spark_kms")
    df = spark.createDataFrame(ROWS, SCHEMA)
    write_encrypted(df, path, key_uri=None, columns=["ssn"])
    back = read_encrypted(spark, path)
    assert _rows(back) == sorted(ROWS)  # the root key from the conf opened the keystore
    back.explain(extended=True)
    loaded = spark.read.format("spark_kms").load(path)
    loaded.explain(extended=True)
    messages = []
    for bad in (lambda: read_encrypted(spark, path, columns=["nope"]),
                lambda: write_encrypted(df, path, key_uri="local://alias/missing", columns=["ssn"])):
        with pytest.raises(SparkKmsError) as info:
            bad()
        messages.append(str(info.value))
    shown = "\n".join([caplog.text, capsys.readouterr().out, *messages, repr(SparkKmsConf.of(spark)),
                       repr(SparkKmsConf.of(spark).kms_config(None))])
    assert root_key not in shown
    assert "kms.local.root_key" in repr(SparkKmsConf.of(spark))  # the name is shown, not the value


def test_spark_redacts_every_spark_kms_secret_name(spark: Any) -> None:
    """Spark's UI and event logs mask conf values whose names match spark.redaction.regex: the sessions
    spark_kms starts use REDACTION_REGEX, which matches every secret option under spark.spark_kms."""
    from spark_kms.kms.config import secret_option_names
    from spark_kms.storage import SECRET_OPTIONS

    assert spark.sparkContext.getConf().get("spark.redaction.regex") == REDACTION_REGEX
    names = [f"{PREFIX}storage.{name}" for name in SECRET_OPTIONS]
    for scheme in ("local", "aws-kms", "gcp-kms", "azure-kv", "vault", "pkcs11"):
        for name in secret_option_names(scheme) or ():
            names.append(f"{PREFIX}kms.{scheme}.{name}")
    assert len(names) > 10
    pattern = re.compile(REDACTION_REGEX.removeprefix("(?i)"), re.IGNORECASE)
    assert [n for n in names if not pattern.search(n)] == []
    assert not pattern.search(f"{PREFIX}kms.local.keystore") and not pattern.search(f"{PREFIX}keyUri")


def test_ml_transformers_take_key_uri_and_kms_from_the_conf(spark: Any, conf: Any, local_kms: Any,
                                                            tmp_path: Path) -> None:
    from spark_kms.spark import ColumnDecryptor, ColumnEncryptor

    df = spark.createDataFrame(ROWS, SCHEMA)
    with pytest.raises(ConfigurationError, match="spark.spark_kms.keyUri"):
        ColumnEncryptor(inputCols=["ssn"]).transform(df)
    conf("keystore", str(local_kms.keystore_dir))
    conf("keyUri", local_kms.key_uri)
    # No keyUri, no kmsOptions. Written once: each evaluation of the transform would make new data keys.
    ColumnEncryptor(inputCols=["ssn"]).transform(df).write.parquet(str(tmp_path / "ml"))
    encrypted = spark.read.parquet(str(tmp_path / "ml"))
    assert dict(encrypted.dtypes)["ssn"] == "binary"
    assert _rows(ColumnDecryptor(inputCols=["ssn"]).transform(encrypted)) == sorted(ROWS)


def test_a_classic_session_conf_is_read_in_one_piece_and_equals_getall(spark: Any, conf: Any) -> None:
    """SparkKmsConf.of reads a classic session's conf as one JSON string (not one py4j call per entry): the
    same entries, values with quotes, backslashes, newlines and non-ASCII intact."""
    from spark_kms.spark import conf as conf_module

    odd = 'a "quoted" \\ value\nover two lines, café 東京'
    conf("kms.local.keystore", odd)
    conf("keyUri", "local://alias/x")
    whole = conf_module._classic_all(spark)
    assert whole is not None and whole == dict(spark.conf.getAll)
    entries = SparkKmsConf.of(spark).entries
    assert entries["kms.local.keystore"] == odd and entries["keyUri"] == "local://alias/x"
    assert dict(entries) == {k[len(PREFIX):]: v for k, v in spark.conf.getAll.items() if k.startswith(PREFIX)}
