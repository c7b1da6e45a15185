"""The key table: JSON that tells a reader which wrapped DEK opens which cells (docs/FORMAT.md, "Key table").

Stored as UTF-8 JSON in the Parquet footer key-value metadata under :data:`KEY_TABLE_METADATA_KEY`::

    {"columns": {"<name>": {"algorithm": str, "arrow_type": str, "name": str, "source": str | null}, ...},
     "deks": {"<dek_id hex>": {"algorithm": str, "created_at": str, "dek_id": str,
                               "encryption_context": {str: str}, "key_id": str, "key_uri": str,
                               "key_version": str, "wrapped_dek": base64}, ...},
     "format_version": 1,
     "writer": "spark_kms 0.1.0"}

and, dataset-wide, the manifest file :data:`DATASET_MANIFEST_NAME` (``{"format_version": 1, "deks": {...}}``)
whose DEK entries take precedence over footer entries with the same ``dek_id`` (the rewrap job writes it).

Encoding is canonical (sorted keys, no whitespace, ASCII), so equal tables give equal bytes. Decoding is strict
about every field it knows (type, hex, base64, algorithm, UTC timestamp) and ignores fields it does not know,
which is how later minor additions stay readable (the versioning rule in FORMAT.md).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from spark_kms.crypto.cell import (
    AES_256_GCM,
    AES_256_SIV,
    DEK_ID_BYTES,
    FORMAT_VERSION,
    HMAC_SHA256_BIDX,
)
from spark_kms.errors import ConfigurationError, FormatError, UnknownFormatVersionError

__all__ = [
    "DATASET_MANIFEST_NAME",
    "DEK_ALGORITHMS",
    "KEY_TABLE_METADATA_KEY",
    "ColumnSpec",
    "DekEntry",
    "KeyTable",
    "COLUMN_ALGORITHMS",
    "decode_manifest",
    "encode_manifest",
    "utc_now_iso",
]

KEY_TABLE_METADATA_KEY = "spark_kms.key_table"
DATASET_MANIFEST_NAME = "_spark_kms_keys.json"

#: algorithms a DEK may be used for: GCM per-partition DEKs, the SIV DEK (also keys the blind index)
DEK_ALGORITHMS = frozenset({AES_256_GCM, AES_256_SIV})
#: algorithms an encrypted column may use
COLUMN_ALGORITHMS = frozenset({AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX})

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
        ``AES_256_SIV`` for the deterministic DEK (which also keys blind indexes).
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
    if get("algorithm") not in DEK_ALGORITHMS:
        return f"field 'algorithm' of DEK {dek_id} must be one of {sorted(DEK_ALGORITHMS)}, got {get('algorithm')!r}"
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
    """

    name: str
    algorithm: str
    arrow_type: str
    source: str | None = None

    def __post_init__(self) -> None:
        problem = _column_problem(self.name, self.algorithm, self.arrow_type, self.source)
        if problem:
            raise ConfigurationError(f"invalid ColumnSpec: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "arrow_type": self.arrow_type,
            "name": self.name,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: object, *, where: str = "") -> ColumnSpec:
        at = f" in {where}" if where else ""
        if not isinstance(data, dict):
            raise FormatError(f"column entry{at} is not a JSON object")
        problem = _column_problem(
            data.get("name"), data.get("algorithm"), data.get("arrow_type"), data.get("source")
        )
        if problem:
            raise FormatError(f"column entry{at}: {problem}")
        return cls(
            name=data["name"],
            algorithm=data["algorithm"],
            arrow_type=data["arrow_type"],
            source=data.get("source"),
        )


