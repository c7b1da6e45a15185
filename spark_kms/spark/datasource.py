"""The ``spark_kms`` Spark data source: encrypted Parquet writes with a commit protocol, and a
full-scan decrypting reader.

Usage::

    spark_kms.spark.register(spark)
    (df.write.format("spark_kms")
       .option("key_uri", "local://alias/pii")
       .option("columns", "ssn,email")
       .option("kms_options", json.dumps({"local": {"keystore": "/tmp/ks"}}))
       .mode("overwrite")
       .save("/data/customers"))

Options (all strings, names lower case):

``key_uri``               the KMS key that wraps the data keys (required when there is a column to encrypt)
``columns``               comma list of columns encrypted with AES-256-GCM, one data key per task
``deterministic_columns`` comma list of columns encrypted with AES-SIV under one job-wide data key
``blind_index``           ``"email:email_bidx,ssn:ssn_bidx"``: source column -> new HMAC index column
``encryption_context``    JSON object of extra str -> str context sent to the KMS
``kms_options``           JSON object of provider options per URI scheme
``partition_by``          comma list of plain columns; files go to hive-style ``col=value/`` dirs.
                          (``df.write.partitionBy`` does not reach Python data sources in Spark 4.3:
                          Spark rejects it with "partitioning columns do not match", so use this option.)
``max_cells_per_dek``     roll to a new data key after this many cells (default 2**28)
``run_id``                the job id recorded in the encryption context (default: a fresh id)

Layout and protocol
-------------------
* Each task encrypts its batches with one :class:`spark_kms.parquet.BatchEncryptor`: exactly one
  GenerateDataKey per non-empty task (plus roll-overs at the cell limit); an empty task makes no
  file and no KMS call. It writes one Parquet file per (task, hive partition) into
  ``<path>/_spark_kms_staging/<write_id>/<hive dirs>/part-<partition>-<write_id>-a<attempt>.parquet``;
  each footer holds the key table (wrapped data keys only) under ``spark_kms.key_table``.
* A DataFrame carrying the ``_spark_kms_keys`` column (cells already encrypted by
  :mod:`spark_kms.spark.ml`) has that column stripped; its key tables are merged into the footers.
* The task's commit message lists its staged files, rows, DEK entries and KMS call counts.
* Commit (driver): write the journal ``<staging>/_COMMITTING`` (the decision, with every move
  listed), then for ``overwrite`` move the old data files (and the dataset manifest) aside into
  ``<path>/_spark_kms_trash/<write_id>/``, move the staged files listed in commit messages into
  place, delete the trash, delete staging. Files a failed task attempt left in staging are never
  listed, so retries leave no duplicates.
* Abort: delete this write's staging (rolling back first if a journal shows a commit had begun).
  The previous data is untouched. Tasks never create the staging dir (the driver does), so a
  task of the failed job still running after abort fails when it opens a file instead of
  leaving an orphan; one racing the abort by microseconds can leave a file in a ``_`` dir
  (invisible to readers).
* Recovery: every write first finishes any interrupted commit of the same dataset (a journal
  present = the commit was decided: roll forward). :func:`recover_interrupted_commits` does it
  on demand.

The window, honestly: moving files is not one atomic step. While a commit runs (milliseconds
per file), a concurrent reader may see a mix (old files gone, new ones partly moved). A driver
killed in that window leaves the dataset incomplete until the next write or a call to
:func:`recover_interrupted_commits`, which completes it from the journal. A driver killed before
the journal is written leaves only a staging directory, which readers ignore (``_`` prefix).
Only local / POSIX file systems are supported (``os.replace``).

Reading
-------
``spark.read.format("spark_kms").option("kms_options", json).load(path)`` decrypts inside the
Python worker and sends only plaintext Arrow batches to the JVM (one way), instead of
:func:`spark_kms.spark.read_encrypted`'s native scan + Arrow UDFs (ciphertext JVM -> Python ->
JVM). Read options:

``kms_options``          JSON object of provider options per URI scheme (to unwrap keys in tasks)
``batch_size``           rows per Arrow batch read from Parquet (default 65536)
``max_partition_bytes``  a file larger than this (uncompressed row-group bytes) is split into
                         runs of row groups, one task each (default 128 MiB)
``filter_pushdown``      ``true`` to push filters on plain and hive partition columns
                         (:class:`SparkKmsFilteringReader`); Spark also needs
                         ``spark.sql.python.filterPushdown.enabled=true``. Load a fresh
                         DataFrame per query then (a Spark 4.3 caveat, see the class)

* Schema (``.schema(...)`` optional): the stored columns with encrypted ones at their original
  types (from the footers' key tables), blind indexes ``binary``, then hive partition columns
  from ``name=value`` dirs, typed as Spark's partition discovery does (int, long, decimal,
  double, date, else string). Footers only: planning makes no KMS call.
* Partitions: one per data file (or per run of row groups for a large file); each carries the
  file's *wrapped* key table. A task reads its file with ``pq.ParquetFile.iter_batches``
  (streaming: memory stays flat), decrypts with :class:`spark_kms.parquet.BatchDecryptor`
  (keys unwrapped on first use, at most once per key per worker process), and yields batches.
  A cell that fails to authenticate raises DecryptionError naming the file and the column.
* The trade-off: Spark 4.3 gives Python data source readers **no column pruning**: every column
  of the schema is read and decrypted even if the query uses one. Pass a narrower
  ``.schema(...)`` to read less, or use ``read_encrypted`` for selective queries; this reader is
  for full scans and exports.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)

from spark_kms.errors import ConfigurationError, FormatError, JobError

__all__ = [
    "KEYS_COLUMN",
    "STAGING_DIR",
    "TRASH_DIR",
    "SparkKmsCommitMessage",
    "SparkKmsDataSource",
    "SparkKmsFilteringReader",
    "SparkKmsInputPartition",
    "SparkKmsReader",
    "SparkKmsWriter",
    "WriteResult",
    "recover_interrupted_commits",
    "register",
    "write_encrypted",
]

#: the column spark_kms.spark.ml adds: per row, the key table (JSON) of that row's cells
KEYS_COLUMN = "_spark_kms_keys"
STAGING_DIR = "_spark_kms_staging"
TRASH_DIR = "_spark_kms_trash"
JOURNAL_NAME = "_COMMITTING"
_RESULT_OPTION = "_spark_kms_result_file"
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Spark's ExternalCatalogUtils.escapePathName escapes these in partition values.
_HIVE_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^') | {chr(c) for c in range(0x20)}


@dataclass(frozen=True)
class WriteResult:
    """What an encrypted write did.

    :param path: the dataset directory.
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


