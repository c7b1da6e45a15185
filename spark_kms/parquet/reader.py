"""Reading encrypted Parquet: decrypting readers over one file or a whole dataset.

Where files, key tables and the manifest come from, and the precedence rule between them,
is :mod:`spark_kms.parquet.dataset`. Reading plain columns only never touches the KMS: keys
are unwrapped lazily, on the first encrypted cell that needs them (a dataset whose manifest is
authenticated costs one more unwrap per process, to verify it).

Integrity options of both readers (docs/FORMAT.md sections 9 and 13):

* ``require_encrypted=[...]``: columns every file must store encrypted; a file holding one of them
  in plaintext is refused, not returned -- whether or not the dataset's manifest (which declares
  its encrypted columns, authenticated) is still there.
* ``min_format_version=2``: refuse files of format version 1, whose column specs are not
  authenticated (a strict reader).
* ``verify_blind_indexes=True``: recompute blind-index cells from their source column.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from spark_kms.crypto import KeyTable
from spark_kms.errors import ConfigurationError, FormatError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.dataset import Dataset, check_required_encryption, dataset_location, open_parquet
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.storage import Location, StoragePath

__all__ = ["ERASED_METADATA_KEY", "erased_counts", "iter_decrypted_batches", "read_decrypted_table",
           "with_erased_counts"]

logger = logging.getLogger(__name__)

PathLike = StoragePath
DEFAULT_BATCH_ROWS = 65_536


def _check_columns(columns: Sequence[str] | None, available: list[str], where: str) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str):
        raise ConfigurationError(f"columns must be a sequence of names, not a single string: {columns!r}")
    columns = list(columns)
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise ConfigurationError(f"{where}: columns {unknown} do not exist; available columns: {available}")
    return columns


def _to_read(decryptor: BatchDecryptor, chosen: list[str] | None, available: list[str]) -> list[str] | None:
    """The columns to read for ``chosen``: with those decrypting them needs (row binding, index sources)."""
    if chosen is None:
        return None
    return [c for c in decryptor.required_columns(chosen) if c in available]


def _file_decryptor(
    path: Location,
    names: list[str],
    kms: KmsConfig,
    key_table: KeyTable | None,
    require_encrypted: Sequence[str] | None,
    min_format_version: int,
    verify_blind_indexes: bool,
    subject_store: Any = None,
    on_erased: str | None = "null",
) -> BatchDecryptor:
    if key_table is None:
        dataset = Dataset.open(path, kms_options=kms, require_encrypted=require_encrypted,
                               min_format_version=min_format_version)
        key_table = dataset.effective_table(dataset.files[0])
        min_format_version = dataset.min_format_version
    else:
        check_required_encryption(key_table, require_encrypted or (), f"file {path.uri}", columns=names)
    return BatchDecryptor(key_table, kms_options=kms, min_format_version=min_format_version,
                          verify_blind_indexes=verify_blind_indexes, subject_store=subject_store, on_erased=on_erased)


def _decrypted_batches(
    pf: pq.ParquetFile, path: str, chosen: list[str] | None, decryptor: BatchDecryptor, batch_size: int
) -> Iterator[pa.RecordBatch]:
    where = f"file {path}"
    offset = 0
    read = _to_read(decryptor, chosen, pf.schema_arrow.names)
    for batch in pf.iter_batches(batch_size=batch_size, columns=read):
        at = where if offset == 0 else f"{where} (batch from row {offset})"
        out = decryptor.decrypt_batch(batch, where=at)
        yield out if read == chosen else out.select(chosen)
        offset += batch.num_rows


def iter_decrypted_batches(
    path: PathLike,
    columns: Sequence[str] | None = None,
    *,
    kms_options: KmsConfigLike = None,
    key_table: KeyTable | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    verify_blind_indexes: bool = False,
    subject_store: Any = None,
    on_erased: str | None = "null",
) -> Iterator[pa.RecordBatch]:
    """Stream one encrypted Parquet file as decrypted record batches.

    :param columns: the columns to read (default all); only these are read from disk (and the
        columns decrypting them needs), and only their data keys are unwrapped -- plain columns
        alone make no KMS call.
    :param key_table: use this key table instead of the footer's (+ the dataset manifest's).
    :param require_encrypted: columns the file must store encrypted (else FormatError).
    :param min_format_version: 2 refuses a file of format version 1.
    :param verify_blind_indexes: recompute blind-index cells from their source (read along).
    :param subject_store: the subject key store of per-subject columns (URL or store; docs/ERASURE.md).
    :param on_erased: erased cells (tenant or subject key erased) read as null (``"null"``) or raise
        ErasedDataError (``"raise"``).
    """
    loc = dataset_location(path)
    local = loc.uri
    pf = open_parquet(loc)
    names = pf.schema_arrow.names
    chosen = _check_columns(columns, names, f"file {local}")
    decryptor = _file_decryptor(loc, names, KmsConfig.of(kms_options), key_table, require_encrypted,
                                min_format_version, verify_blind_indexes, subject_store, on_erased)
    yield from _decrypted_batches(pf, local, chosen, decryptor, batch_size)
    _log_erased(f"file {local}", [decryptor])


def _file_table(path: Location, columns: list[str] | None, decryptor_of: object) -> pa.Table:
    # One open and one footer parse per file: the schema and the batches share them.
    pf = open_parquet(path)
    chosen = _check_columns(columns, pf.schema_arrow.names, f"file {path.uri}")
    decryptor: BatchDecryptor = decryptor_of(pf.schema_arrow.names)  # type: ignore[operator]
    schema = decryptor.plaintext_schema(pf.schema_arrow)
    if chosen is not None:
        schema = pa.schema([schema.field(c) for c in chosen], metadata=schema.metadata)
    batches = list(_decrypted_batches(pf, path.uri, chosen, decryptor, DEFAULT_BATCH_ROWS))
    return pa.Table.from_batches(batches, schema=schema)


def read_decrypted_table(
    path_or_dataset: PathLike,
    columns: Sequence[str] | None = None,
    *,
    kms_options: KmsConfigLike = None,
    require_encrypted: Sequence[str] | None = None,
    min_format_version: int = 1,
    verify_blind_indexes: bool = False,
    subject_store: Any = None,
    on_erased: str | None = "null",
) -> pa.Table:
    """Read and decrypt one file, a whole dataset directory, or a Delta / Iceberg table's current snapshot
    (:func:`spark_kms.tables.read_table_decrypted`, which also takes a version) into a table.

    For a directory, hive partition directories become columns again (typed as
    pyarrow.dataset infers them) and every file is decrypted with the dataset's merged
    key table; a failing cell is reported with its file.

    :param require_encrypted: columns every file must store encrypted (else FormatError naming the file).
    :param min_format_version: 2 refuses files of format version 1 (unauthenticated column specs).
    :param verify_blind_indexes: recompute blind-index cells from their source column.
    :param subject_store: the subject key store of per-subject columns (URL or store; docs/ERASURE.md).
    :param on_erased: cells whose data was erased (tenant or subject key) read as null (``"null"``, default)
        or raise ErasedDataError (``"raise"``). With nulls, the table's schema metadata
        ``spark_kms.erased`` holds the count per column (:func:`erased_counts`), and a WARNING says it.
    """
    from spark_kms.tables.detect import detect_table, is_table_uri

    if is_table_uri(path_or_dataset) or detect_table(path_or_dataset):
        from spark_kms.tables.read import read_table_decrypted

        return read_table_decrypted(path_or_dataset, columns=columns, kms_options=kms_options,
                                    require_encrypted=require_encrypted, min_format_version=min_format_version,
                                    verify_blind_indexes=verify_blind_indexes, subject_store=subject_store,
                                    on_erased=on_erased)
    loc = dataset_location(path_or_dataset)
    local = loc.uri
    kms = KmsConfig.of(kms_options)
    if loc.is_file():

        made: list[BatchDecryptor] = []

        def decryptor_of(names: list[str]) -> BatchDecryptor:
            made.append(_file_decryptor(loc, names, kms, None, require_encrypted, min_format_version,
                                        verify_blind_indexes, subject_store, on_erased))
            return made[-1]

        return with_erased_counts(_file_table(loc, None if columns is None else list(columns), decryptor_of),
                                  f"file {local}", made)
    if not loc.is_dir():
        raise ConfigurationError(f"no such file or dataset directory: {local}")
    keys = Dataset.open(loc, require_files=False, kms_options=kms, require_encrypted=require_encrypted,
                        min_format_version=min_format_version)
    key_table = keys.key_table()
    with _stored_data(f"dataset {local}"):
        dataset = ds.dataset(loc.path, filesystem=loc.fs, format="parquet", partitioning="hive",
                             ignore_prefixes=["_", "."])
    chosen = _check_columns(columns, dataset.schema.names, f"dataset {local}")
    decryptor = BatchDecryptor(key_table, kms_options=kms, min_format_version=keys.min_format_version,
                               verify_blind_indexes=verify_blind_indexes, subject_store=subject_store,
                               on_erased=on_erased)
    used = [decryptor]
    schema = decryptor.plaintext_schema(dataset.schema, chosen)
    if chosen is not None:
        schema = pa.schema([schema.field(c) for c in chosen], metadata=schema.metadata)
    read = _to_read(decryptor, chosen, dataset.schema.names)
    tables: list[pa.Table] = []
    for fragment in dataset.get_fragments():
        file = loc.join(fragment.path[len(loc.path):]).uri
        per_file = decryptor if file not in keys.footers else BatchDecryptor(
            keys.key_table_for(file, key_table), kms_options=kms, min_format_version=keys.min_format_version,
            verify_blind_indexes=verify_blind_indexes, subject_store=decryptor._store or subject_store,
            on_erased=on_erased,
        )
        if per_file is not decryptor:
            used.append(per_file)
        with _stored_data(f"file {fragment.path}"):
            stored = fragment.to_table(schema=dataset.schema, columns=read)
        out = per_file.decrypt_table(stored, chosen, where=f"file {fragment.path}")
        tables.append(out if read == chosen else out.select(chosen))
    if not tables:
        return schema.empty_table()
    with _stored_data(f"dataset {local}"):
        table = pa.concat_tables(tables).cast(schema) if len(tables) > 1 else tables[0].cast(schema)
    return with_erased_counts(table, f"dataset {local}", used)


#: schema metadata key of a decrypted table: JSON {column: cells read as null because they were erased}
ERASED_METADATA_KEY = b"spark_kms.erased"


def _erased_total(decryptors: Sequence[BatchDecryptor]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in decryptors:
        for column, count in d.erased.items():
            total[column] = total.get(column, 0) + count
    return total


def _log_erased(where: str, decryptors: Sequence[BatchDecryptor]) -> dict[str, int]:
    total = _erased_total(decryptors)
    if total:
        logger.warning("%s: %d erased cells read as null (%s)", where, sum(total.values()),
                       ", ".join(f"{c}: {n}" for c, n in sorted(total.items())))
    return total


def with_erased_counts(table: pa.Table, where: str, decryptors: Sequence[BatchDecryptor]) -> pa.Table:
    """``table`` with the erased-cell counts of ``decryptors`` in its schema metadata (when there are any)."""
    total = _log_erased(where, decryptors)
    if not total:
        return table
    metadata = dict(table.schema.metadata or {})
    metadata[ERASED_METADATA_KEY] = json.dumps(total, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def erased_counts(table: pa.Table) -> dict[str, int]:
    """How many cells of each column of a decrypted table read as null because their data was erased."""
    raw = (table.schema.metadata or {}).get(ERASED_METADATA_KEY)
    return json.loads(raw) if raw else {}


@contextmanager
def _stored_data(where: str) -> Iterator[None]:
    """Files whose stored columns disagree with each other (a column of another type in one file) are a
    FormatError naming the place; Arrow's own message is left out, as it may quote stored values."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise FormatError(
            f"{where}: the stored columns do not fit the dataset's schema ({type(exc).__name__}): a file holds a "
            "column of another type than the others"
        ) from None
