"""The key table: JSON that tells a reader which wrapped DEK opens which cells (docs/FORMAT.md, "Key table").

Stored as UTF-8 JSON in the Parquet footer key-value metadata under :data:`KEY_TABLE_METADATA_KEY`::

    {"columns": {"<name>": {"algorithm": str, "arrow_type": str, "name": str, "source": str | null,
                            "row_binding": str (version 2, optional)}, ...},
     "deks": {"<dek_id hex>": {"algorithm": str, "created_at": str, "dek_id": str,
                               "encryption_context": {str: str}, "key_id": str, "key_uri": str,
                               "key_version": str, "wrapped_dek": base64}, ...},
     "format_version": 2,
     "writer": "spark_kms 0.1.0"}

and, dataset-wide, the manifest file :data:`DATASET_MANIFEST_NAME` (``{"format_version": 1, "deks": {...}}``)
whose DEK entries take precedence over footer entries with the same ``dek_id`` (the rewrap job writes it).
A version-2 manifest may also hold the dataset's *declaration* (which columns are encrypted, and how) and an
``auth`` object: an HMAC-SHA256 over the whole manifest under a KMS-wrapped key (:class:`Manifest`).

Version 2 (docs/FORMAT.md section 9) authenticates the column specs: the AAD context of every GCM and SIV cell
of a version-2 key table is :func:`column_binding` of its column's spec (plus :func:`row_context` of the bound
column's value when the spec has ``row_binding``), so a spec changed in the footer makes the cells fail.

Encoding is canonical (sorted keys, no whitespace, ASCII), so equal tables give equal bytes. Decoding is strict
about every field it knows (type, hex, base64, algorithm, UTC timestamp) and ignores fields it does not know,
which is how later minor additions stay readable (the versioning rule in FORMAT.md).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spark_kms.crypto.cell import (
    AES_256_GCM,
    AES_256_GCM_SUBJECT,
    AES_256_SIV,
    DEK_BYTES,
    DEK_ID_BYTES,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    HMAC_SHA256_BIDX,
)
from spark_kms.errors import ConfigurationError, DecryptionError, FormatError, UnknownFormatVersionError

__all__ = [
    "DATASET_MANIFEST_NAME",
    "DECLARATION_PURPOSE",
    "DEK_ALGORITHMS",
    "KEY_TABLE_METADATA_KEY",
    "MANIFEST_MAC_ALGORITHM",
    "MANIFEST_MAC_INFO",
    "ColumnSpec",
    "Declaration",
    "DekEntry",
    "KeyTable",
    "Manifest",
    "COLUMN_ALGORITHMS",
    "authenticate_manifest",
    "column_binding",
    "decode_manifest",
    "decode_manifest_document",
    "encode_manifest",
    "encode_signed_manifest",
    "manifest_mac",
    "row_context",
    "utc_now_iso",
]

KEY_TABLE_METADATA_KEY = "spark_kms.key_table"
DATASET_MANIFEST_NAME = "_spark_kms_keys.json"

#: algorithms a DEK may be used for: GCM per-partition DEKs, the SIV DEK (also keys the blind index)
DEK_ALGORITHMS = frozenset({AES_256_GCM, AES_256_SIV})
#: algorithms an encrypted column may use
COLUMN_ALGORITHMS = frozenset({AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX, AES_256_GCM_SUBJECT})
#: the ``algorithm`` of the wrapped key that authenticates a manifest (never a data key: no cell uses it)
MANIFEST_MAC_ALGORITHM = "HMAC_SHA256"
_ENTRY_ALGORITHMS = DEK_ALGORITHMS | {MANIFEST_MAC_ALGORITHM}
#: ``purpose`` in the encryption context of a manifest's MAC key (the KMS authenticates the context)
DECLARATION_PURPOSE = "spark_kms.declaration"
#: HKDF ``info`` that turns the manifest's wrapped key into its HMAC-SHA256 key
MANIFEST_MAC_INFO = b"spark_kms/v2 manifest MAC"
_MAC_BYTES = 32
#: first byte of a version-2 column binding: never empty, so never equal to the version-1 (empty) context
_BINDING_V2 = b"\x02"
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

_HEX = frozenset("0123456789abcdef")


def _default_writer() -> str:
    # Imported late: spark_kms/__init__ may grow imports of its own, and this module must not cycle with it.
    from spark_kms import __version__

    return f"spark_kms {__version__}"


def utc_now_iso() -> str:
    """Current UTC time as the key table writes it: ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() != timezone.utc.utcoffset(None):
        return None
    return parsed


