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

With the JVM fast path (:mod:`spark_kms.spark.fastpath`, a session started with its plugin), AES-GCM
columns of string, binary, integer and boolean types are decrypted by Java UDFs instead, with keys the
driver unwraps when ``read_encrypted`` is called (``fast_path=False``: never).

Under Spark Connect (:mod:`spark_kms.spark.remote`) the client reads no file: the footers and the
manifest are read (and an authenticated manifest verified) in one Spark task on the server side,
which sends the :class:`~spark_kms.parquet.dataset.Dataset` back; a write's totals come back from
the server's driver, where its commit left them.
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
from spark_kms.spark._options import (
    KEYS_COLUMN,
    RESULT_OPTION,
    on_erased_option,
    positive_int,
    split_list,
    subject_store_url,
)
from spark_kms.spark._source_write import WriteResult
from spark_kms.spark.conf import SparkKmsConf
from spark_kms.spark.datasource import register
from spark_kms.spark.remote import is_connect, run_near_data, run_on_driver
from spark_kms.storage import storage_options_from

__all__ = ["WriteResult", "dataset_key_table", "read_encrypted", "recover_interrupted_commits", "write_encrypted"]

logger = logging.getLogger(__name__)


# -- writing ----------------------------------------------------------------------------


def _reserve_result_file() -> str:
    """A fresh name in this process's temporary directory for a write's totals (not created: the
    commit writes it atomically). Runs in the driver: the client's, or the Spark Connect server's."""
    fd, result_file = tempfile.mkstemp(prefix="spark_kms_write_", suffix=".json")
    os.close(fd)
    os.unlink(result_file)
    return result_file


def _take_result_file(result_file: str) -> dict[str, Any]:
    """The totals a write's commit left in ``result_file``, which is then removed (in the driver)."""
    try:
        with open(result_file, encoding="utf-8") as fh:
            return json.load(fh)  # type: ignore[no-any-return]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(result_file)


