"""The writing half of the ``spark_kms`` data source: :class:`SparkKmsWriter` (options, checks,
the per-task write into staging) and :class:`WriteResult`. The driver-side commit protocol is
:mod:`spark_kms.spark._commit`; the protocol as a whole is described in
:mod:`spark_kms.spark.datasource`."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.datasource import DataSourceArrowWriter, WriterCommitMessage

from spark_kms.crypto import AES_256_GCM, AES_256_GCM_SUBJECT, KEY_TABLE_METADATA_KEY, KeyTable
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.kms import KmsProvider, kms_call_counts
from spark_kms.parquet.writer import RowGroupBuffer, parquet_write_options, write_row_group
from spark_kms.spark._commit import (
    abort_staged,
    commit_staged,
    final_name,
    recover_interrupted_commits,
    staging_alive,
    start_staging,
)
from spark_kms.spark._errors import marked_for_driver
from spark_kms.spark._hive import hive_dir_value
from spark_kms.spark._options import (
    KEYS_COLUMN,
    RESULT_OPTION,
    add_counts,
    counts_delta,
    kms_config_option,
    on_erased_option,
    parse_blind_index,
    parse_json_object,
    positive_int,
    split_list,
    storage_location_option,
    subject_store_url,
    tenant_keys_option,
)
from spark_kms.storage import Location, resolve

__all__ = ["SparkKmsCommitMessage", "SparkKmsWriter", "WriteResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteResult:
    """What an encrypted write did.

    :param path: the dataset directory (a local path or a storage URI, as given).
    :param job_id: the id in the encryption context (``spark_kms.job_id``).
    :param rows: rows written.
    :param files: data files added, relative to ``path``.
    :param deks: hex ids of the data keys made (one per non-empty task, plus roll-overs,
        plus the job-wide deterministic key if any).
    :param kms_calls: KMS operations, ``{"<scheme>:<Operation>": n}``, over driver and tasks.
    :param key_versions: key id -> the key versions that wrapped this write's data keys.
    """

    path: str
    job_id: str
    mode: str
    rows: int
    files: list[str]
    deks: list[str]
    kms_calls: dict[str, int]
    key_versions: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SparkKmsCommitMessage(WriterCommitMessage):
    """One task's report. ``files`` are relative to the write's staging dir; ``key_table`` is the
    JSON text of the merged key table of the task (wrapped keys only)."""

    partition_id: int
    attempt: int
    rows: int
    files: list[str]
    key_table: str | None
    kms_calls: dict[str, int]


class SparkKmsWriter(DataSourceArrowWriter):
    """Created once per write on the driver side, pickled to every task and to commit/abort.

    It carries the ``kms_options`` option as a :class:`~spark_kms.kms.KmsConfig` (options only
    when pickled: each task builds its own provider for ``key_uri``) and the dataset as a
    :class:`~spark_kms.storage.Location` (URI and storage options when pickled: each process
    builds its own filesystem client). Neither shows a secret in a repr or a log line.
    """

    @marked_for_driver()  # a spark_kms error reaches the driver as itself (spark/_errors.py)
    def __init__(self, options: Mapping[str, str], schema: Any, overwrite: bool) -> None:
        opts = {k.lower(): v for k, v in options.items()}
        self.location: Location = storage_location_option(opts, "the spark_kms data source")
        self.path = self.location.uri
        self.overwrite = overwrite
        self.write_id = uuid.uuid4().hex
        self.job_id = opts.get("run_id") or self.write_id
        self.key_uri = opts.get("key_uri") or None
        self.columns = split_list(opts.get("columns"))
        self.deterministic = split_list(opts.get("deterministic_columns"))
        self.blind_index = parse_blind_index(opts.get("blind_index"))
        self.partition_by = split_list(opts.get("partition_by"))
        self.kms = kms_config_option(opts)
        user_ctx = parse_json_object("encryption_context", opts.get("encryption_context"))
        if any(not isinstance(v, str) for v in user_ctx.values()):
            raise ConfigurationError("option encryption_context must map strings to strings")
        self.max_cells_per_dek = positive_int(opts, "max_cells_per_dek", None)
        self.result_file = opts.get(RESULT_OPTION) or None
        self.require_protection_level = opts.get("require_protection_level") or None
        # Crypto-shredding (docs/ERASURE.md): per-tenant KMS keys, per-subject cell keys.
        self.tenant_keys = tenant_keys_option(opts)
        self.subject_column = (opts.get("subject_column") or "").strip() or None
        self.subject_store = subject_store_url(opts.get("subject_store"))
        if opts.get("on_erased"):
            on_erased_option(opts)  # a read option: checked, unused here

        names = list(schema.fieldNames())
        self.has_keys_column = KEYS_COLUMN in names
        self._validate(schema, names)

        encrypted = sorted({*self.columns, *self.deterministic, *self.blind_index})
        self.encryption_context = {
            **user_ctx,
            # s3:// and s3a:// name the same objects: one identity (spark_kms.storage)
            "spark_kms.dataset": self.path if self.location.is_local else self.location.identity,
            "spark_kms.columns": ",".join(encrypted),
            "spark_kms.job_id": self.job_id,
        }
        # The one KMS call made here comes before any staging exists: if it fails (a disabled or
        # denied key), Spark never calls abort() and nothing may be left behind in the dataset.
        self.deterministic_entry = None
        self.driver_kms_calls: dict[str, int] = {}
        if self.require_protection_level:
            from spark_kms.parquet.encryptor import check_protection_level, protection_levels_accepted

            protection_levels_accepted(self.require_protection_level)  # a bad value fails as itself
            if not self.key_uri:
                raise ConfigurationError(f"dataset {self.path}: option require_protection_level needs key_uri (a "
                                         "DataFrame of ColumnEncryptor was checked by its requireProtectionLevel)")
            # One DescribeKey, here on the driver, before any data key: tasks do not ask again.
            before = kms_call_counts()
            check_protection_level(self._provider(), self.require_protection_level,
                                   description=self.kms.describe(self.key_uri))
            self.driver_kms_calls = counts_delta(before, kms_call_counts())
        if self.deterministic or self.blind_index:
            from spark_kms.parquet.join_domains import domain_key

            before = kms_call_counts()
            # One key per join domain, made by the domain's first writer and reused by every later
            # one (appends, overwrites, other datasets of a named domain): equal values, equal cells.
            self.deterministic_entry = domain_key(
                self.location, key_uri=self._provider().key_uri, kms_options=self.kms,
                domain=opts.get("join_domain") or None, store=opts.get("join_domain_store") or None,
            )
            for name, n in counts_delta(before, kms_call_counts()).items():
                self.driver_kms_calls[name] = self.driver_kms_calls.get(name, 0) + n
            logger.info("write %s: join-domain data key %s (key %s, version %s)", self.write_id,
                        self.deterministic_entry.dek_id, self.deterministic_entry.key_id,
                        self.deterministic_entry.key_version)
        # Finish an interrupted commit before staging anything new next to it.
        recover_interrupted_commits(self.location)
        # Tasks stage files only while this marker exists: once abort() (or the commit) removed it,
        # a straggling task of the job fails instead of leaving an orphan file.
        self.stage: Location = start_staging(self.location, self.write_id, mode=self.mode)
        logger.info(
            "write %s to %s (%s, job %s): staging %s; columns %s, deterministic %s, blind indexes %s, "
            "partition_by %s; key %s; tenant keys %s; subject column %s; %r",
            self.write_id, self.path, self.mode, self.job_id, self.staging_dir, self.columns, self.deterministic,
            self.blind_index, self.partition_by, self.key_uri,
            self.tenant_keys.to_json() if self.tenant_keys else None, self.subject_column, self.kms,
        )

    @property
    def mode(self) -> str:
        return "overwrite" if self.overwrite else "append"

    def _validate(self, schema: Any, names: list[str]) -> None:
        from pyspark.sql import types as T

        def need(cols: Sequence[str], option: str) -> None:
            missing = [c for c in cols if c not in names]
            if missing:
                raise ConfigurationError(
                    f"dataset {self.path}: option {option} names columns {missing} not in the DataFrame "
                    f"(columns: {names})"
                )

        need(self.columns, "columns")
        need(self.deterministic, "deterministic_columns")
        need(list(self.blind_index), "blind_index")
        need(self.partition_by, "partition_by")
        both = set(self.columns) & set(self.deterministic)
        if both:
            raise ConfigurationError(
                f"dataset {self.path}: columns {sorted(both)} are listed both as columns and deterministic_columns"
            )
        clash = [t for t in self.blind_index.values() if t in names]
        if clash:
            raise ConfigurationError(f"dataset {self.path}: blind index columns {clash} already exist")
        secret_parts = set(self.partition_by) & {*self.columns, *self.deterministic, *self.blind_index}
        if secret_parts:
            raise ConfigurationError(
                f"dataset {self.path}: partition_by columns {sorted(secret_parts)} are encrypted columns; "
                "partition values are written in clear into directory names"
            )
        if KEYS_COLUMN in self.partition_by:
            raise ConfigurationError(f"dataset {self.path}: cannot partition by {KEYS_COLUMN}")
        if not (self.columns or self.deterministic or self.blind_index or self.has_keys_column):
            raise ConfigurationError(
                f"dataset {self.path}: nothing to encrypt: set option columns (or deterministic_columns, "
                "blind_index), or write a DataFrame produced by spark_kms.spark.ml.ColumnEncryptor"
            )
        if (self.columns or self.deterministic or self.blind_index) and not (self.key_uri or self.tenant_keys):
            raise ConfigurationError(f"dataset {self.path}: option key_uri (or tenant_keys) is required to encrypt "
                                     "columns")
        if self.key_uri and (self.columns or self.deterministic or self.blind_index):
            self._provider()  # a bad key URI or a missing extra fails here, before any task runs
        if self.tenant_keys is not None or self.subject_column is not None:
            self._check_shredding(schema)
        supported = (
            T.StringType, T.BinaryType, T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType,
            T.DoubleType, T.BooleanType, T.DateType, T.TimestampType, T.TimestampNTZType, T.DecimalType,
        )
        for f in schema.fields:
            if f.name in {*self.columns, *self.deterministic, *self.blind_index} and not isinstance(
                f.dataType, supported
            ):
                raise ConfigurationError(
                    f"dataset {self.path}: column {f.name!r} has type {f.dataType.simpleString()} which "
                    "spark_kms cannot encrypt (strings, binary, numbers, booleans, dates, timestamps, decimals)"
                )

    def _check_shredding(self, schema: Any) -> None:
        """Per-tenant / per-subject options checked against the schema on the driver, before any staging:
        the same checks (EncryptionSpec, BatchEncryptor) the tasks would make; no KMS call."""
        from pyspark.sql.pandas.types import to_arrow_schema

        if not (self.columns or self.deterministic or self.blind_index):
            raise ConfigurationError(f"dataset {self.path}: options tenant_keys / subject_column need columns to "
                                     "encrypt (option columns)")
        arrow = to_arrow_schema(schema, timezone="UTC")
        if KEYS_COLUMN in arrow.names:
            arrow = arrow.remove(arrow.get_field_index(KEYS_COLUMN))
        try:
            encryptor = self._new_encryptor()
            try:
                encryptor.output_schema(arrow)
            finally:
                encryptor.close()
        except ConfigurationError as exc:
            raise ConfigurationError(f"dataset {self.path}: {exc}") from None

    def _new_encryptor(self) -> Any:
        """The BatchEncryptor of one task (no KMS call until its first batch)."""
        from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec

        spec = EncryptionSpec(columns=self.columns, deterministic=self.deterministic, blind_index=self.blind_index,
                              subject_column=self.subject_column)
        kwargs: dict[str, Any] = {
            "encryption_context": self.encryption_context if hasattr(self, "encryption_context") else {},
            "deterministic_entry": getattr(self, "deterministic_entry", None),
            "kms_options": self.kms,
            "tenant_keys": self.tenant_keys,
            "subject_store": self.subject_store,
        }
        if self.max_cells_per_dek is not None:
            kwargs["max_cells_per_dek"] = self.max_cells_per_dek
        return BatchEncryptor(spec, self.key_uri, **kwargs)

    def _provider(self) -> KmsProvider:
        assert self.key_uri is not None
        return self.kms.provider(self.key_uri)

    @property
    def staging_dir(self) -> str:
        return self.stage.uri

    # -- executors -----------------------------------------------------------------
    @marked_for_driver()  # a spark_kms error reaches the driver as itself (spark/_errors.py)
    def write(self, iterator: Iterator[pa.RecordBatch]) -> SparkKmsCommitMessage:
        from pyspark import TaskContext

        tc = TaskContext.get()
        partition_id = tc.partitionId() if tc is not None else 0
        attempt = tc.attemptNumber() if tc is not None else 0
        before = kms_call_counts()
        task = _TaskWrite(self, partition_id, attempt)
        try:
            for batch in iterator:
                task.add(batch)
            files, key_table_json = task.finish()
        finally:
            task.close()
        kms_calls = counts_delta(before, kms_call_counts())
        logger.debug("write %s, task %d attempt %d: %d rows staged in %d files; KMS calls %s",
                     self.write_id, partition_id, attempt, task.rows, len(files), kms_calls)
        return SparkKmsCommitMessage(
            partition_id=partition_id,
            attempt=attempt,
            rows=task.rows,
            files=files,
            key_table=key_table_json,
            kms_calls=kms_calls,
        )

    # -- driver ----------------------------------------------------------------------
    @marked_for_driver()  # a spark_kms error reaches the driver as itself (spark/_errors.py)
    def commit(self, messages: list[SparkKmsCommitMessage | None]) -> None:  # type: ignore[override]
        done = [m for m in messages if m is not None]
        if len(done) != len(messages):
            # Spark calls commit only when every task succeeded; be safe anyway.
            raise JobError(f"dataset {self.path}: {len(messages) - len(done)} write tasks did not report")
        commit_staged(self.location, self.write_id, [rel for m in done for rel in m.files],
                      overwrite=self.overwrite)
        result = self._result(done)
        logger.info("write %s to %s committed: %d files, %d rows, %d data keys, KMS calls %s",
                    self.write_id, self.path, len(result.files), result.rows, len(result.deks), result.kms_calls)
        if self.result_file:
            resolve(self.result_file).write_json_atomic(result.to_dict())

    def abort(self, messages: list[SparkKmsCommitMessage | None]) -> None:  # type: ignore[override]
        abort_staged(self.location, self.write_id)

    def _result(self, done: list[SparkKmsCommitMessage]) -> WriteResult:
        kms_calls = dict(self.driver_kms_calls)
        deks: list[str] = []
        versions: dict[str, set[str]] = {}
        if self.deterministic_entry is not None:
            deks.append(self.deterministic_entry.dek_id)
            versions.setdefault(self.deterministic_entry.key_id, set()).add(self.deterministic_entry.key_version)
        for m in done:
            add_counts(kms_calls, m.kms_calls)
            if m.key_table:
                table = KeyTable.from_json(m.key_table, where=f"task {m.partition_id}")
                for dek_id, entry in table.deks.items():
                    if dek_id not in deks:
                        deks.append(dek_id)
                        versions.setdefault(entry.key_id, set()).add(entry.key_version)
        return WriteResult(
            path=self.path,
            job_id=self.job_id,
            mode=self.mode,
            rows=sum(m.rows for m in done),
            files=sorted(final_name(rel) for m in done for rel in m.files),
            deks=deks,
            kms_calls=dict(sorted(kms_calls.items())),
            key_versions={k: sorted(v) for k, v in sorted(versions.items())},
        )


class _TaskWrite:
    """One task's files: one encryptor (one data key), one Parquet file per hive partition."""

    def __init__(self, writer: SparkKmsWriter, partition_id: int, attempt: int) -> None:
        self.w = writer
        self.partition_id = partition_id
        self.attempt = attempt
        self.rows = 0
        self._encryptor: Any = None
        self._extra_tables: dict[str, KeyTable] = {}
        self._files: dict[tuple[Any, ...], tuple[str, _LazyParquetWriter]] = {}

    def _aborted(self) -> JobError:
        return JobError(f"dataset {self.w.path}: write {self.w.write_id} was aborted or has ended; task stops")

    def _get_encryptor(self) -> Any:
        if self._encryptor is None:
            self._encryptor = self.w._new_encryptor()
        return self._encryptor

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        w = self.w
        if w.has_keys_column:
            self._collect_key_tables(batch.column(batch.schema.get_field_index(KEYS_COLUMN)))
            batch = batch.drop_columns([KEYS_COLUMN])
        if w.columns or w.deterministic or w.blind_index:
            batch = self._get_encryptor().encrypt_batch(batch)
        self.rows += batch.num_rows
        if not w.partition_by:
            self._file(()).write_batch(batch)
            return
        for values, sub in _split_by_partition(batch, w.partition_by):
            self._file(values).write_batch(sub.drop_columns(w.partition_by))

    def _collect_key_tables(self, column: pa.Array) -> None:
        import pyarrow.compute as pc

        for text in pc.unique(column).to_pylist():
            if text is None or text in self._extra_tables:
                continue
            self._extra_tables[text] = KeyTable.from_json(text, where=f"column {KEYS_COLUMN}")

    def _file(self, values: tuple[Any, ...]) -> _LazyParquetWriter:
        entry = self._files.get(values)
        if entry is None:
            hive = "/".join(f"{c}={hive_dir_value(v)}" for c, v in zip(self.w.partition_by, values, strict=True))
            name = f"part-{self.partition_id:05d}-{self.w.write_id}-a{self.attempt}.parquet"
            rel = f"{hive}/{name}" if hive else name
            if not staging_alive(self.w.stage):
                raise self._aborted()
            entry = (rel, _LazyParquetWriter(self.w.stage.join(rel), self._random_columns()))
            self._files[values] = entry
        return entry[1]

    def _random_columns(self) -> set[str]:
        """The AES-256-GCM columns of this task's output: encrypted here, or by ColumnEncryptor (key tables)."""
        random = set(self.w.columns) - set(self.w.deterministic)
        for table in self._extra_tables.values():
            random.update(name for name, spec in table.columns.items()
                          if spec.algorithm in (AES_256_GCM, AES_256_GCM_SUBJECT))
        return random

    def finish(self) -> tuple[list[str], str | None]:
        """Close every file with the task's key table in its footer."""
        if not self._files:
            return [], None
        table = self._key_table()
        data = table.to_json()
        for _rel, writer in self._files.values():
            writer.close_with_metadata({KEY_TABLE_METADATA_KEY: data})
        if not staging_alive(self.w.stage):
            # The write was aborted (or committed without this attempt) while this task ran: take
            # back what it staged, so nothing is left behind.
            for _rel, writer in self._files.values():
                writer.location.delete_file()
            raise self._aborted()
        logger.debug("write %s, task %d: footers name data keys %s", self.w.write_id, self.partition_id,
                     sorted(table.deks))
        return [rel for rel, _ in self._files.values()], data.decode("utf-8")

    def _key_table(self) -> KeyTable:
        tables = list(self._extra_tables.values())
        if self._encryptor is not None:
            tables.insert(0, self._encryptor.key_table())
        merged = tables[0]
        for more in tables[1:]:
            merged = merged.merge(more)
        return merged

    def close(self) -> None:
        for _rel, writer in self._files.values():
            writer.abandon()
        if self._encryptor is not None:
            if self._encryptor.erased_on_write:
                logger.warning("write %s, task %d: %d cells of erased subjects were written as null",
                               self.w.write_id, self.partition_id, self._encryptor.erased_on_write)
            self._encryptor.close()


