"""Cell encryption: the byte format of one encrypted value (docs/FORMAT.md, "Cells").

Every cell starts with the same 9-byte header::

    offset  size  field
    0       1     (FORMAT_VERSION << 4) | algorithm id   0x11 GCM, 0x12 SIV, 0x13 blind index
    1       8     DEK id (random, names the data key in the key table)

followed by, per algorithm:

* ``AES_256_GCM_IV12_TAG16`` (0x11): nonce (12) || ciphertext (n) || tag (16); 37 bytes of overhead.
  nonce = 4-byte per-encryptor random salt || big-endian 64-bit counter starting at 0.
* ``AES_256_SIV`` (0x12): synthetic IV (16) || ciphertext (n); deterministic; 25 bytes of overhead.
  key = HKDF-SHA256(DEK, salt=None, info=b"spark_kms/v1 AES-256-SIV", length=64).
* ``HMAC_SHA256_128`` (0x13): first 16 bytes of HMAC-SHA256(k, u16be(len(col)) || col || value),
  k = HKDF-SHA256(DEK, salt=None, info=b"spark_kms/v1 HMAC-SHA256 blind index", length=32).
  One-way: for equality lookups and joins only.

AAD for GCM and SIV = header (9 bytes) || u16be(len(column_utf8)) || column_utf8 || context, which binds a
cell to its column, to its DEK and to the caller's context: a cell moved elsewhere fails to authenticate.
Format version 2 keeps this layout (the header's version nibble stays :data:`CELL_VERSION` = 1): its file
layer puts the column's spec (and, for row-bound columns, the row's key) into ``context``
(:func:`spark_kms.crypto.keytable.column_binding`), so the key table's spec is authenticated by every cell.

Plaintext DEKs are kept in ``bytearray`` objects that :meth:`wipe` zeroes. Python and OpenSSL keep their own
copies (the cipher contexts, temporary ``bytes``), so wiping narrows exposure, it does not guarantee erasure.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spark_kms.crypto import _native
from spark_kms.crypto._native import BinaryBuffers
from spark_kms.errors import (
    ConfigurationError,
    DecryptionError,
    KeyUsageLimitError,
    MalformedCellError,
    SparkKmsError,
    UnknownDataKeyError,
    UnknownFormatVersionError,
)

__all__ = [
    "AES_256_GCM",
    "AES_256_GCM_SUBJECT",
    "AES_256_SIV",
    "ALGORITHM_IDS",
    "BIDX_CELL_BYTES",
    "BIDX_TAG_BYTES",
    "BlindIndexer",
    "CELL_VERSION",
    "CellDecryptor",
    "CellEncryptor",
    "CellHeader",
    "DEFAULT_MAX_CELLS_PER_DEK",
    "DEK_BYTES",
    "DEK_ID_BYTES",
    "DeterministicEncryptor",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "GCM_NONCE_BYTES",
    "GCM_OVERHEAD",
    "GCM_SALT_BYTES",
    "GCM_TAG_BYTES",
    "HEADER_BYTES",
    "HMAC_SHA256_BIDX",
    "MAX_CELL_BYTES",
    "MAX_CELLS_PER_DEK_LIMIT",
    "SIV_INFO",
    "BIDX_INFO",
    "SIV_IV_BYTES",
    "SIV_OVERHEAD",
    "dek_id_from_hex",
    "dek_id_hex",
    "new_dek_id",
    "parse_cell_header",
]

#: the version nibble of every cell header; format versions 1 and 2 share the cell layout
CELL_VERSION = 1
#: the format version writers produce (key tables, manifests, the AAD rule of their cells; docs/FORMAT.md 9)
FORMAT_VERSION = 2
#: the format versions this release reads
FORMAT_VERSIONS = (1, 2)
AES_256_GCM = "AES_256_GCM_IV12_TAG16"
AES_256_SIV = "AES_256_SIV"
HMAC_SHA256_BIDX = "HMAC_SHA256_128"
#: AES-256-GCM under a key derived from a data subject's key and the partition DEK (crypto-shredding per
#: person; the layout of 0x11, the key and AAD in :mod:`spark_kms.crypto.subject`)
AES_256_GCM_SUBJECT = "AES_256_GCM_SUBJECT"

#: algorithm name -> low nibble of the first cell byte
ALGORITHM_IDS: dict[str, int] = {AES_256_GCM: 0x1, AES_256_SIV: 0x2, HMAC_SHA256_BIDX: 0x3, AES_256_GCM_SUBJECT: 0x4}
_ALGORITHM_NAMES: dict[int, str] = {v: k for k, v in ALGORITHM_IDS.items()}

DEK_BYTES = 32
DEK_ID_BYTES = 8
HEADER_BYTES = 1 + DEK_ID_BYTES
GCM_SALT_BYTES = 4
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
GCM_OVERHEAD = HEADER_BYTES + GCM_NONCE_BYTES + GCM_TAG_BYTES  # 37
SIV_IV_BYTES = 16  # RFC 5297's synthetic IV, which AESSIV.encrypt puts before the ciphertext
SIV_OVERHEAD = HEADER_BYTES + SIV_IV_BYTES  # 25
BIDX_TAG_BYTES = 16
BIDX_CELL_BYTES = HEADER_BYTES + BIDX_TAG_BYTES  # 25

# One Arrow `binary` value (32-bit offsets) and one `cryptography` AEAD call both stop at 2**31 - 1 bytes.
MAX_CELL_BYTES = 2**31 - 1

#: Cells one GCM data key may encrypt. 2**28 cells of up to 4 KiB each keep the total under 2**36 AES blocks,
#: which bounds the GCM distinguishing advantage per key near 2**-57 (docs/FORMAT.md, "Nonces and DEK usage").
DEFAULT_MAX_CELLS_PER_DEK = 2**28
#: Hard ceiling for ``max_cells``: the NIST SP 800-38D invocation limit for one GCM key.
MAX_CELLS_PER_DEK_LIMIT = 2**32

SIV_INFO = b"spark_kms/v1 AES-256-SIV"
BIDX_INFO = b"spark_kms/v1 HMAC-SHA256 blind index"

_GCM_BYTE0 = (CELL_VERSION << 4) | ALGORITHM_IDS[AES_256_GCM]
_SIV_BYTE0 = (CELL_VERSION << 4) | ALGORITHM_IDS[AES_256_SIV]
_BIDX_BYTE0 = (CELL_VERSION << 4) | ALGORITHM_IDS[HMAC_SHA256_BIDX]
_COUNTER = struct.Struct(">Q")
_SHA256_BLOCK = 64


# --------------------------------------------------------------------------- helpers


def new_dek_id() -> bytes:
    """Return a fresh random DEK id (:data:`DEK_ID_BYTES` bytes)."""
    return os.urandom(DEK_ID_BYTES)


def dek_id_hex(dek_id: bytes) -> str:
    """Return the 16-character lower-case hex form used in key tables and messages."""
    if not isinstance(dek_id, (bytes, bytearray)) or len(dek_id) != DEK_ID_BYTES:
        raise ConfigurationError(f"a DEK id is {DEK_ID_BYTES} bytes")
    return bytes(dek_id).hex()


def dek_id_from_hex(text: str) -> bytes:
    """Parse the hex form of a DEK id (exactly 16 hex characters)."""
    if not isinstance(text, str) or len(text) != 2 * DEK_ID_BYTES:
        raise ConfigurationError(f"a DEK id is {2 * DEK_ID_BYTES} hex characters, got {_describe(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError(f"a DEK id is {2 * DEK_ID_BYTES} hex characters, got non-hex text") from None


def _describe(value: object) -> str:
    # Says what kind of thing was passed without echoing it (it might be secret material).
    if isinstance(value, (str, bytes, bytearray)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _check_key(dek: bytes | bytearray | memoryview, dek_id: bytes) -> tuple[bytearray, bytes]:
    if not isinstance(dek, (bytes, bytearray, memoryview)) or len(dek) != DEK_BYTES:
        raise ConfigurationError(f"a data key (DEK) is {DEK_BYTES} bytes, got {_describe(dek)}")
    if not isinstance(dek_id, (bytes, bytearray)) or len(dek_id) != DEK_ID_BYTES:
        raise ConfigurationError(f"a DEK id is {DEK_ID_BYTES} bytes, got {_describe(dek_id)}")
    return bytearray(dek), bytes(dek_id)


def _column_aad_part(column: str) -> bytes:
    """u16be(len(column_utf8)) || column_utf8 — the column binding shared by AAD and blind index."""
    if not isinstance(column, str):
        raise ConfigurationError(f"a column name is a str, got {type(column).__name__}")
    try:
        raw = column.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError("a column name must be encodable as UTF-8") from None
    if len(raw) > 0xFFFF:
        raise ConfigurationError(f"a column name is at most 65535 UTF-8 bytes, got {len(raw)}")
    return len(raw).to_bytes(2, "big") + raw


def _check_context(context: bytes) -> bytes:
    if not isinstance(context, (bytes, bytearray)):
        raise ConfigurationError(f"the AAD context is bytes, got {type(context).__name__}")
    return bytes(context)


def _hkdf(dek: bytes | bytearray, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(bytes(dek))


def _at(where: str, column: str, row: int | None = None) -> str:
    parts = [f"column '{column}'"]
    if row is not None:
        parts.append(f"row {row}")
    if where:
        parts.append(where)
    return ", ".join(parts)


@dataclass(frozen=True)
class CellHeader:
    """The 9-byte header every cell starts with."""

    version: int
    algorithm: str
    dek_id: bytes

    @property
    def dek_id_hex(self) -> str:
        return self.dek_id.hex()


def parse_cell_header(cell: bytes, *, where: str = "") -> CellHeader:
    """Parse and validate a cell's header.

    :raises MalformedCellError: shorter than the header, or an unknown algorithm id.
    :raises UnknownFormatVersionError: the version nibble is not :data:`CELL_VERSION`.
    """
    suffix = f" ({where})" if where else ""
    if not isinstance(cell, (bytes, bytearray, memoryview)):
        raise MalformedCellError(f"a cell is bytes, got {type(cell).__name__}{suffix}")
    if len(cell) < HEADER_BYTES:
        raise MalformedCellError(
            f"cell of {len(cell)} bytes is shorter than the {HEADER_BYTES}-byte header{suffix}"
        )
    byte0 = cell[0]
    version = byte0 >> 4
    if version != CELL_VERSION:
        raise UnknownFormatVersionError(
            f"cell format version {version} is not supported (this release reads cells of version "
            f"{CELL_VERSION}){suffix}"
        )
    algorithm = _ALGORITHM_NAMES.get(byte0 & 0x0F)
    if algorithm is None:
        raise MalformedCellError(f"cell names unknown algorithm id 0x{byte0 & 0x0F:x}{suffix}")
    return CellHeader(version=version, algorithm=algorithm, dek_id=bytes(cell[1:HEADER_BYTES]))


# --------------------------------------------------------------------------- encryptors


class CellEncryptor:
    """AES-256-GCM cell encryptor for one data key (algorithm ``AES_256_GCM_IV12_TAG16``, cell byte 0 = 0x11).

    Cell = 0x11 || dek_id (8) || nonce (12) || ciphertext (n) || tag (16).
    Nonce = salt (4 random bytes chosen per encryptor) || u64be(counter); the counter starts at 0 and advances by
    one per non-null cell, so nonces never repeat under one encryptor. At most ``max_cells`` cells per data key;
    a batch that would pass the limit raises :class:`KeyUsageLimitError` before encrypting anything.

    One instance per DEK, not thread-safe (one per Spark task).
    """

    __slots__ = (
        "_aad_cache",
        "_aead",
        "_counter",
        "_dek",
        "_dek_id",
        "_header",
        "_max_cells",
        "_prefix",
        "_salt",
    )

    def __init__(
        self,
        dek: bytes | bytearray,
        dek_id: bytes,
        *,
        max_cells: int = DEFAULT_MAX_CELLS_PER_DEK,
        salt: bytes | None = None,
    ) -> None:
        self._dek, self._dek_id = _check_key(dek, dek_id)
        if (
            isinstance(max_cells, bool)
            or not isinstance(max_cells, int)
            or not 1 <= max_cells <= MAX_CELLS_PER_DEK_LIMIT
        ):
            raise ConfigurationError(f"max_cells must be an int in [1, 2**32], got {max_cells!r}")
        if salt is None:
            salt = os.urandom(GCM_SALT_BYTES)
        elif not isinstance(salt, (bytes, bytearray)) or len(salt) != GCM_SALT_BYTES:
            raise ConfigurationError(f"the nonce salt is {GCM_SALT_BYTES} bytes, got {_describe(salt)}")
        self._salt = bytes(salt)
        self._max_cells = max_cells
        self._counter = 0
        self._aead: AESGCM | None = AESGCM(self._dek)
        self._header = bytes([_GCM_BYTE0]) + self._dek_id
        # header || salt is the same for every cell: concatenate it once.
        self._prefix = self._header + self._salt
        self._aad_cache: dict[tuple[str, bytes], bytes] = {}

    def __repr__(self) -> str:
        return (
            f"CellEncryptor(dek_id={self._dek_id.hex()!r}, cells_used={self._counter}, "
            f"max_cells={self._max_cells}, wiped={self._aead is None})"
        )

    @property
    def dek_id(self) -> bytes:
        return self._dek_id

    @property
    def cells_used(self) -> int:
        """Counter value: nonces consumed so far (including any reserved by a batch that failed midway)."""
        return self._counter

    @property
    def cells_left(self) -> int:
        return self._max_cells - self._counter

    @property
    def max_cells(self) -> int:
        return self._max_cells

    def _aad(self, column: str, context: bytes) -> bytes:
        key = (column, context)
        aad = self._aad_cache.get(key)
        if aad is None:
            aad = self._header + _column_aad_part(column) + _check_context(context)
            if len(self._aad_cache) > 1024:  # a runaway set of contexts must not grow memory forever
                self._aad_cache.clear()
            self._aad_cache[key] = aad
        return aad

    def _live(self) -> AESGCM:
        if self._aead is None:
            raise KeyUsageLimitError(
                f"the encryptor of DEK {self._dek_id.hex()} was wiped; use a new data key"
            )
        return self._aead

    def _reserve(self, n: int) -> int:
        """Reserve ``n`` counter values up front, so a failure midway can never lead to nonce reuse."""
        start = self._counter
        if start + n > self._max_cells:
            raise KeyUsageLimitError(
                f"DEK {self._dek_id.hex()} may encrypt {self._max_cells} cells; {start} used, "
                f"{n} more requested; roll over to a new data key"
            )
        self._counter = start + n
        return start

    def encrypt(self, value: bytes, column: str, context: bytes = b"") -> bytes:
        """Encrypt one value (bytes) for ``column``; see the class docstring for the layout."""
        aead = self._live()
        aad = self._aad(column, context)
        ctr = _COUNTER.pack(self._reserve(1))
        return self._prefix + ctr + aead.encrypt(self._salt + ctr, value, aad)

    def encrypt_many(
        self, values: Sequence[bytes | None], column: str, context: bytes = b""
    ) -> list[bytes | None]:
        """Encrypt a batch; ``None`` stays ``None`` and consumes no counter value.

        :raises KeyUsageLimitError: if the batch would pass ``max_cells`` (raised before any cell is encrypted).
        """
        aead = self._live()
        aad = self._aad(column, context)
        n = (
            len(values) - values.count(None)
            if hasattr(values, "count")
            else sum(v is not None for v in values)
        )
        start = self._reserve(n)
        # The hot loop of the product: everything bound to locals, one C call per cell for the nonce and one for
        # the AEAD, a comprehension instead of append.
        enc = aead.encrypt
        pack = _COUNTER.pack
        salt = self._salt
        prefix = self._prefix
        if n == len(values):
            ctrs = map(pack, range(start, start + n))
            return [prefix + c + enc(salt + c, v, aad) for c, v in zip(ctrs, values, strict=True)]
        it = map(pack, range(start, start + n))
        nxt = it.__next__
        return [None if v is None else _seal(prefix, salt, nxt(), enc, v, aad) for v in values]

    def encrypt_rows(
        self, values: Sequence[bytes | None], column: str, contexts: Sequence[bytes]
    ) -> list[bytes | None]:
        """Encrypt a batch whose rows each have their own context (row binding); ``None`` stays ``None``.

        ``contexts[i]`` is the AAD context of ``values[i]``; same cells as :meth:`encrypt` row by row, and the
        same counter rules as :meth:`encrypt_many` (reserved up front, nulls consume none).
        """
        if len(contexts) != len(values):
            raise ConfigurationError(
                f"column '{column}': {len(contexts)} row contexts for {len(values)} values; one per row is needed"
            )
        aead = self._live()
        col = self._header + _column_aad_part(column)
        aads = [None if v is None else col + _check_context(c) for v, c in zip(values, contexts, strict=True)]
        start = self._reserve(sum(v is not None for v in values))
        enc, pack, salt, prefix = aead.encrypt, _COUNTER.pack, self._salt, self._prefix
        out: list[bytes | None] = []
        counter = start
        for v, aad in zip(values, aads, strict=True):
            if v is None:
                out.append(None)
                continue
            ctr = pack(counter)
            counter += 1
            out.append(prefix + ctr + enc(salt + ctr, v, aad))
        return out

    def encrypt_buffers(
        self, values: BinaryBuffers, column: str, context: bytes = b"", *, out_width: int = 4
    ) -> BinaryBuffers:
        """Encrypt a whole Arrow-style ``binary`` array at once; same cells as :meth:`encrypt_many`.

        ``values`` are the raw buffers of the plaintext array (layout in :mod:`spark_kms.crypto._native`); the
        result is a new ``binary`` (``out_width=4``) or ``large_binary`` (8) array of cells at offset 0, nulls at
        the same rows. Counters for every non-null value are reserved before any is encrypted. Runs in the
        native extension when it is built (no Python object per cell), else through ``cryptography``.

        :raises KeyUsageLimitError: the array would pass ``max_cells`` (nothing is encrypted).
        :raises ConfigurationError: corrupt offsets, or cells that do not fit ``out_width`` offsets.
        """
        self._live()
        aad = self._aad(column, context)
        with _buffer_arguments(column):
            start = self._reserve(_native.count_valid(values))
            status, index, validity, offsets, data = _native.backend().encrypt(
                self._dek, self._prefix, aad, start, self._counter - start, values.offsets, values.data,
                values.validity, values.length, values.offset, values.width, out_width,
            )
        if status != _native.ST_OK:
            at = _at("", column, index)
            if status == _native.ST_BAD_OFFSETS:
                raise ConfigurationError(f"the Arrow offsets at {at} are out of order or past the data (a corrupt array)")
            if status == _native.ST_TOO_LARGE:
                raise ConfigurationError(
                    f"the cells up to {at} do not fit a binary array with {8 * out_width}-bit offsets "
                    f"(one cell is at most {MAX_CELL_BYTES} bytes); encrypt smaller batches"
                )
            if status == _native.ST_COUNT_MISMATCH:
                raise ConfigurationError(f"the validity bitmap of column '{column}' changed while it was encrypted")
            raise SparkKmsError(f"OpenSSL refused to encrypt {at} (status {status})")
        return BinaryBuffers(values.length, validity, offsets, data, 0, out_width)

    def _encrypt_with_nonce(self, value: bytes, column: str, context: bytes, nonce: bytes) -> bytes:
        """Deterministic seam for test vectors: encrypt with an explicit 12-byte nonce; no counter is used."""
        if len(nonce) != GCM_NONCE_BYTES:
            raise ConfigurationError(f"a GCM nonce is {GCM_NONCE_BYTES} bytes")
        aead = self._live()
        return self._header + bytes(nonce) + aead.encrypt(bytes(nonce), value, self._aad(column, context))

    def wipe(self) -> None:
        """Zero the DEK copy held here and drop the cipher; further use raises :class:`KeyUsageLimitError`."""
        for i in range(len(self._dek)):
            self._dek[i] = 0
        self._aead = None
        self._aad_cache.clear()


@contextmanager
def _buffer_arguments(column: str, where: str = "") -> Iterator[None]:
    """Buffers that do not match the length and offset given are a caller's mistake: say so as spark_kms does."""
    try:
        yield
    except ConfigurationError:
        raise
    except ValueError as exc:  # the messages state sizes only, never buffer contents
        raise ConfigurationError(f"{_at(where, column)}: inconsistent Arrow buffers: {exc}") from None