def write_encrypted(
    df: Any,
    path: str,
    *,
    key_uri: str | None = None,
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
    storage_options: Mapping[str, str] | str | None = None,
    require_protection_level: str | Sequence[str] | None = None,
    tenant_column: str | None = None,
    tenant_keys: str | Mapping[str, str] | Any = None,
    subject_column: str | None = None,
    subject_store: str | os.PathLike[str] | None = None,
    fast_path: bool | str = False,
) -> WriteResult:
    """Write ``df`` to ``path`` as encrypted Parquet through the ``spark_kms`` data source.

    ``require_protection_level`` (``"hsm"``, ``"software"``, ``"external"`` or several) refuses, with a
    :class:`~spark_kms.errors.ConfigurationError` naming the key and its level, a key guarded by less:
    checked once on the driver (DescribeKey) before any data key is made
    (:func:`spark_kms.parquet.encryptor.protection_levels_accepted` says which levels meet which).

    ``mode`` is ``"overwrite"`` or ``"append"``; ``kms_options`` is a
    :class:`~spark_kms.kms.KmsConfig` or provider options per key-URI scheme. Deterministic and
    blind-index columns use the key of ``join_domain`` (default: the dataset's own domain; a named
    domain keeps its key in ``join_domain_store``, see :mod:`spark_kms.parquet.join_domains`);
    ``storage_options`` reach the dataset's store (:data:`spark_kms.storage.OPTION_NAMES`). Returns the
    totals the commit computed. A failed write raises the spark_kms error that stopped it (e.g.
    ``KeyStateError``, ``AccessDeniedError``), not Spark's wrapper of it, and leaves the previous
    data at ``path`` untouched.

    Crypto-shredding (docs/ERASURE.md): ``tenant_column`` + ``tenant_keys`` (a key-URI template with
    ``{tenant}``, a mapping tenant -> key URI, or a :class:`~spark_kms.parquet.tenants.TenantKeys`) make each
    task's data keys per tenant, under the tenant's own KMS key (``key_uri`` may then be omitted);
    ``subject_column`` encrypts the randomised columns per data subject, with keys from the subject key store
    ``subject_store`` (its URL or path; default ``$SPARK_KMS_SUBJECT_STORE``). Bad combinations are refused
    here, before anything is staged.

    ``fast_path``: False (default), ``"auto"`` or True: encrypt in the executors' JVMs and write with Spark's own
    Parquet writer (:mod:`spark_kms.spark.fastpath_write`; the session must start with
    :func:`spark_kms.spark.fastpath.spark_conf`) when the write qualifies (local dataset, AES-GCM ``columns`` of
    string / binary / integer / boolean type, no other encryption option); else the Python data source. True: a
    ConfigurationError saying why it does not qualify. The cells and key tables are the same either way. Opt-in:
    it has not measured faster than the Python data source on the project's 2-core machine (docs/BENCHMARKS.md).
    """
    if mode not in ("overwrite", "append"):
        raise ConfigurationError(f"mode must be 'overwrite' or 'append', got {mode!r}")
    if fast_path not in ("auto", True, False):
        raise ConfigurationError(f"fast_path must be 'auto', True or False, got {fast_path!r}")
    spark = df.sparkSession
    # The session's spark.spark_kms.* conf under the arguments (spark_kms.spark.conf); the data source
    # merges the same conf into its other options (register() hands it the conf as it is now).
    conf = SparkKmsConf.of(spark)
    kms = conf.kms_config(kms_options)
    key_uri = key_uri or conf.option("key_uri")
    shredding = _shredding_options(tenant_column, tenant_keys, subject_column, subject_store)
    if key_uri:
        # A bad key URI (or a missing extra) fails here, in the caller's process, as itself --
        # not wrapped in the Spark error of the data source's writer.
        kms.provider(key_uri)
    register(spark)
    if is_connect(spark):
        # The server's writer resolves the path (in its own working directory) and its driver-side
        # commit writes the totals into the driver's temporary directory: reserved there, read there.
        target = os.fspath(path)
        result_file = run_on_driver(spark, _reserve_result_file)
    else:
        target = dataset_path(path, what="the spark_kms data source")
        result_file = _reserve_result_file()
    options: dict[str, str] = {
        "columns": ",".join(columns),
        "deterministic_columns": ",".join(deterministic_columns),
        "blind_index": ",".join(f"{s}:{t}" for s, t in (blind_index or {}).items()),
        "partition_by": ",".join(partition_by),
        "encryption_context": json.dumps(dict(encryption_context or {})),
        # The call's own KMS options only: the data source merges the conf's in itself, so secrets from
        # the conf never become options of the query plan.
        "kms_options": KmsConfig.of(kms_options).to_json(),
        "join_domain": join_domain or "",
        "join_domain_store": os.fspath(join_domain_store) if join_domain_store else "",
    }
    if key_uri:
        options["key_uri"] = key_uri
    options.update(shredding)
    if max_cells_per_dek is not None:
        options["max_cells_per_dek"] = str(max_cells_per_dek)
    if run_id:
        options["run_id"] = run_id
    if require_protection_level:
        from spark_kms.parquet.encryptor import protection_levels_accepted

        accepted = protection_levels_accepted(require_protection_level)  # a bad value fails here, as itself
        if accepted is not None:
            levels = [require_protection_level] if isinstance(require_protection_level, str) else \
                list(require_protection_level)
            options["require_protection_level"] = ",".join(levels)
    storage = storage_options_from(storage_options)
    if storage:
        options["storage_options"] = json.dumps(storage)
    if fast_path is not False:
        result = _write_jvm(df, target, options, conf, mode, fast_path)
        if result is not None:
            with contextlib.suppress(OSError):
                os.unlink(result_file)  # reserved for the data source's commit, unused here
            return result
    writer = df.write.format("spark_kms").mode(mode).option(RESULT_OPTION, result_file)
    for name, value in options.items():
        writer = writer.option(name, value)
    logger.info("write_encrypted to %s (%s): columns %s, deterministic %s, blind indexes %s, partition_by %s; "
                "key %s; %r", target, mode, list(columns), list(deterministic_columns), dict(blind_index or {}),
                list(partition_by), key_uri, kms)
    try:
        with errors_translated():
            writer.save(target)
    except BaseException:
        if not is_connect(spark):  # a failed commit leaves no result file; be safe anyway
            with contextlib.suppress(OSError):
                os.unlink(result_file)
        raise
    data = run_on_driver(spark, _take_result_file, result_file)
    result = WriteResult(**data)
    logger.info("write_encrypted to %s committed (job %s): %d files, %d rows, %d data keys, KMS calls %s",
                result.path, result.job_id, len(result.files), result.rows, len(result.deks), result.kms_calls)
    return result


