"""Apache Iceberg tables through pyiceberg (0.9 and later; tested with 0.12 and a SQL catalog on SQLite).

* Snapshot files: ``table.scan(snapshot_id=...).plan_files()``; time travel by snapshot id
  (``snapshot_by_id``) or timestamp (``snapshot_as_of_timestamp``).
* Commits: one ``Transaction`` per commit, whose ``update_snapshot(snapshot_properties=...)`` producer
  ``fast_append()`` (new files only) or ``overwrite()`` (``delete_data_file`` + ``append_data_file``: spark_kms's
  files replace the ones they re-encrypt, in one snapshot). spark_kms writes its data files itself, with the
  table's field ids, and turns them into ``DataFile`` records with ``pyiceberg.io.pyarrow.parquet_file_to_data_file``
  (statistics from the Parquet footer; the table's metrics modes apply). The snapshot summary names the spark_kms
  run and batch, so a re-run can tell a committed batch.
* Properties: ``Transaction.set_properties`` / ``remove_properties`` (a metadata-only commit: no new snapshot).
* Expiry: ``table.maintenance.expire_snapshots().by_ids(...)`` removes snapshots from the metadata only;
  spark_kms then deletes the data files that only the expired snapshots referenced (pyiceberg does not).

Refused snapshots: a scan task with delete files (positional or equality deletes: merge-on-read). pyiceberg
0.12 writes none itself (its merge-on-read delete falls back to copy-on-write), but other engines (Spark,
Flink, Trino) do. A table addressed by its directory is read-only (no catalog to commit through).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from spark_kms.errors import ConfigurationError, JobError
from spark_kms.storage import Location, resolve
from spark_kms.tables._deps import require_pyiceberg
from spark_kms.tables.detect import ICEBERG, TableRef
from spark_kms.tables.options import iceberg_io_properties
from spark_kms.tables.snapshot import NewFile, Snapshot, TableFile, TableVersion

__all__ = ["IcebergBackend", "small_types"]

logger = logging.getLogger(__name__)

APP_ID_PROPERTY = "spark_kms.app_id"
BATCH_PROPERTY = "spark_kms.batch"


def small_types(schema: pa.Schema) -> pa.Schema:
    """``schema`` with large string / binary types as the plain ones (what spark_kms and Spark write)."""
    swap = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    return pa.schema([f.with_type(swap.get(f.type, f.type)) for f in schema], metadata=schema.metadata)


def table_uri_of(location: Location) -> str:
    """A file's URI as Iceberg metadata records it (``file://`` for local files)."""
    return f"file://{location.path}" if location.is_local else location.uri


