"""The crypto-shredding Params of :mod:`spark_kms.spark.ml`'s transformers (docs/ERASURE.md): per-tenant keys and
per-subject cells for ``ColumnEncryptor``, the subject key store for both. Plain strings, like every other Param,
so a saved stage holds configuration only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters

from spark_kms.spark.conf import SparkKmsConf

__all__ = ["ShreddingParams", "SubjectStoreParam", "optional_param"]


def optional_param(stage: Params, param: Param[Any]) -> Any:
    """``param``'s value in ``stage``, or None when it is not set."""
    return stage.getOrDefault(param) if stage.isDefined(param) else None


def _tenant_keys_text(value: Any) -> str:
    """Param converter: a key-URI template, or a mapping tenant -> key URI (or its JSON text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return json.dumps({str(k): v for k, v in value.items()}, sort_keys=True)
    raise TypeError(f"expected a key-URI template or a mapping tenant -> key URI, got {type(value).__name__}")


class SubjectStoreParam(Params):
    """``subjectStore``: the subject key store of per-subject columns (shared by both transformers)."""

    subjectStore: Param[str] = Param(
        Params._dummy(), "subjectStore",
        "URL or path of the subject key store of per-subject columns (default: the session's "
        "spark.spark_kms.subjectStore, then $SPARK_KMS_SUBJECT_STORE)", typeConverter=TypeConverters.toString,
    )

    def subject_store(self, conf: SparkKmsConf) -> str | None:
        """The Param, else the session conf's ``subject_store``, else None (the default store)."""
        return optional_param(self, self.subjectStore) or conf.option("subject_store")


class ShreddingParams(SubjectStoreParam):
    """``tenantColumn`` / ``tenantKeys`` (per-tenant KMS keys) and ``subjectColumn`` (per-subject cells)."""

    tenantColumn: Param[str] = Param(
        Params._dummy(), "tenantColumn", "plain column holding each row's tenant id (with tenantKeys)",
        typeConverter=TypeConverters.toString,
    )
    tenantKeys: Param[str] = Param(
        Params._dummy(), "tenantKeys",
        "key-URI template with {tenant}, or JSON object tenant -> key URI ('*': template for the others)",
        typeConverter=_tenant_keys_text,
    )
    subjectColumn: Param[str] = Param(
        Params._dummy(), "subjectColumn", "plain column holding each row's data subject id: per-subject cells",
        typeConverter=TypeConverters.toString,
    )

    def tenant_keys(self) -> Any:
        """The Params as a :class:`~spark_kms.parquet.tenants.TenantKeys`, or None; checked (ConfigurationError)."""
        from spark_kms.parquet.tenants import TenantKeys

        column, keys = optional_param(self, self.tenantColumn), optional_param(self, self.tenantKeys)
        return TenantKeys.of(keys, column=column) if (column or keys) else None

    def subject_column(self) -> str | None:
        return optional_param(self, self.subjectColumn) or None
