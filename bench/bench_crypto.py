"""Per-cell cost of the crypto hot loops, against a bare AESGCM loop in the same run.

    .venv/bin/python bench/bench_crypto.py [--cells 200000] [--repeat 5]

Prints the median ns/cell of each path and its ratio to the bare ``AESGCM.encrypt`` loop
(the floor for per-cell calls through ``cryptography``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.crypto import BlindIndexer, CellDecryptor, CellEncryptor, DeterministicEncryptor, new_dek_id


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

    rows = [
        ("bare AESGCM.encrypt loop (baseline)", lambda: [bare.encrypt(nonce, v, b"aad") for v in values]),
        ("bare AESGCM.decrypt loop", lambda: [bare.decrypt(nonce, c, b"aad") for c in bare_cells]),
        ("CellEncryptor.encrypt_many", lambda: CellEncryptor(dek, dek_id).encrypt_many(values, "email")),
        ("CellDecryptor.decrypt_many (GCM)", lambda: decryptor.decrypt_many(cells, "email")),
        ("DeterministicEncryptor.encrypt_many", lambda: siv.encrypt_many(values, "email")),
        ("CellDecryptor.decrypt_many (SIV)", lambda: decryptor.decrypt_many(siv_cells, "email")),
        ("BlindIndexer.index_many", lambda: BlindIndexer(dek, dek_id).index_many(values, "email")),
    ]
    baseline = None
    print(f"{'path':40s} {'median ns/cell':>15s} {'x baseline':>11s}")
    for name, fn in rows:
        ns = median_ns(fn, n, args.repeat)
        baseline = baseline or ns
        print(f"{name:40s} {ns:15.0f} {ns / baseline:11.2f}")


if __name__ == "__main__":
    main()
