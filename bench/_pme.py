"""Parquet Modular Encryption (PME) next to spark_kms, at the pyarrow level, in the driver process.

The files Spark wrote in plaintext are taken one by one (so memory stays that of one file) and each is
written and read back three ways, single process, no Spark:

* ``plain``: ``pq.write_table`` / ``pq.read_table`` (Snappy) -- the baseline;
* ``pme``: ``pyarrow.parquet.encryption`` (AES_GCM_V1 pages, double wrapping, the PII columns under one
  column key, encrypted footer) with a :class:`LocalKmsClient` whose ``wrap_key`` / ``unwrap_key`` call the
  embedded local KMS (Encrypt / Decrypt, audited like every spark_kms call);
* ``spark_kms``: :class:`~spark_kms.parquet.EncryptedParquetWriter` /
  :func:`~spark_kms.parquet.read_decrypted_table` (cells, one data key per file).

Spark's own PME (``parquet.crypto.factory.class``) is measured by ``bench/_spark_pme.py`` (a JVM ``KmsClient``
over the same local KMS), inside the Spark steps of ``bench_spark.py``.
"""

from __future__ import annotations

import base64
import shutil
import statistics
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

FOOTER_KEY = "alias/bench-pme-footer"
COLUMN_KEY = "alias/bench-pme-pii"


class LocalKmsClient(pe.KmsClient):
    """A pyarrow PME KMS client over spark_kms's embedded local KMS (``spark_kms.kms.local``)."""

    def __init__(self, keystore: str) -> None:
        super().__init__()
        from spark_kms.kms.local import LocalKms

        self._kms = LocalKms(keystore)

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        wrapped = self._kms.encrypt(master_key_identifier, bytes(key_bytes), {"pme": "bench"})
        return base64.b64encode(wrapped.ciphertext).decode("ascii")

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        blob = base64.b64decode(wrapped_key)
        return bytes(self._kms.decrypt(blob, {"pme": "bench"}, key=master_key_identifier))


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(plain_dir: Path, workdir: Path, keystore: str, pii: Sequence[str], repeat: int) -> dict[str, Any]:
    """Median seconds (over all files) of each write and read, sizes, and KMS calls; see the module docstring."""
    from spark_kms.kms.local import LocalKms
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table

    kms = LocalKms(keystore)
    for alias in (FOOTER_KEY, COLUMN_KEY):
        kms.create_key(alias=alias)
    key_uri, kms_options = "local://alias/bench", {"local": {"keystore": keystore}}
    factory = pe.CryptoFactory(lambda _config: LocalKmsClient(keystore))
    connection = pe.KmsConnectionConfig()
    enc_config = pe.EncryptionConfiguration(
        footer_key=FOOTER_KEY, column_keys={COLUMN_KEY: list(pii)}, encryption_algorithm="AES_GCM_V1",
        double_wrapping=True, cache_lifetime=timedelta(minutes=10),
    )
    dec_config = pe.DecryptionConfiguration(cache_lifetime=timedelta(minutes=10))
    sources = _files(plain_dir)
    outs = {k: workdir / f"pyarrow_{k}" for k in ("plain", "pme", "spark_kms")}
    spec = EncryptionSpec(columns=list(pii))

    def write(kind: str) -> None:
        out = outs[kind]
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for i, src in enumerate(sources):
            table = pq.read_table(src)
            target = out / f"part-{i:05d}.parquet"
            if kind == "plain":
                pq.write_table(table, target, compression="snappy")
            elif kind == "pme":
                props = factory.file_encryption_properties(connection, enc_config)
                pq.write_table(table, target, compression="snappy", encryption_properties=props)
            else:
                with EncryptedParquetWriter(target, table.schema, spec, key_uri, kms_options=kms_options) as w:
                    w.write_batch(table)

    def read(kind: str) -> int:
        rows = 0
        for f in _files(outs[kind]):
            if kind == "plain":
                rows += pq.read_table(f).num_rows
            elif kind == "pme":
                props = factory.file_decryption_properties(connection, dec_config)
                rows += pq.read_table(f, decryption_properties=props).num_rows
            else:
                rows += read_decrypted_table(f, kms_options=kms_options).num_rows
        return rows

    def kms_calls() -> int:
        return len(kms.audit_events())

    # source reads are inside the write timings of all three alike; warm the page cache first
    for src in sources:
        pq.read_table(src)
    results: dict[str, Any] = {"files": len(sources)}
    for kind in ("plain", "pme", "spark_kms"):
        times, before = [], kms_calls()
        for _ in range(repeat):
            t0 = time.perf_counter()
            write(kind)
            times.append(time.perf_counter() - t0)
        results[f"write_{kind}"] = statistics.median(times)
        results[f"write_{kind}_kms_calls"] = kms_calls() - before
        times, before, rows = [], kms_calls(), 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = read(kind)
            times.append(time.perf_counter() - t0)
        results[f"read_{kind}"] = statistics.median(times)
        results[f"read_{kind}_kms_calls"] = kms_calls() - before
        results[f"rows_{kind}"] = rows
        results[f"size_{kind}"] = _size(outs[kind])
    return results


def report(r: dict[str, Any], repeat: int) -> list[str]:
    lines = [f"  pyarrow level, driver process, {r['files']} files one at a time (medians of {repeat}):"]
    for kind, label in (("plain", "plaintext"), ("pme", "PME (pyarrow, AES_GCM_V1)"), ("spark_kms", "spark_kms cells")):
        lines.append(
            f"    {label:<28} write {r[f'write_{kind}']:7.2f} s  read {r[f'read_{kind}']:7.2f} s  "
            f"size {r[f'size_{kind}'] / 1e6:8.1f} MB  KMS calls write/read {r[f'write_{kind}_kms_calls']}/"
            f"{r[f'read_{kind}_kms_calls']}"
        )
    for kind, label in (("pme", "PME"), ("spark_kms", "spark_kms")):
        lines.append(f"    {label + ' write / plaintext write':<38}: {r[f'write_{kind}'] / r['write_plain']:.2f}x")
        lines.append(f"    {label + ' read / plaintext read':<38}: {r[f'read_{kind}'] / r['read_plain']:.2f}x")
    lines.append("    Spark's own PME: not measured (it needs a JVM KmsClient class for the local KMS; none is built)")
    return lines