# -- option parsing -------------------------------------------------------------


def _split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _parse_blind_index(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _split_list(value):
        source, sep, target = item.partition(":")
        if not sep or not source.strip() or not target.strip():
            raise ConfigurationError(
                f"option blind_index takes 'source:index_column' pairs separated by commas, got item {item!r}"
            )
        out[source.strip()] = target.strip()
    return out


def _parse_json_object(name: str, value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"option {name} must be a JSON object: {exc.msg} at char {exc.pos}") from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"option {name} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _local_path(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif path.startswith("file:"):
        path = path[len("file:") :]
    if "://" in path:
        raise ConfigurationError(
            f"the spark_kms data source writes to local/POSIX paths only, got {path!r}"
        )
    return os.path.abspath(path)


def _scheme(key_uri: str) -> str:
    return key_uri.split("://", 1)[0].lower()


def _counts_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def _add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


# -- the data source --------------------------------------------------------------


class SparkKmsDataSource(DataSource):
    """``format("spark_kms")``: writes encrypted Parquet, and reads it back decrypted.

    Writing: see the module docstring. Reading (``spark.read.format("spark_kms").load(path)``):
    a full-scan reader that decrypts inside the Python worker, see "Reading" in the module
    docstring and :class:`SparkKmsReader`. :func:`spark_kms.spark.read_encrypted` (Spark's
    native Parquet scan, with column pruning) stays the path for selective queries.
    """

    @classmethod
    def name(cls) -> str:
        return "spark_kms"

    def schema(self) -> Any:
        """The plaintext schema of the dataset (footers only: no KMS call)."""
        return _ScanOptions.from_options(self.options).plan().spark_schema()

    def reader(self, schema: Any) -> SparkKmsReader:
        scan = _ScanOptions.from_options(self.options)
        cls = SparkKmsFilteringReader if scan.filter_pushdown else SparkKmsReader
        return cls(scan, schema)

    def writer(self, schema: Any, overwrite: bool) -> SparkKmsWriter:
        return SparkKmsWriter(dict(self.options), schema, overwrite)


class SparkKmsWriter(DataSourceArrowWriter):
    """Created once per write on the driver side, pickled to every task and to commit/abort."""

    def __init__(self, options: Mapping[str, str], schema: Any, overwrite: bool) -> None:
        from spark_kms.kms import kms_call_counts

        opts = {k.lower(): v for k, v in options.items()}
        if not opts.get("path"):
            raise ConfigurationError("the spark_kms data source needs a path: .save(path)")
        self.path = _local_path(opts["path"])
        self.overwrite = overwrite
        self.write_id = uuid.uuid4().hex
        self.job_id = opts.get("run_id") or self.write_id
        self.key_uri = opts.get("key_uri") or None
        self.columns = _split_list(opts.get("columns"))
        self.deterministic = _split_list(opts.get("deterministic_columns"))
        self.blind_index = _parse_blind_index(opts.get("blind_index"))
        self.partition_by = _split_list(opts.get("partition_by"))
        self.kms_options: dict[str, dict[str, Any]] = _parse_json_object("kms_options", opts.get("kms_options"))
        user_ctx = _parse_json_object("encryption_context", opts.get("encryption_context"))
        if any(not isinstance(v, str) for v in user_ctx.values()):
            raise ConfigurationError("option encryption_context must map strings to strings")
        self.max_cells_per_dek = int(opts["max_cells_per_dek"]) if opts.get("max_cells_per_dek") else None
        self.result_file = opts.get(_RESULT_OPTION) or None

        names = list(schema.fieldNames())
        self.has_keys_column = KEYS_COLUMN in names
        self._validate(schema, names)

        encrypted = sorted({*self.columns, *self.deterministic, *self.blind_index})
        self.encryption_context = {
            **user_ctx,
            "spark_kms.dataset": self.path,
            "spark_kms.columns": ",".join(encrypted),
            "spark_kms.job_id": self.job_id,
        }
        # Finish an interrupted commit before staging anything new next to it.
        recover_interrupted_commits(self.path)
        # Tasks only write inside this directory and never create it: once abort() removed it,
        # a straggling task of the failed job fails instead of leaving an orphan file.
        os.makedirs(self.staging_dir)

        self.deterministic_entry = None
        self.driver_kms_calls: dict[str, int] = {}
        if self.deterministic or self.blind_index:
            from spark_kms.parquet.keys import new_deterministic_entry

            before = kms_call_counts()
            self.deterministic_entry = new_deterministic_entry(self._provider(), self.encryption_context)
            self.driver_kms_calls = _counts_delta(before, kms_call_counts())

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
        if (self.columns or self.deterministic or self.blind_index) and not self.key_uri:
            raise ConfigurationError(f"dataset {self.path}: option key_uri is required to encrypt columns")
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

    def _provider(self) -> Any:
        from spark_kms.kms import provider_from_uri

        assert self.key_uri is not None
        return provider_from_uri(self.key_uri, **dict(self.kms_options.get(_scheme(self.key_uri), {})))

    @property
    def staging_dir(self) -> str:
        return os.path.join(self.path, STAGING_DIR, self.write_id)

    # -- executors -----------------------------------------------------------------
    def write(self, iterator: Iterator[pa.RecordBatch]) -> SparkKmsCommitMessage:
        from pyspark import TaskContext

        from spark_kms.kms import kms_call_counts

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
        return SparkKmsCommitMessage(
            partition_id=partition_id,
            attempt=attempt,
            rows=task.rows,
            files=files,
            key_table=key_table_json,
            kms_calls=_counts_delta(before, kms_call_counts()),
        )

    # -- driver ----------------------------------------------------------------------
    def commit(self, messages: list[SparkKmsCommitMessage | None]) -> None:  # type: ignore[override]
        done = [m for m in messages if m is not None]
        if len(done) != len(messages):
            # Spark calls commit only when every task succeeded; be safe anyway.
            raise JobError(f"dataset {self.path}: {len(messages) - len(done)} write tasks did not report")
        moves = [(os.path.join(self.staging_dir, rel), os.path.join(self.path, _final_name(rel))) for m in done
                 for rel in m.files]
        old = _existing_data_files(self.path) if self.overwrite else []
        journal = {
            "write_id": self.write_id,
            "mode": "overwrite" if self.overwrite else "append",
            "trash": os.path.join(self.path, TRASH_DIR, self.write_id),
            "old": old,
            "moves": moves,
        }
        os.makedirs(self.staging_dir, exist_ok=True)
        _write_json_atomically(os.path.join(self.staging_dir, JOURNAL_NAME), journal)
        _roll_forward(self.path, journal)
        if self.result_file:
            _write_json_atomically(self.result_file, self._result(done, [dst for _, dst in moves]).to_dict())

    def abort(self, messages: list[SparkKmsCommitMessage | None]) -> None:  # type: ignore[override]
        journal_path = os.path.join(self.staging_dir, JOURNAL_NAME)
        if os.path.exists(journal_path):
            # commit() itself failed midway: put the old data back.
            with open(journal_path, encoding="utf-8") as fh:
                _roll_back(self.path, json.load(fh))
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        _remove_if_empty(os.path.join(self.path, STAGING_DIR))

    def _result(self, done: list[SparkKmsCommitMessage], final_files: list[str]) -> WriteResult:
        from spark_kms.crypto import KeyTable

        kms_calls = dict(self.driver_kms_calls)
        deks: list[str] = []
        versions: dict[str, set[str]] = {}
        if self.deterministic_entry is not None:
            deks.append(self.deterministic_entry.dek_id)
            versions.setdefault(self.deterministic_entry.key_id, set()).add(self.deterministic_entry.key_version)
        for m in done:
            _add_counts(kms_calls, m.kms_calls)
            if m.key_table:
                table = KeyTable.from_json(m.key_table, where=f"task {m.partition_id}")
                for dek_id, entry in table.deks.items():
                    if dek_id not in deks:
                        deks.append(dek_id)
                        versions.setdefault(entry.key_id, set()).add(entry.key_version)
        return WriteResult(
            path=self.path,
            job_id=self.job_id,
            mode="overwrite" if self.overwrite else "append",
            rows=sum(m.rows for m in done),
            files=sorted(os.path.relpath(f, self.path) for f in final_files),
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
        self._extra_tables: dict[str, Any] = {}
        self._files: dict[tuple[Any, ...], tuple[str, pq.ParquetWriter]] = {}
        self._spec: Any = None

    def _get_encryptor(self) -> Any:
        if self._encryptor is None:
            from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec

            w = self.w
            self._spec = EncryptionSpec(columns=w.columns, deterministic=w.deterministic, blind_index=w.blind_index)
            kwargs: dict[str, Any] = {
                "encryption_context": w.encryption_context,
                "deterministic_entry": w.deterministic_entry,
                "kms_options": w.kms_options,
            }
            if w.max_cells_per_dek is not None:
                kwargs["max_cells_per_dek"] = w.max_cells_per_dek
            self._encryptor = BatchEncryptor(self._spec, w._provider(), **kwargs)
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

        from spark_kms.crypto import KeyTable

        for text in pc.unique(column).to_pylist():
            if text is None or text in self._extra_tables:
                continue
            self._extra_tables[text] = KeyTable.from_json(text, where=f"column {KEYS_COLUMN}")

    def _file(self, values: tuple[Any, ...]) -> pq.ParquetWriter:
        entry = self._files.get(values)
        if entry is None:
            hive = "/".join(f"{c}={_hive_value(v)}" for c, v in zip(self.w.partition_by, values, strict=True))
            name = f"part-{self.partition_id:05d}-{self.w.write_id}-a{self.attempt}.parquet"
            rel = f"{hive}/{name}" if hive else name
            full = os.path.join(self.w.staging_dir, rel)
            if not os.path.isdir(self.w.staging_dir):
                raise JobError(f"dataset {self.w.path}: write {self.w.write_id} was aborted; task stops")
            if hive:
                os.makedirs(os.path.dirname(full), exist_ok=True)
            entry = (rel, _LazyParquetWriter(full))  # type: ignore[assignment]
            self._files[values] = entry  # type: ignore[assignment]
        return entry[1]

    def finish(self) -> tuple[list[str], str | None]:
        """Close every file with the task's key table in its footer."""
        if not self._files:
            return [], None
        from spark_kms.crypto import KEY_TABLE_METADATA_KEY

        data = self._key_table().to_json()
        for _rel, writer in self._files.values():
            writer.close_with_metadata({KEY_TABLE_METADATA_KEY: data})  # type: ignore[attr-defined]
        return [rel for rel, _ in self._files.values()], data.decode("utf-8")

    def _key_table(self) -> Any:
        tables = list(self._extra_tables.values())
        if self._encryptor is not None:
            tables.insert(0, self._encryptor.key_table())
        merged = tables[0]
        for more in tables[1:]:
            merged = merged.merge(more)
        return merged

    def close(self) -> None:
        for _rel, writer in self._files.values():
            writer.abandon()  # type: ignore[attr-defined]
        if self._encryptor is not None:
            self._encryptor.close()


class _LazyParquetWriter:
    """A ParquetWriter opened on the first batch (its schema), closed with footer metadata."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, batch.schema, compression="snappy")
        self._writer.write_batch(batch)

    def close_with_metadata(self, metadata: Mapping[str, str | bytes]) -> None:
        assert self._writer is not None
        self._writer.add_key_value_metadata(dict(metadata))
        self._writer.close()
        self._closed = True

    def abandon(self) -> None:
        # A failed task: close the handle; the half file stays in staging, never listed, and goes
        # with the staging dir at commit/abort.
        if self._writer is not None and not self._closed:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._closed = True


def _hive_value(value: Any) -> str:
    if value is None:
        return _HIVE_NULL
    text = value.isoformat() if hasattr(value, "isoformat") and not isinstance(value, str) else str(value)
    if text == "":
        return _HIVE_NULL
    return "".join(f"%{ord(ch):02X}" if ch in _HIVE_ESCAPE else ch for ch in text)


def _split_by_partition(batch: pa.RecordBatch, columns: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], pa.RecordBatch]]:
    """Rows of ``batch`` grouped by the values of ``columns`` (vectorised: Arrow's group_by)."""
    keys = pa.table({c: batch.column(batch.schema.get_field_index(c)) for c in columns})
    keys = keys.append_column("__row", pa.array(range(batch.num_rows), pa.int64()))
    groups = keys.group_by(list(columns), use_threads=False).aggregate([("__row", "list")])
    key_values = [groups.column(c).to_pylist() for c in columns]
    row_lists = groups.column("__row_list")
    for i in range(groups.num_rows):
        yield tuple(vals[i] for vals in key_values), batch.take(row_lists[i].values)


# -- commit journal ---------------------------------------------------------------------


def _final_name(staged_rel: str) -> str:
    head, name = os.path.split(staged_rel)
    stem, _ext = os.path.splitext(name)
    stem = stem.rsplit("-a", 1)[0]  # the attempt number only matters inside staging
    return os.path.join(head, f"{stem}.parquet")


def _existing_data_files(path: str) -> list[str]:
    """Data files (and the dataset manifest) an overwrite replaces: everything not ``_``/``.``
    prefixed under ``path``, walking hive dirs, plus ``_spark_kms_keys.json``."""
    out: list[str] = []
    if not os.path.isdir(path):
        return out
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(("_", ".")))
    manifest = os.path.join(path, "_spark_kms_keys.json")
    if os.path.exists(manifest):
        out.append(manifest)
    return out


def _write_json_atomically(target: str, payload: Mapping[str, Any]) -> None:
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _roll_forward(path: str, journal: Mapping[str, Any]) -> None:
    """Complete a decided commit. Idempotent: each step checks where each file is."""
    trash = journal["trash"]
    for old in journal["old"]:
        if os.path.exists(old):
            dst = os.path.join(trash, os.path.relpath(old, path))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(old, dst)
    for src, dst in journal["moves"]:
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(trash, ignore_errors=True)
    _remove_if_empty(os.path.join(path, TRASH_DIR))
    _remove_empty_dirs(path, [os.path.dirname(o) for o in journal["old"]])
    # Removing staging (journal included) is the last step: the commit is then complete.
    shutil.rmtree(os.path.join(path, STAGING_DIR, journal["write_id"]), ignore_errors=True)
    _remove_if_empty(os.path.join(path, STAGING_DIR))


def _roll_back(path: str, journal: Mapping[str, Any]) -> None:
    """Undo a commit that failed midway: new files back to staging, old files back in place."""
    trash = journal["trash"]
    for src, dst in journal["moves"]:
        if os.path.exists(dst) and not os.path.exists(src):
            os.makedirs(os.path.dirname(src), exist_ok=True)
            os.replace(dst, src)
    for old in journal["old"]:
        parked = os.path.join(trash, os.path.relpath(old, path))
        if os.path.exists(parked) and not os.path.exists(old):
            os.makedirs(os.path.dirname(old), exist_ok=True)
            os.replace(parked, old)
    shutil.rmtree(trash, ignore_errors=True)
    _remove_if_empty(os.path.join(path, TRASH_DIR))
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(path, STAGING_DIR, journal["write_id"], JOURNAL_NAME))


def _remove_if_empty(directory: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _remove_empty_dirs(root: str, candidates: Sequence[str]) -> None:
    """Remove now-empty hive partition dirs an overwrite emptied (deepest first)."""
    for d in sorted(set(candidates), key=len, reverse=True):
        while os.path.abspath(d) != os.path.abspath(root) and d.startswith(root):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)


def recover_interrupted_commits(path: str) -> list[str]:
    """Finish every commit of ``path`` that a dead driver left half done (roll forward from its
    journal). Returns the write ids completed. Staging dirs without a journal (a job still
    running, or one killed before commit) are left alone: nothing of theirs is visible."""
    path = _local_path(path)
    staging_root = os.path.join(path, STAGING_DIR)
    done: list[str] = []
    if not os.path.isdir(staging_root):
        return done
    for write_id in sorted(os.listdir(staging_root)):
        journal_path = os.path.join(staging_root, write_id, JOURNAL_NAME)
        if not os.path.isfile(journal_path):
            continue
        with open(journal_path, encoding="utf-8") as fh:
            journal = json.load(fh)
        _roll_forward(path, journal)
        done.append(write_id)
    return done


# -- entry points -----------------------------------------------------------------------


def register(spark: Any) -> None:
    """Register the ``spark_kms`` data source with ``spark`` (idempotent)."""
    spark.dataSource.register(SparkKmsDataSource)


def write_encrypted(
    df: Any,
    path: str,
    *,
    key_uri: str | None,
    columns: Sequence[str] = (),
    deterministic_columns: Sequence[str] = (),
    blind_index: Mapping[str, str] | None = None,
    partition_by: Sequence[str] = (),
    mode: str = "overwrite",
    encryption_context: Mapping[str, str] | None = None,
    kms_options: Mapping[str, Mapping[str, Any]] | None = None,
    max_cells_per_dek: int | None = None,
    run_id: str | None = None,
) -> WriteResult:
    """Write ``df`` to ``path`` as encrypted Parquet through the ``spark_kms`` data source.

    ``mode`` is ``"overwrite"`` or ``"append"``. Returns the totals the commit computed.
    """
    if mode not in ("overwrite", "append"):
        raise ConfigurationError(f"mode must be 'overwrite' or 'append', got {mode!r}")
    register(df.sparkSession)
    target = _local_path(path)
    fd, result_file = tempfile.mkstemp(prefix="spark_kms_write_", suffix=".json")
    os.close(fd)
    os.unlink(result_file)
    writer = (
        df.write.format("spark_kms")
        .mode(mode)
        .option("columns", ",".join(columns))
        .option("deterministic_columns", ",".join(deterministic_columns))
        .option("blind_index", ",".join(f"{s}:{t}" for s, t in (blind_index or {}).items()))
        .option("partition_by", ",".join(partition_by))
        .option("encryption_context", json.dumps(dict(encryption_context or {})))
        .option("kms_options", json.dumps({k: dict(v) for k, v in (kms_options or {}).items()}))
        .option(_RESULT_OPTION, result_file)
    )
    if key_uri:
        writer = writer.option("key_uri", key_uri)
    if max_cells_per_dek is not None:
        writer = writer.option("max_cells_per_dek", str(max_cells_per_dek))
    if run_id:
        writer = writer.option("run_id", run_id)
    try:
        writer.save(target)
        with open(result_file, encoding="utf-8") as fh:
            data = json.load(fh)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(result_file)
    return WriteResult(**data)


# -- reading: spark.read.format("spark_kms") ---------------------------------------------

_DEFAULT_READ_BATCH_ROWS = 65_536
_DEFAULT_MAX_PARTITION_BYTES = 128 * 1024 * 1024  # Spark's spark.sql.files.maxPartitionBytes default
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class _ScanOptions:
    """The read options, parsed once (driver side); picklable."""

    path: str
    kms_options: dict[str, dict[str, Any]]
    batch_size: int
    max_partition_bytes: int
    filter_pushdown: bool

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> _ScanOptions:
        opts = {k.lower(): v for k, v in options.items()}
        if not opts.get("path"):
            raise ConfigurationError("the spark_kms data source needs a path: .load(path)")
        pushdown = (opts.get("filter_pushdown") or "false").strip().lower()
        if pushdown not in ("true", "false"):
            raise ConfigurationError(f"option filter_pushdown must be 'true' or 'false', got {pushdown!r}")
        return cls(
            path=_local_path(opts["path"]),
            kms_options=_parse_json_object("kms_options", opts.get("kms_options")),
            batch_size=_positive_int(opts, "batch_size", _DEFAULT_READ_BATCH_ROWS),
            max_partition_bytes=_positive_int(opts, "max_partition_bytes", _DEFAULT_MAX_PARTITION_BYTES),
            filter_pushdown=pushdown == "true",
        )

    def plan(self) -> _DatasetPlan:
        return _DatasetPlan.build(self.path)


def _positive_int(opts: Mapping[str, str], name: str, default: int) -> int:
    text = opts.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"option {name} must be a positive integer, got {text!r}")
    return value


