"""The Spark wing's driver-side log lines: they say what a job did, never a secret or a value."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from spark_kms.kms import KmsConfig
from spark_kms.kms.local import LocalKms
from spark_kms.spark import read_encrypted, write_encrypted

pytestmark = pytest.mark.spark

SSNS = ["PIIVALUE-123-45-6789", "PIIVALUE-987-65-4321"]


def test_write_and_read_log_what_they_did_and_nothing_secret(
    spark: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root_key = bytes(range(7, 39))
    keystore = tmp_path / "keystore"
    LocalKms(keystore, root_key=root_key).create_key(alias="alias/pii")
    kms = KmsConfig({"local": {"keystore": str(keystore), "root_key": base64.b64encode(root_key).decode()}})
    df = spark.createDataFrame([(1, SSNS[0], "a"), (2, SSNS[1], "b")], "id long, ssn string, day string")
    out = tmp_path / "customers"
    caplog.set_level(logging.DEBUG, logger="spark_kms")

    result = write_encrypted(df, str(out), key_uri="local://alias/pii", columns=["ssn"], partition_by=["day"],
                             kms_options=kms)
    back = read_encrypted(spark, str(out / "day=a"), kms_options=kms)
    assert [r.ssn for r in back.collect()] == [SSNS[0]]
    loaded = spark.read.format("spark_kms").option("kms_options", kms.to_json()).load(str(out))
    assert sorted(r.ssn for r in loaded.collect()) == SSNS

    text = caplog.text
    assert f"write_encrypted to {out} committed (job {result.job_id}): 2 files, 2 rows" in text
    assert f"read_encrypted {out / 'day=a'} (dataset root {out})" in text
    assert "encrypted columns decrypted on use: ['ssn']" in text
    secrets = [base64.b64encode(root_key).decode(), root_key.hex(), *SSNS]
    assert not [s for s in secrets if s in text]
    assert "root_key" not in text or "'root_key': '***'" in text
    assert json.dumps(kms.options()) not in text
