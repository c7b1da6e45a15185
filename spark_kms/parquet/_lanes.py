"""Per-tenant and per-subject keys inside :class:`~spark_kms.parquet.BatchEncryptor` (crypto-shredding).

A *lane* is where one stream of cells gets its data keys: a KMS key, an encryption context and the current
data key. An encryptor has one lane, or one per tenant it meets (``tenant_keys``): the rows of a batch are
grouped by tenant, each group is encrypted in its tenant's lane, and the cells are put back in the rows'
order. Per-subject columns (``EncryptionSpec.subject_column``) take the per-cell path of
:class:`~spark_kms.crypto.SubjectCellEncryptor`, with the batch's subject keys looked up in one call to the
subject key store. docs/FORMAT.md section 15.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import (
    AES_256_GCM_SUBJECT,
    CellEncryptor,
    SubjectCellEncryptor,
    native_available,
    row_context,
)
from spark_kms.kms import KmsProvider
from spark_kms.kms.base import canonical_context
from spark_kms.parquet._types import encode_binary, encode_values
from spark_kms.parquet.tenants import TENANT_CONTEXT_KEY

if TYPE_CHECKING:
    from spark_kms.parquet.encryptor import _Plan

__all__: list[str] = []

logger = logging.getLogger("spark_kms.parquet.encryptor")


def _rows_of(values: list[bytes | None] | None, rows: list[int], whole: bool) -> list[bytes | None] | None:
    """``values`` of the rows ``rows`` (all of them when ``whole``)."""
    return values if whole or values is None else [values[r] for r in rows]


@dataclass
class _Lane:
    """Where one stream of cells gets its data keys: the KMS key, the encryption context, the current key."""

    provider: KmsProvider
    context: dict[str, str]
    cell: CellEncryptor | None = None
    subject: SubjectCellEncryptor | None = None


class _LanesMixin:
    """The lane machinery of BatchEncryptor (its attributes: ``tenant_keys``, ``encryption_context``,
    ``_lane``, ``_default_lane``, ``_lanes``, ``_subjects``, ``erased_on_write``, ``rows``)."""

    tenant_keys: Any
    encryption_context: dict[str, str]
    _lane: _Lane
    _default_lane: _Lane
    _lanes: dict[str, _Lane]
    _subjects: Any
    erased_on_write: int
    rows: int

    def _tenant_provider(self, key_uri: str) -> KmsProvider:  # pragma: no cover - BatchEncryptor's
        raise NotImplementedError

    def _encrypt_gcm(self, *args: Any, **kwargs: Any) -> list[bytes | None]:  # pragma: no cover
        raise NotImplementedError

    def _encrypt_gcm_array(self, plain: pa.Array, column: str, context: bytes) -> pa.Array:  # pragma: no cover
        raise NotImplementedError

    def _encrypt_batch_lanes(self, batch: pa.RecordBatch, plan: _Plan) -> pa.RecordBatch:
        """:meth:`encrypt_batch` with per-tenant keys and / or per-subject cells: the rows of each tenant go
        through that tenant's lane (its KMS key, its data keys); cells come back in the rows' order."""
        n = batch.num_rows
        groups: list[tuple[str | None, pa.Array | None]] = [(None, None)]
        if self.tenant_keys is not None:
            groups = self.tenant_keys.groups(batch.column(self.tenant_keys.column))  # type: ignore[assignment]
        bound = None if plan.row_binding is None else encode_values(batch.column(plan.row_binding))
        sids: list[bytes | None] | None = None
        keys: dict[bytes, bytes | None] = {}
        if plan.subject is not None:
            sids = encode_values(batch.column(plan.subject))
            wanted = sorted({s.decode("utf-8") for s in sids if s is not None})
            keys = {k.encode("utf-8"): v for k, v in self._subjects.keys_for(wanted, create=True).items()}
        whole = len(groups) == 1
        rows_of = {tenant: None if whole or (bound is None and sids is None) else idx.to_pylist()  # type: ignore[union-attr]
                   for tenant, idx in groups}
        inverse = None if whole else pc.sort_indices(pa.concat_arrays([idx for _, idx in groups]))  # type: ignore[misc]
        out: list[pa.Array] = []
        for i, action in enumerate(plan.actions):
            column = batch.column(i)
            if action is None:
                out.append(column)
                continue
            name = plan.input_schema.names[i]
            pieces = []
            for tenant, idx in groups:
                part = column if whole else column.take(idx)
                rows = rows_of[tenant]
                pieces.append(self._encrypt_in_lane(
                    self._lane_for(tenant), part, name, plan.contexts[name], action,
                    _rows_of(bound, rows or [], whole), _rows_of(sids, rows or [], whole), keys,
                ))
            out.append(pieces[0] if inverse is None else pa.concat_arrays(pieces).take(inverse))
        self.rows += n
        return pa.RecordBatch.from_arrays(out, schema=plan.output_schema)

    def _lane_for(self, tenant: str | None) -> _Lane:
        if tenant is None:
            return self._default_lane
        lane = self._lanes.get(tenant)
        if lane is None:
            uri = self.tenant_keys.key_uri(tenant)  # type: ignore[union-attr]
            provider = self._tenant_provider(uri)
            context = canonical_context({**self.encryption_context, TENANT_CONTEXT_KEY: tenant})
            lane = self._lanes[tenant] = _Lane(provider, context)
            logger.debug("tenant lane: data keys under %s", uri)
        return lane

    def _encrypt_in_lane(
        self,
        lane: _Lane,
        column: pa.Array,
        name: str,
        context: bytes,
        action: str,
        bound: list[bytes | None] | None,
        sids: list[bytes | None] | None,
        keys: Mapping[bytes, bytes | None],
    ) -> pa.Array:
        if column.null_count == len(column):
            return pa.nulls(len(column), pa.binary())  # nothing to encrypt: no data key is asked for
        self._lane = lane
        try:
            if action == AES_256_GCM_SUBJECT:
                values = encode_values(column)
                erased = [row for row, (v, s) in enumerate(zip(values, sids, strict=True))  # type: ignore[arg-type]
                          if v is not None and s is not None and keys.get(s, b"") is None]
                for row in erased:
                    values[row] = None
                if erased:
                    self.erased_on_write += len(erased)
                    logger.warning("column %r: %d values of erased subjects were written as null", name, len(erased))
                non_null = sum(v is not None for v in values)
                if non_null == 0:
                    return pa.nulls(len(values), pa.binary())
                cells = self._encrypt_gcm(values, non_null, name, context, subjects=(sids, keys))  # type: ignore[arg-type]
            elif bound is not None:
                values = encode_values(column)
                rows = [row_context(context, v) for v in bound]
                cells = self._encrypt_gcm(values, len(column) - column.null_count, name, context, rows)
            elif native_available():
                return self._encrypt_gcm_array(encode_binary(column), name, context)
            else:
                cells = self._encrypt_gcm(encode_values(column), len(column) - column.null_count, name, context)
            return pa.array(cells, pa.binary())
        finally:
            self._lane = self._default_lane

    def _subject_cells(self, enc: CellEncryptor) -> SubjectCellEncryptor:
        lane = self._lane
        if lane.subject is None or lane.subject._cells is not enc:
            lane.subject = SubjectCellEncryptor(enc)
        return lane.subject