class _LazyParquetWriter:
    """A ParquetWriter on a storage output stream, opened on the first batch (its schema), closed
    with footer metadata. On an object store the object appears, whole, when the stream closes.

    Encoded as :mod:`spark_kms.parquet.writer` says: no dictionary nor statistics on the AES-256-GCM
    columns (``random_columns``), and Spark's small Arrow batches gathered into larger row groups."""

    def __init__(self, location: Location, random_columns: Collection[str] = ()) -> None:
        self.location = location
        self.random_columns = frozenset(random_columns)
        self._sink: pa.NativeFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._row_groups = RowGroupBuffer()
        self._closed = False

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._sink = self.location.open_output_stream()
            options = parquet_write_options(batch.schema, self.random_columns)
            self._writer = pq.ParquetWriter(self._sink, batch.schema, **options)
        ready = self._row_groups.add(batch)
        if ready:
            write_row_group(self._writer, ready)

    def close_with_metadata(self, metadata: Mapping[str, str | bytes]) -> None:
        assert self._writer is not None and self._sink is not None
        write_row_group(self._writer, self._row_groups.drain())
        self._writer.add_key_value_metadata(dict(metadata))
        self._writer.close()
        self._sink.close()  # explicitly: a stream closed by its destructor may upload unseen
        self._closed = True

    def abandon(self) -> None:
        # A failed task: close the handles; a half file (on an object store: the object, when the
        # stream closes) stays in staging, never listed, and goes with the staging at commit/abort.
        self._row_groups.drain()
        if self._writer is not None and not self._closed:
            for handle in (self._writer, self._sink):
                with contextlib.suppress(Exception):
                    handle.close()  # type: ignore[union-attr]
            self._closed = True


def _split_by_partition(batch: pa.RecordBatch, columns: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], pa.RecordBatch]]:
    """Rows of ``batch`` grouped by the values of ``columns`` (vectorised: Arrow's group_by)."""
    keys = pa.table({c: batch.column(batch.schema.get_field_index(c)) for c in columns})
    keys = keys.append_column("__row", pa.array(range(batch.num_rows), pa.int64()))
    groups = keys.group_by(list(columns), use_threads=False).aggregate([("__row", "list")])
    key_values = [groups.column(c).to_pylist() for c in columns]
    row_lists = groups.column("__row_list")
    for i in range(groups.num_rows):
        yield tuple(vals[i] for vals in key_values), batch.take(row_lists[i].values)
