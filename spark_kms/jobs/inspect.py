"""Inspect an encrypted dataset: files, data keys, key versions, encrypted columns, recent runs.

Reads footers and the manifest (no KMS call for those) and makes exactly one
DescribeKey per distinct key URI -- never one per file or per DEK -- to learn each
key's primary version and tell which DEKs and files are *behind* it (wrapped by
an older version: a rewrap or re-encrypt would move them).

If a key cannot be described (no access, KMS unreachable), inspection still
succeeds: that key's entry carries the error and its files' ``behind`` is ``None``
(unknown). :func:`needs_rotation` instead raises, since it cannot answer.

The dataset may be local or on an object store (``storage_options=``): files are listed once
(their sizes come from the listing, paged by the store's client) and each footer is read with
ranged reads; no data page is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from spark_kms.crypto import DekEntry
from spark_kms.errors import ConfigurationError, KmsError, KmsUnavailableError
from spark_kms.jobs._common import StorageOptions, file_rows, require_dataset
from spark_kms.jobs._summary import read_json, runs_dir
from spark_kms.jobs._tables import (
    refuse_table_arguments_over_connect,
    reject_table_arguments,
    table_format,
    table_kwargs,
)
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.kms.concurrent import DEFAULT_KMS_CONCURRENCY, bounded_map
from spark_kms.parquet.dataset import Dataset
from spark_kms.parquet.tenants import tenant_of_context
from spark_kms.storage import Location, StoragePath

__all__ = [
    "ColumnInspection",
    "DatasetInspection",
    "DekInspection",
    "FileInspection",
    "KeyInspection",
    "inspect_dataset",
    "needs_rotation",
]

_RECENT_RUNS = 10


@dataclass
class FileInspection:
    """One data file. ``behind``: some DEK of it is not wrapped by its key's primary version
    (``None`` when the key could not be described)."""

    path: str
    rows: int
    size: int
    dek_ids: list[str]
    key_versions: dict[str, list[str]]
    behind: bool | None


@dataclass
class DekInspection:
    """One data key as a reader sees it (``source``: ``manifest`` if a rewrap re-wrapped it, else ``footer``).
    ``protection_level`` / ``protection_detail``: what guards its KMS key, as DescribeKey reported it
    (``software``, ``hsm``, ``external``; ``None`` when the key could not be described). ``tenant``: the tenant its
    encryption context names (per-tenant keys, docs/ERASURE.md), else ``None``."""

    dek_id: str
    key_uri: str
    key_id: str
    key_version: str
    algorithm: str
    created_at: str
    source: str
    files: int
    behind: bool | None
    protection_level: str | None = None
    protection_detail: str | None = None
    tenant: str | None = None


@dataclass
class ColumnInspection:
    """One encrypted column; ``subject`` / ``subject_store``: a per-subject column's subject column and the id
    of its subject key store (docs/ERASURE.md), else ``None``."""

    name: str
    algorithm: str
    arrow_type: str
    source: str | None
    subject: str | None = None
    subject_store: str | None = None


@dataclass
class KeyInspection:
    """A KMS key the dataset's DEKs are wrapped by, as DescribeKey reported it."""

    key_uri: str
    key_id: str | None
    primary_version: str | None
    state: str | None
    deks: int
    deks_behind: int | None
    error: str | None = None
    protection_level: str | None = None
    protection_detail: str | None = None


