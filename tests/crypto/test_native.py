"""The batched GCM path over Arrow buffers: the C extension and its pure-Python twin agree with the per-cell path.

Every test that names a backend runs against both the C extension (``spark_kms.crypto._fastgcm``, imported
directly, so it is exercised even under ``SPARK_KMS_PURE_PYTHON=1``) and the pure ``cryptography`` contract.
The extension MUST be built in a dev/CI install: a failed build is a test failure, not a silent fallback.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_kms import errors
from spark_kms.crypto import (
    BinaryBuffers,
    CellDecryptor,
    CellEncryptor,
    DeterministicEncryptor,
    KeyUsageLimitError,
    _native,
    native_available,
)
from spark_kms.crypto import _fastgcm as fastgcm
from spark_kms.kms import provider_from_uri
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import BatchDecryptor, BatchEncryptor, EncryptionSpec
from spark_kms.parquet._types import array_from_buffers, binary_buffers

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
POSITIVE = json.loads((VECTORS / "cells_positive.json").read_text())
NEGATIVE = json.loads((VECTORS / "cells_negative.json").read_text())
DEKS = {bytes.fromhex(k): bytes.fromhex(v) for k, v in POSITIVE["deks"].items()}
DEK_ID = bytes.fromhex("a1a2a3a4a5a6a7a8")
OTHER_ID = bytes.fromhex("b1b2b3b4b5b6b7b8")
SALT = bytes.fromhex(POSITIVE["salt_hex"])
BACKENDS = {"native": fastgcm, "pure": _native._PureBackend}


def _lookup(dek_id: bytes) -> bytes:
    return DEKS[dek_id]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Route the buffer methods (and the parquet layer's choice of path) through one backend."""
    monkeypatch.setattr(_native, "_BACKEND", BACKENDS[request.param])
    monkeypatch.setattr(_native, "_native", fastgcm if request.param == "native" else None)
    return request.param


def _buffers(values: list[bytes | None], *, large: bool = False, start: int = 0, stop: int | None = None):
    arr = pa.array(values, pa.large_binary() if large else pa.binary())
    arr = arr.slice(start, (len(arr) if stop is None else stop) - start)
    return arr, binary_buffers(arr)


def _values(buffers: BinaryBuffers) -> list[bytes | None]:
    return array_from_buffers(buffers).to_pylist()


def _raised(fn) -> tuple[type, str]:
    with pytest.raises(errors.SparkKmsError) as info:
        fn()
    return type(info.value), str(info.value)


# --------------------------------------------------------------------------- the build


def test_extension_is_built_and_selected_unless_forced_pure():
    assert fastgcm.OPENSSL_VERSION.startswith("OpenSSL")
    forced = os.environ.get(_native.PURE_PYTHON_ENV, "").strip() not in ("", "0")
    assert native_available() is (not forced)
    assert _native.backend() is (_native._PureBackend if forced else fastgcm)


def test_status_codes_of_c_and_python_agree():
    for name in dir(_native):
        if name.startswith("ST_"):
            assert getattr(fastgcm, name) == getattr(_native, name), name


def test_pure_python_switch_is_read_at_import():
    code = "from spark_kms.crypto import native_available; print(native_available())"
    env = {**os.environ, _native.PURE_PYTHON_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- byte equality with the per-cell path

_VALUE = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=20).map(str.encode),
    st.binary(min_size=300, max_size=2000),
)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(_VALUE, max_size=40),
    large=st.booleans(),
    cut=st.tuples(st.integers(0, 10), st.integers(0, 10)),
    counter=st.integers(0, 1000),
)
def test_encrypt_buffers_equals_encrypt_many_byte_for_byte(values, large, cut, counter):
    start, stop = min(cut[0], len(values)), max(min(cut[0], len(values)), len(values) - cut[1])
    arr, buffers = _buffers(values, large=large, start=start, stop=stop)
    reference = CellEncryptor(DEKS[DEK_ID], DEK_ID, salt=SALT)
    reference._counter = counter  # the counter seam: nonces need not start at 0
    expected = reference.encrypt_many(arr.to_pylist(), "email", b"ctx")
    for impl in BACKENDS.values():
        saved, _native._BACKEND = _native._BACKEND, impl
        try:
            for out_width in (4, 8):
                enc = CellEncryptor(DEKS[DEK_ID], DEK_ID, salt=SALT)
                enc._counter = counter
                out = enc.encrypt_buffers(buffers, "email", b"ctx", out_width=out_width)
                assert out.width == out_width and out.offset == 0 and out.length == len(arr)
                assert _values(out) == expected
                assert enc.cells_used == reference.cells_used  # nulls consume no counter
                back = CellDecryptor(_lookup).decrypt_buffers(out, "email", b"ctx", out_width=4)
                assert _values(back) == arr.to_pylist()
        finally:
            _native._BACKEND = saved


