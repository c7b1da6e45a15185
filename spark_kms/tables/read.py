"""Reading a table with decryption: the pyarrow reader (:func:`read_table_decrypted`), the plan Spark's native
Parquet scan needs (:func:`table_scan`), and :func:`decrypt_table` (a plaintext copy).

All three resolve the snapshot's data files through the table's library (current snapshot, or a version /
snapshot id / timestamp), refuse snapshots that need more than a file list (deletion vectors, delete files,
column mapping: :mod:`spark_kms.tables.snapshot`), and take the keys from the files' footers or
``_spark_kms_keys`` columns with the table's key manifest applied (:mod:`spark_kms.tables.keys`). Building the
plan makes no KMS call; data keys are unwrapped lazily, on the first cell that needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms.crypto import HMAC_SHA256_BIDX, KeyTable
from spark_kms.errors import ConfigurationError, FormatError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.decryptor import BatchDecryptor, check_on_erased
from spark_kms.parquet.reader import with_erased_counts
from spark_kms.storage import StoragePath, resolve
from spark_kms.tables.detect import DELTA, TableRef
from spark_kms.tables.keys import KEYS_COLUMN, TableKeys, load_table_keys
from spark_kms.tables.snapshot import Snapshot, TableFile, TableVersion, check_file_columns, open_table

__all__ = ["TableScan", "decrypt_table", "iter_table_decrypted", "read_table_decrypted", "table_scan"]

logger = logging.getLogger(__name__)


@dataclass
class TableScan:
    """What Spark's native Parquet scan of a table snapshot needs (no KMS call was made to build it).

    :param table: the table's URI.
    :param format: ``delta`` or ``iceberg``.
    :param version: the Delta version / Iceberg snapshot id read.
    :param files: the snapshot's data files, as Spark takes them (absolute local paths or storage URIs):
        ``spark.read.parquet(*files)``, with ``.option("basePath", base_path)`` when ``base_path`` is set.
    :param key_table: every file's key table merged, the table's key manifest applied: hand ``key_table.deks``
        and each column's ``arrow_type`` to the decrypt UDFs (``spark_kms.spark.udfs.decrypt_udf``).
    :param base_path: Delta with partition columns: the table root, so Spark restores the partition columns
        from the ``col=value`` directories (their values are not in Delta's files); else None.
    :param partition_columns: the table's partition columns.
    :param schema: the table's logical schema as stored (encrypted columns ``binary``, ``_spark_kms_keys``).
    :param plaintext_schema: the same without ``_spark_kms_keys``, encrypted columns at their original types.
    :param keys_column: whether the files carry ``_spark_kms_keys`` (drop it from what you show).
    """

    table: str
    format: str
    version: int | None
    files: list[str]
    key_table: KeyTable
    base_path: str | None
    partition_columns: list[str]
    schema: pa.Schema
    plaintext_schema: pa.Schema
    keys_column: bool = True
    key_sources: dict[str, str] = field(default_factory=dict)

    @property
    def encrypted_columns(self) -> dict[str, str]:
        """Decryptable column -> its original Arrow type (what each decrypt UDF needs)."""
        return {n: s.arrow_type for n, s in self.key_table.columns.items() if s.algorithm != HMAC_SHA256_BIDX}


def _open(table: StoragePath | TableRef, version: TableVersion, storage_options: Mapping[str, str] | str | None,
          catalog_properties: Mapping[str, str] | None, table_options: Mapping[str, str] | None,
          require_encrypted: Sequence[str] | None, min_format_version: int, job: str) -> TableKeys:
    backend = open_table(table, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options)
    snapshot = backend.snapshot(version)
    current = snapshot.properties if version is None else backend.current_properties()
    return load_table_keys(snapshot, current_properties=current, require_encrypted=require_encrypted,
                           min_format_version=min_format_version, job=job)


def _plaintext_schema(snapshot: Snapshot, merged: KeyTable, columns: Sequence[str] | None) -> pa.Schema:
    decryptor = BatchDecryptor(merged)
    logical = pa.schema([f for f in snapshot.schema if f.name != KEYS_COLUMN])
    plain = decryptor.plaintext_schema(logical)
    if columns is None:
        return plain
    if isinstance(columns, str):
        raise ConfigurationError(f"columns must be a sequence of names, not a single string: {columns!r}")
    unknown = [c for c in columns if c not in plain.names]
    if unknown:
        raise ConfigurationError(f"table {snapshot.table.uri} has no columns {unknown}; columns: {plain.names}")
    return pa.schema([plain.field(c) for c in columns])


def table_scan(
    table: StoragePath | TableRef,
    *,
    version: TableVersion = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
) -> TableScan:
    """The files and merged key table of a table snapshot, for Spark's native Parquet scan (no KMS call).

    Spark then reads ``spark.read.option("basePath", scan.base_path).parquet(*scan.files)`` (``basePath`` only
    when set) and decrypts each encrypted column it keeps with
    ``decrypt_udf(column, arrow_type, scan.key_table.deks, kms_options)``, dropping ``_spark_kms_keys``.
    """
    keys = _open(table, version, storage_options, catalog_properties, table_options, require_encrypted,
                 min_format_version, "read")
    snap = keys.snapshot
    merged = keys.key_table()
    base = snap.root.uri if snap.format == DELTA and snap.partition_columns else None
    scan = TableScan(
        table=snap.table.uri, format=snap.format, version=snap.version, files=[f.uri for f in snap.files],
        key_table=merged, base_path=base, partition_columns=list(snap.partition_columns), schema=snap.schema,
        plaintext_schema=_plaintext_schema(snap, merged, None), keys_column=KEYS_COLUMN in snap.schema.names,
        key_sources=dict(keys.sources),
    )
    logger.info("table scan of %s (%s %s): %d data files, %d data keys (%d from the key manifest)", scan.table,
                scan.format, scan.version, len(scan.files), len(merged.deks), len(set(keys.manifest) & set(merged.deks)))
    return scan


def _partition_arrays(file: TableFile, schema: pa.Schema, rows: int) -> dict[str, pa.Array]:
    out = {}
    for name, text in file.partition_values.items():
        if name not in schema.names:
            continue
        target = schema.field(name).type
        try:
            out[name] = pa.array([text] * rows, pa.string()).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise FormatError(f"file {file.uri}: partition value of {name!r} is not a {target}") from None
    return out


def _file_tables(keys: TableKeys, kms: KmsConfig, columns: Sequence[str] | None, min_format_version: int,
                 verify_blind_indexes: bool, subject_store: Any = None, on_erased: str | None = "null",
                 used: list[BatchDecryptor] | None = None) -> Iterator[tuple[pa.Table, pa.Schema]]:
    """Each data file of the snapshot, decrypted. Erased cells (their tenant's KMS key or their subject's key is
    erased) read as null, or raise ErasedDataError with ``on_erased="raise"``; each file's decryptor goes to
    ``used`` (its ``erased`` counts)."""
    on_erased = check_on_erased(on_erased)
    snap = keys.snapshot
    merged = keys.key_table()
    out_schema = _plaintext_schema(snap, merged, columns)
    wanted = list(out_schema.names)
    for f in snap.files:
        loc = resolve(f.uri, snap.root.options or None)
        with loc.open_input_file() as fh:
            pf = pq.ParquetFile(fh)
            stored = pf.schema_arrow
            check_file_columns(snap, f, stored)
            decryptor = BatchDecryptor(keys.key_table_for(f.uri, merged), kms_options=kms,
                                       min_format_version=min_format_version,
                                       verify_blind_indexes=verify_blind_indexes, subject_store=subject_store,
                                       on_erased=on_erased)
            if used is not None:
                used.append(decryptor)
            read = [c for c in decryptor.required_columns(wanted) if c in stored.names]
            data = pf.read(columns=read)
        table = decryptor.decrypt_table(data, [c for c in wanted if c in read], where=f"file {f.uri}")
        if decryptor._store is not None:  # opened once (its KEK unwrapped once), shared by the next files
            subject_store = decryptor._store
        parts = _partition_arrays(f, out_schema, table.num_rows)
        arrays = []
        for field_ in out_schema:
            if field_.name in parts:
                arrays.append(parts[field_.name])
            elif field_.name in table.column_names:
                arrays.append(table.column(field_.name).cast(field_.type))
            else:  # a column added after this file was written
                arrays.append(pa.nulls(table.num_rows, field_.type))
        yield pa.Table.from_arrays(arrays, schema=out_schema), out_schema


def iter_table_decrypted(
    table: StoragePath | TableRef,
    *,
    version: TableVersion = None,
    columns: Sequence[str] | None = None,
    kms_options: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    verify_blind_indexes: bool = False,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    subject_store: Any = None,
    on_erased: str | None = "null",
) -> Iterator[pa.Table]:
    """:func:`read_table_decrypted` one data file at a time (memory stays at one file); each part carries its
    erased-cell counts in its schema metadata (:func:`spark_kms.parquet.erased_counts`)."""
    keys = _open(table, version, storage_options, catalog_properties, table_options, require_encrypted,
                 min_format_version, "read")
    used: list[BatchDecryptor] = []
    for part, _schema in _file_tables(keys, KmsConfig.of(kms_options), columns, min_format_version,
                                      verify_blind_indexes, subject_store, on_erased, used):
        yield with_erased_counts(part, f"table {keys.snapshot.table.uri}", used[-1:])


def read_table_decrypted(
    table: StoragePath | TableRef,
    *,
    version: TableVersion = None,
    columns: Sequence[str] | None = None,
    kms_options: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    verify_blind_indexes: bool = False,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    subject_store: Any = None,
    on_erased: str | None = "null",
) -> pa.Table:
    """A Delta or Iceberg table snapshot, decrypted, as one pyarrow Table (pyarrow only, no Spark).

    :param table: a Delta table root, an Iceberg table directory, or ``iceberg://<catalog>/<ns>.<table>``.
    :param version: time travel: a Delta version, an Iceberg snapshot id, or a timestamp (datetime or
        ISO-8601 text); default the current snapshot.
    :param columns: keep these columns, in this order (default all but ``_spark_kms_keys``); only they (and
        what decrypting them needs) are read, and only their data keys unwrapped.
    :param require_encrypted: columns every file must store encrypted (else FormatError naming the file).
    :param min_format_version: 2 refuses files of key-table format version 1.
    :param subject_store: the subject key store of per-subject columns (a URL or
        :class:`~spark_kms.subjects.SubjectKeyStore`; docs/ERASURE.md).
    :param on_erased: cells whose data was erased -- their tenant's KMS key is scheduled for deletion or
        destroyed, or their subject's key was deleted -- read as null (``"null"``, default; counted in the
        table's schema metadata, :func:`spark_kms.parquet.erased_counts`) or raise
        :class:`~spark_kms.errors.ErasedDataError` (``"raise"``). Older snapshots (``version=``) too: erasure
        reaches every version, since their files hold the same (erased) keys.
    :raises ConfigurationError: the snapshot needs more than its file list (deletion vectors, delete files,
        column mapping, a renamed column), or a bad argument.
    """
    keys = _open(table, version, storage_options, catalog_properties, table_options, require_encrypted,
                 min_format_version, "read")
    kms = KmsConfig.of(kms_options)
    parts: list[pa.Table] = []
    schema = _plaintext_schema(keys.snapshot, keys.key_table(), columns)
    used: list[BatchDecryptor] = []
    for part, _schema in _file_tables(keys, kms, columns, min_format_version, verify_blind_indexes,
                                      subject_store, on_erased, used):
        parts.append(part)
    if not parts:
        return schema.empty_table()
    return with_erased_counts(pa.concat_tables(parts), f"table {keys.snapshot.table.uri}", used)


def decrypt_table(
    table: StoragePath | TableRef,
    destination: StoragePath,
    *,
    version: TableVersion = None,
    columns: Sequence[str] | None = None,
    kms_options: KmsConfigLike = None,
    run_id: str | None = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    subject_store: Any = None,
    on_erased: str | None = "null",
) -> object:
    """Decrypt a table snapshot into a plaintext Parquet directory ``destination`` (one file per data file).

    The output is staged beside ``destination`` and swapped in once complete
    (:func:`spark_kms.jobs._replace.staged_replacement`): a failure leaves ``destination`` as it was. The run
    record goes to the *table's* ``_spark_kms_runs/`` (the audit trail stays with the encrypted data).

    :param subject_store: the subject key store of per-subject columns; ``on_erased``: erased cells written as
        null (counted in ``details["erased_cells"]``) or ``"raise"`` (as :func:`read_table_decrypted`).
    :returns: the run summary (:class:`spark_kms.jobs.RunSummary`).
    """
    from spark_kms.jobs._replace import staged_replacement
    from spark_kms.tables._runs import TableRunRecorder

    keys = _open(table, version, storage_options, catalog_properties, table_options, None, 1, "decrypt")
    snap = keys.snapshot
    if resolve(destination, storage_options).path.startswith(snap.root.path.rstrip("/") + "/") or \
            resolve(destination, storage_options).path == snap.root.path:
        raise ConfigurationError(f"decrypt: destination {destination} is inside the table {snap.table.uri}")
    kms_base = KmsConfig.of(kms_options)
    with TableRunRecorder("decrypt", snap.root, snap.table.uri, run_id) as recorder:
        kms = kms_base.with_request_tag(recorder.run_id)
        rows = files = 0
        with staged_replacement(destination, "decrypt", storage_options=storage_options) as staging:
            out = resolve(staging, storage_options)
            used: list[BatchDecryptor] = []
            for n, (part, _schema) in enumerate(_file_tables(keys, kms, columns, 1, False, subject_store, on_erased,
                                                             used)):
                target = out.join(f"part-{n:05d}.parquet")
                with target.open_output_stream() as sink:
                    pq.write_table(part, sink)
                rows += part.num_rows
                files += 1
            if files == 0:
                out.mkdirs()
        s = recorder.summary
        s.rows, s.files, s.deks = rows, files, len(keys.effective_deks())
        erased: dict[str, int] = {}
        for d in used:
            for column, count in d.erased.items():
                erased[column] = erased.get(column, 0) + count
        s.details.update({"table_format": snap.format, "table_version": snap.version,
                          "destination": resolve(destination, storage_options).uri,
                          **({"erased_cells": dict(sorted(erased.items()))} if erased else {})})
        return s