@dataclass(frozen=True)
class _DataFile:
    """One data file as the driver saw its footer: wrapped keys only, no cell."""

    path: str
    key_table: bytes  # the footer's key table (JSON), dataset manifest entries applied
    partition_values: tuple[str | None, ...]  # raw hive values, unescaped; None = null
    row_group_bytes: tuple[int, ...]
    arrow_schema: pa.Schema


@dataclass(frozen=True)
class _DatasetPlan:
    """A dataset's data files, stored schema, encrypted column types and hive partition columns.

    Built from footers only (pyarrow reads the footer, never a data page): no KMS call.
    """

    root: str
    files: tuple[_DataFile, ...]
    stored_schema: pa.Schema  # the first file's schema, as stored (encrypted columns binary)
    plaintext_types: dict[str, pa.DataType]  # encrypted (decryptable) column -> plaintext Arrow type
    partition_columns: tuple[str, ...]
    partition_types: tuple[Any, ...]  # Spark DataTypes, inferred like Spark's partition discovery

    @classmethod
    def build(cls, root: str) -> _DatasetPlan:
        from spark_kms.crypto import AES_256_GCM, AES_256_SIV, KeyTable
        from spark_kms.parquet import dataset_root_of, list_data_files, parse_arrow_type, read_manifest
        from spark_kms.parquet.reader import _parquet_file, _table_from_metadata

        if not os.path.exists(root):
            raise ConfigurationError(f"no such dataset: {root}")
        paths = list_data_files(root)
        if not paths:
            raise ConfigurationError(
                f"dataset {root} has no data files, so its schema cannot be inferred: pass .schema(...)"
            )
        base = root if os.path.isdir(root) else dataset_root_of(root)
        overrides = read_manifest(dataset_root_of(root))
        files: list[_DataFile] = []
        merged = KeyTable(deks={}, columns={})
        partition_columns: tuple[str, ...] | None = None
        for path in paths:
            pf = _parquet_file(path)
            table = _table_from_metadata(pf.metadata.metadata, path)
            if overrides:
                table = table.with_overrides(overrides)
            merged = merged.merge(table, where=f"dataset {root}")
            names, values = _hive_values(os.path.relpath(os.path.dirname(path), base), path)
            if partition_columns is None:
                partition_columns = names
            elif names != partition_columns:
                raise FormatError(
                    f"dataset {root}: file {path} sits in partition directories {list(names)}, "
                    f"other files in {list(partition_columns)}"
                )
            meta = pf.metadata
            files.append(
                _DataFile(
                    path=path,
                    key_table=table.to_json(),
                    partition_values=values,
                    row_group_bytes=tuple(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
                    arrow_schema=pf.schema_arrow,
                )
            )
        stored = files[0].arrow_schema
        clash = [c for c in partition_columns or () if c in stored.names]
        if clash:
            raise FormatError(f"dataset {root}: partition columns {clash} are also stored in the data files")
        plaintext = {
            name: parse_arrow_type(spec.arrow_type, column=name, where=f"dataset {root}")
            for name, spec in merged.columns.items()
            if spec.algorithm in (AES_256_GCM, AES_256_SIV)
        }
        partition_columns = partition_columns or ()
        types = tuple(
            _infer_partition_type([f.partition_values[i] for f in files]) for i in range(len(partition_columns))
        )
        return cls(root, tuple(files), stored, plaintext, partition_columns, types)

    def spark_schema(self) -> Any:
        """The default schema: stored columns (encrypted ones at their plaintext types, blind
        indexes binary), then the hive partition columns, as Spark orders them."""
        from pyspark.sql import types as T
        from pyspark.sql.pandas.types import from_arrow_type

        fields = []
        for f in self.stored_schema:
            t = self.plaintext_types.get(f.name, f.type)
            if pa.types.is_dictionary(t):
                t = t.value_type
            try:
                spark_type = from_arrow_type(t)
            except TypeError:  # PySparkTypeError: e.g. unsigned integers
                raise ConfigurationError(
                    f"dataset {self.root}: column {f.name!r} has Arrow type {t}, which has no Spark type"
                ) from None
            fields.append(T.StructField(f.name, spark_type, True))
        fields.extend(T.StructField(n, t, True) for n, t in zip(self.partition_columns, self.partition_types, strict=True))
        return T.StructType(fields)


def _unescape_hive(text: str) -> str:
    # The inverse of _hive_value's escaping (Spark's ExternalCatalogUtils.unescapePathName).
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _hive_values(rel_dir: str, path: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    if rel_dir in ("", "."):
        return (), ()
    names: list[str] = []
    values: list[str | None] = []
    for part in rel_dir.split(os.sep):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise FormatError(f"file {path}: directory {part!r} is not a hive partition directory (name=value)")
        names.append(_unescape_hive(name))
        raw = _unescape_hive(value)
        values.append(None if raw in (_HIVE_NULL, "") else raw)
    return tuple(names), tuple(values)


def _value_type(raw: str) -> Any:
    from pyspark.sql import types as T

    if _INT_RE.match(raw):
        n = int(raw)
        if _INT32[0] <= n <= _INT32[1]:
            return T.IntegerType()
        if _INT64[0] <= n <= _INT64[1]:
            return T.LongType()
        digits = len(raw.lstrip("+-"))
        return T.DecimalType(digits, 0) if digits <= 38 else T.StringType()
    if _FLOAT_RE.match(raw):
        return T.DoubleType()
    if _DATE_RE.match(raw):
        try:
            datetime.date.fromisoformat(raw)
        except ValueError:
            return T.StringType()
        return T.DateType()
    return T.StringType()


def _infer_partition_type(raws: Sequence[str | None]) -> Any:
    """Spark's partition value inference, restricted to what the writer produces: int, then
    long, then decimal(n, 0), then double, then date, else string; mixed numbers widen
    (int < long < decimal < double), any other mix is string. Timestamps stay strings."""
    from pyspark.sql import types as T

    kinds = {_value_type(r) for r in raws if r is not None}
    if not kinds:
        return T.StringType()
    if len(kinds) == 1:
        return kinds.pop()
    order = (T.IntegerType, T.LongType, T.DecimalType, T.DoubleType)
    if all(isinstance(k, order) for k in kinds):
        if any(isinstance(k, T.DoubleType) for k in kinds):
            return T.DoubleType()
        decimals = [k for k in kinds if isinstance(k, T.DecimalType)]
        if decimals:
            return T.DecimalType(max(d.precision for d in decimals), 0)
        return T.LongType()
    return T.StringType()


def _partition_scalar(raw: str | None, arrow_type: pa.DataType) -> pa.Scalar:
    if raw is None:
        return pa.scalar(None, type=arrow_type)
    if pa.types.is_date32(arrow_type):
        return pa.scalar(datetime.date.fromisoformat(raw), type=arrow_type)
    if pa.types.is_decimal(arrow_type):
        return pa.scalar(decimal.Decimal(raw), type=arrow_type)
    return pa.scalar(raw, type=pa.string()).cast(arrow_type)


@dataclass
class SparkKmsInputPartition(InputPartition):
    """One read task: a data file, or a run of its row groups (``None`` = all of them).

    Holds only the file's *wrapped* key table; the worker unwraps each data key on first use.
    """

    path: str
    key_table: bytes
    partition_values: tuple[str | None, ...]
    row_groups: list[int] | None = None


class SparkKmsReader(DataSourceReader):
    """Full-scan reader: each task reads its file with ``pq.ParquetFile.iter_batches``, decrypts
    with :class:`spark_kms.parquet.BatchDecryptor` and yields plaintext Arrow batches.

    Planned on the driver side from footers (wrapped keys only, no KMS call). Partitions: one
    per data file, or runs of row groups of at most ``max_partition_bytes`` (uncompressed) for
    larger files. Spark 4.3 gives Python data sources no column pruning: every column of the
    schema is read and decrypted. A ``.schema(...)`` naming only some columns is the way to read
    less (only those columns are read from disk, only their keys unwrapped).
    """

    def __init__(self, scan: _ScanOptions, schema: Any) -> None:
        from pyspark.sql.pandas.types import to_arrow_schema

        self.scan = scan
        plan = scan.plan()
        self.root = plan.root
        self.files = plan.files
        self.partition_columns = plan.partition_columns
        names = list(schema.fieldNames())
        known = [*plan.stored_schema.names, *plan.partition_columns]
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigurationError(f"dataset {self.root} has no columns {missing} (columns: {known})")
        # The exact Arrow schema Spark checks the batches against.
        self.output_schema: pa.Schema = to_arrow_schema(schema, timezone="UTC")
        self.partition_arrow_types = {
            n: self.output_schema.field(n).type for n in names if n in plan.partition_columns
        }
        self.stored_columns = [n for n in names if n not in plan.partition_columns]
        self.encrypted_columns = [n for n in self.stored_columns if n in plan.plaintext_types]
        self.row_filters: list[Any] = []  # pyarrow expressions on stored plain columns (pushdown)
        self.row_filter_columns: set[str] = set()
        self.partition_filters: list[Any] = []  # pyarrow expressions on hive partition columns

    # -- planning (driver side) -----------------------------------------------
    def partitions(self) -> list[InputPartition]:
        out: list[InputPartition] = []
        row_filter = _and_all(self.row_filters)
        for f in self.files:
            if self.partition_filters and not self._partition_matches(f):
                continue
            groups = list(range(len(f.row_group_bytes)))
            if row_filter is not None:
                groups = _row_groups_matching(f.path, row_filter, groups)
                if not groups:
                    continue
            for run in _runs(groups, f.row_group_bytes, self.scan.max_partition_bytes):
                whole = row_filter is None and len(run) == len(f.row_group_bytes)
                out.append(SparkKmsInputPartition(f.path, f.key_table, f.partition_values, None if whole else run))
        return out

    def _partition_matches(self, f: _DataFile) -> bool:
        # Evaluate the filters on a one-row table of the file's partition values: pyarrow
        # applies SQL's null semantics for us.
        arrays = {}
        for i, name in enumerate(self.partition_columns):
            t = self._partition_filter_type(name)
            arrays[name] = pa.array([_partition_scalar(f.partition_values[i], t).as_py()], type=t)
        return pa.table(arrays).filter(_and_all(self.partition_filters)).num_rows == 1

    def _partition_filter_type(self, name: str) -> pa.DataType:
        if name in self.partition_arrow_types:
            return self.partition_arrow_types[name]
        return pa.string()

    # -- reading (executor side) ------------------------------------------------
    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not isinstance(partition, SparkKmsInputPartition):
            return iter(())  # Spark sends InputPartition(None) when there is no file
        return self._read_file(partition)

    def _read_file(self, part: SparkKmsInputPartition) -> Iterator[pa.RecordBatch]:
        from spark_kms.crypto import KeyTable
        from spark_kms.parquet import BatchDecryptor
        from spark_kms.parquet.reader import _parquet_file

        where = f"file {part.path}"
        pf = _parquet_file(part.path)
        stored_names = pf.schema_arrow.names
        row_filter = _and_all(self.row_filters)
        filter_columns = sorted(self.row_filter_columns - set(self.stored_columns))
        needed = [*self.stored_columns, *filter_columns]
        absent = [c for c in needed if c not in stored_names]
        if absent:
            raise FormatError(f"{where} has no columns {absent} (dataset {self.root})")
        decryptor = BatchDecryptor(KeyTable.from_json(part.key_table, where=where), kms_options=self.scan.kms_options)
        constants = self._partition_constants(part)
        offset = 0
        for batch in pf.iter_batches(batch_size=self.scan.batch_size, row_groups=part.row_groups, columns=needed):
            read_rows = batch.num_rows
            if row_filter is not None:
                batch = batch.filter(row_filter)
            if batch.num_rows:
                # Row offsets are only meaningful for an unfiltered whole file.
                at = where if offset == 0 or row_filter is not None or part.row_groups else f"{where} (batch from row {offset})"
                batch = decryptor.decrypt_batch(batch, self.encrypted_columns, where=at)
                yield self._output(batch, constants, where)
            offset += read_rows

    def _partition_constants(self, part: SparkKmsInputPartition) -> dict[str, pa.Scalar]:
        out = {}
        for name, t in self.partition_arrow_types.items():
            raw = part.partition_values[self.partition_columns.index(name)]
            try:
                out[name] = _partition_scalar(raw, t)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, decimal.InvalidOperation):
                raise ConfigurationError(
                    f"file {part.path}: partition directory value of column {name!r} does not convert to {t}"
                ) from None
        return out

    def _output(self, batch: pa.RecordBatch, constants: Mapping[str, pa.Scalar], where: str) -> pa.RecordBatch:
        arrays = []
        n = batch.num_rows
        for field_ in self.output_schema:
            if field_.name in constants:
                arrays.append(pa.repeat(constants[field_.name], n))
                continue
            arr = batch.column(batch.schema.get_field_index(field_.name))
            if not arr.type.equals(field_.type):
                try:
                    arr = arr.cast(field_.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    # Arrow's message may quote a value: say only where and which types.
                    raise ConfigurationError(
                        f"{where}: column {field_.name!r} of type {arr.type} does not convert to {field_.type} "
                        "(the schema passed to .schema(...))"
                    ) from None
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)


class SparkKmsFilteringReader(SparkKmsReader):
    """:class:`SparkKmsReader` with filter pushdown (option ``filter_pushdown=true``; Spark also
    needs ``spark.sql.python.filterPushdown.enabled=true``, else it refuses the reader).

    Pushed: comparisons, ``IN``, ``IS [NOT] NULL``, ``<=>``, ``NOT`` and string prefix/suffix/
    contains on *plain* stored columns of integer, floating, string, binary, boolean, date or
    decimal type, and on hive partition columns. Partition-column filters drop whole files at
    planning; the others drop row groups whose statistics cannot match (planning) and then
    rows (in the task, before decryption: filtered-out cells are never decrypted). Spark does
    not re-check pushed filters, so each is applied exactly, with SQL's null semantics.
    Encrypted columns (only ciphertext is stored) and timestamps are left to Spark.

    **Spark 4.3 caveat: one query per DataFrame.** Spark keeps the reader of a query whose
    filters were pushed on the DataFrame (``PythonDataSourceV2.setReadInfo``), and a later query
    on the *same* DataFrame that has no pushable filter (no filter, or only ORs) reuses it:
    its rows are silently filtered by the earlier query's filters. Call ``.load()`` again for
    each query (planning reads footers only, no KMS call). The default reader, without
    ``filter_pushdown``, has nothing query-specific and is safe to reuse.
    """

    def pushFilters(self, filters: list[Any]) -> list[Any]:  # noqa: N802 (Spark's name)
        left = []
        for f in filters:
            target = self._classify(f)
            if target is None:
                left.append(f)
                continue
            expr, column, is_partition = target
            if is_partition:
                self.partition_filters.append(expr)
            else:
                self.row_filters.append(expr)
                self.row_filter_columns.add(column)
        return left

    def _classify(self, f: Any) -> tuple[Any, str, bool] | None:
        from pyspark.sql.datasource import Not

        inner = f.child if isinstance(f, Not) else f
        attribute = getattr(inner, "attribute", None)
        if not isinstance(attribute, tuple) or len(attribute) != 1:
            return None
        column = attribute[0]
        if column in self.partition_columns:
            t, is_partition = self._partition_filter_type(column), True
        elif column in self.files[0].arrow_schema.names and column not in self._not_plain():
            t, is_partition = self.files[0].arrow_schema.field(column).type, False
        else:
            return None
        expr = _filter_expression(f, t)
        return None if expr is None else (expr, column, is_partition)

    def _not_plain(self) -> set[str]:
        from spark_kms.crypto import KeyTable

        # Encrypted and blind-index columns: their stored cells say nothing about the plaintext.
        out: set[str] = set()
        for f in self.files:
            out.update(KeyTable.from_json(f.key_table, where=f"file {f.path}").columns)
        return out


def _pushable_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_boolean(t)
        or pa.types.is_date32(t)
        or pa.types.is_decimal(t)
    )