def test_positive_gcm_vectors_are_rederived_by_the_batch(backend):
    gcm = [v for v in POSITIVE["vectors"] if v["algorithm"] == "AES_256_GCM_IV12_TAG16" and v["dek_id"] == DEK_ID.hex()]
    for v in gcm:
        enc = CellEncryptor(DEKS[DEK_ID], DEK_ID, salt=SALT)
        enc._counter = int(v["nonce_hex"][8:], 16)
        _, buffers = _buffers([None, bytes.fromhex(v["plaintext_hex"])])
        out = enc.encrypt_buffers(buffers, v["column"], bytes.fromhex(v["context_hex"]))
        assert _values(out) == [None, bytes.fromhex(v["cell_hex"])], v["name"]


# --------------------------------------------------------------------------- vectors through the batched decrypt


@pytest.mark.parametrize("vector", [v for v in POSITIVE["vectors"] if v["algorithm"] != "HMAC_SHA256_128"],
                         ids=lambda v: v["name"])
def test_positive_vectors_decrypt_through_buffers(backend, vector):
    cell = bytes.fromhex(vector["cell_hex"])
    _, buffers = _buffers([None, cell, cell])
    out = CellDecryptor(_lookup).decrypt_buffers(buffers, vector["column"], bytes.fromhex(vector["context_hex"]))
    plain = bytes.fromhex(vector["plaintext_hex"])
    assert _values(out) == [None, plain, plain]


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["name"])
def test_negative_vectors_raise_the_same_error_through_buffers(backend, vector):
    cell = bytes.fromhex(vector["cell_hex"])
    good = bytes.fromhex(POSITIVE["vectors"][0]["cell_hex"])  # gcm-ascii, column email
    context = bytes.fromhex(vector["context_hex"])
    rows = [good if vector["column"] == "email" and not context else None, None, cell]
    _, buffers = _buffers(rows)
    where = "file part-0.parquet"
    fast = _raised(lambda: CellDecryptor(_lookup).decrypt_buffers(buffers, vector["column"], context, where=where))
    slow = _raised(lambda: CellDecryptor(_lookup).decrypt_many(rows, vector["column"], context, where=where))
    assert fast == slow
    assert fast[0] is getattr(errors, vector["expected_error"])
    assert "row 2" in fast[1] and "part-0.parquet" in fast[1]
    assert len(cell) < 8 or cell.hex() not in fast[1]  # no cell bytes in messages


def test_tampering_any_byte_fails_at_the_right_row(backend):
    enc = CellEncryptor(DEKS[DEK_ID], DEK_ID, salt=SALT)
    cells = enc.encrypt_many([b"alice@example.com", b"", "Zoë".encode()], "email")
    for victim in (0, 1, 2):
        for pos in range(len(cells[victim])):
            rows = list(cells)
            rows[victim] = rows[victim][:pos] + bytes([rows[victim][pos] ^ 0x01]) + rows[victim][pos + 1 :]
            _, buffers = _buffers(rows)
            fast = _raised(lambda b=buffers: CellDecryptor(_lookup).decrypt_buffers(b, "email"))
            slow = _raised(lambda r=rows: CellDecryptor(_lookup).decrypt_many(r, "email"))
            assert fast == slow, (victim, pos)
            assert f"row {victim}" in fast[1]
            assert fast[0] in (errors.DecryptionError, errors.UnknownDataKeyError, errors.MalformedCellError,
                               errors.UnknownFormatVersionError)


@pytest.mark.parametrize("length", [0, 1, 8, 9, 20, 21, 36])
def test_cells_shorter_than_37_bytes_are_malformed(backend, length):
    good = CellEncryptor(DEKS[DEK_ID], DEK_ID).encrypt_many([b"a"], "email")[0]
    short = (good * 2)[:length]
    _, buffers = _buffers([good, short])
    kind, message = _raised(lambda: CellDecryptor(_lookup).decrypt_buffers(buffers, "email"))
    assert kind is errors.MalformedCellError and "row 1" in message