def _is_dek_id_hex(text: object) -> bool:
    return isinstance(text, str) and len(text) == 2 * DEK_ID_BYTES and set(text) <= _HEX


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DekEntry:
    """One wrapped data key.

    :param dek_id: 16 lower-case hex characters, the id carried in cell headers.
    :param key_uri: the KMS key URI that wrapped it (``local://alias/pii``, ``aws-kms://arn:...``).
    :param key_id: the KMS's own id of the wrapping key (ARN, resource name, key id).
    :param key_version: the wrapping key version (as the KMS names it); rotation jobs compare it.
    :param wrapped_dek: the KMS ciphertext of the DEK (base64 in JSON). Opaque to this module.
    :param encryption_context: sent to the KMS on unwrap; must match what was sent on wrap.
    :param algorithm: the cell algorithm the DEK serves: ``AES_256_GCM_IV12_TAG16`` for per-partition DEKs,
        ``AES_256_SIV`` for the deterministic DEK (which also keys blind indexes); ``HMAC_SHA256`` only for the
        key that authenticates a manifest (never in a key table's ``deks``).
    :param created_at: ISO-8601 UTC time the DEK was generated.
    """

    dek_id: str
    key_uri: str
    key_id: str
    key_version: str
    wrapped_dek: bytes
    encryption_context: Mapping[str, str]
    algorithm: str
    created_at: str

    def __post_init__(self) -> None:
        problem = _dek_entry_problem(self)
        if problem:
            raise ConfigurationError(f"invalid DekEntry: {problem}")
        # Own copies: bytes for the wrapped key, a plain dict for the context (callers may pass a mutable map).
        object.__setattr__(self, "wrapped_dek", bytes(self.wrapped_dek))
        object.__setattr__(self, "encryption_context", dict(self.encryption_context))

    def __repr__(self) -> str:
        # The wrapped DEK is not secret, but it is long and useless in logs.
        return (
            f"DekEntry(dek_id={self.dek_id!r}, key_uri={self.key_uri!r}, key_version={self.key_version!r}, "
            f"algorithm={self.algorithm!r}, created_at={self.created_at!r})"
        )

    def replace(self, **changes: Any) -> DekEntry:
        """A copy with some fields changed (``dataclasses.replace``), e.g. after a rewrap."""
        return dataclasses.replace(self, **changes)

    @property
    def dek_id_bytes(self) -> bytes:
        return bytes.fromhex(self.dek_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "created_at": self.created_at,
            "dek_id": self.dek_id,
            "encryption_context": dict(self.encryption_context),
            "key_id": self.key_id,
            "key_uri": self.key_uri,
            "key_version": self.key_version,
            "wrapped_dek": base64.b64encode(self.wrapped_dek).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: object, *, where: str = "") -> DekEntry:
        """Parse one JSON DEK entry; :class:`FormatError` names ``where`` and the bad field."""
        at = f" in {where}" if where else ""
        if not isinstance(data, dict):
            raise FormatError(f"DEK entry{at} is not a JSON object")
        values: dict[str, Any] = {}
        for name in ("dek_id", "key_uri", "key_id", "key_version", "algorithm", "created_at", "wrapped_dek"):
            value = data.get(name)
            if not isinstance(value, str):
                missing = "missing" if name not in data else f"not a string ({type(value).__name__})"
                raise FormatError(f"field '{name}' of DEK entry{at} is {missing}")
            values[name] = value
        try:
            values["wrapped_dek"] = base64.b64decode(values["wrapped_dek"], validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(
                f"field 'wrapped_dek' of DEK {values['dek_id']!r}{at} is not valid base64"
            ) from None
        context = data.get("encryption_context")
        if not isinstance(context, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in context.items()
        ):
            raise FormatError(
                f"field 'encryption_context' of DEK {values['dek_id']!r}{at} is not an object of strings"
            )
        values["encryption_context"] = context
        problem = _dek_entry_problem(values)
        if problem:
            raise FormatError(f"DEK entry{at}: {problem}")
        return cls(**values)


def _dek_entry_problem(entry: DekEntry | Mapping[str, Any]) -> str | None:
    """The first rule a DEK entry breaks, as a message naming the field; None if it follows them all."""
    get = entry.get if isinstance(entry, Mapping) else lambda name: getattr(entry, name)
    dek_id = get("dek_id")
    if not _is_dek_id_hex(dek_id):
        return f"field 'dek_id' must be {2 * DEK_ID_BYTES} lower-case hex characters"
    for name in ("key_uri", "key_id", "key_version", "algorithm", "created_at"):
        if not isinstance(get(name), str):
            return f"field '{name}' of DEK {dek_id} must be a string"
    if not get("key_uri"):
        return f"field 'key_uri' of DEK {dek_id} is empty"
    wrapped = get("wrapped_dek")
    if not isinstance(wrapped, (bytes, bytearray)) or not wrapped:
        return f"field 'wrapped_dek' of DEK {dek_id} must be non-empty bytes"
    context = get("encryption_context")
    if not isinstance(context, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        return f"field 'encryption_context' of DEK {dek_id} must map strings to strings"
    if get("algorithm") not in _ENTRY_ALGORITHMS:
        return f"field 'algorithm' of DEK {dek_id} must be one of {sorted(_ENTRY_ALGORITHMS)}, got {get('algorithm')!r}"
    if _parse_utc(get("created_at")) is None:
        return f"field 'created_at' of DEK {dek_id} must be an ISO-8601 UTC time, got {get('created_at')!r}"
    return None


@dataclass(frozen=True)
class ColumnSpec:
    """How one column is encrypted.

    :param name: the column name as stored (for a blind index: the index column).
    :param algorithm: ``AES_256_GCM_IV12_TAG16``, ``AES_256_SIV`` or ``HMAC_SHA256_128``.
    :param arrow_type: the original Arrow type as ``str(pa_type)`` ("string", "int64", "date32[day]"); decryption
        casts the UTF-8 plaintext back to it. For a blind index: the type of its source column.
    :param source: for a blind-index column, the column it indexes; ``None`` otherwise.
    :param row_binding: (format version 2) the plain column whose value, row by row, is part of each cell's
        associated data, so a cell moved to another row fails to authenticate; ``None`` when cells are not
        bound to rows. Only for GCM and SIV columns.
    :param subject: (``AES_256_GCM_SUBJECT`` columns only) the plain column holding each row's data subject id,
        whose key in the subject key store the cell's key is derived from (docs/FORMAT.md section 15).
    :param subject_store: (with ``subject``) the id of that subject key store, 32 lower-case hex characters.
    """

    name: str
    algorithm: str
    arrow_type: str
    source: str | None = None
    row_binding: str | None = None
    subject: str | None = None
    subject_store: str | None = None

    def __post_init__(self) -> None:
        problem = _column_problem(self.name, self.algorithm, self.arrow_type, self.source, self.row_binding,
                                  self.subject, self.subject_store)
        if problem:
            raise ConfigurationError(f"invalid ColumnSpec: {problem}")

    @property
    def decryptable(self) -> bool:
        """GCM and SIV columns decrypt; a blind index is one-way."""
        return self.algorithm != HMAC_SHA256_BIDX

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "algorithm": self.algorithm,
            "arrow_type": self.arrow_type,
            "name": self.name,
            "source": self.source,
        }
        if self.row_binding is not None:  # absent rather than null: version-1 tables keep their bytes
            out["row_binding"] = self.row_binding
        if self.subject is not None:  # absent unless per-subject: older tables keep their bytes
            out["subject"] = self.subject
            out["subject_store"] = self.subject_store
        return out

    @classmethod
    def from_dict(cls, data: object, *, where: str = "") -> ColumnSpec:
        at = f" in {where}" if where else ""
        if not isinstance(data, dict):
            raise FormatError(f"column entry{at} is not a JSON object")
        problem = _column_problem(
            data.get("name"), data.get("algorithm"), data.get("arrow_type"), data.get("source"),
            data.get("row_binding"), data.get("subject"), data.get("subject_store"),
        )
        if problem:
            raise FormatError(f"column entry{at}: {problem}")
        return cls(
            name=data["name"],
            algorithm=data["algorithm"],
            arrow_type=data["arrow_type"],
            source=data.get("source"),
            row_binding=data.get("row_binding"),
            subject=data.get("subject"),
            subject_store=data.get("subject_store"),
        )


def _utf8_len(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _column_problem(
    name: object, algorithm: object, arrow_type: object, source: object, row_binding: object = None,
    subject: object = None, subject_store: object = None,
) -> str | None:
    if not isinstance(name, str) or not name:
        return "field 'name' must be a non-empty string"
    if algorithm not in COLUMN_ALGORITHMS:
        return f"field 'algorithm' of column '{name}' must be one of {sorted(COLUMN_ALGORITHMS)}, got {algorithm!r}"
    if not isinstance(arrow_type, str) or not arrow_type:
        return f"field 'arrow_type' of column '{name}' must be a non-empty string"
    size = _utf8_len(arrow_type)
    if size is None or size > _U16_MAX:
        return f"field 'arrow_type' of column '{name}' must be UTF-8 text of at most {_U16_MAX} bytes"
    if algorithm == HMAC_SHA256_BIDX:
        if not isinstance(source, str) or not source:
            return f"field 'source' of blind-index column '{name}' must name the column it indexes"
    elif source is not None:
        return f"field 'source' of column '{name}' must be null unless the column is a blind index"
    if row_binding is not None:
        if algorithm == HMAC_SHA256_BIDX:
            return f"field 'row_binding' of blind-index column '{name}' must be absent: an index is not bound to rows"
        size = _utf8_len(row_binding) if isinstance(row_binding, str) else None
        if not row_binding or size is None or size > _U16_MAX:
            return f"field 'row_binding' of column '{name}' must name a column (UTF-8, at most {_U16_MAX} bytes)"
        if row_binding == name:
            return f"field 'row_binding' of column '{name}' must name another column, not the column itself"
    if algorithm == AES_256_GCM_SUBJECT:
        size = _utf8_len(subject) if isinstance(subject, str) else None
        if not subject or size is None or size > _U16_MAX or subject == name:
            return (f"field 'subject' of per-subject column '{name}' must name the column of subject ids "
                    f"(another column, UTF-8, at most {_U16_MAX} bytes)")
        if not (isinstance(subject_store, str) and len(subject_store) == 32
                and all(c in "0123456789abcdef" for c in subject_store)):
            return f"field 'subject_store' of per-subject column '{name}' must be the store id (32 lower-case hex)"
        if row_binding is not None:
            return f"field 'row_binding' of per-subject column '{name}' must be absent: its subject binds it"
    elif subject is not None or subject_store is not None:
        return f"fields 'subject' and 'subject_store' of column '{name}' must be absent unless it is per-subject"
    return None


def column_binding(spec: ColumnSpec) -> bytes:
    """The version-2 AAD context of a GCM or SIV column (docs/FORMAT.md section 3)::

        0x02 || u16be(len(arrow_type)) || arrow_type || u16be(len(row_binding)) || row_binding

    (UTF-8; an empty row_binding when cells are not bound to rows). For a row-bound column, each cell's context
    continues with :func:`row_context`. The leading 0x02 keeps it distinct from the version-1 (empty) context.
    """
    arrow_type = spec.arrow_type.encode("utf-8")
    if spec.algorithm == AES_256_GCM_SUBJECT:
        # 0x03 || u16(arrow_type) || arrow_type || u16(subject column) || subject column; each cell's context
        # continues with its subject id (spark_kms.crypto.subject.subject_context, docs/FORMAT.md section 15).
        subject = (spec.subject or "").encode("utf-8")
        return b"\x03" + len(arrow_type).to_bytes(2, "big") + arrow_type + len(subject).to_bytes(2, "big") + subject
    bound = (spec.row_binding or "").encode("utf-8")
    return _BINDING_V2 + len(arrow_type).to_bytes(2, "big") + arrow_type + len(bound).to_bytes(2, "big") + bound


def row_context(binding: bytes, value: bytes | None) -> bytes:
    """``binding`` (of a row-bound column) followed by the bound column's plaintext in one row::

        0x00                               the bound value is null
        0x01 || u32be(len(value)) || value otherwise (the plaintext encoding of docs/FORMAT.md section 6)
    """
    if value is None:
        return binding + b"\x00"
    if len(value) > _U32_MAX:
        raise ConfigurationError(f"a row-binding value is at most {_U32_MAX} bytes, got {len(value)}")
    return binding + b"\x01" + len(value).to_bytes(4, "big") + bytes(value)


# --------------------------------------------------------------------------- table


@dataclass
class KeyTable:
    """DEK entries by dek_id hex, and encrypted columns by name, of one file (or a merged dataset).

    :param format_version: the version written by :meth:`to_json` (writers: :data:`FORMAT_VERSION`); a merged
        table has the lowest version of its parts.
    :param source_versions: the versions of the stored key tables this table was parsed or merged from; empty
        for a table built in code. Readers use it to choose the AAD rule of the cells (:meth:`aad_versions`).
    """

    deks: dict[str, DekEntry]
    columns: dict[str, ColumnSpec]
    format_version: int = FORMAT_VERSION
    writer: str = field(default_factory=_default_writer)
    source_versions: frozenset[int] = field(default_factory=frozenset, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.format_version, bool) or self.format_version not in FORMAT_VERSIONS:
            raise ConfigurationError(f"KeyTable.format_version must be one of {list(FORMAT_VERSIONS)}")
        for key, entry in self.deks.items():
            if not isinstance(entry, DekEntry) or key != entry.dek_id:
                raise ConfigurationError(f"KeyTable.deks must map each dek_id to its DekEntry (key {key!r})")
            if entry.algorithm == MANIFEST_MAC_ALGORITHM:
                raise ConfigurationError(f"DEK {key}: a {MANIFEST_MAC_ALGORITHM} key authenticates manifests, not cells")
        for key, spec in self.columns.items():
            if not isinstance(spec, ColumnSpec) or key != spec.name:
                raise ConfigurationError(
                    f"KeyTable.columns must map each name to its ColumnSpec (key {key!r})"
                )
        self.source_versions = frozenset(self.source_versions)

    def __repr__(self) -> str:
        return (
            f"KeyTable(format_version={self.format_version}, deks={sorted(self.deks)}, "
            f"columns={sorted(self.columns)}, writer={self.writer!r})"
        )

    # -- lookups used by readers

    def dek(self, dek_id: bytes | str) -> DekEntry:
        """The entry of a DEK id (bytes from a cell header, or hex); ``KeyError`` if absent."""
        return self.deks[dek_id.hex() if isinstance(dek_id, (bytes, bytearray)) else dek_id]

    def aad_versions(self, column: str, *, min_format_version: int = 1) -> tuple[int, ...]:
        """The AAD rules a reader tries, in order, for the cells of ``column`` (docs/FORMAT.md section 3).

        Version 2 only when the table was read from version-2 key tables alone, the column is bound to rows, or
        the reader asks for ``min_format_version=2``; otherwise version 2 then version 1 (a version-1 table, a
        table merged from both, or one built in code may hold cells of either rule).
        """
        spec = self.columns.get(column)
        strict = (
            min_format_version >= 2
            or (spec is not None and spec.row_binding is not None)
            or (bool(self.source_versions) and min(self.source_versions) >= 2)
        )
        return (2,) if strict else (2, 1)

    # -- codec

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": {name: spec.to_dict() for name, spec in self.columns.items()},
            "deks": {dek_id: entry.to_dict() for dek_id, entry in self.deks.items()},
            "format_version": self.format_version,
            "writer": self.writer,
        }

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, compact, ASCII) as UTF-8 bytes."""
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str, *, where: str = "") -> KeyTable:
        """Parse and validate a key table.

        :raises UnknownFormatVersionError: ``format_version`` is an integer other than 1 or 2.
        :raises FormatError: not JSON, or a missing / mistyped / invalid field (the message names ``where`` and it).
        """
        at = f" in {where}" if where else ""
        doc = _loads(data, "key table", at)
        version = _check_version(doc, "key table", at)
        writer = doc.get("writer", "")
        if not isinstance(writer, str):
            raise FormatError(f"field 'writer' of the key table{at} is not a string")
        deks = _decode_deks(doc, "key table", where)
        raw_columns = doc.get("columns")
        if not isinstance(raw_columns, dict):
            raise FormatError(f"field 'columns' of the key table{at} is missing or not an object")
        columns: dict[str, ColumnSpec] = {}
        for name, raw in raw_columns.items():
            spec = ColumnSpec.from_dict(raw, where=f"{where or 'key table'}, columns[{name!r}]")
            if spec.name != name:
                raise FormatError(f"column entry {name!r}{at} names a different column ({spec.name!r})")
            columns[name] = spec
        return cls(deks=deks, columns=columns, format_version=version, writer=writer,
                   source_versions=frozenset({version}))

    # -- combination

    def merge(self, other: KeyTable, *, where: str = "") -> KeyTable:
        """Union of two tables (e.g. the footers of a dataset's files).

        :raises FormatError: the same dek_id, or the same column, described differently.
        """
        at = f" in {where}" if where else ""
        deks = dict(self.deks)
        for dek_id, entry in other.deks.items():
            mine = deks.setdefault(dek_id, entry)
            if mine != entry:
                raise FormatError(f"DEK {dek_id} has two different key table entries{at}")
        columns = dict(self.columns)
        for name, spec in other.columns.items():
            mine_spec = columns.setdefault(name, spec)
            if mine_spec != spec:
                raise FormatError(
                    f"column '{name}' is described differently by two key tables{at} "
                    f"({_describe_spec(mine_spec)} vs {_describe_spec(spec)})"
                )
        return KeyTable(
            deks=deks, columns=columns, format_version=min(self.format_version, other.format_version),
            writer=self.writer, source_versions=self.source_versions | other.source_versions,
        )

    def with_overrides(self, entries: Mapping[str, DekEntry]) -> KeyTable:
        """A copy whose DEK entries are replaced (or added) by ``entries`` — the manifest precedence rule."""
        deks = dict(self.deks)
        for dek_id, entry in entries.items():
            if not isinstance(entry, DekEntry) or entry.dek_id != dek_id:
                raise ConfigurationError(
                    f"override entries must map each dek_id to its DekEntry (key {dek_id!r})"
                )
            deks[dek_id] = entry
        return KeyTable(
            deks=deks, columns=dict(self.columns), format_version=self.format_version, writer=self.writer,
            source_versions=self.source_versions,
        )


def _describe_spec(spec: ColumnSpec) -> str:
    text = f"{spec.algorithm}/{spec.arrow_type}"
    if spec.source is not None:
        text += f" of {spec.source}"
    if spec.row_binding is not None:
        text += f" bound to {spec.row_binding}"
    return text


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Declaration:
    """A dataset's declaration of its encrypted columns (manifest version 2, always authenticated).

    :param columns: every column that must be encrypted in every file that has it, with its exact spec.
    :param min_format_version: files whose key table has a lower version are refused.
    """

    columns: Mapping[str, ColumnSpec]
    min_format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        columns = dict(self.columns)
        for key, spec in columns.items():
            if not isinstance(spec, ColumnSpec) or key != spec.name:
                raise ConfigurationError(f"Declaration.columns must map each name to its ColumnSpec (key {key!r})")
        if isinstance(self.min_format_version, bool) or self.min_format_version not in FORMAT_VERSIONS:
            raise ConfigurationError(f"Declaration.min_format_version must be one of {list(FORMAT_VERSIONS)}")
        object.__setattr__(self, "columns", columns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": {name: spec.to_dict() for name, spec in sorted(self.columns.items())},
            "min_format_version": self.min_format_version,
        }

    @classmethod
    def from_dict(cls, data: object, *, where: str = "") -> Declaration:
        at = f" in {where}" if where else ""
        if not isinstance(data, dict):
            raise FormatError(f"field 'declaration' of the manifest{at} is not a JSON object")
        raw = data.get("columns")
        if not isinstance(raw, dict):
            raise FormatError(f"field 'declaration.columns' of the manifest{at} is missing or not an object")
        columns = {}
        for name, entry in raw.items():
            spec = ColumnSpec.from_dict(entry, where=f"{where or 'manifest'}, declaration.columns[{name!r}]")
            if spec.name != name:
                raise FormatError(f"declared column {name!r}{at} names a different column ({spec.name!r})")
            columns[name] = spec
        version = data.get("min_format_version")
        if isinstance(version, bool) or version not in FORMAT_VERSIONS:
            raise FormatError(
                f"field 'declaration.min_format_version' of the manifest{at} must be one of {list(FORMAT_VERSIONS)}"
            )
        return cls(columns=columns, min_format_version=version)


@dataclass(frozen=True)
class Manifest:
    """A parsed dataset manifest.

    :param deks: DEK entries that replace footer entries with the same dek_id.
    :param format_version: 1 (entries only) or 2 (may add a declaration and authentication).
    :param declaration: the dataset's declaration, if any (version 2; a declaration is always authenticated).
    :param auth_key: the wrapped key whose HMAC authenticates the manifest (``algorithm`` ``HMAC_SHA256``,
        encryption context ``{"purpose": "spark_kms.declaration", "dataset": <root>}``), if authenticated.
    :param mac: the HMAC-SHA256 tag (32 bytes), if authenticated.
    :param signed: the bytes the tag covers: the canonical JSON of the manifest without ``auth.mac``.
    """

    deks: dict[str, DekEntry]
    format_version: int = 1
    declaration: Declaration | None = None
    auth_key: DekEntry | None = None
    mac: bytes | None = field(default=None, repr=False)
    signed: bytes = field(default=b"", repr=False)

    @property
    def authenticated(self) -> bool:
        return self.auth_key is not None


def encode_manifest(entries: Mapping[str, DekEntry] | Iterable[DekEntry]) -> bytes:
    """Encode an unauthenticated manifest ``{"deks": {...}, "format_version": 1}`` canonically."""
    return _dumps({"deks": _manifest_deks(entries), "format_version": 1})


def _manifest_deks(entries: Mapping[str, DekEntry] | Iterable[DekEntry]) -> dict[str, Any]:
    values = list(entries.values()) if isinstance(entries, Mapping) else list(entries)
    if isinstance(entries, Mapping):
        for dek_id, entry in entries.items():
            if not isinstance(entry, DekEntry) or entry.dek_id != dek_id:
                raise ConfigurationError(
                    f"manifest entries must map each dek_id to its DekEntry (key {dek_id!r})"
                )
    deks: dict[str, Any] = {}
    for entry in values:
        if not isinstance(entry, DekEntry):
            raise ConfigurationError(f"manifest entries are DekEntry objects, got {type(entry).__name__}")
        if entry.algorithm == MANIFEST_MAC_ALGORITHM:
            raise ConfigurationError(f"DEK {entry.dek_id}: a {MANIFEST_MAC_ALGORITHM} key is not a data key")
        if entry.dek_id in deks and deks[entry.dek_id] != entry.to_dict():
            raise ConfigurationError(
                f"DEK {entry.dek_id} appears twice in the manifest with different content"
            )
        deks[entry.dek_id] = entry.to_dict()
    return deks


def manifest_mac(key: bytes | bytearray, signed: bytes) -> bytes:
    """HMAC-SHA256 of ``signed`` under HKDF-SHA256(key, salt=None, info=MANIFEST_MAC_INFO, 32 bytes)."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != DEK_BYTES:
        raise ConfigurationError(f"a manifest MAC key is {DEK_BYTES} bytes")
    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MANIFEST_MAC_INFO).derive(bytes(key))
    return hmac.new(mac_key, signed, hashlib.sha256).digest()


