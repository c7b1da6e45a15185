"""Batched AES-256-GCM over Arrow-style buffers: the native extension, or the same contract in pure Python.

The cell hot loop of spark_kms (millions of cells per task) runs in ``spark_kms.crypto._fastgcm``, a small C
extension over OpenSSL's EVP API, when it was built (``pip install -e .`` builds it; it is optional). Without it,
or when the environment variable ``SPARK_KMS_PURE_PYTHON=1`` is set (read once, at import), the functions
below run the same contract through ``cryptography``, one call per cell. Both give byte-identical cells
(docs/FORMAT.md sections 2.1-4); :func:`native_available` says which one is in use.

Buffers follow Arrow's layout for ``binary`` / ``large_binary`` arrays (:class:`BinaryBuffers`):

* ``offsets``: ``length + 1`` native-endian int32 (``width=4``) or int64 (``width=8``) entries from entry
  ``offset`` on; value ``i`` is ``data[offsets[offset + i]:offsets[offset + i + 1]]``;
* ``validity``: LSB-first bitmap, bit ``offset + i`` set when value ``i`` is not null, or ``None``;
* results have ``offset=0`` and fresh buffers (``bytes``), nulls at the same rows.

Backend functions return ``(status, index, ...)``: ``status`` is one of the ``ST_*`` codes and ``index`` the
row of the first value concerned. They never raise for bad data, only for bad arguments; the callers in
:mod:`spark_kms.crypto.cell` turn statuses into spark_kms errors.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

logger = logging.getLogger(__name__)

__all__ = [
    "BUILD_HINT",
    "PURE_PYTHON_ENV",
    "ST_AUTH_FAILED",
    "ST_BAD_OFFSETS",
    "ST_COUNT_MISMATCH",
    "ST_CRYPTO_FAILED",
    "ST_NOT_GCM",
    "ST_OK",
    "ST_SHORT_CELL",
    "ST_TOO_LARGE",
    "ST_TOO_MANY_DEKS",
    "ST_UNKNOWN_DEK",
    "BinaryBuffers",
    "backend",
    "buffers_from_values",
    "count_valid",
    "dek_id_at",
    "native_available",
    "native_status",
    "values_from_buffers",
]

#: Set to 1 to force the pure-Python path even when the extension is built (read once, at import).
PURE_PYTHON_ENV = "SPARK_KMS_PURE_PYTHON"
#: "openssl" keeps the native loops (this extension and the JVM fast path's library) on OpenSSL's EVP even where
#: libsodium is installed (spark_kms/crypto/_gcm_backend.h); read once per process
GCM_BACKEND_ENV = "SPARK_KMS_GCM_BACKEND"

# Status codes, equal to those of _fastgcm.c.
ST_OK = 0
ST_BAD_OFFSETS = 1
ST_SHORT_CELL = 2
ST_NOT_GCM = 3
ST_UNKNOWN_DEK = 4
ST_AUTH_FAILED = 5
ST_TOO_LARGE = 6
ST_COUNT_MISMATCH = 7
ST_CRYPTO_FAILED = 8
ST_TOO_MANY_DEKS = 9

_HEADER = 9
_OVERHEAD = 37
_GCM_BYTE0 = 0x11
_MAX_CELL = 2**31 - 1
_MAX_DEKS = 256
_WIDTH_LIMIT = {4: 2**31 - 1, 8: 2**63 - 1}
_OFFSET_FORMAT = {4: "i", 8: "q"}


class BinaryBuffers(NamedTuple):
    """One Arrow ``binary`` (``width=4``) or ``large_binary`` (``width=8``) array as raw buffers."""

    length: int
    validity: Any  # buffer-protocol object or None (no nulls)
    offsets: Any
    data: Any
    offset: int = 0
    width: int = 4


def count_valid(buf: BinaryBuffers) -> int:
    """Non-null values of the array: set bits ``offset .. offset + length - 1`` of the validity bitmap."""
    if buf.validity is None:
        return buf.length
    bits = memoryview(buf.validity).cast("B")
    first, last = buf.offset >> 3, (buf.offset + buf.length + 7) >> 3
    if buf.length < 0 or buf.offset < 0 or len(bits) < last:
        raise ValueError("the validity bitmap is too short for the array")
    # One big-int popcount: ~1 ms per million rows, no Python loop.
    word = int.from_bytes(bits[first:last], "little") >> (buf.offset & 7)
    return (word & ((1 << buf.length) - 1)).bit_count()


def dek_id_at(buf: BinaryBuffers, row: int) -> bytes:
    """The DEK id (cell bytes 1..8) of value ``row``, whose bounds the backend has checked."""
    (start,) = struct.unpack_from(f"<{_OFFSET_FORMAT[buf.width]}", memoryview(buf.offsets).cast("B"), (buf.offset + row) * buf.width)
    return bytes(memoryview(buf.data).cast("B")[start + 1 : start + _HEADER])


# --------------------------------------------------------------------------- pure-Python backend


def values_from_buffers(
    buf: BinaryBuffers, check: Callable[[bytes], int] | None = None
) -> tuple[int, int, list[bytes | None]]:
    """``(status, index, values)``: the array's values as bytes (None for nulls), bounds checked.

    A status other than :data:`ST_OK` names the first row whose offsets are out of order or past the data, or
    whose value ``check`` (called on each non-null value in row order) answered with a status other than ST_OK:
    the rows are checked one by one, in the same order as the first pass of the C functions.
    """
    if buf.width not in _OFFSET_FORMAT:
        raise ValueError("offset width must be 4 (binary) or 8 (large_binary)")
    if buf.length < 0 or buf.offset < 0:
        raise ValueError("length and array offset must be non-negative")
    offsets = memoryview(buf.offsets).cast("B")
    entries = buf.offset + buf.length + 1
    if len(offsets) < entries * buf.width:  # the messages of the C extension, word for word
        raise ValueError(f"the offsets buffer holds {len(offsets)} bytes, {entries} entries of {buf.width} bytes needed")
    offs = struct.unpack_from(f"<{buf.length + 1}{_OFFSET_FORMAT[buf.width]}", offsets, buf.offset * buf.width)
    data = bytes(memoryview(buf.data).cast("B"))
    bits = None
    if buf.validity is not None:
        bits = memoryview(buf.validity).cast("B")
        if len(bits) * 8 < buf.offset + buf.length:
            raise ValueError(f"the validity bitmap holds {len(bits)} bytes, {buf.offset + buf.length} bits needed")
    out: list[bytes | None] = []
    for i in range(buf.length):
        bit = buf.offset + i
        if bits is not None and not (bits[bit >> 3] >> (bit & 7)) & 1:
            out.append(None)
            continue
        start, end = offs[i], offs[i + 1]
        if start < 0 or end < start or end > len(data):
            return ST_BAD_OFFSETS, i, []
        value = data[start:end]
        if check is not None:
            status = check(value)
            if status != ST_OK:
                return status, i, []
        out.append(value)
    return ST_OK, -1, out


def buffers_from_values(values: Sequence[bytes | None], width: int = 4) -> BinaryBuffers:
    """The buffers of ``values`` (None for nulls) as a ``binary`` (width 4) or ``large_binary`` array."""
    if width not in _OFFSET_FORMAT:
        raise ValueError("offset width must be 4 (binary) or 8 (large_binary)")
    n = len(values)
    data = b"".join(v for v in values if v is not None)
    if len(data) > _WIDTH_LIMIT[width]:
        raise OverflowError("the values do not fit 32-bit offsets")
    offsets = struct.pack(f"<{n + 1}{_OFFSET_FORMAT[width]}", 0, *accumulate(0 if v is None else len(v) for v in values))
    validity = None
    if any(v is None for v in values):
        bits = sum(1 << i for i, v in enumerate(values) if v is not None)
        validity = bits.to_bytes((n + 7) // 8, "little")
    return BinaryBuffers(n, validity, offsets, data, 0, width)


def _pure_encrypt(
    key: bytes, prefix: bytes, aad: bytes, counter_start: int, expected_cells: int,
    offsets: Any, data: Any, validity: Any, length: int, array_offset: int, width: int, out_width: int,
) -> tuple[int, int, Any, Any, Any]:
    if len(key) != 32 or len(prefix) != 13 or out_width not in _OFFSET_FORMAT:
        raise ValueError("key must be 32 bytes, prefix 13 bytes, output offset width 4 or 8")
    total, limit = 0, _WIDTH_LIMIT[out_width]

    def fits(value: bytes) -> int:
        nonlocal total
        if len(value) > _MAX_CELL - _OVERHEAD or total > limit - (len(value) + _OVERHEAD):
            return ST_TOO_LARGE
        total += len(value) + _OVERHEAD
        return ST_OK

    buf = BinaryBuffers(length, validity, offsets, data, array_offset, width)
    status, index, values = values_from_buffers(buf, fits)
    if status != ST_OK:
        return status, index, None, None, None
    cells = len(values) - values.count(None)
    # As in C: the counters must be the ones reserved and all below 2**64 (else a nonce would wrap around).
    if cells != expected_cells or counter_start > 2**64 - 1 - expected_cells:
        return ST_COUNT_MISMATCH, cells, None, None, None
    enc, salt, counters = AESGCM(bytes(key)).encrypt, bytes(prefix[9:13]), iter(range(counter_start, 2**64))
    out: list[bytes | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        ctr = next(counters).to_bytes(8, "big")
        out.append(bytes(prefix) + ctr + enc(salt + ctr, v, bytes(aad)))
    res = buffers_from_values(out, out_width)
    return ST_OK, -1, res.validity, res.offsets, res.data


def _gcm_cell_check(out_width: int) -> Callable[[bytes], int]:
    """The per-cell test of C's check_gcm_cells: a GCM cell, and the plaintexts so far fit ``out_width`` offsets."""
    total, limit = 0, _WIDTH_LIMIT[out_width]

    def check(cell: bytes) -> int:
        nonlocal total
        if len(cell) < _OVERHEAD:
            return ST_SHORT_CELL
        if cell[0] != _GCM_BYTE0:
            return ST_NOT_GCM
        if len(cell) > _MAX_CELL or total > limit - (len(cell) - _OVERHEAD):
            return ST_TOO_LARGE
        total += len(cell) - _OVERHEAD
        return ST_OK

    return check


