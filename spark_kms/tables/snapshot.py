"""A table's snapshot as a list of data files, through the table's own library.

:func:`open_table` gives the format's backend (:mod:`spark_kms.tables._delta`, :mod:`spark_kms.tables._iceberg`);
:func:`snapshot_files` the data files of the current snapshot, or of a version / snapshot id / timestamp
(time travel). A snapshot whose correct reading needs more than its file list is **refused**, never read
wrongly: Delta deletion vectors, Delta column mapping (physical column names differ from the table's),
Iceberg positional or equality delete files; Iceberg columns renamed after a file was written are refused
when that file is read (:func:`check_file_columns`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from spark_kms.errors import ConfigurationError, FormatError
from spark_kms.storage import Location, StoragePath
from spark_kms.tables.detect import DELTA, TableRef, resolve_table

__all__ = [
    "NewFile",
    "Snapshot",
    "TableBackend",
    "TableFile",
    "TableVersion",
    "check_file_columns",
    "open_table",
    "snapshot_files",
]

logger = logging.getLogger(__name__)

#: a Delta version (int), an Iceberg snapshot id (int), or a timestamp (datetime or ISO-8601 text)
TableVersion = int | str | datetime | None

#: Parquet field metadata key holding an Iceberg field id
FIELD_ID_KEY = b"PARQUET:field_id"


@dataclass(frozen=True)
class TableFile:
    """One data file of a snapshot.

    :param uri: where it is (an absolute local path or a storage URI, for :func:`spark_kms.storage.resolve`).
    :param path: the file as the table's log names it (Delta: relative to the root; Iceberg: its URI).
    :param size: bytes, as the log records.
    :param rows: rows, as the log records (None when unrecorded).
    :param partition_values: Delta: the partition columns' values as text (None for null) -- they are not
        stored in the file; Iceberg: empty (partition source columns are in the file).
    :param handle: the library's own record of the file (Iceberg ``DataFile``), for commits.
    """

    uri: str
    path: str
    size: int
    rows: int | None
    partition_values: Mapping[str, str | None] = field(default_factory=dict)
    handle: Any = field(default=None, repr=False, compare=False, hash=False)


@dataclass
class Snapshot:
    """A table snapshot: its version (Delta version or Iceberg snapshot id; None for a table without
    one), data files, properties and logical schema (partition columns included)."""

    table: TableRef
    root: Location
    version: int | None
    files: list[TableFile]
    properties: dict[str, str]
    schema: pa.Schema
    partition_columns: list[str]
    timestamp_ms: int | None = None

    @property
    def format(self) -> str:
        return self.table.format


@dataclass
class NewFile:
    """A data file spark_kms wrote, to be committed.

    :param location: where it is.
    :param relpath: relative to the table root (``/``-separated).
    :param size: bytes.
    :param rows: rows.
    :param partition_values: Delta partition values as text.
    :param stats: Delta ``stats`` JSON (numRecords, nullCount, min/maxValues of plain columns).
    """

    location: Location
    relpath: str
    size: int
    rows: int
    partition_values: dict[str, str | None] = field(default_factory=dict)
    stats: str = ""


class TableBackend(Protocol):
    """What spark_kms needs of a table library (one implementation per format)."""

    ref: TableRef
    format: str

    @property
    def root(self) -> Location: ...

    @property
    def storage_location(self) -> Location: ...

    def exists(self) -> bool: ...

    def snapshot(self, version: TableVersion = None) -> Snapshot: ...

    def current_properties(self) -> dict[str, str]: ...

    def commit_files(
        self, adds: Sequence[NewFile], removes: Sequence[TableFile], *, data_change: bool, info: Mapping[str, str],
        app_txn: tuple[str, int] | None = None, schema: pa.Schema | None = None,
    ) -> int | None: ...

    def create(self, schema: pa.Schema, partition_by: Sequence[str], adds: Sequence[NewFile],
               info: Mapping[str, str], properties: Mapping[str, str]) -> int | None: ...

    def set_properties(self, properties: Mapping[str, str], info: Mapping[str, str]) -> int | None: ...

    def committed(self, app_id: str, batch: int) -> bool: ...

    def history(self, limit: int | None = None) -> list[dict[str, Any]]: ...

    def file_location(self, relpath: str) -> Location: ...

    def data_dir(self) -> Location: ...

    def expire(self, retention_hours: float, dry_run: bool) -> dict[str, Any]: ...

    def field_ids(self) -> dict[str, int]: ...

    def required_columns(self) -> set[str]: ...


def open_table(
    table: StoragePath | TableRef,
    *,
    format: str | None = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    must_exist: bool = True,
) -> TableBackend:
    """The backend of a table (see :func:`spark_kms.tables.detect.resolve_table` for the forms)."""
    ref = resolve_table(table, format=format, storage_options=storage_options, catalog_properties=catalog_properties,
                        table_options=table_options, must_exist=must_exist)
    if ref.format == DELTA:
        from spark_kms.tables._delta import DeltaBackend

        return DeltaBackend(ref)
    from spark_kms.tables._iceberg import IcebergBackend

    return IcebergBackend(ref, must_exist=must_exist)


def snapshot_files(
    table: StoragePath | TableRef,
    version: TableVersion = None,
    *,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
) -> list[str]:
    """The data files (URIs) of the table's current snapshot, or of ``version`` (time travel).

    :raises ConfigurationError: the snapshot needs more than its files to be read correctly (deletion
        vectors, delete files, column mapping): the message says what and how to get rid of it.
    """
    backend = open_table(table, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options)
    return [f.uri for f in backend.snapshot(version).files]


def check_file_columns(snapshot: Snapshot, file: TableFile, schema: pa.Schema) -> None:
    """Refuse a data file whose columns are named otherwise than the table names them now (an Iceberg column
    renamed after the file was written: its field id names another column). The cells of an encrypted column
    are bound to the name they were written under, and spark_kms reads files by name."""
    if snapshot.format == DELTA:
        return
    by_id: dict[int, str] = {}
    for f in snapshot.schema:
        raw = (f.metadata or {}).get(FIELD_ID_KEY)
        if raw is not None:
            by_id[int(raw)] = f.name
    for f in schema:
        raw = (f.metadata or {}).get(FIELD_ID_KEY)
        if raw is None:
            continue
        current = by_id.get(int(raw))
        if current is not None and current != f.name:
            raise ConfigurationError(
                f"table {snapshot.table.uri}: file {file.uri} stores column {current!r} (field id {int(raw)}) "
                f"under its former name {f.name!r}: the table renamed the column after the file was written, "
                "and spark_kms reads files by name (encrypted cells are bound to the name they were written "
                "under). Rename it back, or rewrite the table's data with its own engine before using spark_kms"
            )


def partition_text(value: Any) -> str | None:
    """A partition value as Delta's log writes it (text; None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bytes):
        raise FormatError("binary partition values are not supported")
    return str(value)
