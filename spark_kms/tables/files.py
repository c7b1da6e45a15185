"""One new data file of a table, encrypted: :class:`TableFileWriter` (used by encrypt_into_table and re-encrypt).

Per file: one :class:`~spark_kms.parquet.BatchEncryptor` (one data key, made on the first non-empty batch), the
``_spark_kms_keys`` column appended to every batch (the key table as of that batch), the key table in the Parquet
footer at close, Iceberg field ids on the columns when the table has them, and the Delta ``stats`` of the file
(row count, null counts, min/max of plain integer, string and date columns). Partition directories follow Hive's
escaping (``day=2024-01-01``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spark_kms.crypto import KEY_TABLE_METADATA_KEY, DekEntry, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.storage import Location
from spark_kms.tables.keys import KEYS_COLUMN
from spark_kms.tables.snapshot import FIELD_ID_KEY, NewFile

__all__ = ["TableFileWriter", "partition_dir"]

logger = logging.getLogger(__name__)

_HIVE_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^')


def _escape(value: str | None) -> str:
    if value is None:
        return "__HIVE_DEFAULT_PARTITION__"
    return "".join(f"%{ord(c):02X}" if c in _HIVE_ESCAPE or ord(c) < 32 else c for c in value)


def partition_dir(values: Mapping[str, str | None]) -> str:
    """``a=1/b=x`` (Hive escaping) for partition values as text."""
    return "/".join(f"{_escape(k)}={_escape(v)}" for k, v in values.items())


def _repeat(text: str, n: int) -> pa.Array:
    indices = pa.array([0] * n, pa.int32())
    return pa.DictionaryArray.from_arrays(indices, pa.array([text], pa.string())).dictionary_decode()


def _stat_value(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class TableFileWriter:
    """Streams encrypted batches into one new data file of a table.

    :param location: the file to write.
    :param spec: what to encrypt (the plaintext batches hold every column but Delta partition columns).
    :param key_uri: the key of the file's new data key (one GenerateDataKey, on the first non-empty batch).
    :param tenant_keys: per-tenant keys (:class:`~spark_kms.parquet.tenants.TenantKeys`): a data key per tenant
        of the file, under the tenant's own KMS key.
    :param subject_store: the subject key store of ``spec.subject_column`` (per-subject cells).
    :param lanes: a re-encrypt of per-tenant data (:class:`~spark_kms.jobs._tenant_lanes.TenantLanes`): batches
        come with their rows' tenants (``write(batch, tenants)``), each tenant keeps its key.
    """

    def __init__(
        self,
        location: Location,
        relpath: str,
        spec: EncryptionSpec,
        key_uri: str,
        *,
        kms: KmsConfig,
        encryption_context: Mapping[str, str],
        deterministic_entry: DekEntry | None,
        field_ids: Mapping[str, int] | None = None,
        partition_values: Mapping[str, str | None] | None = None,
        metadata: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
        tenant_keys: Any = None,
        subject_store: Any = None,
        lanes: Any = None,
    ) -> None:
        self.location = location
        self.relpath = relpath
        self.partition_values = dict(partition_values or {})
        self._lanes = lanes
        if lanes is not None:
            tenant_keys = lanes.tenant_keys
        self._encryptor = BatchEncryptor(spec, key_uri, kms_options=kms, encryption_context=encryption_context,
                                         deterministic_entry=deterministic_entry, tenant_keys=tenant_keys,
                                         subject_store=subject_store)
        self._field_ids = dict(field_ids or {})
        self._required = set(required)
        self._metadata = dict(metadata or {})
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._schema: pa.Schema | None = None
        self.rows = 0
        self._nulls: dict[str, int] = {}
        self._min: dict[str, Any] = {}
        self._max: dict[str, Any] = {}
        self._plain: list[str] = []

    @property
    def kms_calls(self) -> int:
        return self._encryptor.kms_calls

    @property
    def erased_on_write(self) -> int:
        """Values of erased subjects the encryptor wrote as null."""
        return int(self._encryptor.erased_on_write)

    def stored_schema(self, plain: pa.Schema) -> pa.Schema:
        """The schema of the stored file for plaintext batches of schema ``plain``."""
        if self._lanes is not None:
            from spark_kms.jobs._tenant_lanes import lane_schema, without_lane

            out = without_lane(self._encryptor.output_schema(lane_schema(plain)))
        else:
            out = self._encryptor.output_schema(plain)
        # Nullable, except the columns the table requires (an Iceberg table created from Spark's schema
        # requires _spark_kms_keys): the table checks the files it is given against its schema.
        fields = [f.with_nullable(f.name not in self._required) for f in out]
        fields.append(pa.field(KEYS_COLUMN, pa.string(), nullable=KEYS_COLUMN not in self._required))
        if self._field_ids:
            missing = [f.name for f in fields if f.name not in self._field_ids]
            if missing:
                raise ConfigurationError(f"columns {missing} are not in the Iceberg table's schema")
            fields = [f.with_metadata({FIELD_ID_KEY: str(self._field_ids[f.name]).encode()}) for f in fields]
        return pa.schema(fields)

    def write(self, batch: pa.RecordBatch, tenants: pa.Array | None = None) -> None:
        """Encrypt and append ``batch``; ``tenants``: its rows' tenants (a writer with ``lanes`` only)."""
        if batch.num_rows == 0:
            return
        if self._schema is None:
            self._schema = self.stored_schema(batch.schema)
        if self._lanes is not None:
            from spark_kms.jobs._tenant_lanes import encrypt_in_lanes

            if tenants is None:
                raise ConfigurationError(f"{self.relpath}: a per-tenant re-encrypt writes batches with their tenants")
            plain_out = pa.schema([f for f in self._schema if f.name != KEYS_COLUMN])
            encrypted = encrypt_in_lanes(self._encryptor.encrypt_batch, batch, tenants,
                                         self._encryptor.spec.randomized,
                                         pa.schema([f.remove_metadata() for f in plain_out]))
        else:
            encrypted = self._encryptor.encrypt_batch(batch)
        keys = self._encryptor.key_table().to_json().decode("utf-8")
        if self._sink is None:
            encrypted_names = set(self._encryptor.spec.columns) | set(self._encryptor.spec.deterministic) | set(
                self._encryptor.spec.blind_index.values())
            self._plain = [f.name for f in self._schema if f.name not in encrypted_names and f.name != KEYS_COLUMN
                           and (pa.types.is_integer(f.type) or pa.types.is_string(f.type)
                                or pa.types.is_large_string(f.type) or pa.types.is_date32(f.type))]
            self._sink = self.location.open_output_stream()
            self._writer = pq.ParquetWriter(self._sink, self._schema, compression="snappy")
        out = pa.RecordBatch.from_arrays([*encrypted.columns, _repeat(keys, encrypted.num_rows)], schema=self._schema)
        self._writer.write_batch(out)  # type: ignore[union-attr]
        self.rows += out.num_rows
        for name in out.schema.names:
            self._nulls[name] = self._nulls.get(name, 0) + out.column(name).null_count
        for name in self._plain:
            mm = pc.min_max(out.column(name))
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is not None:
                self._min[name] = lo if name not in self._min else min(self._min[name], lo)
                self._max[name] = hi if name not in self._max else max(self._max[name], hi)

    def key_table(self) -> KeyTable:
        return self._encryptor.key_table()

    def close(self) -> NewFile | None:
        """Write the footer key table and close; the file committed later. None if no row came."""
        try:
            if self._writer is None:
                return None
            footer = {KEY_TABLE_METADATA_KEY: self._encryptor.key_table().to_json().decode("utf-8")}
            footer.update(self._metadata)
            self._writer.add_key_value_metadata(footer)
            self._writer.close()
            self._sink.close()
        finally:
            self._encryptor.close()
        stats = {"numRecords": self.rows, "nullCount": self._nulls,
                 "minValues": {k: _stat_value(v) for k, v in self._min.items()},
                 "maxValues": {k: _stat_value(v) for k, v in self._max.items()}}
        return NewFile(location=self.location, relpath=self.relpath, size=self.location.size(), rows=self.rows,
                       partition_values=self.partition_values, stats=json.dumps(stats, sort_keys=True))

    def abort(self) -> None:
        try:
            if self._writer is not None:
                try:
                    self._writer.close()
                    self._sink.close()
                except Exception:  # noqa: BLE001 - the file is removed anyway
                    logger.debug("closing the aborted file %s failed", self.location.uri)
                self.location.delete_file()
        finally:
            self._encryptor.close()
