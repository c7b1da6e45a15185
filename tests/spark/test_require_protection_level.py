"""``require_protection_level`` through Spark (issue #13): the data source option, ``write_encrypted``
and ``ColumnEncryptor``'s Param refuse a software key (embedded KMS) on the driver, before any data
key or staging; "software" accepts it; an HSM key (the GCP in-test server, protection level HSM) is
accepted and round-trips."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spark_kms.errors import ConfigurationError
from spark_kms.spark import read_encrypted, write_encrypted
from spark_kms.spark.ml import ColumnEncryptor
from spark_kms.testing.gcp import GcpKmsHarness

ROWS = [(1, "a@x.org"), (2, "b@x.org"), (3, None)]


@pytest.fixture(scope="module")
def gcp_hsm() -> Iterator[GcpKmsHarness]:
    h = GcpKmsHarness(protection_level="HSM")
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _df(spark: Any) -> Any:
    return spark.createDataFrame(ROWS, "id long, email string")


def test_software_key_refused_then_accepted(spark: Any, local_kms: Any, tmp_path: Any) -> None:
    df, out = _df(spark), tmp_path / "out"
    with pytest.raises(ConfigurationError) as info:
        write_encrypted(df, str(out), key_uri=local_kms.key_uri, columns=["email"],
                        kms_options=local_kms.kms_options, require_protection_level="hsm")
    assert "local://alias/pii" in str(info.value) and "protection level 'software'" in str(info.value)
    assert not out.exists() or not any(out.rglob("*.parquet"))  # nothing staged, nothing written
    # the data source option itself (Spark's own writer API)
    with pytest.raises(Exception, match="protection level 'software'"):
        (df.write.format("spark_kms").mode("overwrite").option("key_uri", local_kms.key_uri)
         .option("columns", "email").option("kms_options", json_opts(local_kms.kms_options))
         .option("require_protection_level", "hsm").save(str(out)))
    with pytest.raises(ConfigurationError, match="require_protection_level takes"):
        write_encrypted(df, str(out), key_uri=local_kms.key_uri, columns=["email"],
                        kms_options=local_kms.kms_options, require_protection_level="fips")
    result = write_encrypted(df, str(out), key_uri=local_kms.key_uri, columns=["email"],
                             kms_options=local_kms.kms_options, require_protection_level="software")
    assert result.rows == 3
    assert result.kms_calls.get("local:DescribeKey") == 1  # once, on the driver
    back = read_encrypted(spark, str(out), kms_options=local_kms.kms_options).orderBy("id").collect()
    assert [(r.id, r.email) for r in back] == ROWS


def test_column_encryptor_param(spark: Any, local_kms: Any) -> None:
    enc = ColumnEncryptor(inputCols=["email"], keyUri=local_kms.key_uri, kmsOptions=local_kms.kms_options,
                          requireProtectionLevel="hsm")
    assert enc.getRequireProtectionLevel() == "hsm"
    with pytest.raises(ConfigurationError, match="protection level 'software'"):
        enc.transform(_df(spark))
    enc.setRequireProtectionLevel("software")
    assert enc.transform(_df(spark)).count() == 3


def test_hsm_key_accepted(spark: Any, gcp_hsm: GcpKmsHarness, tmp_path: Any) -> None:
    provider = gcp_hsm.provider()
    opts = {"gcp-kms": dict(provider.options)}
    out = str(tmp_path / "hsm")
    result = write_encrypted(_df(spark), out, key_uri=provider.key_uri, columns=["email"], kms_options=opts,
                             require_protection_level="hsm")
    assert result.rows == 3
    back = read_encrypted(spark, out, kms_options=opts).orderBy("id").collect()
    assert [(r.id, r.email) for r in back] == ROWS
    from spark_kms.jobs import inspect_dataset

    inspection = inspect_dataset(out, kms_options=opts)
    assert [(k.protection_level, k.protection_detail) for k in inspection.keys] == [("hsm", "HSM")]


def json_opts(options: Any) -> str:
    import json

    return json.dumps(options)
