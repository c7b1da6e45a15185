"""Table jobs that touch no data file: :func:`inspect_table`, :func:`rewrap_table`, :func:`vacuum_table`.

* **inspect**: per data file of the snapshot, its data keys and their key versions, and where its key table
  was found (footer or ``_spark_kms_keys`` column); per data key, whether a rewrap would move it. One
  DescribeKey per distinct key URI.
* **rewrap**: every data key of the current snapshot not wrapped by its key's primary version is re-wrapped
  (server-side ReEncrypt where the KMS has it); the new entries go into a new key manifest object and **one
  table commit** sets the table property naming it (Delta: a ``SET TBLPROPERTIES`` commit; Iceberg: a
  metadata-only commit). No data file is read or written. Idempotent: a re-run after success makes no
  ReEncrypt call and no commit. Data keys under an erased KMS key (a tenant's, crypto-shredding) are skipped and
  counted (``details["deks_erased"]``), never fail the job.
* **vacuum**: the table's own clean-up (Delta ``vacuum``; Iceberg snapshot expiry, then the data files only the
  expired snapshots referenced), then the key manifest is pruned to the data keys of data files still on
  storage and older manifest objects are deleted -- the step that makes a re-encrypt a crypto-shredding:
  afterwards no file of the table holds the old data keys, wrapped or in cells (docs/TABLES.md).

Rotation jobs (rewrap, re-encrypt, vacuum) hold the table's lock (``_spark_kms_runs/.lock``): one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spark_kms.crypto import DekEntry
from spark_kms.errors import ConfigurationError, JobError, KmsError
from spark_kms.jobs._summary import RunSummary, key_versions_of
from spark_kms.jobs.inspect import (
    ColumnInspection,
    DatasetInspection,
    DekInspection,
    FileInspection,
    KeyInspection,
)
from spark_kms.jobs.rewrap import erased_details, rewrap_group, rewrap_plan
from spark_kms.kms import KmsConfig, KmsConfigLike, WrappedKey
from spark_kms.kms.concurrent import check_kms_concurrency
from spark_kms.parquet.tenants import tenant_of_context
from spark_kms.storage import Location, StoragePath, is_hidden
from spark_kms.tables._runs import TableRunRecorder, read_json, runs_dir, secret_strings, table_lock
from spark_kms.tables.detect import DELTA, TableRef
from spark_kms.tables.keys import (
    MANIFEST_PROPERTY,
    TableKeys,
    file_key_table,
    load_table_keys,
    manifest_objects,
    prune_entries,
    write_table_manifest,
)
from spark_kms.tables.snapshot import TableBackend, TableVersion, open_table

__all__ = ["TableFileInspection", "TableInspection", "inspect_table", "rewrap_table", "vacuum_table"]

logger = logging.getLogger(__name__)

_RECENT_RUNS = 10


@dataclass
class TableFileInspection(FileInspection):
    """One data file of the snapshot; ``key_source``: ``footer`` or ``column`` (``_spark_kms_keys``)."""

    key_source: str = "footer"


@dataclass
class TableInspection(DatasetInspection):
    """What :func:`inspect_table` found (a :class:`~spark_kms.jobs.DatasetInspection` plus the table's facts):
    ``path`` is the table's URI, ``manifest_entries`` the key manifest's entries."""

    format: str = ""
    version: int | None = None
    manifest: str = ""
    plain_files: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def _describe_keys(kms: KmsConfig, entries: Mapping[str, DekEntry], strict: bool) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for key_uri in sorted({e.key_uri for e in entries.values()}):
        try:
            desc = kms.describe(key_uri)
            described[key_uri] = (desc.key_id, desc.primary_version, desc.state)
        except KmsError as exc:
            if strict:
                raise
            described[key_uri] = f"{type(exc).__name__}: {exc}"
    return described


def _recent_runs(root: Location) -> list[dict[str, Any]]:
    out = []
    entries = sorted((e.location for e in runs_dir(root).list_files(recursive=False)), key=lambda loc: loc.name,
                     reverse=True)
    for loc in entries:
        if not loc.name.endswith(".json") or loc.name.endswith(".state.json"):
            continue
        try:
            data = read_json(loc) or {}
        except (JobError, OSError):  # a run record is informative; a torn one must not break inspection
            logger.debug("skipping unreadable run record %s", loc.uri)
            continue
        out.append({k: data.get(k) for k in ("run_id", "job", "status", "started_at", "finished_at", "deks", "files")})
        if len(out) >= _RECENT_RUNS:
            break
    return out


def _inspect(keys: TableKeys, backend: TableBackend, kms: KmsConfig, *, strict: bool) -> TableInspection:
    effective = keys.effective_deks()
    described = _describe_keys(kms, effective, strict)

    def behind(entry: DekEntry) -> bool | None:
        d = described[entry.key_uri]
        return None if isinstance(d, str) else not (entry.key_id == d[0] and entry.key_version == d[1])

    dek_behind = {d: behind(e) for d, e in effective.items()}
    snap = keys.snapshot
    files: list[FileInspection] = []
    uses: dict[str, int] = {}
    total = 0
    for f in keys.files:
        ids = sorted(keys.tables[f.uri].deks)
        for d in ids:
            uses[d] = uses.get(d, 0) + 1
        versions: dict[str, set[str]] = {}
        for d in ids:
            versions.setdefault(effective[d].key_id, set()).add(effective[d].key_version)
        flags = [dek_behind[d] for d in ids]
        rows = f.rows if f.rows is not None else 0
        total += rows
        files.append(TableFileInspection(
            path=f.path, rows=rows, size=f.size, dek_ids=ids,
            key_versions={k: sorted(v) for k, v in sorted(versions.items())},
            behind=None if any(x is None for x in flags) else any(flags), key_source=keys.sources[f.uri],
        ))
    deks = [
        DekInspection(dek_id=d, key_uri=e.key_uri, key_id=e.key_id, key_version=e.key_version, algorithm=e.algorithm,
                      created_at=e.created_at,
                      source="manifest" if d in keys.manifest else _source_of(keys, d),
                      files=uses.get(d, 0), behind=dek_behind[d], tenant=tenant_of_context(e.encryption_context))
        for d, e in sorted(effective.items())
    ]
    key_rows = []
    for key_uri, d in described.items():
        of_key = [x for x in deks if x.key_uri == key_uri]
        if isinstance(d, str):
            key_rows.append(KeyInspection(key_uri, None, None, None, len(of_key), None, error=d))
        else:
            key_rows.append(KeyInspection(key_uri, d[0], d[1], d[2], len(of_key), sum(1 for x in of_key if x.behind)))
    columns: dict[str, Any] = {}
    for table in keys.tables.values():
        for name, spec in table.columns.items():
            columns.setdefault(name, spec)
    return TableInspection(
        path=snap.table.uri, rows=total, files=files, deks=deks,
        columns=[ColumnInspection(s.name, s.algorithm, s.arrow_type, s.source, s.subject, s.subject_store)
                 for _, s in sorted(columns.items())],
        keys=key_rows, manifest_entries=len(keys.manifest), runs=_recent_runs(snap.root), format=snap.format,
        version=snap.version, manifest=keys.manifest_pointer, plain_files=list(keys.plain_files),
        history=backend.history(10),
    )


def _source_of(keys: TableKeys, dek_id: str) -> str:
    for uri, table in keys.tables.items():
        if dek_id in table.deks:
            return keys.sources[uri]
    return "footer"


def require_writable(backend: TableBackend, job: str) -> None:
    """Refuse a job that commits on a table spark_kms may only read (Iceberg addressed by its directory)."""
    if not backend.ref.writable:
        raise ConfigurationError(
            f"{job}: Iceberg table {backend.ref.uri} is addressed by its directory: spark_kms reads it, but commits "
            "only through its catalog -- address it as iceberg://<catalog>/<namespace>.<table> with catalog_properties"
        )


def inspect_table(
    table: StoragePath | TableRef,
    *,
    version: TableVersion = None,
    kms_options: KmsConfigLike = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
) -> TableInspection:
    """Inspect a table snapshot (default the current one): files, data keys, key versions, encrypted columns,
    recent spark_kms runs and the table's last commits. One DescribeKey per distinct key URI."""
    backend = open_table(table, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options)
    snap = backend.snapshot(version)
    current = snap.properties if version is None else backend.current_properties()
    keys = load_table_keys(snap, current_properties=current, missing_ok=True, job="inspect")
    return _inspect(keys, backend, KmsConfig.of(kms_options), strict=False)


# --------------------------------------------------------------------------- rewrap


def stored_data_files(backend: TableBackend) -> list[Location]:
    """Every Parquet data file in the table's storage, referenced by the current snapshot or not (older
    versions' files until vacuum / expiry deletes them; orphans of failed writes)."""
    base = backend.data_dir()
    root = backend.storage_location
    out = []
    for entry in base.list_files():
        rel = entry.location.relative_to(root)
        if any(is_hidden(part) for part in rel.split("/")) or not entry.location.name.endswith(".parquet"):
            continue
        if backend.format != DELTA and rel.startswith("metadata/"):
            continue
        out.append(entry.location)
    return out


def rewrap_table(
    table: StoragePath | TableRef,
    *,
    key_uri: str | None = None,
    kms_options: KmsConfigLike = None,
    run_id: str | None = None,
    include_history: bool = False,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    kms_concurrency: int | None = None,
) -> RunSummary:
    """Re-wrap every data key of the table's current snapshot under the primary version of its key (or of
    ``key_uri``), recording the new wraps in a new key manifest with one table commit.

    :param include_history: also re-wrap the data keys of data files still on storage that the current
        snapshot no longer references (older versions' files, for time travel after the old key version is
        retired). Costs a footer read per such file.
    :param kms_concurrency: KMS requests kept in flight (:mod:`spark_kms.kms.concurrent`; 1: one at a time).
        The new wraps are committed once, after the last one, whatever order they finish in.
    :returns: the run summary; ``details["table_version"]`` is the commit's version (None: nothing to do).
    """
    backend = open_table(table, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options)
    require_writable(backend, "rewrap")
    root = backend.storage_location
    base = KmsConfig.of(kms_options)
    concurrency = check_kms_concurrency(kms_concurrency)
    with table_lock(root, "rewrap", backend.ref.uri), \
            TableRunRecorder("rewrap", root, backend.ref.uri, run_id, secrets=secret_strings(base)) as recorder:
        kms = base.with_request_tag(recorder.run_id)
        summary = recorder.summary
        snap = backend.snapshot()
        keys = load_table_keys(snap, missing_ok=True, job="rewrap")
        before = keys.effective_deks()
        targets = dict(before)
        if include_history:
            current = {f.uri for f in snap.files}
            for loc in stored_data_files(backend):
                if loc.uri in current:
                    continue
                found, _source, _names = file_key_table(loc)
                for d, e in (found.deks.items() if found else ()):
                    targets.setdefault(d, keys.manifest.get(d, e))
        for d, e in keys.manifest.items():
            targets.setdefault(d, e)
        summary.key_versions_before = key_versions_of((e.key_id, e.key_version) for e in before.values())
        manifest = dict(keys.manifest)
        rewrapped: list[str] = []
        erased: set[str] = set()
        todo = rewrap_plan(targets, key_uri, kms, concurrency, erased=erased)
        for (source_uri, target_uri), group in sorted(todo.items()):

            def done(dek_id: str, entry: DekEntry, new: WrappedKey, target_uri: str = target_uri) -> None:
                manifest[dek_id] = entry.replace(key_uri=target_uri, key_id=new.key_id, key_version=new.key_version,
                                                 wrapped_dek=new.ciphertext)
                rewrapped.append(dek_id)
                logger.debug("rewrapped data key %s: key %s version %s -> version %s", dek_id, entry.key_id,
                             entry.key_version, new.key_version)

            # DEKs under an erased key (a tenant's) are skipped and counted; the manifest keeps their entries.
            erased.update(rewrap_group(kms, source_uri, target_uri, group, concurrency, done))
        rewrapped.sort()
        version = None
        if rewrapped:
            pointer = write_table_manifest(root, manifest)
            version = backend.set_properties({MANIFEST_PROPERTY: pointer},
                                             {"spark_kms.run_id": recorder.run_id, "spark_kms.job": "rewrap"})
        after = {d: manifest.get(d, e) for d, e in before.items()}
        touched = [f for f in keys.files if set(keys.tables[f.uri].deks) & set(rewrapped)]
        summary.deks = len(rewrapped)
        summary.files = len(touched)
        summary.rows = sum(f.rows or 0 for f in touched)
        summary.key_versions = key_versions_of((e.key_id, e.key_version) for e in after.values())
        summary.details.update({"table_format": backend.format, "table_version": version,
                                "snapshot_version": snap.version, "deks_total": len(targets),
                                "deks_skipped": len(targets) - len(rewrapped) - len(erased), "target_key_uri": key_uri,
                                **erased_details(targets, erased),
                                "files_total": len(keys.files), "include_history": include_history})
        return summary


# --------------------------------------------------------------------------- vacuum


def vacuum_table(
    table: StoragePath | TableRef,
    *,
    retention_hours: float,
    dry_run: bool = False,
    run_id: str | None = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
) -> RunSummary:
    """Delete what older snapshots keep, so old data keys can be destroyed (crypto-shredding).

    1. the table's own clean-up: Delta ``vacuum(retention_hours)`` (files the log removed longer ago than
       that); Iceberg: expire the snapshots older than that (never the current one, a branch or a tag),
       then delete the data files only they referenced;
    2. the key manifest is pruned to the data keys of the data files still on storage, and every older
       manifest object is deleted.

    Time travel to a version whose files were deleted fails afterwards, as with the engines' own vacuum.

    :param retention_hours: keep what is younger; ``0`` keeps only the current snapshot (concurrent readers
        of an older snapshot then fail: use it after a compromise, not routinely).
    :param dry_run: report what would be deleted, delete nothing.
    """
    if retention_hours is None or float(retention_hours) < 0:
        raise ConfigurationError(f"retention_hours must be a number >= 0, got {retention_hours!r}")
    backend = open_table(table, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options)
    require_writable(backend, "vacuum")
    root = backend.storage_location
    with table_lock(root, "vacuum", backend.ref.uri), \
            TableRunRecorder("vacuum", None if dry_run else root, backend.ref.uri, run_id) as recorder:
        report = backend.expire(float(retention_hours), dry_run)
        summary = recorder.summary
        summary.files = len(report.get("files_deleted", []))
        summary.details.update({"table_format": backend.format, **report})
        if dry_run:
            return summary
        snap = backend.snapshot()
        keys = load_table_keys(snap, missing_ok=True, job="vacuum")
        used = set(keys.footer_deks())
        current = {f.uri for f in snap.files}
        for loc in stored_data_files(backend):
            if loc.uri not in current:
                found, _source, _names = file_key_table(loc)
                used |= set(found.deks) if found else set()
        kept = prune_entries(keys.manifest, used)
        pointer = keys.manifest_pointer
        if len(kept) != len(keys.manifest):
            pointer = write_table_manifest(root, kept)
            backend.set_properties({MANIFEST_PROPERTY: pointer},
                                   {"spark_kms.run_id": recorder.run_id, "spark_kms.job": "vacuum"})
        removed = []
        for obj in manifest_objects(root):
            if not pointer or not pointer.endswith("/" + obj.name):
                obj.delete_file()
                removed.append(obj.name)
        summary.deks = len(keys.manifest) - len(kept)
        summary.details.update({"manifest_entries_pruned": len(keys.manifest) - len(kept),
                                "manifest_objects_deleted": removed, "table_version": snap.version})
        logger.info("vacuum of table %s: %d data files deleted, %d key manifest entries pruned", backend.ref.uri,
                    summary.files, summary.deks)
        return summary
