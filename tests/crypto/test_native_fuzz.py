"""Hostile input for the native GCM loop (``spark_kms/crypto/_fastgcm.c``), beyond the vectors of test_native.py.

* A seeded fuzz: malformed offsets (decreasing, negative, past the data, huge), lengths and array offsets that
  do not match the buffers, random and short validity bitmaps, truncated, tampered and foreign cells, random
  bytes. Every case goes through the C extension and through its pure-Python twin: both must give the same
  values and the same status at the same row, or refuse the arguments with the same exception type; and
  through the public API (``encrypt_buffers`` / ``decrypt_buffers``) on both paths: the same values or the same
  spark_kms error. ``SPARK_KMS_FUZZ_CASES`` scales it (default 3,000 calls at the buffer level, a third of that
  through the API) and ``SPARK_KMS_FUZZ_SEED`` reseeds it; ``make sanitize`` runs 350,000 buffer-level calls with
  the extension built under ASan + UBSan. A failure names the seed and the array: ``_replay(seed, array)``
  rebuilds its calls alone.
* Input buffers changed while a call runs: by ``__del__`` code the garbage collector runs inside the call, and
  by another thread while the C loop has released the GIL. The results must then be either a failure status or
  exactly what the buffers held, never bytes the loop did not write or read from outside the buffers.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms import errors
from spark_kms.crypto import BinaryBuffers, CellDecryptor, CellEncryptor, DeterministicEncryptor, _native
from spark_kms.crypto import _fastgcm as fastgcm

CASES = int(os.environ.get("SPARK_KMS_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("SPARK_KMS_FUZZ_SEED", "20240614"))

ID_A = bytes.fromhex("a1a2a3a4a5a6a7a8")
ID_B = bytes.fromhex("b1b2b3b4b5b6b7b8")
ID_UNKNOWN = bytes.fromhex("c1c2c3c4c5c6c7c8")
KEYS = {ID_A: bytes(range(32)), ID_B: bytes(range(32, 64)), ID_UNKNOWN: bytes(range(64, 96))}
SALT = bytes.fromhex("0badf00d")
# The backend takes the AAD (encrypt) and the AAD tail after the header (decrypt) as given: any bytes do.
TAIL = b"\x00\x05email" + b"context"
OTHER_TAIL = b"\x00\x05phone"
# The API layer builds its own AAD from the column and context.
COLUMN, CONTEXT = "email", b"context"
PURE = _native._PureBackend
_OFFSET_CODE = {4: "i", 8: "q"}
_LIMITS = {4: 2**31, 8: 2**63}


def _pack(width: int, *offsets: int) -> bytes:
    return struct.pack(f"<{len(offsets)}{_OFFSET_CODE[width]}", *offsets)


def _gcm_cell(rng: random.Random, dek_id: bytes, plaintext: bytes, tail: bytes) -> bytes:
    header = b"\x11" + dek_id
    nonce = rng.randbytes(12)
    return header + nonce + AESGCM(KEYS[dek_id]).encrypt(nonce, plaintext, header + tail)


def _backend_pool() -> dict[str, list[bytes]]:
    """Cells made with the raw format (header || nonce || ct || tag, AAD = header || TAIL), not through cell.py."""
    rng = random.Random(1)
    plain = [rng.randbytes(rng.choice((0, 1, 5, 16, 17, 40))) for _ in range(24)]
    return {
        "good": [_gcm_cell(rng, rng.choice((ID_A, ID_B)), p, TAIL) for p in plain],
        "unknown": [_gcm_cell(rng, ID_UNKNOWN, p, TAIL) for p in plain[:4]],
        "other_tail": [_gcm_cell(rng, ID_A, p, OTHER_TAIL) for p in plain[:4]],
        "plain": plain,
    }


def _api_pool() -> dict[str, list[bytes]]:
    """Cells made through the public encryptors, so they follow whatever AAD cell.py builds."""
    rng = random.Random(2)
    plain = [rng.randbytes(rng.choice((0, 1, 5, 16, 17, 40))) for _ in range(24)]
    enc = {i: CellEncryptor(KEYS[i], i, salt=SALT) for i in (ID_A, ID_B, ID_UNKNOWN)}
    return {
        "good": [enc[rng.choice((ID_A, ID_B))].encrypt(p, COLUMN, CONTEXT) for p in plain]
        + [DeterministicEncryptor(KEYS[ID_B], ID_B).encrypt(p, COLUMN, CONTEXT) for p in plain[:2]],
        "unknown": [enc[ID_UNKNOWN].encrypt(p, COLUMN, CONTEXT) for p in plain[:4]],
        "other_tail": [enc[ID_A].encrypt(p, "phone", CONTEXT) for p in plain[:4]],
        "plain": plain,
    }


def _piece(rng: random.Random, pool: dict[str, list[bytes]], plaintext: bool) -> bytes:
    """One value: mostly what the operation expects, else something broken."""
    r = rng.random()
    if plaintext and r < 0.7:
        return rng.choice(pool["plain"]) if rng.random() < 0.5 else rng.randbytes(rng.randrange(60))
    if r < 0.55:
        return rng.choice(pool["good"])
    if r < 0.62:
        return rng.choice(pool["unknown"])
    if r < 0.68:
        return rng.choice(pool["other_tail"])
    cell = rng.choice(pool["good"])
    if r < 0.76:  # one flipped bit anywhere
        pos = rng.randrange(len(cell))
        return cell[:pos] + bytes([cell[pos] ^ (1 << rng.randrange(8))]) + cell[pos + 1 :]
    if r < 0.84:  # truncated, usually below the 37-byte minimum
        return cell[: rng.randrange(len(cell))]
    if r < 0.90:  # another algorithm byte
        return bytes([rng.choice((0x00, 0x10, 0x12, 0x13, 0x21, 0xFF))]) + cell[1:]
    junk = rng.randbytes(rng.randrange(60))
    return b"\x11" + junk if rng.random() < 0.5 else junk


def _wrap(rng: random.Random, raw: bytes) -> Any:
    """The same bytes as bytes, a writable bytearray or a memoryview slice."""
    r = rng.random()
    if r < 0.6:
        return raw
    if r < 0.8:
        return bytearray(raw)
    return memoryview(b"\xee" + raw)[1:]


def _array(rng: random.Random, pool: dict[str, list[bytes]], plaintext: bool) -> tuple[BinaryBuffers, int]:
    """A binary array, usually malformed in some way; also the non-null count its validity bitmap gives."""
    length = rng.randrange(9)
    offset = rng.choice((0, 0, 0, 1, 3, 7, 8, 9))
    width = rng.choice((4, 8))
    rows = offset + length
    null_rate = rng.choice((0.0, 0.0, 0.2, 0.6))
    values = [None if rng.random() < null_rate else _piece(rng, pool, plaintext) for _ in range(rows)]
    data = b"".join(v for v in values if v is not None)
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + (0 if v is None else len(v)))
    if rng.random() < 0.1:  # unused bytes after the last value
        data += rng.randbytes(rng.randrange(1, 40))

    validity: bytes | None = None
    if any(v is None for v in values) or rng.random() < 0.2:
        bits = sum(1 << i for i, v in enumerate(values) if v is not None)
        nbytes = (rows + 7) // 8
        pad = rng.getrandbits(8 * nbytes) & ~((1 << rows) - 1)  # bits past the end are unspecified
        validity = (bits | pad).to_bytes(nbytes, "little")
        if rng.random() < 0.1:  # a null row marked valid, a valid row marked null
            validity = bytes(b ^ (1 << rng.randrange(8)) for b in validity)

    # Corruptions, each now and then; several may hit one case.
    limit = _LIMITS[width]
    if rng.random() < 0.25:
        for _ in range(rng.randrange(1, 3)):
            offsets[rng.randrange(len(offsets))] = rng.choice(
                (-1, -38, -limit, limit - 1, len(data) + 1, len(data) + rng.randrange(1, 100), rng.randrange(len(data) + 1), 0)
            )
    if rng.random() < 0.05 and len(offsets) > 2:
        i, j = rng.sample(range(len(offsets)), 2)
        offsets[i], offsets[j] = offsets[j], offsets[i]
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    if validity is not None and rng.random() < 0.05:
        validity = rng.randbytes(len(validity))
    raw_offsets = _pack(width, *offsets)
    if rng.random() < 0.04:
        raw_offsets = raw_offsets[: -rng.randrange(1, 2 * width + 1)]
    if rng.random() < 0.04:
        raw_offsets += rng.randbytes(rng.randrange(1, 9))
    if validity is not None and rng.random() < 0.04:
        validity = validity[:-1] if rng.random() < 0.5 else validity + rng.randbytes(2)
    if validity is None and rng.random() < 0.02:
        validity = b""
    if rng.random() < 0.03:
        length = max(-1, length + rng.choice((-1, 1, 2)))
    if rng.random() < 0.02:
        offset = max(-1, offset + rng.choice((-1, 1, 8)))

    buf = BinaryBuffers(length, None if validity is None else _wrap(rng, validity), _wrap(rng, raw_offsets),
                        _wrap(rng, data), offset, width)
    try:
        non_null = _native.count_valid(buf)
    except ValueError:
        non_null = length
    return buf, non_null


def _backend_cases(rng: random.Random, pool: dict[str, list[bytes]]) -> list[tuple[str, tuple[Any, ...]]]:
    """One array and the calls to make on it: encrypt (plaintexts), or dek_ids and decrypt (cells)."""
    plaintext = rng.random() < 0.3
    buf, non_null = _array(rng, pool, plaintext)
    where = (buf.offsets, buf.data, buf.validity, buf.length, buf.offset, buf.width)
    out_width = rng.choice((4, 8))
    if plaintext:
        expected = non_null if rng.random() < 0.9 else max(0, non_null + rng.choice((-1, 1)))
        start = rng.choice((0, rng.randrange(2**32), 2**64 - 1 - rng.randrange(12)))
        aad = rng.choice((b"", TAIL, rng.randbytes(rng.randrange(1, 40))))
        return [("encrypt", (KEYS[ID_A], b"\x11" + ID_A + SALT, aad, start, expected, *where, out_width))]
    pairs = [(i, KEYS[i]) for i in (ID_A, ID_B) if rng.random() < 0.9]
    if rng.random() < 0.05:
        pairs = [(ID_A, KEYS[ID_B])] + pairs  # a wrong key listed first for its id
    rng.shuffle(pairs)
    tail = TAIL if rng.random() < 0.95 else OTHER_TAIL
    return [("dek_ids", where), ("decrypt", (pairs, tail, *where, out_width))]


def _values(validity: Any, offsets: Any, data: Any, length: int, width: int) -> list[bytes | None]:
    """The values of a result array, checking it is exactly what the contract says: nothing unwritten in it."""
    offs = struct.unpack(f"<{length + 1}{_OFFSET_CODE[width]}", offsets)
    assert len(offsets) == (length + 1) * width and offs[0] == 0
    assert len(data) == offs[-1], "the data buffer holds bytes no value covers (never written)"
    if validity is not None:
        assert len(validity) == (length + 7) // 8
        assert int.from_bytes(validity, "little") >> length == 0, "bits past the end must be zero"
    out: list[bytes | None] = []
    for i in range(length):
        assert offs[i] <= offs[i + 1]
        if validity is not None and not validity[i >> 3] >> (i & 7) & 1:
            assert offs[i] == offs[i + 1]
            out.append(None)
        else:
            out.append(bytes(data[offs[i] : offs[i + 1]]))
    return out


def _outcome(impl: Any, op: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``(status, index, payload)`` with the result arrays decoded, or ``(exception type,)``."""
    try:
        result = getattr(impl, op)(*args)
    except (ValueError, TypeError, OverflowError, BufferError) as exc:
        return (type(exc),)
    if op == "dek_ids":
        return result
    status, index, validity, offsets, data = result
    if status != _native.ST_OK:
        assert validity is offsets is data is None
        return status, index
    return status, index, _values(validity, offsets, data, args[-4], args[-1])