def _write_jvm(df: Any, target: str, options: Mapping[str, str], conf: SparkKmsConf, mode: str,
               fast_path: bool | str) -> WriteResult | None:
    """The JVM write path (:mod:`spark_kms.spark.fastpath_write`) when the write qualifies, else None (the data
    source writes); ``fast_path=True`` and it does not qualify: ConfigurationError saying why."""
    from spark_kms.spark.fastpath_write import unsupported_reason, write_jvm

    merged = conf.source_options(options)
    reason = unsupported_reason(df.sparkSession, df, target, merged)
    if reason is not None:
        if fast_path is True:
            raise ConfigurationError(f"write_encrypted(fast_path=True): the JVM write path cannot be used: {reason}")
        logger.debug("write_encrypted to %s: JVM write path not used: %s", target, reason)
        return None
    return write_jvm(df, target, merged, overwrite=mode == "overwrite", fast_path=fast_path)


def _shredding_options(tenant_column: str | None, tenant_keys: Any, subject_column: str | None,
                       subject_store: Any) -> dict[str, str]:
    """The data source options of ``write_encrypted``'s crypto-shredding arguments, checked here (a bad
    value fails in the caller's process, as itself)."""
    from spark_kms.parquet.tenants import TenantKeys

    out: dict[str, str] = {}
    keys = TenantKeys.of(tenant_keys, column=tenant_column) if (tenant_keys or tenant_column) else None
    if keys is not None:
        out["tenant_column"] = keys.column
        out["tenant_keys"] = keys.keys if isinstance(keys.keys, str) else json.dumps(dict(keys.keys))
    if subject_column:
        out["subject_column"] = subject_column
    url = subject_store_url(subject_store)
    if url:
        out["subject_store"] = url
    return out


# -- reading ----------------------------------------------------------------------------


def _without_keys_column(df: Any, columns: Sequence[str] | None, where: str) -> tuple[Any, list[str]]:
    """``df`` without ``_spark_kms_keys``, and the names to return: ``columns`` (checked) or all."""
    if KEYS_COLUMN in df.columns:
        df = df.drop(KEYS_COLUMN)
    names = list(df.columns)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigurationError(f"{where} has no columns {missing} (columns: {names})")
        names = list(columns)
    return df, names


def _table_format(path: Any, storage_options: Any) -> str | None:
    """``delta`` / ``iceberg`` when ``path`` is (inside) a table; runs where the data is."""
    from spark_kms.jobs._tables import table_format

    return table_format(path, storage_options_from(storage_options) or None)


def _read_table(spark: Any, path: str, columns: Sequence[str] | None, kms: KmsConfig,
                require_encrypted: Sequence[str] | None, min_format_version: int, storage_options: Any,
                table_args: Mapping[str, Any], subject_store: str | None = None, on_erased: str = "null") -> Any:
    """``read_encrypted`` of a table snapshot: its files from the table's log (near the data), Spark's native
    scan, the decrypt UDFs; Delta partition columns cast back to the table's types."""
    from pyspark.sql.pandas.types import from_arrow_type

    from spark_kms.spark.udfs import decrypt_udf, subject_spec
    from spark_kms.tables.read import table_scan

    scan = run_near_data(spark, table_scan, path, require_encrypted=require_encrypted,
                         min_format_version=min_format_version,
                         storage_options=storage_options_from(storage_options) or None, **table_args)
    if not scan.files:
        df = spark.createDataFrame(scan.plaintext_schema.empty_table())
    else:
        reader = spark.read.option("basePath", scan.base_path) if scan.base_path else spark.read
        df = reader.parquet(*scan.files)
    df, names = _without_keys_column(df, columns, f"table {scan.table}")
    partition = set(scan.partition_columns)
    encrypted = scan.encrypted_columns
    selected = []
    for name in names:
        spec = scan.key_table.columns.get(name)
        if spec is not None and spec.row_binding:
            raise ConfigurationError(
                f"table {scan.table}: column {name!r} is bound to the rows' {spec.row_binding!r} values; read it "
                "with spark_kms.tables.read_table_decrypted"
            )
        if name in encrypted and scan.files:
            decrypt = decrypt_udf(name, encrypted[name], scan.key_table.deks, kms, spec=subject_spec(spec),
                                  subject_store=subject_store, on_erased=on_erased)
            cells = decrypt(df[name], df[spec.subject]) if spec is not None and spec.subject else decrypt(df[name])
            selected.append(cells.alias(name))
        elif name in partition and name in scan.plaintext_schema.names:
            spark_type = from_arrow_type(scan.plaintext_schema.field(name).type)
            selected.append(df[name].cast(spark_type).alias(name))
        else:
            selected.append(df[name])
    logger.info("read_encrypted of %s table %s (version %s): %d data files, %d data keys; encrypted columns "
                "decrypted on use: %s; %r", scan.format, scan.table, scan.version, len(scan.files),
                len(scan.key_table.deks), sorted(set(encrypted) & set(names)), kms)
    return df.select(*selected)


