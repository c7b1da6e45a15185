"""Decrypting Arrow data with a key table: :class:`BatchDecryptor`.

The decryptor knows the encrypted columns from the key table's column specs and
turns their ``binary`` cells back into the original Arrow type (``ColumnSpec.arrow_type``).
Data keys are unwrapped lazily, on the first cell that needs them, through a
:class:`~spark_kms.parquet.DekResolver` (at most one KMS Decrypt per key per process),
so decrypting only some columns -- or none -- costs only the keys those cells use.
Blind-index columns are one-way and stay ``binary``.

Format version 2 (docs/FORMAT.md section 3): each GCM / SIV cell authenticates the column's
spec (:func:`~spark_kms.crypto.column_binding`), so a key table whose ``arrow_type`` or row
binding was changed makes the cells fail with a DecryptionError naming the file and column,
instead of being read under the changed spec. Cells of version 1 (no spec in their AAD) are
accepted from version-1 key tables unless the reader asks for ``min_format_version=2``
(:meth:`KeyTable.aad_versions <spark_kms.crypto.KeyTable.aad_versions>` is the rule). Blind-index
columns are checked to hold blind-index cells of a deterministic key of the table, and with
``verify_blind_indexes=True`` recomputed from their source column.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_GCM_SUBJECT,
    AES_256_SIV,
    BIDX_CELL_BYTES,
    FORMAT_VERSIONS,
    HEADER_BYTES,
    HMAC_SHA256_BIDX,
    BlindIndexer,
    CellDecryptor,
    ColumnSpec,
    KeyTable,
    SubjectCellDecryptor,
    column_binding,
    native_available,
    row_context,
)
from spark_kms.errors import ConfigurationError, DecryptionError, ErasedDataError, FormatError, KeyErasedError
from spark_kms.kms import DataKeyCache, KmsConfigLike
from spark_kms.parquet._types import (
    array_from_buffers,
    binary_buffers,
    decode_array,
    encode_values,
    parse_arrow_type,
)
from spark_kms.parquet.keys import DekResolver

__all__ = ["ON_ERASED", "BatchDecryptor", "check_on_erased"]

logger = logging.getLogger(__name__)

_DECRYPTABLE = (AES_256_GCM, AES_256_SIV, AES_256_GCM_SUBJECT)
#: what a reader does with erased cells: return them as null (default) or raise ErasedDataError
ON_ERASED = ("null", "raise")


def check_on_erased(value: str | None) -> str:
    """``on_erased`` checked: ``"null"`` (also for ``None``) or ``"raise"``."""
    value = "null" if value is None else str(value).strip().lower()
    if value not in ON_ERASED:
        raise ConfigurationError(f"on_erased must be one of {list(ON_ERASED)}, got {value!r}")
    return value


class _ErasedDek(Exception):  # noqa: N818 -- internal signal, never leaves this module
    """A data key's KMS key is erased (KeyErasedError on unwrap): its cells read as erased."""

    def __init__(self, dek_id: bytes) -> None:
        super().__init__(dek_id.hex())
        self.dek_id = dek_id
_BIDX_BYTE0 = b"\x13"
RowValues = Sequence[bytes | None]


