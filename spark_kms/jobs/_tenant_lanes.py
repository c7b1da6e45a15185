"""Re-encrypting per-tenant data: each cell gets a new data key under the KMS key and tenant of its old one; the
erased cells a re-encrypt drops, counted.

A file written with ``tenant_keys`` (docs/ERASURE.md) holds data keys under several KMS keys, one per tenant,
each with ``{"spark_kms.tenant": <tenant>}`` in its encryption context. Re-encrypting such a file must keep that
split -- a tenant's cells must never land under another tenant's key, or erasing the tenant would miss them.
The tenant column is not recorded in the key table, so the re-encrypt does not guess it: each row's tenant is
read from its *old cells* (the data key id in the cell header -> that key's entry -> its tenant), carried next
to the row in a hidden column :data:`LANE_COLUMN` that drives the encryptor's tenant lanes
(:class:`~spark_kms.parquet.tenants.TenantKeys` ``{tenant: the tenant's key URI}``, rebuilt from the old key
table), and dropped before the row is stored.

Rows with nothing left to encrypt -- every randomised cell null, e.g. because their tenant's key is erased, so
the decryptor returned them as null -- bypass the encryptor: they need no data key (and an erased tenant's key
could not make one). Their encrypted columns are stored as null.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import AES_256_SIV, DekEntry, KeyTable
from spark_kms.errors import ConfigurationError, FormatError, KeyErasedError
from spark_kms.jobs._journal import pending_runs, requester, target_options
from spark_kms.jobs._summary import utc_now
from spark_kms.kms import KeyDescription, KmsConfig
from spark_kms.parquet.dataset import Dataset
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.tenants import TENANT_CONTEXT_KEY, TenantKeys, tenant_of_context
from spark_kms.parquet.writer import EncryptedParquetWriter
from spark_kms.storage import Location

__all__ = [
    "LANE_COLUMN", "TenantLanes", "TenantParquetWriter", "count_erased", "current_versions", "encrypt_in_lanes",
    "erased_summary", "lane_context", "pending_tenant_run", "plan_tenants", "shared_store", "tenant_key_uris",
]

logger = logging.getLogger(__name__)

#: the hidden column carrying each row's tenant into the encryptor (never stored)
LANE_COLUMN = "__spark_kms_reencrypt_tenant"
_HEADER_DEK = (1, 9)  # bytes 1..8 of a cell: its data key id (GCM and per-subject cells alike)


def tenant_key_uris(entries: Iterable[DekEntry], where: str) -> dict[str, str] | None:
    """``{tenant: key URI}`` of the randomised data keys ``entries`` when they are per-tenant; None when none
    is (an ordinary dataset).

    :raises ConfigurationError: some data keys name a tenant and others do not, or one tenant's data keys are
        under several KMS keys (the re-encrypt would have to choose one).
    """
    keys: dict[str, set[str]] = {}
    untagged = 0
    for entry in entries:
        if entry.algorithm == AES_256_SIV:
            continue
        tenant = tenant_of_context(entry.encryption_context)
        if tenant is None:
            untagged += 1
        else:
            keys.setdefault(tenant, set()).add(entry.key_uri)
    if not keys:
        return None
    if untagged:
        raise ConfigurationError(
            f"reencrypt: {where} mixes data keys of tenants ({len(keys)} tenants) with {untagged} data keys of no "
            "tenant; re-encrypt the per-tenant files and the others separately"
        )
    several = {t: sorted(u) for t, u in keys.items() if len(u) > 1}
    if several:
        raise ConfigurationError(
            f"reencrypt: in {where} the data keys of {len(several)} tenants are under several KMS keys "
            f"(e.g. {sorted(next(iter(several.values())))}); a re-encrypt keeps each tenant's key and cannot choose"
        )
    return {t: next(iter(u)) for t, u in sorted(keys.items())}


class TenantLanes:
    """The tenants of the rows of one file, from the data keys its old cells name.

    :param table: the file's effective key table (its data keys, manifest applied).
    :param key_uris: ``{tenant: key URI}`` of the new data keys (:func:`tenant_key_uris`).
    """

    def __init__(self, table: KeyTable, key_uris: Mapping[str, str]) -> None:
        self.key_uris = dict(key_uris)
        self.tenant_keys = TenantKeys(LANE_COLUMN, self.key_uris)
        by_dek = {bytes.fromhex(d): tenant_of_context(e.encryption_context) for d, e in table.deks.items()
                  if e.algorithm != AES_256_SIV}
        self._ids = pa.array(list(by_dek), pa.binary())
        self._tenants = pa.array(list(by_dek.values()), pa.string())

    def tenants(self, stored: pa.RecordBatch, columns: Sequence[str]) -> pa.Array:
        """Each row's tenant (null where the row has no cell in ``columns``, the randomised columns), from the
        stored (encrypted) batch."""
        per_column = []
        for name in columns:
            if name not in stored.schema.names:
                continue
            cells = stored.column(name)
            ids = pc.binary_slice(cells, *_HEADER_DEK)
            per_column.append(pc.take(self._tenants, pc.index_in(ids, value_set=self._ids)))
        if not per_column:
            return pa.nulls(stored.num_rows, pa.string())
        tenants = pc.coalesce(*per_column) if len(per_column) > 1 else per_column[0]
        for column in per_column[1:]:
            # Every cell of a row is under the row's tenant's data key (one lane per row when written).
            differ = pc.and_kleene(pc.is_valid(column), pc.not_equal(column, tenants))
            if pc.any(differ).as_py():
                raise FormatError("reencrypt: a row holds cells under data keys of different tenants; "
                                  "the file was not written with tenant_keys by spark_kms")
        named_cells = sum(len(stored.column(n)) - stored.column(n).null_count for n in columns
                          if n in stored.schema.names)
        if named_cells and tenants.null_count == stored.num_rows:
            raise FormatError("reencrypt: the cells name data keys the file's key table does not have")
        return tenants


def encrypt_in_lanes(
    encrypt: Callable[[pa.RecordBatch], pa.RecordBatch],
    plain: pa.RecordBatch,
    tenants: pa.Array,
    randomized: Sequence[str],
    output_schema: pa.Schema,
) -> pa.RecordBatch:
    """``plain`` encrypted by ``encrypt`` (an encryptor's ``encrypt_batch`` whose tenant column is
    :data:`LANE_COLUMN`) with each row's tenant ``tenants``; rows whose randomised values are all null
    bypass it (stored with null cells). Returns the rows in their order, without :data:`LANE_COLUMN`,
    as ``output_schema`` (the stored schema without the lane column)."""
    n = plain.num_rows
    has_value = None
    for name in randomized:
        valid = pc.is_valid(plain.column(name))
        has_value = valid if has_value is None else pc.or_(has_value, valid)
    live = has_value if has_value is not None else pa.array([False] * n)
    if pc.any(pc.and_(live, pc.is_null(tenants))).as_py():
        raise FormatError("reencrypt: a row has values but no cell naming a tenant's data key")
    live_rows = pc.indices_nonzero(live)
    if len(live_rows) == n:
        return _drop_lane(encrypt(_with_lane(plain, tenants)), output_schema)
    dead_rows = pc.indices_nonzero(pc.invert(live))
    pieces = []
    if len(live_rows):
        pieces.append(_drop_lane(encrypt(_with_lane(plain.take(live_rows), tenants.take(live_rows))), output_schema))
    dead = plain.take(dead_rows)
    encrypted = set(randomized)
    pieces.append(pa.RecordBatch.from_arrays(
        [pa.nulls(len(dead_rows), f.type) if f.name in encrypted else dead.column(f.name).cast(f.type)
         for f in output_schema], schema=output_schema))
    if len(pieces) == 1:
        return pieces[0]
    order = pa.concat_arrays([live_rows, dead_rows])
    table = pa.Table.from_batches(pieces).take(pc.sort_indices(order))
    return table.combine_chunks().to_batches()[0]


def _with_lane(plain: pa.RecordBatch, tenants: pa.Array) -> pa.RecordBatch:
    if LANE_COLUMN in plain.schema.names:
        raise ConfigurationError(f"reencrypt: the data has a column named {LANE_COLUMN!r}, which spark_kms reserves")
    return pa.RecordBatch.from_arrays([*plain.columns, tenants.cast(pa.string())],
                                      names=[*plain.schema.names, LANE_COLUMN])


def _drop_lane(batch: pa.RecordBatch, output_schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([batch.column(f.name) for f in output_schema], schema=output_schema)


def lane_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the hidden lane column."""
    return schema.append(pa.field(LANE_COLUMN, pa.string()))


