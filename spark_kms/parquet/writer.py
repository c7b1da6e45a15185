"""Writing one encrypted Parquet file, streaming: :class:`EncryptedParquetWriter`.

Each batch is encrypted and written as it comes (one or more row groups per batch),
so memory stays flat however large the file grows. At close the key table -- every
data key used, wrapped only, and a column spec per encrypted or derived column -- is
added to the footer's key-value metadata under ``spark_kms.key_table``
(``pq.ParquetWriter.add_key_value_metadata``), next to pyarrow's own ``ARROW:schema``.

The file is opened on the first non-empty batch. A writer that saw no rows makes no
KMS call and, by default, creates no file (Spark: an empty partition leaves nothing
behind); ``write_empty=True`` writes a valid file with zero rows and a key table
without data keys. Leaving the ``with`` block on an exception removes the partial file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms.crypto import DEFAULT_MAX_CELLS_PER_DEK, KEY_TABLE_METADATA_KEY, DekEntry, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfigLike, KmsProvider
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.storage import resolve

__all__ = ["EncryptedParquetWriter"]


class EncryptedParquetWriter:
    """Encrypts record batches and streams them into one Parquet file.

    :param path: the file to write (its directory must exist).
    :param schema: the plaintext schema of the batches to come.
    :param spec: which columns to encrypt, and how.
    :param provider: the key new data keys are generated under: a key URI (built through
        ``kms_options``) or a :class:`~spark_kms.kms.KmsProvider`.
    :param encryption_context: sent to the KMS with every GenerateDataKey, and stored.
    :param max_cells_per_dek: AES-GCM cells per data key before rolling over.
    :param deterministic_entry: the job's key for deterministic / blind-index columns.
    :param kms_options: how to reach each KMS (:class:`~spark_kms.kms.KmsConfig` or what its ``of``
        takes); needed for a key URI, or to unwrap a ``deterministic_entry`` of another KMS.
    :param require_protection_level: refuse a key guarded by less than this (``"hsm"``...), checked
        once (DescribeKey) before any data key: see :class:`~spark_kms.parquet.BatchEncryptor`.
    :param write_empty: write a zero-row file when no rows arrive (default: no file, no KMS call).
    :param metadata: extra footer key-value metadata (str -> str), e.g. a job id.
    :param parquet_options: passed to ``pyarrow.parquet.ParquetWriter`` (``compression``, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema,
        spec: EncryptionSpec,
        provider: KmsProvider | str,
        *,
        encryption_context: Mapping[str, str] | None = None,
        max_cells_per_dek: int = DEFAULT_MAX_CELLS_PER_DEK,
        deterministic_entry: DekEntry | None = None,
        kms_options: KmsConfigLike = None,
        require_protection_level: str | Sequence[str] | None = None,
        write_empty: bool = False,
        metadata: Mapping[str, str] | None = None,
        parquet_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(schema, pa.Schema):
            raise ConfigurationError(f"schema must be a pyarrow Schema, got {type(schema).__name__}")
        extra = dict(metadata or {})
        if KEY_TABLE_METADATA_KEY in extra:
            raise ConfigurationError(f"metadata key {KEY_TABLE_METADATA_KEY!r} is reserved for the key table")
        self._location = resolve(path)
        self.path = self._location.uri
        self.schema = schema
        self.write_empty = write_empty
        self._metadata = extra
        self._parquet_options = {"compression": "snappy", **dict(parquet_options or {})}
        self._encryptor = BatchEncryptor(
            spec,
            provider,
            encryption_context=encryption_context,
            max_cells_per_dek=max_cells_per_dek,
            deterministic_entry=deterministic_entry,
            kms_options=kms_options,
            require_protection_level=require_protection_level,
        )
        # Validates the spec against the schema now, before any row or KMS call.
        self.output_schema = self._encryptor.output_schema(schema)
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._closed = False
        self.rows = 0

    def __repr__(self) -> str:
        return f"EncryptedParquetWriter({self.path!r}, rows={self.rows}, kms_calls={self.kms_calls})"

    def __enter__(self) -> EncryptedParquetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- public ---------------------------------------------------------------
    @property
    def kms_calls(self) -> int:
        """KMS calls made for this file (GenerateDataKey, plus an unwrap of the job key if needed)."""
        return self._encryptor.kms_calls

    @property
    def key_table(self) -> KeyTable:
        """The key table written (or to be written) to the footer."""
        return self._encryptor.key_table()

    @property
    def written(self) -> bool:
        """Whether a file was (or is being) written."""
        return self._writer is not None

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Encrypt ``batch`` and append it to the file."""
        if self._closed:
            raise ConfigurationError(f"the writer of {self.path} is closed")
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.write_batch(b)
            return
        if batch.num_rows == 0:
            return
        batch = self._conform(batch)
        encrypted = self._encryptor.encrypt_batch(batch)
        self._open().write_batch(encrypted)
        self.rows += batch.num_rows

    write_table = write_batch

    def close(self) -> None:
        """Write the key table into the footer and close the file (or write nothing, see above)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is None and self.write_empty:
                self._open()
            if self._writer is not None:
                footer = {KEY_TABLE_METADATA_KEY: self._encryptor.key_table().to_json().decode("utf-8")}
                footer.update(self._metadata)
                self._writer.add_key_value_metadata(footer)
                self._writer.close()
                self._sink.close()  # on an object store, the object appears now, whole
        finally:
            self._encryptor.close()

    def abort(self) -> None:
        """Stop writing and remove the partial file; the data keys are wiped."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
                with contextlib.suppress(Exception):
                    self._sink.close()
                with contextlib.suppress(FileNotFoundError):
                    self._location.delete_file()
        finally:
            self._encryptor.close()

    # -- internals ------------------------------------------------------------
    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._sink = self._location.open_output_stream()
            self._writer = pq.ParquetWriter(self._sink, self.output_schema, **self._parquet_options)
        return self._writer

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.schema.equals(self.schema):
            return batch
        if batch.schema.names != self.schema.names or batch.schema.types != self.schema.types:
            raise ConfigurationError(
                f"batch schema does not match the writer's schema for {self.path}: "
                f"expected {_describe(self.schema)}, got {_describe(batch.schema)}"
            )
        # Same names and types; nullability or metadata differ (Spark's Arrow batches do).
        return pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