def test_two_deks_in_one_array_each_looked_up_once(backend):
    a = CellEncryptor(DEKS[DEK_ID], DEK_ID)
    b = CellEncryptor(DEKS[OTHER_ID], OTHER_ID)
    rows = [a.encrypt(b"a0", "c"), b.encrypt(b"b0", "c"), None, a.encrypt(b"a1", "c"), b.encrypt(b"", "c")]
    calls: Counter[bytes] = Counter()

    def counting(dek_id: bytes) -> bytes:
        calls[dek_id] += 1
        return DEKS[dek_id]

    _, buffers = _buffers(rows)
    out = CellDecryptor(counting).decrypt_buffers(buffers, "c")
    assert _values(out) == [b"a0", b"b0", None, b"a1", b""]
    assert calls == {DEK_ID: 1, OTHER_ID: 1}
    assert fastgcm.dek_ids(buffers.offsets, buffers.data, buffers.validity, 5, 0, 4) == (0, -1, [DEK_ID, OTHER_ID])


def test_unknown_dek_raises_at_the_first_row_using_it(backend):
    rows = [CellEncryptor(DEKS[DEK_ID], DEK_ID).encrypt(b"x", "c"), None,
            CellEncryptor(os.urandom(32), b"\x00" * 8).encrypt(b"y", "c")]
    _, buffers = _buffers(rows)
    kind, message = _raised(lambda: CellDecryptor(_lookup).decrypt_buffers(buffers, "c", where="f.parquet"))
    assert kind is errors.UnknownDataKeyError  # a DecryptionError, told apart from a failed tag
    assert "unknown DEK 0000000000000000" in message and "row 2" in message


def test_siv_and_gcm_cells_mixed_fall_back_to_the_per_cell_path(backend):
    siv = DeterministicEncryptor(DEKS[OTHER_ID], OTHER_ID)
    gcm = CellEncryptor(DEKS[DEK_ID], DEK_ID)
    rows = [gcm.encrypt(b"g", "c"), siv.encrypt(b"s", "c"), None]
    _, buffers = _buffers(rows, large=True)
    out = CellDecryptor(_lookup).decrypt_buffers(buffers, "c")
    assert out.width == 8 and _values(out) == [b"g", b"s", None]


# --------------------------------------------------------------------------- counters


def test_limit_is_enforced_before_anything_is_encrypted(backend):
    _, six = _buffers([b"a", None, b"b", b"c", b"d", b"e", b"f"])
    enc = CellEncryptor(DEKS[DEK_ID], DEK_ID, max_cells=5)
    twin = CellEncryptor(DEKS[DEK_ID], DEK_ID, max_cells=5)
    fast = _raised(lambda: enc.encrypt_buffers(six, "c"))
    slow = _raised(lambda: twin.encrypt_many([b"a", None, b"b", b"c", b"d", b"e", b"f"], "c"))
    assert fast == slow and fast[0] is KeyUsageLimitError
    assert enc.cells_used == 0
    _, five = _buffers([b"a", None, b"b", b"c", None, b"d", b"e", None])
    enc.encrypt_buffers(five, "c")
    assert enc.cells_used == 5 and enc.cells_left == 0
    _, nulls = _buffers([None, None])
    assert _values(enc.encrypt_buffers(nulls, "c")) == [None, None]  # nulls need no counter, even at the limit


def test_batches_continue_the_counter_like_one_call(backend):
    values = [b"v%d" % i if i % 3 else None for i in range(20)]
    one = CellEncryptor(DEKS[DEK_ID], DEK_ID, salt=SALT).encrypt_many(values, "c")
    enc = CellEncryptor(DEKS[DEK_ID], DEK_ID, salt=SALT)
    arr = pa.array(values, pa.binary())
    got = _values(enc.encrypt_buffers(binary_buffers(arr.slice(0, 7)), "c"))
    got += enc.encrypt_many(values[7:12], "c")
    got += _values(enc.encrypt_buffers(binary_buffers(arr.slice(12)), "c"))
    assert got == one


def test_wiped_encryptor_refuses_buffers(backend):
    enc = CellEncryptor(DEKS[DEK_ID], DEK_ID)
    enc.wipe()
    _, buffers = _buffers([b"a"])
    with pytest.raises(KeyUsageLimitError, match="wiped"):
        enc.encrypt_buffers(buffers, "c")


# --------------------------------------------------------------------------- corrupt buffers never crash

