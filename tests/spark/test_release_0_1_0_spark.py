"""Spark reads data written by spark_kms 0.1.0 (tests/data/release_0_1_0) with today's code."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from spark_kms.spark import errors_translated, read_encrypted

RELEASE = Path(__file__).resolve().parents[1] / "data" / "release_0_1_0"


def test_both_spark_readers_read_release_0_1_0(spark, tmp_path: Path) -> None:
    copy = tmp_path / "release"
    shutil.copytree(RELEASE, copy)
    options = {"local": {"keystore": str(copy / "keystore"), "root_key": base64.b64encode(bytes(range(32))).decode()}}
    root = str(copy / "customers")
    expected = sorted((i, f"user{i % 2}@example.com", None if i == 4 else f"{i:03d}-00-0000", i * 1.25)
                      for i in range(6))
    with errors_translated():
        native = read_encrypted(spark, root, kms_options=options).select("id", "email", "ssn", "amount").collect()
        scanned = (spark.read.format("spark_kms").option("kms_options", json.dumps(options)).load(root)
                   .select("id", "email", "ssn", "amount").collect())
    assert sorted(tuple(r) for r in native) == expected
    assert sorted(tuple(r) for r in scanned) == expected
