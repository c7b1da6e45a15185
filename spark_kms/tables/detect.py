"""Which table a path is, and how spark_kms addresses tables.

Addressing (docs/TABLES.md, "Addressing a table"):

* **Delta Lake**: the table's root directory, a local path or a storage URI (``/data/people``,
  ``s3://bucket/people``). It is a Delta table when ``<root>/_delta_log/`` exists.
* **Apache Iceberg through a catalog**: ``iceberg://<catalog>/<namespace>.<table>`` (a nested namespace is
  dotted too: ``iceberg://prod/sales.eu.people``). The catalog is pyiceberg's ``load_catalog(<catalog>,
  **catalog_properties)``: its properties come from the ``catalog_properties=`` argument (e.g.
  ``{"type": "sql", "uri": "sqlite:////var/lib/cat.db", "warehouse": "s3://bucket/wh"}``), over pyiceberg's
  own configuration (``~/.pyiceberg.yaml``, ``PYICEBERG_CATALOG__<NAME>__<PROPERTY>`` variables). Every job
  works on such a table: commits go through the catalog.
* **Apache Iceberg by its directory**: a directory holding ``metadata/*.metadata.json``. Read-only (read,
  inspect, the Spark scan plan): which metadata file is current is the catalog's to say, so spark_kms takes
  ``metadata/version-hint.text`` if there is one, else the highest-numbered metadata file, and refuses to
  commit to such a table.

A path *inside* a table (a partition directory, a data file) is recognised too (:func:`find_table`): the
plain-directory jobs call :func:`refuse_table` so they never rewrite, rename or delete a file that a
table's log references.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from spark_kms.errors import ConfigurationError
from spark_kms.storage import Location, StoragePath, resolve

__all__ = [
    "DELTA",
    "ICEBERG",
    "ICEBERG_SCHEME",
    "TableRef",
    "detect_table",
    "find_table",
    "is_table_uri",
    "latest_iceberg_metadata",
    "refuse_table",
    "resolve_table",
]

logger = logging.getLogger(__name__)

DELTA = "delta"
ICEBERG = "iceberg"
FORMATS = (DELTA, ICEBERG)
ICEBERG_SCHEME = "iceberg://"
DELTA_LOG_DIR = "_delta_log"
ICEBERG_METADATA_DIR = "metadata"
_MAX_DEPTH = 64
_METADATA_RE = re.compile(r"^(?:v?(\d+))(?:-[^/]*)?\.metadata\.json$")

#: what each plain-directory job should call instead, for a table
TABLE_JOBS = {
    "inspect": "spark_kms.tables.inspect_table",
    "needs_rotation": "spark_kms.tables.inspect_table (its behind_files)",
    "rewrap": "spark_kms.tables.rewrap_table",
    "reencrypt": "spark_kms.tables.reencrypt_table",
    "decrypt": "spark_kms.tables.decrypt_table",
    "encrypt": "spark_kms.tables.encrypt_into_table",
    "read": "spark_kms.tables.read_table_decrypted (or the Spark scan plan of spark_kms.tables.table_scan)",
    "gc": "spark_kms.tables.vacuum_table (the table's own vacuum / snapshot expiry)",
    "declare": "nothing yet: declarations are not supported for tables",
}


@dataclass(frozen=True)
class TableRef:
    """A Delta or Iceberg table as spark_kms addresses it (see the module docs).

    :param format: ``"delta"`` or ``"iceberg"``.
    :param location: the table's root directory (Delta; Iceberg by directory); None for a catalog table
        until it is loaded (:attr:`location` of the loaded table is its ``location()``).
    :param catalog: the Iceberg catalog's name (``iceberg://<catalog>/...``).
    :param identifier: the Iceberg table identifier, ``namespace.table``.
    :param catalog_properties: properties for ``pyiceberg.catalog.load_catalog``; never shown (may hold secrets).
    :param table_options: the table library's own options, over the storage-option mapping
        (:mod:`spark_kms.tables.options`); never shown.
    :param metadata_location: an Iceberg table addressed by directory: its current metadata file.
    """

    format: str
    location: Location | None
    catalog: str | None = None
    identifier: str | None = None
    catalog_properties: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)
    table_options: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)
    metadata_location: str | None = None
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigurationError(f"table format must be one of {list(FORMATS)}, got {self.format!r}")

    @property
    def uri(self) -> str:
        """How the table is named: ``iceberg://<catalog>/<identifier>``, or its root's URI."""
        if self.catalog:
            return f"{ICEBERG_SCHEME}{self.catalog}/{self.identifier}"
        return self.location.uri if self.location is not None else "?"

    @property
    def writable(self) -> bool:
        """Whether spark_kms may commit to it (Delta; Iceberg through a catalog)."""
        return self.format == DELTA or self.catalog is not None

    def __str__(self) -> str:
        return self.uri


