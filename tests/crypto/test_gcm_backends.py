"""The AES-GCM implementations under the native loops (spark_kms/crypto/_gcm_backend.h): the libsodium bundled by
``make install`` (1.0.20, linked in), the system's libsodium (Debian 12: 1.0.18, loaded with dlopen;
``SPARK_KMS_GCM_BACKEND=system``, or no bundled one) and OpenSSL's EVP (``SPARK_KMS_GCM_BACKEND=openssl``, or no
libsodium). Each process picks one when it makes its first context, so the others run in subprocesses."""

from __future__ import annotations

import ctypes.util
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from spark_kms.crypto import _fastgcm as fastgcm
from spark_kms.crypto import _native
from spark_kms.parquet._types import binary_buffers

ROOT = Path(__file__).resolve().parents[2]

#: Lengths around the AES block (16), libsodium's 8-block strides (128) and a large value, plus nulls.
SIZES = [0, 1, 11, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257, 1000, 1023, 4096, 70000]
KEY = bytes(range(32))
PREFIX = bytes([0x11]) + bytes.fromhex("a1a2a3a4a5a6a7a8") + bytes.fromhex("0badcafe")
TAIL = len(b"email").to_bytes(2, "big") + b"email" + b"ctx:\xe2\x9c\x93"
COUNTER = 2**40 - 3

#: Encrypts the same values with the same key and counters in this process's backend; decrypts them; flips
#: one bit per cell (header, nonce, ciphertext or tag in turn) and reports which cell each backend rejects.
_SCRIPT = r"""
import hashlib, json, sys
import pyarrow as pa
from spark_kms.crypto import _fastgcm as m
from spark_kms.parquet._types import binary_buffers
args = json.loads(sys.stdin.read())
key, prefix, tail = (bytes.fromhex(args[k]) for k in ("key", "prefix", "tail"))
values = [None if v is None else bytes.fromhex(v) for v in args["values"]]
b = binary_buffers(pa.array(values, pa.binary()))
n = sum(v is not None for v in values)
st, at, validity, offsets, data = m.encrypt(key, prefix, prefix[:9] + tail, args["counter"], n, b.offsets, b.data, b.validity,
                                            b.length, b.offset, b.width, 4)
assert st == 0, (st, at)
dst, dat, _, _, plain = m.decrypt([(prefix[1:9], key)], tail, offsets, data, validity, len(values), 0, 4, 4)
cells = pa.Array.from_buffers(pa.binary(), len(values), [pa.py_buffer(validity) if validity else None,
                                                          pa.py_buffer(offsets), pa.py_buffer(data)]).to_pylist()
rejected = []
for i, cell in enumerate(cells):
    if cell is None:
        continue
    pos = [12, 20, 21, len(cell) - 1][i % 4] if len(cell) > 37 else [12, 20, len(cell) - 1][i % 3]
    bad = bytearray(cell)
    bad[pos] ^= 0x01
    t = binary_buffers(pa.array([bytes(bad)], pa.binary()))
    rejected.append(m.decrypt([(prefix[1:9], key)], tail, t.offsets, t.data, t.validity, 1, 0, t.width, 4)[0])
other = len(b"name").to_bytes(2, "big") + b"name" + tail[7:]  # the same cells read as another column
moved = m.decrypt([(prefix[1:9], key)], other, offsets, data, validity, len(values), 0, 4, 4)[:2]
print(json.dumps({"backend": m.GCM_BACKEND, "cells": hashlib.sha256(offsets + data).hexdigest(),
                  "roundtrip": dst == 0 and plain == b"".join(v for v in values if v), "rejected": rejected,
                  "moved": moved}))
"""


def _values() -> list[bytes | None]:
    out: list[bytes | None] = []
    for i, size in enumerate(SIZES):
        out.append(hashlib.shake_256(str(i).encode()).digest(size) if size else b"")
        if i % 4 == 1:
            out.append(None)
    out.append("naïve café 東京 🙂".encode())
    return out


def _run(backend: str | None) -> dict:
    env = {**os.environ}
    env.pop(_native.GCM_BACKEND_ENV, None)
    if backend:
        env[_native.GCM_BACKEND_ENV] = backend
    args = {"key": KEY.hex(), "prefix": PREFIX.hex(), "tail": TAIL.hex(), "counter": COUNTER,
            "values": [None if v is None else v.hex() for v in _values()]}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], input=json.dumps(args), capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_bundled_libsodium_is_used_and_the_system_one_is_there_too() -> None:
    """make install builds the pinned libsodium into the extension and installs the system's (Debian:
    libsodium23); this process uses the bundled one, with its symbols kept inside the extension."""
    assert ctypes.util.find_library("sodium"), "libsodium is missing: make install installs it"
    want = os.environ.get(_native.GCM_BACKEND_ENV)
    if want == "openssl":
        assert fastgcm.GCM_BACKEND == "openssl"
    elif want == "system":
        assert fastgcm.GCM_BACKEND.startswith("libsodium ") and "bundled" not in fastgcm.GCM_BACKEND
    else:
        assert fastgcm.GCM_BACKEND == "libsodium 1.0.20 (bundled)", fastgcm.GCM_BACKEND
    assert fastgcm.GCM_BACKEND in _native.native_status()
    exported = subprocess.run(["nm", "-D", "--defined-only", fastgcm.__file__], capture_output=True, text=True,
                              check=True).stdout
    assert "PyInit__fastgcm" in exported and "crypto_aead" not in exported and "sodium_" not in exported


def test_bundled_and_system_libsodium_openssl_and_cryptography_write_the_same_cells_and_reject_the_same_tampering(
) -> None:
    bundled, system, openssl = _run(None), _run("system"), _run("openssl")
    assert bundled["backend"] == "libsodium 1.0.20 (bundled)"
    assert system["backend"].startswith("libsodium ") and "bundled" not in system["backend"]
    assert openssl["backend"] == "openssl"
    values = _values()
    b = binary_buffers(pa.array(values, pa.binary()))
    n = sum(v is not None for v in values)
    st, _, _, offsets, data = _native._PureBackend.encrypt(KEY, PREFIX, PREFIX[:9] + TAIL, COUNTER, n, b.offsets, b.data,
                                                           b.validity, b.length, b.offset, b.width, 4)
    assert st == 0
    expected = hashlib.sha256(bytes(offsets) + bytes(data)).hexdigest()
    for run in (bundled, system, openssl):
        assert run["cells"] == expected, run["backend"]
        assert run["roundtrip"] is True, run["backend"]
        # a bit flipped in the nonce, the ciphertext or the tag of any cell: the tag does not verify
        assert run["rejected"] == [fastgcm.ST_AUTH_FAILED] * n, run["backend"]
        assert run["moved"] == [fastgcm.ST_AUTH_FAILED, 0], run["backend"]  # the first cell, in each


def test_the_native_crypto_tests_pass_on_openssl_too() -> None:
    """The whole batch suite (FORMAT.md's vectors re-derived byte for byte, tampering, bounds, fuzz against
    ``cryptography``) in a process that keeps to OpenSSL's EVP."""
    env = {**os.environ, _native.GCM_BACKEND_ENV: "openssl"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/crypto/test_native.py", "tests/crypto/test_native_fuzz.py"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