def authenticate_manifest(document: Manifest, key: bytes | bytearray, dataset: str, *, where: str = "") -> None:
    """Check an authenticated manifest with the plaintext of its ``auth_key`` (unwrapped by the KMS, which
    also checks the key's encryption context): the tag must cover the manifest as read, and the key must
    have been made for declarations of ``dataset`` (the absolute dataset root).

    :raises DecryptionError: any of the three fails (the message says which, never key bytes).
    """
    at = where or "the manifest"
    if document.auth_key is None or document.mac is None:
        raise DecryptionError(f"{at} is not authenticated")
    if not hmac.compare_digest(manifest_mac(key, document.signed), document.mac):
        raise DecryptionError(
            f"{at} does not authenticate: it was changed after it was written (its declaration, data key "
            "entries or authentication), or its tag is not from this key"
        )
    context = document.auth_key.encryption_context
    if context.get("purpose") != DECLARATION_PURPOSE:
        raise DecryptionError(f"{at}: its authentication key was not made for a dataset declaration")
    if context.get("dataset") != dataset:
        raise DecryptionError(
            f"{at} was authenticated for dataset {context.get('dataset')!r}, not for {dataset!r}: a manifest "
            "copied from another dataset, or this dataset was moved. After a move, re-declare it "
            "(spark_kms.parquet.declare_encryption(path, kms_options=..., replace=True))"
        )


