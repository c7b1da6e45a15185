"""The writing half of the ``spark_kms`` data source: tasks encrypt into staging, the driver
commits (see :mod:`spark_kms.spark.datasource` for the protocol), plus :func:`write_encrypted`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql.datasource import (
    DataSourceArrowWriter,
    WriterCommitMessage,
)

from spark_kms._atomic import atomic_write_json
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.spark._options import (
    _HIVE_ESCAPE,
    _HIVE_NULL,
    _RESULT_OPTION,
    JOURNAL_NAME,
    KEYS_COLUMN,
    STAGING_DIR,
    TRASH_DIR,
    _add_counts,
    _counts_delta,
    _local_path,
    _parse_blind_index,
    _parse_json_object,
    _positive_int,
    _scheme,
    _split_list,
)


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
        self.max_cells_per_dek = _positive_int(opts, "max_cells_per_dek", None)
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
        atomic_write_json(os.path.join(self.staging_dir, JOURNAL_NAME), journal)
        _roll_forward(self.path, journal)
        if self.result_file:
            atomic_write_json(self.result_file, self._result(done, [dst for _, dst in moves]).to_dict())

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
    root = os.path.abspath(root)
    for d in sorted(set(candidates), key=len, reverse=True):
        d = os.path.abspath(d)
        while d != root and d.startswith(root + os.sep):
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
    from spark_kms.spark.datasource import register  # the data source class lives there

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