def _open_dataset(path: str, **options: Any) -> tuple[str, Dataset]:
    """``(the dataset path as shown, Dataset.open(path, **options))``; runs where the data is."""
    local = dataset_path(path, what="read_encrypted")
    return local, Dataset.open(local, **options)


def _dataset_keys(
    path: str,
    df: Any,
    kms: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    storage_options: Mapping[str, str] | str | None = None,
) -> tuple[str, Dataset, KeyTable]:
    has_keys_column = KEYS_COLUMN in df.columns
    # The KMS options verify an authenticated manifest (a declared dataset); the required columns
    # and the minimum format version refuse files that are not encrypted as they must be. Under
    # Spark Connect the footers are read (and the manifest verified) on the server side.
    local, dataset = run_near_data(
        df.sparkSession, _open_dataset, path, missing_ok=has_keys_column, require_files=False, kms_options=kms,
        require_encrypted=require_encrypted, min_format_version=min_format_version,
        storage_options=storage_options_from(storage_options) or None,
    )
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
    return local, dataset, table


def dataset_key_table(
    spark: Any, path: str, *, df: Any = None, storage_options: Mapping[str, str] | str | None = None
) -> KeyTable:
    """The merged key table of the dataset at ``path`` (footers, the dataset root's manifest
    taking precedence, and the ``_spark_kms_keys`` column if the files carry one). Wrapped keys
    only: no KMS call."""
    if df is None:
        df = spark.read.parquet(path)
    return _dataset_keys(path, df, storage_options=storage_options)[2]