def encode_signed_manifest(
    entries: Mapping[str, DekEntry] | Iterable[DekEntry],
    declaration: Declaration | None,
    auth_key: DekEntry,
    key: bytes | bytearray,
) -> bytes:
    """Encode a version-2 manifest authenticated by ``key`` (the plaintext of the wrapped ``auth_key``)."""
    if not isinstance(auth_key, DekEntry) or auth_key.algorithm != MANIFEST_MAC_ALGORITHM:
        raise ConfigurationError(f"the manifest's auth key must be a DekEntry for {MANIFEST_MAC_ALGORITHM}")
    doc: dict[str, Any] = {"auth": {"key": auth_key.to_dict()}, "deks": _manifest_deks(entries), "format_version": 2}
    if declaration is not None:
        doc["declaration"] = declaration.to_dict()
    doc["auth"]["mac"] = manifest_mac(key, _dumps(doc)).hex()
    return _dumps(doc)


def decode_manifest(data: bytes | str, where: str = "") -> dict[str, DekEntry]:
    """The DEK entries of a dataset manifest (version 1 or 2); validation as :func:`decode_manifest_document`."""
    return decode_manifest_document(data, where).deks


def decode_manifest_document(data: bytes | str, where: str = "") -> Manifest:
    """Parse a dataset manifest of version 1 or 2 (the tag is *not* checked here: that needs the KMS).

    :raises UnknownFormatVersionError: ``format_version`` is an integer other than 1 or 2.
    :raises FormatError: a missing / mistyped / invalid field, a version-1 manifest with a declaration, or a
        declaration without authentication (the message names ``where`` and the field).
    """
    at = f" in {where}" if where else ""
    doc = _loads(data, "manifest", at)
    version = _check_version(doc, "manifest", at)
    deks = _decode_deks(doc, "manifest", where)
    declaration_doc, auth = doc.get("declaration"), doc.get("auth")
    if version == 1:
        if declaration_doc is not None or auth is not None:
            raise FormatError(f"the manifest{at} has format_version 1 but a declaration or auth field (version 2)")
        return Manifest(deks=deks, format_version=1)
    declaration = None if declaration_doc is None else Declaration.from_dict(declaration_doc, where=where)
    if auth is None:
        if declaration is not None:
            raise FormatError(
                f"the manifest{at} holds a declaration without authentication (field 'auth'): it is refused"
            )
        return Manifest(deks=deks, format_version=2)
    if not isinstance(auth, dict):
        raise FormatError(f"field 'auth' of the manifest{at} is not a JSON object")
    key = DekEntry.from_dict(auth.get("key"), where=f"{where or 'manifest'}, auth.key")
    if key.algorithm != MANIFEST_MAC_ALGORITHM:
        raise FormatError(f"field 'auth.key.algorithm' of the manifest{at} must be {MANIFEST_MAC_ALGORITHM!r}")
    mac_hex = auth.get("mac")
    if not isinstance(mac_hex, str) or len(mac_hex) != 2 * _MAC_BYTES or not set(mac_hex) <= _HEX:
        raise FormatError(f"field 'auth.mac' of the manifest{at} must be {2 * _MAC_BYTES} lower-case hex characters")
    unsigned = {**doc, "auth": {k: v for k, v in auth.items() if k != "mac"}}
    return Manifest(
        deks=deks, format_version=2, declaration=declaration, auth_key=key, mac=bytes.fromhex(mac_hex),
        signed=_dumps(unsigned),
    )