def _pure_dek_ids(
    offsets: Any, data: Any, validity: Any, length: int, array_offset: int, width: int
) -> tuple[int, int, list[bytes]]:
    buf = BinaryBuffers(length, validity, offsets, data, array_offset, width)
    status, index, values = values_from_buffers(buf, _gcm_cell_check(8))
    if status != ST_OK:
        return status, index, []
    ids: dict[bytes, None] = {}
    for i, cell in enumerate(values):
        if cell is not None:
            ids.setdefault(cell[1:_HEADER])
            if len(ids) > _MAX_DEKS:
                return ST_TOO_MANY_DEKS, i, []
    return ST_OK, -1, list(ids)


def _pure_decrypt(
    keys: Sequence[tuple[bytes, bytes]], aad_tail: bytes, offsets: Any, data: Any, validity: Any,
    length: int, array_offset: int, width: int, out_width: int,
) -> tuple[int, int, Any, Any, Any]:
    if out_width not in _OFFSET_FORMAT:
        raise ValueError("output offset width must be 4 or 8")
    if len(keys) > _MAX_DEKS:
        raise ValueError(f"at most {_MAX_DEKS} keys per call")
    ciphers: dict[bytes, AESGCM] = {}
    for dek_id, dek in keys:
        if len(dek_id) != 8 or len(dek) != 32:
            raise ValueError("a DEK id is 8 bytes and a DEK 32 bytes")
        ciphers.setdefault(bytes(dek_id), AESGCM(bytes(dek)))  # as in C: the first pair for an id is used
    buf = BinaryBuffers(length, validity, offsets, data, array_offset, width)
    status, index, values = values_from_buffers(buf, _gcm_cell_check(out_width))
    if status != ST_OK:
        return status, index, None, None, None
    tail = bytes(aad_tail)
    out: list[bytes | None] = []
    for i, cell in enumerate(values):
        if cell is None:
            out.append(None)
            continue
        gcm = ciphers.get(cell[1:_HEADER])
        if gcm is None:
            return ST_UNKNOWN_DEK, i, None, None, None
        try:
            out.append(gcm.decrypt(cell[_HEADER:21], cell[21:], cell[:_HEADER] + tail))
        except InvalidTag:
            return ST_AUTH_FAILED, i, None, None, None
    res = buffers_from_values(out, out_width)
    return ST_OK, -1, res.validity, res.offsets, res.data