def _seal(
    prefix: bytes, salt: bytes, ctr: bytes, enc: Callable[..., bytes], value: bytes, aad: bytes
) -> bytes:
    return prefix + ctr + enc(salt + ctr, value, aad)


class DeterministicEncryptor:
    """AES-256-SIV cell encryptor (algorithm ``AES_256_SIV``, cell byte 0 = 0x12): equal inputs, equal cells.

    Cell = 0x12 || dek_id (8) || synthetic IV (16) || ciphertext (n), the RFC 5297 output of
    AES-SIV(key, plaintext=value, AD=[aad]) with key = HKDF-SHA256(DEK, salt=None, info=SIV_INFO, 64 bytes).
    Deterministic encryption reveals which cells are equal (that is its purpose: joins and group-bys on
    ciphertext); use :class:`CellEncryptor` for everything else.
    """

    __slots__ = ("_aad_cache", "_dek", "_dek_id", "_header", "_siv")

    def __init__(self, dek: bytes | bytearray, dek_id: bytes) -> None:
        self._dek, self._dek_id = _check_key(dek, dek_id)
        self._siv: AESSIV | None = AESSIV(_hkdf(self._dek, SIV_INFO, 64))
        self._header = bytes([_SIV_BYTE0]) + self._dek_id
        self._aad_cache: dict[tuple[str, bytes], list[bytes]] = {}

    def __repr__(self) -> str:
        return f"DeterministicEncryptor(dek_id={self._dek_id.hex()!r}, wiped={self._siv is None})"

    @property
    def dek_id(self) -> bytes:
        return self._dek_id

    def _aad(self, column: str, context: bytes) -> list[bytes]:
        key = (column, context)
        aad = self._aad_cache.get(key)
        if aad is None:
            aad = [self._header + _column_aad_part(column) + _check_context(context)]
            if len(self._aad_cache) > 1024:
                self._aad_cache.clear()
            self._aad_cache[key] = aad
        return aad

    def _live(self) -> AESSIV:
        if self._siv is None:
            raise KeyUsageLimitError(
                f"the encryptor of DEK {self._dek_id.hex()} was wiped; use a new data key"
            )
        return self._siv

    def encrypt(self, value: bytes, column: str, context: bytes = b"") -> bytes:
        return self._header + self._live().encrypt(value, self._aad(column, context))

    def encrypt_many(
        self, values: Sequence[bytes | None], column: str, context: bytes = b""
    ) -> list[bytes | None]:
        """Encrypt a batch; ``None`` stays ``None``."""
        enc = self._live().encrypt
        aad = self._aad(column, context)
        header = self._header
        return [None if v is None else header + enc(v, aad) for v in values]

    def wipe(self) -> None:
        for i in range(len(self._dek)):
            self._dek[i] = 0
        self._siv = None
        self._aad_cache.clear()


