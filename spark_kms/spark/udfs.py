"""Arrow UDFs that encrypt and decrypt PII columns cell by cell.

Decryption
    :func:`decrypt_udf` is a SCALAR Arrow UDF (``binary`` -> the Spark type of the column's
    Arrow type). Its closure holds only *wrapped* data keys (:class:`~spark_kms.crypto.DekEntry`)
    and a :class:`~spark_kms.kms.KmsConfig` (which pickles as provider options only), so it is
    safe to ship to executors. Each worker process unwraps a data key the first time one of its
    cells needs it and keeps the plaintext in :func:`spark_kms.kms.process_dek_cache`: at most
    one KMS Decrypt per DEK per worker process, however many tasks, batches or UDF instances
    use it.

Encryption
    :func:`encrypt_udf` is a SCALAR_ITER Arrow UDF: Spark calls it once per task with an
    iterator over the task's batches, so the task asks the KMS for one data key
    (GenerateDataKey) on its first non-empty batch — never per batch or per row — and rolls
    to a new one only when the cell limit is reached. :func:`deterministic_udf` (AES-SIV)
    and :func:`blind_index_udf` (HMAC) use one *shared* deterministic entry made once on
    the driver, so equal values give equal cells in every task (joins, equality filters).
    Each task publishes its wrapped data keys to a key registry
    (:mod:`spark_kms.spark.key_registry`): a UDF cannot write a Parquet footer.

Spark Connect
    In a Spark Connect client, the factories create the key registry directory and make the
    shared deterministic entry on the server side (:func:`spark_kms.spark.remote.run_near_data`,
    with the active Connect session), where the tasks that use them run.

The SQL forms of these functions are :mod:`spark_kms.spark.sql`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from spark_kms.crypto import (
    AES_256_GCM,
    DEFAULT_MAX_CELLS_PER_DEK,
    ColumnSpec,
    DekEntry,
    KeyTable,
)
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet import encode_values, parse_arrow_type
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.parquet.keys import new_deterministic_entry
from spark_kms.spark.key_registry import publish_key_table, require_registry, with_registry_entries
from spark_kms.spark.remote import active_connect_session, run_near_data

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql.types import DataType

__all__ = [
    "blind_index_udf",
    "decrypt_udf",
    "deterministic_udf",
    "encrypt_udf",
    "spark_type_of",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def spark_type_of(arrow_type: str, *, column: str = "") -> DataType:
    """The Spark SQL type of a key table's ``arrow_type`` string (``"int64"`` -> ``LongType``)."""
    from pyspark.sql.pandas.types import from_arrow_type

    t = parse_arrow_type(arrow_type, column=column)
    if pa.types.is_large_string(t):
        t = pa.string()
    elif pa.types.is_large_binary(t):
        t = pa.binary()
    try:
        return from_arrow_type(t)
    except Exception as exc:  # noqa: BLE001 - pyspark raises its own error classes here
        raise ConfigurationError(
            f"column {column!r}: Arrow type {arrow_type} has no Spark SQL equivalent "
            "(Spark has no unsigned integers); decrypt it with pyarrow instead"
        ) from exc


