"""SQL functions over encrypted columns: :func:`register_functions`.

:func:`register_functions` registers ``kms_encrypt``, ``kms_decrypt`` (-> string),
``kms_decrypt_binary`` and ``kms_blind_index`` for ``spark.sql``. Cells are bound (AAD) to a
column label; the SQL forms take it as an optional last argument (``kms_decrypt(ssn, 'ssn')``).
Without it, ``kms_encrypt`` binds to :data:`SQL_COLUMN` and ``kms_decrypt`` tries that label
and then the encrypted column names found in the key tables it knows, in that order.

Key tables come from datasets (:mod:`spark_kms.parquet.dataset`: footers with the dataset
root's manifest applied) and the key registry (:mod:`spark_kms.spark.key_registry`); the
functions carry a :class:`~spark_kms.kms.KmsConfig` to the executors (options only). Under Spark
Connect those key tables are read on the server side (:func:`spark_kms.spark.remote.run_near_data`),
where the datasets and the registry are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    DEFAULT_MAX_CELLS_PER_DEK,
    HMAC_SHA256_BIDX,
    BlindIndexer,
    ColumnSpec,
    DekEntry,
    KeyTable,
    dek_id_from_hex,
)
from spark_kms.errors import ConfigurationError, DecryptionError, UnknownDataKeyError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet import encode_values
from spark_kms.parquet.dataset import read_dataset_key_table
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.encryptor import EncryptionSpec
from spark_kms.parquet.keys import DekResolver
from spark_kms.spark.key_registry import read_key_registry, require_registry, with_registry_entries
from spark_kms.spark.remote import run_near_data
from spark_kms.spark.udfs import arrow_udf_of, encrypt_task

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["SQL_COLUMN", "SQL_FUNCTIONS", "register_functions"]

logger = logging.getLogger(__name__)

#: the column label one-argument ``kms_encrypt(value)`` binds its cells to
SQL_COLUMN = "sql"
#: the names :func:`register_functions` registers
SQL_FUNCTIONS = ("kms_encrypt", "kms_decrypt", "kms_decrypt_binary", "kms_blind_index")

_LABEL_RULE = "{name}: the column label argument must be the same on every row"


def _lenient_merge(first: KeyTable, second: KeyTable) -> KeyTable:
    """Union of DEK entries and column specs; on a clash the entry or spec of ``first`` wins.

    Unlike :meth:`KeyTable.merge` this does not refuse a column name described twice: the
    registry and several datasets may use one name for different columns, and SQL only
    uses the names as candidate labels.
    """
    return KeyTable(deks={**second.deks, **first.deks}, columns={**second.columns, **first.columns})


def _gather_key_table(datasets: Sequence[str | os.PathLike[str]], key_registry: str | None) -> KeyTable:
    """The key tables of ``datasets`` and ``key_registry``, merged; runs where the data is."""
    table = KeyTable(deks={}, columns={})
    for dataset in datasets:
        table = _lenient_merge(table, read_dataset_key_table(os.fspath(dataset)))
    if key_registry and Path(key_registry).is_dir():
        table = _lenient_merge(table, read_key_registry(key_registry))
    return table


def _constant_label(args: pa.Array | tuple[pa.Array, ...], name: str) -> str | None:
    """The column label of the optional trailing SQL argument (None when absent or all null).

    :raises ConfigurationError: the rows name different labels.
    """
    if not isinstance(args, tuple) or len(args) < 2:
        return None
    labels = pc.unique(args[-1].drop_null()).to_pylist()
    if len(labels) > 1:
        raise ConfigurationError(_LABEL_RULE.format(name=name))
    return labels[0] if labels else None


def _sql_decrypt(
    table: KeyTable,
    kms: KmsConfig,
    key_registry: str | None,
    candidates: Sequence[str],
    arrow_type: str,
    args: tuple[pa.Array, ...],
) -> pa.Array:
    cells = args[0]
    label = _constant_label(args, "kms_decrypt")
    names = [label] if label is not None else list(candidates)
    table = with_registry_entries(table, key_registry, cells)
    failure: DecryptionError | None = None
    for name in names:
        # The cells authenticate their column's recorded spec (format 2 binds the type into the
        # AAD), so decrypt under that spec and only then present the bytes as text or binary.
        spec = table.columns.get(name)
        if spec is None or spec.algorithm == HMAC_SHA256_BIDX:
            spec = ColumnSpec(name, AES_256_GCM, "string", None)
        decryptor = BatchDecryptor(KeyTable(deks=dict(table.deks), columns={name: spec}), kms_options=kms)
        try:
            plain = decryptor.decrypt_bytes(cells, name, where="Spark SQL")
            return plain if arrow_type == "binary" else plain.cast(pa.string())
        except DecryptionError as exc:
            if isinstance(exc, UnknownDataKeyError) or label is not None:
                raise
            failure = exc  # authenticated under another column label: try the next one
    raise DecryptionError(
        f"kms_decrypt: no cell authenticated under any known column label {names}; "
        "pass the column name as the second argument, e.g. kms_decrypt(ssn, 'ssn')"
    ) from failure


def _blind_index_entry(table: KeyTable, column: str) -> DekEntry:
    """The shared deterministic entry that keys the blind index of source column ``column``.

    The file layer indexes with the dataset's AES-SIV data key and the *source* column
    name as label, so a look-up value needs exactly that key.
    """
    specs = [s for s in table.columns.values() if s.algorithm == HMAC_SHA256_BIDX and s.source == column]
    if not specs:
        raise ConfigurationError(
            f"kms_blind_index: no blind-index column for source column {column!r} in the registered key tables"
        )
    deterministic = sorted(e.dek_id for e in table.deks.values() if e.algorithm == AES_256_SIV)
    if len(deterministic) != 1:
        raise ConfigurationError(
            f"kms_blind_index: expected one shared deterministic data key in the registered key tables, "
            f"found {len(deterministic)} ({deterministic}); register the functions for one dataset"
        )
    return table.deks[deterministic[0]]


def register_functions(
    spark: SparkSession,
    *,
    key_uri: str | None = None,
    key_registry: str | os.PathLike[str] | None = None,
    datasets: Sequence[str | os.PathLike[str]] = (),
    kms_options: KmsConfigLike = None,
    encryption_context: Mapping[str, str] | None = None,
) -> KeyTable:
    """Register ``kms_encrypt``, ``kms_decrypt``, ``kms_decrypt_binary`` and ``kms_blind_index``.

    * ``kms_encrypt(value [, column])`` -> binary: AES-256-GCM under a data key from
      ``key_uri``, one per task, published to ``key_registry`` (both required for it).
    * ``kms_decrypt(cell [, column])`` -> string: the plaintext as UTF-8 text (the
      plaintext encoding writes every non-binary type as its string form).
    * ``kms_decrypt_binary(cell [, column])`` -> binary: the plaintext bytes.
    * ``kms_blind_index(value, column)`` -> binary: the blind-index token of a string
      value for source column ``column``, as written by the file layer.

    DEK entries come from the key tables of ``datasets`` (footers and manifest) and the
    key registry at registration; DEK ids missing from them are looked up in the key
    registry again at decryption time (cells encrypted after registration).
    ``kms_options`` is a :class:`~spark_kms.kms.KmsConfig` or provider options per key-URI scheme.
    Returns the key table gathered at registration.
    """
    from pyspark.sql.types import BinaryType, StringType

    registry = os.fspath(key_registry) if key_registry else None
    table = run_near_data(spark, _gather_key_table, [os.fspath(d) for d in datasets], registry)
    kms = KmsConfig.of(kms_options)
    context = dict(encryption_context or {})
    encrypted_names = [
        name for name, spec in table.columns.items() if spec.algorithm != HMAC_SHA256_BIDX
    ]
    candidates = [SQL_COLUMN, *(n for n in encrypted_names if n != SQL_COLUMN)]

    def kms_decrypt(*args: pa.Array) -> pa.Array:
        return _sql_decrypt(table, kms, registry, candidates, "string", args)

    def kms_decrypt_binary(*args: pa.Array) -> pa.Array:
        return _sql_decrypt(table, kms, registry, candidates, "binary", args)

    spark.udf.register("kms_decrypt", arrow_udf_of(kms_decrypt, StringType(), iterator=False))
    spark.udf.register(
        "kms_decrypt_binary", arrow_udf_of(kms_decrypt_binary, BinaryType(), iterator=False)
    )

    if key_uri is not None:
        enc_registry = run_near_data(spark, require_registry, registry)
        kms.provider(key_uri)  # fail fast on the driver for a bad URI

        def kms_encrypt(batches: Iterator[Any]) -> Iterator[pa.Array]:
            pending = iter(batches)
            first = next(pending, None)
            if first is None:
                return
            label = _constant_label(first, "kms_encrypt") or SQL_COLUMN

            def checked() -> Iterator[Any]:
                yield first
                for batch in pending:
                    # Cells are bound to one label per task: a later batch naming another
                    # label would get cells that never decrypt under the label it asked for.
                    if _constant_label(batch, "kms_encrypt") not in (None, label):
                        raise ConfigurationError(_LABEL_RULE.format(name="kms_encrypt"))
                    yield batch

            yield from encrypt_task(
                checked(),
                column=label,
                spec=EncryptionSpec(columns=[label]),
                output=label,
                key_uri=key_uri,
                kms=kms,
                encryption_context=context,
                key_registry=enc_registry,
                max_cells_per_dek=DEFAULT_MAX_CELLS_PER_DEK,
                deterministic_entry=None,
            )

        spark.udf.register("kms_encrypt", arrow_udf_of(kms_encrypt, BinaryType(), iterator=True))
    else:
        _register_refusal(spark, "kms_encrypt", "register_functions(spark, key_uri=..., key_registry=...)")

    def kms_blind_index(values: pa.Array, columns: pa.Array) -> pa.Array:
        return _sql_blind_index(table, kms, registry, values, columns)

    spark.udf.register("kms_blind_index", arrow_udf_of(kms_blind_index, BinaryType(), iterator=False))
    logger.info(
        "registered SQL functions %s: %d data keys and %d columns from %d datasets and key registry %s; "
        "kms_encrypt %s; %r",
        list(SQL_FUNCTIONS), len(table.deks), len(table.columns), len(datasets), registry,
        f"under {key_uri}" if key_uri is not None else "disabled", kms,
    )
    return table


def _sql_blind_index(
    table: KeyTable,
    kms: KmsConfig,
    key_registry: str | None,
    values: pa.Array,
    columns: pa.Array,
) -> pa.Array:
    names = {c for c in columns.to_pylist() if c is not None}
    if len(names) != 1:
        raise ConfigurationError("kms_blind_index(value, column): column must be one constant source column name")
    column = names.pop()
    try:
        entry = _blind_index_entry(table, column)
    except ConfigurationError:
        # Published after registration? Read the registry again -- only then, not per batch.
        if not (key_registry and Path(key_registry).is_dir()):
            raise
        entry = _blind_index_entry(_lenient_merge(table, read_key_registry(key_registry)), column)
    resolver = DekResolver({entry.dek_id: entry}, kms_options=kms, where="Spark SQL kms_blind_index")
    indexer = BlindIndexer(resolver.lookup(dek_id_from_hex(entry.dek_id)), dek_id_from_hex(entry.dek_id))
    try:
        return pa.array(indexer.index_many(encode_values(values), column), pa.binary())
    finally:
        indexer.wipe()


def _register_refusal(spark: SparkSession, name: str, how: str) -> None:
    """Register ``name`` as a function that fails with a message saying how to enable it."""
    from pyspark.sql.types import BinaryType

    message = f"{name} is not enabled: call {how}"

    def refuse(*args: pa.Array) -> pa.Array:
        raise ConfigurationError(message)

    spark.udf.register(name, arrow_udf_of(refuse, BinaryType(), iterator=False))
