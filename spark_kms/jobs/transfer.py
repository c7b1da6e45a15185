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

**Object stores.** Source and destination may be storage URIs (``s3://``/``s3a://``, ``gs://``,
``abfs[s]://``, ``hdfs://``; ``storage_options=`` for the Python side: checks, footers, run
records, decrypt's swap). The data itself is read and written by *Spark*, through Hadoop's
filesystem for the URI's scheme: the cluster needs that connector (for ``s3a://``: the
``hadoop-aws`` jar of the cluster's Hadoop version and the AWS SDK bundle it was built against,
with ``spark.hadoop.fs.s3a.*`` settings for endpoint and credentials; docs/ARCHITECTURE.md, "Jobs
on object stores"). Decrypt's destination swap on an object store is journaled and copies object
by object (:mod:`spark_kms.jobs._replace` says what a reader sees meanwhile).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from spark_kms.errors import ConfigurationError
from spark_kms.jobs._common import StorageOptions, locate, require_dataset
from spark_kms.jobs._replace import staged_replacement
from spark_kms.jobs._summary import RunRecorder, RunSummary, key_versions_of
from spark_kms.jobs._tables import (
    refuse_nested_tables,
    refuse_table_arguments_over_connect,
    reject_table_arguments,
    table_kwargs,
)
from spark_kms.jobs._tables import table_format as detected_format
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.dataset import Dataset
from spark_kms.parquet.tenants import tenant_of_context
from spark_kms.storage import Location, StoragePath, resolve

__all__ = ["SOURCE_FORMATS", "decrypt_dataset", "encrypt_dataset"]

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("parquet", "csv", "json")
_MODES = ("overwrite", "append")
#: the modes an encrypt into a table takes besides _MODES (spark_kms.tables.encrypt_into_table)
_TABLE_MODES = ("overwrite_partitions", "error")


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


def _separate(source: StoragePath, destination: StoragePath, job: str) -> None:
    src, dst = resolve(source), resolve(destination)

    def within(inner: Location, outer: Location) -> bool:
        base = outer.path.rstrip("/")
        return inner.path == base or inner.path.startswith(base + "/")

    same_store = (src.scheme, src.authority) == (dst.scheme, dst.authority)
    if same_store and (within(src, dst) or within(dst, src)):
        raise ConfigurationError(
            f"{job}: the destination {str(destination)!r} must be a different directory from the source "
            f"{str(source)!r} and neither may contain the other"
        )


#: what a cluster's Spark needs to read and write each store (docs/ARCHITECTURE.md, "Jobs on object stores")
_CONNECTORS = {
    "s3": "the hadoop-aws jar of its Hadoop version and the AWS SDK bundle it was built against, and "
          "spark.hadoop.fs.s3a.* settings (endpoint, credentials provider); use s3a:// URIs",
    "gs": "the Cloud Storage connector for Hadoop (gcs-connector) and spark.hadoop.fs.gs.* settings",
    "abfs": "the hadoop-azure jar and spark.hadoop.fs.azure.account.* settings",
    "hdfs": "the cluster's Hadoop configuration (core-site.xml / hdfs-site.xml)",
}
_NO_FILESYSTEM = ("No FileSystem for scheme", "UnsupportedFileSystemException", "S3AFileSystem not found",
                  "GoogleHadoopFileSystem not found", "AzureBlobFileSystem not found")


@contextlib.contextmanager
def _spark_reaches(job: str, *locations: Location) -> Iterator[None]:
    """Turn Spark's "no filesystem for this scheme" into a ConfigurationError that says what its cluster needs."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        remote = [loc for loc in locations if not loc.is_local]
        if not remote or not any(marker in text for marker in _NO_FILESYSTEM):
            raise
        where = remote[0]
        raise ConfigurationError(
            f"{job}: Spark cannot reach {where.uri}: its Hadoop has no filesystem for "
            f"{where.given_scheme}:// URIs. Spark reads and writes the data itself, so the cluster needs "
            f"{_CONNECTORS.get(where.scheme, 'a Hadoop connector for the store')} "
            "(docs/ARCHITECTURE.md, \"Jobs on object stores\")"
        ) from exc


def _storage_kwargs(fn: Callable[..., Any], location: Location) -> dict[str, Any]:
    """``storage_options=`` for a Spark-layer function that takes it (the options given, the
    environment's included), nothing for one that does not or when there are none."""
    if not location.options or "storage_options" not in inspect.signature(fn).parameters:
        return {}
    return {"storage_options": dict(location.options)}


def encrypt_dataset(
    source: StoragePath,
    destination: StoragePath,
    *,
    key_uri: str | None = None,
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
    storage_options: StorageOptions = None,
    table_format: str | None = None,
    replace_where: Mapping[str, Any] | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    require_protection_level: str | Sequence[str] | None = None,
    tenant_column: str | None = None,
    tenant_keys: Any = None,
    subject_column: str | None = None,
    subject_store: Any = None,
) -> RunSummary:
    """Encrypt the PII ``columns`` of the dataset at ``source`` into ``destination``.

    **Into a table**: when ``destination`` is a Delta table (a directory holding ``_delta_log/``), an
    ``iceberg://CATALOG/NAMESPACE.TABLE`` URI, or ``table_format`` is given (a table to create), the
    source is read with pyarrow (streamed, no Spark) and written by :func:`spark_kms.tables.encrypt_into_table`:
    one data key per output file, one table commit (docs/TABLES.md). ``mode`` then also takes
    ``overwrite_partitions`` and ``error``; ``replace_where`` (with ``overwrite``) names the partitions
    replaced; a named ``join_domain`` gives the deterministic columns its key.

    ``source`` and ``destination``: local paths or storage URIs (the module docstring says what
    Spark needs for them); ``storage_options``: options of their store(s)
    (:data:`spark_kms.storage.OPTION_NAMES`).

    :param key_uri: the KMS key the data keys are generated under (optional with ``tenant_keys``).
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
        once the arguments passed their checks). A Spark Connect session (not a function returning
        one) makes the job touch files only on its server side (:mod:`spark_kms.jobs._connect`).
    :param run_id: the run id (default: new); recorded in each DEK's encryption context.
    :param join_domain: the join domain of the deterministic / blind-index columns (default: the
        destination dataset's own); its key is made once and reused by every later writer.
    :param join_domain_store: the directory holding a named join domain's key.
    :param table_format: ``"delta"`` or ``"iceberg"``: the destination is a table (created when absent:
        a Delta table at a path, an Iceberg table through its catalog). Default: detected.
    :param replace_where: tables, with ``mode="overwrite"``: partition column -> value(s) whose files are
        replaced (Delta's ``replaceWhere``, Iceberg's overwrite filter).
    :param catalog_properties: tables: the Iceberg catalog's properties.
    :param table_options: tables: the table library's own options.
    :param require_protection_level: refuse a key guarded by less (``"hsm"``, ``"software"``,
        ``"external"`` or several): one DescribeKey before anything is read or a data key made
        (:func:`spark_kms.parquet.encryptor.protection_levels_accepted`).
    :param tenant_column: with ``tenant_keys``: the plain column naming each row's tenant; its data keys are
        made under the tenant's own KMS key (``key_uri`` may then be omitted), so that
        :func:`spark_kms.erasure.erase_tenant` erases it (docs/ERASURE.md).
    :param tenant_keys: a key-URI template with ``{tenant}``, or a mapping tenant -> key URI (or its JSON).
    :param subject_column: the plain column naming each row's data subject: the ``columns`` are encrypted per
        subject, with keys from ``subject_store`` (:func:`spark_kms.erasure.erase_subject` erases one).
    :param subject_store: the subject key store (URL or path; default ``$SPARK_KMS_SUBJECT_STORE``).
    Not over Spark Connect (yet).
    """
    _check_format(source_format, "source_format")
    shredding = {name: value for name, value in (("tenant_column", tenant_column), ("tenant_keys", tenant_keys),
                                                 ("subject_column", subject_column),
                                                 ("subject_store", subject_store)) if value}
    if mode not in (*_MODES, *_TABLE_MODES):
        raise ConfigurationError(f"mode must be one of {list(_MODES)} (into a table also {list(_TABLE_MODES)}), "
                                 f"got {mode!r}")
    if not key_uri and not tenant_keys:
        raise ConfigurationError("encrypt needs key_uri, the KMS key to generate data keys under (or tenant_keys)")
    if not (list(columns) or list(deterministic_columns) or dict(blind_index or {})):
        raise ConfigurationError("encrypt needs at least one column to encrypt (columns=...)")
    if require_protection_level and key_uri:
        from spark_kms.parquet.encryptor import check_protection_level

        # Once, here, before any data key (the Spark data source, a table writer or a Connect server
        # then encrypt under a key already checked).
        check_protection_level(KmsConfig.of(kms_options).provider(key_uri), require_protection_level)
    refuse_table_arguments_over_connect(spark, "encrypt", table_format=table_format,
                                        replace_where=replace_where or None,
                                        catalog_properties=catalog_properties or None,
                                        table_options=table_options or None)
    from spark_kms.spark.remote import is_connect

    if shredding and is_connect(spark):
        raise ConfigurationError(f"encrypt: {sorted(shredding)} are not taken over Spark Connect yet")
    if is_connect(spark):  # a Spark Connect session: file checks and the run record on its server side
        from spark_kms.jobs._connect import encrypt_over_connect

        return encrypt_over_connect(
            spark, source, destination, key_uri=key_uri, columns=columns, deterministic_columns=deterministic_columns,
            blind_index=blind_index, partition_by=partition_by, source_format=source_format, mode=mode,
            encryption_context=encryption_context, kms_options=kms_options, run_id=run_id, join_domain=join_domain,
            join_domain_store=join_domain_store, storage_options=storage_options,
        )
    _refuse_table_source(source, storage_options)
    if table_format is not None or replace_where or _is_table_uri(destination) or \
            detected_format(destination, storage_options):
        return _encrypt_into_table(
            source, destination, table_format=table_format, replace_where=replace_where, key_uri=key_uri,
            columns=columns, deterministic_columns=deterministic_columns, blind_index=blind_index,
            partition_by=partition_by, source_format=source_format, mode=mode, encryption_context=encryption_context,
            kms_options=kms_options, run_id=run_id, join_domain=join_domain, join_domain_store=join_domain_store,
            storage_options=storage_options, table_kw=table_kwargs(storage_options, catalog_properties, table_options),
            shredding=shredding,
        )
    if mode not in _MODES:
        raise ConfigurationError(f"encrypt: mode {mode!r} is for a table destination; {destination} is a plain "
                                 f"dataset directory, which takes {list(_MODES)}")
    src = locate(source, "encrypt", storage_options)
    if not src.is_dir() and not src.is_file():
        raise ConfigurationError(f"encrypt: source {str(source)!r} does not exist")
    dst = locate(destination, "encrypt", storage_options)
    _separate(src, dst, "encrypt")
    if mode == "overwrite" and dst.is_dir():
        refuse_nested_tables(dst, "encrypt")
    from spark_kms.spark import errors_translated, write_encrypted

    session = _session(spark)
    with RunRecorder("encrypt", dst, run_id) as recorder, errors_translated(), _spark_reaches("encrypt", src, dst):
        # The Spark write reports KMS calls over driver and tasks; do not add this process's twice.
        recorder.count_local_calls = False
        pii = [*columns, *deterministic_columns, *(blind_index or {})]
        df = _read_source(session, source_format, src.uri, pii)
        result = write_encrypted(
            df, dst.uri, key_uri=key_uri, columns=list(columns), deterministic_columns=list(deterministic_columns),
            blind_index=dict(blind_index or {}), partition_by=list(partition_by), mode=mode,
            encryption_context=encryption_context, kms_options=KmsConfig.of(kms_options).with_request_tag(recorder.run_id),
            run_id=recorder.run_id, join_domain=join_domain, join_domain_store=join_domain_store,
            **_storage_kwargs(write_encrypted, dst), **shredding,
        )
        s = recorder.summary
        s.rows, s.files, s.deks = result.rows, len(result.files), len(result.deks)
        s.kms_calls = dict(result.kms_calls)
        s.key_versions = {k: list(v) for k, v in result.key_versions.items()}
        s.details.update({"source": src.uri, "source_format": source_format, "mode": mode, "key_uri": key_uri,
                          "columns": list(columns), "deterministic_columns": list(deterministic_columns),
                          "blind_index": dict(blind_index or {}), "partition_by": list(partition_by)})
        s.details.update({k: _tenant_keys_text(v) if k == "tenant_keys" else str(v) for k, v in shredding.items()})
        return s


def decrypt_dataset(
    source: StoragePath,
    destination: StoragePath,
    *,
    columns: Sequence[str] | None = None,
    output_format: str = "parquet",
    kms_options: KmsConfigLike = None,
    spark: Any = None,
    run_id: str | None = None,
    storage_options: StorageOptions = None,
    version: Any = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    subject_store: Any = None,
    on_erased: str | None = None,
) -> RunSummary:
    """Decrypt the encrypted dataset at ``source`` into plaintext at ``destination``.

    A Delta or Iceberg table ``source`` (its root, or ``iceberg://CATALOG/NAMESPACE.TABLE``) is
    decrypted by :func:`spark_kms.tables.decrypt_table` (pyarrow, no Spark; Parquet output only), with
    ``version`` for time travel (a Delta version, an Iceberg snapshot id or a timestamp);
    ``catalog_properties`` and ``table_options`` reach it. The destination is never a table.

    :param columns: keep only these columns (default all; blind-index columns stay binary).
    :param output_format: ``parquet``, ``csv`` (with a header row) or ``json`` (JSON lines).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per
        key-URI scheme); used by Spark's Python workers.
    :param spark: a SparkSession (default: a local one), or a function returning one (called only
        once the arguments passed their checks). A Spark Connect session (not a function returning
        one) makes the job touch files only on its server side (:mod:`spark_kms.jobs._connect`).
    :param run_id: the run id (default: new). Existing DEKs keep their encryption context, so the
        run id reaches the KMS only as the embedded KMS's audit ``request_tag``; see docs/ROTATION.md.
    :param storage_options: options of the store(s) of ``source`` and ``destination`` (local paths or
        storage URIs; :data:`spark_kms.storage.OPTION_NAMES`).
    :param subject_store: the subject key store of per-subject columns (URL or path; docs/ERASURE.md).
    :param on_erased: ``"null"`` (default): erased cells (tenant key deleted, subject erased) are written as
        null; ``"raise"``: the job fails with :class:`~spark_kms.errors.ErasedDataError` (not over Spark Connect yet).

    ``kms_calls`` in the summary counts this (driver) process only: Decrypt calls happen in
    Spark's Python workers and show in the KMS audit log.

    The output is written beside ``destination`` first and replaces it only once complete: a
    failed decrypt (a denied or disabled key, a tampered cell) leaves ``destination`` as it was.
    """
    _check_format(output_format, "output_format")
    erasure = {name: value for name, value in (("subject_store", subject_store), ("on_erased", on_erased)) if value}
    if on_erased:
        from spark_kms.parquet.decryptor import check_on_erased

        check_on_erased(on_erased)
    refuse_table_arguments_over_connect(spark, "decrypt", version=version,
                                        catalog_properties=catalog_properties or None,
                                        table_options=table_options or None)
    from spark_kms.spark.remote import is_connect

    if erasure and is_connect(spark):
        raise ConfigurationError(f"decrypt: {sorted(erasure)} are not taken over Spark Connect yet")
    if is_connect(spark):  # a Spark Connect session: file checks, swap and run record on its server side
        from spark_kms.jobs._connect import decrypt_over_connect

        return decrypt_over_connect(spark, source, destination, columns=columns, output_format=output_format,
                                    kms_options=kms_options, run_id=run_id, storage_options=storage_options)
    _refuse_table_destination(destination, "decrypt", storage_options)
    if detected_format(source, storage_options):
        return _decrypt_table(source, destination, version=version, columns=columns, output_format=output_format,
                              kms_options=kms_options, run_id=run_id,
                              table_kw={**table_kwargs(storage_options, catalog_properties, table_options), **erasure})
    reject_table_arguments("decrypt", source, version=version)
    src = require_dataset(source, "decrypt", storage_options)
    dst = locate(destination, "decrypt", storage_options)
    _separate(src, dst, "decrypt")
    refuse_nested_tables(src, "decrypt")
    from spark_kms.spark import errors_translated, read_encrypted

    session = _session(spark)
    with RunRecorder("decrypt", src, run_id) as recorder, errors_translated(), _spark_reaches("decrypt", src, dst):
        keys = Dataset.open(src, job="decrypt")
        effective = keys.effective_deks()
        df = read_encrypted(session, src.uri, columns=list(columns) if columns is not None else None,
                            kms_options=KmsConfig.of(kms_options).with_request_tag(recorder.run_id),
                            **_storage_kwargs(read_encrypted, src), **erasure)
        writer = df.write.mode("overwrite").format(output_format)
        if output_format == "csv":
            writer = writer.option("header", "true")
        with staged_replacement(dst, "decrypt") as staging:
            writer.save(str(staging))
        s = recorder.summary
        # Every row of the source is written: count it from the footers, not by reading the output again.
        s.rows = keys.rows_of(keys.files)
        s.files = len(keys.files)
        s.deks = len(effective)
        s.key_versions = s.key_versions_before = key_versions_of(
            (e.key_id, e.key_version) for e in effective.values()
        )
        s.details.update({"destination": dst.uri, "output_format": output_format,
                          "columns": list(columns) if columns is not None else None})
        if erasure:
            s.details.update({k: str(v) for k, v in erasure.items()})
        erasable = any(tenant_of_context(e.encryption_context) for e in effective.values()) or any(
            spec.subject for spec in keys.key_table().columns.values())
        if erasable and not storage_options:
            # How many cells were erased (written as null): counted from the cells' data keys and subjects,
            # without decrypting (one more pass over the encrypted columns, only for erasable datasets).
            from spark_kms.spark import count_erased

            counts = count_erased(session, src.uri, kms_options=kms_options, subject_store=subject_store)
            s.details["erased_cells"] = {c: n for c, n in counts.items() if n}
            if s.details["erased_cells"]:
                logger.warning("decrypt %s: %d erased cells written as null (%s)", src.uri,
                               sum(counts.values()), ", ".join(f"{c}: {n}" for c, n in sorted(counts.items()) if n))
        return s


def _tenant_keys_text(value: Any) -> str:
    """``tenant_keys`` as the run record shows it: the template, or the mapping's JSON (key URIs only)."""
    from spark_kms.parquet.tenants import TenantKeys

    if isinstance(value, TenantKeys):
        return value.to_json()
    return value if isinstance(value, str) else json.dumps(dict(value), sort_keys=True)


# -- tables (docs/TABLES.md) ----------------------------------------------------------------


def _is_table_uri(path: Any) -> bool:
    from spark_kms import tables

    return bool(tables.is_table_uri(path))


def _refuse_table_source(source: StoragePath, storage_options: StorageOptions) -> None:
    """A table's directory is no plain source: a Parquet scan of it reads every file, including those the
    table's log removed (older versions), and misses what its log says (deletes, partition values)."""
    fmt = detected_format(source, storage_options)
    if fmt:
        raise ConfigurationError(
            f"encrypt: the source {source} is {'a Delta' if fmt == 'delta' else 'an Iceberg'} table: reading its "
            "directory as plain files would also read the files its log removed. Read it with its own library "
            "(deltalake.DeltaTable(...).to_pyarrow_dataset(), pyiceberg's table.scan().to_arrow_batch_reader()) "
            "and pass the rows to spark_kms.tables.encrypt_into_table"
        )


def _refuse_table_destination(destination: StoragePath, job: str, storage_options: StorageOptions) -> None:
    """Decrypt replaces its destination whole: a table there would be deleted."""
    fmt = "iceberg" if _is_table_uri(destination) else detected_format(destination, storage_options)
    if fmt:
        raise ConfigurationError(
            f"{job}: the destination {destination} is {'a Delta' if fmt == 'delta' else 'an Iceberg'} table (or "
            f"inside one): {job} writes plaintext Parquet files into a directory it replaces whole, which would "
            "delete the table's files. Choose a directory outside any table"
        )


def _arrow_batches(src: Location, source_format: str, text_columns: Sequence[str]) -> Any:
    """The source as a stream of Arrow record batches (pyarrow.dataset: hive partition directories become
    columns, ``_``/``.`` files are skipped, as Spark reads it). A CSV source has a header row; its types
    are inferred except ``text_columns`` (the PII), read as text as written (leading zeros kept)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    file_format: Any = source_format
    if source_format == "csv":
        import pyarrow.csv as pacsv

        file_format = pads.CsvFileFormat(
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns}))
    data = pads.dataset(src.path, filesystem=src.fs, format=file_format, partitioning="hive")
    return data.scanner().to_reader()


def _encrypt_into_table(
    source: StoragePath, destination: StoragePath, *, table_format: str | None, replace_where: Any, key_uri: str,
    columns: Sequence[str], deterministic_columns: Sequence[str], blind_index: Mapping[str, str] | None,
    partition_by: Sequence[str], source_format: str, mode: str, encryption_context: Mapping[str, str] | None,
    kms_options: KmsConfigLike, run_id: str | None, join_domain: str | None, join_domain_store: str | None,
    storage_options: StorageOptions, table_kw: dict[str, Any], shredding: dict[str, Any],
) -> RunSummary:
    """:func:`encrypt_dataset` into a Delta or Iceberg table (see its docstring)."""
    from spark_kms import tables

    src = locate(source, "encrypt", storage_options)
    if not src.is_dir() and not src.is_file():
        raise ConfigurationError(f"encrypt: source {str(source)!r} does not exist")
    if not _is_table_uri(destination):
        dst = locate(destination, "encrypt", storage_options)
        _separate(src, dst, "encrypt")
        if not detected_format(dst, storage_options) and dst.list_files(include_hidden=True):
            raise ConfigurationError(
                f"encrypt: {dst.uri} is a plain directory with files in it, not a table: a new table goes into an "
                "absent or empty directory (spark_kms does not turn a dataset into a table)"
            )
    kms = KmsConfig.of(kms_options)
    deterministic_entry = None
    if join_domain and (list(deterministic_columns) or dict(blind_index or {})):
        from spark_kms.parquet.join_domains import domain_key

        deterministic_entry = domain_key(None, key_uri=key_uri, kms_options=kms, domain=join_domain,
                                         store=join_domain_store)
    pii = [*columns, *deterministic_columns, *(blind_index or {})]
    summary: RunSummary = tables.encrypt_into_table(
        _arrow_batches(src, source_format, pii), destination, format=table_format, columns=list(columns),
        key_uri=key_uri, kms_options=kms, mode=mode, partition_by=list(partition_by),
        replace_where=dict(replace_where) if replace_where else None,
        deterministic_columns=list(deterministic_columns), blind_index=dict(blind_index or {}),
        deterministic_entry=deterministic_entry, encryption_context=encryption_context, run_id=run_id, **table_kw,
        **shredding,
    )
    summary.details.update({"source": src.uri, "source_format": source_format, "key_uri": key_uri,
                            "columns": list(columns), "deterministic_columns": list(deterministic_columns),
                            "blind_index": dict(blind_index or {}), "join_domain": join_domain})
    return summary


def _decrypt_table(source: Any, destination: StoragePath, *, version: Any, columns: Sequence[str] | None,
                   output_format: str, kms_options: KmsConfigLike, run_id: str | None,
                   table_kw: dict[str, Any]) -> RunSummary:
    """:func:`decrypt_dataset` of a Delta or Iceberg table (see its docstring)."""
    from spark_kms import tables

    if output_format != "parquet":
        raise ConfigurationError(f"decrypt: a table is decrypted into Parquet (spark_kms.tables.decrypt_table), "
                                 f"not {output_format}")
    summary: RunSummary = tables.decrypt_table(
        source, destination, version=version, columns=list(columns) if columns is not None else None,
        kms_options=kms_options, run_id=run_id, **table_kw)
    summary.details.update({"output_format": output_format, "version": None if version is None else str(version),
                            "columns": list(columns) if columns is not None else None})
    return summary
