"""Per-cell cost of the crypto hot loops, against a bare AESGCM loop in the same run.

    .venv/bin/python bench/bench_crypto.py [--cells 200000] [--repeat 5]

Prints the median ns/cell of each path and its ratio to the bare ``AESGCM.encrypt`` loop
(the floor for per-cell calls through ``cryptography``). The ``*_buffers`` rows are the batched path over
Arrow buffers: "native" when the C extension is built, "pure" the same contract through ``cryptography``
(``SPARK_KMS_PURE_PYTHON=1`` makes every path pure; the pure rows are always measured). The native rows name
the AES-GCM implementation under the C loop (the bundled libsodium, the system's, else OpenSSL's EVP); the same
two rows are measured on the others too, each in a subprocess with ``SPARK_KMS_GCM_BACKEND=system`` or
``openssl`` (each process picks one implementation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
    parser.add_argument("--buffers-only", action="store_true", help="print the two native rows as JSON")
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
    gcm = getattr(_native.backend(), "GCM_BACKEND", "")
    native = f"native, {gcm}" if native_available() else "pure, extension not in use"

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

    if args.buffers_only:
        print(json.dumps({"encrypt": median_ns(enc_buffers, n, args.repeat),
                          "decrypt": median_ns(dec_buffers, n, args.repeat), "gcm": gcm}))
        return
    on_others: list[tuple[str, Callable[[], object] | float]] = []
    seen = {gcm}  # each implementation once: "system" is OpenSSL where no libsodium is installed, and so on
    for choice in ["system", "openssl"] if native_available() else []:
        env = {**os.environ, _native.GCM_BACKEND_ENV: choice}
        done = subprocess.run([sys.executable, __file__, "--buffers-only", "--cells", str(n), "--repeat",
                               str(args.repeat)], capture_output=True, text=True, env=env, check=True)
        other = json.loads(done.stdout.strip().splitlines()[-1])
        if other["gcm"] not in seen:
            seen.add(other["gcm"])
            on_others += [(f"CellEncryptor.encrypt_buffers (native, {other['gcm']})", other["encrypt"]),
                          (f"CellDecryptor.decrypt_buffers (native, {other['gcm']})", other["decrypt"])]

    rows: list[tuple[str, Callable[[], object] | float]] = [
        ("bare AESGCM.encrypt loop (baseline)", lambda: [bare.encrypt(nonce, v, b"aad") for v in values]),
        ("bare AESGCM.decrypt loop", lambda: [bare.decrypt(nonce, c, b"aad") for c in bare_cells]),
        ("CellEncryptor.encrypt_many", lambda: CellEncryptor(dek, dek_id).encrypt_many(values, "email")),
        ("CellDecryptor.decrypt_many (GCM)", lambda: decryptor.decrypt_many(cells, "email")),
        (f"CellEncryptor.encrypt_buffers ({native})", enc_buffers),
        (f"CellDecryptor.decrypt_buffers ({native})", dec_buffers),
        *on_others,
        ("CellEncryptor.encrypt_buffers (pure)", with_backend(_native._PureBackend, enc_buffers)),
        ("CellDecryptor.decrypt_buffers (pure)", with_backend(_native._PureBackend, dec_buffers)),
        ("DeterministicEncryptor.encrypt_many", lambda: siv.encrypt_many(values, "email")),
        ("CellDecryptor.decrypt_many (SIV)", lambda: decryptor.decrypt_many(siv_cells, "email")),
        ("BlindIndexer.index_many", lambda: BlindIndexer(dek, dek_id).index_many(values, "email")),
    ]
    baseline = None
    print(f"{'path':66s} {'median ns/cell':>15s} {'x baseline':>11s}")
    for name, fn in rows:
        ns = fn if isinstance(fn, float) else median_ns(fn, n, args.repeat)
        baseline = baseline or ns
        print(f"{name:66s} {ns:15.0f} {ns / baseline:11.2f}")


if __name__ == "__main__":
    main()
