"""Per-tenant keys: which KMS key encrypts a row, by the value of its tenant column (crypto-shredding).

A writer given ``tenant_keys`` makes one data key per (task, tenant) it meets, under the tenant's own KMS key,
with the encryption context ``{..., "spark_kms.tenant": "<tenant>"}``; the cells are ordinary cells naming that
data key, so readers need nothing new. Erasing a tenant is scheduling its KMS key for deletion
(:func:`spark_kms.erasure.erase_tenant`): every data key it wrapped, in every file, backup and table snapshot,
stops unwrapping, and readers return those cells as null (docs/ERASURE.md).

``TenantKeys(column="tenant_id", keys="aws-kms://alias/tenant-{tenant}")`` -- a key-URI template -- or
``keys={"acme": "aws-kms://arn:...", "globex": "...", "*": "local://alias/tenant-{tenant}"}`` -- a mapping,
``"*"`` the template for tenants it does not list. :meth:`TenantKeys.of` also takes the JSON of either form
(``{"column": ..., "keys": ...}``), which is how the Spark options and the CLI pass it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.errors import ConfigurationError
from spark_kms.parquet._types import encode_values

__all__ = ["TENANT_CONTEXT_KEY", "TenantKeys", "tenant_of_context"]

#: the encryption-context entry naming a data key's tenant (the KMS checks it on every unwrap)
TENANT_CONTEXT_KEY = "spark_kms.tenant"
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PLACEHOLDER = "{tenant}"


def tenant_of_context(context: Mapping[str, str]) -> str | None:
    """The tenant a data key's encryption context names, or ``None``."""
    return context.get(TENANT_CONTEXT_KEY)


def _check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ConfigurationError(
            "a tenant id is 1-128 characters of A-Z, a-z, 0-9, '_' and '-' (it becomes part of a key URI), "
            f"got one of {len(str(tenant))} characters that is not"
        )
    return tenant


@dataclass(frozen=True)
class TenantKeys:
    """Which KMS key each tenant's data keys are made under.

    :param column: the plain column holding each row's tenant id (string or integer; never null).
    :param keys: a key-URI template containing ``{tenant}``, or a mapping tenant -> key URI (``"*"``: the
        template for the others).
    """

    column: str
    keys: str | Mapping[str, str]

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ConfigurationError(f"tenant_column must name a column, got {self.column!r}")
        keys = self.keys
        if isinstance(keys, str):
            if _PLACEHOLDER not in keys:
                raise ConfigurationError(
                    f"tenant_keys {keys!r} is a key-URI template and must contain {_PLACEHOLDER} "
                    "(e.g. aws-kms://alias/tenant-{tenant}); or give a mapping tenant -> key URI"
                )
        elif isinstance(keys, Mapping):
            mapping = {str(k): v for k, v in keys.items()}
            for tenant, uri in mapping.items():
                if tenant != "*":
                    _check_tenant(tenant)
                if not isinstance(uri, str) or not uri:
                    raise ConfigurationError(f"tenant_keys maps tenant {tenant!r} to {uri!r}, not a key URI")
            if "*" in mapping and _PLACEHOLDER not in mapping["*"]:
                raise ConfigurationError(f"tenant_keys['*'] is a template and must contain {_PLACEHOLDER}")
            if not mapping:
                raise ConfigurationError("tenant_keys is an empty mapping")
            object.__setattr__(self, "keys", dict(sorted(mapping.items())))
        else:
            raise ConfigurationError(
                f"tenant_keys is a key-URI template or a mapping tenant -> key URI, got {type(keys).__name__}"
            )

    def __hash__(self) -> int:
        keys = self.keys if isinstance(self.keys, str) else tuple(self.keys.items())
        return hash((self.column, keys))

    @classmethod
    def of(cls, value: Any, column: str | None = None) -> TenantKeys | None:
        """A TenantKeys from itself, ``None``, a mapping ``{"column": ..., "keys": ...}`` or its JSON, or -- with
        ``column`` -- a template string, a mapping tenant -> URI or its JSON."""
        if value is None or value == "":
            if column:
                raise ConfigurationError(f"tenant_column={column!r} needs tenant_keys (a key-URI template or mapping)")
            return None
        if isinstance(value, TenantKeys):
            return value if column in (None, value.column) else cls(column, value.keys)  # type: ignore[arg-type]
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigurationError("tenant_keys is not valid JSON") from None
        if isinstance(value, Mapping) and set(value) <= {"column", "keys"} and "keys" in value:
            return cls(column or value.get("column", ""), value["keys"])
        if not column:
            raise ConfigurationError("tenant_keys needs tenant_column (the column holding each row's tenant id)")
        return cls(column, value)

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "keys": self.keys if isinstance(self.keys, str) else dict(self.keys)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key_uri(self, tenant: str) -> str:
        """The key URI of ``tenant``'s data keys."""
        _check_tenant(tenant)
        keys = self.keys
        if isinstance(keys, str):
            return keys.replace(_PLACEHOLDER, tenant)
        if tenant in keys:
            return keys[tenant]
        if "*" in keys:
            return keys["*"].replace(_PLACEHOLDER, tenant)
        raise ConfigurationError(
            f"tenant {tenant!r} has no key in tenant_keys (tenants listed: {sorted(k for k in keys if k != '*')}); "
            "add it, or a '*' template"
        )

    def _checked(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The tenant column as one array, refused unless it is a string or integer column without nulls."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
        t = values.type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
            raise ConfigurationError(f"tenant column {self.column!r} is {t}; it must be a string or integer column")
        if values.null_count:
            raise ConfigurationError(
                f"tenant column {self.column!r} is null in {values.null_count} rows: every row needs a tenant"
            )
        return values

    def groups(self, values: pa.Array | pa.ChunkedArray) -> list[tuple[str, pa.Array | None]]:
        """The rows of each tenant: ``(tenant, row indices)``, or ``[(tenant, None)]`` when every row is that
        tenant's (the usual case for data partitioned by tenant). Checked as :meth:`tenants`; vectorised."""
        values = self._checked(values)
        text = values if not pa.types.is_integer(values.type) else pc.cast(values, pa.string())
        unique = pc.unique(text).to_pylist()
        for tenant in unique:
            _check_tenant(tenant)
        if len(unique) == 1:
            return [(unique[0], None)]
        return [(tenant, pc.indices_nonzero(pc.equal(text, tenant))) for tenant in unique]

    def tenants(self, values: pa.Array | pa.ChunkedArray) -> list[str]:
        """Each row's tenant id, checked: the column's plaintext encoding (docs/FORMAT.md section 6)."""
        out = [v.decode("utf-8") for v in encode_values(self._checked(values))]  # type: ignore[union-attr]
        for tenant in set(out):
            _check_tenant(tenant)
        return out
