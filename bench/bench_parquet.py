"""Throughput of the file layer's hot path on 1M string cells: encrypt_batch / decrypt_array,
split into conversion (Arrow <-> Python bytes) and crypto. Run:
    .venv/bin/python bench/bench_parquet.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.crypto import CellDecryptor, CellEncryptor, new_dek_id
from spark_kms.kms import provider_from_uri
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import (
    BatchDecryptor,
    BatchEncryptor,
    EncryptedParquetWriter,
    EncryptionSpec,
    read_decrypted_table,
)


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, r = args.rows, args.repeat
    work = Path(tempfile.mkdtemp(prefix="bench_parquet_"))
    LocalKms(work / "ks").create_key(alias="alias/pii")
    provider = provider_from_uri("local://alias/pii", keystore=str(work / "ks"))
    opts = {"local": {"keystore": str(work / "ks")}}
    arr = pa.array([f"{i:09d}-555-{i % 9973:04d}@example.com" for i in range(n)], pa.string())
    batch = pa.record_batch({"email": arr})

    def rate(s):
        return f"{n / s / 1e6:6.2f} M cells/s ({s * 1e9 / n:6.0f} ns/cell)"

    # --- calibration: the bare primitive on this (shared) machine right now
    gcm, nonce, aad = AESGCM(bytes(32)), os.urandom(12), b"\x11" + bytes(8) + b"\x00\x05email"
    # --- pieces of the encrypt path
    t_enc_conv, values = timed(lambda: pc.cast(arr, pa.binary()).to_pylist(), r)
    t_bare, _ = timed(lambda: [gcm.encrypt(nonce, v, aad) for v in values], r)
    dek, dek_id = bytearray(32), new_dek_id()
    t_crypto, cells = timed(lambda: CellEncryptor(dek, dek_id).encrypt_many(values, "email"), r)
    t_build, cell_arr = timed(lambda: pa.array(cells, pa.binary()), r)
    # --- pieces of the decrypt path
    t_dec_conv, cell_list = timed(lambda: cell_arr.to_pylist(), r)
    t_decrypt, plain = timed(lambda: CellDecryptor(lambda _id: dek).decrypt_many(cell_list, "email"), r)
    t_rebuild, _ = timed(lambda: pa.array(plain, pa.binary()).cast(pa.string()), r)

    # --- the public hot path
    def enc_batch():
        with BatchEncryptor(EncryptionSpec(columns=["email"]), provider) as e:
            out = e.encrypt_batch(batch)
            return out, e.key_table()

    t_encrypt_batch, (out, kt) = timed(enc_batch, r)
    dec = BatchDecryptor(kt, kms_options=opts)
    t_decrypt_array, back = timed(lambda: dec.decrypt_array(out.column(0), "email"), r)
    assert back.equals(arr)

    # --- whole files (snappy Parquet, 64k-row batches)
    path = work / "f.parquet"

    def write_file():
        with EncryptedParquetWriter(path, batch.schema, EncryptionSpec(columns=["email"]), provider) as w:
            for b in pa.Table.from_batches([batch]).to_batches(max_chunksize=65_536):
                w.write_batch(b)

    t_write, _ = timed(write_file, r)
    t_read, table = timed(lambda: read_decrypted_table(path, kms_options=opts), r)
    assert table.column("email").equals(pa.chunked_array([arr]))

    print(f"rows={n} repeat={r} (medians)")
    print(f"calibration: bare AESGCM.encrypt loop   : {rate(t_bare)}")
    print(f"encrypt  conversion  string->bytes list : {rate(t_enc_conv)}")
    print(f"encrypt  crypto      encrypt_many       : {rate(t_crypto)}")
    print(f"encrypt  conversion  list->binary array : {rate(t_build)}")
    print(f"BatchEncryptor.encrypt_batch (total)    : {rate(t_encrypt_batch)}")
    print(f"decrypt  conversion  binary->bytes list : {rate(t_dec_conv)}")
    print(f"decrypt  crypto      decrypt_many       : {rate(t_decrypt)}")
    print(f"decrypt  conversion  list->string array : {rate(t_rebuild)}")
    print(f"BatchDecryptor.decrypt_array (total)    : {rate(t_decrypt_array)}")
    print(f"EncryptedParquetWriter, whole file      : {rate(t_write)}")
    print(f"read_decrypted_table, whole file        : {rate(t_read)}")


if __name__ == "__main__":
    main()