class _PureBackend:
    """The contract of ``_fastgcm`` through ``cryptography`` (one AESGCM call per cell)."""

    encrypt = staticmethod(_pure_encrypt)
    decrypt = staticmethod(_pure_decrypt)
    dek_ids = staticmethod(_pure_dek_ids)


# --------------------------------------------------------------------------- selection

#: How to get the extension when it is missing (logged at import, shown by ``spark-kms doctor``).
BUILD_HINT = ("install a C compiler and the OpenSSL 3 headers (Debian: apt-get install gcc libssl-dev), then "
              "reinstall spark_kms from source (`make install`, or pip install --force-reinstall --no-binary "
              "spark-kms ...)")

_FORCED_PURE = os.environ.get(PURE_PYTHON_ENV, "").strip() not in ("", "0")
_native: Any = None
_STATUS: str
if _FORCED_PURE:
    _STATUS = f"native AES-GCM loop off ({PURE_PYTHON_ENV}=1): cells go through the cryptography package"
    logger.info("%s", _STATUS)
else:
    try:
        from spark_kms.crypto import _fastgcm as _native
    except ImportError as exc:  # not built (no compiler / OpenSSL headers at install time): the pure path serves
        _native = None
        _STATUS = (f"native AES-GCM loop missing ({exc}): this install was built without spark_kms.crypto._fastgcm, "
                   f"cells go through the cryptography package, about 4x slower; to fix, {BUILD_HINT}")
        logger.warning("%s", _STATUS)
    else:
        _gcm = getattr(_native, "GCM_BACKEND", "openssl")
        _STATUS = (f"native AES-GCM loop available ({os.path.basename(getattr(_native, '__file__', None) or '?')}, "
                   f"{_gcm})")
        if _gcm == "openssl" and os.environ.get(GCM_BACKEND_ENV, "") != "openssl":
            _STATUS += ("; libsodium (make install builds one in; Debian: libsodium23) would make each cell "
                        "about 3x cheaper")
        logger.info("%s", _STATUS)

_BACKEND: Any = _native if _native is not None else _PureBackend


def native_available() -> bool:
    """True when the C extension does the batched GCM work, False on the pure ``cryptography`` path."""
    return _native is not None


def native_status() -> str:
    """One line: whether the native loop is in use, and if it is missing, why and how to get it."""
    return _STATUS


def backend() -> Any:
    """The module-like object with ``encrypt``, ``decrypt`` and ``dek_ids`` in use in this process."""
    return _BACKEND
