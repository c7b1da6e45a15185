"""Where a table's wrapped data keys are, and the table key manifest (docs/FORMAT.md section 14).

A data file of a table carries its key table in one or both of two places:

* the **Parquet footer** (``spark_kms.key_table``, docs/FORMAT.md section 7): every file spark_kms's table
  writer (:mod:`spark_kms.tables.write`) and re-encrypt write;
* the **``_spark_kms_keys`` column**: on every row, the key table (JSON) of that row's cells, as
  :class:`spark_kms.spark.ml.ColumnEncryptor` emits it -- the only place when the file was written by another
  engine (Spark's ``df.write.format("delta")``, ``writeTo(...)``, delta-rs or pyiceberg from
  ``ColumnEncryptor`` output). spark_kms's own writers put the same table there too, so any engine reading
  the table rows gets the keys with them.

A file's key table is its footer's when there is one, else the union of the distinct values of its
``_spark_kms_keys`` column (read alone: it is dictionary-encoded, a few bytes per row group).

The **table key manifest** holds the DEK entries rewrap made (and that nothing else may hold, since data
files are immutable). It is one JSON object in the table's directory, content-addressed,
``<root>/_spark_kms/manifests/<sha256 of the content>.json``, in the dataset manifest's version-1 format
(docs/FORMAT.md section 8); the table property ``spark_kms.key_manifest`` (Delta ``configuration``, Iceberg
table properties) names the current one (empty or absent: none). **Precedence rule**, as for datasets: an
entry of the current manifest replaces the footer or column entry with the same DEK id; entries no file of
the snapshot read references open nothing and are ignored. Readers of an older snapshot (time travel) apply
the *current* manifest too: it keeps the entries of every data key still on storage until vacuum / expiry
prunes them (:func:`prune_entries`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spark_kms.crypto import KEY_TABLE_METADATA_KEY, DekEntry, KeyTable, decode_manifest, encode_manifest
from spark_kms.errors import ConfigurationError, FormatError, MissingKeyTableError
from spark_kms.parquet.dataset import check_required_encryption
from spark_kms.parquet.manifest import apply_manifest
from spark_kms.storage import Location, resolve
from spark_kms.tables.snapshot import Snapshot, TableFile, check_file_columns

__all__ = [
    "KEYS_COLUMN",
    "MANIFEST_DIR",
    "MANIFEST_PROPERTY",
    "TableKeys",
    "file_key_table",
    "load_table_keys",
    "merge_key_tables",
    "read_table_manifest",
    "write_table_manifest",
]

logger = logging.getLogger(__name__)

#: the column ColumnEncryptor (and spark_kms's table writer) adds: per row, the key table JSON of its cells
KEYS_COLUMN = "_spark_kms_keys"
#: table property naming the current key manifest object (relative to the table root)
MANIFEST_PROPERTY = "spark_kms.key_manifest"
#: where manifest objects live, below the table root (``_``: no table engine, vacuum or orphan-file clean-up
#: takes it for data)
MANIFEST_DIR = "_spark_kms/manifests"
_POINTER_RE = re.compile(r"^_spark_kms/manifests/([0-9a-f]{64})\.json$")
_KEY = KEY_TABLE_METADATA_KEY.encode("utf-8")


def merge_key_tables(documents: Iterable[str | bytes | None], *, where: str = KEYS_COLUMN) -> KeyTable:
    """The union of key-table JSON documents (a ``_spark_kms_keys`` column's distinct values)."""
    table = KeyTable(deks={}, columns={})
    for doc in documents:
        if doc is None:
            continue
        table = table.merge(KeyTable.from_json(doc, where=where), where=where)
    return table


def file_key_table(location: Location) -> tuple[KeyTable | None, str, list[str]]:
    """``(key table, source, column names)`` of one data file: source ``footer``, ``column`` or ``none``
    (no key table in either place: the file holds no spark_kms cells)."""
    try:
        with location.open_input_file() as fh:
            pf = pq.ParquetFile(fh)
            names = list(pf.schema_arrow.names)
            raw = (pf.metadata.metadata or {}).get(_KEY)
            if raw is not None:
                return KeyTable.from_json(raw, where=f"file {location.uri}"), "footer", names
            if KEYS_COLUMN not in names:
                return None, "none", names
            docs: set[str] = set()
            for batch in pf.iter_batches(columns=[KEYS_COLUMN], batch_size=65_536):
                docs.update(v for v in pc.unique(batch.column(0)).to_pylist() if v is not None)
    except FileNotFoundError:
        raise FormatError(f"data file {location.uri} of the table is missing from storage") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {location.uri} is not a readable Parquet file ({type(exc).__name__})") from None
    if not docs:
        return None, "none", names
    return merge_key_tables(sorted(docs), where=f"column {KEYS_COLUMN} of file {location.uri}"), "column", names


# -- the table key manifest ---------------------------------------------------------------


def manifest_pointer(properties: Mapping[str, str]) -> str:
    """The current manifest's path (relative to the table root) named by the table properties; "" if none."""
    pointer = str(properties.get(MANIFEST_PROPERTY, "") or "")
    if pointer and not _POINTER_RE.match(pointer):
        raise FormatError(
            f"table property {MANIFEST_PROPERTY}={pointer!r} is not a spark_kms manifest name "
            f"({MANIFEST_DIR}/<64 hex>.json)"
        )
    return pointer


def read_table_manifest(root: Location, properties: Mapping[str, str]) -> tuple[dict[str, DekEntry], str]:
    """``(entries, pointer)`` of the manifest the table properties name; ``({}, "")`` without one.

    :raises FormatError: the named object is missing, or its content does not hash to its name.
    """
    pointer = manifest_pointer(properties)
    if not pointer:
        return {}, ""
    loc = root.join(pointer)
    data = loc.read_bytes_or_none()
    if data is None:
        raise FormatError(
            f"the table's property {MANIFEST_PROPERTY} names key manifest {loc.uri}, which is missing: the "
            "table's re-wrapped data keys are lost (restore the object from a backup of the table directory)"
        )
    digest = _POINTER_RE.match(pointer).group(1)  # type: ignore[union-attr]
    if hashlib.sha256(data).hexdigest() != digest:
        raise FormatError(f"key manifest {loc.uri} does not hash to its name: it was changed after it was written")
    return decode_manifest(data, where=f"table key manifest {loc.uri}"), pointer


def write_table_manifest(root: Location, entries: Mapping[str, DekEntry]) -> str:
    """Write a manifest object holding ``entries`` (content-addressed: never replaced, only added) and return
    its pointer, the value for :data:`MANIFEST_PROPERTY`. An empty manifest is no object: ``""``."""
    if not entries:
        return ""
    data = encode_manifest(dict(sorted(entries.items())))
    pointer = f"{MANIFEST_DIR}/{hashlib.sha256(data).hexdigest()}.json"
    target = root.join(pointer)
    if not target.exists():
        target.write_bytes_atomic(data)
    logger.info("table %s: wrote key manifest %s (%d data key entries)", root.uri, pointer, len(entries))
    return pointer


def manifest_objects(root: Location) -> list[Location]:
    """Every manifest object in the table's directory."""
    return [e.location for e in root.join(MANIFEST_DIR).list_files(recursive=False, include_hidden=False)
            if re.match(r"^[0-9a-f]{64}\.json$", e.location.name)]


def prune_entries(entries: Mapping[str, DekEntry], used: Iterable[str]) -> dict[str, DekEntry]:
    keep = set(used)
    return {d: e for d, e in entries.items() if d in keep}


# -- the keys of a snapshot ---------------------------------------------------------------


@dataclass
class TableKeys:
    """The key tables of a snapshot's files and the table's current manifest (no KMS call to build)."""

    snapshot: Snapshot
    tables: dict[str, KeyTable]
    sources: dict[str, str]
    file_columns: dict[str, list[str]]
    manifest: dict[str, DekEntry] = field(default_factory=dict)
    manifest_pointer: str = ""
    plain_files: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[TableFile]:
        return [f for f in self.snapshot.files if f.uri in self.tables]

    def footer_deks(self) -> dict[str, DekEntry]:
        """Every DEK entry of every file (footer or column), by dek_id."""
        out: dict[str, DekEntry] = {}
        for table in self.tables.values():
            for dek_id, entry in table.deks.items():
                out.setdefault(dek_id, entry)
        return out

    def effective_deks(self) -> dict[str, DekEntry]:
        """The entries readers use: the files', replaced by the manifest's with the same dek_id."""
        return {d: self.manifest.get(d, e) for d, e in self.footer_deks().items()}

    def key_table(self) -> KeyTable:
        """Every file's key table merged, the manifest applied (what Spark's scan of the files needs)."""
        merged = KeyTable(deks={}, columns={})
        for uri in sorted(self.tables):
            merged = merged.merge(self.tables[uri], where=f"table {self.snapshot.table.uri}")
        return apply_manifest(merged, self.manifest)

    def key_table_for(self, uri: str, merged: KeyTable | None = None) -> KeyTable:
        """The key table a reader of one file uses: the table's keys and column specs with this file's format
        version (and so its AAD rule, docs/FORMAT.md section 3)."""
        table = self.key_table() if merged is None else merged
        own = self.tables[uri]
        return KeyTable(deks=table.deks, columns=table.columns, format_version=own.format_version,
                        writer=own.writer, source_versions=own.source_versions)

    def effective_table(self, uri: str) -> KeyTable:
        """One file's own key table with the manifest applied."""
        return apply_manifest(self.tables[uri], self.manifest)


def load_table_keys(
    snapshot: Snapshot,
    *,
    current_properties: Mapping[str, str] | None = None,
    missing_ok: bool = False,
    require_encrypted: Iterable[str] | None = None,
    min_format_version: int = 1,
    job: str = "",
) -> TableKeys:
    """Read every file's key table (footer or ``_spark_kms_keys`` column) and the table's current manifest.

    :param current_properties: the table's current properties (for a time-travel snapshot: the manifest
        is the current one); default the snapshot's.
    :param missing_ok: keep files without any key table (they hold no spark_kms cells) out instead of raising.
    :param require_encrypted: columns every file must store encrypted (else FormatError naming the file).
    :param min_format_version: 2 refuses files whose key table is of version 1.
    """
    prefix = f"{job}: " if job else ""
    if isinstance(require_encrypted, str):
        raise ConfigurationError(f"{prefix}require_encrypted must be a sequence of column names, not a string")
    tables: dict[str, KeyTable] = {}
    sources: dict[str, str] = {}
    names: dict[str, list[str]] = {}
    plain: list[str] = []
    options = snapshot.root.options
    for f in snapshot.files:
        loc = resolve(f.uri, options or None)
        table, source, columns = file_key_table(loc)
        names[f.uri] = columns
        if table is None:
            if not missing_ok:
                raise MissingKeyTableError(
                    f"{prefix}file {f.uri} of table {snapshot.table.uri} has no spark_kms key table (not in its "
                    f"Parquet footer, no {KEYS_COLUMN} column): it holds no spark_kms cells"
                )
            plain.append(f.uri)
            continue
        if table.format_version < min_format_version:
            raise FormatError(
                f"{prefix}file {f.uri} has key table format_version {table.format_version}; this reader requires "
                f"{min_format_version} or later: re-encrypt the table to upgrade it"
            )
        check_required_encryption(table, require_encrypted or (), f"file {f.uri}", columns=columns)
        tables[f.uri] = table
        sources[f.uri] = source
    if require_encrypted:
        for uri in plain:
            check_required_encryption(KeyTable(deks={}, columns={}), require_encrypted, f"file {uri}",
                                      columns=names[uri])
    props = snapshot.properties if current_properties is None else current_properties
    manifest, pointer = read_table_manifest(snapshot.root, props)
    logger.debug("table %s %s: %d files with keys (%d from footers), %d manifest entries", snapshot.table.uri,
                 snapshot.version, len(tables), sum(1 for s in sources.values() if s == "footer"), len(manifest))
    return TableKeys(snapshot=snapshot, tables=tables, sources=sources, file_columns=names, manifest=manifest,
                     manifest_pointer=pointer, plain_files=plain)


def check_columns(keys: TableKeys, file: TableFile, schema: pa.Schema) -> None:
    """:func:`spark_kms.tables.snapshot.check_file_columns` for one of the snapshot's files."""
    check_file_columns(keys.snapshot, file, schema)
