"""Per-subject cells: AES-256-GCM under a key derived from a data subject's key (crypto-shredding per person).

Algorithm ``AES_256_GCM_SUBJECT``, cell byte 0 = ``0x14``; the layout is the GCM cell's (docs/FORMAT.md
section 2.1)::

    0x14 || DEK id (8) || nonce (12) = salt (4) || u64be(counter) || ciphertext (n) || tag (16)

* **Key**: ``HKDF-SHA256(ikm = subject key (32 bytes), salt = the partition DEK (32 bytes),
  info = b"spark_kms/v2 subject AES-256-GCM", length 32)``. The subject key comes from a subject key store
  (:mod:`spark_kms.subjects`), one random key per subject id; the DEK is the partition's data key from the KMS,
  named by the header as for any cell. Deleting the subject key erases every cell of that person in every
  dataset; a reader also needs the KMS (the DEK), as for any cell.
* **Nonce**: the partition DEK's counter, shared with its GCM cells (:class:`~spark_kms.crypto.CellEncryptor`).
  It never repeats under one DEK, so never under one derived key either (the DEK is the HKDF salt).
* **AAD** = header (9) || u16be(len(column)) || column || context, with ``context =``
  :func:`~spark_kms.crypto.column_binding` of the column's spec (``0x03 || u16(arrow_type) || arrow_type ||
  u16(subject column) || subject column``) ``|| u32be(len(subject id)) || subject id`` -- the subject id being
  the subject column's plaintext encoding in that row (docs/FORMAT.md section 6). A cell moved to another
  person's row fails twice over: another key and another AAD.

Everything here is pure (``cryptography`` and the standard library); the file layer (:mod:`spark_kms.parquet`)
looks the subject keys up per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spark_kms.crypto.cell import (
    _COUNTER,
    AES_256_GCM_SUBJECT,
    ALGORITHM_IDS,
    CELL_VERSION,
    DEK_BYTES,
    GCM_OVERHEAD,
    HEADER_BYTES,
    CellEncryptor,
    _at,
    _auth_failed,
    _column_aad_part,
    parse_cell_header,
)
from spark_kms.errors import ConfigurationError, DecryptionError, MalformedCellError, UnknownDataKeyError

__all__ = [
    "SUBJECT_BYTE0",
    "SUBJECT_INFO",
    "SubjectCellDecryptor",
    "SubjectCellEncryptor",
    "derive_subject_cell_key",
    "subject_context",
]

SUBJECT_INFO = b"spark_kms/v2 subject AES-256-GCM"
SUBJECT_BYTE0 = (CELL_VERSION << 4) | ALGORITHM_IDS[AES_256_GCM_SUBJECT]  # 0x14
_U32_MAX = 2**32 - 1


def derive_subject_cell_key(subject_key: bytes | bytearray, dek: bytes | bytearray) -> bytes:
    """The AES-256-GCM key of one subject's cells under one partition DEK (see the module docstring)."""
    if len(subject_key) != DEK_BYTES or len(dek) != DEK_BYTES:
        raise ConfigurationError(f"a subject key and a data key are {DEK_BYTES} bytes each")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(dek), info=SUBJECT_INFO).derive(bytes(subject_key))


def subject_context(binding: bytes, subject_id: bytes) -> bytes:
    """``binding`` (of a per-subject column) followed by ``u32be(len(subject_id)) || subject_id``."""
    if len(subject_id) > _U32_MAX:
        raise ConfigurationError(f"a subject id is at most {_U32_MAX} bytes")
    return binding + len(subject_id).to_bytes(4, "big") + bytes(subject_id)