# --------------------------------------------------------------------------- JSON plumbing


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _loads(data: bytes | str, what: str, at: str) -> dict[str, Any]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"the {what}{at} is not UTF-8") from None
    if not isinstance(data, str):
        raise FormatError(f"the {what}{at} is {type(data).__name__}, not JSON text")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise FormatError(f"the {what}{at} is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"the {what}{at} is not a JSON object")
    return doc


def _check_version(doc: dict[str, Any], what: str, at: str) -> int:
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FormatError(f"field 'format_version' of the {what}{at} is missing or not an integer")
    if version not in FORMAT_VERSIONS:
        raise UnknownFormatVersionError(
            f"the {what}{at} has format_version {version}; this release reads versions "
            f"{', '.join(map(str, FORMAT_VERSIONS))}"
        )
    return version


def _decode_deks(doc: dict[str, Any], what: str, where: str) -> dict[str, DekEntry]:
    at = f" in {where}" if where else ""
    raw = doc.get("deks")
    if not isinstance(raw, dict):
        raise FormatError(f"field 'deks' of the {what}{at} is missing or not an object")
    deks: dict[str, DekEntry] = {}
    for dek_id, raw_entry in raw.items():
        entry = DekEntry.from_dict(raw_entry, where=f"{where or what}, deks[{dek_id!r}]")
        if entry.algorithm == MANIFEST_MAC_ALGORITHM:
            raise FormatError(f"DEK entry {dek_id!r}{at} has algorithm {MANIFEST_MAC_ALGORITHM}, which no cell uses")
        if entry.dek_id != dek_id:
            raise FormatError(f"DEK entry under {dek_id!r}{at} carries dek_id {entry.dek_id!r}")
        deks[dek_id] = entry
    return deks
