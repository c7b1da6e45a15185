"""The JVM write path of :func:`spark_kms.spark.write_encrypted` (issue 16): cells encrypted inside the executors'
JVMs and written by Spark's own Parquet writer, without the Arrow hand-off to Python workers.

How a write goes (``write_encrypted(..., fast_path="auto")`` or ``True``; the default, False, is the Python path)
    1. On the driver, the :class:`~spark_kms.spark._source_write.SparkKmsWriter` of the Python path is built from
       the same options: the same checks and errors, the same encryption context (dataset, columns, job id, the
       caller's context), ``require_protection_level``, recovery of interrupted commits, the staging directory.
    2. A pool of fresh data keys is made there: one GenerateDataKey per expected write task (plus a few spare)
       through the same :class:`~spark_kms.kms.KmsConfig` and provider -- the same principal, access control and
       audit trail; a denied principal fails here with ``AccessDeniedError`` and the staging is removed. The
       plaintext keys and each key's footer key table (canonical JSON: the column specs and that key's entry) go
       into the driver JVM (``io.sparkkms.fastpath.write.WriteKeyPool``) under a random handle.
    3. ``spark_kms_encrypt(value, config)`` (a Catalyst expression of the fast-path jar) encrypts each cell:
       each task attempt takes one key of the pool (plugin RPC; in local mode directly) -- never one key for two
       attempts -- with a random 4-byte salt and a counter (docs/FORMAT.md sections 2-4), OpenSSL over JNI (JCE
       without it). Integers and booleans are cast to strings by Spark first: Spark's text of them is the plaintext
       encoding of FORMAT.md section 6. The config literal holds the handle, the column and the AAD tail: no key.
    4. ``io.sparkkms.fastpath.write.SparkKmsParquetFormat`` (Spark's Parquet writer, no dictionary nor statistics
       on the encrypted columns, like :mod:`spark_kms.parquet.writer`) writes into the staging directory with the
       task's key table in each footer. The driver then names the files as the Python path does, checks every
       footer has a key table, and commits them with :func:`spark_kms.spark._commit.commit_staged`. A failure
       aborts like the Python path (:func:`~spark_kms.spark._commit.abort_staged`): the previous data is intact.
    5. The pool's keys are forgotten (zeroed) when the write ends, committed or not.

When it is used: the session is classic with the fast-path plugin (:func:`spark_kms.spark.fastpath.
unavailable_reason`), the dataset is on a local file system, and the write encrypts only ``columns`` (AES-256-GCM)
of string, binary, integer or boolean type -- no deterministic / blind-index columns, join domain, tenant or
subject keys, ``max_cells_per_dek``, no ``_spark_kms_keys`` column -- and partitions (if at all) by string or
integer columns. Otherwise the Python path (``fast_path=True``: a ConfigurationError saying why). When more task
attempts run than keys were made (a task retried many times, AQE splitting partitions), the write fails cleanly and
``"auto"`` writes again on the Python path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from spark_kms.crypto import (
    AES_256_GCM,
    FORMAT_VERSION,
    KEY_TABLE_METADATA_KEY,
    ColumnSpec,
    KeyTable,
    column_binding,
)
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.kms import kms_call_counts
from spark_kms.spark._commit import abort_staged, commit_staged, final_name
from spark_kms.spark._errors import errors_translated
from spark_kms.spark._options import KEYS_COLUMN, add_counts, counts_delta, split_list
from spark_kms.spark._source_write import SparkKmsCommitMessage, SparkKmsWriter, WriteResult
from spark_kms.spark.fastpath import _py4j_quiet, unavailable_reason
from spark_kms.storage import is_hidden, resolve

__all__ = ["FORMAT_CLASS", "UDF_ENCRYPT", "JvmWriteResult", "unsupported_reason", "write_jvm"]

logger = logging.getLogger(__name__)

FORMAT_CLASS = "io.sparkkms.fastpath.write.SparkKmsParquetFormat"
UDF_ENCRYPT = "spark_kms_encrypt"
HANDLE_OPTION = "spark_kms.write.handle"
_CONFIG_MAGIC = b"SKW1"
_POOL_EXHAUSTED = "data-key pool is exhausted"
#: Spark type names (simpleString) the JVM path encrypts; the others are cast to string first
_STRING_TYPES = frozenset({"string", "binary"})
_CAST_TYPES = frozenset({"tinyint", "smallint", "int", "bigint", "boolean"})
_PARTITION_TYPES = frozenset({"string", "tinyint", "smallint", "int", "bigint"})
#: options the JVM path does not do (any non-empty value sends the write to the Python path)
_PYTHON_ONLY = ("deterministic_columns", "blind_index", "join_domain", "join_domain_store", "tenant_keys",
                "tenant_column", "subject_column", "max_cells_per_dek")


@dataclass(frozen=True)
class JvmWriteResult(WriteResult):
    """A :class:`WriteResult` of the JVM write path (``engine == "jvm"``)."""

    engine: str = "jvm"


def unsupported_reason(spark: Any, df: Any, target: str, options: Mapping[str, str]) -> str | None:
    """Why the write of ``df`` to ``target`` with the data-source ``options`` (the session conf's merged in) cannot
    take the JVM path, or None when it can."""
    reason = unavailable_reason(spark)
    if reason is not None:
        return reason
    if not resolve(target).is_local:
        return f"{target} is not on a local file system (object stores take the Python path)"
    used = [name for name in _PYTHON_ONLY if (options.get(name) or "").strip()]
    if used:
        return f"the option(s) {used} are written by the Python path only"
    if KEYS_COLUMN in df.columns:
        return f"the DataFrame has a {KEYS_COLUMN} column (spark_kms.spark.ml.ColumnEncryptor output)"
    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    columns = split_list(options.get("columns"))
    if not columns:
        return "it encrypts no column (option columns)"
    odd = {c: types[c] for c in columns if c in types and types[c] not in _STRING_TYPES | _CAST_TYPES}
    if odd:
        return f"columns {odd} are of types the JVM path does not encrypt (string, binary, integers, boolean)"
    parts = {c: types[c] for c in split_list(options.get("partition_by")) if c in types}
    odd = {c: t for c, t in parts.items() if t not in _PARTITION_TYPES}
    if odd:
        return f"partition_by columns {odd} are of types the JVM path does not partition by (string, integers)"
    return None


def _field(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "big") + raw


def _config(handle: str, spec: ColumnSpec) -> bytes:
    """The expression's config literal: handle, column and AAD tail (FORMAT.md section 3, version 2)."""
    name = spec.name.encode("utf-8")
    tail = len(name).to_bytes(2, "big") + name + column_binding(spec)
    return _CONFIG_MAGIC + b"".join(_field(f) for f in (handle.encode(), name, tail))


def _column_specs(df: Any, columns: Sequence[str]) -> dict[str, ColumnSpec]:
    """The key-table column specs of ``columns``, as the Python path's BatchEncryptor makes them."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from spark_kms.parquet._types import check_supported

    arrow = to_arrow_schema(df.select(*columns).schema, timezone="UTC")
    return {
        name: ColumnSpec(name=name, algorithm=AES_256_GCM, arrow_type=str(check_supported(name, arrow.field(name).type)),
                         source=None)
        for name in columns
    }


def _task_count(df: Any) -> int:
    """How many write tasks the plan of ``df`` runs (an upper bound where it can be known without running it)."""
    qe = df._jdf.queryExecution()
    plan = qe.executedPlan()
    n = int(plan.outputPartitioning().numPartitions())
    if n > 0:
        return n
    if "Exchange" in plan.toString():
        # AQE coalesces shuffle partitions (fewer tasks), never more than the shuffle asked for but for skew splits
        return int(df.sparkSession.conf.get("spark.sql.shuffle.partitions", "200"))
    return int(qe.toRdd().getNumPartitions())  # a scan: file splits, computed on the driver, no job


def _make_pool(writer: SparkKmsWriter, specs: Mapping[str, ColumnSpec], size: int) -> tuple[list[str], bytearray,
                                                                                              list[str]]:
    """``size`` fresh data keys (GenerateDataKey each, up to DEFAULT_KMS_CONCURRENCY in flight, as the rotation
    jobs do): hex ids, plaintext keys concatenated, footer tables."""
    from spark_kms.crypto.cell import new_dek_id
    from spark_kms.kms.concurrent import DEFAULT_KMS_CONCURRENCY, bounded_map
    from spark_kms.parquet.keys import entry_for

    provider = writer.kms.provider(writer.key_uri) if writer.key_uri else None
    if provider is None:
        raise ConfigurationError(f"dataset {writer.path}: option key_uri is required to encrypt columns")
    ids: list[str] = []
    keys = bytearray()
    tables: list[str] = []

    def add(_i: int, data_key: Any) -> None:  # in the calling thread, as each call returns
        try:
            entry = entry_for(data_key, new_dek_id(), provider, writer.encryption_context, AES_256_GCM)
            keys.extend(data_key.plaintext)
        finally:
            data_key.wipe()
        ids.append(entry.dek_id)
        table = KeyTable(deks={entry.dek_id: entry}, columns=dict(specs), format_version=FORMAT_VERSION)
        tables.append(table.to_json().decode("utf-8"))

    try:
        bounded_map(lambda _n: provider.generate_data_key(writer.encryption_context), range(size),
                    concurrency=max(1, min(DEFAULT_KMS_CONCURRENCY, size)), on_result=add,
                    name="spark-kms-write-pool")
    except BaseException:
        keys[:] = bytes(len(keys))
        raise
    return ids, keys, tables


def _staged_files(stage_dir: str) -> list[str]:
    """The data files Spark wrote into ``stage_dir``, renamed as the Python path names staged files (so
    :func:`final_name` maps them to distinct names); Spark's ``_SUCCESS`` and checksum files removed."""
    out = []
    for root, dirs, files in os.walk(stage_dir):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        for name in files:
            path = os.path.join(root, name)
            if name == "_SUCCESS" or name.endswith(".crc"):
                os.unlink(path)
                continue
            if is_hidden(name) or not name.endswith(".parquet"):
                continue
            stem = name.split(".", 1)[0]  # part-00000-<uuid>-c000(.snappy).parquet
            renamed = f"{stem}-a0.parquet"
            os.replace(path, os.path.join(root, renamed))
            rel = os.path.relpath(os.path.join(root, renamed), stage_dir).replace(os.sep, "/")
            if final_name(rel) != posix_join(os.path.dirname(rel), f"{stem}.parquet"):
                raise JobError(f"{stage_dir}: cannot name the staged file {rel!r}")
            out.append(rel)
    return sorted(out)


def posix_join(head: str, name: str) -> str:
    return f"{head}/{name}" if head else name


def _messages(stage_dir: str, files: Sequence[str]) -> list[SparkKmsCommitMessage]:
    """One commit message per staged file: rows and key table from its footer (refused when it has none)."""
    import pyarrow.parquet as pq

    out = []
    for i, rel in enumerate(files):
        meta = pq.read_metadata(os.path.join(stage_dir, rel))
        raw = (meta.metadata or {}).get(KEY_TABLE_METADATA_KEY.encode())
        if raw is None:
            raise JobError(f"{stage_dir}: the staged file {rel!r} has no key table in its footer; nothing committed")
        text = raw.decode("utf-8")
        KeyTable.from_json(text, where=f"staged file {rel}")
        out.append(SparkKmsCommitMessage(partition_id=i, attempt=0, rows=meta.num_rows, files=[rel], key_table=text,
                                         kms_calls={}))
    return out


def write_jvm(df: Any, target: str, options: Mapping[str, str], *, overwrite: bool,
              fast_path: bool | str = "auto") -> WriteResult | None:
    """Write ``df`` to ``target`` on the JVM path (see the module docstring); ``options`` are the data source's,
    the session conf's merged in. Returns None when ``fast_path="auto"`` and the key pool ran out (the write
    was aborted, nothing changed: write on the Python path)."""
    from pyspark.sql import functions as F  # noqa: N812 - pyspark's convention

    spark = df.sparkSession
    # the Python path's checks, encryption context and staging, from the options .save(target) would give it
    writer = SparkKmsWriter({**options, "path": target}, df.schema, overwrite)
    specs = _column_specs(df, writer.columns)
    handle = secrets.token_hex(16)
    jvm = spark.sparkContext._jvm
    stage_dir = os.fspath(writer.stage)
    try:
        tasks = _task_count(df)
        size = tasks + max(2, tasks // 10)
        before = kms_call_counts()
        ids, keys, tables = _make_pool(writer, specs, size)
        add_counts(writer.driver_kms_calls, counts_delta(before, kms_call_counts()))
        try:
            with _py4j_quiet():
                jvm.io.sparkkms.fastpath.write.WriteKeyPool.register(handle, ",".join(ids), keys, "\n".join(tables))
        finally:
            keys[:] = bytes(len(keys))
        jvm.io.sparkkms.fastpath.write.WriteFunctions.register(spark._jsparkSession)
        selected = []
        for name in df.columns:
            spec = specs.get(name)
            if spec is None:
                selected.append(df[name])
                continue
            value = df[name]
            if df.schema[name].dataType.simpleString() in _CAST_TYPES:
                value = value.cast("string")  # Spark's text = FORMAT.md section 6 (decimal digits, true/false)
            selected.append(F.call_function(UDF_ENCRYPT, value, F.lit(bytearray(_config(handle, spec)))).alias(name))
        out = df.select(*selected).write.format(FORMAT_CLASS).mode("append").option(HANDLE_OPTION, handle)
        for name in specs:
            out = out.option(f"parquet.enable.dictionary#{name}", "false")
            out = out.option(f"parquet.column.statistics.enabled#{name}", "false")
            out = out.option(f"parquet.size.statistics.enabled#{name}", "false")
        if writer.partition_by:
            out = out.partitionBy(*writer.partition_by)
        logger.info("write %s to %s on the JVM path: %d keys for %d expected tasks (key handle %s…), AES-GCM in %s",
                    writer.write_id, writer.path, size, tasks, handle[:8],
                    jvm.io.sparkkms.fastpath.write.WriteFunctions.implementation())
        with errors_translated():
            out.save(stage_dir)
        files = _staged_files(stage_dir)
        done = _messages(stage_dir, files)
        commit_staged(writer.location, writer.write_id, files, overwrite=writer.overwrite)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            abort_staged(writer.location, writer.write_id)
        if fast_path == "auto" and isinstance(exc, JobError) and _POOL_EXHAUSTED in str(exc):
            logger.warning("write %s to %s: the JVM path ran out of data keys (%s); writing on the Python path",
                           writer.write_id, writer.path, exc)
            return None
        raise
    finally:
        with contextlib.suppress(Exception):
            jvm.io.sparkkms.fastpath.write.WriteKeyPool.forget(handle)
    result = writer._result(done)
    logger.info("write %s to %s committed on the JVM path: %d files, %d rows, %d data keys, KMS calls %s",
                writer.write_id, writer.path, len(result.files), result.rows, len(result.deks), result.kms_calls)
    return JvmWriteResult(**asdict(result))
