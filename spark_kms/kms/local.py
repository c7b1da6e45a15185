"""The embedded local KMS (``local://``): a file-backed *software* keystore.

It is the default KMS of spark_kms so everything runs without a cloud account. It
models the concepts of a real KMS -- customer master keys with versions, rotation
(on demand and by period), aliases, enable/disable of keys and versions, scheduled
deletion with a 7-30 day waiting period, per-principal key policies, an append-only
audit log -- but it is **not an HSM**: master key material lives in a file,
encrypted under a root key that this process holds in memory. See docs/LOCAL_KMS.md.

Two objects:

* :class:`LocalKms` -- the admin and data-plane API over one keystore directory.
* :class:`LocalKmsProvider` -- the :class:`~spark_kms.kms.base.KmsProvider` for key
  URIs ``local://alias/pii`` or ``local://<key uuid>``; options ``keystore=``
  (default env ``SPARK_KMS_KEYSTORE``, else ``~/.spark_kms/keystore``),
  ``principal=`` (default env ``SPARK_KMS_PRINCIPAL``, else the OS user),
  ``root_key=`` (32 bytes; default env ``SPARK_KMS_ROOT_KEY``, else
  ``<keystore>/root.key``). It pickles as configuration only.

Rules:

* Roles: ``admin`` (key management), ``encrypt`` (GenerateDataKey, Encrypt,
  GenerateMac), ``decrypt`` (Decrypt, the source side of ReEncrypt, VerifyMac).
  DescribeKey needs any role. A key without a policy allows every principal
  everything; ``"*"`` in a policy matches every principal.
* New wraps use the primary version (the newest enabled one); any enabled version
  still decrypts what it wrapped. Due rotations (``rotation_period_days``) and due
  deletions happen lazily at the next call that loads the keystore, by the clock.
* Every call -- allowed, denied or failed -- appends exactly one line to
  ``audit.log``; lazy transitions add a line of their own (principal ``system``).
  Audit lines never carry key bytes, plaintext or the root key.
* Every call holds a cross-process file lock for its whole duration, so Spark
  executors (separate processes) may share one keystore; the keystore file is
  replaced atomically, and its decrypted material is cached per process.
"""

from __future__ import annotations

import base64
import copy
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import filelock
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms._atomic import atomic_write_bytes
from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    KeystoreError,
    KmsUnavailableError,
    SparkKmsError,
    ThrottlingError,
)
from spark_kms.kms import _local_store as _ls
from spark_kms.kms.base import (
    DataKey,
    KeyDescription,
    KmsProvider,
    WrappedKey,
    canonical_context,
)
from spark_kms.kms.retry import RetryPolicy, call_with_retries

__all__ = [
    "KEY_SPECS",
    "KEYSTORE_ENV",
    "PRINCIPAL_ENV",
    "ROLES",
    "LocalKms",
    "LocalKmsProvider",
    "default_keystore_dir",
    "resolve_principal",
]

KEYSTORE_ENV = "SPARK_KMS_KEYSTORE"
PRINCIPAL_ENV = "SPARK_KMS_PRINCIPAL"
KEY_SPECS = ("SYMMETRIC_DEFAULT", "HMAC_256")
ROLES = ("admin", "encrypt", "decrypt")
MIN_DELETION_DAYS = 7
MAX_DELETION_DAYS = 30
BACKING = "software keystore (not an HSM)"

# Key states (AWS-style names) and version states.
ENABLED, DISABLED, PENDING_DELETION, DESTROYED = "Enabled", "Disabled", "PendingDeletion", "Destroyed"
_VERSION_STATE_NAMES = {ENABLED: "enabled", DISABLED: "disabled", DESTROYED: "destroyed"}
_ALIAS_RE = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")
_LOCK_TIMEOUT_S = 60.0

_ROLE_OF = {
    "GenerateDataKey": "encrypt",
    "Encrypt": "encrypt",
    "GenerateMac": "encrypt",
    "Decrypt": "decrypt",
    "ReEncrypt": "decrypt",
    "VerifyMac": "decrypt",
}


def default_keystore_dir() -> Path:
    """``$SPARK_KMS_KEYSTORE``, else ``~/.spark_kms/keystore``."""
    env = os.environ.get(KEYSTORE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".spark_kms" / "keystore"


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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat()


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s)


class _ThrottledRequest(ThrottlingError):
    """Injected throttling (test fault); the provider retries it, then raises ThrottlingError."""


# -- per-process cache of parsed keystores and decrypted material -------------------------------
# The keystore file is small; re-reading it under the lock on each call is cheap and
# always correct (a (mtime, size, inode) key can collide when inodes are reused after
# os.replace). What is costly -- JSON parsing, the root check, and AES-GCM unsealing of
# every master key -- is done once per distinct file content / sealed blob.
_CACHE_LOCK = threading.Lock()
_PARSED: dict[str, tuple[bytes, bytes, dict[str, Any]]] = {}  # path -> (raw, root digest, data)
_MATERIAL: dict[tuple[str, str, int, str], bytes] = {}  # (path, key id, version, sealed) -> material
_MATERIAL_MAX = 4096


def _root_digest(root_key: bytes) -> bytes:
    return hashlib.sha256(b"spark_kms.local.root-digest|" + root_key).digest()


