"""Encrypting Arrow record batches: what to encrypt (:class:`EncryptionSpec`) and how
(:class:`BatchEncryptor`, one per Spark task / output file).

Output layout of an encrypted batch: every column keeps its name and position;
encrypted columns become ``binary`` (cells as in docs/FORMAT.md, nulls stay null);
each blind-index column is appended at the end, in the order of the spec, as
``binary`` holding HMAC blind-index cells of its source column.

Keys:

* Randomised columns (AES-256-GCM) share one data key per encryptor, asked from the
  KMS (GenerateDataKey) on the first non-empty batch; after ``max_cells_per_dek``
  non-null cells the encryptor rolls to a new data key. Empty input makes no KMS call.
* Deterministic (AES-SIV) and blind-index columns use one dataset-level data key,
  ``deterministic_entry`` (made once per job on the driver by
  :func:`~spark_kms.parquet.new_deterministic_entry`) and unwrapped lazily through a
  :class:`~spark_kms.parquet.DekResolver`, at most once per process. If the spec has
  such columns and no entry is given, the encryptor generates one itself on the first
  non-empty batch -- one more GenerateDataKey, and equal values are then only equal
  within this encryptor's output, not across tasks: pass a shared entry for joins.

Every data key used, wrapped only, ends up in :meth:`BatchEncryptor.key_table`,
with a :class:`~spark_kms.crypto.ColumnSpec` for every encrypted or derived column.

Format version 2 (docs/FORMAT.md section 3): every GCM and SIV cell is encrypted with
the column's spec as AAD context (:func:`~spark_kms.crypto.column_binding`), so a reader
given another spec (another ``arrow_type``, row binding ...) fails instead of misreading.
With ``EncryptionSpec(row_binding="id")`` each GCM cell's context also holds that row's
``id`` (:func:`~spark_kms.crypto.row_context`): a cell moved to another row fails. Row-bound
columns take the per-cell path (the native loop takes one AAD per array).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_GCM_SUBJECT,
    AES_256_SIV,
    DEFAULT_MAX_CELLS_PER_DEK,
    FORMAT_VERSION,
    HMAC_SHA256_BIDX,
    MAX_CELLS_PER_DEK_LIMIT,
    BlindIndexer,
    CellEncryptor,
    ColumnSpec,
    DekEntry,
    DeterministicEncryptor,
    KeyTable,
    column_binding,
    dek_id_from_hex,
    native_available,
    new_dek_id,
    row_context,
)
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, KmsConfigLike, KmsProvider
from spark_kms.kms.base import canonical_context
from spark_kms.parquet._lanes import _Lane, _LanesMixin
from spark_kms.parquet._protection import check_protection_level, protection_levels_accepted
from spark_kms.parquet._types import (
    array_from_buffers,
    binary_buffers,
    check_supported,
    encode_binary,
    encode_values,
)
from spark_kms.parquet.keys import DekResolver, entry_for
from spark_kms.parquet.spec import EncryptionSpec
from spark_kms.parquet.tenants import TenantKeys

__all__ = ["BatchEncryptor", "EncryptionSpec", "check_protection_level", "protection_levels_accepted"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """How one input schema maps to the output schema."""

    input_schema: pa.Schema
    output_schema: pa.Schema
    # per input position: None (keep), AES_256_GCM or AES_256_SIV
    actions: tuple[str | None, ...]
    # (source position, source name, index column name)
    indexes: tuple[tuple[int, str, str], ...]
    # per encrypted column: its version-2 AAD context (column_binding of its spec)
    contexts: Mapping[str, bytes] = field(default_factory=dict)
    # position of the row-binding column, or None
    row_binding: int | None = None
    # position of the subject column (per-subject cells), or None
    subject: int | None = None


class BatchEncryptor(_LanesMixin):
    """Encrypts the columns of a spec in a stream of Arrow record batches.

    Not thread-safe: one per task or writer. Use as a context manager, or call
    :meth:`close` to wipe the data keys it holds.

    :param spec: what to encrypt.
    :param provider: the key data keys are generated under: a key URI (built through ``kms_options``)
        or a :class:`~spark_kms.kms.KmsProvider`.
    :param encryption_context: sent to the KMS with GenerateDataKey, stored with each key.
    :param max_cells_per_dek: non-null AES-GCM cells per data key before rolling over.
    :param deterministic_entry: the job's dataset-level key for deterministic and
        blind-index columns (from :func:`new_deterministic_entry`).
    :param kms_options: how to reach each KMS (:class:`~spark_kms.kms.KmsConfig` or what its ``of``
        takes); needed for a key URI, or to unwrap a ``deterministic_entry`` of another KMS.
    :param require_protection_level: refuse a key guarded by less (``"hsm"``, ``"software"``,
        ``"external"``, or several: see :func:`protection_levels_accepted`); checked here with one
        DescribeKey, before any data key is made.
    """

    def __init__(
        self,
        spec: EncryptionSpec,
        provider: KmsProvider | str | None,
        *,
        encryption_context: Mapping[str, str] | None = None,
        max_cells_per_dek: int = DEFAULT_MAX_CELLS_PER_DEK,
        deterministic_entry: DekEntry | None = None,
        kms_options: KmsConfigLike = None,
        require_protection_level: str | Sequence[str] | None = None,
        tenant_keys: TenantKeys | Any = None,
        subject_store: Any = None,
    ) -> None:
        if not isinstance(spec, EncryptionSpec):
            raise ConfigurationError(f"spec must be an EncryptionSpec, got {type(spec).__name__}")
        # Checked here, before any KMS call, against the same ceiling CellEncryptor enforces (FORMAT.md section 4).
        if (
            isinstance(max_cells_per_dek, bool)
            or not isinstance(max_cells_per_dek, int)
            or not 1 <= max_cells_per_dek <= MAX_CELLS_PER_DEK_LIMIT
        ):
            raise ConfigurationError(
                f"max_cells_per_dek must be an integer from 1 to 2**32 (default 2**28), got {max_cells_per_dek!r}"
            )
        if deterministic_entry is not None and deterministic_entry.algorithm != AES_256_SIV:
            raise ConfigurationError(
                f"deterministic_entry {deterministic_entry.dek_id} is for {deterministic_entry.algorithm}, "
                f"expected {AES_256_SIV}"
            )
        self.spec = spec
        self.tenant_keys = TenantKeys.of(tenant_keys)
        if self.tenant_keys is not None:
            if spec.needs_deterministic_key:
                raise ConfigurationError(
                    "deterministic and blind-index columns use the join domain's key, which erasing a tenant does "
                    "not reach: write them without tenant_keys (docs/ERASURE.md)"
                )
            if self.tenant_keys.column in set(spec.columns) | {spec.subject_column}:
                raise ConfigurationError(
                    f"tenant_column {self.tenant_keys.column!r} must be a plain column, not an encrypted one"
                )
        kms = KmsConfig.of(kms_options)
        if provider is None and self.tenant_keys is not None:
            # Every data key is a tenant's: the first tenant's key stands for the writer in reprs and logs.
            provider = kms.provider(self.tenant_keys.key_uri("default")) if isinstance(self.tenant_keys.keys, str) \
                or "*" in self.tenant_keys.keys else kms.provider(next(iter(self.tenant_keys.keys.values())))
        if isinstance(provider, str):
            provider = kms.provider(provider)
        elif isinstance(provider, KmsProvider):
            kms = KmsConfig.for_provider(provider, kms)
        else:
            raise ConfigurationError(f"provider must be a key URI or a KmsProvider, got {type(provider).__name__}")
        self.kms = kms
        self.provider = provider
        if protection_levels_accepted(require_protection_level) is not None:
            # kms serves this very provider for its key URI: one DescribeKey per config
            check_protection_level(provider, require_protection_level, description=kms.describe(provider.key_uri))
        self.encryption_context = canonical_context(encryption_context)
        self._required_level = require_protection_level
        self._default_lane = self._lane = _Lane(provider, self.encryption_context)
        self._lanes: dict[str, _Lane] = {}
        self._subjects: Any = None
        if spec.subject_column is not None:
            from spark_kms.subjects import store_of  # the store builds on this layer: imported on use

            self._subjects = store_of(subject_store, kms_options=kms)
        #: cells not written because their subject's key was erased before the write (written as null)
        self.erased_on_write = 0
        self.max_cells_per_dek = max_cells_per_dek
        self._det_entry = deterministic_entry
        self._resolver = DekResolver({}, kms_options=kms)
        if deterministic_entry is not None:
            self._resolver.add(deterministic_entry)
        self._entries: dict[str, DekEntry] = {}
        self._columns: dict[str, ColumnSpec] = {}
        self._plan: _Plan | None = None
        self._det: DeterministicEncryptor | None = None
        self._bidx: BlindIndexer | None = None
        self._generated = 0
        self._closed = False
        self.rows = 0

    def __repr__(self) -> str:
        return (
            f"BatchEncryptor({self.provider.key_uri!r}, columns={list(self.spec.columns)}, "
            f"deks={len(self._entries)}, kms_calls={self.kms_calls})"
        )

    def __enter__(self) -> BatchEncryptor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------
    @property
    def kms_calls(self) -> int:
        """KMS calls made by this encryptor: GenerateDataKey plus unwraps of the dataset key."""
        return self._generated + self._resolver.kms_calls

    @property
    def dek_entries(self) -> list[DekEntry]:
        """Every data key this encryptor used, in order of first use (wrapped only)."""
        entries = dict(self._entries)
        if self._det_entry is not None and self.spec.needs_deterministic_key:
            entries.setdefault(self._det_entry.dek_id, self._det_entry)
        return list(entries.values())

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The schema :meth:`encrypt_batch` produces for input ``schema``; validates the spec against it."""
        return self._plan_for(schema).output_schema

    def key_table(self) -> KeyTable:
        """The key table of everything encrypted so far: data keys (wrapped) and column specs."""
        return KeyTable(
            deks={e.dek_id: e for e in self.dek_entries}, columns=dict(self._columns), format_version=FORMAT_VERSION
        )

    def encrypt_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Encrypt one batch (see the module docstring for the output layout)."""
        if self._closed:
            raise ConfigurationError("this BatchEncryptor is closed")
        plan = self._plan_for(batch.schema)
        if batch.num_rows == 0:
            return pa.RecordBatch.from_arrays(
                [pa.array([], f.type) for f in plan.output_schema], schema=plan.output_schema
            )
        if self.tenant_keys is not None or plan.subject is not None:
            return self._encrypt_batch_lanes(batch, plan)
        encoded: dict[int, list[bytes | None]] = {}
        out: list[pa.Array] = []
        bound: list[bytes | None] | None = None
        if plan.row_binding is not None:
            bound = encoded[plan.row_binding] = encode_values(batch.column(plan.row_binding))
        for i, action in enumerate(plan.actions):
            column = batch.column(i)
            if action is None:
                out.append(column)
                continue
            name = plan.input_schema.names[i]
            context = plan.contexts[name]
            if action == AES_256_GCM and bound is not None:
                # One AAD per row: the per-cell path (the native loop takes one AAD per array).
                values = encoded[i] = encode_values(column)
                rows = [row_context(context, v) for v in bound]
                cells = self._encrypt_gcm(values, len(column) - column.null_count, name, context, rows)
            elif action == AES_256_GCM and native_available():
                # The hot path: whole Arrow buffers through the native extension, no Python object per cell.
                out.append(self._encrypt_gcm_array(encode_binary(column), name, context))
                continue
            else:
                values = encoded[i] = encode_values(column)
                if action == AES_256_GCM:
                    cells = self._encrypt_gcm(values, len(column) - column.null_count, name, context)
                else:
                    cells = self._deterministic()[0].encrypt_many(values, name, context)
            out.append(pa.array(cells, pa.binary()))
        for pos, source, _index_name in plan.indexes:
            values = encoded.get(pos)
            if values is None:
                values = encoded[pos] = encode_values(batch.column(pos))
            # Indexed under the source column's name, so look-ups need only the source name.
            out.append(pa.array(self._deterministic()[1].index_many(values, source), pa.binary()))
        self.rows += batch.num_rows
        return pa.RecordBatch.from_arrays(out, schema=plan.output_schema)

    def encrypt_table(self, table: pa.Table) -> pa.Table:
        """Encrypt a whole table, batch by batch."""
        schema = self.output_schema(table.schema)
        return pa.Table.from_batches([self.encrypt_batch(b) for b in table.to_batches()], schema=schema)

    def close(self) -> None:
        """Wipe the data keys held in memory. The key table stays readable."""
        lanes = [self._default_lane, *self._lanes.values()]
        for enc in (*(lane.cell for lane in lanes), *(lane.subject for lane in lanes), self._det, self._bidx):
            wipe = getattr(enc, "wipe", None)
            if wipe is not None:
                wipe()
        for lane in lanes:
            lane.cell = lane.subject = None
        self._det = self._bidx = None
        self._closed = True

    # -- internals ------------------------------------------------------------
    def _plan_for(self, schema: pa.Schema) -> _Plan:
        plan = self._plan
        if plan is not None and (plan.input_schema is schema or plan.input_schema.equals(schema)):
            return plan
        plan = self._plan = self._make_plan(schema)
        return plan

    def _make_plan(self, schema: pa.Schema) -> _Plan:
        spec = self.spec
        names = schema.names
        if len(set(names)) != len(names):
            raise ConfigurationError(f"the data has duplicate column names: {names}")
        wanted = list(spec.columns) + [c for c in spec.deterministic if c not in spec.columns]
        wanted += [c for c in spec.blind_index if c not in wanted]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ConfigurationError(f"columns {missing} to encrypt are not in the data; available columns: {names}")
        taken = [idx for idx in spec.blind_index.values() if idx in names]
        if taken:
            raise ConfigurationError(f"blind index columns {taken} already exist in the data; choose other names")
        det = set(spec.deterministic)
        gcm = set(spec.columns) - det
        bound_pos = None
        if spec.row_binding is not None:
            if spec.row_binding not in names:
                raise ConfigurationError(
                    f"row_binding column {spec.row_binding!r} is not in the data; available columns: {names}"
                )
            bound_pos = names.index(spec.row_binding)
            check_supported(spec.row_binding, schema.field(bound_pos).type)
        subject_pos = None
        if spec.subject_column is not None:
            if spec.subject_column not in names:
                raise ConfigurationError(
                    f"subject_column {spec.subject_column!r} is not in the data; available columns: {names}"
                )
            subject_pos = names.index(spec.subject_column)
            t = schema.field(subject_pos).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
                raise ConfigurationError(
                    f"subject_column {spec.subject_column!r} is {t}; subject ids are a string or integer column"
                )
        if self.tenant_keys is not None and self.tenant_keys.column not in names:
            raise ConfigurationError(
                f"tenant_column {self.tenant_keys.column!r} is not in the data; available columns: {names}"
            )
        actions: list[str | None] = []
        fields: list[pa.Field] = []
        contexts: dict[str, bytes] = {}
        for f in schema:
            if f.name in gcm or f.name in det:
                algorithm = AES_256_SIV if f.name in det else AES_256_GCM
                if algorithm == AES_256_GCM and subject_pos is not None:
                    algorithm = AES_256_GCM_SUBJECT
                plain_type = check_supported(f.name, f.type)
                column_spec = ColumnSpec(
                    name=f.name, algorithm=algorithm, arrow_type=str(plain_type), source=None,
                    row_binding=spec.row_binding if algorithm == AES_256_GCM else None,
                    subject=spec.subject_column if algorithm == AES_256_GCM_SUBJECT else None,
                    subject_store=self._subjects.store_id if algorithm == AES_256_GCM_SUBJECT else None,
                )
                self._note_column(column_spec)
                contexts[f.name] = column_binding(column_spec)
                actions.append(algorithm)
                fields.append(pa.field(f.name, pa.binary(), nullable=f.nullable, metadata=f.metadata))
            else:
                actions.append(None)
                fields.append(f)
        indexes: list[tuple[int, str, str]] = []
        for source, index_name in spec.blind_index.items():
            source_type = check_supported(source, schema.field(source).type)
            # arrow_type of an index is its source's type: a look-up value is encoded like the source's cells.
            self._note_column(
                ColumnSpec(name=index_name, algorithm=HMAC_SHA256_BIDX, arrow_type=str(source_type), source=source)
            )
            indexes.append((names.index(source), source, index_name))
            fields.append(pa.field(index_name, pa.binary(), nullable=True))
        metadata = {k: v for k, v in (schema.metadata or {}).items() if k != b"pandas"} or None
        return _Plan(schema, pa.schema(fields, metadata=metadata), tuple(actions), tuple(indexes), contexts, bound_pos,
                     subject_pos)

    def _note_column(self, column: ColumnSpec) -> None:
        known = self._columns.get(column.name)
        if known is not None and known != column:
            raise ConfigurationError(
                f"column {column.name!r} changed type within one encryptor ({known.arrow_type} -> {column.arrow_type})"
            )
        self._columns[column.name] = column

    def _roll(self) -> CellEncryptor:
        """A new per-partition data key (one GenerateDataKey)."""
        lane = self._lane
        if lane.cell is not None:
            lane.cell.wipe()
            lane.cell = None
        if lane.subject is not None:
            lane.subject.wipe()
            lane.subject = None
        self._generated += 1
        data_key = lane.provider.generate_data_key(lane.context)
        try:
            dek_id = new_dek_id()
            lane.cell = CellEncryptor(data_key.plaintext, dek_id, max_cells=self.max_cells_per_dek)
            entry = entry_for(data_key, dek_id, lane.provider, lane.context, AES_256_GCM)
        finally:
            data_key.wipe()
        self._entries[entry.dek_id] = entry
        logger.debug("new data key %s under %s (key version %s) for up to %d cells",
                     entry.dek_id, entry.key_uri, entry.key_version, self.max_cells_per_dek)
        return lane.cell

    def _encrypt_gcm(
        self,
        values: list[bytes | None],
        non_null: int,
        column: str,
        context: bytes,
        rows: list[bytes] | None = None,
        subjects: tuple[list[bytes | None], Mapping[bytes, bytes | None]] | None = None,
    ) -> list[bytes | None]:
        """GCM cells of ``values`` under ``context``, or under one context per row (``rows``: row binding), or
        per-subject cells (``subjects``: each row's subject id, and the subjects' keys)."""

        def seal(enc: CellEncryptor, start: int, end: int) -> list[bytes | None]:
            if subjects is not None:
                return self._subject_cells(enc).encrypt_rows(
                    values[start:end], column, context, subjects[0][start:end], subjects[1]  # type: ignore[arg-type]
                )
            if rows is None:
                return enc.encrypt_many(values[start:end] if (start, end) != (0, len(values)) else values,
                                        column, context)
            return enc.encrypt_rows(values[start:end], column, rows[start:end])

        enc = self._lane.cell
        if enc is None or enc.cells_left == 0:
            enc = self._roll()
        if non_null <= enc.cells_left:
            return seal(enc, 0, len(values))
        # Roll-over inside the batch: cut it where the current key's cells run out.
        out: list[bytes | None] = []
        start, n = 0, len(values)
        while start < n:
            enc = self._lane.cell
            if enc is None or enc.cells_left == 0:
                enc = self._roll()
            left, end = enc.cells_left, start
            while end < n:
                if values[end] is not None:
                    if left == 0:
                        break
                    left -= 1
                end += 1
            out.extend(seal(enc, start, end))
            start = end
        return out

    def _encrypt_gcm_array(self, plain: pa.Array, column: str, context: bytes) -> pa.Array:
        """:meth:`_encrypt_gcm` for a whole ``binary`` array through :meth:`CellEncryptor.encrypt_buffers`."""
        enc = self._lane.cell
        if enc is None or enc.cells_left == 0:
            enc = self._roll()
        if len(plain) - plain.null_count <= enc.cells_left:
            return array_from_buffers(enc.encrypt_buffers(binary_buffers(plain), column, context))
        # Roll-over inside the batch: cut it after the value that uses the current key's last cell.
        pieces: list[pa.Array] = []
        start, n = 0, len(plain)
        while start < n:
            enc = self._lane.cell
            if enc is None or enc.cells_left == 0:
                enc = self._roll()
            rest = plain.slice(start)
            end = n
            if len(rest) - rest.null_count > enc.cells_left:
                used = pc.cumulative_sum(pc.cast(rest.is_valid(), pa.int64()))
                end = start + pc.index(used, enc.cells_left).as_py() + 1
            piece = plain.slice(start, end - start)
            pieces.append(array_from_buffers(enc.encrypt_buffers(binary_buffers(piece), column, context)))
            start = end
        return pa.concat_arrays(pieces)

    def _tenant_provider(self, key_uri: str) -> KmsProvider:
        """The provider of a tenant's key, its protection level checked like the writer's own key."""
        provider = self.kms.provider(key_uri)
        if protection_levels_accepted(self._required_level) is not None:
            check_protection_level(provider, self._required_level, description=self.kms.describe(key_uri))
        return provider

    def _deterministic(self) -> tuple[DeterministicEncryptor, BlindIndexer]:
        """The SIV encryptor and blind indexer under the dataset-level key, built on first use."""
        if self._det is not None and self._bidx is not None:
            return self._det, self._bidx
        entry = self._det_entry
        if entry is None:
            # No job-level key was given: make one for this encryptor (see the module docstring).
            self._generated += 1
            data_key = self.provider.generate_data_key(self.encryption_context)
            try:
                dek_id = new_dek_id()
                self._det = DeterministicEncryptor(data_key.plaintext, dek_id)
                self._bidx = BlindIndexer(data_key.plaintext, dek_id)
                entry = entry_for(data_key, dek_id, self.provider, self.encryption_context, AES_256_SIV)
            finally:
                data_key.wipe()
            self._det_entry = entry
            self._resolver.add(entry)
            return self._det, self._bidx
        dek_id = dek_id_from_hex(entry.dek_id)
        key = self._resolver.lookup(dek_id, where=f"deterministic data key of {self.provider.key_uri}")
        self._det = DeterministicEncryptor(key, dek_id)
        self._bidx = BlindIndexer(key, dek_id)
        return self._det, self._bidx