class SubjectCellEncryptor:
    """Encrypts per-subject cells under the partition DEK of ``cells`` (a :class:`CellEncryptor`), whose nonce
    counter and salt it shares: GCM and per-subject cells of one DEK never reuse a counter value.

    One per :class:`CellEncryptor`; the derived keys are cached per subject (wiped with :meth:`wipe`).
    """

    def __init__(self, cells: CellEncryptor) -> None:
        self._cells = cells
        self._header = bytes([SUBJECT_BYTE0]) + cells.dek_id
        self._prefix = self._header + cells._salt
        self._aeads: dict[bytes, AESGCM] = {}

    def __repr__(self) -> str:
        return f"SubjectCellEncryptor(dek_id={self._cells.dek_id.hex()!r}, subjects={len(self._aeads)})"

    @property
    def cells_left(self) -> int:
        return self._cells.cells_left

    def encrypt_rows(
        self,
        values: Sequence[bytes | None],
        column: str,
        binding: bytes,
        subject_ids: Sequence[bytes | None],
        subject_keys: Mapping[bytes, bytes | bytearray],
    ) -> list[bytes | None]:
        """Encrypt one column's values, each under its row's subject; ``None`` stays ``None``.

        :param subject_ids: per row, the subject id (plaintext encoding); a non-null value needs one.
        :param subject_keys: subject id -> its 32-byte subject key, for every subject of a non-null value.
        """
        if len(subject_ids) != len(values):
            raise ConfigurationError(f"column '{column}': {len(subject_ids)} subject ids for {len(values)} values")
        self._cells._live()
        col = self._header + _column_aad_part(column)
        n = sum(v is not None for v in values)
        missing = sum(1 for v, s in zip(values, subject_ids, strict=True) if v is not None and s is None)
        if missing:
            raise ConfigurationError(f"column '{column}': {missing} values have no subject id (the subject column is null)")
        start = self._cells._reserve(n)
        salt, prefix, pack = self._cells._salt, self._prefix, _COUNTER.pack
        dek = self._cells._dek
        out: list[bytes | None] = []
        counter = start
        ready: dict[bytes, tuple[Callable[..., bytes], bytes]] = {}  # subject id -> (encrypt, AAD)
        for v, sid in zip(values, subject_ids, strict=True):
            if v is None:
                out.append(None)
                continue
            found = ready.get(sid)  # type: ignore[arg-type]
            if found is None:
                aead = self._aeads.get(sid)  # type: ignore[arg-type]
                if aead is None:
                    key = subject_keys.get(sid)  # type: ignore[arg-type]
                    if key is None:
                        raise ConfigurationError(
                            f"column '{column}': no subject key was given for one of the subjects")
                    aead = self._aeads[sid] = AESGCM(derive_subject_cell_key(key, dek))  # type: ignore[index]
                found = ready[sid] = (aead.encrypt, col + subject_context(binding, sid))  # type: ignore[index,arg-type]
            encrypt, aad = found
            ctr = pack(counter)
            counter += 1
            out.append(prefix + ctr + encrypt(salt + ctr, v, aad))
        return out

    def wipe(self) -> None:
        self._aeads.clear()


