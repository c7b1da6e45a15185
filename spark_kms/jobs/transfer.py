"""Encrypt a plain dataset, decrypt an encrypted one: thin orchestration over the Spark layer.

* :func:`encrypt_dataset` reads ``source`` (Parquet, CSV with a header row, or JSON lines)
  with Spark and writes it through :func:`spark_kms.spark.write_encrypted` (one DEK per
  task, atomic commit). The run id goes into the encryption context of every new DEK
  (``spark_kms.job_id``), so the KMS audit log ties each GenerateDataKey to the run.
* :func:`decrypt_dataset` reads ``source`` with :func:`spark_kms.spark.read_encrypted`
  (native Parquet scan, lazy per-process unwrap) and writes *plaintext* to an explicit
  ``destination`` that must be neither the source nor inside it (nor contain it): a
  decrypt never overwrites the encrypted data. The destination is replaced, so a
  retried task (Airflow) gives the same result.

**A failed job never damages the destination.** Encrypt writes through the data source's commit
protocol (:mod:`spark_kms.spark._commit`: tasks stage, the driver commits; an aborted write
leaves the previous files in place). Decrypt writes into a staging directory beside the
destination and swaps it in only when the whole output is written
(:mod:`spark_kms.jobs._replace`); a failure deletes the staging directory and leaves the
destination byte for byte as it was.

**Errors are spark_kms errors.** Both jobs run their Spark actions inside
:func:`spark_kms.spark.errors_translated`: a key that is disabled, denied or unreachable, or a
cell that does not authenticate, raises ``KeyStateError``, ``AccessDeniedError``,
``KmsUnavailableError``, ``DecryptionError``... with its own message, not Spark's
``PythonException`` (which stays chained as ``__cause__``).

Run summaries go to ``<destination>/_spark_kms_runs/`` for encrypt and to
``<source>/_spark_kms_runs/`` for decrypt (the audit trail stays with the encrypted data). A
failed encrypt records its run there too: that record is the one file a failed job adds to the
destination.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from spark_kms.errors import ConfigurationError
from spark_kms.jobs._common import require_dataset_dir
from spark_kms.jobs._replace import staged_replacement
from spark_kms.jobs._summary import RunRecorder, RunSummary, key_versions_of
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.dataset import Dataset

__all__ = ["SOURCE_FORMATS", "decrypt_dataset", "encrypt_dataset"]

SOURCE_FORMATS = ("parquet", "csv", "json")
_MODES = ("overwrite", "append")


def _session(spark: Any) -> Any:
    if callable(spark):  # a factory, called only once the job's arguments passed their checks
        return spark()
    if spark is not None:
        return spark
    from spark_kms.spark.session import local_session

    return local_session()


def _check_format(value: str, what: str) -> str:
    if value not in SOURCE_FORMATS:
        raise ConfigurationError(f"{what} must be one of {list(SOURCE_FORMATS)}, got {value!r}")
    return value


def _read_source(spark: Any, fmt: str, path: str, text_columns: Sequence[str] = ()) -> Any:
    """The source as a DataFrame. A CSV source carries a header row; its types are inferred so
    numbers stay numbers -- except ``text_columns`` (the PII being encrypted or indexed), read as
    text exactly as written: inference would turn an SSN, ZIP code or card number into a number
    and lose its leading zeros before it is ever encrypted."""
    if fmt != "csv":
        return spark.read.format(fmt).load(path)
    from pyspark.sql.types import StringType, StructField, StructType

    csv = spark.read.format("csv").option("header", "true")
    inferred = csv.option("inferSchema", "true").load(path).schema
    text = set(text_columns)
    schema = StructType([StructField(f.name, StringType(), True) if f.name in text else f for f in inferred.fields])
    return csv.schema(schema).load(path)


def _separate(source: Path, destination: Path, job: str) -> None:
    if source == destination or source in destination.parents or destination in source.parents:
        raise ConfigurationError(
            f"{job}: the destination {str(destination)!r} must be a different directory from the source "
            f"{str(source)!r} and neither may contain the other"
        )


def encrypt_dataset(
    source: str | Path,
    destination: str | Path,
    *,
    key_uri: str,
    columns: Sequence[str],
    deterministic_columns: Sequence[str] = (),
    blind_index: Mapping[str, str] | None = None,
    partition_by: Sequence[str] = (),
    source_format: str = "parquet",
    mode: str = "overwrite",
    encryption_context: Mapping[str, str] | None = None,
    kms_options: KmsConfigLike = None,
    spark: Any = None,
    run_id: str | None = None,
    join_domain: str | None = None,
    join_domain_store: str | None = None,
) -> RunSummary:
    """Encrypt the PII ``columns`` of the dataset at ``source`` into ``destination``.

    :param key_uri: the KMS key the data keys are generated under.
    :param columns: columns encrypted with AES-256-GCM (randomised).
    :param deterministic_columns: columns encrypted with AES-SIV (joinable; reveals equality).
    :param blind_index: source column -> new index column (HMAC, equality look-ups).
    :param partition_by: hive partition columns of the output (stay plaintext).
    :param source_format: ``parquet``, ``csv`` (header row; types inferred, but the columns to encrypt
        or index are read as text as written, keeping leading zeros) or ``json`` (JSON lines).
    :param mode: ``overwrite`` or ``append``. Either way a failed job leaves the destination's
        data files as they were.
    :param encryption_context: extra context sent to the KMS with every GenerateDataKey.
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per key-URI scheme).
    :param spark: a SparkSession (default: a local one), or a function returning one (called only
        once the arguments passed their checks).
    :param run_id: the run id (default: new); recorded in each DEK's encryption context.
    :param join_domain: the join domain of the deterministic / blind-index columns (default: the
        destination dataset's own); its key is made once and reused by every later writer.
    :param join_domain_store: the directory holding a named join domain's key.
    """
    _check_format(source_format, "source_format")
    if mode not in _MODES:
        raise ConfigurationError(f"mode must be one of {list(_MODES)}, got {mode!r}")
    if not key_uri:
        raise ConfigurationError("encrypt needs key_uri, the KMS key to generate data keys under")
    if not (list(columns) or list(deterministic_columns) or dict(blind_index or {})):
        raise ConfigurationError("encrypt needs at least one column to encrypt (columns=...)")
    src = require_dataset_dir(source, "encrypt") if Path(source).is_dir() else Path(source).resolve()
    if not src.exists():
        raise ConfigurationError(f"encrypt: source {str(source)!r} does not exist")
    dst = Path(destination).resolve()
    _separate(src, dst, "encrypt")
    from spark_kms.spark import errors_translated, write_encrypted

    session = _session(spark)
    with RunRecorder("encrypt", dst, run_id) as recorder, errors_translated():
        # The Spark write reports KMS calls over driver and tasks; do not add this process's twice.
        recorder.count_local_calls = False
        pii = [*columns, *deterministic_columns, *(blind_index or {})]
        df = _read_source(session, source_format, str(src), pii)
        result = write_encrypted(
            df, str(dst), key_uri=key_uri, columns=list(columns), deterministic_columns=list(deterministic_columns),
            blind_index=dict(blind_index or {}), partition_by=list(partition_by), mode=mode,
            encryption_context=encryption_context, kms_options=KmsConfig.of(kms_options).with_request_tag(recorder.run_id),
            run_id=recorder.run_id, join_domain=join_domain, join_domain_store=join_domain_store,
        )
        s = recorder.summary
        s.rows, s.files, s.deks = result.rows, len(result.files), len(result.deks)
        s.kms_calls = dict(result.kms_calls)
        s.key_versions = {k: list(v) for k, v in result.key_versions.items()}
        s.details.update({"source": str(src), "source_format": source_format, "mode": mode, "key_uri": key_uri,
                          "columns": list(columns), "deterministic_columns": list(deterministic_columns),
                          "blind_index": dict(blind_index or {}), "partition_by": list(partition_by)})
        return s


def decrypt_dataset(
    source: str | Path,
    destination: str | Path,
    *,
    columns: Sequence[str] | None = None,
    output_format: str = "parquet",
    kms_options: KmsConfigLike = None,
    spark: Any = None,
    run_id: str | None = None,
) -> RunSummary:
    """Decrypt the encrypted dataset at ``source`` into plaintext at ``destination``.

    :param columns: keep only these columns (default all; blind-index columns stay binary).
    :param output_format: ``parquet``, ``csv`` (with a header row) or ``json`` (JSON lines).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per
        key-URI scheme); used by Spark's Python workers.
    :param spark: a SparkSession (default: a local one), or a function returning one (called only
        once the arguments passed their checks).
    :param run_id: the run id (default: new). Existing DEKs keep their encryption context, so the
        run id reaches the KMS only as the embedded KMS's audit ``request_tag``; see docs/ROTATION.md.

    ``kms_calls`` in the summary counts this (driver) process only: Decrypt calls happen in
    Spark's Python workers and show in the KMS audit log.

    The output is written beside ``destination`` first and replaces it only once complete: a
    failed decrypt (a denied or disabled key, a tampered cell) leaves ``destination`` as it was.
    """
    _check_format(output_format, "output_format")
    src = require_dataset_dir(source, "decrypt")
    dst = Path(destination).resolve()
    _separate(src, dst, "decrypt")
    from spark_kms.spark import errors_translated, read_encrypted

    session = _session(spark)
    with RunRecorder("decrypt", src, run_id) as recorder, errors_translated():
        keys = Dataset.open(src, job="decrypt")
        effective = keys.effective_deks()
        df = read_encrypted(session, str(src), columns=list(columns) if columns is not None else None,
                            kms_options=KmsConfig.of(kms_options).with_request_tag(recorder.run_id))
        writer = df.write.mode("overwrite").format(output_format)
        if output_format == "csv":
            writer = writer.option("header", "true")
        with staged_replacement(dst, "decrypt") as staging:
            writer.save(str(staging))
        s = recorder.summary
        # Every row of the source is written: count it from the footers, not by reading the output again.
        s.rows = sum(pq.read_metadata(f).num_rows for f in keys.files)
        s.files = len(keys.files)
        s.deks = len(effective)
        s.key_versions = s.key_versions_before = key_versions_of(
            (e.key_id, e.key_version) for e in effective.values()
        )
        s.details.update({"destination": str(dst), "output_format": output_format,
                          "columns": list(columns) if columns is not None else None})
        return s
