"""Per-cell cost of the crypto hot loops, against a bare AESGCM loop in the same run.

    .venv/bin/python bench/bench_crypto.py [--cells 200000] [--repeat 5]

Prints the median ns/cell of each path and its ratio to the bare ``AESGCM.encrypt`` loop
(the floor for per-cell calls through ``cryptography``). The ``*_buffers`` rows are the batched path over
Arrow buffers: "native" when the C extension is built, "pure" the same contract through ``cryptography``
(``SPARK_KMS_PURE_PYTHON=1`` makes every path pure; the pure rows are always measured).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.crypto import (
    BlindIndexer,
    CellDecryptor,
    CellEncryptor,
    DeterministicEncryptor,
    _native,
    native_available,
    new_dek_id,
)


def median_ns(fn: Callable[[], object], cells: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / cells * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.cells
    values = [f"user{i}@example.com".encode() for i in range(n)]
    dek, dek_id = os.urandom(32), new_dek_id()
    bare = AESGCM(dek)
    nonce = bytes(12)
    cells = CellEncryptor(dek, dek_id).encrypt_many(values, "email")
    siv = DeterministicEncryptor(dek, dek_id)
    siv_cells = siv.encrypt_many(values, "email")
    decryptor = CellDecryptor(lambda _id: dek)
    bare_cells = [bare.encrypt(nonce, v, b"aad") for v in values]
    plain_buffers = _native.buffers_from_values(values)
    cell_buffers = CellEncryptor(dek, dek_id).encrypt_buffers(plain_buffers, "email")
    native = "native" if native_available() else "pure, extension not in use"

    def with_backend(impl: object, fn: Callable[[], object]) -> Callable[[], object]:
        # Swap the backend for one measurement: the pure contract, measured even when the extension is built.
        def run() -> object:
            saved, _native._BACKEND = _native._BACKEND, impl
            try:
                return fn()
            finally:
                _native._BACKEND = saved

        return run

    def enc_buffers() -> object:
        return CellEncryptor(dek, dek_id).encrypt_buffers(plain_buffers, "email")

    def dec_buffers() -> object:
        return CellDecryptor(lambda _id: dek).decrypt_buffers(cell_buffers, "email")

    rows = [
        ("bare AESGCM.encrypt loop (baseline)", lambda: [bare.encrypt(nonce, v, b"aad") for v in values]),
        ("bare AESGCM.decrypt loop", lambda: [bare.decrypt(nonce, c, b"aad") for c in bare_cells]),
        ("CellEncryptor.encrypt_many", lambda: CellEncryptor(dek, dek_id).encrypt_many(values, "email")),
        ("CellDecryptor.decrypt_many (GCM)", lambda: decryptor.decrypt_many(cells, "email")),
        (f"CellEncryptor.encrypt_buffers ({native})", enc_buffers),
        (f"CellDecryptor.decrypt_buffers ({native})", dec_buffers),
        ("CellEncryptor.encrypt_buffers (pure)", with_backend(_native._PureBackend, enc_buffers)),
        ("CellDecryptor.decrypt_buffers (pure)", with_backend(_native._PureBackend, dec_buffers)),
        ("DeterministicEncryptor.encrypt_many", lambda: siv.encrypt_many(values, "email")),
        ("CellDecryptor.decrypt_many (SIV)", lambda: decryptor.decrypt_many(siv_cells, "email")),
        ("BlindIndexer.index_many", lambda: BlindIndexer(dek, dek_id).index_many(values, "email")),
    ]
    baseline = None
    print(f"{'path':52s} {'median ns/cell':>15s} {'x baseline':>11s}")
    for name, fn in rows:
        ns = median_ns(fn, n, args.repeat)
        baseline = baseline or ns
        print(f"{name:52s} {ns:15.0f} {ns / baseline:11.2f}")


if __name__ == "__main__":
    main()