class _Store:
    """One call's view of the keystore: the cached parsed data, copied on first edit."""

    def __init__(self, path: Path, data: dict[str, Any], root_key: bytes | None, exists: bool) -> None:
        self.path = path
        self.data = data
        self.root_key = root_key
        self.exists = exists
        self.dirty = False

    def edit(self) -> dict[str, Any]:
        if not self.dirty:
            self.data = copy.deepcopy(self.data)
            self.dirty = True
        return self.data

    @property
    def keys(self) -> dict[str, Any]:
        return self.data["keys"]

    @property
    def aliases(self) -> dict[str, str]:
        return self.data["aliases"]

    def material(self, key_id: str, version: int) -> bytes:
        sealed = self.keys[key_id]["versions"][str(version)]["material"]
        cache_key = (str(self.path), key_id, version, sealed)
        with _CACHE_LOCK:
            hit = _MATERIAL.get(cache_key)
        if hit is not None:
            return hit
        assert self.root_key is not None
        material = _ls.decrypt_material(self.root_key, key_id, version, sealed, self.path)
        with _CACHE_LOCK:
            if len(_MATERIAL) >= _MATERIAL_MAX:
                _MATERIAL.clear()
            _MATERIAL[cache_key] = material
        return material


class LocalKms:
    """Admin and data-plane API over one keystore directory (see the module docstring).

    :param keystore_dir: the keystore directory (created on the first key creation).
    :param principal: who is calling; default ``$SPARK_KMS_PRINCIPAL``, else the OS user.
    :param root_key: 32 bytes (or their base64); default ``$SPARK_KMS_ROOT_KEY`` (base64), else
        ``<keystore>/root.key`` (created 0600 on first use -- a convenience that puts the
        root key next to the store; production should inject it).
    :param clock: returns the current time as an aware UTC datetime (tests inject one).
    """

    def __init__(
        self,
        keystore_dir: str | os.PathLike[str],
        *,
        principal: str | None = None,
        root_key: bytes | str | None = None,
        clock: Callable[[], datetime] | None = None,
        request_tag: str | None = None,
    ) -> None:
        self.keystore_dir = Path(keystore_dir).expanduser().absolute()
        # Written into every audit line this object makes (e.g. a job's run id), so the
        # audit log ties a call to the job even where the encryption context cannot change.
        self.request_tag = request_tag
        self.principal = resolve_principal(principal)
        if isinstance(root_key, str):  # base64, as in $SPARK_KMS_ROOT_KEY (JSON-able job options)
            try:
                root_key = base64.b64decode(root_key, validate=True)
            except ValueError:
                raise ConfigurationError("root_key must be 32 bytes, or their base64") from None
        if root_key is not None and (not isinstance(root_key, (bytes, bytearray)) or len(root_key) != 32):
            raise ConfigurationError("root_key must be 32 bytes (AES-256), or their base64")
        self._root_key_option = bytes(root_key) if root_key is not None else None
        self._clock = clock or _utcnow
        self._lock = filelock.FileLock(
            str(self.keystore_dir / _ls.LOCK_FILE), timeout=_LOCK_TIMEOUT_S, poll_interval=0.001
        )

    def __repr__(self) -> str:
        return f"LocalKms({str(self.keystore_dir)!r}, principal={self.principal!r})"

    def __reduce__(self) -> Any:
        raise TypeError("LocalKms holds a lock and a root key; pickle a LocalKmsProvider instead")

    @property
    def keystore_file(self) -> Path:
        return self.keystore_dir / _ls.KEYSTORE_FILE

    @property
    def audit_file(self) -> Path:
        return self.keystore_dir / _ls.AUDIT_FILE

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigurationError("the LocalKms clock must return timezone-aware datetimes")
        return now

    # ================================================================ data plane
    def generate_data_key(self, key: str, encryption_context: Mapping[str, str] | None = None) -> DataKey:
        """GenerateDataKey: 32 random bytes and their wrap under the key's primary version."""
        ctx = canonical_context(encryption_context)

        def op(store: _Store, rec: dict[str, Any]) -> DataKey:
            kid, version = self._wrap_target(store, key, "GenerateDataKey", rec)
            plaintext = bytearray(secrets.token_bytes(32))
            blob = self._seal(store, kid, version, bytes(plaintext), ctx)
            return DataKey(plaintext=plaintext, wrapped=WrappedKey(blob, kid, str(version)))

        return self._call("GenerateDataKey", key, op, context=ctx, data_plane=True)

    def encrypt(
        self, key: str, plaintext: bytes, encryption_context: Mapping[str, str] | None = None
    ) -> WrappedKey:
        """Encrypt: wrap ``plaintext`` (at most 4 KiB) under the key's primary version."""
        if len(plaintext) > 4096:
            raise ConfigurationError(f"Encrypt takes at most 4096 bytes, got {len(plaintext)}")
        ctx = canonical_context(encryption_context)

        def op(store: _Store, rec: dict[str, Any]) -> WrappedKey:
            kid, version = self._wrap_target(store, key, "Encrypt", rec)
            return WrappedKey(self._seal(store, kid, version, bytes(plaintext), ctx), kid, str(version))

        return self._call("Encrypt", key, op, context=ctx, data_plane=True)

    def decrypt(
        self,
        ciphertext: bytes,
        encryption_context: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> bytearray:
        """Decrypt a blob; the blob names its key and version. If ``key`` is given, the
        blob must have been wrapped by that key (else InvalidCiphertextError)."""
        ctx = canonical_context(encryption_context)

        def op(store: _Store, rec: dict[str, Any]) -> bytearray:
            return bytearray(self._unseal(store, ciphertext, ctx, "Decrypt", rec, expected_key=key))

        return self._call("Decrypt", key, op, context=ctx, data_plane=True)

    def reencrypt(
        self,
        ciphertext: bytes,
        encryption_context: Mapping[str, str] | None = None,
        *,
        destination_key: str | None = None,
        destination_context: Mapping[str, str] | None = None,
    ) -> WrappedKey:
        """ReEncrypt inside the KMS: unwrap (decrypt role on the source key) and wrap under the
        primary version of ``destination_key`` (encrypt role; default: the source key)."""
        ctx = canonical_context(encryption_context)
        dctx = canonical_context(destination_context) if destination_context is not None else ctx

        def op(store: _Store, rec: dict[str, Any]) -> WrappedKey:
            plaintext = bytearray(self._unseal(store, ciphertext, ctx, "ReEncrypt", rec))
            try:
                dest = destination_key if destination_key is not None else rec["key_id"]
                dest_rec: dict[str, Any] = {}
                try:
                    dkid, dversion = self._wrap_target(store, dest, "ReEncrypt", dest_rec, role="encrypt")
                finally:
                    rec["destination_key_id"] = dest_rec.get("key_id", dest)
                    rec["destination_key_version"] = dest_rec.get("key_version")
                return WrappedKey(self._seal(store, dkid, dversion, bytes(plaintext), dctx), dkid, str(dversion))
            finally:
                for i in range(len(plaintext)):
                    plaintext[i] = 0

        return self._call("ReEncrypt", None, op, context=ctx, data_plane=True)

    def generate_mac(self, key: str, message: bytes) -> bytes:
        """GenerateMac with an HMAC_256 key: a 39-byte token naming the version used."""

        def op(store: _Store, rec: dict[str, Any]) -> bytes:
            kid, version = self._wrap_target(store, key, "GenerateMac", rec, spec="HMAC_256")
            tag = hmac.new(store.material(kid, version), bytes(message), hashlib.sha256).digest()
            return _ls.MAC_MAGIC + bytes([1]) + version.to_bytes(4, "big") + tag

        return self._call("GenerateMac", key, op, data_plane=True)

    def verify_mac(self, key: str, message: bytes, mac: bytes) -> bool:
        """VerifyMac: whether ``mac`` (from :meth:`generate_mac`) matches ``message``."""

        def op(store: _Store, rec: dict[str, Any]) -> bool:
            kid = self._resolve(store, key)
            rec["key_id"] = kid
            k = store.keys[kid]
            self._authorize(k, kid, "decrypt", "VerifyMac")
            self._require_spec(k, kid, "HMAC_256", "VerifyMac")
            self._require_key_usable(k, kid)
            if len(mac) != 39 or mac[:2] != _ls.MAC_MAGIC or mac[2] != 1:
                rec["result"] = "invalid"
                return False
            version = int.from_bytes(mac[3:7], "big")
            rec["key_version"] = version
            self._require_version_usable(k, kid, version)
            expected = hmac.new(store.material(kid, version), bytes(message), hashlib.sha256).digest()
            ok = hmac.compare_digest(expected, mac[7:])
            rec["result"] = "valid" if ok else "invalid"
            return ok

        return self._call("VerifyMac", key, op, data_plane=True)

    def describe_key(self, key: str) -> KeyDescription:
        """DescribeKey (any role on the key)."""

        def op(store: _Store, rec: dict[str, Any]) -> KeyDescription:
            kid = self._resolve(store, key)
            rec["key_id"] = kid
            self._authorize(store.keys[kid], kid, None, "DescribeKey")
            return self._describe(store, kid)

        return self._call("DescribeKey", key, op, data_plane=True)

    def list_keys(self) -> list[KeyDescription]:
        """ListKeys: every key in the keystore (destroyed ones included, by state)."""

        def op(store: _Store, rec: dict[str, Any]) -> list[KeyDescription]:
            return [self._describe(store, kid) for kid in sorted(store.keys, key=lambda k: store.keys[k]["created_at"])]

        if not self.keystore_file.exists():
            return []
        return self._call("ListKeys", None, op)

    def list_aliases(self) -> dict[str, str]:
        """Alias -> key id."""
        if not self.keystore_file.exists():
            return {}
        return self._call("ListAliases", None, lambda store, rec: dict(sorted(store.aliases.items())))

    # ================================================================ admin
    def create_key(
        self,
        *,
        alias: str | None = None,
        spec: str = "SYMMETRIC_DEFAULT",
        description: str = "",
        tags: Mapping[str, str] | None = None,
        rotation_period_days: int | None = None,
    ) -> str:
        """CreateKey: a new key (version 1, Enabled); returns its id (a UUID4 string)."""
        if spec not in KEY_SPECS:
            raise ConfigurationError(f"key spec must be one of {list(KEY_SPECS)}, got {spec!r}")
        if alias is not None:
            _check_alias_name(alias)
        _check_rotation_period(rotation_period_days)
        tag_map = {str(k): str(v) for k, v in (tags or {}).items()}

        def op(store: _Store, rec: dict[str, Any]) -> str:
            if alias is not None and alias in store.aliases:
                raise ConfigurationError(
                    f"alias {alias!r} already names key {store.aliases[alias]} in keystore {self.keystore_dir}; "
                    "use update-alias to move it"
                )
            kid = str(uuid.uuid4())
            rec["key_id"] = kid
            rec["key_version"] = 1
            now = _iso(self._now())
            data = store.edit()
            data["keys"][kid] = {
                "key_id": kid,
                "spec": spec,
                "description": description,
                "tags": tag_map,
                "created_at": now,
                "state": ENABLED,
                "state_before_deletion": None,
                "deletion_date": None,
                "rotation_period_days": rotation_period_days,
                "last_rotated_at": now,
                "policy": None,
                "versions": {},
            }
            self._add_version(store, kid, now)
            if alias is not None:
                data["aliases"][alias] = kid
            return kid

        return self._call("CreateKey", alias, op, create=True)

    def rotate_key(self, key: str) -> int:
        """RotateKey: add a version, which becomes primary; returns its number."""

        def op(store: _Store, rec: dict[str, Any]) -> int:
            kid, k = self._admin_key(store, key, rec, "RotateKey")
            if k["state"] in (PENDING_DELETION, DESTROYED):
                raise self._state_error(k, kid, "RotateKey")
            version = self._add_version(store, kid, _iso(self._now()))
            store.keys[kid]["last_rotated_at"] = _iso(self._now())
            rec["key_version"] = version
            return version

        return self._call("RotateKey", key, op)

    def set_rotation_period(self, key: str, days: int | None) -> None:
        """Rotate automatically every ``days`` days (None: only on demand)."""
        _check_rotation_period(days)

        def op(store: _Store, rec: dict[str, Any]) -> None:
            kid, _ = self._admin_key(store, key, rec, "SetRotationPeriod")
            store.edit()["keys"][kid]["rotation_period_days"] = days

        self._call("SetRotationPeriod", key, op)

    def enable_key(self, key: str) -> None:
        self._set_key_state(key, ENABLED, "EnableKey")

    def disable_key(self, key: str) -> None:
        self._set_key_state(key, DISABLED, "DisableKey")

    def enable_key_version(self, key: str, version: int) -> None:
        self._set_version_state(key, version, ENABLED, "EnableKeyVersion")

    def disable_key_version(self, key: str, version: int) -> None:
        self._set_version_state(key, version, DISABLED, "DisableKeyVersion")

    def destroy_key_version(self, key: str, version: int) -> None:
        """Erase one version's material; what it wrapped can never be decrypted again."""
        self._set_version_state(key, version, DESTROYED, "DestroyKeyVersion")

    def schedule_key_deletion(self, key: str, pending_window_days: int = 30) -> datetime:
        """ScheduleKeyDeletion: state PendingDeletion; the key is destroyed once
        ``pending_window_days`` (7-30) have passed. Returns the deletion date."""
        if (
            not isinstance(pending_window_days, int)
            or isinstance(pending_window_days, bool)
            or not MIN_DELETION_DAYS <= pending_window_days <= MAX_DELETION_DAYS
        ):
            raise ConfigurationError(
                f"the deletion waiting period must be {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS} days, "
                f"got {pending_window_days!r}"
            )

        def op(store: _Store, rec: dict[str, Any]) -> datetime:
            kid, k = self._admin_key(store, key, rec, "ScheduleKeyDeletion")
            if k["state"] in (PENDING_DELETION, DESTROYED):
                raise self._state_error(k, kid, "ScheduleKeyDeletion")
            when = self._now() + timedelta(days=pending_window_days)
            k = store.edit()["keys"][kid]
            k["state_before_deletion"] = k["state"]
            k["state"] = PENDING_DELETION
            k["deletion_date"] = _iso(when)
            return when

        return self._call("ScheduleKeyDeletion", key, op)

    def cancel_key_deletion(self, key: str) -> None:
        """CancelKeyDeletion: the key returns to the state it had before scheduling."""

        def op(store: _Store, rec: dict[str, Any]) -> None:
            kid, k = self._admin_key(store, key, rec, "CancelKeyDeletion")
            if k["state"] != PENDING_DELETION:
                raise KeyStateError(
                    f"key {kid} is {k['state']}, not PendingDeletion; there is no deletion to cancel",
                    key_id=kid,
                    operation="CancelKeyDeletion",
                )
            k = store.edit()["keys"][kid]
            k["state"] = k.get("state_before_deletion") or ENABLED
            k["state_before_deletion"] = None
            k["deletion_date"] = None

        self._call("CancelKeyDeletion", key, op)

    def create_alias(self, alias: str, key: str) -> None:
        _check_alias_name(alias)

        def op(store: _Store, rec: dict[str, Any]) -> None:
            if alias in store.aliases:
                raise ConfigurationError(
                    f"alias {alias!r} already exists in keystore {self.keystore_dir} "
                    f"(key {store.aliases[alias]}); use update-alias to move it"
                )
            kid, _ = self._admin_key(store, key, rec, "CreateAlias")
            store.edit()["aliases"][alias] = kid

        self._call("CreateAlias", key, op)

    def update_alias(self, alias: str, key: str) -> None:
        """Point an existing alias at another key."""

        def op(store: _Store, rec: dict[str, Any]) -> None:
            if alias not in store.aliases:
                raise KeyNotFoundError(
                    f"alias {alias!r} does not exist in keystore {self.keystore_dir}", key_id=alias
                )
            self._admin_key(store, alias, {}, "UpdateAlias")  # admin on the key losing it
            kid, _ = self._admin_key(store, key, rec, "UpdateAlias")
            store.edit()["aliases"][alias] = kid

        self._call("UpdateAlias", key, op)

    def delete_alias(self, alias: str) -> None:
        def op(store: _Store, rec: dict[str, Any]) -> None:
            self._admin_key(store, alias, rec, "DeleteAlias")
            del store.edit()["aliases"][alias]

        self._call("DeleteAlias", alias, op)

    def put_key_policy(self, key: str, policy: Mapping[str, Sequence[str]] | None) -> None:
        """Replace the key policy: ``{principal or "*": [roles]}``; None removes it (then every
        principal may do everything). Needs the admin role under the current policy."""
        checked: dict[str, list[str]] | None = None
        if policy is not None:
            checked = {}
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

        def op(store: _Store, rec: dict[str, Any]) -> None:
            kid, _ = self._admin_key(store, key, rec, "PutKeyPolicy")
            store.edit()["keys"][kid]["policy"] = checked

        self._call("PutKeyPolicy", key, op)

    def get_key_policy(self, key: str) -> dict[str, list[str]] | None:
        def op(store: _Store, rec: dict[str, Any]) -> dict[str, list[str]] | None:
            kid, k = self._admin_key(store, key, rec, "GetKeyPolicy")
            return copy.deepcopy(k["policy"])

        return self._call("GetKeyPolicy", key, op)

    def audit_events(self, key: str | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first; only lines about ``key`` (id or alias) if given.
        Reading the log is not itself audited."""
        try:
            raw = self.audit_file.read_bytes()
        except FileNotFoundError:
            return []
        events = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if key is None:
            return events
        wanted = {key}
        if key.startswith("alias/") and self.keystore_file.exists():
            with self._locked():
                kid = self._load(create=False).aliases.get(key)
            if kid is not None:
                wanted.add(kid)
        return [e for e in events if e.get("key_id") in wanted or e.get("destination_key_id") in wanted]

    # ---------------------------------------------------------------- test seams
    def _set_fault_throttle(self, failures: int, period: int) -> None:
        """Test-only: answer ``failures`` of every ``period`` data-plane calls (all
        processes) with a retryable throttling error; ``(0, 1)`` turns it off."""
        if period < 1 or not 0 <= failures <= period:
            raise ConfigurationError("throttle takes 0 <= failures <= period, period >= 1")
        self.keystore_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            path = self.keystore_dir / _ls.FAULTS_FILE
            if failures == 0:
                path.unlink(missing_ok=True)
            else:
                path.write_text(json.dumps({"throttle": [failures, period], "count": 0}))

    # ================================================================ internals
    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise KmsUnavailableError(
                f"could not lock keystore {self.keystore_dir} within {_LOCK_TIMEOUT_S:.0f}s "
                f"(is a process stuck holding {self.keystore_dir / _ls.LOCK_FILE}?)"
            ) from exc

    def _call(
        self,
        operation: str,
        key_ref: str | None,
        fn: Callable[[_Store, dict[str, Any]], Any],
        *,
        context: Mapping[str, str] | None = None,
        create: bool = False,
        data_plane: bool = False,
    ) -> Any:
        """Run one KMS call under the keystore lock and audit it, whatever the outcome."""
        if not self.keystore_dir.is_dir():
            if not create:
                raise KeyNotFoundError(
                    f"keystore {self.keystore_dir} does not exist; create a key first "
                    f"(spark-kms keys --keystore {self.keystore_dir} create --alias alias/pii)",
                    key_id=key_ref,
                    operation=operation,
                )
            self.keystore_dir.mkdir(parents=True, exist_ok=True)
        request_id = uuid.uuid4().hex
        rec: dict[str, Any] = {"key_id": key_ref, "key_version": None}
        outcome = "ok"
        with self._locked():
            try:
                if data_plane:
                    self._maybe_throttle()
                store = self._load(create=create)
                try:
                    self._apply_due(store, request_id)
                    return fn(store, rec)
                finally:
                    if store.dirty:
                        self._save(store)
            except Exception as exc:
                outcome = _outcome_name(exc)
                raise
            finally:
                self._audit(operation, rec, context or {}, outcome, request_id)

    def _audit(
        self,
        operation: str,
        rec: Mapping[str, Any],
        context: Mapping[str, str],
        outcome: str,
        request_id: str,
        principal: str | None = None,
    ) -> None:
        event: dict[str, Any] = {
            "time": _iso(self._now()),
            "principal": principal or self.principal,
            "operation": operation,
            "key_id": rec.get("key_id"),
            "key_version": None if rec.get("key_version") is None else str(rec["key_version"]),
            "encryption_context": dict(context),
            "outcome": outcome,
            "request_id": request_id,
        }
        if self.request_tag:
            event["request_tag"] = self.request_tag
        for extra in ("destination_key_id", "destination_key_version", "result", "detail"):
            if rec.get(extra) is not None:
                event[extra] = str(rec[extra])
        line = (json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n").encode()
        # O_APPEND + one write() under the lock: lines never interleave across processes.
        fd = os.open(self.audit_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _maybe_throttle(self) -> None:
        path = self.keystore_dir / _ls.FAULTS_FILE
        if not path.exists():
            return
        try:
            faults = json.loads(path.read_text())
            failures, period = faults["throttle"]
            count = int(faults.get("count", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return
        faults["count"] = count + 1
        path.write_text(json.dumps(faults))
        if count % period < failures:
            raise _ThrottledRequest("the local KMS is throttling requests (injected fault)")

    def _root_key(self, *, create: bool) -> bytes | None:
        return _ls.load_root_key(self.keystore_dir, self._root_key_option, create=create)

    def _load(self, *, create: bool) -> _Store:
        path = self.keystore_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            root_key = self._root_key(create=create)
            empty = {"format": _ls.KEYSTORE_FORMAT, "generation": 0, "root_check": None, "keys": {}, "aliases": {}}
            return _Store(path, empty, root_key, exists=False)
        root_key = self._root_key(create=False)
        if root_key is None:
            raise _keystore_error_no_root(self.keystore_dir)
        digest = _root_digest(root_key)
        cache_key = str(path)
        with _CACHE_LOCK:
            cached = _PARSED.get(cache_key)
        if cached is not None and cached[0] == raw and cached[1] == digest:
            return _Store(path, cached[2], root_key, exists=True)
        data = _ls.parse_keystore(raw, path)
        _ls.verify_root_check(root_key, data["root_check"], self.keystore_dir)
        with _CACHE_LOCK:
            _PARSED[cache_key] = (raw, digest, data)
        return _Store(path, data, root_key, exists=True)

    def _save(self, store: _Store) -> None:
        data = store.data
        assert store.root_key is not None
        if not data.get("root_check"):
            data["root_check"] = _ls.make_root_check(store.root_key)
        data["generation"] = int(data.get("generation", 0)) + 1
        raw = json.dumps(data, indent=1, sort_keys=True).encode()
        atomic_write_bytes(store.path, raw)  # temp files are 0600 (mkstemp)
        with _CACHE_LOCK:
            _PARSED[str(store.path)] = (raw, _root_digest(store.root_key), data)

    def _apply_due(self, store: _Store, request_id: str) -> None:
        """Lazy transitions: due deletions destroy keys; due rotations add a version."""
        now = self._now()
        for kid, k in list(store.keys.items()):
            if k["state"] == PENDING_DELETION and k.get("deletion_date") and now >= _parse_time(k["deletion_date"]):
                k = store.edit()["keys"][kid]
                k["state"] = DESTROYED
                k["destroyed_at"] = _iso(now)
                for v in k["versions"].values():
                    v["state"] = DESTROYED
                    v["material"] = None
                self._audit("DeleteKey", {"key_id": kid, "detail": "waiting period over"}, {}, "ok",
                            request_id, principal="system")
            elif (
                k["state"] == ENABLED
                and k.get("rotation_period_days")
                and now >= _parse_time(k["last_rotated_at"]) + timedelta(days=k["rotation_period_days"])
            ):
                version = self._add_version(store, kid, _iso(now))
                store.keys[kid]["last_rotated_at"] = _iso(now)
                self._audit("RotateKey", {"key_id": kid, "key_version": version, "detail": "rotation period"},
                            {}, "ok", request_id, principal="system")

    def _add_version(self, store: _Store, kid: str, now: str) -> int:
        assert store.root_key is not None
        k = store.edit()["keys"][kid]
        version = max((int(v) for v in k["versions"]), default=0) + 1
        material = secrets.token_bytes(32)
        k["versions"][str(version)] = {
            "state": ENABLED,
            "created_at": now,
            "material": _ls.encrypt_material(store.root_key, kid, version, material),
        }
        return version

    def _resolve(self, store: _Store, key: str | None) -> str:
        if not key:
            raise ConfigurationError("a key id (UUID) or alias ('alias/...') is required")
        ref = key[len("local://") :] if key.startswith("local://") else key
        if ref.startswith("alias/"):
            kid = store.aliases.get(ref)
            if kid is None:
                raise KeyNotFoundError(f"alias {ref!r} does not exist in keystore {self.keystore_dir}", key_id=ref)
            return kid
        try:
            kid = str(uuid.UUID(ref))
        except ValueError:
            raise KeyNotFoundError(
                f"{ref!r} is neither a key id (UUID) nor an alias ('alias/...') in keystore {self.keystore_dir}",
                key_id=ref,
            ) from None
        if kid not in store.keys:
            raise KeyNotFoundError(f"key {kid} does not exist in keystore {self.keystore_dir}", key_id=kid)
        return kid

    def _authorize(self, k: Mapping[str, Any], kid: str, role: str | None, operation: str) -> None:
        policy = k.get("policy")
        if policy is None:
            return
        granted = set(policy.get(self.principal, ())) | set(policy.get("*", ()))
        if (role is None and granted) or (role is not None and role in granted):
            return
        need = f"role {role!r}" if role else "a role"
        raise AccessDeniedError(
            f"principal {self.principal!r} may not call {operation} on key {kid}: "
            f"the key policy does not grant it {need}",
            key_id=kid,
            operation=operation,
        )

    def _admin_key(self, store: _Store, key: str, rec: dict[str, Any], operation: str) -> tuple[str, Any]:
        kid = self._resolve(store, key)
        rec["key_id"] = kid
        k = store.keys[kid]
        self._authorize(k, kid, "admin", operation)
        return kid, k

    def _state_error(self, k: Mapping[str, Any], kid: str, operation: str) -> KeyStateError:
        state = k["state"]
        hint = {
            DISABLED: f"enable it with `spark-kms keys enable {kid}`",
            PENDING_DELETION: f"scheduled for deletion on {k.get('deletion_date')}; "
            f"cancel with `spark-kms keys cancel-deletion {kid}`",
            DESTROYED: f"destroyed on {k.get('destroyed_at')}; its material is erased",
        }.get(state, "")
        return KeyStateError(f"key {kid} is {state}: {hint}", key_id=kid, operation=operation)

    def _require_key_usable(self, k: Mapping[str, Any], kid: str, operation: str = "") -> None:
        if k["state"] != ENABLED:
            raise self._state_error(k, kid, operation)

    def _require_version_usable(self, k: Mapping[str, Any], kid: str, version: int, operation: str = "") -> None:
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
            raise KeyStateError(
                f"version {version} of key {kid} is Destroyed: its material is erased and what it "
                "wrapped cannot be decrypted",
                key_id=kid,
                operation=operation,
            )

    @staticmethod
    def _require_spec(k: Mapping[str, Any], kid: str, spec: str, operation: str) -> None:
        if k["spec"] != spec:
            raise ConfigurationError(f"{operation} needs a {spec} key; key {kid} is {k['spec']}")

    def _wrap_target(
        self,
        store: _Store,
        key: str,
        operation: str,
        rec: dict[str, Any],
        *,
        role: str | None = None,
        spec: str = "SYMMETRIC_DEFAULT",
    ) -> tuple[str, int]:
        kid = self._resolve(store, key)
        rec["key_id"] = kid
        k = store.keys[kid]
        self._authorize(k, kid, role or _ROLE_OF[operation], operation)
        self._require_spec(k, kid, spec, operation)
        self._require_key_usable(k, kid, operation)
        enabled = [int(v) for v, info in k["versions"].items() if info["state"] == ENABLED]
        if not enabled:
            raise KeyStateError(
                f"key {kid} has no enabled version to wrap with: enable one or rotate the key",
                key_id=kid,
                operation=operation,
            )
        rec["key_version"] = max(enabled)
        return kid, max(enabled)

    def _seal(self, store: _Store, kid: str, version: int, plaintext: bytes, ctx: Mapping[str, str]) -> bytes:
        header = _ls.pack_blob_header(kid, version)
        nonce = secrets.token_bytes(_ls.NONCE_LEN)
        sealed = AESGCM(store.material(kid, version)).encrypt(
            nonce, plaintext, header + _ls.canonical_context_bytes(ctx)
        )
        return header + nonce + sealed

    def _unseal(
        self,
        store: _Store,
        ciphertext: bytes,
        ctx: Mapping[str, str],
        operation: str,
        rec: dict[str, Any],
        *,
        expected_key: str | None = None,
    ) -> bytes:
        blob = _ls.parse_blob(ciphertext)
        rec["key_id"] = blob.key_id
        rec["key_version"] = blob.version
        if expected_key is not None:
            expected = self._resolve(store, expected_key)
            if expected != blob.key_id:
                raise InvalidCiphertextError(
                    f"the ciphertext was wrapped by key {blob.key_id}, not by key {expected}",
                    key_id=expected,
                    operation=operation,
                )
        if blob.key_id not in store.keys:
            raise KeyNotFoundError(
                f"the ciphertext names key {blob.key_id}, which does not exist in keystore {self.keystore_dir}",
                key_id=blob.key_id,
                operation=operation,
            )
        k = store.keys[blob.key_id]
        self._authorize(k, blob.key_id, _ROLE_OF[operation], operation)
        self._require_spec(k, blob.key_id, "SYMMETRIC_DEFAULT", operation)
        self._require_key_usable(k, blob.key_id, operation)
        self._require_version_usable(k, blob.key_id, blob.version, operation)
        try:
            return AESGCM(store.material(blob.key_id, blob.version)).decrypt(
                blob.nonce, blob.sealed, blob.header + _ls.canonical_context_bytes(ctx)
            )
        except InvalidTag:
            raise InvalidCiphertextError(
                f"the ciphertext does not decrypt under key {blob.key_id} version {blob.version}: "
                "it was tampered with or the encryption context differs",
                key_id=blob.key_id,
                operation=operation,
            ) from None

    def _set_key_state(self, key: str, state: str, operation: str) -> None:
        def op(store: _Store, rec: dict[str, Any]) -> None:
            kid, k = self._admin_key(store, key, rec, operation)
            if k["state"] in (PENDING_DELETION, DESTROYED):
                raise self._state_error(k, kid, operation)
            store.edit()["keys"][kid]["state"] = state

        self._call(operation, key, op)

    def _set_version_state(self, key: str, version: int, state: str, operation: str) -> None:
        def op(store: _Store, rec: dict[str, Any]) -> None:
            kid, k = self._admin_key(store, key, rec, operation)
            rec["key_version"] = version
            if k["state"] == DESTROYED:
                raise self._state_error(k, kid, operation)
            v = k["versions"].get(str(version))
            if v is None:
                raise KeyNotFoundError(f"key {kid} has no version {version}", key_id=kid, operation=operation)
            if v["state"] == DESTROYED:
                raise KeyStateError(
                    f"version {version} of key {kid} is Destroyed; it cannot change state",
                    key_id=kid,
                    operation=operation,
                )
            v = store.edit()["keys"][kid]["versions"][str(version)]
            v["state"] = state
            if state == DESTROYED:
                v["material"] = None
                v["destroyed_at"] = _iso(self._now())

        self._call(operation, key, op)

    def _describe(self, store: _Store, kid: str) -> KeyDescription:
        k = store.keys[kid]
        enabled = [int(v) for v, info in k["versions"].items() if info["state"] == ENABLED]
        period = k.get("rotation_period_days")
        next_rotation = (
            _iso(_parse_time(k["last_rotated_at"]) + timedelta(days=period)) if period and k["state"] == ENABLED else None
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
                "keystore": str(self.keystore_dir),
            },
        )


def _keystore_error_no_root(keystore_dir: Path) -> SparkKmsError:
    return KeystoreError(
        f"keystore {keystore_dir} exists but no root key was given: pass root_key=, set "
        f"{_ls.ROOT_KEY_ENV}, or restore {keystore_dir / _ls.ROOT_KEY_FILE}"
    )


def _outcome_name(exc: BaseException) -> str:
    # Private subclasses report as their public parent, so the log reads in public names.
    for cls in type(exc).__mro__:
        if not cls.__name__.startswith("_"):
            return cls.__name__
    return type(exc).__name__


def _check_alias_name(alias: str) -> None:
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
        raise ConfigurationError(
            f"an alias looks like 'alias/<name>' with letters, digits, '/', '_' or '-', got {alias!r}"
        )


def _check_rotation_period(days: int | None) -> None:
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
        raise ConfigurationError(f"rotation_period_days must be an integer from 1 to 3650, got {days!r}")


class LocalKmsProvider(KmsProvider):
    """KmsProvider for ``local://<key id or alias>`` (see the module docstring for options).

    Only configuration is pickled; each process builds its own :class:`LocalKms`
    (lock handle, cached material) on first use. ``root_key`` is kept out of ``repr``
    and equality. Test seam: option ``_retry`` (a :class:`RetryPolicy`) for how
    injected throttling is retried before ThrottlingError surfaces.
    """

    scheme = "local"
    extra = ""

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        known = {"keystore", "principal", "root_key", "request_tag", "_retry"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(f"unknown local KMS option(s) {unknown}: expected some of {sorted(known)}")
        self.key_ref = key_uri[len("local://") :]
        if not self.key_ref:
            raise ConfigurationError("a local key URI looks like 'local://alias/<name>' or 'local://<key uuid>'")
        ks = options.get("keystore")
        # Resolved here (driver side) so executors use the keystore the job was configured with.
        self.keystore = Path(ks).expanduser().absolute() if ks else default_keystore_dir().absolute()
        self.principal = resolve_principal(options.get("principal"))
        self.retry_policy: RetryPolicy = options.get("_retry") or RetryPolicy()

    def _identity_extra(self) -> Any:
        return (str(self.keystore), self.principal)

    def _make_client(self) -> LocalKms:
        return LocalKms(
            self.keystore,
            principal=self.principal,
            root_key=self.options.get("root_key"),
            request_tag=self.options.get("request_tag"),
        )

    @property
    def kms(self) -> LocalKms:
        return self.client  # type: ignore[no-any-return]

    def _retrying(self, operation: str, fn: Callable[[], Any]) -> Any:
        return call_with_retries(
            fn,
            is_throttle=lambda exc: isinstance(exc, _ThrottledRequest),
            policy=self.retry_policy,
            what=f"local KMS {operation}",
            key_id=self.key_ref,
        )

    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey:
        return self._retrying("GenerateDataKey", lambda: self.kms.generate_data_key(self.key_ref, encryption_context))

    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey:
        return self._retrying("Encrypt", lambda: self.kms.encrypt(self.key_ref, plaintext, encryption_context))

    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytearray:
        return self._retrying(
            "Decrypt",
            lambda: self.kms.decrypt(wrapped.ciphertext, encryption_context, key=wrapped.key_id or None),
        )

    def _reencrypt(
        self,
        wrapped: WrappedKey,
        encryption_context: dict[str, str],
        destination: KmsProvider,
        destination_context: dict[str, str],
    ) -> WrappedKey:
        if isinstance(destination, LocalKmsProvider) and destination.keystore == self.keystore:
            return self._retrying(
                "ReEncrypt",
                lambda: self.kms.reencrypt(
                    wrapped.ciphertext,
                    encryption_context,
                    destination_key=destination.key_ref,
                    destination_context=destination_context,
                ),
            )
        return super()._reencrypt(wrapped, encryption_context, destination, destination_context)

    def _describe_key(self) -> KeyDescription:
        return self._retrying("DescribeKey", lambda: self.kms.describe_key(self.key_ref))