def is_table_uri(path: object) -> bool:
    """Whether ``path`` is an ``iceberg://`` table URI."""
    return isinstance(path, str) and path.lower().startswith(ICEBERG_SCHEME)


def _parse_iceberg_uri(text: str) -> tuple[str, str]:
    rest = text[len(ICEBERG_SCHEME):]
    catalog, _, identifier = rest.partition("/")
    identifier = identifier.strip("/")
    if not catalog or not identifier or "." not in identifier or "/" in identifier:
        raise ConfigurationError(
            f"an Iceberg table URI is iceberg://<catalog>/<namespace>.<table>, got {text!r}"
        )
    return catalog, identifier


def _is_delta_root(loc: Location) -> bool:
    return loc.join(DELTA_LOG_DIR).is_dir()


def _iceberg_metadata_files(loc: Location) -> list[Location]:
    meta = loc.join(ICEBERG_METADATA_DIR)
    names = [e.location for e in meta.list_files(recursive=False)]
    return [f for f in names if f.name.endswith(".metadata.json") or f.name == "version-hint.text"]


def _is_iceberg_root(loc: Location) -> bool:
    return bool(_iceberg_metadata_files(loc))


def find_table(path: StoragePath, storage_options: Mapping[str, str] | str | None = None) -> tuple[str, Location] | None:
    """``(format, table root)`` of the table that ``path`` is, or is inside (a partition directory, a data
    file, the log directory); None for a plain directory or file. An ``iceberg://`` URI is always a table
    (``(iceberg, None)`` is not returned: use :func:`resolve_table` for those)."""
    if is_table_uri(path):
        raise ConfigurationError("find_table takes a path; an iceberg:// URI names a catalog table")
    loc = resolve(path, storage_options)
    info = loc.info()
    from pyarrow.fs import FileType

    if info.type == FileType.NotFound:
        return None
    current = loc if info.type == FileType.Directory else loc.parent
    for _ in range(_MAX_DEPTH):
        if current.name == DELTA_LOG_DIR:
            return DELTA, current.parent
        if _is_delta_root(current):
            return DELTA, current
        if _is_iceberg_root(current):
            return ICEBERG, current
        parent = current.parent
        if parent.path == current.path or not parent.path or parent.path in ("/", "."):
            break
        if not current.is_local and "/" not in current.path.strip("/"):
            break  # the bucket (container) itself
        current = parent
    return None


def detect_table(path_or_location: StoragePath, storage_options: Mapping[str, str] | str | None = None) -> str | None:
    """``"delta"``, ``"iceberg"`` or None: the format of the table ``path_or_location`` is (or is inside).

    ``iceberg://...`` URIs are Iceberg tables; a path is a Delta table when it (or an ancestor) holds
    ``_delta_log/``, an Iceberg table when it (or an ancestor) holds ``metadata/*.metadata.json``.
    """
    if is_table_uri(path_or_location):
        return ICEBERG
    found = find_table(path_or_location, storage_options)
    return found[0] if found else None


def refuse_table(path: StoragePath, job: str, storage_options: Mapping[str, str] | str | None = None) -> None:
    """Raise when ``path`` is (or is inside) a Delta or Iceberg table: the plain-directory code paths of
    ``job`` would rewrite, rename or delete files the table's log references and corrupt it.

    :raises ConfigurationError: naming the format, the table root and what to call instead.
    """
    if is_table_uri(path):
        fmt, root_text = ICEBERG, str(path)
    else:
        try:
            found = find_table(path, storage_options)
        except ConfigurationError:
            return  # not a place spark_kms reaches: the job's own checks say so
        if found is None:
            return
        fmt, root = found
        root_text = root.uri
    instead = TABLE_JOBS.get(job, "the spark_kms.tables functions")
    what = "a Delta table" if fmt == DELTA else "an Iceberg table"
    inside = "" if is_table_uri(path) or resolve(path, storage_options).uri == root_text else f" (inside {root_text})"
    log = f"its transaction log is {root_text}/{DELTA_LOG_DIR}" if fmt == DELTA else "its snapshots are in its metadata"
    raise ConfigurationError(
        f"{job}: {path} is {what}{inside}: {log}, and the plain-directory {job} job would rewrite, rename or "
        f"delete files it references and corrupt the table. Use {instead} instead (docs/TABLES.md)"
    )


