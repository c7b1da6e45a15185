"""Writing and reading encrypted datasets from Spark: :func:`write_encrypted` and
:func:`read_encrypted`.

``write_encrypted(df, path, ...)`` is ``df.write.format("spark_kms")`` (see
:mod:`spark_kms.spark.datasource` for the layout and the commit protocol) returning the
commit's totals as a :class:`WriteResult`.

``read_encrypted(spark, path)`` is ``spark.read.parquet(path)`` plus, for each encrypted column
the query keeps, the decrypt Arrow UDF of :mod:`spark_kms.spark.udfs` with the column's
original type. So Spark keeps column pruning (``ReadSchema``) and predicate pushdown
(``PushedFilters``) on plain columns: the UDFs are deterministic projections the optimizer
moves filters through.

Where the keys come from, without any KMS call on the driver:

* the key tables in the Parquet footers of the files under ``path`` (the dataset root, a hive
  partition directory or one data file), merged, with the manifest of the *dataset root*
  taking precedence (:class:`spark_kms.parquet.dataset.Dataset`) -- so a rewrapped dataset
  reads under its new wrapping whichever part of it is read;
* for a dataset written by Spark's own Parquet writer from :mod:`spark_kms.spark.ml` output,
  the distinct values of its ``_spark_kms_keys`` column (one small Spark job over that column).

Only wrapped keys travel to executors, with a :class:`~spark_kms.kms.KmsConfig` (options
only); each worker process unwraps a data key the first time one of its cells needs it (at
most one KMS Decrypt per DEK per process). A query that keeps only plain columns builds no
UDF and makes no KMS call. Blind-index columns stay ``binary``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from spark_kms.crypto import HMAC_SHA256_BIDX, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.dataset import Dataset, apply_manifest, dataset_path
from spark_kms.spark._commit import recover_interrupted_commits
from spark_kms.spark._errors import errors_translated
from spark_kms.spark._options import KEYS_COLUMN, RESULT_OPTION
from spark_kms.spark._source_write import WriteResult
from spark_kms.spark.datasource import register

__all__ = ["WriteResult", "dataset_key_table", "read_encrypted", "recover_interrupted_commits", "write_encrypted"]

logger = logging.getLogger(__name__)


# -- writing ----------------------------------------------------------------------------


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
    kms_options: KmsConfigLike = None,
    max_cells_per_dek: int | None = None,
    run_id: str | None = None,
    join_domain: str | None = None,
    join_domain_store: str | None = None,
) -> WriteResult:
    """Write ``df`` to ``path`` as encrypted Parquet through the ``spark_kms`` data source.

    ``mode`` is ``"overwrite"`` or ``"append"``; ``kms_options`` is a
    :class:`~spark_kms.kms.KmsConfig` or provider options per key-URI scheme. Deterministic and
    blind-index columns use the key of ``join_domain`` (default: the dataset's own domain; a named
    domain keeps its key in ``join_domain_store``, see :mod:`spark_kms.parquet.join_domains`). Returns the
    totals the commit computed. A failed write raises the spark_kms error that stopped it (e.g.
    ``KeyStateError``, ``AccessDeniedError``), not Spark's wrapper of it, and leaves the previous
    data at ``path`` untouched.
    """
    if mode not in ("overwrite", "append"):
        raise ConfigurationError(f"mode must be 'overwrite' or 'append', got {mode!r}")
    kms = KmsConfig.of(kms_options)
    if key_uri:
        # A bad key URI (or a missing extra) fails here, in the caller's process, as itself --
        # not wrapped in the Spark error of the data source's writer.
        kms.provider(key_uri)
    register(df.sparkSession)
    target = dataset_path(path, what="the spark_kms data source")
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
        .option("kms_options", kms.to_json())
        .option("join_domain", join_domain or "")
        .option("join_domain_store", os.fspath(join_domain_store) if join_domain_store else "")
        .option(RESULT_OPTION, result_file)
    )
    if key_uri:
        writer = writer.option("key_uri", key_uri)
    if max_cells_per_dek is not None:
        writer = writer.option("max_cells_per_dek", str(max_cells_per_dek))
    if run_id:
        writer = writer.option("run_id", run_id)
    logger.info("write_encrypted to %s (%s): columns %s, deterministic %s, blind indexes %s, partition_by %s; "
                "key %s; %r", target, mode, list(columns), list(deterministic_columns), dict(blind_index or {}),
                list(partition_by), key_uri, kms)
    try:
        with errors_translated():
            writer.save(target)
        with open(result_file, encoding="utf-8") as fh:
            data = json.load(fh)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(result_file)
    result = WriteResult(**data)
    logger.info("write_encrypted to %s committed (job %s): %d files, %d rows, %d data keys, KMS calls %s",
                result.path, result.job_id, len(result.files), result.rows, len(result.deks), result.kms_calls)
    return result


# -- reading ----------------------------------------------------------------------------


def _dataset_keys(
    path: str,
    df: Any,
    kms: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
) -> tuple[Dataset, KeyTable]:
    local = dataset_path(path, what="read_encrypted")
    has_keys_column = KEYS_COLUMN in df.columns
    # The KMS options verify an authenticated manifest (a declared dataset); the required columns
    # and the minimum format version refuse files that are not encrypted as they must be.
    dataset = Dataset.open(local, missing_ok=has_keys_column, require_files=False, kms_options=kms,
                           require_encrypted=require_encrypted, min_format_version=min_format_version)
    table = dataset.key_table()
    if has_keys_column:
        where = f"dataset {local}, column {KEYS_COLUMN}"
        with errors_translated():
            rows = df.select(KEYS_COLUMN).distinct().collect()
        for row in rows:
            text = row[0]
            if text is not None:
                # The manifest's precedence holds for keys that travel in the column too.
                column_table = apply_manifest(KeyTable.from_json(text, where=where), dataset.manifest)
                table = table.merge(column_table, where=where)
    return dataset, table


def dataset_key_table(spark: Any, path: str, *, df: Any = None) -> KeyTable:
    """The merged key table of the dataset at ``path`` (footers, the dataset root's manifest
    taking precedence, and the ``_spark_kms_keys`` column if the files carry one). Wrapped keys
    only: no KMS call."""
    if df is None:
        df = spark.read.parquet(path)
    return _dataset_keys(path, df)[1]


def read_encrypted(
    spark: Any,
    path: str,
    *,
    columns: Sequence[str] | None = None,
    kms_options: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
) -> Any:
    """A DataFrame of the dataset at ``path`` with its encrypted columns decrypted lazily.

    :param path: the dataset root, one hive partition directory in it, or one data file.
    :param columns: keep only these columns (plain or encrypted), in this order; default all.
    :param kms_options: how to reach each KMS, used on executors to unwrap keys (a
        :class:`~spark_kms.kms.KmsConfig`, or provider options per key-URI scheme).
    :param require_encrypted: columns that must be encrypted in every file: a file that stores one
        in plaintext is refused (see docs/FORMAT.md, "Threat model"); a declared dataset's
        authenticated declaration is always checked.
    :param min_format_version: refuse files older than this key-table format (2: authenticated specs).
    :raises MissingKeyTableError: a data file has no key table (names the file).
    :raises ConfigurationError: ``columns`` names a column the dataset does not have.

    The DataFrame is lazy: a key that does not unwrap or a cell that does not authenticate fails
    the action you run on it, as Spark's ``PythonException``. Run the action inside
    :func:`spark_kms.spark.errors_translated` to get the spark_kms error itself::

        with errors_translated():
            rows = read_encrypted(spark, path).collect()   # KeyStateError, DecryptionError, ...
    """
    from spark_kms.spark.udfs import decrypt_udf

    df = spark.read.parquet(path)
    kms = KmsConfig.of(kms_options)
    dataset, table = _dataset_keys(path, df, kms, require_encrypted, min_format_version)
    if KEYS_COLUMN in df.columns:
        df = df.drop(KEYS_COLUMN)
    names = list(df.columns)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigurationError(f"dataset {dataset_path(path)} has no columns {missing} (columns: {names})")
        names = list(columns)
    selected = []
    decrypted = []
    for name in names:
        spec = table.columns.get(name)
        if spec is None or spec.algorithm == HMAC_SHA256_BIDX:
            selected.append(df[name])
            continue
        if getattr(spec, "row_binding", None):
            raise ConfigurationError(
                f"dataset {dataset_path(path)}: column {name!r} is bound to the rows' {spec.row_binding!r} values; "
                "read it with spark.read.format('spark_kms') or spark_kms.parquet.read_decrypted_table"
            )
        udf = decrypt_udf(name, spec.arrow_type, table.deks, kms)
        selected.append(udf(df[name]).alias(name))
        decrypted.append(name)
    logger.info("read_encrypted %s (dataset root %s): %d data files, %d data keys (%d from the manifest); "
                "encrypted columns decrypted on use: %s; %r", path, dataset.root, len(dataset.files),
                len(table.deks), len(set(dataset.manifest) & set(table.deks)), decrypted, kms)
    return df.select(*selected)