def _filter_expression(f: Any, t: pa.DataType) -> Any:
    """The pyarrow expression of one Spark filter on a column of type ``t``, or None if it is
    not pushable. Null semantics follow SQL: a comparison with a null cell is null (the row is
    dropped, also under NOT), ``<=>`` and ``IS [NOT] NULL`` are never null."""
    import pyarrow.compute as pc
    from pyspark.sql import datasource as sds

    if not _pushable_type(t):
        return None
    col = pc.field(f.child.attribute[0] if isinstance(f, sds.Not) else f.attribute[0])

    def lit(value: Any) -> Any:
        if value is None:
            raise ValueError("null literal")
        if isinstance(value, bytearray):
            value = bytes(value)
        return pa.scalar(value, type=t)

    def positive(g: Any) -> Any:
        if isinstance(g, sds.IsNull):
            return col.is_null()
        if isinstance(g, sds.IsNotNull):
            return col.is_valid()
        if isinstance(g, sds.EqualNullSafe):
            return col.is_null() if g.value is None else (col == lit(g.value)) & col.is_valid()
        if isinstance(g, sds.EqualTo):
            return col == lit(g.value)
        if isinstance(g, sds.GreaterThan):
            return col > lit(g.value)
        if isinstance(g, sds.GreaterThanOrEqual):
            return col >= lit(g.value)
        if isinstance(g, sds.LessThan):
            return col < lit(g.value)
        if isinstance(g, sds.LessThanOrEqual):
            return col <= lit(g.value)
        if isinstance(g, sds.In):
            values = [lit(v) for v in g.value]
            # is_in answers false for a null cell; SQL answers null: keep the null.
            return pc.if_else(col.is_valid(), pc.is_in(col, value_set=pa.array(values, type=t)), pa.scalar(None, pa.bool_()))
        if isinstance(g, (sds.StringStartsWith, sds.StringEndsWith, sds.StringContains)):
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)) or not isinstance(g.value, str):
                return None
            fn = {sds.StringStartsWith: pc.starts_with, sds.StringEndsWith: pc.ends_with,
                  sds.StringContains: pc.match_substring}[type(g)]
            return fn(col, pattern=g.value)
        return None

    try:
        if isinstance(f, sds.Not):
            inner = positive(f.child)
            return None if inner is None else ~inner
        return positive(f)
    except (ValueError, TypeError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # a literal that does not fit the column's type: Spark evaluates it


def _and_all(exprs: Sequence[Any]) -> Any:
    out = None
    for e in exprs:
        out = e if out is None else out & e
    return out


def _row_groups_matching(path: str, expr: Any, groups: list[int]) -> list[int]:
    """Row groups whose statistics may satisfy ``expr`` (pyarrow's own row-group pruning)."""
    import pyarrow.dataset as pds
    import pyarrow.fs as pafs

    fragment = pds.ParquetFileFormat().make_fragment(path, filesystem=pafs.LocalFileSystem())
    kept = {rg.id for rg in fragment.subset(filter=expr).row_groups}
    return [g for g in groups if g in kept]


def _runs(groups: list[int], sizes: Sequence[int], limit: int) -> Iterator[list[int]]:
    """Consecutive row groups cut into runs of at most ``limit`` bytes (at least one group each)."""
    run: list[int] = []
    total = 0
    for g in groups:
        if run and total + sizes[g] > limit:
            yield run
            run, total = [], 0
        run.append(g)
        total += sizes[g]
    if run or not groups:
        yield run
