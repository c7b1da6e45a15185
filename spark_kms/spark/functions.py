"""Arrow UDFs and SQL functions that encrypt and decrypt PII columns cell by cell.

Decryption
    :func:`decrypt_udf` is a SCALAR Arrow UDF (``binary`` -> the Spark type of the column's
    Arrow type). Its closure holds only *wrapped* data keys (:class:`~spark_kms.crypto.DekEntry`)
    and provider options, so it is safe to ship to executors. Each worker process unwraps a
    data key the first time one of its cells needs it and keeps the plaintext in
    :func:`spark_kms.kms.process_dek_cache`: at most one KMS Decrypt per DEK per worker
    process, however many tasks, batches or UDF instances use it.

Encryption
    :func:`encrypt_udf` is a SCALAR_ITER Arrow UDF: Spark calls it once per task with an
    iterator over the task's batches, so the task asks the KMS for one data key
    (GenerateDataKey) on its first non-empty batch — never per batch or per row — and rolls
    to a new one only when the cell limit is reached. :func:`deterministic_udf` (AES-SIV)
    and :func:`blind_index_udf` (HMAC) use one *shared* deterministic entry made once on
    the driver, so equal values give equal cells in every task (joins, equality filters).

The key registry
    A UDF returns one column: it cannot add a key-table column, and it never sees the
    Parquet footer of whatever the DataFrame is later written to. So the wrapped data key
    of each task must be published elsewhere, or the cells could never be decrypted. Each
    encrypting UDF therefore takes ``key_registry``, a directory (shared by driver and
    executors) with one file per data key::

        <key_registry>/<dek_id>.json    KeyTable JSON: that one DekEntry (wrapped DEK, key
                                        URI, key id, key version, encryption context) plus
                                        the ColumnSpec(s) of the columns it encrypted

    A task writes the file before the first cell encrypted under that key leaves the task,
    as a temporary file then ``os.replace`` (readers never see half a file), merging with an
    existing file under a lock (a shared deterministic key serves several columns). A failed
    or retried task may leave an unused file: harmless, a wrapped key alone decrypts
    nothing. Read the registry back with :func:`read_key_registry`.

SQL
    :func:`register_functions` registers ``kms_encrypt``, ``kms_decrypt`` (-> string),
    ``kms_decrypt_binary`` and ``kms_blind_index`` for ``spark.sql``. Cells are bound (AAD)
    to a column label; the SQL forms take it as an optional last argument
    (``kms_decrypt(ssn, 'ssn')``). Without it, ``kms_encrypt`` binds to
    :data:`SQL_COLUMN` and ``kms_decrypt`` tries that label and then the encrypted column
    names found in the key tables it knows, in that order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms._atomic import atomic_write_bytes
from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    DEFAULT_MAX_CELLS_PER_DEK,
    DEK_ID_BYTES,
    HMAC_SHA256_BIDX,
    BlindIndexer,
    ColumnSpec,
    DekEntry,
    KeyTable,
    dek_id_from_hex,
)
from spark_kms.errors import ConfigurationError, DecryptionError, UnknownDataKeyError
from spark_kms.parquet._types import encode_values, parse_arrow_type
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.parquet.keys import DekResolver, KmsOptions, new_deterministic_entry, provider_for_uri

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType

__all__ = [
    "SQL_COLUMN",
    "SQL_FUNCTIONS",
    "blind_index_udf",
    "decrypt_udf",
    "deterministic_udf",
    "encrypt_udf",
    "publish_key_table",
    "read_key_registry",
    "register_functions",
    "spark_type_of",
]

#: the column label one-argument ``kms_encrypt(value)`` binds its cells to
SQL_COLUMN = "sql"
#: the names :func:`register_functions` registers
SQL_FUNCTIONS = ("kms_encrypt", "kms_decrypt", "kms_decrypt_binary", "kms_blind_index")

_REGISTRY_LOCK = ".spark_kms_registry.lock"


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


def _kms_options(kms_options: KmsOptions | None) -> dict[str, dict[str, Any]]:
    # Plain dicts: the closure is pickled to executors.
    return {str(k): dict(v) for k, v in (kms_options or {}).items()}


def _check_registry(key_registry: str | os.PathLike[str] | None) -> str:
    if not key_registry:
        raise ConfigurationError(
            "encrypting UDFs need key_registry=<directory shared by driver and executors>: a UDF cannot "
            "write a Parquet footer, so each task's wrapped data key is published there"
        )
    path = os.fspath(key_registry)
    os.makedirs(path, exist_ok=True)
    return path


def publish_key_table(key_registry: str | os.PathLike[str], table: KeyTable) -> list[str]:
    """Write each data key of ``table`` to ``<key_registry>/<dek_id>.json`` (module docstring).

    The file holds a KeyTable with that one DEK and the column specs of ``table``; an
    existing file for the same DEK is merged (a shared deterministic key serves several
    columns). Returns the paths written.
    """
    from filelock import FileLock

    directory = os.fspath(key_registry)
    os.makedirs(directory, exist_ok=True)
    written: list[str] = []
    with FileLock(os.path.join(directory, _REGISTRY_LOCK)):
        for dek_id, entry in table.deks.items():
            path = os.path.join(directory, f"{dek_id}.json")
            one = KeyTable(deks={dek_id: entry}, columns=dict(table.columns))
            if os.path.exists(path):
                one = _read_registry_file(path).merge(one)
            atomic_write_bytes(path, _as_bytes(one.to_json()))
            written.append(path)
    return written


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _read_registry_file(path: str) -> KeyTable:
    with open(path, "rb") as fh:
        data = fh.read()
    return KeyTable.from_json(data, where=f"key registry file {path}")


def read_key_registry(key_registry: str | os.PathLike[str]) -> KeyTable:
    """All data keys and column specs published to ``key_registry``, merged into one KeyTable."""
    deks: dict[str, DekEntry] = {}
    columns: dict[str, ColumnSpec] = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(key_registry), "*.json"))):
        one = _read_registry_file(path)
        deks.update(one.deks)
        # Jobs may reuse a column name with another type; the first spec seen names it.
        for name, spec in one.columns.items():
            columns.setdefault(name, spec)
    return KeyTable(deks=deks, columns=columns)


def _registry_entry(key_registry: str | None, dek_id_hex: str) -> DekEntry | None:
    if not key_registry:
        return None
    path = os.path.join(key_registry, f"{dek_id_hex}.json")
    if not os.path.exists(path):
        return None
    return _read_registry_file(path).deks.get(dek_id_hex)


def _single_array(arg: pa.Array | tuple[pa.Array, ...]) -> pa.Array:
    # SCALAR_ITER UDFs called with several columns receive tuples; the extra ones are labels.
    return arg[0] if isinstance(arg, tuple) else arg


def _arrow_udf(fn: Any, return_type: DataType, *, iterator: bool) -> Any:
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
    kms_options: KmsOptions | None = None,
    *,
    key_registry: str | os.PathLike[str] | None = None,
) -> Any:
    """A SCALAR Arrow UDF decrypting the cells of ``column`` back to ``arrow_type``.

    :param column: the column name the cells are bound to (their AAD).
    :param arrow_type: the original Arrow type, as recorded in the key table's ColumnSpec.
    :param dek_entries: wrapped data keys by hex DEK id (``KeyTable.deks``).
    :param kms_options: provider options per key-URI scheme.
    :param key_registry: also look up DEK ids missing from ``dek_entries`` in this directory.

    Usage: ``df.withColumn(c, decrypt_udf(c, spec.arrow_type, table.deks, opts)(df[c]))``.
    A cell whose DEK is in neither place fails the task with a DecryptionError naming the
    DEK id and the column.
    """
    spark_type = spark_type_of(arrow_type, column=column)
    table = KeyTable(
        deks=dict(dek_entries), columns={column: ColumnSpec(column, AES_256_GCM, arrow_type, None)}
    )
    options = _kms_options(kms_options)
    registry = os.fspath(key_registry) if key_registry else None

    def kms_decrypt_cells(cells: pa.Array) -> pa.Array:
        return _decrypt_array(table, options, registry, cells, column)

    return _arrow_udf(kms_decrypt_cells, spark_type, iterator=False)


def _with_registry_entries(table: KeyTable, key_registry: str | None, cells: pa.Array) -> KeyTable:
    """``table`` plus the registry entries of DEK ids in ``cells`` that the table lacks.

    The DEK ids are read per batch with Arrow (bytes 1..8 of each cell, distinct values), not
    per cell in Python; a cell too short to hold one is left to the decryptor, which names it.
    """
    if not key_registry:
        return table
    ids = pc.unique(pc.binary_slice(cells.drop_null(), 1, 1 + DEK_ID_BYTES)).to_pylist()
    missing = sorted(h for h in (bytes(i).hex() for i in ids if len(i) == DEK_ID_BYTES) if h not in table.deks)
    found = {h: e for h in missing if (e := _registry_entry(key_registry, h)) is not None}
    if not found:
        return table
    return KeyTable(deks={**table.deks, **found}, columns=dict(table.columns))


def _decrypt_array(
    table: KeyTable, options: dict[str, dict[str, Any]], key_registry: str | None, cells: pa.Array, column: str
) -> pa.Array:
    table = _with_registry_entries(table, key_registry, cells)
    decryptor = BatchDecryptor(table, kms_options=options)
    return decryptor.decrypt_array(cells, column, where="Spark UDF")


# --------------------------------------------------------------------------- encryption


def _encrypt_task(
    batches: Iterable[pa.Array | tuple[pa.Array, ...]],
    *,
    column: str,
    spec: EncryptionSpec,
    output: str,
    key_uri: str,
    options: dict[str, dict[str, Any]],
    encryption_context: dict[str, str],
    key_registry: str,
    max_cells_per_dek: int,
    deterministic_entry: DekEntry | None,
) -> Iterator[pa.Array]:
    """The body of every encrypting UDF: one BatchEncryptor per task (= per partition)."""
    provider = provider_for_uri(key_uri, options)
    encryptor = BatchEncryptor(
        spec,
        provider,
        encryption_context=encryption_context,
        max_cells_per_dek=max_cells_per_dek,
        deterministic_entry=deterministic_entry,
        kms_options=options,
    )
    published: set[str] = set()
    try:
        for arg in batches:
            values = _single_array(arg)
            batch = pa.RecordBatch.from_arrays([values], names=[column])
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
    """A SCALAR_ITER Arrow UDF (-> ``binary``) named ``name`` that runs :func:`_encrypt_task`
    with ``task`` over each Spark task's batches."""
    from pyspark.sql.types import BinaryType

    def encrypt_cells(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        yield from _encrypt_task(batches, **task)

    encrypt_cells.__name__ = encrypt_cells.__qualname__ = name  # the name Spark shows in plans
    return _arrow_udf(encrypt_cells, BinaryType(), iterator=True)


def encrypt_udf(
    column: str,
    key_uri: str,
    *,
    kms_options: KmsOptions | None = None,
    encryption_context: Mapping[str, str] | None = None,
    key_registry: str | os.PathLike[str],
    max_cells_per_dek: int = DEFAULT_MAX_CELLS_PER_DEK,
) -> Any:
    """A SCALAR_ITER Arrow UDF encrypting a column with AES-256-GCM -> ``binary``.

    :param column: the column label the cells are bound to; decrypt with the same name.
    :param key_uri: the KMS key that wraps the data keys (``local://alias/pii``...).
    :param kms_options: provider options per key-URI scheme (also used for ``key_uri``).
    :param encryption_context: sent to the KMS with GenerateDataKey and Decrypt.
    :param key_registry: directory where each task publishes its wrapped data key.
    :param max_cells_per_dek: roll to a new data key after this many cells.

    One GenerateDataKey per task, on its first non-empty batch.
    """
    registry = _check_registry(key_registry)
    options = _kms_options(kms_options)
    provider_for_uri(key_uri, options)  # fail fast on the driver for a bad URI
    context = dict(encryption_context or {})
    return _encrypting_udf(
        "kms_encrypt_cells", column=column, spec=EncryptionSpec(columns=[column]), output=column,
        key_uri=key_uri, options=options, encryption_context=context, key_registry=registry,
        max_cells_per_dek=max_cells_per_dek, deterministic_entry=None,
    )


def _deterministic_entry(
    key_uri: str,
    options: dict[str, dict[str, Any]],
    context: dict[str, str],
    deterministic_entry: DekEntry | None,
) -> DekEntry:
    if deterministic_entry is not None:
        return deterministic_entry
    return new_deterministic_entry(provider_for_uri(key_uri, options), context)


def deterministic_udf(
    column: str,
    key_uri: str,
    *,
    kms_options: KmsOptions | None = None,
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
    registry = _check_registry(key_registry)
    options = _kms_options(kms_options)
    context = dict(encryption_context or {})
    entry = _deterministic_entry(key_uri, options, context, deterministic_entry)
    return _encrypting_udf(
        "kms_encrypt_deterministic", column=column, spec=EncryptionSpec(deterministic=[column]), output=column,
        key_uri=key_uri, options=options, encryption_context=context, key_registry=registry,
        max_cells_per_dek=DEFAULT_MAX_CELLS_PER_DEK, deterministic_entry=entry,
    )


def blind_index_udf(
    column: str,
    key_uri: str,
    *,
    index_column: str | None = None,
    kms_options: KmsOptions | None = None,
    encryption_context: Mapping[str, str] | None = None,
    key_registry: str | os.PathLike[str],
    deterministic_entry: DekEntry | None = None,
) -> Any:
    """A SCALAR_ITER Arrow UDF computing the blind index (keyed HMAC) of ``column`` -> ``binary``.

    The token equals the one the file layer writes to ``index_column`` (default
    ``<column>_bidx``) with the same deterministic entry, so
    ``WHERE email_bidx = kms_blind_index('a@b.c', 'email')`` finds rows.
    """
    registry = _check_registry(key_registry)
    options = _kms_options(kms_options)
    context = dict(encryption_context or {})
    entry = _deterministic_entry(key_uri, options, context, deterministic_entry)
    index_name = index_column or f"{column}_bidx"
    return _encrypting_udf(
        "kms_blind_index_cells", column=column, spec=EncryptionSpec(blind_index={column: index_name}),
        output=index_name, key_uri=key_uri, options=options, encryption_context=context, key_registry=registry,
        max_cells_per_dek=DEFAULT_MAX_CELLS_PER_DEK, deterministic_entry=entry,
    )


# --------------------------------------------------------------------------- SQL


def _lenient_merge(first: KeyTable, second: KeyTable) -> KeyTable:
    """Union of DEK entries and column specs; on a clash the entry or spec of ``first`` wins.

    Unlike :meth:`KeyTable.merge` this does not refuse a column name described twice: the
    registry and several datasets may use one name for different columns, and SQL only
    uses the names as candidate labels.
    """
    return KeyTable(deks={**second.deks, **first.deks}, columns={**second.columns, **first.columns})


def _gather_key_table(datasets: Sequence[str | os.PathLike[str]], key_registry: str | None) -> KeyTable:
    from spark_kms.parquet import read_dataset_key_table

    table = KeyTable(deks={}, columns={})
    for dataset in datasets:
        table = _lenient_merge(table, read_dataset_key_table(os.fspath(dataset)))
    if key_registry and Path(key_registry).is_dir():
        table = _lenient_merge(table, read_key_registry(key_registry))
    return table


_LABEL_RULE = "{name}: the column label argument must be the same on every row"


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
    options: dict[str, dict[str, Any]],
    key_registry: str | None,
    candidates: Sequence[str],
    arrow_type: str,
    args: tuple[pa.Array, ...],
) -> pa.Array:
    cells = args[0]
    label = _constant_label(args, "kms_decrypt")
    names = [label] if label is not None else list(candidates)
    table = _with_registry_entries(table, key_registry, cells)
    failure: DecryptionError | None = None
    for name in names:
        spec = ColumnSpec(name, AES_256_GCM, arrow_type, None)
        decryptor = BatchDecryptor(
            KeyTable(deks=dict(table.deks), columns={name: spec}), kms_options=options
        )
        try:
            return decryptor.decrypt_array(cells, name, where="Spark SQL")
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
    kms_options: KmsOptions | None = None,
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
    Returns the key table gathered at registration.
    """
    from pyspark.sql.types import BinaryType, StringType

    registry = os.fspath(key_registry) if key_registry else None
    table = _gather_key_table(datasets, registry)
    options = _kms_options(kms_options)
    context = dict(encryption_context or {})
    encrypted_names = [
        name for name, spec in table.columns.items() if spec.algorithm != HMAC_SHA256_BIDX
    ]
    candidates = [SQL_COLUMN, *(n for n in encrypted_names if n != SQL_COLUMN)]

    def kms_decrypt(*args: pa.Array) -> pa.Array:
        return _sql_decrypt(table, options, registry, candidates, "string", args)

    def kms_decrypt_binary(*args: pa.Array) -> pa.Array:
        return _sql_decrypt(table, options, registry, candidates, "binary", args)

    spark.udf.register("kms_decrypt", _arrow_udf(kms_decrypt, StringType(), iterator=False))
    spark.udf.register(
        "kms_decrypt_binary", _arrow_udf(kms_decrypt_binary, BinaryType(), iterator=False)
    )

    if key_uri is not None:
        enc_registry = _check_registry(registry)
        provider_for_uri(key_uri, options)

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

            yield from _encrypt_task(
                checked(),
                column=label,
                spec=EncryptionSpec(columns=[label]),
                output=label,
                key_uri=key_uri,
                options=options,
                encryption_context=context,
                key_registry=enc_registry,
                max_cells_per_dek=DEFAULT_MAX_CELLS_PER_DEK,
                deterministic_entry=None,
            )

        spark.udf.register("kms_encrypt", _arrow_udf(kms_encrypt, BinaryType(), iterator=True))
    else:
        _register_refusal(spark, "kms_encrypt", "register_functions(spark, key_uri=..., key_registry=...)")

    def kms_blind_index(values: pa.Array, columns: pa.Array) -> pa.Array:
        return _sql_blind_index(table, options, registry, values, columns)

    spark.udf.register("kms_blind_index", _arrow_udf(kms_blind_index, BinaryType(), iterator=False))
    return table


def _sql_blind_index(
    table: KeyTable,
    options: dict[str, dict[str, Any]],
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
    resolver = DekResolver({entry.dek_id: entry}, kms_options=options, where="Spark SQL kms_blind_index")
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

    spark.udf.register(name, _arrow_udf(refuse, BinaryType(), iterator=False))