def without_lane(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != LANE_COLUMN], metadata=schema.metadata)


class TenantParquetWriter(EncryptedParquetWriter):
    """An :class:`~spark_kms.parquet.EncryptedParquetWriter` for a re-encrypt of per-tenant data: batches come with
    their rows' tenants (:meth:`write_lanes`), each tenant's cells get data keys under its own key URI with its
    tenant in the context, and the hidden lane column is never stored."""

    def __init__(self, path: str | Path | Any, schema: pa.Schema, spec: Any, *, lanes: TenantLanes,
                 **kwargs: Any) -> None:
        super().__init__(path, lane_schema(schema), spec, None, tenant_keys=lanes.tenant_keys, **kwargs)
        self.schema = schema
        self.output_schema = without_lane(self.output_schema)
        self._randomized = tuple(spec.randomized)

    def write_lanes(self, plain: pa.RecordBatch, tenants: pa.Array) -> None:
        """Encrypt ``plain`` (rows of the tenants ``tenants``) and append it."""
        if self._closed:
            raise ConfigurationError(f"the writer of {self.path} is closed")
        if plain.num_rows == 0:
            return
        plain = self._conform(plain)
        encrypted = encrypt_in_lanes(self._encryptor.encrypt_batch, plain, tenants, self._randomized,
                                     self.output_schema)
        self._open().write_batch(encrypted)
        self.rows += plain.num_rows

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        raise ConfigurationError("a per-tenant re-encrypt writer takes batches with their tenants (write_lanes)")

    write_table = write_batch

    @property
    def erased_on_write(self) -> int:
        """Cells of erased subjects the encryptor wrote as null."""
        return int(self._encryptor.erased_on_write)