class BatchDecryptor:
    """Decrypts the encrypted columns of batches, arrays and tables described by ``key_table``.

    :param key_table: the file's (or dataset's merged) key table, manifest entries applied.
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig` or what its ``of`` takes).
    :param cache: where unwrapped keys live; default the per-process cache.
    :param min_format_version: 2 refuses a version-1 key table and version-1 cells (a strict reader);
        1 (default) reads both.
    :param verify_blind_indexes: recompute every blind-index cell of a batch from its source column (in the
        same batch) and refuse a mismatch. Costs the deterministic key's unwrap and one HMAC per cell.
    :param subject_store: the subject key store of per-subject columns (a
        :class:`~spark_kms.subjects.SubjectKeyStore` or its URL; default ``$SPARK_KMS_SUBJECT_STORE`` or the
        embedded one). Looked up once per batch, for the batch's distinct subjects.
    :param on_erased: ``"null"`` (default): cells whose data was erased -- their tenant's KMS key is scheduled
        for deletion or destroyed, or their subject's key was deleted -- read as null, counted in
        :attr:`erased`; ``"raise"``: :class:`~spark_kms.errors.ErasedDataError` instead.

    Not thread-safe (one per task or reader); cheap to build.
    """

    def __init__(
        self,
        key_table: KeyTable,
        *,
        kms_options: KmsConfigLike = None,
        cache: DataKeyCache | None = None,
        min_format_version: int = 1,
        verify_blind_indexes: bool = False,
        subject_store: Any = None,
        on_erased: str | None = "null",
    ) -> None:
        if not isinstance(key_table, KeyTable):
            raise ConfigurationError(f"key_table must be a KeyTable, got {type(key_table).__name__}")
        if isinstance(min_format_version, bool) or min_format_version not in FORMAT_VERSIONS:
            raise ConfigurationError(
                f"min_format_version must be one of {list(FORMAT_VERSIONS)}, got {min_format_version!r}"
            )
        if key_table.format_version < min_format_version:
            raise FormatError(
                f"the key table has format_version {key_table.format_version}; this reader requires "
                f"{min_format_version} or later (min_format_version={min_format_version}): re-encrypt the "
                "dataset to upgrade it"
            )
        self.key_table = key_table
        self.min_format_version = min_format_version
        self.verify_blind_indexes = bool(verify_blind_indexes)
        self._resolver = DekResolver(key_table.deks, kms_options=kms_options, cache=cache)
        self.kms = self._resolver.kms
        self._where = ""
        self._cells = CellDecryptor(self._lookup)
        self._types: dict[str, pa.DataType] = {}
        self._indexers: dict[bytes, BlindIndexer] = {}
        self.on_erased = check_on_erased(on_erased)
        self._subject_store_arg = subject_store
        self._store: Any = None
        self._subject_cells = SubjectCellDecryptor(self._lookup)
        #: column -> cells returned as null because their data was erased (tenant key or subject key)
        self.erased: dict[str, int] = {}
        #: data keys (8-byte ids) whose KMS key is erased
        self.erased_deks: set[bytes] = set()
        # the encoded bound / subject column of the batch being decrypted, and its subjects' keys (shared by the
        # batch's columns; replaced by the next batch)
        self._bound_memo: tuple[tuple[str, int], RowValues] | None = None
        self._subject_memo: tuple[RowValues, dict[bytes, bytes | None]] | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # Ships to Spark executors as configuration (wrapped keys only); cipher objects,
        # providers and the cache are rebuilt there, and keys unwrapped lazily.
        return (_rebuild, (self.key_table, self.kms, self.min_format_version, self.verify_blind_indexes,
                           self._subject_store_arg if self._store is None else self._store, self.on_erased))

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

    def required_columns(self, columns: Iterable[str]) -> list[str]:
        """``columns`` plus what decrypting them needs: the row-binding column of each row-bound column
        and, with ``verify_blind_indexes``, the source of each blind index (in first-seen order)."""
        out = list(dict.fromkeys(columns))
        for name in list(out):
            spec = self.key_table.columns.get(name)
            if spec is None:
                continue
            if spec.row_binding is not None and spec.row_binding not in out:
                out.append(spec.row_binding)
            if spec.subject is not None and spec.subject not in out:
                out.append(spec.subject)
            if self.verify_blind_indexes and spec.source is not None and spec.source not in out:
                out.append(spec.source)
                source = self.key_table.columns.get(spec.source)
                if source is not None and source.row_binding is not None and source.row_binding not in out:
                    out.append(source.row_binding)
        return out

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
        self,
        array: pa.Array | pa.ChunkedArray,
        column: str,
        *,
        where: str = "",
        row_values: RowValues | None = None,
    ) -> pa.Array | pa.ChunkedArray:
        """Decrypt the cells of one encrypted column back to its original type.

        :param row_values: for a column bound to rows (``ColumnSpec.row_binding``): the plaintext bytes of the
            bound column, one per row (:func:`~spark_kms.parquet.encode_values` of it).
        :raises DecryptionError: a cell fails to authenticate (tampered, moved from another column or row,
            unknown DEK, or the key table's column spec changed); the message names ``where``, the column
            and the row.
        """
        t = self.plaintext_type(column, where=where)
        if isinstance(array, pa.ChunkedArray):
            chunks, start = [], 0
            for chunk in array.chunks:
                rows = None if row_values is None else row_values[start : start + len(chunk)]
                chunks.append(self._decrypt_chunk(chunk, column, t, where, rows))
                start += len(chunk)
            return pa.chunked_array(chunks, type=t)
        return self._decrypt_chunk(array, column, t, where, row_values)

    def decrypt_bytes(
        self,
        array: pa.Array | pa.ChunkedArray,
        column: str,
        *,
        where: str = "",
        row_values: RowValues | None = None,
    ) -> pa.Array:
        """The plaintext *bytes* of one encrypted column's cells, as a ``binary`` array (nulls stay null):
        what :meth:`decrypt_array` returns before the cast back to the column's type. The cells are checked
        against the column's spec exactly as there -- for callers that want the plaintext in another form
        (SQL ``kms_decrypt`` as text, ``kms_decrypt_binary`` as bytes) than the recorded ``arrow_type``."""
        self._spec(column, where)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        return self._plain_bytes(array, column, where, row_values)

    def decrypt_batch(
        self, batch: pa.RecordBatch, columns: Iterable[str] | None = None, *, where: str = ""
    ) -> pa.RecordBatch:
        """Decrypt the encrypted columns of ``batch`` (all of them, or those in ``columns``);
        other columns, blind indexes included, pass through unchanged (blind indexes are checked)."""
        chosen = self._chosen(batch.schema.names, columns)
        plain = self._decrypt_columns(batch.schema.names, batch.column, len(batch), chosen, where)
        if not chosen:
            return batch
        arrays = []
        fields = []
        for i, f in enumerate(batch.schema):
            if f.name in chosen:
                arr = plain[f.name]
                arrays.append(arr)
                fields.append(f.with_type(arr.type))
            else:
                arrays.append(batch.column(i))
                fields.append(f)
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=batch.schema.metadata))

    def decrypt_table(self, table: pa.Table, columns: Iterable[str] | None = None, *, where: str = "") -> pa.Table:
        """:meth:`decrypt_batch` for a table."""
        chosen = self._chosen(table.schema.names, columns)
        plain = self._decrypt_columns(table.schema.names, table.column, table.num_rows, chosen, where)
        for name in chosen:
            i = table.schema.get_field_index(name)
            arr = plain[name]
            table = table.set_column(i, table.schema.field(i).with_type(arr.type), arr)
        return table

    # -- internals ------------------------------------------------------------
    def _decrypt_columns(
        self, names: list[str], column_of: object, num_rows: int, chosen: set[str], where: str
    ) -> dict[str, pa.Array | pa.ChunkedArray]:
        get = column_of  # RecordBatch.column or Table.column, by name
        self._check_index_columns(names, get, where)
        out: dict[str, pa.Array | pa.ChunkedArray] = {}
        try:
            for name in names:
                if name in chosen:
                    out[name] = self.decrypt_array(
                        get(name), name, where=where, row_values=self._row_values(names, get, name, where)  # type: ignore[operator]
                    )
            if self.verify_blind_indexes:
                self._verify_indexes(names, get, where)
        finally:
            self._bound_memo = self._subject_memo = None  # ids of batches are reused: never carry a memo over
        return out

    def _decrypt_chunk(
        self, array: pa.Array, column: str, t: pa.DataType, where: str, row_values: RowValues | None
    ) -> pa.Array:
        return decode_array(self._plain_bytes(array, column, where, row_values), t, column=column, where=where)

    def _plain_bytes(self, array: pa.Array, column: str, where: str, row_values: RowValues | None) -> pa.Array:
        """The plaintexts of one column's cells as a ``binary`` array (nulls stay null)."""
        if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
            raise FormatError(
                f"{where + ': ' if where else ''}encrypted column {column!r} is stored as {array.type}, expected binary"
            )
        spec = self._spec(column, where)
        self._where = where
        whole = array
        erased_subjects = 0
        while True:
            if self.erased_deks:
                array = self._without_erased(whole)
            try:
                if spec.algorithm == AES_256_GCM_SUBJECT:
                    plain, erased_subjects = self._subject_bytes(array, spec, column, where, row_values)
                else:
                    plain = self._cell_bytes(array, spec, column, where, row_values)
                break
            except _ErasedDek as exc:
                self.erased_deks.add(exc.dek_id)
                entry = self.key_table.deks.get(exc.dek_id.hex())
                logger.warning("%sdata key %s is erased (its KMS key %s is scheduled for deletion or destroyed): "
                               "its cells read as null", f"{where}: " if where else "", exc.dek_id.hex(),
                               entry.key_uri if entry is not None else "?")
        erased = erased_subjects + (array.null_count - whole.null_count if array is not whole else 0)
        if erased:
            self._note_erased(column, erased, where)
        return plain

    def _note_erased(self, column: str, count: int, where: str) -> None:
        if self.on_erased == "raise":
            at = f"{where}: " if where else ""
            raise ErasedDataError(
                f"{at}column {column!r}: {count} cells were erased (their tenant's KMS key is scheduled for deletion "
                "or destroyed, or their subject's key was deleted); read with on_erased='null' to get nulls"
            )
        self.erased[column] = self.erased.get(column, 0) + count

    def _without_erased(self, array: pa.Array) -> pa.Array:
        """``array`` with the cells of erased data keys replaced by nulls."""
        ids = pc.binary_slice(array, 1, HEADER_BYTES)
        mask = pc.fill_null(pc.is_in(ids, value_set=pa.array(sorted(self.erased_deks), ids.type)), False)
        return pc.if_else(mask, pa.scalar(None, array.type), array)

    def _subject_bytes(
        self, array: pa.Array, spec: ColumnSpec, column: str, where: str, row_values: RowValues | None
    ) -> tuple[pa.Array, int]:
        """Per-subject cells: the batch's distinct subjects looked up in one go, then decrypted row by row."""
        row_values = _needed_row_values(row_values, len(array), column, "encrypted per subject, by column", spec.subject, where)
        cells = array.to_pylist()
        wanted = {sid for cell, sid in zip(cells, row_values, strict=True) if cell is not None and sid is not None}
        keys: dict[bytes, bytes | None] = {}
        memo = self._subject_memo
        if memo is not None and memo[0] is row_values and wanted <= memo[1].keys():
            keys = memo[1]  # another column of the same batch: its subjects were looked up a moment ago
        elif wanted:
            found = self._subject_store(spec, where).keys_for(sorted(s.decode("utf-8") for s in wanted))
            keys = {k.encode("utf-8"): v for k, v in found.items()}
            self._subject_memo = (row_values, keys)
        plain, erased = self._subject_cells.decrypt_rows(
            cells, column, column_binding(spec), row_values, keys, where=where
        )
        return pa.array(plain, pa.binary()), len(erased)

    def _subject_store(self, spec: ColumnSpec, where: str) -> Any:
        store = self._store
        if store is None:
            from spark_kms.subjects import store_of  # the store builds on this layer: imported on use

            store = self._store = store_of(self._subject_store_arg, kms_options=self.kms)
        if store.store_id != spec.subject_store:
            at = f"{where}: " if where else ""
            raise ConfigurationError(
                f"{at}column {spec.name!r} was encrypted with subject key store {spec.subject_store}, but the store "
                f"given ({store}) is {store.store_id}: pass subject_store= the one it was written with"
            )
        return store

    def _cell_bytes(
        self, array: pa.Array, spec: ColumnSpec, column: str, where: str, row_values: RowValues | None
    ) -> pa.Array:
        context = column_binding(spec)
        alternatives = () if self.key_table.aad_versions(column, min_format_version=self.min_format_version) == (2,) \
            else (b"",)
        if spec.row_binding is not None:
            row_values = _needed_row_values(row_values, len(array), column, "bound to rows by column", spec.row_binding, where)
            contexts = [row_context(context, v) for v in row_values]
            return pa.array(self._cells.decrypt_rows(array.to_pylist(), column, contexts, where=where), pa.binary())
        if native_available() and spec.algorithm == AES_256_GCM:
            # The hot path: the whole array through the native extension, no Python object per cell.
            buffers = self._cells.decrypt_buffers(
                binary_buffers(array), column, context, where=where, out_width=4, alternatives=alternatives
            )
            return array_from_buffers(buffers)
        cells = self._cells.decrypt_many(array.to_pylist(), column, context, where=where, alternatives=alternatives)
        return pa.array(cells, pa.binary())

    def _row_values(self, names: list[str], get: object, column: str, where: str) -> RowValues | None:
        spec = self.key_table.columns[column]
        bound = spec.row_binding or spec.subject
        if bound is None:
            return None
        if bound not in names:
            at = f"{where}: " if where else ""
            how = "bound to rows" if spec.row_binding else "encrypted per subject"
            raise ConfigurationError(f"{at}column {column!r} is {how} by column {bound!r}, which was not read: read it too")
        cached = self._bound_memo
        if cached is not None and cached[0] == (bound, id(get)):
            return cached[1]  # the same batch's bound column, already encoded for another column
        values = encode_values(get(bound))  # type: ignore[operator]
        self._bound_memo = ((bound, id(get)), values)
        return values

    def _check_index_columns(self, names: list[str], get: object, where: str) -> None:
        """A blind-index column must hold 25-byte blind-index cells naming a deterministic key of the table:
        anything else (a decryptable column relabelled as an index, plaintext) is refused, not returned."""
        at = f"{where}: " if where else ""
        for name in names:
            spec = self.key_table.columns.get(name)
            if spec is None or spec.algorithm != HMAC_SHA256_BIDX:
                continue
            values = get(name)  # type: ignore[operator]
            if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
                raise FormatError(f"{at}blind-index column {name!r} is stored as {values.type}, expected binary")
            present = values.drop_null()
            if len(present) == 0:
                continue
            shaped = pc.all(pc.and_(
                pc.equal(pc.binary_length(present), BIDX_CELL_BYTES),
                pc.equal(pc.binary_slice(present, 0, 1), pa.scalar(_BIDX_BYTE0, present.type)),
            )).as_py()
            if not shaped:
                row = next(i for i, v in enumerate(values.to_pylist())
                           if v is not None and (len(v) != BIDX_CELL_BYTES or v[:1] != _BIDX_BYTE0))
                raise FormatError(f"{at}blind-index column {name!r}, row {row}: not a blind-index cell")
            for dek_id in pc.unique(pc.binary_slice(present, 1, HEADER_BYTES)).to_pylist():
                entry = self.key_table.deks.get(dek_id.hex())
                if entry is None or entry.algorithm != AES_256_SIV:
                    raise FormatError(
                        f"{at}blind-index column {name!r} holds cells of DEK {dek_id.hex()}, which is not a "
                        "deterministic key of the key table"
                    )

    def _verify_indexes(self, names: list[str], get: object, where: str) -> None:
        at = f"{where}: " if where else ""
        for name in names:
            spec = self.key_table.columns.get(name)
            if spec is None or spec.algorithm != HMAC_SHA256_BIDX or spec.source is None:
                continue
            if spec.source not in names:
                raise ConfigurationError(
                    f"{at}blind-index column {name!r} cannot be verified without its source column {spec.source!r}: "
                    "read it too"
                )
            source = self.key_table.columns.get(spec.source)
            values = get(spec.source)  # type: ignore[operator]
            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
            if source is not None and source.decryptable:
                rows = self._row_values(names, get, spec.source, where)
                plain = self._plain_bytes(values, spec.source, where, rows).to_pylist()
            else:
                plain = encode_values(values)
            stored = get(name).to_pylist()  # type: ignore[operator]
            for row, (cell, value) in enumerate(zip(stored, plain, strict=True)):
                expected = None if value is None or cell is None else self._indexer(cell[1:HEADER_BYTES]).index(value, spec.source)
                if (cell is None) != (value is None) or cell != expected:
                    raise DecryptionError(
                        f"{at}blind-index column {name!r}, row {row}: the index does not match its source column "
                        f"{spec.source!r} (a tampered or moved index cell, or a changed column spec)"
                    )

    def _indexer(self, dek_id: bytes) -> BlindIndexer:
        indexer = self._indexers.get(dek_id)
        if indexer is None:
            indexer = self._indexers[dek_id] = BlindIndexer(self._lookup(dek_id), dek_id)
        return indexer

    def _lookup(self, dek_id: bytes) -> bytes:
        try:
            return self._resolver.lookup(dek_id, where=self._where)
        except KeyErasedError:
            raise _ErasedDek(bytes(dek_id)) from None

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


def _needed_row_values(
    row_values: RowValues | None, cells: int, column: str, how: str, by: str | None, where: str
) -> RowValues:
    """The bound (or subject) column's values a row-bound (or per-subject) column needs, one per cell."""
    if row_values is None:
        at = f"{where}: " if where else ""
        raise ConfigurationError(
            f"{at}column {column!r} is {how} {by!r}: decrypt it together with that column (read both)"
        )
    if len(row_values) != cells:
        raise ConfigurationError(f"column {column!r}: {len(row_values)} row values for {cells} cells")
    return row_values


def _rebuild(
    key_table: KeyTable, kms_options: KmsConfigLike, min_format_version: int = 1, verify_blind_indexes: bool = False,
    subject_store: Any = None, on_erased: str = "null",
) -> BatchDecryptor:
    return BatchDecryptor(
        key_table, kms_options=kms_options, min_format_version=min_format_version,
        verify_blind_indexes=verify_blind_indexes, subject_store=subject_store, on_erased=on_erased,
    )
