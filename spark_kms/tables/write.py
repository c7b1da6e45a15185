"""Encrypting rows into a Delta or Iceberg table: :func:`encrypt_into_table` (the file writer it shares with
re-encrypt: :mod:`spark_kms.tables.files`).

spark_kms writes the table's data files itself, then commits them through the table's library (delta-rs
``create_write_transaction`` / ``create_table_with_add_actions``, pyiceberg ``Transaction``): one commit adds
all of them (and, for an overwrite, removes the files they replace), so readers see all or nothing.

Keys: **one data key per output file**, and one output file per partition value (or one for an
unpartitioned table) -- the table form of "one data key per partition/task". Each file carries its key
table twice (docs/TABLES.md, "Where the keys are"):

* in its **Parquet footer**, as every spark_kms file does: spark_kms's tools (inspect, rewrap) read it from
  the footer alone, without scanning data;
* in the **``_spark_kms_keys`` column**, on every row (dictionary-encoded: a few bytes per row group), as
  :class:`~spark_kms.spark.ml.ColumnEncryptor` emits it: any engine that reads the table -- Spark with Delta's or
  Iceberg's jars, Trino, DuckDB -- gets the wrapped keys with the rows and can hand both to spark_kms
  (``ColumnDecryptor``), so the table does not depend on spark_kms's reader.

Delta files do not store the partition columns (Delta keeps their values in the log); Iceberg files do, and
carry the table's field ids.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from spark_kms.crypto import AES_256_SIV, FORMAT_VERSION, DekEntry
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.parquet.keys import new_deterministic_entry
from spark_kms.parquet.tenants import TenantKeys
from spark_kms.storage import StoragePath
from spark_kms.tables.detect import DELTA, ICEBERG, TableRef
from spark_kms.tables.files import TableFileWriter, partition_dir
from spark_kms.tables.keys import KEYS_COLUMN, load_table_keys
from spark_kms.tables.snapshot import (
    TableBackend,
    TableFile,
    open_table,
    partition_text,
)

__all__ = ["MODES", "encrypt_into_table"]

logger = logging.getLogger(__name__)

MODES = ("append", "overwrite", "overwrite_partitions", "error")


def _batches(source: Any) -> Iterable[pa.RecordBatch]:
    if isinstance(source, pa.Table):
        return source.to_batches()
    if isinstance(source, pa.RecordBatch):
        return [source]
    if isinstance(source, pa.RecordBatchReader):
        return source
    if hasattr(source, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(source)
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        return source
    raise ConfigurationError(
        f"encrypt_into_table takes a pyarrow Table, RecordBatchReader or iterable of RecordBatches, got "
        f"{type(source).__name__}"
    )


def _comparable(t: pa.DataType) -> pa.DataType:
    swap = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary(), pa.string_view(): pa.string(),
            pa.binary_view(): pa.binary()}
    return swap.get(t, t)


def _check_schema(table_uri: str, stored: pa.Schema, table_schema: pa.Schema, partition_by: Sequence[str]) -> None:
    theirs = {f.name: _comparable(f.type) for f in table_schema}
    ours = {f.name: _comparable(f.type) for f in stored}
    for name in partition_by:
        ours.setdefault(name, theirs.get(name))  # type: ignore[arg-type]
    if set(theirs) != set(ours) or any(theirs[n] != ours[n] for n in theirs):
        diff = sorted(f"{n}: table {theirs.get(n)}, data {ours.get(n)}" for n in set(theirs) | set(ours)
                      if theirs.get(n) != ours.get(n))
        raise ConfigurationError(
            f"table {table_uri}: the encrypted data does not fit the table's schema ({'; '.join(diff)}); "
            "spark_kms does not change a table's schema"
        )


def _groups(batch: pa.RecordBatch, partition_by: Sequence[str]) -> list[tuple[tuple[Any, ...], pa.RecordBatch]]:
    if not partition_by:
        return [((), batch)]
    table = pa.Table.from_batches([batch]).append_column("__row", pa.array(range(batch.num_rows), pa.int64()))
    grouped = table.group_by(list(partition_by), use_threads=False).aggregate([("__row", "list")])
    out = []
    for row in grouped.to_pylist():
        key = tuple(row[c] for c in partition_by)
        out.append((key, batch.take(pa.array(row["__row_list"], pa.int64()))))
    return out


def _matches(values: Mapping[str, Any], replace_where: Mapping[str, Any]) -> bool:
    for col, wanted in replace_where.items():
        options = list(wanted) if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
        if partition_text(values.get(col)) not in {partition_text(v) for v in options}:
            return False
    return True


def _files_to_replace(backend: TableBackend, files: list[TableFile], partition_by: Sequence[str],
                      keys: Sequence[tuple[Any, ...]]) -> list[TableFile]:
    """The current files of the partitions ``keys`` (tuples of values of ``partition_by``)."""
    wanted = {tuple(partition_text(v) for v in key) for key in keys}
    if backend.format == DELTA:
        return [f for f in files if tuple(f.partition_values.get(c) for c in partition_by) in wanted]
    from pyiceberg.expressions import And, EqualTo, IsNull, Or

    def term(col: str, value: Any) -> Any:
        return IsNull(col) if value is None else EqualTo(col, value)

    clauses = []
    for key in keys:
        parts = [term(c, v) for c, v in zip(partition_by, key, strict=True)]
        clause = parts[0]
        for p in parts[1:]:
            clause = And(clause, p)
        clauses.append(clause)
    if not clauses:
        return []
    expr = clauses[0]
    for c in clauses[1:]:
        expr = Or(expr, c)
    t = backend._load()  # type: ignore[attr-defined]
    chosen = {str(task.file.file_path) for task in t.scan(row_filter=expr).plan_files()}
    return [f for f in files if f.path in chosen]


def _existing_deterministic(backend: TableBackend, key_uri: str) -> DekEntry | None:
    """The SIV key the table's deterministic / blind-index columns already use (so equal values stay equal
    across writes), if it is under ``key_uri``."""
    keys = load_table_keys(backend.snapshot(), missing_ok=True)
    siv = {d: e for d, e in keys.effective_deks().items() if e.algorithm == AES_256_SIV}
    if len(siv) > 1:
        raise ConfigurationError(
            f"table {backend.ref.uri}: its deterministic columns use {len(siv)} keys; pass deterministic_entry="
        )
    entry = next(iter(siv.values()), None)
    return entry if entry is not None and entry.key_uri == key_uri else None


def encrypt_into_table(
    source: Any,
    table: StoragePath | TableRef,
    *,
    format: str | None = None,
    columns: Sequence[str] = (),
    key_uri: str | None = None,
    kms_options: KmsConfigLike = None,
    mode: str = "append",
    partition_by: Sequence[str] = (),
    replace_where: Mapping[str, Any] | None = None,
    deterministic_columns: Sequence[str] = (),
    blind_index: Mapping[str, str] | None = None,
    deterministic_entry: DekEntry | None = None,
    encryption_context: Mapping[str, str] | None = None,
    run_id: str | None = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    tenant_keys: Any = None,
    tenant_column: str | None = None,
    subject_column: str | None = None,
    subject_store: Any = None,
) -> Any:
    """Encrypt ``source``'s PII columns into a Delta or Iceberg table, in one table commit.

    :param source: a pyarrow ``Table``, ``RecordBatchReader``, or an iterable of ``RecordBatch`` (streamed).
    :param table: the table: a Delta table's root (created when absent, with ``format="delta"``), or
        ``iceberg://<catalog>/<namespace>.<table>`` (created in its catalog when absent).
    :param format: ``"delta"`` or ``"iceberg"``: needed to create a Delta table; checked otherwise.
    :param columns: columns encrypted with AES-256-GCM.
    :param key_uri: the KMS key of the new data keys (one per output file); not needed with ``tenant_keys``.
    :param mode: ``append``; ``overwrite`` (every current file, or those of the partitions in ``replace_where``,
        replaced in the same commit); ``overwrite_partitions`` (the partitions the data has are replaced);
        ``error`` (refuse an existing table).
    :param partition_by: partition columns of a new table (plaintext, identity partitions); an existing table's
        must be the same or empty.
    :param replace_where: with ``overwrite``: partition column -> value (or list of values) whose files are
        replaced (Delta's ``replaceWhere``/``partition_filters``, Iceberg's ``overwrite_filter``); every row
        written must lie in them.
    :param deterministic_columns: columns encrypted with AES-SIV (joinable within the table).
    :param blind_index: source column -> new blind-index column.
    :param deterministic_entry: the SIV key to use (e.g. a join domain's, ``spark_kms.parquet.join_domains``);
        default the table's own (the key its existing deterministic cells use), else a new one.
    :param encryption_context: extra context sent to the KMS with every GenerateDataKey.
    :param storage_options: spark_kms storage options (:mod:`spark_kms.storage`), mapped to the library's.
    :param catalog_properties: the Iceberg catalog's properties (``pyiceberg.catalog.load_catalog``).
    :param table_options: the table library's own options (delta-rs ``storage_options``, pyiceberg FileIO).
    :param tenant_keys: per-tenant keys (crypto-shredding, docs/ERASURE.md): a
        :class:`~spark_kms.parquet.tenants.TenantKeys`, ``{"column": ..., "keys": ...}`` or its JSON, or -- with
        ``tenant_column`` -- a key-URI template with ``{tenant}`` or a mapping tenant -> key URI. Each output file
        gets a data key per tenant it holds, under the tenant's own KMS key (as ``EncryptedParquetWriter``).
    :param tenant_column: the plain column holding each row's tenant (with a template or mapping ``tenant_keys``).
    :param subject_column: per-subject cells (``EncryptionSpec.subject_column``): every randomised column is
        encrypted under a key derived from the row's subject key in ``subject_store``.
    :param subject_store: the subject key store (a URL or :class:`~spark_kms.subjects.SubjectKeyStore`; default
        ``$SPARK_KMS_SUBJECT_STORE``).
    :returns: the run summary (:class:`spark_kms.jobs.RunSummary`); ``details["table_version"]`` is the version
        (Delta) or snapshot id (Iceberg) committed. Also written to ``<table>/_spark_kms_runs/<run_id>.json``.
    """
    from spark_kms.jobs._summary import key_versions_of
    from spark_kms.tables._runs import TableRunRecorder, secret_strings

    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if replace_where and mode != "overwrite":
        raise ConfigurationError("replace_where goes with mode='overwrite'")
    tenants = TenantKeys.of(tenant_keys, column=tenant_column)
    if not key_uri and tenants is None:
        raise ConfigurationError("encrypt_into_table needs key_uri, the KMS key to generate data keys under "
                                 "(or tenant_keys, a key per tenant)")
    spec = EncryptionSpec(columns=list(columns), deterministic=list(deterministic_columns),
                          blind_index=dict(blind_index or {}), subject_column=subject_column)
    kms_base = KmsConfig.of(kms_options)
    if key_uri:
        kms_base.provider(key_uri)  # a bad URI or a missing extra fails here, before anything is written
    if spec.subject_column is not None:
        from spark_kms.subjects import store_of

        subject_store = store_of(subject_store, kms_options=kms_base)  # one store object for every file
    backend = open_table(table, format=format, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options, must_exist=False)
    exists = backend.exists()
    if exists and mode == "error":
        raise ConfigurationError(f"table {backend.ref.uri} exists (mode='error')")
    encrypted = set(spec.columns) | set(spec.deterministic) | set(spec.blind_index.values())
    snapshot = backend.snapshot() if exists else None
    part = list(partition_by)
    if snapshot is not None:
        if part and part != snapshot.partition_columns:
            raise ConfigurationError(f"table {backend.ref.uri} is partitioned by {snapshot.partition_columns}, "
                                     f"not {part}")
        part = list(snapshot.partition_columns)
        if backend.format == ICEBERG:
            backend.partition_columns()  # type: ignore[attr-defined]  # refuses non-identity transforms
    if set(part) & (encrypted | set(spec.blind_index)):
        raise ConfigurationError(f"partition columns {sorted(set(part) & encrypted)} cannot be encrypted")
    if replace_where and not set(replace_where) <= set(part):
        raise ConfigurationError(f"replace_where names partition columns only; the table's are {part}")
    if deterministic_entry is None and spec.needs_deterministic_key and exists:
        deterministic_entry = _existing_deterministic(backend, key_uri)

    # An Iceberg table's directory is known once it exists: a write that fails before is recorded nowhere.
    root = backend.storage_location if backend.format == DELTA or exists else None
    with TableRunRecorder("encrypt", root, backend.ref.uri, run_id, secrets=secret_strings(kms_base)) as recorder:
        kms = kms_base.with_request_tag(recorder.run_id)
        summary = recorder.summary
        iterator = iter(_batches(source))
        first = next(iterator, None)
        while first is not None and first.num_rows == 0:
            first = next(iterator, None)
        if first is None:
            if not exists:
                raise ConfigurationError(f"encrypt_into_table: the source has no rows to create {backend.ref.uri} with")
            version = None
            removes: list[TableFile] = []
            if mode == "overwrite":  # overwriting with no rows empties the table (or the replaced partitions)
                removes = list(snapshot.files)  # type: ignore[union-attr]
                if replace_where:
                    rw_cols = [c for c in part if c in replace_where]
                    removes = _files_to_replace(backend, removes, rw_cols, _expand(replace_where, rw_cols))
                if removes:
                    version = backend.commit_files([], removes, data_change=True,
                                                   info={"spark_kms.run_id": recorder.run_id, "spark_kms.job": "encrypt"})
            summary.details.update({"table_format": backend.format, "table_version": version, "mode": mode,
                                    "files_replaced": len(removes), "note": "no rows to write"})
            return summary
        missing = [c for c in part if c not in first.schema.names]
        if missing:
            raise ConfigurationError(f"partition columns {missing} are not in the data ({first.schema.names})")
        data_schema = pa.schema([f for f in first.schema if not (backend.format == DELTA and f.name in part)])
        probe = BatchEncryptor(spec, key_uri, kms_options=kms, tenant_keys=tenants, subject_store=subject_store)
        stored = pa.schema([*[f.with_nullable(True) for f in probe.output_schema(data_schema)],
                            pa.field(KEYS_COLUMN, pa.string())])
        table_schema = pa.schema([*stored, *[first.schema.field(c).with_nullable(True) for c in part
                                             if backend.format == DELTA]])
        if exists:
            _check_schema(backend.ref.uri, stored, snapshot.schema, part if backend.format == DELTA else ())  # type: ignore[union-attr]
        elif backend.format == ICEBERG:
            metrics = {f"write.metadata.metrics.column.{c}": "counts" for c in [*encrypted, KEYS_COLUMN]}
            backend.create_empty(table_schema, part, metrics)  # type: ignore[attr-defined]
            recorder.root = backend.storage_location
        if spec.needs_deterministic_key and deterministic_entry is None:
            det_context = {**dict(encryption_context or {}), "spark_kms.dataset": _identity(backend),
                           "spark_kms.job_id": recorder.run_id}
            deterministic_entry = new_deterministic_entry(kms.provider(key_uri), det_context)  # type: ignore[arg-type]
        context = {**dict(encryption_context or {}), "spark_kms.dataset": _identity(backend),
                   "spark_kms.columns": ",".join(sorted(encrypted)), "spark_kms.job_id": recorder.run_id}
        field_ids = backend.field_ids() if backend.format == ICEBERG else None
        required = backend.required_columns() if exists else set()
        base_dir = backend.data_dir()
        root = backend.storage_location
        writers: dict[tuple[Any, ...], TableFileWriter] = {}
        seen_keys: list[tuple[Any, ...]] = []
        try:
            batches = [first]
            for batch in _chain(batches, iterator):
                for key, rows in _groups(batch, part):
                    values = dict(zip(part, key, strict=True))
                    if replace_where and not _matches(values, replace_where):
                        raise ConfigurationError(
                            f"a row of partition {values} lies outside replace_where {dict(replace_where)}"
                        )
                    writer = writers.get(key)
                    if writer is None:
                        text = {c: partition_text(v) for c, v in values.items()}
                        sub = partition_dir(text)
                        name = f"part-{len(writers):05d}-{recorder.run_id}-{uuid.uuid4().hex[:8]}.parquet"
                        location = base_dir.join(sub, name) if sub else base_dir.join(name)
                        writer = writers[key] = TableFileWriter(
                            location, location.relative_to(root), spec, key_uri, kms=kms,  # type: ignore[arg-type]
                            encryption_context=context, deterministic_entry=deterministic_entry,
                            field_ids=field_ids, partition_values=text if backend.format == DELTA else {},
                            metadata={"spark_kms.job_id": recorder.run_id}, required=required,
                            tenant_keys=tenants, subject_store=subject_store,
                        )
                        seen_keys.append(key)
                    if backend.format == DELTA and part:
                        rows = rows.select([n for n in rows.schema.names if n not in part])
                    writer.write(rows)
            adds = [f for f in (w.close() for w in writers.values()) if f is not None]
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        try:
            removes: list[TableFile] = []
            if exists and mode == "overwrite" and not replace_where:
                removes = list(snapshot.files)  # type: ignore[union-attr]
            elif exists and mode == "overwrite":
                rw_cols = [c for c in part if c in replace_where]  # type: ignore[operator]
                removes = _files_to_replace(backend, list(snapshot.files), rw_cols,  # type: ignore[union-attr]
                                            _expand(replace_where, rw_cols))  # type: ignore[arg-type]
            elif exists and mode == "overwrite_partitions":
                removes = _files_to_replace(backend, list(snapshot.files), part, seen_keys)  # type: ignore[union-attr]
            info = {"spark_kms.run_id": recorder.run_id, "spark_kms.job": "encrypt"}
            if exists or backend.format == ICEBERG:
                version = backend.commit_files(adds, removes, data_change=True, info=info)
            else:
                version = backend.create(table_schema, part, adds, info, {})
        except BaseException:
            for f in adds:
                f.location.delete_file()
            raise
        deks = [e for w in writers.values() for e in w.key_table().deks.values()]
        summary.rows = sum(f.rows for f in adds)
        summary.files = len(adds)
        summary.deks = len({e.dek_id for e in deks if e.algorithm != AES_256_SIV})
        summary.key_versions = key_versions_of((e.key_id, e.key_version) for e in deks)
        summary.details.update({"table_format": backend.format, "table_version": version, "mode": mode,
                                "files_replaced": len(removes), "key_uri": key_uri,
                                **({"tenant_keys": tenants.to_dict()} if tenants is not None else {}),
                                **({"subject_column": spec.subject_column,
                                    "erased_on_write": sum(w.erased_on_write for w in writers.values())}
                                   if spec.subject_column else {}),
                                "columns": list(spec.columns),
                                "deterministic_columns": list(spec.deterministic),
                                "blind_index": dict(spec.blind_index), "partition_by": part,
                                "format_version": FORMAT_VERSION})
        recorder.root = root
        return summary


def _chain(first: list[pa.RecordBatch], rest: Any) -> Iterable[pa.RecordBatch]:
    yield from first
    yield from rest


def _expand(replace_where: Mapping[str, Any], cols: Sequence[str]) -> list[tuple[Any, ...]]:
    import itertools

    options = []
    for c in cols:
        v = replace_where[c]
        options.append(list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v])
    return [tuple(combo) for combo in itertools.product(*options)]


def _identity(backend: TableBackend) -> str:
    return backend.storage_location.identity