def lane_context(context: Mapping[str, str]) -> dict[str, str]:
    """An old data key's context as the base of the new ones: its tenant entry goes (each lane adds its own)."""
    return {k: v for k, v in context.items() if k != TENANT_CONTEXT_KEY}


def current_versions(kms: KmsConfig, key_uris: Sequence[str]) -> dict[str, KeyDescription | None]:
    """One DescribeKey per key URI; None for a key the KMS refuses to describe because it is erased."""
    out: dict[str, KeyDescription | None] = {}
    for uri in key_uris:
        try:
            out[uri] = kms.describe(uri)
        except KeyErasedError:
            out[uri] = None
    return out


def erased_summary(erased: Mapping[str, int]) -> dict[str, Any]:
    """The run summary's account of the erased cells a re-encrypt wrote as null."""
    return {"erased_cells": dict(sorted(erased.items())), "erased_cells_dropped": sum(erased.values())}


def count_erased(erased: dict[str, int], decryptor: BatchDecryptor, written_null: int = 0,
                 subject_columns: Sequence[str] = ()) -> None:
    """Add a file's erased cells (read as null by ``decryptor``; ``written_null``: values of subjects erased
    between the read and the write, written as null by the encryptor) to ``erased``."""
    for column, count in decryptor.erased.items():
        erased[column] = erased.get(column, 0) + count
    if written_null:  # the encryptor counts them per file, not per column
        key = ",".join(subject_columns)
        erased[key] = erased.get(key, 0) + written_null


def pending_tenant_run(dataset: Location, force: bool, kms: KmsConfig) -> str | None:
    """The run id of the pending per-tenant run a request without ``run_id`` and ``key_uri`` continues (same
    ``force``, same location options), if any: such a run has no single target key to match requests by."""
    for journal in reversed(pending_runs(dataset)):
        if (journal.get("tenant_keys") and bool(journal.get("force")) == bool(force)
                and journal.get("target_options") == target_options(kms, journal["target_key_uri"])):
            return str(journal["run_id"])
    return None


def plan_tenants(keys: Dataset, kms: KmsConfig, run_id: str, key_uri: str | None, force: bool,
                  tenants: dict[str, str]) -> dict[str, Any]:
    """The plan of a dataset written with per-tenant keys: every tenant keeps its own key (module docstring)."""
    where = keys.location.uri if keys.location else str(keys.root)
    if key_uri:
        raise ConfigurationError(
            f"reencrypt: the data keys of {where!r} are per tenant ({len(tenants)} tenants, each under its own KMS "
            "key): a re-encrypt keeps each tenant's key, so key_uri= (--key-uri) does not apply; run it without")
    described = current_versions(kms, sorted(set(tenants.values())))

    def behind(f: str) -> bool:
        return force or any(not _current(e, described.get(e.key_uri)) for e in keys.footers[f].deks.values())

    first = sorted(u for u, d in described.items() if d is not None and not d.erased) or sorted(tenants.values())
    return {
        "job": "reencrypt", "run_id": run_id, "status": "running", "started_at": utc_now().isoformat(),
        "target_key_uri": first[0], "target_key_id": None, "target_key_version": None,
        "tenant_keys": tenants,
        "erased_tenant_keys": sorted(u for u, d in described.items() if d is None or d.erased),
        "target_options": target_options(kms, first[0]), "force": bool(force),
        "requested_by": requester(kms, first[0]), "deterministic_entry": None, "rotate_join_domain": False,
        "files": {keys.relpath(f): "pending" for f in keys.files if behind(f)},
    }


def _current(entry: DekEntry, description: KeyDescription | None) -> bool:
    """Whether ``entry`` is wrapped by its key's primary version (never, when the key is erased: its cells are
    then dropped by a re-encrypt)."""
    return (description is not None and not description.erased and entry.key_id == description.key_id
            and entry.key_version == description.primary_version)


def shared_store(subject_store: Any, tables: Iterable[KeyTable], kms: KmsConfig) -> Any:
    """The subject key store of a job's files, opened once for all of them (its KEK unwrapped once) when some
    column is per-subject; else ``subject_store`` as given."""
    if isinstance(subject_store, (str, type(None))) and any(
            spec.subject is not None for table in tables for spec in table.columns.values()):
        from spark_kms.subjects import store_of  # the store builds on the file layer: imported on use

        return store_of(subject_store, kms_options=kms)
    return subject_store