@dataclass
class DatasetInspection:
    """What :func:`inspect_dataset` found; data only. ``to_dict()`` is JSON-serialisable. It is drawn
    by :mod:`spark_kms.report`: HTML in notebooks (after ``spark_kms.notebook.install()``), rich tables
    in the terminal (``spark-kms inspect``)."""

    path: str
    rows: int
    files: list[FileInspection]
    deks: list[DekInspection]
    columns: list[ColumnInspection]
    keys: list[KeyInspection]
    manifest_entries: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def behind_files(self) -> list[str]:
        """Files with a DEK wrapped by a version other than its key's primary version."""
        return [f.path for f in self.files if f.behind]

    @property
    def up_to_date(self) -> bool | None:
        """Every DEK wrapped by its key's primary version (``None``: a key could not be described)."""
        if any(f.behind is None for f in self.files):
            return None
        return not self.behind_files

    @property
    def tenants(self) -> dict[str, int]:
        """Tenant -> its data keys (per-tenant keys: the tenant each data key's encryption context names)."""
        out: dict[str, int] = {}
        for dek in self.deks:
            if dek.tenant is not None:
                out[dek.tenant] = out.get(dek.tenant, 0) + 1
        return dict(sorted(out.items()))

    @property
    def subject_columns(self) -> dict[str, str]:
        """Per-subject column -> the id of its subject key store."""
        return {c.name: c.subject_store or "" for c in self.columns if c.subject}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["behind_files"] = self.behind_files
        out["up_to_date"] = self.up_to_date
        out["tenants"] = self.tenants
        out["subject_columns"] = self.subject_columns
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def inspect_dataset(
    path: StoragePath, *, kms_options: KmsConfigLike = None, spark: Any = None,
    storage_options: StorageOptions = None, version: Any = None,
    catalog_properties: Mapping[str, str] | None = None, table_options: Mapping[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DatasetInspection:
    """Inspect the encrypted dataset at ``path`` (one DescribeKey per distinct key URI).

    :param path: the dataset directory (or a hive partition in it): a local path, a storage URI
        (``s3://``, ``gs://``, ``abfs[s]://``, ``hdfs://``) or a :class:`~spark_kms.storage.Location`.
        A Delta or Iceberg table (its root, or ``iceberg://CATALOG/NAMESPACE.TABLE``) is inspected
        by :func:`spark_kms.tables.inspect_table` and gives a ``TableInspection`` (docs/TABLES.md).
    :param spark: a Spark Connect session: inspect on its server side, where the data is (the
        DescribeKey calls too); default (or a classic session): here.
    :param storage_options: options of the store (:data:`spark_kms.storage.OPTION_NAMES`).
    :param version: tables only: time travel (a Delta version, an Iceberg snapshot id or a timestamp).
    :param catalog_properties: tables only: the Iceberg catalog's properties.
    :param table_options: tables only: the table library's own options.
    :param progress: a file dataset here (not a table, not over Spark Connect): called after each data
        file with (file, files done, files in all).
    """
    refuse_table_arguments_over_connect(spark, "inspect", version=version, catalog_properties=catalog_properties,
                                        table_options=table_options)
    from spark_kms.spark.remote import is_connect, run_near_data

    if is_connect(spark):
        return run_near_data(spark, inspect_dataset, path, kms_options=kms_options, storage_options=storage_options)
    if table_format(path, storage_options):
        from spark_kms import tables

        return tables.inspect_table(path, version=version, kms_options=kms_options,
                                    **table_kwargs(storage_options, catalog_properties, table_options))
    reject_table_arguments("inspect", path, version=version)
    dataset = require_dataset(path, "inspect", storage_options)
    keys = Dataset.open(dataset, job="inspect")
    return _inspect(keys, KmsConfig.of(kms_options), strict=False, progress=progress)


def _inspect(keys: Dataset, kms: KmsConfig, *, strict: bool,
             progress: Callable[[str, int, int], None] | None = None) -> DatasetInspection:
    effective = keys.effective_deks()
    # key_uri -> (key_id, primary, state, protection level, protection detail) | error
    def describe(key_uri: str) -> tuple[str, str, str, str, str] | str:
        try:
            desc = kms.describe(key_uri)
        except KmsError as exc:
            if strict:
                raise
            return f"{type(exc).__name__}: {exc}"
        return desc.key_id, desc.primary_version, desc.state, desc.protection_level, desc.protection_detail

    # One DescribeKey per distinct key, a few in flight at once (a dataset moved between keys has several).
    key_uris = sorted({e.key_uri for e in effective.values()})
    described: dict[str, tuple[str, str, str, str, str] | str] = dict(
        zip(key_uris, bounded_map(describe, key_uris, concurrency=DEFAULT_KMS_CONCURRENCY), strict=True))

    def behind(entry: DekEntry) -> bool | None:
        d = described[entry.key_uri]
        if isinstance(d, str):
            return None
        return not (entry.key_id == d[0] and entry.key_version == d[1])

    def protection(key_uri: str) -> tuple[str | None, str | None]:
        d = described[key_uri]
        return (None, None) if isinstance(d, str) else (d[3], d[4])

    dek_behind = {dek_id: behind(entry) for dek_id, entry in effective.items()}
    files: list[FileInspection] = []
    uses: dict[str, int] = {}
    total_rows = 0
    root = keys.location
    assert root is not None
    sizes = {e.location.uri: e.size for e in root.list_files()}  # one listing, not one request per file
    for file in keys.files:
        ids = sorted(keys.footers[file].deks)
        for dek_id in ids:
            uses[dek_id] = uses.get(dek_id, 0) + 1
        flags = [dek_behind[d] for d in ids]
        location = keys.file_location(file)
        rows = file_rows(location)
        total_rows += rows
        versions: dict[str, set[str]] = {}
        for d in ids:
            versions.setdefault(effective[d].key_id, set()).add(effective[d].key_version)
        files.append(FileInspection(
            path=keys.relpath(file),
            rows=rows,
            size=sizes[file] if file in sizes else location.size(),
            dek_ids=ids,
            key_versions={k: sorted(v) for k, v in sorted(versions.items())},
            behind=None if any(f is None for f in flags) else any(flags),
        ))
        if progress is not None:
            progress(keys.relpath(file), len(files), len(keys.files))
    deks = [
        DekInspection(
            dek_id=dek_id, key_uri=e.key_uri, key_id=e.key_id, key_version=e.key_version, algorithm=e.algorithm,
            created_at=e.created_at, source="manifest" if dek_id in keys.manifest else "footer",
            files=uses.get(dek_id, 0), behind=dek_behind[dek_id],
            protection_level=protection(e.key_uri)[0], protection_detail=protection(e.key_uri)[1],
            tenant=tenant_of_context(e.encryption_context),
        )
        for dek_id, e in sorted(effective.items())
    ]
    key_rows = []
    for key_uri, d in described.items():
        of_key = [x for x in deks if x.key_uri == key_uri]
        if isinstance(d, str):
            key_rows.append(KeyInspection(key_uri, None, None, None, len(of_key), None, error=d))
        else:
            key_rows.append(KeyInspection(key_uri, d[0], d[1], d[2], len(of_key), sum(1 for x in of_key if x.behind),
                                          protection_level=d[3], protection_detail=d[4]))
    columns = [ColumnInspection(s.name, s.algorithm, s.arrow_type, s.source, s.subject, s.subject_store)
               for _, s in sorted(keys.columns().items())]
    return DatasetInspection(
        path=str(keys.root), rows=total_rows, files=files, deks=deks, columns=columns, keys=key_rows,
        manifest_entries=len(keys.manifest), runs=_recent_runs(root),
    )


def _recent_runs(dataset: Location) -> list[dict[str, Any]]:
    out = []
    records = [e.location for e in runs_dir(dataset).list_files(recursive=False)]
    for p in sorted(records, key=lambda loc: loc.name, reverse=True):
        if not p.name.endswith(".json") or p.name.endswith(".state.json"):
            continue
        try:
            data = read_json(p)
            if not isinstance(data, dict):
                continue
        except (OSError, ValueError):
            continue  # a run record is informative only; a torn or foreign file must not break inspection
        out.append({k: data.get(k) for k in ("run_id", "job", "status", "started_at", "finished_at", "deks", "files")})
        if len(out) >= _RECENT_RUNS:
            break
    return out


def _parse_created(text: str) -> datetime:
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def needs_rotation(
    path: StoragePath,
    *,
    max_age: timedelta | float | None = None,
    min_version: str | int | None = None,
    kms_options: KmsConfigLike = None,
    spark: Any = None,
    storage_options: StorageOptions = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
) -> bool:
    """Whether the dataset at ``path`` should be rotated (``spark``: a Spark Connect session runs the
    check on its server side, where the data is; see :func:`inspect_dataset`). A Delta or Iceberg table
    is checked through :func:`spark_kms.tables.inspect_table` (its current snapshot, key manifest applied;
    ``catalog_properties`` / ``table_options`` reach it).

    True when any data key (as readers see it, manifest applied) is

    * wrapped by a version other than its key's primary version (rewrap fixes this), or
    * older than ``max_age`` (a ``timedelta``, or a number of days; re-encrypt fixes this), or
    * wrapped by a key version below ``min_version`` (numeric versions only).

    One DescribeKey per distinct key URI. ``path`` and ``storage_options``: as for :func:`inspect_dataset`.

    :raises KmsError: a key cannot be described.
    """
    refuse_table_arguments_over_connect(spark, "needs_rotation", catalog_properties=catalog_properties,
                                        table_options=table_options)
    from spark_kms.spark.remote import is_connect, run_near_data

    if is_connect(spark):
        return run_near_data(spark, needs_rotation, path, max_age=max_age, min_version=min_version,
                             kms_options=kms_options, storage_options=storage_options)
    if max_age is not None and not isinstance(max_age, timedelta):
        if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or max_age < 0:
            raise ConfigurationError(f"max_age is a timedelta or a non-negative number of days, got {max_age!r}")
        max_age = timedelta(days=max_age)
    minimum: int | None = None
    if min_version is not None:
        if not str(min_version).isdigit():
            raise ConfigurationError(f"min_version must be a whole number (a key version), got {min_version!r}")
        minimum = int(str(min_version))
    if table_format(path, storage_options):
        inspection = _inspect_table_strictly(path, kms_options, table_kwargs(storage_options, catalog_properties,
                                                                           table_options))
    else:
        dataset = require_dataset(path, "needs_rotation", storage_options)
        keys = Dataset.open(dataset, job="needs_rotation")
        inspection = _inspect(keys, KmsConfig.of(kms_options), strict=True)
    if inspection.behind_files:
        return True
    now = datetime.now(timezone.utc)
    for dek in inspection.deks:
        if max_age is not None and now - _parse_created(dek.created_at) > max_age:
            return True
        if minimum is not None:
            if not dek.key_version.isdigit():
                raise ConfigurationError(
                    f"min_version compares numeric key versions, but DEK {dek.dek_id} has version "
                    f"{dek.key_version!r} (key {dek.key_id})"
                )
            if int(dek.key_version) < minimum:
                return True
    return False


def _inspect_table_strictly(path: Any, kms_options: KmsConfigLike, table_kw: dict[str, Any]) -> DatasetInspection:
    """:func:`spark_kms.tables.inspect_table`, raising (as :func:`needs_rotation` must) the KmsError of a key
    it could not describe instead of reporting it."""
    from spark_kms import tables

    kms = KmsConfig.of(kms_options)
    inspection: DatasetInspection = tables.inspect_table(path, kms_options=kms, **table_kw)
    failed = [k for k in inspection.keys if k.error is not None]
    if not failed:
        return inspection
    for key in failed:
        kms.describe(key.key_uri)  # raises the error inspect_table recorded, with its own class
    inspection = tables.inspect_table(path, kms_options=kms, **table_kw)  # the keys answered this time
    failed = [k for k in inspection.keys if k.error is not None]
    if failed:
        raise KmsUnavailableError(f"needs_rotation: key {failed[0].key_uri} could not be described: {failed[0].error}")
    return inspection