class IcebergBackend:
    format = ICEBERG

    def __init__(self, ref: TableRef, *, must_exist: bool = True) -> None:
        require_pyiceberg()
        self.ref = ref
        self._io = iceberg_io_properties(resolve("/", ref.storage_options) if ref.storage_options else None,
                                         ref.table_options)
        self.catalog: Any = None
        self._table: Any = None
        if ref.catalog:
            from pyiceberg.catalog import load_catalog

            try:
                self.catalog = load_catalog(ref.catalog, **{**self._io, **dict(ref.catalog_properties)})
            except Exception as exc:  # noqa: BLE001 - pyiceberg raises ValueError, NotInstalledError, ...
                raise ConfigurationError(f"Iceberg catalog {ref.catalog!r} cannot be loaded: {exc}") from None
            if must_exist or self.catalog.table_exists(ref.identifier):
                self._table = self._load_from_catalog()
        else:
            from pyiceberg.table import StaticTable

            self._table = StaticTable.from_metadata(ref.metadata_location, properties=self._io)

    def _load_from_catalog(self) -> Any:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(self.ref.identifier)
        except NoSuchTableError:
            raise ConfigurationError(f"Iceberg table {self.ref.uri} does not exist in catalog {self.ref.catalog!r}") \
                from None

    def _load(self) -> Any:
        if self.catalog is not None:
            self._table = self._load_from_catalog()
        if self._table is None:
            raise ConfigurationError(f"Iceberg table {self.ref.uri} does not exist")
        return self._table

    def _writable(self) -> Any:
        if self.catalog is None:
            raise ConfigurationError(
                f"Iceberg table {self.ref.uri} is addressed by its directory: spark_kms reads it, but commits only "
                "through its catalog -- address it as iceberg://<catalog>/<namespace>.<table> with catalog_properties"
            )
        return self._load()

    @property
    def uri(self) -> str:
        return self.ref.uri

    @property
    def root(self) -> Location:
        return resolve(self._load().location(), self.ref.storage_options or None)

    @property
    def storage_location(self) -> Location:
        return self.root

    def exists(self) -> bool:
        if self.catalog is None:
            return self._table is not None
        return bool(self.catalog.table_exists(self.ref.identifier))

    def current_properties(self) -> dict[str, str]:
        return dict(self._load().properties)

    def file_location(self, relpath: str) -> Location:
        return self.root.join(relpath)

    def data_dir(self) -> Location:
        t = self._load()
        custom = t.properties.get("write.data.path")
        return resolve(custom, self.ref.storage_options or None) if custom else self.root.join("data")

    def field_ids(self) -> dict[str, int]:
        return {f.name: f.field_id for f in self._load().schema().fields}

    def required_columns(self) -> set[str]:
        return {f.name for f in self._load().schema().fields if f.required}

    def partition_columns(self) -> list[str]:
        from pyiceberg.transforms import IdentityTransform

        t = self._load()
        schema = t.schema()
        out = []
        for pf in t.spec().fields:
            if not isinstance(pf.transform, IdentityTransform):
                raise ConfigurationError(
                    f"Iceberg table {self.uri} is partitioned by {pf.transform} of a column: spark_kms writes "
                    "identity-partitioned (or unpartitioned) Iceberg tables; write this one with Spark + "
                    "ColumnEncryptor (docs/TABLES.md)"
                )
            out.append(schema.find_field(pf.source_id).name)
        return out

    # -- reading -----------------------------------------------------------------------

    def _snapshot_of(self, t: Any, version: TableVersion) -> Any:
        if version is None:
            return t.current_snapshot()
        if isinstance(version, bool):
            raise ConfigurationError(f"Iceberg table {self.uri}: bad snapshot {version!r}")
        if isinstance(version, int):
            snap = t.snapshot_by_id(version)
            if snap is None:
                known = [s.snapshot_id for s in t.snapshots()]
                raise ConfigurationError(f"Iceberg table {self.uri} has no snapshot {version} (snapshots: {known})")
            return snap
        if isinstance(version, str):
            try:
                version = datetime.fromisoformat(version.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigurationError(f"Iceberg table {self.uri}: {version!r} is not an ISO-8601 timestamp") from None
        if isinstance(version, datetime):
            if version.tzinfo is None:
                version = version.replace(tzinfo=timezone.utc)
            snap = t.snapshot_as_of_timestamp(int(version.timestamp() * 1000))
            if snap is None:
                raise ConfigurationError(f"Iceberg table {self.uri} has no snapshot as of {version.isoformat()}")
            return snap
        raise ConfigurationError(f"Iceberg table {self.uri}: a version is a snapshot id or a timestamp, got {version!r}")

    def snapshot(self, version: TableVersion = None) -> Snapshot:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        t = self._load()
        snap = self._snapshot_of(t, version)
        schema = t.schema()  # a read of the current snapshot sees the current schema (renames included)
        if version is not None and snap is not None and snap.schema_id is not None and snap.schema_id in t.schemas():
            schema = t.schemas()[snap.schema_id]  # time travel: the schema of the snapshot, as Spark reads it
        files: list[TableFile] = []
        if snap is not None:
            tasks = list(t.scan(snapshot_id=snap.snapshot_id).plan_files())
            deletes = sorted({d.file_path for task in tasks for d in task.delete_files})
            if deletes:
                raise ConfigurationError(
                    f"Iceberg table {self.uri} snapshot {snap.snapshot_id} has {len(deletes)} delete file(s) "
                    f"(positional or equality deletes, e.g. {deletes[0]}): reading its data files alone would return "
                    "deleted rows. spark_kms refuses it; compact the table first (Spark's rewrite_data_files with "
                    "delete-file-threshold, or rewrite_position_delete_files), or read it with an engine that "
                    "applies delete files"
                )
            for task in tasks:
                df = task.file
                files.append(TableFile(uri=str(df.file_path), path=str(df.file_path), size=int(df.file_size_in_bytes),
                                       rows=int(df.record_count), handle=df))
        files.sort(key=lambda f: f.path)
        partition_columns = []
        try:
            partition_columns = self.partition_columns()
        except ConfigurationError:
            partition_columns = []
        return Snapshot(table=self.ref, root=self.root, version=None if snap is None else snap.snapshot_id,
                        files=files, properties=dict(t.properties), schema=small_types(schema_to_pyarrow(schema)),
                        partition_columns=partition_columns,
                        timestamp_ms=None if snap is None else snap.timestamp_ms)

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for s in sorted(self._load().snapshots(), key=lambda s: s.timestamp_ms):
            extra = s.summary.additional_properties if s.summary is not None else {}
            out.append({
                "version": s.snapshot_id, "timestamp_ms": s.timestamp_ms,
                "operation": s.summary.operation.value if s.summary is not None else None,
                **{k: v for k, v in extra.items() if str(k).startswith("spark_kms.")},
            })
        return out[-limit:] if limit else out

    # -- committing --------------------------------------------------------------------

    def create_empty(self, schema: pa.Schema, partition_by: Sequence[str], properties: Mapping[str, str]) -> None:
        """Create the (empty) table in its catalog: spark_kms needs its field ids before writing files."""
        if self.catalog is None:
            raise ConfigurationError(f"Iceberg table {self.uri}: a table is created through a catalog")
        namespace = self.ref.identifier.rsplit(".", 1)[0]  # type: ignore[union-attr]
        self.catalog.create_namespace_if_not_exists(namespace)
        try:
            tx = self.catalog.create_table_transaction(self.ref.identifier, schema=schema,
                                                       properties=dict(properties))
            if partition_by:
                with tx.update_spec() as spec:
                    for column in partition_by:
                        spec.add_identity(column)
            tx.commit_transaction()
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"Iceberg table {self.uri}: creating the table failed: {exc}") from exc
        self._table = self._load_from_catalog()
        logger.info("Iceberg table %s created (partitioned by %s)", self.uri, list(partition_by))

    def create(self, schema: pa.Schema, partition_by: Sequence[str], adds: Sequence[NewFile],
               info: Mapping[str, str], properties: Mapping[str, str]) -> int | None:
        return self.commit_files(adds, (), data_change=True, info=info)

    def commit_files(
        self, adds: Sequence[NewFile], removes: Sequence[TableFile], *, data_change: bool, info: Mapping[str, str],
        app_txn: tuple[str, int] | None = None, schema: pa.Schema | None = None,
    ) -> int | None:
        from pyiceberg.io.pyarrow import parquet_file_to_data_file

        t = self._writable()
        summary = {k: str(v) for k, v in info.items()}
        if app_txn is not None:
            summary.update({APP_ID_PROPERTY: app_txn[0], BATCH_PROPERTY: str(int(app_txn[1]))})
        try:
            data_files = [parquet_file_to_data_file(t.io, t.metadata, table_uri_of(a.location)) for a in adds]
            with t.transaction() as tx:
                producer = tx.update_snapshot(snapshot_properties=summary)
                with (producer.overwrite() if removes else producer.fast_append()) as update:
                    for r in removes:
                        update.delete_data_file(r.handle)
                    for d in data_files:
                        update.append_data_file(d)
        except Exception as exc:  # noqa: BLE001 - CommitFailedException, ValueError (schema), ...
            raise JobError(f"Iceberg table {self.uri}: the commit failed, nothing of it is visible: {exc}") from exc
        snap = self._load().current_snapshot()
        logger.info("Iceberg table %s: committed snapshot %s (%d files added, %d removed)", self.uri,
                    snap.snapshot_id if snap else None, len(adds), len(removes))
        return None if snap is None else int(snap.snapshot_id)

    def set_properties(self, properties: Mapping[str, str], info: Mapping[str, str]) -> int | None:
        t = self._writable()
        setting = {k: str(v) for k, v in properties.items() if str(v) != ""}
        removing = [k for k, v in properties.items() if str(v) == "" and k in t.properties]
        try:
            tx = t.transaction()
            if setting:
                tx.set_properties(setting)
            if removing:
                tx.remove_properties(*removing)
            tx.commit_transaction()
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"Iceberg table {self.uri}: setting its properties failed: {exc}") from exc
        snap = self._load().current_snapshot()
        return None if snap is None else int(snap.snapshot_id)

    def committed(self, app_id: str, batch: int) -> bool:
        for s in self._load().snapshots():
            extra = s.summary.additional_properties if s.summary is not None else {}
            if extra.get(APP_ID_PROPERTY) == app_id and int(extra.get(BATCH_PROPERTY, -1)) >= batch:
                return True
        return False

    # -- maintenance -------------------------------------------------------------------

    def _files_of(self, t: Any, snapshots: Sequence[Any]) -> set[str]:
        out: set[str] = set()
        for snap in snapshots:
            for manifest in snap.manifests(io=t.io):
                for entry in manifest.fetch_manifest_entry(io=t.io, discard_deleted=True):
                    out.add(str(entry.data_file.file_path))
        return out

    def expire(self, retention_hours: float, dry_run: bool) -> dict[str, Any]:
        t = self._writable()
        current = t.current_snapshot()
        protected = {ref.snapshot_id for ref in t.metadata.refs.values()}
        cutoff = int((time.time() - float(retention_hours) * 3600) * 1000)
        expired = [s for s in t.snapshots() if s.timestamp_ms <= cutoff and s.snapshot_id not in protected
                   and (current is None or s.snapshot_id != current.snapshot_id)]
        kept = [s for s in t.snapshots() if s not in expired]
        doomed = sorted(self._files_of(t, expired) - self._files_of(t, kept))
        root = self.root
        doomed = [f for f in doomed if resolve(f, self.ref.storage_options or None).path.startswith(root.path)]
        if not dry_run and expired:
            t.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
            for f in doomed:
                resolve(f, self.ref.storage_options or None).delete_file()
            logger.info("Iceberg table %s: expired %d snapshots, deleted %d data files", self.uri, len(expired),
                        len(doomed))
        return {"snapshots_expired": [s.snapshot_id for s in expired], "files_deleted": doomed,
                "retention_hours": retention_hours, "dry_run": dry_run}
