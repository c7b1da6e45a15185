"""Reading encrypted Parquet: key tables from footers, dataset listing, decrypting readers.

Layout rules:

* A file's key table is the UTF-8 JSON under ``spark_kms.key_table`` in the Parquet
  footer's key-value metadata (:data:`~spark_kms.crypto.KEY_TABLE_METADATA_KEY`).
* A dataset is a directory of such files, possibly in hive partition directories
  (``date=2024-01-01/``); names starting with ``_`` or ``.`` are not data (staging,
  run journals, ``_SUCCESS``, checksums) -- the same rule pyarrow.dataset applies.
* The dataset manifest ``<root>/_spark_kms_keys.json`` (written by the rewrap job)
  holds DEK entries that take precedence over footer entries with the same DEK id.
  A single file's dataset root is its nearest ancestor directory that is not a hive
  partition directory (``name=value``).

Reading plain columns only never touches the KMS: keys are unwrapped lazily, on the
first encrypted cell that needs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from spark_kms.crypto import (
    DATASET_MANIFEST_NAME,
    KEY_TABLE_METADATA_KEY,
    DekEntry,
    KeyTable,
    decode_manifest,
)
from spark_kms.errors import ConfigurationError, FormatError, MissingKeyTableError
from spark_kms.parquet._paths import local_path
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.keys import KmsOptions

__all__ = [
    "dataset_root_of",
    "iter_decrypted_batches",
    "list_data_files",
    "read_dataset_key_table",
    "read_decrypted_table",
    "read_key_table",
    "read_manifest",
]

PathLike = str | os.PathLike[str]
_KEY = KEY_TABLE_METADATA_KEY.encode("utf-8")
DEFAULT_BATCH_ROWS = 65_536


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _parquet_file(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise ConfigurationError(f"no such file: {path}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {path} is not a readable Parquet file ({type(exc).__name__})") from None


def _table_from_metadata(metadata: dict[bytes, bytes] | None, path: str) -> KeyTable:
    raw = (metadata or {}).get(_KEY)
    if raw is None:
        raise MissingKeyTableError(
            f"file {path} has no spark_kms key table in its Parquet footer (metadata key "
            f"{KEY_TABLE_METADATA_KEY!r}): it was not written by spark_kms, or its footer was rewritten"
        )
    return KeyTable.from_json(raw, where=f"file {path}")


def read_key_table(path: PathLike) -> KeyTable:
    """The key table in the footer of one Parquet file (no KMS call; wrapped keys only).

    :raises MissingKeyTableError: the footer has no key table (names the file).
    :raises FormatError: the key table is not valid (names the file and field).
    """
    local = local_path(path)
    try:
        metadata = pq.read_metadata(local).metadata
    except FileNotFoundError:
        raise ConfigurationError(f"no such file: {local}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {local} is not a readable Parquet file ({type(exc).__name__})") from None
    return _table_from_metadata(metadata, local)


def list_data_files(dataset_dir: PathLike) -> list[str]:
    """The data files of a dataset, sorted: every file under ``dataset_dir`` (hive partition
    directories included) whose own name and directories do not start with ``_`` or ``.``.
    A path to a file lists just that file."""
    root = local_path(dataset_dir)
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise ConfigurationError(f"no such dataset directory: {root}")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if not _hidden(f))
    return sorted(found)


def dataset_root_of(path: PathLike) -> str:
    """The dataset directory of a path: itself if a directory, else the nearest ancestor
    of the file that is not a hive partition directory (``name=value``)."""
    p = Path(local_path(path))
    if p.is_dir():
        return str(p)
    parent = p.parent
    while "=" in parent.name and parent.parent != parent:
        parent = parent.parent
    return str(parent)


def read_manifest(dataset_dir: PathLike) -> dict[str, DekEntry]:
    """The DEK entries of ``<dataset_dir>/_spark_kms_keys.json``; empty if there is none."""
    path = os.path.join(local_path(dataset_dir), DATASET_MANIFEST_NAME)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return {}
    return dict(decode_manifest(data, where=f"manifest {path}"))


def read_dataset_key_table(dataset_dir: PathLike, *, missing_ok: bool = False) -> KeyTable:
    """The key tables of all data files merged, with the dataset manifest's entries taking
    precedence (no KMS call).

    :param missing_ok: skip files without a key table instead of raising MissingKeyTableError
        (for datasets written by Spark's own Parquet writer, whose keys travel in a column).
    :raises FormatError: a corrupt key table, or two files describing a DEK or column differently.
    """
    local = local_path(dataset_dir)
    merged = KeyTable(deks={}, columns={})
    for path in list_data_files(local):
        try:
            table = read_key_table(path)
        except MissingKeyTableError:
            if missing_ok:
                continue
            raise
        merged = merged.merge(table, where=f"dataset {local}")
    overrides = read_manifest(dataset_root_of(local))
    return merged.with_overrides(overrides) if overrides else merged


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
    """The footer's key table with the dataset manifest's entries applied (no KMS call)."""
    table = _table_from_metadata(pf.metadata.metadata, path)
    overrides = read_manifest(dataset_root_of(path))
    return table.with_overrides(overrides) if overrides else table


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
    kms_options: KmsOptions | None = None,
    key_table: KeyTable | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Stream one encrypted Parquet file as decrypted record batches.

    :param columns: the columns to read (default all); only these are read from disk,
        and only their data keys are unwrapped -- plain columns alone make no KMS call.
    :param key_table: use this key table instead of the footer's (+ the dataset manifest's).
    """
    local = local_path(path)
    pf = _parquet_file(local)
    chosen = _check_columns(columns, pf.schema_arrow.names, f"file {local}")
    if key_table is None:
        key_table = _file_key_table(pf, local)
    decryptor = BatchDecryptor(key_table, kms_options=kms_options)
    yield from _decrypted_batches(pf, local, chosen, decryptor, batch_size)


def _file_table(
    path: str, columns: list[str] | None, kms_options: KmsOptions | None
) -> pa.Table:
    # One open and one footer parse per file: the schema and the batches share them.
    pf = _parquet_file(path)
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
    kms_options: KmsOptions | None = None,
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
    key_table = read_dataset_key_table(local)
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
