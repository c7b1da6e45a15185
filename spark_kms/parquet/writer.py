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

How the Parquet is encoded (:func:`parquet_write_options`, :class:`RowGroupBuffer`; shared with the Spark
data source's writer, docs/BENCHMARKS.md "Write path" has the measurements):

* randomised (AES-256-GCM) columns are written **without dictionary encoding and without
  min/max statistics**: every cell is unique, so a dictionary only costs time (with Spark's
  10,000-row Arrow batches the dictionary of a row group never overflowed, so every page was
  dictionary-encoded for nothing) and the statistics of random bytes prune nothing. Plain,
  deterministic and blind-index columns keep both (equal values give equal cells there).
  Compression stays Snappy on every column: the cell header (format byte, DEK id, nonce prefix)
  repeats in every cell and Snappy takes ~30 % off the encrypted columns.
* the Spark data source's writer gathers Spark's small Arrow batches into row groups of about
  :data:`ROW_GROUP_BYTES` (or :data:`ROW_GROUP_ROWS` rows) instead of one row group per batch; the
  memory this holds is bounded by those limits, whatever the size of the file.
  :class:`EncryptedParquetWriter` keeps one row group per batch written (the caller picks the
  batch size; its memory stays that of one batch).

Both are ordinary Parquet choices any reader reads (PLAIN encoding, optional statistics): the file
format (docs/FORMAT.md) does not change.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms.crypto import DEFAULT_MAX_CELLS_PER_DEK, KEY_TABLE_METADATA_KEY, DekEntry, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfigLike, KmsProvider
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.storage import resolve

__all__ = ["ROW_GROUP_BYTES", "ROW_GROUP_ROWS", "EncryptedParquetWriter", "RowGroupBuffer", "parquet_write_options"]

#: a row group is written once the batches gathered for it hold this many bytes (Arrow ``nbytes``)...
ROW_GROUP_BYTES = 64 << 20
#: ... or this many rows (pyarrow's own default maximum), whichever comes first
ROW_GROUP_ROWS = 1 << 20


def parquet_write_options(
    schema: pa.Schema, random_columns: Collection[str], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``pyarrow.parquet.ParquetWriter`` options for a file of ``schema`` whose ``random_columns`` hold
    AES-256-GCM cells: Snappy everywhere; no dictionary and no statistics on the random columns (see
    the module docstring). Options in ``base`` win over these."""
    random = set(random_columns)
    options: dict[str, Any] = {"compression": "snappy"}
    if random & set(schema.names):
        kept = [n for n in schema.names if n not in random]
        options["use_dictionary"] = kept or False
        options["write_statistics"] = kept or False
    options.update(base or {})
    return options


class RowGroupBuffer:
    """Gathers record batches into row groups of about ``max_bytes`` or ``max_rows``.

    :meth:`add` returns the batches of a full row group when one is ready (else ``None``);
    :meth:`drain` returns what is left. Write each returned list as one row group with
    :func:`write_row_group`.
    """

    def __init__(self, max_bytes: int = ROW_GROUP_BYTES, max_rows: int = ROW_GROUP_ROWS) -> None:
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._batches: list[pa.RecordBatch] = []
        self._bytes = 0
        self._rows = 0

    def add(self, batch: pa.RecordBatch) -> list[pa.RecordBatch] | None:
        self._batches.append(batch)
        self._bytes += batch.nbytes
        self._rows += batch.num_rows
        if self._bytes >= self.max_bytes or self._rows >= self.max_rows:
            return self.drain()
        return None

    def drain(self) -> list[pa.RecordBatch]:
        out, self._batches, self._bytes, self._rows = self._batches, [], 0, 0
        return out


def write_row_group(writer: pq.ParquetWriter, batches: Sequence[pa.RecordBatch]) -> None:
    """Write ``batches`` (one schema) as one row group (zero-copy: a chunked table)."""
    if batches:
        table = pa.Table.from_batches(batches)
        writer.write_table(table, row_group_size=max(1, table.num_rows))


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
    :param parquet_options: passed to ``pyarrow.parquet.ParquetWriter`` (``compression``, ...), over the
        defaults of :func:`parquet_write_options`.
    :param tenant_keys: per-tenant keys (:class:`~spark_kms.parquet.tenants.TenantKeys`): a data key per
        tenant, under the tenant's own KMS key (``provider`` may then be ``None``).
    :param subject_store: the subject key store for ``spec.subject_column`` (docs/ERASURE.md).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema,
        spec: EncryptionSpec,
        provider: KmsProvider | str | None,
        *,
        encryption_context: Mapping[str, str] | None = None,
        max_cells_per_dek: int = DEFAULT_MAX_CELLS_PER_DEK,
        deterministic_entry: DekEntry | None = None,
        kms_options: KmsConfigLike = None,
        require_protection_level: str | Sequence[str] | None = None,
        write_empty: bool = False,
        metadata: Mapping[str, str] | None = None,
        parquet_options: Mapping[str, Any] | None = None,
        tenant_keys: Any = None,
        subject_store: Any = None,
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
        self._parquet_options = dict(parquet_options or {})
        self._encryptor = BatchEncryptor(
            spec,
            provider,
            encryption_context=encryption_context,
            max_cells_per_dek=max_cells_per_dek,
            deterministic_entry=deterministic_entry,
            kms_options=kms_options,
            require_protection_level=require_protection_level,
            tenant_keys=tenant_keys,
            subject_store=subject_store,
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
            options = parquet_write_options(self.output_schema, self._encryptor.spec.randomized, self._parquet_options)
            self._writer = pq.ParquetWriter(self._sink, self.output_schema, **options)
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
