"""encrypt_dataset / decrypt_dataset through Spark (session fixture), and their refusals."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from spark_kms.errors import ConfigurationError
from spark_kms.jobs import RUN_ID_CONTEXT_KEY, decrypt_dataset, encrypt_dataset, inspect_dataset
from spark_kms.parquet import read_dataset_key_table


def test_decrypt_refuses_to_write_over_or_inside_its_source(dataset, tmp_path):
    for destination in (dataset.root, dataset.root / "plain", dataset.root.parent):
        with pytest.raises(ConfigurationError, match="different directory"):
            decrypt_dataset(dataset.root, destination, kms_options=dataset.kms_options)
    with pytest.raises(ConfigurationError, match="output_format"):
        decrypt_dataset(dataset.root, tmp_path / "out", output_format="xml")


def test_encrypt_rejects_bad_arguments_before_starting_spark(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ConfigurationError, match="source_format"):
        encrypt_dataset(src, tmp_path / "dst", key_uri="local://alias/pii", columns=["a"], source_format="avro")
    with pytest.raises(ConfigurationError, match="at least one column"):
        encrypt_dataset(src, tmp_path / "dst", key_uri="local://alias/pii", columns=[])
    with pytest.raises(ConfigurationError, match="different directory"):
        encrypt_dataset(src, src / "enc", key_uri="local://alias/pii", columns=["a"])


@pytest.mark.spark
def test_encrypt_csv_then_decrypt_round_trips(spark, local_kms, tmp_path):
    src = tmp_path / "people.csv"
    # SSNs with leading zeros and no dashes look like numbers to CSV schema inference.
    rows = [(i, f"user{i}@example.com", f"{i:09d}", "2024-01-0" + str(1 + i % 2)) for i in range(30)]
    src.write_text("id,email,ssn,date\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows))
    enc, plain = tmp_path / "enc", tmp_path / "plain"

    summary = encrypt_dataset(
        src, enc, key_uri=local_kms.key_uri, columns=["email"], deterministic_columns=["ssn"],
        blind_index={"email": "email_bidx"}, partition_by=["date"], source_format="csv",
        kms_options=local_kms.kms_options, spark=spark, run_id="enc-1",
    )
    assert summary.status == "succeeded" and summary.rows == 30 and summary.files >= 2
    assert summary.kms_calls.get("local:GenerateDataKey", 0) >= 2
    assert json.loads((enc / "_spark_kms_runs" / "enc-1.json").read_text())["rows"] == 30
    deks = read_dataset_key_table(enc).deks.values()
    assert {e.encryption_context[RUN_ID_CONTEXT_KEY] for e in deks} == {"enc-1"}  # the run id reaches the KMS
    assert {c.name for c in inspect_dataset(enc, kms_options=local_kms.kms_options).columns} >= {"email", "ssn"}
    stored = pq.read_table(next(enc.rglob("*.parquet")), columns=["email"]).column("email")
    assert not any(b"@example.com" in v for v in stored.to_pylist())

    out = decrypt_dataset(enc, plain, columns=["id", "email", "ssn"], kms_options=local_kms.kms_options,
                          spark=spark, run_id="dec-1")
    assert out.rows == 30 and (enc / "_spark_kms_runs" / "dec-1.json").exists()
    back = sorted(spark.read.parquet(str(plain)).select("id", "email", "ssn").collect())
    assert [tuple(r) for r in back] == [(a, b, c) for a, b, c, _ in rows]