def latest_iceberg_metadata(root: Location) -> Location:
    """The current metadata file of an Iceberg table addressed by directory (see the module docs)."""
    files = _iceberg_metadata_files(root)
    hint = next((f for f in files if f.name == "version-hint.text"), None)
    if hint is not None:
        text = hint.read_bytes().decode("utf-8").strip()
        for name in (f"v{text}.metadata.json", f"{text}.metadata.json"):
            candidate = root.join(ICEBERG_METADATA_DIR, name)
            if candidate.exists():
                return candidate
    numbered = []
    for f in files:
        m = _METADATA_RE.match(f.name)
        if m:
            numbered.append((int(m.group(1)), f.info().mtime_ns or 0, f.path, f))
    if not numbered:
        raise ConfigurationError(f"{root.uri} has no Iceberg metadata file (metadata/*.metadata.json)")
    return max(numbered, key=lambda t: t[:3])[3]


def resolve_table(
    table: StoragePath | TableRef,
    *,
    format: str | None = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    must_exist: bool = True,
) -> TableRef:
    """The :class:`TableRef` of a table path, storage URI, ``iceberg://`` URI or TableRef.

    :param format: ``"delta"`` / ``"iceberg"``: required for a table that does not exist yet
        (``must_exist=False``); for an existing one, checked against what is found.
    :raises ConfigurationError: not a table (names the path and what makes a table), or another format.
    """
    if isinstance(table, TableRef):
        if format is not None and format != table.format:
            raise ConfigurationError(f"{table.uri} is a {table.format} table, not {format}")
        return table
    if format is not None and format not in FORMATS:
        raise ConfigurationError(f"format must be one of {list(FORMATS)}, got {format!r}")
    props = {str(k): str(v) for k, v in (catalog_properties or {}).items()}
    extra = {str(k): str(v) for k, v in (table_options or {}).items()}
    if is_table_uri(table):
        if format not in (None, ICEBERG):
            raise ConfigurationError(f"{table} is an Iceberg table URI, not a {format} table")
        catalog, identifier = _parse_iceberg_uri(str(table))
        opts = dict(resolve("/", storage_options).options)
        return TableRef(ICEBERG, None, catalog=catalog, identifier=identifier, catalog_properties=props,
                        table_options=extra, storage_options=opts)
    loc = resolve(os.fspath(table) if not isinstance(table, Location) else table, storage_options)
    if loc.is_local:
        loc = resolve(os.path.realpath(loc.path), loc.options)
    found = None
    if loc.exists():
        if _is_delta_root(loc):
            found = DELTA
        elif _is_iceberg_root(loc):
            found = ICEBERG
    if found is None:
        inside = find_table(loc) if loc.exists() else None
        if inside is not None:
            raise ConfigurationError(
                f"{loc.uri} is inside the {inside[0]} table {inside[1].uri}: address the table by its root"
            )
        if must_exist or format is None:
            raise ConfigurationError(
                f"{loc.uri} is not a Delta table (no {DELTA_LOG_DIR}/) nor an Iceberg table (no "
                f"{ICEBERG_METADATA_DIR}/*.metadata.json); an Iceberg table in a catalog is addressed as "
                "iceberg://<catalog>/<namespace>.<table>"
            )
        if format == ICEBERG:
            raise ConfigurationError(
                f"a new Iceberg table is created through a catalog: address it as "
                f"iceberg://<catalog>/<namespace>.<table> (with catalog_properties), not {loc.uri}"
            )
        return TableRef(DELTA, loc, table_options=extra, storage_options=dict(loc.options))
    if format is not None and format != found:
        raise ConfigurationError(f"{loc.uri} is a {found} table, not a {format} table")
    metadata = latest_iceberg_metadata(loc).uri if found == ICEBERG else None
    return TableRef(found, loc, table_options=extra, metadata_location=metadata, storage_options=dict(loc.options))