def _near_data(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` here, or on the server side of this process's Spark Connect session."""
    return run_near_data(active_connect_session(), fn, *args)


def _single_array(arg: pa.Array | tuple[pa.Array, ...]) -> pa.Array:
    # SCALAR_ITER UDFs called with several columns receive tuples; the extra ones are labels.
    return arg[0] if isinstance(arg, tuple) else arg


def arrow_udf_of(fn: Any, return_type: DataType, *, iterator: bool) -> Any:
    """``arrow_udf`` with an explicit kind (SCALAR or SCALAR_ITER).

    The kind is given rather than inferred from type hints because the SQL functions take
    a variable number of arguments, which hint inference does not support; pyspark's
    "prefer type hints" warning is therefore silenced here.
    """
    import warnings

    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    kind = ArrowUDFType.SCALAR_ITER if iterator else ArrowUDFType.SCALAR
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="It is preferred to specify type hints", category=UserWarning)
        return arrow_udf(fn, return_type, kind)


# --------------------------------------------------------------------------- decryption


def decrypt_udf(
    column: str,
    arrow_type: str,
    dek_entries: Mapping[str, DekEntry],
    kms_options: KmsConfigLike = None,
    *,
    key_registry: str | os.PathLike[str] | None = None,
    spec: ColumnSpec | None = None,
    subject_store: str | os.PathLike[str] | None = None,
    on_erased: str = "null",
) -> Any:
    """A SCALAR Arrow UDF decrypting the cells of ``column`` back to ``arrow_type``.

    :param column: the column name the cells are bound to (their AAD).
    :param arrow_type: the original Arrow type, as recorded in the key table's ColumnSpec.
    :param dek_entries: wrapped data keys by hex DEK id (``KeyTable.deks``).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or provider
        options per key-URI scheme).
    :param key_registry: also look up DEK ids missing from ``dek_entries`` in this directory.
    :param spec: the column's recorded spec (``KeyTable.columns[column]``); default an AES-256-GCM column of
        ``arrow_type``. A per-subject column (``spec.subject``) needs it, and the UDF then takes the subject
        column as its second argument: ``udf(df[c], df[spec.subject])``.
    :param subject_store: the subject key store of per-subject columns (URL or path; workers reopen it).
    :param on_erased: ``"null"`` (default): erased cells (their tenant's KMS key or their subject's key was
        deleted) read as null; ``"raise"``: the task fails with :class:`~spark_kms.errors.ErasedDataError`.

    Usage: ``df.withColumn(c, decrypt_udf(c, spec.arrow_type, table.deks, kms)(df[c]))``.
    A cell whose DEK is in neither place fails the task with a DecryptionError naming the
    DEK id and the column.
    """
    from spark_kms.parquet.decryptor import check_on_erased

    spark_type = spark_type_of(arrow_type, column=column)
    if spec is None:
        spec = ColumnSpec(column, AES_256_GCM, arrow_type, None)
    elif spec.name != column or spec.arrow_type != arrow_type:
        raise ConfigurationError(f"decrypt_udf: spec describes column {spec.name!r} ({spec.arrow_type}), "
                                 f"not {column!r} ({arrow_type})")
    table = KeyTable(deks=dict(dek_entries), columns={column: spec})
    kms = KmsConfig.of(kms_options)
    registry = os.fspath(key_registry) if key_registry else None
    options = _ReadOptions(os.fspath(subject_store) if subject_store else None, check_on_erased(on_erased))
    logger.debug("decrypt UDF for column %r (%s): %d data keys, %r", column, arrow_type, len(table.deks), kms)

    def kms_decrypt_cells(cells: pa.Array, subjects: pa.Array | None = None) -> pa.Array:
        return decrypt_cells(table, kms, registry, cells, column, subjects=subjects, options=options)

    return arrow_udf_of(kms_decrypt_cells, spark_type, iterator=False)


def subject_spec(spec: ColumnSpec | None) -> ColumnSpec | None:
    """``spec`` when it is a per-subject column's (its decrypt UDF needs it), else None (the UDF's default spec)."""
    return spec if spec is not None and spec.subject is not None else None


class _ReadOptions(NamedTuple):
    """What a decrypting UDF does with per-subject and erased cells (picklable)."""

    subject_store: str | None = None
    on_erased: str = "null"


def decrypt_cells(table: KeyTable, kms: KmsConfig, key_registry: str | None, cells: pa.Array, column: str, *,
                  subjects: pa.Array | None = None, options: _ReadOptions | None = None) -> pa.Array:
    """The body of :func:`decrypt_udf`: one batch of ``column``'s cells back to plaintext (``subjects``: the
    subject column's values, for a per-subject column)."""
    table = with_registry_entries(table, key_registry, cells)
    options = options or _ReadOptions()
    decryptor = BatchDecryptor(table, kms_options=kms, subject_store=options.subject_store,
                               on_erased=options.on_erased)
    spec = table.columns[column]
    if spec.subject is not None and subjects is None:
        raise ConfigurationError(
            f"column {column!r} is encrypted per subject, by column {spec.subject!r}: call its decrypt UDF with "
            f"that column too, udf(df[{column!r}], df[{spec.subject!r}])"
        )
    row_values = encode_values(subjects) if subjects is not None and spec.subject is not None else None
    return decryptor.decrypt_array(cells, column, where="Spark UDF", row_values=row_values)


# --------------------------------------------------------------------------- encryption


def encrypt_task(
    batches: Iterable[pa.Array | tuple[pa.Array, ...]],
    *,
    column: str,
    spec: EncryptionSpec,
    output: str,
    key_uri: str | None,
    kms: KmsConfig,
    encryption_context: dict[str, str],
    key_registry: str,
    max_cells_per_dek: int,
    deterministic_entry: DekEntry | None,
    extra: Sequence[str] = (),
    tenant_keys: Any = None,
    subject_store: str | None = None,
) -> Iterator[pa.Array]:
    """The body of every encrypting UDF: one BatchEncryptor per task (= per partition). ``extra``: the names
    of the plain columns that follow the values in each batch's tuple (the tenant and / or subject column)."""
    encryptor = BatchEncryptor(
        spec,
        key_uri,
        encryption_context=encryption_context,
        max_cells_per_dek=max_cells_per_dek,
        deterministic_entry=deterministic_entry,
        kms_options=kms,
        tenant_keys=tenant_keys,
        subject_store=subject_store,
    )
    published: set[str] = set()
    try:
        for arg in batches:
            if extra:
                arrays = list(arg) if isinstance(arg, tuple) else [arg]
                if len(arrays) < 1 + len(extra):
                    raise ConfigurationError(
                        f"the encrypt UDF of column {column!r} takes the columns {[column, *extra]}, got "
                        f"{len(arrays)} columns"
                    )
                batch = pa.RecordBatch.from_arrays(arrays[: 1 + len(extra)], names=[column, *extra])
            else:
                batch = pa.RecordBatch.from_arrays([_single_array(arg)], names=[column])
            encrypted = encryptor.encrypt_batch(batch)
            table = encryptor.key_table()
            fresh = {k: e for k, e in table.deks.items() if k not in published}
            if fresh:
                # Published before any cell under these keys leaves the task.
                publish_key_table(key_registry, KeyTable(deks=fresh, columns=dict(table.columns)))
                published.update(fresh)
            yield encrypted.column(output)
    finally:
        encryptor.close()


def _encrypting_udf(name: str, **task: Any) -> Any:
    """A SCALAR_ITER Arrow UDF (-> ``binary``) named ``name`` that runs :func:`encrypt_task`
    with ``task`` over each Spark task's batches."""
    from pyspark.sql.types import BinaryType

    def encrypt_cells(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        yield from encrypt_task(batches, **task)

    encrypt_cells.__name__ = encrypt_cells.__qualname__ = name  # the name Spark shows in plans
    return arrow_udf_of(encrypt_cells, BinaryType(), iterator=True)


def encrypt_udf(
    column: str,
    key_uri: str | None,
    *,
    kms_options: KmsConfigLike = None,
    encryption_context: Mapping[str, str] | None = None,
    key_registry: str | os.PathLike[str],
    max_cells_per_dek: int = DEFAULT_MAX_CELLS_PER_DEK,
    tenant_column: str | None = None,
    tenant_keys: Any = None,
    subject_column: str | None = None,
    subject_store: str | os.PathLike[str] | None = None,
) -> Any:
    """A SCALAR_ITER Arrow UDF encrypting a column with AES-256-GCM -> ``binary``.

    :param column: the column label the cells are bound to; decrypt with the same name.
    :param key_uri: the KMS key that wraps the data keys (``local://alias/pii``...).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or provider
        options per key-URI scheme; also used for ``key_uri``).
    :param encryption_context: sent to the KMS with GenerateDataKey and Decrypt.
    :param key_registry: directory where each task publishes its wrapped data key.
    :param max_cells_per_dek: roll to a new data key after this many cells.
    :param tenant_column: with ``tenant_keys`` (a key-URI template with ``{tenant}`` or a mapping tenant -> key
        URI): data keys per tenant, under each tenant's KMS key (``key_uri`` may be None).
    :param subject_column: encrypt per data subject (``AES_256_GCM_SUBJECT``), with keys from ``subject_store``
        (URL or path).

    With a tenant and / or subject column, call the UDF with those columns after the values, in that order:
    ``udf(df.email, df.tenant, df.user_id)``. One GenerateDataKey per task (and tenant), on its first non-empty
    batch.
    """
    from spark_kms.parquet.tenants import TenantKeys

    registry = _near_data(require_registry, key_registry)
    kms = KmsConfig.of(kms_options)
    tenants = TenantKeys.of(tenant_keys, column=tenant_column) if (tenant_keys or tenant_column) else None
    if key_uri is None and tenants is None:
        raise ConfigurationError("encrypt_udf needs key_uri (or tenant_column and tenant_keys)")
    if key_uri is not None:
        kms.provider(key_uri)  # fail fast on the driver for a bad URI
    spec = EncryptionSpec(columns=[column], subject_column=subject_column)
    extra = [c for c in ((tenants.column if tenants else None), subject_column) if c]
    store = os.fspath(subject_store) if subject_store else None
    # The encryptor's own checks (tenant keys against the spec), on the driver; no KMS call.
    BatchEncryptor(spec, key_uri, kms_options=kms, tenant_keys=tenants, subject_store=store).close()
    context = dict(encryption_context or {})
    logger.debug("encrypt UDF for column %r under %s; key registry %s; %r", column, key_uri, registry, kms)
    return _encrypting_udf(
        "kms_encrypt_cells", column=column, spec=spec, output=column,
        key_uri=key_uri, kms=kms, encryption_context=context, key_registry=registry,
        max_cells_per_dek=max_cells_per_dek, deterministic_entry=None, extra=extra, tenant_keys=tenants,
        subject_store=store,
    )


def _deterministic_entry(
    key_uri: str, kms: KmsConfig, context: dict[str, str], deterministic_entry: DekEntry | None
) -> DekEntry:
    if deterministic_entry is not None:
        return deterministic_entry
    entry = new_deterministic_entry(kms.provider(key_uri), context)
    logger.info("made the shared deterministic data key %s under %s (version %s)", entry.dek_id, key_uri,
                entry.key_version)
    return entry


def deterministic_udf(
    column: str,
    key_uri: str,
    *,
    kms_options: KmsConfigLike = None,
    encryption_context: Mapping[str, str] | None = None,
    key_registry: str | os.PathLike[str],
    deterministic_entry: DekEntry | None = None,
) -> Any:
    """A SCALAR_ITER Arrow UDF encrypting a column with AES-SIV (equal values -> equal cells).

    ``deterministic_entry`` is the shared data key (see
    :func:`spark_kms.parquet.new_deterministic_entry`); when omitted one is made now, on
    the driver (one GenerateDataKey), and shared by every task of this UDF. Pass the same
    entry to several UDFs (or jobs) to keep their cells joinable.
    """
    registry = _near_data(require_registry, key_registry)
    kms = KmsConfig.of(kms_options)
    context = dict(encryption_context or {})
    entry = deterministic_entry or _near_data(_deterministic_entry, key_uri, kms, context, None)
    return _encrypting_udf(
        "kms_encrypt_deterministic", column=column, spec=EncryptionSpec(deterministic=[column]), output=column,
        key_uri=key_uri, kms=kms, encryption_context=context, key_registry=registry,
        max_cells_per_dek=DEFAULT_MAX_CELLS_PER_DEK, deterministic_entry=entry,
    )


def blind_index_udf(
    column: str,
    key_uri: str,
    *,
    index_column: str | None = None,
    kms_options: KmsConfigLike = None,
    encryption_context: Mapping[str, str] | None = None,
    key_registry: str | os.PathLike[str],
    deterministic_entry: DekEntry | None = None,
) -> Any:
    """A SCALAR_ITER Arrow UDF computing the blind index (keyed HMAC) of ``column`` -> ``binary``.

    The token equals the one the file layer writes to ``index_column`` (default
    ``<column>_bidx``) with the same deterministic entry, so
    ``WHERE email_bidx = kms_blind_index('a@b.c', 'email')`` finds rows.
    """
    registry = _near_data(require_registry, key_registry)
    kms = KmsConfig.of(kms_options)
    context = dict(encryption_context or {})
    entry = deterministic_entry or _near_data(_deterministic_entry, key_uri, kms, context, None)
    index_name = index_column or f"{column}_bidx"
    return _encrypting_udf(
        "kms_blind_index_cells", column=column, spec=EncryptionSpec(blind_index={column: index_name}),
        output=index_name, key_uri=key_uri, kms=kms, encryption_context=context, key_registry=registry,
        max_cells_per_dek=DEFAULT_MAX_CELLS_PER_DEK, deterministic_entry=entry,
    )
