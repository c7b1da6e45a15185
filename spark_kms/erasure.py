"""Erasure as an operation (crypto-shredding, issue #17): erase a tenant or a data subject, get a receipt.

    from spark_kms.erasure import erase_tenant, erase_subject, erasure_log

    receipt = erase_tenant("acme", tenant_keys="aws-kms://alias/tenant-{tenant}", datasets=["s3://lake/orders"],
                           subject_store="sqlite:///var/lib/spark_kms/subjects.db", reason="contract ended")
    receipt.datasets            # {"s3://lake/orders": 12}: data keys of acme in each dataset given
    erase_subject("user-42", subject_store="sqlite:///var/lib/spark_kms/subjects.db", datasets=["s3://lake/orders"])
    erasure_log("sqlite:///var/lib/spark_kms/subjects.db")   # every erasure, refusals included

* **A tenant** is erased by scheduling its KMS key for deletion (:meth:`~spark_kms.kms.base.KmsProvider.
  schedule_key_deletion`, the KMS's own waiting period): every data key it wrapped -- in every file, backup and
  table snapshot -- stops unwrapping, and readers return those cells as null. It needs the KMS's key-deletion
  permission (local KMS: role ``erase`` or ``admin``; AWS: ``kms:ScheduleKeyDeletion``), not decrypt.
* **A subject** is erased in the subject key store (:meth:`~spark_kms.subjects.SubjectKeyStore.erase`: its key
  row deleted, a tombstone written), which needs the store's ``erase`` permission.

Both are idempotent (``already_erased=True`` the second time) and both are written to the subject key store's
audit log (table ``audit``, actions ``erase_tenant`` / ``erase_subject``), refusals too: that log is the erasure
log (:func:`erasure_log`). The datasets passed are only *inspected* (their key tables: footers and manifests,
or a Delta / Iceberg table's snapshot), to say in the receipt which of them held the erased data; no data file
is read or changed and no KMS call is made for them.

Nothing here logs key bytes; a subject id is personal data and stays out of log lines and reprs (the receipt
and the audit row hold it, for the controller's records).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from spark_kms.crypto import DekEntry, utc_now_iso
from spark_kms.crypto.keytable import ColumnSpec
from spark_kms.errors import AccessDeniedError, ConfigurationError, KeyNotFoundError, KmsError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.tenants import TenantKeys, tenant_of_context
from spark_kms.subjects import SubjectKeyStore, store_of

__all__ = ["ERASURE_ACTIONS", "ErasureReceipt", "erase_subject", "erase_tenant", "erasure_log"]

logger = logging.getLogger(__name__)

#: the audit-log action of each kind of erasure
ERASURE_ACTIONS = {"tenant": "erase_tenant", "subject": "erase_subject"}
_KINDS = tuple(ERASURE_ACTIONS)


@dataclass(frozen=True)
class ErasureReceipt:
    """What an erasure did, as recorded in the erasure log.

    :param kind: ``"tenant"`` or ``"subject"``.
    :param target: the tenant id or the subject id (kept out of ``repr``: a subject id is personal data).
    :param key_uri: tenant: the tenant's KMS key URI; subject: None.
    :param key_id: tenant: the KMS's canonical id of that key; subject: None.
    :param store_id: the subject key store whose audit log holds this receipt.
    :param principal: who erased (the store's principal; for a tenant also the local KMS principal).
    :param at: when (ISO 8601, UTC).
    :param deletion_date: tenant: when the KMS destroys the key for good (None when destroyed already or not
        said); subject: None (the key row is gone at once).
    :param already_erased: it was erased before this call (nothing changed).
    :param datasets: the datasets given that held erased data: path -> number of the tenant's data keys, or
        path -> the per-subject columns of this store.
    :param receipt_id: the id of the audit row.
    :param reason: the reason given.
    :param state: tenant: the key's state afterwards (``pending_deletion`` / ``destroyed``); subject: ``erased``.
    """

    kind: str
    target: str = field(repr=False)
    key_uri: str | None
    key_id: str | None
    store_id: str
    principal: str
    at: str
    deletion_date: str | None
    already_erased: bool
    datasets: Mapping[str, Any]
    receipt_id: int
    reason: str = ""
    state: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["datasets"] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.datasets.items()}
        return out


# -- the key tables of the datasets given ------------------------------------------------------------------


@dataclass
class _Keys:
    """One dataset's data keys (as readers see them) and column specs: no data read, no KMS call."""

    path: str
    deks: dict[str, DekEntry]
    columns: dict[str, ColumnSpec]


def _dataset_keys(path: Any, storage_options: Any) -> _Keys:
    from spark_kms.jobs._tables import table_format

    if table_format(path, storage_options):
        from spark_kms.tables.keys import load_table_keys
        from spark_kms.tables.snapshot import open_table

        keys = load_table_keys(open_table(path, storage_options=storage_options).snapshot(), missing_ok=True,
                               job="erase")
        columns: dict[str, ColumnSpec] = {}
        for table in keys.tables.values():
            for name, spec in table.columns.items():
                columns.setdefault(name, spec)
        return _Keys(str(path), keys.effective_deks(), columns)
    from spark_kms.parquet.dataset import Dataset

    dataset = Dataset.open(path, job="erase", missing_ok=True, require_files=False, storage_options=storage_options)
    return _Keys(str(path), dataset.effective_deks(), dataset.columns())


def _load(datasets: Iterable[Any], storage_options: Any) -> list[_Keys]:
    if isinstance(datasets, (str, bytes)):
        datasets = [datasets]
    return [_dataset_keys(d, storage_options) for d in dict.fromkeys(datasets)]


def _tenant_deks(keys: _Keys, tenant: str, key_uri: str, key_id: str | None) -> int:
    """The data keys of ``keys`` that are ``tenant``'s: made under its key (by URI or canonical id), or naming
    it in their encryption context."""
    return sum(1 for e in keys.deks.values()
               if e.key_uri == key_uri or (key_id and e.key_id == key_id)
               or tenant_of_context(e.encryption_context) == tenant)


# -- tenants --------------------------------------------------------------------------------------------------


def _kms_for(kms_options: KmsConfigLike, key_uri: str, principal: str | None) -> KmsConfig:
    kms = KmsConfig.of(kms_options)
    if principal and key_uri.startswith("local://"):
        kms = kms.with_options("local", principal=principal)
    return kms


def _principal(principal: str | None, kms_options: KmsConfigLike) -> str | None:
    """Who erases: ``principal``, else the local KMS principal of ``kms_options`` (the same identity), else None
    (the store then takes ``$SPARK_KMS_PRINCIPAL`` or the OS user)."""
    if principal:
        return principal
    local = KmsConfig.of(kms_options).options().get("local", {}).get("principal")
    return str(local) if local else None


def _earlier_erasure(store: SubjectKeyStore, key_uri: str) -> dict[str, Any] | None:
    """The detail of this store's last successful erasure of ``key_uri``, if any."""
    for row in reversed(store.audit_events(ERASURE_ACTIONS["tenant"])):
        if row["outcome"] == "ok" and row["detail"].get("key_uri") == key_uri:
            return dict(row["detail"])
    return None


def erase_tenant(
    tenant: str,
    *,
    tenant_keys: Any,
    kms_options: KmsConfigLike = None,
    datasets: Iterable[Any] = (),
    subject_store: SubjectKeyStore | str | None = None,
    pending_days: int = 7,
    principal: str | None = None,
    reason: str = "",
    storage_options: Mapping[str, str] | str | None = None,
) -> ErasureReceipt:
    """Erase ``tenant``: schedule its KMS key for deletion and record the receipt in the erasure log.

    :param tenant: the tenant id (as in the tenant column).
    :param tenant_keys: the writers' ``tenant_keys``: a key-URI template with ``{tenant}``, a mapping tenant ->
        key URI (``"*"``: a template for the others), their JSON, or a :class:`~spark_kms.parquet.tenants.
        TenantKeys`.
    :param kms_options: how to reach the KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per scheme).
    :param datasets: datasets (paths, storage URIs, Delta / Iceberg tables) to report on: the receipt says which
        of them hold data keys of the tenant, and how many.
    :param subject_store: the subject key store whose audit log receives the receipt (a URL, a path, a
        :class:`~spark_kms.subjects.SubjectKeyStore`; default ``$SPARK_KMS_SUBJECT_STORE``, else
        ``~/.spark_kms/subjects.db``, created if absent).
    :param pending_days: the KMS's waiting period before it destroys the key (where it has one; AWS and the
        local KMS take 7-30). Until then the deletion can be cancelled in the KMS; reads fail meanwhile.
    :param principal: who erases: the store's principal and, for a ``local://`` key, the local KMS principal.
    :param reason: recorded with the receipt.
    :param storage_options: options of the datasets' store (:data:`spark_kms.storage.OPTION_NAMES`).
    :raises AccessDeniedError: the KMS refused the deletion (recorded first, with outcome ``denied``).
    """
    keys = TenantKeys.of(tenant_keys, column="tenant")
    assert keys is not None  # TenantKeys.of raises on an empty value given a column
    key_uri = keys.key_uri(tenant)
    principal = _principal(principal, kms_options)
    kms = _kms_for(kms_options, key_uri, principal)
    store = store_of(subject_store, kms, principal)
    found = _load(datasets, storage_options)  # a bad dataset path fails here, before the KMS call
    provider = kms.provider(key_uri)
    at = utc_now_iso()
    detail: dict[str, Any] = {"kind": "tenant", "tenant": tenant, "key_uri": key_uri, "reason": reason,
                              "pending_days": pending_days, "datasets": [k.path for k in found]}
    try:
        deletion = provider.schedule_key_deletion(pending_days)
        key_id, state, date, already = deletion.key_id, deletion.state, deletion.deletion_date, deletion.already
    except KeyNotFoundError:
        # Vault Transit and PKCS#11 delete at once: a second erasure finds no key. Our own log tells an erased
        # key from a key that never was.
        earlier = _earlier_erasure(store, key_uri)
        if earlier is None:
            store.record(ERASURE_ACTIONS["tenant"], "error", {**detail, "error": "KeyNotFoundError"})
            raise
        key_id, state, date, already = earlier.get("key_id"), "destroyed", earlier.get("deletion_date"), True
    except AccessDeniedError as exc:
        store.record(ERASURE_ACTIONS["tenant"], "denied", {**detail, "error": f"{type(exc).__name__}: {exc}"})
        raise
    except KmsError as exc:
        store.record(ERASURE_ACTIONS["tenant"], "error", {**detail, "error": f"{type(exc).__name__}: {exc}"})
        raise
    affected = {k.path: n for k in found if (n := _tenant_deks(k, tenant, key_uri, key_id))}
    detail.update({"key_id": key_id, "state": state, "deletion_date": date, "already_erased": already,
                   "datasets": affected, "at": at})
    try:
        receipt_id = store.record(ERASURE_ACTIONS["tenant"], "ok", detail)
    except Exception:
        # The KMS did erase: say so where an operator looks, with what the receipt would have held.
        logger.error("tenant %s: KMS key %s (%s) is %s (deletion date %s), but its receipt could not be written to "
                     "the erasure log %s", tenant, key_id, key_uri, state, date or "not given", store.url)
        raise
    logger.info("erased tenant %s: KMS key %s (%s) %s, deletion date %s; %d of %d datasets given hold its data "
                "keys; erasure log %s row %d", tenant, key_id, key_uri, state, date or "not given", len(affected),
                len(found), store.url, receipt_id)
    return ErasureReceipt(kind="tenant", target=tenant, key_uri=key_uri, key_id=key_id, store_id=store.store_id,
                          principal=principal or store.principal, at=at, deletion_date=date, already_erased=already,
                          datasets=affected, receipt_id=receipt_id, reason=reason, state=state)


# -- subjects -------------------------------------------------------------------------------------------------


def erase_subject(
    subject_id: str,
    *,
    subject_store: SubjectKeyStore | str | None = None,
    kms_options: KmsConfigLike = None,
    datasets: Iterable[Any] = (),
    principal: str | None = None,
    reason: str = "",
    storage_options: Mapping[str, str] | str | None = None,
) -> ErasureReceipt:
    """Erase one data subject in the subject key store (its key deleted, a tombstone and an audit row written,
    in one transaction); needs the store's ``erase`` permission. Idempotent.

    :param subject_store: the store (a URL, a path, a :class:`~spark_kms.subjects.SubjectKeyStore`; default
        ``$SPARK_KMS_SUBJECT_STORE``, else ``~/.spark_kms/subjects.db``).
    :param datasets: datasets to report on: the receipt names those with per-subject columns of this store.
    :param principal: who erases (the store's principal; default ``$SPARK_KMS_PRINCIPAL``, else the OS user).
    :raises AccessDeniedError: the principal lacks ``erase`` (the store records the refusal first).
    """
    if isinstance(subject_store, SubjectKeyStore) and principal and principal != subject_store.principal:
        raise ConfigurationError("erase_subject: principal= differs from the principal of the SubjectKeyStore "
                                 "given; open the store as that principal (SubjectKeyStore.open(url, principal=...))")
    if not isinstance(subject_id, str) or not subject_id:
        raise ConfigurationError("erase_subject needs a subject id (a non-empty string)")
    store = subject_store if isinstance(subject_store, SubjectKeyStore) else \
        SubjectKeyStore.open(subject_store or _default_url(), kms_options, principal=_principal(principal, kms_options))
    found = _load(datasets, storage_options)
    store_id = store.store_id
    affected = {k.path: sorted(name for name, spec in k.columns.items()
                               if spec.subject and spec.subject_store == store_id) for k in found}
    affected = {path: cols for path, cols in affected.items() if cols}
    record = store.erase(subject_id, reason=reason, datasets=list(affected))
    logger.info("erased a subject in store %s (%s): %d of %d datasets given have per-subject columns of it; "
                "erasure log row %d%s", store_id, store.url, len(affected), len(found), record.receipt_id,
                ", already erased" if record.already_erased else "")
    return ErasureReceipt(kind="subject", target=subject_id, key_uri=None, key_id=None, store_id=record.store_id,
                          principal=record.principal, at=record.at, deletion_date=None,
                          already_erased=record.already_erased, datasets=affected, receipt_id=record.receipt_id,
                          reason=reason, state="erased")


def _default_url() -> str:
    from spark_kms.subjects import default_store_url

    return default_store_url()


# -- the erasure log ------------------------------------------------------------------------------------------


def erasure_log(subject_store: SubjectKeyStore | str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """The erasure log: the audit rows of tenant and subject erasures (refusals and errors included), oldest
    first, each ``{id, at, principal, action, outcome, kind, detail}``. ``kind``: ``"tenant"`` or ``"subject"``
    only. Reading it makes no KMS call."""
    if kind is not None and kind not in _KINDS:
        raise ConfigurationError(f"erasure_log: kind is one of {list(_KINDS)} or None, got {kind!r}")
    store = subject_store if isinstance(subject_store, SubjectKeyStore) else \
        SubjectKeyStore(subject_store or _default_url())
    wanted = [kind] if kind else list(_KINDS)
    rows = [dict(row, kind=k) for k in wanted for row in store.audit_events(ERASURE_ACTIONS[k])]
    return sorted(rows, key=lambda row: row["id"])

