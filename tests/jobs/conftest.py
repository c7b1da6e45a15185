"""Encrypted datasets for the rotation tests, built with the file layer directly (no Spark).

Layout (hive partitions, several files, one DEK per file, one dataset-level SIV DEK)::

    <root>/date=2024-01-01/part-0.parquet
    <root>/date=2024-01-01/part-1.parquet
    <root>/date=2024-01-02/part-0.parquet
    <root>/date=2024-01-03/part-0.parquet

Columns: ``id`` (plain int64), ``email`` (AES-GCM), ``ssn`` (AES-SIV), ``amount`` (AES-GCM,
float64: not a string, so the type round-trip is exercised), ``email_bidx`` (blind index of email).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.kms import KmsConfig, process_dek_cache, reset_kms_call_counts
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, list_data_files, new_deterministic_entry

SPEC = EncryptionSpec(columns=["email", "amount"], deterministic=["ssn"], blind_index={"email": "email_bidx"})
ENCRYPTED = ["email", "ssn", "amount", "email_bidx"]
FILES = ["date=2024-01-01/part-0.parquet", "date=2024-01-01/part-1.parquet",
         "date=2024-01-02/part-0.parquet", "date=2024-01-03/part-0.parquet"]


def plain_table(start: int, n: int) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "email": pa.array([None if i % 7 == 3 else f"user{i}@example.com" for i in ids], pa.string()),
        "ssn": pa.array([f"{i % 5:03d}-00-{i:04d}" for i in ids], pa.string()),
        "amount": pa.array([None if i % 11 == 5 else i * 1.25 for i in ids], pa.float64()),
    })


@dataclass
class Dataset:
    root: Path
    key_uri: str
    kms_options: dict[str, dict[str, Any]]
    expected: pa.Table  # plaintext rows, sorted by id

    def files(self) -> list[str]:
        return list_data_files(self.root)

    def cell_bytes(self) -> dict[str, list[Any]]:
        """Every encrypted cell of every file, raw, keyed by file and column."""
        out: dict[str, list[Any]] = {}
        for f in self.files():
            t = pq.read_table(f, columns=ENCRYPTED)
            for c in ENCRYPTED:
                out[f"{f}:{c}"] = t.column(c).to_pylist()
        return out

    def file_digests(self) -> dict[str, str]:
        return {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in self.files()}

    def decrypted(self) -> pa.Table:
        return decrypted(self)


def build_dataset(root: Path, key_uri: str, kms_options: Mapping[str, Mapping[str, Any]],
                  rows_per_file: int = 40) -> Dataset:
    provider = KmsConfig.of(kms_options).provider(key_uri)
    ctx = {"dataset": "customers"}
    det = new_deterministic_entry(provider, ctx)
    tables = []
    for i, rel in enumerate(FILES):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        table = plain_table(i * rows_per_file, rows_per_file)
        tables.append(table)
        with EncryptedParquetWriter(path, table.schema, SPEC, provider, encryption_context=ctx,
                                    deterministic_entry=det, kms_options=kms_options) as w:
            w.write_batch(table)
    return Dataset(root, key_uri, {k: dict(v) for k, v in kms_options.items()}, pa.concat_tables(tables))


def decrypted(ds: Dataset) -> pa.Table:
    """The dataset read back through the file layer, with a cold DEK cache (so the KMS is really asked)."""
    from spark_kms.parquet import read_decrypted_table

    process_dek_cache().clear()
    t = read_decrypted_table(str(ds.root), kms_options=ds.kms_options)
    t = t.select(["id", "email", "ssn", "amount"])
    return t.sort_by("id")


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    # KMS call counters and the DEK cache are per process: start each test from zero.
    reset_kms_call_counts()
    process_dek_cache().clear()


@pytest.fixture
def build() -> Any:
    """``build(root, key_uri, kms_options)`` -> :class:`Dataset` (for other KMS backends)."""
    return build_dataset


@pytest.fixture
def dataset(tmp_path: Path, local_kms: Any) -> Dataset:
    ds = build_dataset(tmp_path / "customers", local_kms.key_uri, local_kms.kms_options)
    reset_kms_call_counts()
    return ds