def _column_problem(name: object, algorithm: object, arrow_type: object, source: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "field 'name' must be a non-empty string"
    if algorithm not in COLUMN_ALGORITHMS:
        return f"field 'algorithm' of column '{name}' must be one of {sorted(COLUMN_ALGORITHMS)}, got {algorithm!r}"
    if not isinstance(arrow_type, str) or not arrow_type:
        return f"field 'arrow_type' of column '{name}' must be a non-empty string"
    if algorithm == HMAC_SHA256_BIDX:
        if not isinstance(source, str) or not source:
            return f"field 'source' of blind-index column '{name}' must name the column it indexes"
    elif source is not None:
        return f"field 'source' of column '{name}' must be null unless the column is a blind index"
    return None


# --------------------------------------------------------------------------- table


@dataclass
class KeyTable:
    """DEK entries by dek_id hex, and encrypted columns by name, of one file (or a merged dataset)."""

    deks: dict[str, DekEntry]
    columns: dict[str, ColumnSpec]
    format_version: int = FORMAT_VERSION
    writer: str = field(default_factory=_default_writer)

    def __post_init__(self) -> None:
        for key, entry in self.deks.items():
            if not isinstance(entry, DekEntry) or key != entry.dek_id:
                raise ConfigurationError(f"KeyTable.deks must map each dek_id to its DekEntry (key {key!r})")
        for key, spec in self.columns.items():
            if not isinstance(spec, ColumnSpec) or key != spec.name:
                raise ConfigurationError(
                    f"KeyTable.columns must map each name to its ColumnSpec (key {key!r})"
                )

    def __repr__(self) -> str:
        return (
            f"KeyTable(format_version={self.format_version}, deks={sorted(self.deks)}, "
            f"columns={sorted(self.columns)}, writer={self.writer!r})"
        )

    # -- lookups used by readers

    def dek(self, dek_id: bytes | str) -> DekEntry:
        """The entry of a DEK id (bytes from a cell header, or hex); ``KeyError`` if absent."""
        return self.deks[dek_id.hex() if isinstance(dek_id, (bytes, bytearray)) else dek_id]

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

        :raises UnknownFormatVersionError: ``format_version`` is an integer other than 1.
        :raises FormatError: not JSON, or a missing / mistyped / invalid field (the message names ``where`` and it).
        """
        at = f" in {where}" if where else ""
        doc = _loads(data, "key table", at)
        _check_version(doc, "key table", at)
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
        return cls(deks=deks, columns=columns, format_version=FORMAT_VERSION, writer=writer)

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
                    f"({mine_spec.algorithm}/{mine_spec.arrow_type} vs {spec.algorithm}/{spec.arrow_type})"
                )
        return KeyTable(deks=deks, columns=columns, format_version=self.format_version, writer=self.writer)

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
            deks=deks, columns=dict(self.columns), format_version=self.format_version, writer=self.writer
        )


# --------------------------------------------------------------------------- manifest


def encode_manifest(entries: Mapping[str, DekEntry] | Iterable[DekEntry]) -> bytes:
    """Encode the dataset manifest ``{"deks": {...}, "format_version": 1}`` canonically."""
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
        if entry.dek_id in deks and deks[entry.dek_id] != entry.to_dict():
            raise ConfigurationError(
                f"DEK {entry.dek_id} appears twice in the manifest with different content"
            )
        deks[entry.dek_id] = entry.to_dict()
    return _dumps({"deks": deks, "format_version": FORMAT_VERSION})


def decode_manifest(data: bytes | str, where: str = "") -> dict[str, DekEntry]:
    """Parse a dataset manifest; same validation and errors as :meth:`KeyTable.from_json`."""
    at = f" in {where}" if where else ""
    doc = _loads(data, "manifest", at)
    _check_version(doc, "manifest", at)
    return _decode_deks(doc, "manifest", where)


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


def _check_version(doc: dict[str, Any], what: str, at: str) -> None:
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FormatError(f"field 'format_version' of the {what}{at} is missing or not an integer")
    if version != FORMAT_VERSION:
        raise UnknownFormatVersionError(
            f"the {what}{at} has format_version {version}; this release reads version {FORMAT_VERSION}"
        )


def _decode_deks(doc: dict[str, Any], what: str, where: str) -> dict[str, DekEntry]:
    at = f" in {where}" if where else ""
    raw = doc.get("deks")
    if not isinstance(raw, dict):
        raise FormatError(f"field 'deks' of the {what}{at} is missing or not an object")
    deks: dict[str, DekEntry] = {}
    for dek_id, raw_entry in raw.items():
        entry = DekEntry.from_dict(raw_entry, where=f"{where or what}, deks[{dek_id!r}]")
        if entry.dek_id != dek_id:
            raise FormatError(f"DEK entry under {dek_id!r}{at} carries dek_id {entry.dek_id!r}")
        deks[dek_id] = entry
    return deks
