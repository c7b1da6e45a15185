"""Key records of the embedded local KMS: states, specs, versions, and the checks on them.

A key record (an entry of ``keys`` in ``keystore.json``) has AWS-style states --
``Enabled``, ``Disabled``, ``PendingDeletion``, ``Destroyed`` -- and numbered versions,
each ``enabled``, ``disabled`` or ``destroyed`` (material erased). New wraps use the
primary version (the newest enabled one); any enabled version still decrypts what it
wrapped. The functions here read and edit records of a
:class:`~spark_kms.kms.local._store.KeystoreView`; locking and auditing are the caller's.
"""

from __future__ import annotations

import copy
import re
import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from spark_kms.errors import ConfigurationError, KeyErasedError, KeyNotFoundError, KeyStateError
from spark_kms.kms.base import KeyDescription
from spark_kms.kms.local._store import KeystoreView, encrypt_material

__all__ = [
    "BACKING",
    "DESTROYED",
    "DISABLED",
    "ENABLED",
    "KEY_SPECS",
    "MAX_DELETION_DAYS",
    "MIN_DELETION_DAYS",
    "PENDING_DELETION",
    "add_version",
    "check_alias_name",
    "check_deletion_window",
    "check_rotation_period",
    "describe",
    "enabled_versions",
    "iso",
    "parse_time",
    "require_key_usable",
    "require_spec",
    "require_version_usable",
    "resolve_key",
    "state_error",
    "utcnow",
]

KEY_SPECS = ("SYMMETRIC_DEFAULT", "HMAC_256")
MIN_DELETION_DAYS = 7
MAX_DELETION_DAYS = 30
BACKING = "software keystore (not an HSM)"

# Key states (AWS-style names) and version states.
ENABLED, DISABLED, PENDING_DELETION, DESTROYED = "Enabled", "Disabled", "PendingDeletion", "Destroyed"
_VERSION_STATE_NAMES = {ENABLED: "enabled", DISABLED: "disabled", DESTROYED: "destroyed"}
_ALIAS_RE = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat()


def parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s)


# ---------------------------------------------------------------- argument checks
def check_alias_name(alias: str) -> None:
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
        raise ConfigurationError(
            f"an alias looks like 'alias/<name>' with letters, digits, '/', '_' or '-', got {alias!r}"
        )


def check_rotation_period(days: int | None) -> None:
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
        raise ConfigurationError(f"rotation_period_days must be an integer from 1 to 3650, got {days!r}")


def check_deletion_window(pending_window_days: int) -> None:
    if (
        not isinstance(pending_window_days, int)
        or isinstance(pending_window_days, bool)
        or not MIN_DELETION_DAYS <= pending_window_days <= MAX_DELETION_DAYS
    ):
        raise ConfigurationError(
            f"the deletion waiting period must be {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS} days, "
            f"got {pending_window_days!r}"
        )


# ---------------------------------------------------------------- records
def add_version(store: KeystoreView, kid: str, now: str) -> int:
    """A new enabled version with fresh material sealed under the root key; returns its number."""
    assert store.root_key is not None
    k = store.edit()["keys"][kid]
    version = max((int(v) for v in k["versions"]), default=0) + 1
    material = secrets.token_bytes(32)
    k["versions"][str(version)] = {
        "state": ENABLED,
        "created_at": now,
        "material": encrypt_material(store.root_key, kid, version, material),
    }
    return version


def enabled_versions(k: Mapping[str, Any]) -> list[int]:
    return [int(v) for v, info in k["versions"].items() if info["state"] == ENABLED]


def resolve_key(store: KeystoreView, key: str | None, keystore_dir: Path) -> str:
    """The key id ``key`` names: a key id (UUID) or an alias, with or without ``local://``."""
    if not key:
        raise ConfigurationError("a key id (UUID) or alias ('alias/...') is required")
    ref = key[len("local://") :] if key.startswith("local://") else key
    if ref.startswith("alias/"):
        kid = store.aliases.get(ref)
        if kid is None:
            raise KeyNotFoundError(f"alias {ref!r} does not exist in keystore {keystore_dir}", key_id=ref)
        return kid
    try:
        kid = str(uuid.UUID(ref))
    except ValueError:
        raise KeyNotFoundError(
            f"{ref!r} is neither a key id (UUID) nor an alias ('alias/...') in keystore {keystore_dir}",
            key_id=ref,
        ) from None
    if kid not in store.keys:
        raise KeyNotFoundError(f"key {kid} does not exist in keystore {keystore_dir}", key_id=kid)
    return kid