class SubjectCellDecryptor:
    """Decrypts per-subject cells. ``dek_lookup(dek_id)`` returns the partition DEK (``KeyError`` if unknown);
    subject keys are given per call (looked up per batch by the caller). A subject whose key is ``None`` in
    ``subject_keys`` is *erased*: its cells come back as ``None`` and their rows are reported."""

    def __init__(self, dek_lookup: Callable[[bytes], bytes | bytearray]) -> None:
        self._lookup = dek_lookup
        self._deks: dict[bytes, bytes] = {}
        self._aeads: dict[tuple[bytes, bytes], AESGCM] = {}

    def __repr__(self) -> str:
        return f"SubjectCellDecryptor(cached={len(self._aeads)})"

    def _dek(self, dek_id: bytes, at: str) -> bytes:
        dek = self._deks.get(dek_id)
        if dek is None:
            try:
                found = self._lookup(dek_id)
            except KeyError:
                raise UnknownDataKeyError(f"unknown DEK {dek_id.hex()} (not in the key table) at {at}") from None
            dek = self._deks[dek_id] = bytes(found)
        return dek

    def decrypt_rows(
        self,
        cells: Sequence[bytes | None],
        column: str,
        binding: bytes,
        subject_ids: Sequence[bytes | None],
        subject_keys: Mapping[bytes, bytes | bytearray | None],
        *,
        where: str = "",
    ) -> tuple[list[bytes | None], list[int]]:
        """The plaintexts of one column's cells (``None`` for nulls and erased subjects) and the rows whose
        subject was erased.

        :raises DecryptionError: a cell does not authenticate (message names where, column, row, DEK id), or a
            row holding a cell has no subject id.
        :raises MalformedCellError: a cell that is not a per-subject cell.
        """
        if len(subject_ids) != len(cells):
            raise ConfigurationError(f"column '{column}': {len(subject_ids)} subject ids for {len(cells)} cells")
        col = _column_aad_part(column)
        out: list[bytes | None] = []
        append = out.append
        erased: list[int] = []
        # (header, subject id) -> (the derived key's decrypt, the AAD), or None for an erased subject: built once
        # per data key and person, so a cell costs a dict look-up, two slices and one AES-GCM call.
        ready: dict[tuple[bytes, bytes | None], tuple[Callable[..., bytes], bytes] | None] = {}
        for row, (cell, sid) in enumerate(zip(cells, subject_ids, strict=True)):
            if cell is None:
                append(None)
                continue
            header = cell[:HEADER_BYTES]
            found = ready.get((header, sid), False)
            if found is False:
                found = ready[(header, sid)] = self._prepare(cell, header, sid, col, binding, subject_keys,
                                                             column, where, row)
            if found is None:
                append(None)
                erased.append(row)
                continue
            if len(cell) < GCM_OVERHEAD:
                raise MalformedCellError(f"per-subject cell of {len(cell)} bytes is shorter than the "
                                         f"{GCM_OVERHEAD}-byte minimum at {_at(where, column, row)}")
            decrypt, aad = found  # type: ignore[misc]
            try:
                append(decrypt(cell[HEADER_BYTES:21], cell[21:], aad))
            except InvalidTag:
                raise _auth_failed(header[1:], _at(where, column, row)) from None
        return out, erased

    def _prepare(
        self, cell: bytes, header: bytes, sid: bytes | None, col: bytes, binding: bytes,
        subject_keys: Mapping[bytes, bytes | bytearray | None], column: str, where: str, row: int,
    ) -> tuple[Callable[..., bytes], bytes] | None:
        """The decrypt function and AAD of one (data key, person), checked; ``None`` if the person is erased."""
        if type(cell) is bytes and len(cell) >= GCM_OVERHEAD and cell[0] == SUBJECT_BYTE0 and sid is not None:
            key = subject_keys.get(sid, b"")
            if key is None:
                return None
            aead = self._aeads.get((header[1:], sid))
            if aead is not None and key:
                return aead.decrypt, header + col + subject_context(binding, sid)
        at = _at(where, column, row)  # the checked path: first sight of a (data key, person), or an error
        if not (type(cell) is bytes and len(cell) >= GCM_OVERHEAD and cell[0] == SUBJECT_BYTE0):
            found = parse_cell_header(cell, where=at)
            raise MalformedCellError(
                f"expected a per-subject cell ({AES_256_GCM_SUBJECT}) at {at}, found "
                f"{found.algorithm if found.algorithm != AES_256_GCM_SUBJECT else 'a truncated one'}"
            )
        if sid is None:
            raise DecryptionError(f"the subject id is null in a row holding a per-subject cell at {at}")
        if sid not in subject_keys:
            raise ConfigurationError(f"no subject key was looked up for one subject at {at}")
        key = subject_keys[sid]
        if key is None:
            return None
        dek_id = header[1:]
        aead = self._aeads.get((dek_id, sid))
        if aead is None:
            if len(self._aeads) > 65536:  # bounded: a batch of many people must not grow memory forever
                self._aeads.clear()
            aead = self._aeads[(dek_id, sid)] = AESGCM(derive_subject_cell_key(key, self._dek(dek_id, at)))
        return aead.decrypt, header + col + subject_context(binding, sid)

    def wipe(self) -> None:
        self._deks.clear()
        self._aeads.clear()
