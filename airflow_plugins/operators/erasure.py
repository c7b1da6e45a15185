"""The erasure operator: erase a tenant or a data subject from an Airflow task (:mod:`spark_kms.erasure`).

``EraseDataOperator(tenant=..., tenant_keys=...)`` schedules the tenant's KMS key for deletion;
``EraseDataOperator(subject=..., subject_store=...)`` deletes the subject's key from the subject key store.
``execute()`` returns the :class:`~spark_kms.erasure.ErasureReceipt` as a dict (pushed to XCom), and the receipt
is in the store's erasure log. A refused erasure (the principal lacks the KMS's key-deletion permission or the
store's ``erase`` permission) fails the task at once, without retries (:mod:`airflow_plugins.operators._errors`);
an unreachable KMS is retried as usual. Erasures are idempotent, so a retry is harmless.

KMS configuration, ``storage_options`` and templating follow the other spark_kms operators
(:class:`~airflow_plugins.operators.spark_kms.SparkKmsBaseOperator`); no Spark session is started.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_plugins.operators._errors import task_errors
from airflow_plugins.operators.spark_kms import SparkKmsBaseOperator, _optional_int, _unset_template
from spark_kms.errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from airflow.sdk import Context

__all__ = ["EraseDataOperator"]


class EraseDataOperator(SparkKmsBaseOperator):
    """Erase a tenant or a data subject (crypto-shredding, docs/ERASURE.md); give exactly one of them.

    :param tenant: erase this tenant: schedule its KMS key for deletion (templated).
    :param tenant_keys: with ``tenant``: the writers' tenant keys, a key-URI template with ``{tenant}`` or a
        mapping tenant -> key URI, or its JSON (templated).
    :param subject: erase this data subject: delete its key from the subject key store (templated).
    :param subject_store: the subject key store (URL or path; its audit log is the erasure log; default
        ``$SPARK_KMS_SUBJECT_STORE``, else ``~/.spark_kms/subjects.db``) (templated).
    :param datasets: datasets or tables to report on: the receipt names those holding the erased data (templated).
    :param pending_days: tenant: the KMS's waiting period before it destroys the key (templated; default 7).
    :param reason: recorded with the receipt (templated).
    :param principal: who erases, in the store (and in the local KMS); default the local KMS principal of the
        connection / ``kms_options``, else ``$SPARK_KMS_PRINCIPAL``, else the OS user (templated).
    """

    template_fields: Sequence[str] = ("tenant", "tenant_keys", "subject", "subject_store", "datasets", "pending_days",
                                      "reason", "principal", *SparkKmsBaseOperator.template_fields)
    ui_color = "#f4d8d8"

    def __init__(
        self,
        *,
        tenant: str | None = None,
        tenant_keys: Any = None,
        subject: str | None = None,
        subject_store: str | None = None,
        datasets: Sequence[str] = (),
        pending_days: int | str = 7,
        reason: str = "",
        principal: str | None = None,
        **kwargs: Any,
    ) -> None:
        if tenant is not None and subject is not None:
            raise ConfigurationError("EraseDataOperator erases a tenant or a subject: give tenant= or subject=, "
                                     "not both")
        if tenant is None and subject is None:
            raise ConfigurationError("EraseDataOperator needs tenant= (with tenant_keys=) or subject=")
        if tenant is not None and not tenant_keys:
            raise ConfigurationError("EraseDataOperator(tenant=...) needs tenant_keys= (the key-URI template or "
                                     "mapping the data was written with)")
        super().__init__(**kwargs)
        self.tenant = tenant
        self.tenant_keys = tenant_keys
        self.subject = subject
        self.subject_store = subject_store
        self.datasets = list(datasets)
        self.pending_days = pending_days
        self.reason = reason
        self.principal = principal

    @task_errors()
    def execute(self, context: Context) -> dict[str, Any]:
        from spark_kms.erasure import erase_subject, erase_tenant

        _, kms = self.resolve_kms()
        principal = _unset_template(self.principal) or kms.options().get("local", {}).get("principal") or None
        store = _unset_template(self.subject_store)
        storage = self.location_kwargs().get("storage_options")
        if self.tenant is not None:
            days = _optional_int(self.pending_days, f"task {self.task_id!r}: pending_days")
            receipt = erase_tenant(str(self.tenant), tenant_keys=self.tenant_keys, kms_options=kms,
                                   datasets=self.datasets, subject_store=store, pending_days=7 if days is None else days,
                                   principal=principal, reason=self.reason or "", storage_options=storage)
            self.log.info("tenant %s erased: KMS key %s %s (deletion date %s)%s; erasure log row %d", self.tenant,
                          receipt.key_uri, receipt.state, receipt.deletion_date,
                          ", already erased" if receipt.already_erased else "", receipt.receipt_id)
        else:
            receipt = erase_subject(str(self.subject), subject_store=store, kms_options=kms, datasets=self.datasets,
                                    principal=principal, reason=self.reason or "", storage_options=storage)
            # The subject id is personal data: the log names the receipt, not the subject.
            self.log.info("subject erased in store %s%s; erasure log row %d", receipt.store_id,
                          ", already erased" if receipt.already_erased else "", receipt.receipt_id)
        if receipt.datasets:
            self.log.info("datasets holding the erased data: %s", sorted(receipt.datasets))
        return receipt.to_dict()