# ---------------------------------------------------------------- state checks
def state_error(k: Mapping[str, Any], kid: str, operation: str) -> KeyStateError:
    """The error for a key that is not Enabled: :class:`KeyErasedError` when it is PendingDeletion or
    Destroyed (what it wrapped is erased), a plain :class:`KeyStateError` when Disabled."""
    state = k["state"]
    hint = {
        DISABLED: f"enable it with `spark-kms keys enable {kid}`",
        PENDING_DELETION: f"scheduled for deletion on {k.get('deletion_date')}; "
        f"cancel with `spark-kms keys cancel-deletion {kid}`",
        DESTROYED: f"destroyed on {k.get('destroyed_at')}; its material is erased",
    }.get(state, "")
    error = KeyErasedError if state in (PENDING_DELETION, DESTROYED) else KeyStateError
    return error(f"key {kid} is {state}: {hint}", key_id=kid, operation=operation)


def require_key_usable(k: Mapping[str, Any], kid: str, operation: str = "") -> None:
    if k["state"] != ENABLED:
        raise state_error(k, kid, operation)


def require_version_usable(k: Mapping[str, Any], kid: str, version: int, operation: str = "") -> None:
    v = k["versions"].get(str(version))
    if v is None:
        raise KeyNotFoundError(f"key {kid} has no version {version}", key_id=kid, operation=operation)
    if v["state"] == DISABLED:
        raise KeyStateError(
            f"version {version} of key {kid} is Disabled: enable it with "
            f"`spark-kms keys enable {kid} --version {version}`",
            key_id=kid,
            operation=operation,
        )
    if v["state"] == DESTROYED:
        # One destroyed version of a live key is a retirement gone wrong (rewrap first), not an erasure: it
        # fails loudly. Erasure is the whole key scheduled for deletion or destroyed (state_error above).
        raise KeyStateError(
            f"version {version} of key {kid} is Destroyed: its material is erased and what it "
            "wrapped cannot be decrypted",
            key_id=kid,
            operation=operation,
        )


def require_spec(k: Mapping[str, Any], kid: str, spec: str, operation: str) -> None:
    if k["spec"] != spec:
        raise ConfigurationError(f"{operation} needs a {spec} key; key {kid} is {k['spec']}")


# ---------------------------------------------------------------- DescribeKey
def describe(store: KeystoreView, kid: str, keystore_dir: Path) -> KeyDescription:
    k = store.keys[kid]
    enabled = enabled_versions(k)
    period = k.get("rotation_period_days")
    next_rotation = (
        iso(parse_time(k["last_rotated_at"]) + timedelta(days=period)) if period and k["state"] == ENABLED else None
    )
    return KeyDescription(
        key_id=kid,
        primary_version=str(max(enabled)) if enabled else "",
        enabled=k["state"] == ENABLED,
        state=k["state"],
        versions={
            v: _VERSION_STATE_NAMES.get(info["state"], info["state"].lower())
            for v, info in sorted(k["versions"].items(), key=lambda item: int(item[0]))
        },
        extra={
            "aliases": sorted(a for a, target in store.aliases.items() if target == kid),
            "spec": k["spec"],
            "description": k.get("description", ""),
            "tags": dict(k.get("tags") or {}),
            "created_at": k["created_at"],
            "rotation_period_days": period,
            "next_rotation_at": next_rotation,
            "deletion_date": k.get("deletion_date"),
            "policy": copy.deepcopy(k.get("policy")),
            "backing": BACKING,
            "keystore": str(keystore_dir),
        },
        # key material lives in a file-backed keystore, encrypted under a root key in process memory
        protection_level="software",
        protection_detail="embedded local KMS (software keystore)",
    )