def _replay(seed: int, array: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The calls of one fuzz array, for a failure to be replayed alone."""
    return _backend_cases(random.Random(seed * 10**9 + array), _BACKEND_POOL)


_BACKEND_POOL = _backend_pool()


def test_fuzz_native_and_pure_backends_agree():
    """Same status, same row, same values (or the same refusal) from C and Python, for CASES calls."""
    tally: dict[Any, int] = {}
    cases = array = 0
    while cases < CASES:
        for op, args in _replay(SEED, array):
            native = _outcome(fastgcm, op, args)
            pure = _outcome(PURE, op, args)
            assert native == pure, f"replay: _replay({SEED}, {array}) -> {op}"
            tally[native[0]] = tally.get(native[0], 0) + 1
            cases += 1
        array += 1
    if CASES >= 1000:  # the generator reaches every outcome, not only the easy ones
        for outcome in (_native.ST_OK, _native.ST_BAD_OFFSETS, _native.ST_SHORT_CELL, _native.ST_NOT_GCM,
                        _native.ST_UNKNOWN_DEK, _native.ST_AUTH_FAILED, _native.ST_COUNT_MISMATCH, ValueError):
            assert tally.get(outcome, 0) > CASES // 200, (outcome, tally)
    print(f"\nfuzz: {cases} calls on {array} arrays (seed {SEED}), native == pure; outcomes: {tally}")


# --------------------------------------------------------------------------- the same through the public API


def _api_outcome(backend: Any, op: str, buf: BinaryBuffers, out_width: int, counter: int) -> Any:
    saved = _native._BACKEND
    _native._BACKEND = backend
    try:
        if op == "encrypt":
            enc = CellEncryptor(KEYS[ID_A], ID_A, salt=SALT)
            enc._counter = counter  # the counter seam, as in test_native.py
            out = enc.encrypt_buffers(buf, COLUMN, CONTEXT, out_width=out_width)
            used = enc.cells_used
        else:
            lookup = {i: KEYS[i] for i in (ID_A, ID_B)}.__getitem__
            out = CellDecryptor(lookup).decrypt_buffers(buf, COLUMN, CONTEXT, where="f.parquet", out_width=out_width)
            used = None
    except errors.SparkKmsError as exc:
        return type(exc), str(exc)
    finally:
        _native._BACKEND = saved
    assert (out.offset, out.width, out.length) == (0, out_width, buf.length)
    return _values(out.validity, out.offsets, out.data, out.length, out_width), used


def test_fuzz_public_api_gives_the_same_values_or_the_same_error_on_both_paths():
    pool = _api_pool()
    tally: dict[Any, int] = {}
    for case in range(max(1, CASES // 3)):
        rng = random.Random(SEED * 10**9 + case)
        op = rng.choice(("encrypt", "decrypt", "decrypt"))
        buf, _ = _array(rng, pool, plaintext=op == "encrypt")
        out_width, counter = rng.choice((4, 8)), rng.randrange(2**20)
        native = _api_outcome(fastgcm, op, buf, out_width, counter)
        pure = _api_outcome(PURE, op, buf, out_width, counter)
        assert native == pure, f"replay: API case {case} of seed {SEED} -> {op}"
        kind = native[0] if isinstance(native[0], type) else "ok"
        tally[kind] = tally.get(kind, 0) + 1
        if isinstance(native[0], type):
            assert issubclass(native[0], errors.SparkKmsError)
    if CASES >= 1000:
        for kind in ("ok", errors.ConfigurationError, errors.MalformedCellError, errors.DecryptionError,
                     errors.UnknownDataKeyError):
            assert tally.get(kind, 0) > 0, tally


# --------------------------------------------------------------------------- buffers changed during a call


def _cycle(cls: type) -> None:
    obj = cls()
    obj.self = obj  # only the cycle collector frees it


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.12+ defers a collection to the next bytecode, "
                    "after the C call: the finaliser cannot run inside it")
@pytest.mark.parametrize("width", [4, 8])
def test_dek_ids_never_reads_offsets_that_gc_finalizers_changed(width):
    """dek_ids creates Python objects, which can run the garbage collector and with it any ``__del__``.

    The finaliser below moves row 0 to the last byte of the data, in the writable offsets buffer the call is
    reading; a DEK id read after that is 8 bytes from past the end of the data buffer (ASan: heap-buffer-overflow;
    without ASan: heap bytes returned as a DEK id). The ids must be the ones in the cells, or the offsets bad.
    """
    pool = _BACKEND_POOL["good"]
    cells = [next(c for c in pool if c[1:9] == ID_A), next(c for c in pool if c[1:9] == ID_B)]
    data = b"".join(cells)
    fired_inside, calling = 0, False
    for extra in range(4):  # a few allocation counts, so a collection lands inside the call whatever the parity
        offsets = bytearray(_pack(width, 0, len(cells[0]), len(data)))

        class Finalizer:
            def __del__(self) -> None:
                nonlocal fired_inside
                if calling:
                    offsets[:width] = _pack(width, len(data) - 1)
                    fired_inside += 1
                else:  # collected before the call: leave another one for the next collection
                    _cycle(Finalizer)

        gc.collect()
        _cycle(Finalizer)
        threshold = gc.get_threshold()
        gc.set_threshold(1)
        try:
            # Empty the list free list, so the call's list comes from the GC allocator (and may collect).
            keep = [[] for _ in range(100 + extra)]
            calling = True
            result = fastgcm.dek_ids(offsets, data, None, 2, 0, width)
            calling = False
        finally:
            gc.set_threshold(*threshold)
            del keep
        assert result in ((0, -1, [ID_A, ID_B]), (_native.ST_BAD_OFFSETS, 0, [])), result
    assert fired_inside, "the finaliser never ran inside the call: the test no longer reaches the gap"
    gc.collect()


# encrypt and decrypt release the GIL around their loop. Another thread changes the input buffers while the
# loop is in row 1, a 32 MiB value (tens of ms of AES): the rows before it are done, the rows after it not.
BIG = 32 << 20
ATTEMPTS = 5  # the change lands inside the loop on the first attempt almost always; a loaded machine may need more


def _exported(buffer: bytearray) -> bool:
    """True while a C function holds a buffer view of ``buffer`` (a bytearray cannot be resized then)."""
    try:
        buffer.append(0)
    except BufferError:
        return True
    buffer.pop()
    return False


def _while_the_loop_runs(call: Callable[[], Any], change: Callable[[], None], offsets: bytearray) -> tuple[Any, bool]:
    """``call()``, with ``change()`` run by another thread 2 ms after the call releases the GIL.

    The other thread waits for the GIL, which this thread keeps until the C loop starts (the switch interval is
    5 ms, the Python code between ``go.set()`` and the loop takes microseconds). Returns the call's result and
    whether the change happened while the call still held the buffers.
    """
    go = threading.Event()
    inside: list[bool] = []

    def other() -> None:
        go.wait()
        time.sleep(0.002)
        inside.append(_exported(offsets))
        if inside[0]:
            change()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        go.set()
        result = call()
    finally:
        thread.join()
    return result, inside[0]


def _buffers_of(values: list[bytes | None]) -> tuple[bytearray, bytearray, bytearray]:
    """Writable offsets (int32), data and validity of ``values``: what a mutable Arrow array could hand over."""
    buf = _native.buffers_from_values(values, 4)
    validity = buf.validity if buf.validity is not None else b"\xff" * ((len(values) + 7) // 8)
    return bytearray(buf.offsets), bytearray(buf.data), bytearray(validity)


def _repoint(offsets: bytearray, row: int, start: int, end: int) -> None:
    """Make ``row`` span data[start:end]; only the rows from ``row`` on read the two offsets changed."""
    offsets[4 * row : 4 * row + 8] = _pack(4, start, end)


def _ok_values(result: Any, length: int) -> list[bytes | None]:
    status, _, validity, offsets, data = result
    assert status == _native.ST_OK, result[:2]
    return _values(validity, offsets, data, length, 4)


def _encrypt(offsets: bytearray, data: bytearray, validity: bytearray, cells: int) -> Any:
    return fastgcm.encrypt(KEYS[ID_A], b"\x11" + ID_A + SALT, TAIL, 0, cells, offsets, data, validity, 4, 0, 4, 4)


def _gcm_open(cell: bytes | None) -> bytes:
    assert cell is not None
    return AESGCM(KEYS[ID_A]).decrypt(cell[9:21], cell[21:], TAIL)  # _encrypt passes TAIL as the whole AAD


def _decrypt(offsets: bytearray, data: bytearray, validity: bytearray) -> Any:
    return fastgcm.decrypt([(ID_A, KEYS[ID_A])], TAIL, offsets, data, validity, 3, 0, 4, 4)


def test_encrypt_fails_when_a_value_shrinks_while_the_gil_is_released():
    """Row 3 shortened after the sizing pass: the output would end with bytes the loop never wrote (the old
    code returned them, uninitialised heap memory). The call must fail instead."""
    values = [None, bytes(BIG), b"abc", b"defgh"]
    for _ in range(ATTEMPTS):
        offsets, data, validity = _buffers_of(values)
        end = len(data)
        result, inside = _while_the_loop_runs(
            lambda: _encrypt(offsets, data, validity, 3), lambda: _repoint(offsets, 3, end - 5, end - 2), offsets
        )
        if inside and result[0] != _native.ST_OK:
            assert result[:2] == (_native.ST_BAD_OFFSETS, 3)
            return
        out = _ok_values(result, 4)  # changed too late to matter: the result must be complete and right
        assert out[0] is None and [_gcm_open(c) for c in out[1:]] == values[1:]
    pytest.fail("no attempt changed the buffer while the loop ran")


def test_encrypt_output_validity_is_the_bits_the_loop_acted_on():
    """Row 0 is null when the loop passes it, then marked valid: the output must still say null (the old code
    read the bitmap again after the loop: row 0 came back valid, with 0 bytes instead of a cell)."""
    values = [None, bytes(BIG), b"abc", b"defgh"]
    for _ in range(ATTEMPTS):
        offsets, data, validity = _buffers_of(values)

        def mark_row0_valid() -> None:
            validity[0] |= 1
            data[-1] = ord("H")  # row 3 is encrypted after this: its cell shows the change landed in the loop

        result, inside = _while_the_loop_runs(lambda: _encrypt(offsets, data, validity, 3), mark_row0_valid, offsets)
        out = _ok_values(result, 4)
        assert out[0] is None, "a row encrypted as null is reported valid"
        assert [_gcm_open(c) for c in out[1:3]] == values[1:3]
        if inside and _gcm_open(out[3]) == b"defgH":
            return
    pytest.fail("no attempt changed the buffers while the loop ran")


def _decrypt_buffers(rng: random.Random, spare_plaintext: bytes) -> tuple[bytearray, bytearray, bytearray, int, int]:
    """Cells [null, 32 MiB, b"12345678"] and, after them in the data buffer, a spare cell no row points at."""
    cells = [None, _gcm_cell(rng, ID_A, bytes(BIG), TAIL), _gcm_cell(rng, ID_A, b"12345678", TAIL)]
    offsets, data, validity = _buffers_of(cells)
    start = len(data)
    data += _gcm_cell(rng, ID_A, spare_plaintext, TAIL)
    return offsets, data, validity, start, len(data)


def test_decrypt_fails_when_a_cell_is_swapped_for_a_shorter_one_while_the_gil_is_released():
    """Row 2 pointed at a cell with a shorter plaintext after the sizing pass: the call must fail rather than
    return plaintext buffers ending in bytes the loop never wrote."""
    rng = random.Random(3)
    for _ in range(ATTEMPTS):
        offsets, data, validity, start, end = _decrypt_buffers(rng, b"1234")
        result, inside = _while_the_loop_runs(
            lambda: _decrypt(offsets, data, validity), lambda: _repoint(offsets, 2, start, end), offsets
        )
        if inside and result[0] != _native.ST_OK:
            assert result[:2] == (_native.ST_BAD_OFFSETS, 2)
            return
        assert _ok_values(result, 3) == [None, bytes(BIG), b"12345678"]
    pytest.fail("no attempt changed the buffer while the loop ran")


def test_decrypt_output_validity_is_the_bits_the_loop_acted_on():
    rng = random.Random(4)
    for _ in range(ATTEMPTS):
        offsets, data, validity, start, end = _decrypt_buffers(rng, b"abcdefgh")

        def mark_row0_valid() -> None:
            validity[0] |= 1
            _repoint(offsets, 2, start, end)  # row 2 is decrypted after this: its plaintext shows the change landed

        result, inside = _while_the_loop_runs(lambda: _decrypt(offsets, data, validity), mark_row0_valid, offsets)
        out = _ok_values(result, 3)
        assert out[0] is None, "a row decrypted as null is reported valid (with an empty plaintext)"
        assert out[1] == bytes(BIG)
        if inside and out[2] == b"abcdefgh":
            return
        assert out[2] == b"12345678"
    pytest.fail("no attempt changed the buffers while the loop ran")
