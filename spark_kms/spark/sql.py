"""SQL functions over encrypted columns: :func:`register` / :func:`register_functions`.

One call per session registers them (``spark_kms.spark.register(spark)``: the data source too), or
``spark.spark_kms.sql.autoRegister=true`` in the session's conf, honoured when spark_kms first touches
the session (:func:`spark_kms.spark.datasource.register`: ``local_session``, ``spark_session``, the CLI,
the Airflow operators, ``write_encrypted``, ...). Then, with no registration argument::

    SELECT name, kms_decrypt(ssn) AS ssn, kms_decrypt_bigint(amount) AS amount FROM customers

``kms_decrypt`` (-> string), ``kms_decrypt_binary`` and the typed ``kms_decrypt_<type>``
(:data:`TYPED_FUNCTIONS`) are temporary SQL functions that expand to Python Arrow UDFs called with
``input_file_name()``: a row's cells are decrypted with the key table of the file the row came from
(:mod:`spark_kms.spark._sql_keys`), whether the query reads a path or a table over the files. Spark
SQL functions have one return type each, hence one typed function per type. ``kms_encrypt`` and
``kms_blind_index`` are Python UDFs.

Cells are bound (AAD) to a column label; the SQL forms take it as an optional last argument
(``kms_decrypt(ssn, 'ssn')``). Without it, ``kms_encrypt`` binds to :data:`SQL_COLUMN` and the
decrypt functions try the encrypted column names of the row's file, then that label and the column
names of the key tables given at registration, in that order.

Key tables also come from datasets given at registration (:mod:`spark_kms.parquet.dataset`: footers
with the dataset root's manifest applied) and the key registry (:mod:`spark_kms.spark.key_registry`);
the functions carry a :class:`~spark_kms.kms.KmsConfig` to the executors (options only). Under Spark
Connect those key tables are read on the server side (:func:`spark_kms.spark.remote.run_near_data`),
where the datasets and the registry are; the files' key tables are read by the UDFs, on the server's
workers, too.
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
from spark_kms.errors import (
    ConfigurationError,
    DecryptionError,
    ErasedDataError,
    UnknownDataKeyError,
    UnknownSubjectError,
)
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet import encode_values
from spark_kms.parquet.dataset import read_dataset_key_table
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.encryptor import EncryptionSpec
from spark_kms.parquet.keys import DekResolver
from spark_kms.spark._options import on_erased_option, subject_store_url
from spark_kms.spark._sql_keys import file_key_tables, missing_dek_ids, source_files, unknown_key_error
from spark_kms.spark.conf import SparkKmsConf
from spark_kms.spark.key_registry import read_key_registry, require_registry, with_registry_entries
from spark_kms.spark.remote import run_near_data
from spark_kms.spark.udfs import arrow_udf_of, encrypt_task

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["SQL_COLUMN", "SQL_FUNCTIONS", "TYPED_FUNCTIONS", "register", "register_functions"]

logger = logging.getLogger(__name__)

#: the column label one-argument ``kms_encrypt(value)`` binds its cells to
SQL_COLUMN = "sql"

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


#: the typed decrypt functions: SQL name -> the Spark SQL type they return (the column's original type)
TYPED_FUNCTIONS: dict[str, str] = {
    f"kms_decrypt_{t}": t
    for t in ("boolean", "tinyint", "smallint", "int", "bigint", "float", "double", "date", "timestamp",
              "timestamp_ntz")
}
#: the names :func:`register_functions` registers
SQL_FUNCTIONS = ("kms_encrypt", "kms_decrypt", "kms_decrypt_binary", *TYPED_FUNCTIONS, "kms_blind_index")


def _sql_type(name: str) -> Any:
    """The Spark DataType of a SQL type name (``bigint`` -> LongType())."""
    from pyspark.sql.types import (
        BinaryType,
        BooleanType,
        ByteType,
        DateType,
        DoubleType,
        FloatType,
        IntegerType,
        LongType,
        ShortType,
        StringType,
        TimestampNTZType,
        TimestampType,
    )

    return {
        "boolean": BooleanType(), "tinyint": ByteType(), "smallint": ShortType(), "int": IntegerType(),
        "bigint": LongType(), "float": FloatType(), "double": DoubleType(), "date": DateType(),
        "timestamp": TimestampType(), "timestamp_ntz": TimestampNTZType(), "string": StringType(),
        "binary": BinaryType(),
    }[name]


def _arrow_of(sql_type: str) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(_sql_type(sql_type), timezone="UTC")


def _function_for(recorded: pa.DataType) -> str:
    """The SQL function that returns a column recorded as ``recorded`` (for messages)."""
    if pa.types.is_string(recorded) or pa.types.is_large_string(recorded):
        return "kms_decrypt"
    if pa.types.is_binary(recorded) or pa.types.is_large_binary(recorded):
        return "kms_decrypt_binary"
    for name, sql_type in TYPED_FUNCTIONS.items():
        if _arrow_of(sql_type) == recorded:
            return name
    return f"CAST(kms_decrypt(...) AS <{recorded}>)"


def _typed(values: pa.Array, column: str, function: str, sql_type: str) -> pa.Array:
    """``values`` (the column's cells decrypted to its recorded type) as ``sql_type``: the same type,
    or a widening of an integer or floating-point one; anything else is refused, naming the right function."""
    target = _arrow_of(sql_type)
    recorded = values.type
    if recorded == target:
        return values
    widening = (pa.types.is_integer(recorded) and pa.types.is_integer(target)) or (
        pa.types.is_floating(recorded) and pa.types.is_floating(target))
    if pa.types.is_timestamp(recorded) and pa.types.is_timestamp(target):
        widening = (recorded.tz is None) == (target.tz is None)
    if widening:
        try:
            return values.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ConfigurationError(
                f"{function}: column {column!r} holds {recorded} values that do not fit {sql_type}; use "
                f"{_function_for(recorded)}({column})"
            ) from None
    raise ConfigurationError(
        f"{function}: column {column!r} was {recorded} when encrypted, not {sql_type}: use "
        f"{_function_for(recorded)}({column})"
    )


class _SqlDecrypt:
    """The body of the decrypt UDFs: one batch of cells, with the optional label and the files the
    rows came from (``input_file_name()``). Pickled to the executors: key tables (wrapped keys only),
    the KmsConfig (options only), the registry path and the storage options."""

    def __init__(self, table: KeyTable, kms: KmsConfig, key_registry: str | None, candidates: Sequence[str],
                 storage_options: Mapping[str, str] | None, subject_store: str | None = None,
                 on_erased: str = "null") -> None:
        self.table = table
        self.kms = kms
        self.key_registry = key_registry
        self.candidates = list(candidates)
        self.storage_options = dict(storage_options or {}) or None
        self.subject_store = subject_store
        self.on_erased = on_erased

    def __call__(self, function: str, result: str, cells: pa.Array, labels: pa.Array | None,
                 files: pa.Array | None, subjects: pa.Array | None = None) -> pa.Array:
        label = _constant_label((cells, labels), function) if labels is not None else None
        names = source_files(files)
        failures: dict[str, str] = {}
        file_tables = file_key_tables(names, self.kms, self.storage_options, failures=failures)
        table = self._merged(file_tables, cells)
        missing = missing_dek_ids(table, cells)
        if missing and names:  # a file replaced in place, a manifest rewritten: read the key tables again
            failures.clear()
            file_tables = file_key_tables(names, self.kms, self.storage_options, fresh=True, failures=failures)
            table = self._merged(file_tables, cells)
            missing = missing_dek_ids(table, cells)
        if missing:
            raise unknown_key_error(function, missing, names, failures)
        from_files = [n for t in file_tables for n, s in t.columns.items() if s.algorithm != HMAC_SHA256_BIDX]
        candidates = [label] if label is not None else list(dict.fromkeys([*from_files, *self.candidates]))
        return _sql_decrypt(table, self.kms, function, result, candidates, label is not None, cells,
                            subjects=subjects, subject_store=self.subject_store, on_erased=self.on_erased)

    def _merged(self, file_tables: Sequence[KeyTable], cells: pa.Array) -> KeyTable:
        table = self.table
        for one in file_tables:
            table = _lenient_merge(one, table)
        return with_registry_entries(table, self.key_registry, cells)


def _sql_decrypt(
    table: KeyTable,
    kms: KmsConfig,
    function: str,
    result: str,
    candidates: Sequence[str],
    labelled: bool,
    cells: pa.Array,
    *,
    subjects: pa.Array | None = None,
    subject_store: str | None = None,
    on_erased: str = "null",
) -> pa.Array:
    """Decrypt ``cells`` under the first candidate column label they authenticate under, as ``result``
    (``string``, ``binary`` or a typed function's SQL type). ``subjects``: the subject ids of a per-subject
    column's rows (the function's third argument)."""
    if cells.null_count == len(cells):  # nothing to decrypt: no label to find, no type to check
        return pa.nulls(len(cells), pa.binary() if result == "binary" else _arrow_of(result))
    failure: DecryptionError | None = None
    for name in candidates:
        # The cells authenticate their column's recorded spec (format 2 binds the type into the
        # AAD), so decrypt under that spec and only then present the value as asked.
        spec = table.columns.get(name)
        if spec is None or spec.algorithm == HMAC_SHA256_BIDX:
            spec = ColumnSpec(name, AES_256_GCM, "string", None)
        decryptor = BatchDecryptor(KeyTable(deks=dict(table.deks), columns={name: spec}), kms_options=kms,
                                   subject_store=subject_store, on_erased=on_erased)
        row_values = _subject_values(function, name, spec, subjects)
        try:
            if result in ("string", "binary"):
                plain = decryptor.decrypt_bytes(cells, name, where="Spark SQL", row_values=row_values)
                return plain if result == "binary" else plain.cast(pa.string())
            values = decryptor.decrypt_array(cells, name, where="Spark SQL", row_values=row_values)
        except DecryptionError as exc:
            if isinstance(exc, (UnknownDataKeyError, ErasedDataError, UnknownSubjectError)) or labelled:
                raise
            failure = exc  # authenticated under another column label: try the next one
            continue
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return _typed(values, name, function, result)
    raise DecryptionError(
        f"{function}: no cell authenticated under any known column label {list(candidates)}; "
        f"pass the column name as the second argument, e.g. {function}(ssn, 'ssn')"
    ) from failure


def _subject_values(function: str, name: str, spec: ColumnSpec, subjects: pa.Array | None) -> list[bytes | None] | None:
    """The subject ids (plaintext encoding) a per-subject column's cells need, from the third argument."""
    if spec.subject is None:
        return None
    if subjects is None or subjects.null_count == len(subjects):
        raise ConfigurationError(
            f"{function}: column {name!r} is encrypted per subject, by column {spec.subject!r}: pass that column "
            f"as the third argument, {function}({name}, '{name}', {spec.subject})"
        )
    return encode_values(subjects)


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
    subject_store: str | os.PathLike[str] | None = None,
    on_erased: str | None = None,
) -> KeyTable:
    """Register the SQL functions for ``spark`` (temporary: for this session).

    * ``kms_decrypt(cell [, column [, subject]])`` -> string: the plaintext as UTF-8 text (the plaintext
      encoding writes every non-binary type as its string form). A per-subject column (docs/ERASURE.md)
      needs its subject column as the third argument (``kms_decrypt(email, 'email', user_id)``; an integer
      subject column cast to string), and its keys from the subject key store ``subject_store`` (or the
      conf's ``spark.spark_kms.subjectStore``). Erased cells read as null, or fail the query with
      ``ErasedDataError`` with ``on_erased="raise"`` (or ``spark.spark_kms.onErased=raise``); every decrypt
      function takes the same three arguments.
    * ``kms_decrypt_<type>(cell [, column])`` -> ``<type>`` (:data:`TYPED_FUNCTIONS`: ``boolean``,
      ``tinyint``, ``smallint``, ``int``, ``bigint``, ``float``, ``double``, ``date``, ``timestamp``,
      ``timestamp_ntz``): the value at the column's original type, e.g. ``kms_decrypt_bigint(amount)``
      -> 42. The column's recorded type must be that type (or a narrower integer / floating-point
      one); otherwise the error names the function to use.
    * ``kms_decrypt_binary(cell [, column])`` -> binary: the plaintext bytes.
    * ``kms_encrypt(value [, column])`` -> binary: AES-256-GCM under a data key from
      ``key_uri``, one per task, published to ``key_registry`` (both required for it).
    * ``kms_blind_index(value, column)`` -> binary: the blind-index token of a string
      value for source column ``column``, as written by the file layer.

    **Where the decrypt functions find a cell's data key**, no registration argument needed: the key
    table of the Parquet file the row came from (``input_file_name()``, which each function passes to its
    Python UDF; footer plus the dataset root's manifest, read and cached per worker process), for paths
    (``FROM parquet.`/data/x```, a view of ``spark.read.parquet``) and tables (``CREATE TABLE t USING
    parquet LOCATION '...'``) alike. Then the key tables of ``datasets`` read at registration, then
    ``key_registry`` (also re-read for DEK ids it lacked). A cell of a row that did not come straight
    from a file (after a join, an aggregation, a cache) needs ``datasets=`` or ``key_registry=``; the
    error says so.

    Every argument may come from the session's Spark conf instead (:mod:`spark_kms.spark.conf`:
    ``spark.spark_kms.kms.<scheme>.<option>``, ``spark.spark_kms.keyUri``,
    ``spark.spark_kms.key_registry``, ``spark.spark_kms.storage.<name>``), read now; the arguments win.
    ``kms_encrypt`` is enabled by an explicit ``key_uri`` (then ``key_registry`` is required) or by the
    conf's key URI and key registry together.
    Returns the key table gathered at registration (``datasets`` and the registry).
    """
    from pyspark.sql.types import BinaryType

    conf = SparkKmsConf.of(spark)
    explicit_key_uri = key_uri is not None
    key_uri = key_uri if explicit_key_uri else conf.option("key_uri")
    if key_registry is None:
        key_registry = conf.option("key_registry")
    registry = os.fspath(key_registry) if key_registry else None
    table = (run_near_data(spark, _gather_key_table, [os.fspath(d) for d in datasets], registry)
             if datasets or registry else KeyTable(deks={}, columns={}))
    kms = conf.kms_config(kms_options)
    storage = conf.merged_storage(None)
    context = dict(encryption_context or {})
    store = subject_store_url(subject_store) or conf.option("subject_store")
    erased_mode = on_erased_option({"on_erased": on_erased or conf.option("on_erased") or ""})
    encrypted_names = [
        name for name, spec in table.columns.items() if spec.algorithm != HMAC_SHA256_BIDX
    ]
    candidates = [SQL_COLUMN, *(n for n in encrypted_names if n != SQL_COLUMN)]
    body = _SqlDecrypt(table, kms, registry, candidates, storage, store, erased_mode)

    def decrypting(function: str, result: str) -> Any:
        def kms_decrypt_cells(cells: pa.Array, labels: pa.Array, subjects: pa.Array, files: pa.Array) -> pa.Array:
            return body(function, result, cells, labels, files, subjects)

        return kms_decrypt_cells

    decrypt_functions = {"kms_decrypt": "string", "kms_decrypt_binary": "binary", **TYPED_FUNCTIONS}
    for function, result in decrypt_functions.items():
        udf_name = f"_spark_kms_{function}"
        spark.udf.register(udf_name, arrow_udf_of(decrypting(function, result), _sql_type(result), iterator=False))
        spark.sql(
            f"CREATE OR REPLACE TEMPORARY FUNCTION {function}(cell BINARY, label STRING DEFAULT NULL, "
            f"subject STRING DEFAULT NULL) RETURNS {result.upper()} RETURN {udf_name}(cell, label, subject, "
            "input_file_name())"
        )

    if key_uri is not None and (explicit_key_uri or registry is not None):
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
        _register_refusal(spark, "kms_encrypt", "register_functions(spark, key_uri=..., key_registry=...) "
                          "(or set spark.spark_kms.keyUri and spark.spark_kms.key_registry)")

    def kms_blind_index(values: pa.Array, columns: pa.Array) -> pa.Array:
        return _sql_blind_index(table, kms, registry, values, columns)

    spark.udf.register("kms_blind_index", arrow_udf_of(kms_blind_index, BinaryType(), iterator=False))
    logger.info(
        "registered SQL functions %s: %d data keys and %d columns from %d datasets and key registry %s, "
        "and each file's own key table; kms_encrypt %s; %r",
        list(SQL_FUNCTIONS), len(table.deks), len(table.columns), len(datasets), registry,
        f"under {key_uri}" if key_uri is not None and (explicit_key_uri or registry) else "disabled", kms,
    )
    return table


def register(spark: SparkSession, **functions: Any) -> KeyTable:
    """The one call a session needs: the ``spark_kms`` data source and the SQL functions
    (:func:`register_functions`, given ``functions`` as its keyword arguments; options otherwise from
    the session's Spark conf). Returns the key table :func:`register_functions` gathered."""
    from spark_kms.spark.datasource import register as register_source

    register_source(spark)
    return register_functions(spark, **functions)


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