class BlindIndexer:
    """Blind index (algorithm ``HMAC_SHA256_128``, cell byte 0 = 0x13): a keyed, one-way equality token.

    Cell = 0x13 || dek_id (8) || HMAC-SHA256(k, u16be(len(col)) || col || value)[:16], with
    k = HKDF-SHA256(DEK, salt=None, info=BIDX_INFO, 32 bytes). The column name is part of the message, so the
    same value indexes differently in different columns; pass the same ``column`` label on both sides of a join.
    """

    __slots__ = ("_column_states", "_dek", "_dek_id", "_header", "_inner", "_outer")

    def __init__(self, dek: bytes | bytearray, dek_id: bytes) -> None:
        self._dek, self._dek_id = _check_key(dek, dek_id)
        key = _hkdf(self._dek, BIDX_INFO, 32).ljust(_SHA256_BLOCK, b"\0")
        # RFC 2104 HMAC from precomputed pad states: hmac.digest() re-keys OpenSSL on every call (~1.9 us per
        # cell), copying two keyed hashlib states costs a third of that. tests/crypto check it equals hmac.digest.
        self._inner: Any = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer: Any = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._column_states: dict[str, Any] = {}
        self._header = bytes([_BIDX_BYTE0]) + self._dek_id

    def __repr__(self) -> str:
        return f"BlindIndexer(dek_id={self._dek_id.hex()!r}, wiped={self._inner is None})"

    @property
    def dek_id(self) -> bytes:
        return self._dek_id

    def _inner_for(self, column: str) -> Any:
        if self._inner is None:
            raise KeyUsageLimitError(
                f"the blind indexer of DEK {self._dek_id.hex()} was wiped; use a new data key"
            )
        state = self._column_states.get(column)
        if state is None:
            state = self._inner.copy()
            state.update(_column_aad_part(column))
            if len(self._column_states) > 1024:
                self._column_states.clear()
            self._column_states[column] = state
        return state

    def index(self, value: bytes, column: str) -> bytes:
        """The 25-byte blind-index cell of ``value`` in ``column``."""
        inner = self._inner_for(column).copy()
        inner.update(value)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return self._header + outer.digest()[:BIDX_TAG_BYTES]

    def index_many(self, values: Sequence[bytes | None], column: str) -> list[bytes | None]:
        """Index a batch; ``None`` stays ``None``."""
        inner_copy = self._inner_for(column).copy
        outer_copy = self._outer.copy
        header = self._header
        out: list[bytes | None] = []
        append = out.append
        for v in values:
            if v is None:
                append(None)
                continue
            inner = inner_copy()
            inner.update(v)
            outer = outer_copy()
            outer.update(inner.digest())
            append(header + outer.digest()[:16])
        return out

    def wipe(self) -> None:
        """Zero the DEK copy and drop the keyed hash states (their memory is freed, not zeroed)."""
        for i in range(len(self._dek)):
            self._dek[i] = 0
        self._inner = self._outer = None
        self._column_states.clear()


