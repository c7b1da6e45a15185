"""The dataset jobs through their Python APIs with a Spark Connect session: encrypt, inspect, decrypt,
rewrap, re-encrypt, needs_rotation and gc run where the data is, and the values stay the source's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spark_kms.jobs import (
    collect_garbage,
    decrypt_dataset,
    encrypt_dataset,
    inspect_dataset,
    needs_rotation,
    reencrypt_dataset,
    rewrap_dataset,
)
from spark_kms.spark import read_encrypted
from spark_kms.spark.remote import run_near_data

from ._support import COLUMNS, ROWS, Kms, assert_client_sees_nothing, rows_of, server_side_calls, source_df


def test_jobs_round_trip(spark: Any, kms: Kms, data_dir: Path, dirs: Any) -> None:
    key_uri = kms.new_key("jobs")
    source, encrypted, plain = data_dir / "source", data_dir / "encrypted", data_dir / "plain"
    source_df(spark).write.parquet(str(source))

    enc = encrypt_dataset(source, encrypted, key_uri=key_uri, columns=["ssn", "email"],
                          deterministic_columns=["name"], kms_options=kms.kms_options, spark=spark)
    assert enc.ok and enc.rows == len(ROWS) and enc.dataset == str(encrypted)
    assert enc.kms_calls["local:GenerateDataKey"] == enc.deks

    seen = inspect_dataset(encrypted, kms_options=kms.kms_options, spark=spark)
    assert seen.rows == len(ROWS) and seen.up_to_date is True
    assert {c.name for c in seen.columns} == {"ssn", "email", "name"}
    assert [r["job"] for r in seen.runs] == ["encrypt"]  # the run record was stored on the server side
    assert needs_rotation(encrypted, kms_options=kms.kms_options, spark=spark) is False

    dec = decrypt_dataset(encrypted, plain, kms_options=kms.kms_options, spark=spark)
    assert dec.ok and dec.rows == len(ROWS) and dec.deks == enc.deks
    assert rows_of(spark.read.parquet(str(plain))) == sorted(ROWS)

    kms.admin.rotate_key(key_uri[len("local://"):])
    assert needs_rotation(encrypted, kms_options=kms.kms_options, spark=spark) is True
    calls: list[tuple[str, int, int]] = []
    rewrapped = rewrap_dataset(encrypted, kms_options=kms.kms_options, spark=spark,
                               progress=lambda *a: calls.append(a))
    assert rewrapped.ok and rewrapped.deks == enc.deks
    assert calls == [("", enc.deks, enc.deks)]
    assert inspect_dataset(encrypted, kms_options=kms.kms_options, spark=spark).up_to_date is True
    assert rows_of(read_encrypted(spark, str(encrypted), kms_options=kms.kms_options)) == sorted(ROWS)

    kms.admin.rotate_key(key_uri[len("local://"):])
    # New data keys for every file, the join domain's (deterministic) key included.
    reencrypted = reencrypt_dataset(encrypted, kms_options=kms.kms_options, spark=spark, rotate_join_domain=True)
    assert reencrypted.ok and reencrypted.files == enc.files
    after = inspect_dataset(encrypted, kms_options=kms.kms_options, spark=spark)
    assert after.up_to_date is True and {k.primary_version for k in after.keys} == {"3"}
    assert sorted(r["job"] for r in after.runs) == ["decrypt", "encrypt", "reencrypt", "rewrap"]
    assert rows_of(read_encrypted(spark, str(encrypted), kms_options=kms.kms_options)) == sorted(ROWS)

    report = collect_garbage(encrypted, spark=spark)
    assert report.dataset == str(encrypted) and report.removed == []
    assert_client_sees_nothing(dirs.data)
    server_side_calls(kms, key_uri)


def test_decrypt_replaces_its_destination_on_the_server_side(spark: Any, kms: Kms, data_dir: Path) -> None:
    key_uri = kms.new_key("jobs")
    source, encrypted, plain = data_dir / "source", data_dir / "encrypted", data_dir / "plain"
    source_df(spark).write.parquet(str(source))
    encrypt_dataset(source, encrypted, key_uri=key_uri, columns=["ssn"], kms_options=kms.kms_options, spark=spark)
    decrypt_dataset(encrypted, plain, columns=["id", "ssn"], kms_options=kms.kms_options, spark=spark)
    assert rows_of(spark.read.parquet(str(plain)), ["id", "ssn"]) == sorted((r[0], r[2]) for r in ROWS)
    # A second decrypt replaces the output (CSV now); nothing is left beside it.
    decrypt_dataset(encrypted, plain, output_format="csv", kms_options=kms.kms_options, spark=spark)
    csv = spark.read.option("header", "true").option("inferSchema", "true").csv(str(plain))
    assert sorted(csv.columns) == sorted(COLUMNS)
    assert csv.count() == len(ROWS)
    assert sorted(run_near_data(spark, os.listdir, str(data_dir))) == [
        ".plain.spark_kms-lock", "encrypted", "plain", "source"]
