"""Delta Lake tables through delta-rs (``deltalake`` 1.x).

* Snapshot files: ``DeltaTable.get_add_actions`` of the version loaded (``load_as_version`` for time travel).
* Commits: ``create_table_with_add_actions`` (a new table) and ``DeltaTable.create_write_transaction`` with
  ``AddAction`` / ``RemoveAction`` in ``append`` mode -- one commit that adds spark_kms's files and removes the
  ones they replace, with ``CommitProperties`` (``custom_metadata`` naming the spark_kms run, and an
  application transaction ``(app_id, batch)`` so a re-run can ask whether a batch was committed:
  ``DeltaTable.transaction_version``).
* Properties: ``alter.set_table_properties(..., raise_if_not_exists=False)`` -- delta-rs refuses keys it does
  not know otherwise (and refuses them in ``configuration=`` at creation).
* Vacuum: ``DeltaTable.vacuum``. It never deletes names starting with ``_`` (``_spark_kms/``, ``_spark_kms_runs/``).

Refused snapshots: a file with a deletion vector (``DeltaTable.deletion_vectors``), and column mapping
(``delta.columnMapping.mode`` ``name`` / ``id``: physical column names are not the table's).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa

from spark_kms.errors import ConfigurationError, JobError
from spark_kms.storage import Location
from spark_kms.tables._deps import require_deltalake
from spark_kms.tables.detect import DELTA, DELTA_LOG_DIR, TableRef
from spark_kms.tables.options import delta_storage_options
from spark_kms.tables.snapshot import NewFile, Snapshot, TableFile, TableVersion, partition_text

__all__ = ["DeltaBackend"]

logger = logging.getLogger(__name__)


class DeltaBackend:
    format = DELTA

    def __init__(self, ref: TableRef) -> None:
        require_deltalake()
        self.ref = ref
        assert ref.location is not None
        self._root = ref.location
        self.options = delta_storage_options(self._root, ref.table_options)

    @property
    def root(self) -> Location:
        return self._root

    @property
    def storage_location(self) -> Location:
        return self._root

    @property
    def uri(self) -> str:
        return self._root.uri

    def _dt(self, version: TableVersion = None) -> Any:
        from deltalake import DeltaTable

        try:
            dt = DeltaTable(self.uri, storage_options=self.options or None)
            if version is not None:
                dt.load_as_version(version)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"Delta table {self.uri}: bad version {version!r} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - delta-rs raises its own classes (DeltaError, TableNotFoundError)
            raise ConfigurationError(f"Delta table {self.uri}: cannot load {_what(version)}: {exc}") from None
        return dt

    def exists(self) -> bool:
        # Through spark_kms's storage layer: a table exists once its log holds a commit. (Also avoids delta-rs's
        # ``is_deltatable`` listing an absent prefix, which some S3-compatible servers answer in a way its client
        # waits on until it times out.)
        log = self._root.join(DELTA_LOG_DIR)
        return any(e.location.name.endswith(".json") or e.location.name.endswith(".parquet")
                   for e in log.list_files(recursive=False))

    def current_properties(self) -> dict[str, str]:
        return dict(self._dt().metadata().configuration)

    def file_location(self, relpath: str) -> Location:
        return self._root.join(relpath)

    def data_dir(self) -> Location:
        return self._root

    def field_ids(self) -> dict[str, int]:
        return {}

    def required_columns(self) -> set[str]:
        return {f.name for f in pa.schema(self._dt().schema().to_arrow()) if not f.nullable}

    # -- reading -----------------------------------------------------------------------

    def snapshot(self, version: TableVersion = None) -> Snapshot:
        dt = self._dt(version)
        metadata = dt.metadata()
        config = dict(metadata.configuration)
        mapping = config.get("delta.columnMapping.mode", "none")
        if mapping not in ("none", ""):
            raise ConfigurationError(
                f"Delta table {self.uri} uses column mapping (delta.columnMapping.mode={mapping}): its data files "
                "name columns by physical names that are not the table's. spark_kms refuses it rather than read "
                "columns wrongly; rewrite the table without column mapping to use spark_kms"
            )
        protocol = dt.protocol()
        if "deletionVectors" in (protocol.reader_features or []):
            vectors = pa.table(dt.deletion_vectors())
            if vectors.num_rows:
                files = sorted(str(p) for p in vectors.column("filepath").to_pylist())
                raise ConfigurationError(
                    f"Delta table {self.uri} {_what(version)} has deletion vectors on {len(files)} data file(s) "
                    f"(e.g. {files[0]}): reading its files alone would return deleted rows. spark_kms refuses it; "
                    "rewrite the affected files first (Delta's REORG TABLE ... APPLY (PURGE), or OPTIMIZE), "
                    "or read the table with an engine that applies deletion vectors"
                )
        actions = pa.table(dt.get_add_actions(flatten=True))
        partition_columns = list(metadata.partition_columns)
        files: list[TableFile] = []
        cols = actions.to_pydict()
        for i, path in enumerate(cols.get("path", [])):
            values = {c: partition_text(cols[f"partition.{c}"][i]) if f"partition.{c}" in cols else None
                      for c in partition_columns}
            rows = cols.get("num_records", [None] * len(cols["path"]))[i]
            files.append(TableFile(uri=self._root.join(unquote(path)).uri, path=path,
                                   size=int(cols["size_bytes"][i]), rows=None if rows is None else int(rows),
                                   partition_values=values))
        files.sort(key=lambda f: f.path)
        schema = pa.schema(dt.schema().to_arrow())
        history = dt.history(1)
        stamp = history[0].get("timestamp") if history else None
        return Snapshot(table=self.ref, root=self._root, version=dt.version(), files=files, properties=config,
                        schema=schema, partition_columns=partition_columns, timestamp_ms=stamp)

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for h in self._dt().history(limit):
            out.append({
                "version": h.get("version"), "timestamp_ms": h.get("timestamp"), "operation": h.get("operation"),
                **{k: v for k, v in h.items() if str(k).startswith("spark_kms.")},
            })
        return sorted(out, key=lambda h: h["version"] or 0)

    # -- committing --------------------------------------------------------------------

    def _commit_properties(self, info: Mapping[str, str], app_txn: tuple[str, int] | None) -> Any:
        from deltalake.transaction import CommitProperties, Transaction

        txns = [Transaction(app_txn[0], int(app_txn[1]), int(time.time() * 1000))] if app_txn else None
        return CommitProperties(custom_metadata=dict(info), app_transactions=txns)

    def _add_actions(self, adds: Sequence[NewFile], data_change: bool) -> list[Any]:
        from deltalake.transaction import AddAction

        now = int(time.time() * 1000)
        return [AddAction(path=quote(a.relpath, safe="/=:-_.~"), size=a.size, partition_values=dict(a.partition_values),
                          modification_time=now, data_change=data_change, stats=a.stats or json.dumps({"numRecords": a.rows}))
                for a in adds]

    def create(self, schema: pa.Schema, partition_by: Sequence[str], adds: Sequence[NewFile],
               info: Mapping[str, str], properties: Mapping[str, str]) -> int | None:
        from deltalake import Schema
        from deltalake.transaction import create_table_with_add_actions

        try:
            create_table_with_add_actions(
                self.uri, Schema.from_arrow(schema), self._add_actions(adds, True), mode="error",
                partition_by=list(partition_by) or None, storage_options=self.options or None,
                commit_properties=self._commit_properties(info, None),
            )
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"Delta table {self.uri}: creating the table failed: {exc}") from exc
        version = self._dt().version()
        if properties:
            version = self.set_properties(properties, info)
        return version

    def commit_files(
        self, adds: Sequence[NewFile], removes: Sequence[TableFile], *, data_change: bool, info: Mapping[str, str],
        app_txn: tuple[str, int] | None = None, schema: pa.Schema | None = None,
    ) -> int | None:
        from deltalake.transaction import RemoveAction

        dt = self._dt()
        now = int(time.time() * 1000)
        actions = self._add_actions(adds, data_change)
        actions += [RemoveAction(path=r.path, data_change=data_change, deletion_timestamp=now, size=r.size,
                                 partition_values=dict(r.partition_values)) for r in removes]
        table_schema = pa.schema(dt.schema().to_arrow())
        try:
            dt.create_write_transaction(
                actions, mode="append", schema=table_schema, partition_by=list(dt.metadata().partition_columns) or None,
                commit_properties=self._commit_properties(info, app_txn),
            )
        except Exception as exc:  # noqa: BLE001 - delta-rs's CommitFailedError and friends
            raise JobError(f"Delta table {self.uri}: the commit failed, nothing of it is visible: {exc}") from exc
        version = self._dt().version()
        logger.info("Delta table %s: committed version %s (%d files added, %d removed)", self.uri, version,
                    len(adds), len(removes))
        return int(version)

    def set_properties(self, properties: Mapping[str, str], info: Mapping[str, str]) -> int | None:
        dt = self._dt()
        try:
            dt.alter.set_table_properties({k: str(v) for k, v in properties.items()}, raise_if_not_exists=False,
                                          commit_properties=self._commit_properties(info, None))
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"Delta table {self.uri}: setting its properties failed: {exc}") from exc
        return int(self._dt().version())

    def committed(self, app_id: str, batch: int) -> bool:
        version = self._dt().transaction_version(app_id)
        return version is not None and int(version) >= batch

    # -- maintenance -------------------------------------------------------------------

    def expire(self, retention_hours: float, dry_run: bool) -> dict[str, Any]:
        dt = self._dt()
        hours = int(retention_hours) + (0 if float(retention_hours).is_integer() else 1)  # round up: keep what was asked
        # Not ``full``: only files the log removed (tombstones) go, never a concurrent writer's uncommitted file.
        files = dt.vacuum(retention_hours=hours, dry_run=dry_run, enforce_retention_duration=False)
        return {"files_deleted": sorted(files), "retention_hours": hours, "dry_run": dry_run}


def _what(version: TableVersion) -> str:
    if version is None:
        return "its current version"
    if isinstance(version, datetime):
        return f"the version as of {version.astimezone(timezone.utc).isoformat()}"
    return f"version {version}"