# --------------------------------------------------------------------------- decryption


class _DekCiphers:
    """The cipher objects of one DEK, built lazily: GCM always, SIV only when a SIV cell shows up."""

    __slots__ = ("dek", "gcm", "siv")

    def __init__(self, dek: bytearray) -> None:
        self.dek = dek
        self.gcm = AESGCM(dek)
        self.siv: AESSIV | None = None

    def siv_cipher(self) -> AESSIV:
        if self.siv is None:
            self.siv = AESSIV(_hkdf(self.dek, SIV_INFO, 64))
        return self.siv


def _unreachable(*_args: object) -> bytes:
    raise AssertionError("fast-path cipher used before it was set")


def _auth_failed(dek_id: bytes, at: str) -> DecryptionError:
    # One flat message for every authentication failure: which one it was must not leak (see DecryptionError).
    return DecryptionError(
        f"authentication failed for DEK {dek_id.hex()} at {at}: the key table's column spec does not match the "
        "cells, or the cell was tampered, moved from another column or row, or is under another key"
    )


class CellDecryptor:
    """Decrypts GCM and SIV cells of any DEK, dispatching on the cell's first byte.

    ``dek_lookup(dek_id: bytes)`` returns the plaintext DEK or raises ``KeyError``; it is called at most once per
    DEK id per decryptor (the cipher objects are cached). Errors name ``where``, the column, the row (for
    :meth:`decrypt_many`) and the DEK id — never cell bytes or plaintext.
    """

    _MAX_CELL_BYTES = MAX_CELL_BYTES

    def __init__(self, dek_lookup: Callable[[bytes], bytes | bytearray]) -> None:
        if not callable(dek_lookup):
            raise ConfigurationError("dek_lookup must be a callable taking a DEK id and returning the DEK")
        self._lookup = dek_lookup
        self._ciphers: dict[bytes, _DekCiphers] = {}

    def __repr__(self) -> str:
        return f"CellDecryptor(cached_deks={len(self._ciphers)})"

    def _for(self, dek_id: bytes, at: str) -> _DekCiphers:
        ciphers = self._ciphers.get(dek_id)
        if ciphers is None:
            try:
                dek = self._lookup(dek_id)
            except KeyError:
                raise UnknownDataKeyError(f"unknown DEK {dek_id.hex()} (not in the key table) at {at}") from None
            if not isinstance(dek, (bytes, bytearray)) or len(dek) != DEK_BYTES:
                raise DecryptionError(
                    f"the key lookup returned no {DEK_BYTES}-byte DEK for {dek_id.hex()} at {at}"
                )
            ciphers = self._ciphers[dek_id] = _DekCiphers(bytearray(dek))
        return ciphers

    def decrypt(
        self, cell: bytes, column: str, context: bytes = b"", *, where: str = "", alternatives: Sequence[bytes] = ()
    ) -> bytes:
        """Decrypt one GCM or SIV cell written for ``column`` (and ``context``).

        ``alternatives`` are further contexts to try, in order, when the cell does not authenticate under
        ``context`` (a reader that accepts cells of two AAD rules, docs/FORMAT.md section 3).
        """
        col = _column_aad_part(column)
        tails = [col + _check_context(c) for c in (context, *alternatives)]
        return self._decrypt_one(cell, tails, column, where, None)

    def decrypt_rows(
        self, cells: Sequence[bytes | None], column: str, contexts: Sequence[bytes], *, where: str = ""
    ) -> list[bytes | None]:
        """Decrypt a batch whose rows each have their own context (row binding); ``None`` stays ``None``."""
        if len(contexts) != len(cells):
            raise ConfigurationError(
                f"column '{column}': {len(contexts)} row contexts for {len(cells)} cells; one per row is needed"
            )
        col = _column_aad_part(column)
        return [
            None if cell is None else self._decrypt_one(cell, [col + _check_context(ctx)], column, where, row)
            for row, (cell, ctx) in enumerate(zip(cells, contexts, strict=True))
        ]

    def decrypt_many(
        self,
        cells: Sequence[bytes | None],
        column: str,
        context: bytes = b"",
        *,
        where: str = "",
        alternatives: Sequence[bytes] = (),
    ) -> list[bytes | None]:
        """Decrypt a batch; ``None`` stays ``None``. Errors name the row index.

        ``alternatives``: further contexts each cell may authenticate under (see :meth:`decrypt`).
        """
        col = _column_aad_part(column)
        tail = col + _check_context(context)
        tails = [tail] + [col + _check_context(c) for c in alternatives]
        out: list[bytes | None] = []
        append = out.append
        # Fast-path state: the cells of one batch almost always share one DEK, so keep the last cipher per
        # algorithm and only fall back to the fully checked path for anything unusual (including all errors).
        gcm_header = siv_header = b""
        gcm_decrypt: Callable[..., bytes] = _unreachable
        siv_decrypt: Callable[..., bytes] = _unreachable
        gcm_aad = b""
        siv_aad: list[bytes] = []
        max_len = self._MAX_CELL_BYTES
        for row, cell in enumerate(cells):
            if cell is None:
                append(None)
                continue
            b0 = cell[0] if type(cell) is bytes and HEADER_BYTES <= len(cell) <= max_len else -1
            try:
                if b0 == _GCM_BYTE0 and len(cell) >= GCM_OVERHEAD:
                    header = cell[:HEADER_BYTES]
                    if header != gcm_header:
                        gcm_decrypt = self._for(cell[1:HEADER_BYTES], _at(where, column, row)).gcm.decrypt
                        gcm_header, gcm_aad = header, header + tail
                    append(gcm_decrypt(cell[HEADER_BYTES:21], cell[21:], gcm_aad))
                elif b0 == _SIV_BYTE0 and len(cell) >= SIV_OVERHEAD:
                    header = cell[:HEADER_BYTES]
                    if header != siv_header:
                        siv_decrypt = (
                            self._for(cell[1:HEADER_BYTES], _at(where, column, row)).siv_cipher().decrypt
                        )
                        siv_header, siv_aad = header, [header + tail]
                    append(siv_decrypt(cell[HEADER_BYTES:], siv_aad))
                else:
                    append(self._decrypt_one(cell, tails, column, where, row))
            except InvalidTag:
                others = [t for t in tails if t is not tail]
                if not others:
                    raise _auth_failed(bytes(cell[1:HEADER_BYTES]), _at(where, column, row)) from None
                plain, tail = self._open(cell, others, column, where, row)
                # Neighbouring cells almost always follow the same AAD rule: try the one that fitted first.
                gcm_header = siv_header = b""
                append(plain)
        return out

    def decrypt_buffers(
        self,
        cells: BinaryBuffers,
        column: str,
        context: bytes = b"",
        *,
        where: str = "",
        out_width: int | None = None,
        alternatives: Sequence[bytes] = (),
    ) -> BinaryBuffers:
        """Decrypt a whole Arrow-style ``binary`` array of cells; same plaintext and errors as :meth:`decrypt_many`.

        The result is a new ``binary`` / ``large_binary`` array (``out_width``, default the input's) at offset
        0, nulls at the same rows. GCM cells run in the native extension when it is built: the DEKs named by
        the array are looked up first, then every cell is decrypted in one call. An array holding anything
        else (SIV or blind-index cells, malformed cells, DEK ids the lookup does not know) goes through
        :meth:`decrypt_many`, which raises the same errors at the same rows as for a list of cells.

        ``alternatives`` (see :meth:`decrypt`): when the whole array does not authenticate under ``context``,
        it is tried under each alternative; if none fits every cell, :meth:`decrypt_many` goes cell by cell.

        :raises DecryptionError: a cell fails to authenticate (message names where, column, row and DEK id).
        :raises MalformedCellError: corrupt offsets, or a malformed cell (via :meth:`decrypt_many`).
        """
        col = _column_aad_part(column)
        tails = [col + _check_context(c) for c in (context, *alternatives)]
        width = cells.width if out_width is None else out_width
        impl = _native.backend()
        with _buffer_arguments(column, where):
            status, index, dek_ids = impl.dek_ids(
                cells.offsets, cells.data, cells.validity, cells.length, cells.offset, cells.width
            )
        keys: list[tuple[bytes, bytearray]] = []
        if status == _native.ST_OK:
            try:
                keys = [(dek_id, self._for(dek_id, _at(where, column)).dek) for dek_id in dek_ids]
            except DecryptionError:
                status = _native.ST_UNKNOWN_DEK  # decrypt_many below raises it at the first row concerned
        if status == _native.ST_OK:
            for tail in tails:
                with _buffer_arguments(column, where):
                    status, index, validity, offsets, data = impl.decrypt(
                        keys, tail, cells.offsets, cells.data, cells.validity, cells.length, cells.offset,
                        cells.width, width,
                    )
                if status != _native.ST_AUTH_FAILED:
                    break
            if status == _native.ST_OK:
                return BinaryBuffers(cells.length, validity, offsets, data, 0, width)
            if status == _native.ST_AUTH_FAILED and len(tails) == 1:
                raise _auth_failed(_native.dek_id_at(cells, index), _at(where, column, index))
            # With several AAD rules, cells of both may share the array: the per-cell path below decides.
        if status == _native.ST_BAD_OFFSETS:
            raise MalformedCellError(
                f"the Arrow offsets at {_at(where, column, index)} are out of order or past the data (a corrupt array)"
            )
        status, index, values = _native.values_from_buffers(cells)
        if status != _native.ST_OK:  # unreachable after dek_ids, kept so no path reads past a buffer
            raise MalformedCellError(f"the Arrow offsets at {_at(where, column, index)} are corrupt")
        plain = self.decrypt_many(values, column, context, where=where, alternatives=alternatives)
        return _native.buffers_from_values(plain, width)

    def _decrypt_one(self, cell: bytes, tails: Sequence[bytes], column: str, where: str, row: int | None) -> bytes:
        return self._open(cell, tails, column, where, row)[0]

    def _open(
        self, cell: bytes, tails: Sequence[bytes], column: str, where: str, row: int | None
    ) -> tuple[bytes, bytes]:
        """The plaintext of a cell and the first AAD tail of ``tails`` it authenticates under."""
        at = _at(where, column, row)
        header = parse_cell_header(cell, where=at)
        cell = bytes(cell)
        if len(cell) > self._MAX_CELL_BYTES:
            raise MalformedCellError(f"cell of {len(cell)} bytes is larger than the format allows at {at}")
        if header.algorithm == HMAC_SHA256_BIDX:
            raise MalformedCellError(
                f"a blind-index cell ({HMAC_SHA256_BIDX}) is one-way, not decryptable, at {at}"
            )
        if header.algorithm == AES_256_GCM_SUBJECT:
            raise MalformedCellError(
                f"a per-subject cell ({AES_256_GCM_SUBJECT}) needs its subject's key, at {at}: its column's "
                "key-table spec must say so (field 'subject')"
            )
        minimum = GCM_OVERHEAD if header.algorithm == AES_256_GCM else SIV_OVERHEAD
        if len(cell) < minimum:
            raise MalformedCellError(
                f"{header.algorithm} cell of {len(cell)} bytes is shorter than the {minimum}-byte minimum at {at}"
            )
        ciphers = self._for(header.dek_id, at)
        for tail in tails:
            aad = cell[:HEADER_BYTES] + tail
            try:
                if header.algorithm == AES_256_GCM:
                    return ciphers.gcm.decrypt(cell[HEADER_BYTES:21], cell[21:], aad), tail
                return ciphers.siv_cipher().decrypt(cell[HEADER_BYTES:], [aad]), tail
            except InvalidTag:
                continue
        raise _auth_failed(header.dek_id, at)

    def wipe(self) -> None:
        """Zero the DEK copies held here and drop all cached ciphers."""
        for ciphers in self._ciphers.values():
            for i in range(len(ciphers.dek)):
                ciphers.dek[i] = 0
        self._ciphers.clear()