def read_encrypted(
    spark: Any,
    path: str,
    *,
    columns: Sequence[str] | None = None,
    kms_options: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    storage_options: Mapping[str, str] | str | None = None,
    version: Any = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    fast_path: bool | str = "auto",
    subject_store: str | os.PathLike[str] | None = None,
    on_erased: str | None = None,
) -> Any:
    """A DataFrame of the dataset at ``path`` with its encrypted columns decrypted lazily.

    :param path: the dataset root, one hive partition directory in it, or one data file -- or a Delta
        Lake / Iceberg table (its root, or ``iceberg://CATALOG/NAMESPACE.TABLE``): the snapshot's data
        files come from the table's own log (:func:`spark_kms.tables.table_scan`), then Spark's native
        Parquet scan reads them (docs/TABLES.md).
    :param version: tables only: the Delta version / Iceberg snapshot id (or a timestamp) to read.
    :param catalog_properties: Iceberg catalog tables: the catalog's properties.
    :param table_options: tables: the table library's own storage options.
    :param columns: keep only these columns (plain or encrypted), in this order; default all.
    :param kms_options: how to reach each KMS, used on executors to unwrap keys (a
        :class:`~spark_kms.kms.KmsConfig`, or provider options per key-URI scheme).
    :param require_encrypted: columns that must be encrypted in every file: a file that stores one
        in plaintext is refused (see docs/FORMAT.md, "Threat model"); a declared dataset's
        authenticated declaration is always checked.
    :param min_format_version: refuse files older than this key-table format (2: authenticated specs).
    :param storage_options: options of the dataset's store for reading its footers and manifest
        (:data:`spark_kms.storage.OPTION_NAMES`); Spark's own scan takes the cluster's Hadoop settings.
    :param fast_path: ``"auto"`` (default), True or False: decrypt AES-GCM columns inside the executors' JVMs
        (:mod:`spark_kms.spark.fastpath`; the session must start with :func:`spark_kms.spark.fastpath.spark_conf`)
        instead of Python UDFs. It unwraps the data keys on the driver, now. Datasets only (tables: Python).
        Per-subject columns, and every column of a dataset with an erased data key, take the Python UDFs.
    :param subject_store: the subject key store of per-subject columns (URL or path; default the conf's
        ``spark.spark_kms.subjectStore``, then ``$SPARK_KMS_SUBJECT_STORE``). A per-subject column's UDF is
        given its subject column, whether or not ``columns`` keeps it.
    :param on_erased: ``"null"`` (default; or the conf's ``spark.spark_kms.onErased``): erased cells (their
        tenant's KMS key is scheduled for deletion or destroyed, their subject's key deleted) read as null;
        ``"raise"``: the action fails with :class:`~spark_kms.errors.ErasedDataError`. When the fast path
        unwraps the keys on the driver, erased data keys are logged (WARNING) here;
        :func:`spark_kms.spark.count_erased` counts erased cells.
    :raises MissingKeyTableError: a data file has no key table (names the file).
    :raises ConfigurationError: ``columns`` names a column the dataset does not have.

    The DataFrame is lazy: a key that does not unwrap or a cell that does not authenticate fails
    the action you run on it, as Spark's ``PythonException``. Run the action inside
    :func:`spark_kms.spark.errors_translated` to get the spark_kms error itself::

        with errors_translated():
            rows = read_encrypted(spark, path).collect()   # KeyStateError, DecryptionError, ...
    """
    from spark_kms.spark.udfs import decrypt_udf, subject_spec

    # The session's spark.spark_kms.* conf under the arguments (spark_kms.spark.conf).
    conf = SparkKmsConf.of(spark)
    kms = conf.kms_config(kms_options)
    storage_options = conf.merged_storage(storage_options)
    if require_encrypted is None and conf.option("require_encrypted"):
        require_encrypted = split_list(conf.option("require_encrypted"))
    if min_format_version == 1 and conf.option("min_format_version"):
        min_format_version = positive_int(conf.options(), "min_format_version", 1)
    store = subject_store_url(subject_store) or conf.option("subject_store")
    on_erased = on_erased_option({"on_erased": on_erased or conf.option("on_erased") or ""})
    table_args = {"version": version, "catalog_properties": catalog_properties, "table_options": table_options}
    if run_near_data(spark, _table_format, path, storage_options):
        return _read_table(spark, path, columns, kms, require_encrypted, min_format_version, storage_options,
                           table_args, store, on_erased)
    if any(v is not None for v in table_args.values()):
        raise ConfigurationError(
            f"read_encrypted: {path} is not a Delta or Iceberg table: version, catalog_properties and "
            "table_options apply to tables only"
        )
    df = spark.read.parquet(path)
    local, dataset, table = _dataset_keys(path, df, kms, require_encrypted, min_format_version, storage_options)
    df, names = _without_keys_column(df, columns, f"dataset {local}")
    from spark_kms.spark.fastpath import decrypt_columns

    fast = decrypt_columns(spark, df, table, names, kms, fast_path=fast_path, where=f"dataset {local}",
                           min_format_version=min_format_version, on_erased=on_erased)
    selected = []
    decrypted = []
    for name in names:
        spec = table.columns.get(name)
        if spec is None or spec.algorithm == HMAC_SHA256_BIDX:
            selected.append(df[name])
            continue
        if getattr(spec, "row_binding", None):
            raise ConfigurationError(
                f"dataset {local}: column {name!r} is bound to the rows' {spec.row_binding!r} values; "
                "read it with spark.read.format('spark_kms') or spark_kms.parquet.read_decrypted_table"
            )
        if name in fast:
            udf = fast[name]
        else:
            decrypt = decrypt_udf(name, spec.arrow_type, table.deks, kms, spec=subject_spec(spec),
                                  subject_store=store, on_erased=on_erased)
            if spec.subject is not None and spec.subject not in df.columns:
                raise ConfigurationError(f"dataset {local}: column {name!r} is encrypted per subject, by column "
                                         f"{spec.subject!r}, which the dataset does not have")
            udf = decrypt(df[name], df[spec.subject]) if spec.subject is not None else decrypt(df[name])
        selected.append(udf.alias(name))
        decrypted.append(name)
    logger.info("read_encrypted %s (dataset root %s): %d data files, %d data keys (%d from the manifest); "
                "encrypted columns decrypted on use: %s (in the JVM: %s); %r", path, dataset.root, len(dataset.files),
                len(table.deks), len(set(dataset.manifest) & set(table.deks)), decrypted, sorted(fast), kms)
    return df.select(*selected)
