"""Decrypting Arrow data with a key table: :class:`BatchDecryptor`.

The decryptor knows the encrypted columns from the key table's column specs and
turns their ``binary`` cells back into the original Arrow type (``ColumnSpec.arrow_type``).
Data keys are unwrapped lazily, on the first cell that needs them, through a
:class:`~spark_kms.parquet.DekResolver` (at most one KMS Decrypt per key per process),
so decrypting only some columns -- or none -- costs only the keys those cells use.
Blind-index columns are one-way and stay ``binary``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, CellDecryptor, ColumnSpec, KeyTable, native_available
from spark_kms.errors import ConfigurationError, FormatError
from spark_kms.kms import DataKeyCache, KmsConfigLike
from spark_kms.parquet._types import (
    array_from_buffers,
    binary_buffers,
    decode_array,
    decode_values,
    parse_arrow_type,
)
from spark_kms.parquet.keys import DekResolver

__all__ = ["BatchDecryptor"]

_DECRYPTABLE = (AES_256_GCM, AES_256_SIV)


class BatchDecryptor:
    """Decrypts the encrypted columns of batches, arrays and tables described by ``key_table``.

    :param key_table: the file's (or dataset's merged) key table, manifest entries applied.
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig` or what its ``of`` takes).
    :param cache: where unwrapped keys live; default the per-process cache.

    Not thread-safe (one per task or reader); cheap to build.
    """

    def __init__(
        self,
        key_table: KeyTable,
        *,
        kms_options: KmsConfigLike = None,
        cache: DataKeyCache | None = None,
    ) -> None:
        if not isinstance(key_table, KeyTable):
            raise ConfigurationError(f"key_table must be a KeyTable, got {type(key_table).__name__}")
        self.key_table = key_table
        self._resolver = DekResolver(key_table.deks, kms_options=kms_options, cache=cache)
        self.kms = self._resolver.kms
        self._where = ""
        self._cells = CellDecryptor(self._lookup)
        self._types: dict[str, pa.DataType] = {}

    def __reduce__(self) -> tuple[object, ...]:
        # Ships to Spark executors as configuration (wrapped keys only); cipher objects,
        # providers and the cache are rebuilt there, and keys unwrapped lazily.
        return (_rebuild, (self.key_table, self.kms))

    def __repr__(self) -> str:
        return f"BatchDecryptor(columns={self.encrypted_columns}, deks={len(self.key_table.deks)})"

    @property
    def kms_calls(self) -> int:
        """KMS Decrypt calls this decryptor made (keys found in the process cache cost none)."""
        return self._resolver.kms_calls

    @property
    def encrypted_columns(self) -> list[str]:
        """The columns this decryptor turns back into plaintext (blind indexes excluded)."""
        return [name for name, spec in self.key_table.columns.items() if spec.algorithm in _DECRYPTABLE]

    def plaintext_type(self, column: str, *, where: str = "") -> pa.DataType:
        """The Arrow type ``column`` decrypts to."""
        spec = self._spec(column, where)
        t = self._types.get(column)
        if t is None:
            t = self._types[column] = parse_arrow_type(spec.arrow_type, column=column, where=where)
        return t

    def plaintext_schema(self, schema: pa.Schema, columns: Iterable[str] | None = None) -> pa.Schema:
        """``schema`` (as stored) with the chosen encrypted columns at their plaintext types."""
        chosen = self._chosen(schema.names, columns)
        fields = [
            f.with_type(self.plaintext_type(f.name)) if f.name in chosen else f for f in schema
        ]
        return pa.schema(fields, metadata=schema.metadata)

    def decrypt_array(
        self, array: pa.Array | pa.ChunkedArray, column: str, *, where: str = ""
    ) -> pa.Array | pa.ChunkedArray:
        """Decrypt the cells of one encrypted column back to its original type.

        :raises DecryptionError: a cell fails to authenticate (tampered, moved from another
            column, unknown DEK); the message names ``where``, the column and the row.
        """
        t = self.plaintext_type(column, where=where)
        if isinstance(array, pa.ChunkedArray):
            return pa.chunked_array([self.decrypt_array(c, column, where=where) for c in array.chunks], type=t)
        if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
            raise FormatError(
                f"{where + ': ' if where else ''}encrypted column {column!r} is stored as {array.type}, expected binary"
            )
        self._where = where
        if native_available() and self.key_table.columns[column].algorithm == AES_256_GCM:
            # The hot path: the whole array through the native extension, no Python object per cell.
            plain = self._cells.decrypt_buffers(binary_buffers(array), column, where=where, out_width=4)
            return decode_array(array_from_buffers(plain), t, column=column, where=where)
        return decode_values(self._cells.decrypt_many(array.to_pylist(), column, where=where), t, column=column, where=where)

    def decrypt_batch(
        self, batch: pa.RecordBatch, columns: Iterable[str] | None = None, *, where: str = ""
    ) -> pa.RecordBatch:
        """Decrypt the encrypted columns of ``batch`` (all of them, or those in ``columns``);
        other columns, blind indexes included, pass through unchanged."""
        chosen = self._chosen(batch.schema.names, columns)
        if not chosen:
            return batch
        arrays = []
        fields = []
        for i, f in enumerate(batch.schema):
            if f.name in chosen:
                arr = self.decrypt_array(batch.column(i), f.name, where=where)
                arrays.append(arr)
                fields.append(f.with_type(arr.type))
            else:
                arrays.append(batch.column(i))
                fields.append(f)
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=batch.schema.metadata))

    def decrypt_table(self, table: pa.Table, columns: Iterable[str] | None = None, *, where: str = "") -> pa.Table:
        """:meth:`decrypt_batch` for a table."""
        chosen = self._chosen(table.schema.names, columns)
        for name in chosen:
            i = table.schema.get_field_index(name)
            arr = self.decrypt_array(table.column(i), name, where=where)
            table = table.set_column(i, table.schema.field(i).with_type(arr.type), arr)
        return table

    # -- internals ------------------------------------------------------------
    def _lookup(self, dek_id: bytes) -> bytes:
        return self._resolver.lookup(dek_id, where=self._where)

    def _spec(self, column: str, where: str) -> ColumnSpec:
        spec = self.key_table.columns.get(column)
        at = f"{where}: " if where else ""
        if spec is None:
            raise ConfigurationError(
                f"{at}column {column!r} is not encrypted according to the key table; "
                f"encrypted columns: {self.encrypted_columns}"
            )
        if spec.algorithm not in _DECRYPTABLE:
            raise ConfigurationError(f"{at}column {column!r} is a blind index ({spec.algorithm}): it cannot be decrypted")
        return spec

    def _chosen(self, names: list[str], columns: Iterable[str] | None) -> set[str]:
        decryptable = set(self.encrypted_columns)
        if columns is None:
            return decryptable & set(names)
        wanted = set(columns)
        return decryptable & wanted & set(names)


def _rebuild(key_table: KeyTable, kms_options: KmsConfigLike) -> BatchDecryptor:
    return BatchDecryptor(key_table, kms_options=kms_options)
