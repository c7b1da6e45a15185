"""Who may call what in the embedded local KMS: principals, roles and key policies.

* Roles: ``admin`` (key management), ``encrypt`` (GenerateDataKey, Encrypt,
  GenerateMac), ``decrypt`` (Decrypt, the source side of ReEncrypt, VerifyMac),
  ``erase`` (ScheduleKeyDeletion only: crypto-shredding a tenant's key without the power
  to read its data or manage the key otherwise; ``admin`` may schedule deletion too).
  DescribeKey needs any role.
* A key policy maps a principal (or ``"*"``, every principal) to roles. A key without
  a policy allows every principal everything.
* The principal is whoever the caller says it is (``principal=``, else
  ``$SPARK_KMS_PRINCIPAL``, else the OS user): the local KMS has no authentication.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from typing import Any

from spark_kms.errors import AccessDeniedError, ConfigurationError

__all__ = ["PRINCIPAL_ENV", "ROLES", "ROLE_OF", "authorize", "check_policy", "resolve_principal"]

PRINCIPAL_ENV = "SPARK_KMS_PRINCIPAL"
ROLES = ("admin", "encrypt", "decrypt", "erase")

#: the role each data-plane operation needs on its key
ROLE_OF = {
    "GenerateDataKey": "encrypt",
    "Encrypt": "encrypt",
    "GenerateMac": "encrypt",
    "Decrypt": "decrypt",
    "ReEncrypt": "decrypt",
    "VerifyMac": "decrypt",
}


def resolve_principal(principal: str | None = None) -> str:
    """``principal``, else ``$SPARK_KMS_PRINCIPAL``, else the OS user name."""
    if principal:
        return principal
    env = os.environ.get(PRINCIPAL_ENV)
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return f"uid:{os.getuid()}"


def check_policy(policy: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]] | None:
    """A key policy as stored: ``{principal or "*": sorted roles}``; None stays None."""
    if policy is None:
        return None
    checked: dict[str, list[str]] = {}
    for principal, roles in policy.items():
        if isinstance(roles, str):
            roles = [roles]
        bad = [r for r in roles if r not in ROLES]
        if bad or not isinstance(principal, str) or not principal:
            raise ConfigurationError(
                f"a key policy maps a principal (or '*') to roles from {list(ROLES)}; "
                f"got {principal!r}: {list(roles)!r}"
            )
        checked[principal] = sorted(set(roles))
    return checked


#: the roles that may call each key-management operation other than ``admin``'s own
ADMIN_OPERATION_ROLES = {"ScheduleKeyDeletion": ("admin", "erase")}


def authorize(
    k: Mapping[str, Any], kid: str, principal: str, role: str | tuple[str, ...] | None, operation: str
) -> None:
    """Raise AccessDeniedError unless key record ``k``'s policy grants ``principal`` ``role``
    (a tuple: any one of them; ``None``: any role) for ``operation``."""
    policy = k.get("policy")
    if policy is None:
        return
    granted = set(policy.get(principal, ())) | set(policy.get("*", ()))
    wanted = (role,) if isinstance(role, str) else role
    if (wanted is None and granted) or (wanted is not None and granted & set(wanted)):
        return
    need = " or ".join(f"role {r!r}" for r in wanted) if wanted else "a role"
    raise AccessDeniedError(
        f"principal {principal!r} may not call {operation} on key {kid}: "
        f"the key policy does not grant it {need}",
        key_id=kid,
        operation=operation,
    )