_CORRUPT = r"""
import struct, sys
from spark_kms import errors
from spark_kms.crypto import BinaryBuffers, CellDecryptor, CellEncryptor, _native
from spark_kms.crypto import _fastgcm
_native._BACKEND = {"native": _fastgcm, "pure": _native._PureBackend}[sys.argv[1]]
key, dek_id = bytes(32), bytes(8)
cell = CellEncryptor(key, dek_id).encrypt(b"hello", "c")
def off(*xs, w=4):
    return struct.pack("<%d%s" % (len(xs), "i" if w == 4 else "q"), *xs)
cases = {
    "decreasing": BinaryBuffers(2, None, off(0, 42, 5), cell + cell),
    "past-data": BinaryBuffers(1, None, off(0, 10**6), cell),
    "negative": BinaryBuffers(1, None, off(-8, 42), cell + cell),
    "huge-int64": BinaryBuffers(1, None, off(0, 2**62, w=8), cell, 0, 8),
    "short-offsets": BinaryBuffers(3, None, off(0, 42), cell),
    "short-validity": BinaryBuffers(20, b"\xff", off(*range(21)), bytes(20)),
    "offset-past-buffers": BinaryBuffers(1, None, off(0, 42), cell, 5),
}
for name, buf in cases.items():
    for op in ("encrypt", "decrypt"):
        try:
            if op == "encrypt":
                CellEncryptor(key, dek_id).encrypt_buffers(buf, "c")
            else:
                CellDecryptor(lambda _i: key).decrypt_buffers(buf, "c")
            print(name, op, "no error")
        except (errors.ConfigurationError, errors.MalformedCellError) as exc:
            print(name, op, type(exc).__name__)
"""


@pytest.mark.parametrize("impl", sorted(BACKENDS))
def test_corrupt_offsets_give_clean_errors_in_a_subprocess(impl):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_CORRUPT), impl],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a segfault shows as -11 here
    lines = dict((" ".join(line.split()[:2]), line.split()[2]) for line in proc.stdout.splitlines())
    assert len(lines) == 14
    assert "no" not in lines.values(), proc.stdout
    for name in ("decreasing", "past-data", "negative", "huge-int64"):
        assert lines[f"{name} encrypt"] == "ConfigurationError"
        assert lines[f"{name} decrypt"] == "MalformedCellError"
    for name in ("short-offsets", "short-validity", "offset-past-buffers"):
        assert lines[f"{name} encrypt"] == "ConfigurationError"
        assert lines[f"{name} decrypt"] == "ConfigurationError"


def test_the_c_functions_check_their_arguments():
    off = struct.pack("<2i", 0, 1)
    with pytest.raises(ValueError, match="32 bytes"):
        fastgcm.encrypt(b"k", bytes(13), b"", 0, 1, off, b"x", None, 1, 0, 4, 4)
    with pytest.raises(ValueError, match="width"):
        fastgcm.encrypt(bytes(32), bytes(13), b"", 0, 1, off, b"x", None, 1, 0, 3, 4)
    with pytest.raises(ValueError, match="8 bytes"):
        fastgcm.decrypt([(b"short", bytes(32))], b"", off, b"x", None, 1, 0, 4, 4)
    with pytest.raises(TypeError):
        fastgcm.decrypt([b"not a pair"], b"", off, b"x", None, 1, 0, 4, 4)
    assert fastgcm.encrypt(bytes(32), bytes(13), b"", 0, 5, off, b"x", None, 1, 0, 4, 4)[:2] == (
        fastgcm.ST_COUNT_MISMATCH, 1)


# --------------------------------------------------------------------------- the parquet layer on both paths


def test_parquet_layer_rolls_over_and_reads_across_paths(backend, tmp_path, monkeypatch):
    LocalKms(tmp_path / "keystore").create_key(alias="alias/pii")
    provider = provider_from_uri("local://alias/pii", keystore=str(tmp_path / "keystore"))
    options = {"local": {"keystore": str(tmp_path / "keystore")}}
    values = [None if i % 4 == 0 else f"user{i}@example.com" for i in range(23)]
    batch = pa.record_batch({"id": pa.array(range(23)), "email": pa.array(values, pa.string()).slice(0)})
    with BatchEncryptor(EncryptionSpec(columns=["email"]), provider, max_cells_per_dek=4) as enc:
        out = enc.encrypt_batch(batch.slice(1))  # a sliced input: array offset 1
        table = enc.key_table()
    cells = out.column("email").to_pylist()
    per_dek = Counter(c[1:9] for c in cells if c is not None)
    assert sorted(per_dek.values()) == [1, 4, 4, 4, 4]  # 17 non-null cells, 4 per data key
    assert len(table.deks) == 5
    # Decrypt on the other path than the one that wrote.
    other = "pure" if backend == "native" else "native"
    monkeypatch.setattr(_native, "_BACKEND", BACKENDS[other])
    monkeypatch.setattr(_native, "_native", fastgcm if other == "native" else None)
    back = BatchDecryptor(table, kms_options=options).decrypt_batch(out)
    assert back.column("email").to_pylist() == values[1:]
