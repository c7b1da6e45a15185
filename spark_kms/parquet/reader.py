"""Reading encrypted Parquet: decrypting readers over one file or a whole dataset.

Where files, key tables and the manifest come from, and the precedence rule between them,
is :mod:`spark_kms.parquet.dataset`. Reading plain columns only never touches the KMS: keys
are unwrapped lazily, on the first encrypted cell that needs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from spark_kms.crypto import KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfigLike
from spark_kms.parquet.dataset import (
    Dataset,
    apply_manifest,
    dataset_root_of,
    key_table_from_metadata,
    local_path,
    open_parquet,
    read_manifest,
)
from spark_kms.parquet.decryptor import BatchDecryptor

__all__ = ["iter_decrypted_batches", "read_decrypted_table"]

PathLike = str | os.PathLike[str]
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


def _file_key_table(pf: pq.ParquetFile, path: str) -> KeyTable:
    """The footer's key table with the dataset manifest applied (no KMS call)."""
    return apply_manifest(key_table_from_metadata(pf.metadata.metadata, path), read_manifest(dataset_root_of(path)))


def _decrypted_batches(
    pf: pq.ParquetFile, path: str, chosen: list[str] | None, decryptor: BatchDecryptor, batch_size: int
) -> Iterator[pa.RecordBatch]:
    where = f"file {path}"
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=chosen):
        at = where if offset == 0 else f"{where} (batch from row {offset})"
        yield decryptor.decrypt_batch(batch, where=at)
        offset += batch.num_rows


def iter_decrypted_batches(
    path: PathLike,
    columns: Sequence[str] | None = None,
    *,
    kms_options: KmsConfigLike = None,
    key_table: KeyTable | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Stream one encrypted Parquet file as decrypted record batches.

    :param columns: the columns to read (default all); only these are read from disk,
        and only their data keys are unwrapped -- plain columns alone make no KMS call.
    :param key_table: use this key table instead of the footer's (+ the dataset manifest's).
    """
    local = local_path(path)
    pf = open_parquet(local)
    chosen = _check_columns(columns, pf.schema_arrow.names, f"file {local}")
    if key_table is None:
        key_table = _file_key_table(pf, local)
    decryptor = BatchDecryptor(key_table, kms_options=kms_options)
    yield from _decrypted_batches(pf, local, chosen, decryptor, batch_size)


def _file_table(
    path: str, columns: list[str] | None, kms_options: KmsConfigLike
) -> pa.Table:
    # One open and one footer parse per file: the schema and the batches share them.
    pf = open_parquet(path)
    chosen = _check_columns(columns, pf.schema_arrow.names, f"file {path}")
    decryptor = BatchDecryptor(_file_key_table(pf, path), kms_options=kms_options)
    schema = decryptor.plaintext_schema(pf.schema_arrow)
    if chosen is not None:
        schema = pa.schema([schema.field(c) for c in chosen], metadata=schema.metadata)
    batches = list(_decrypted_batches(pf, path, chosen, decryptor, DEFAULT_BATCH_ROWS))
    return pa.Table.from_batches(batches, schema=schema)


def read_decrypted_table(
    path_or_dataset: PathLike,
    columns: Sequence[str] | None = None,
    *,
    kms_options: KmsConfigLike = None,
) -> pa.Table:
    """Read and decrypt one file, or a whole dataset directory, into a table.

    For a directory, hive partition directories become columns again (typed as
    pyarrow.dataset infers them) and every file is decrypted with the dataset's merged
    key table; a failing cell is reported with its file.
    """
    local = local_path(path_or_dataset)
    if os.path.isfile(local):
        return _file_table(local, None if columns is None else list(columns), kms_options)
    if not os.path.isdir(local):
        raise ConfigurationError(f"no such file or dataset directory: {local}")
    key_table = Dataset.open(local, require_files=False).key_table()
    dataset = ds.dataset(local, format="parquet", partitioning="hive", ignore_prefixes=["_", "."])
    chosen = _check_columns(columns, dataset.schema.names, f"dataset {local}")
    decryptor = BatchDecryptor(key_table, kms_options=kms_options)
    schema = decryptor.plaintext_schema(dataset.schema, chosen)
    if chosen is not None:
        schema = pa.schema([schema.field(c) for c in chosen], metadata=schema.metadata)
    tables: list[pa.Table] = []
    for fragment in dataset.get_fragments():
        stored = fragment.to_table(schema=dataset.schema, columns=chosen)
        tables.append(decryptor.decrypt_table(stored, chosen, where=f"file {fragment.path}"))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).cast(schema) if len(tables) > 1 else tables[0].cast(schema)
