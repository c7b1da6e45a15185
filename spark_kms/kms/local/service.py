"""The embedded local KMS service: :class:`LocalKms`, the data plane over one keystore.

Each call is served by :meth:`LocalKms._call`: it takes the keystore lock, reads the
keystore (``_store``), applies due rotations and deletions, runs the operation, saves
the keystore if it changed, and appends one audit line (``_audit``) whatever the
outcome. Key management is in ``_admin`` (mixed into :class:`LocalKms`), the per-key
checks in ``_keys``, the policy checks in ``_policy``.

Logging: each call served (and each lazy transition) is logged at DEBUG on this
module's logger -- operation, key id and version, encryption context, principal,
outcome, request id; the same facts as its audit line, never key bytes, plaintext or
the root key. The library configures no handler: it is silent unless the application
enables the ``spark_kms.kms.local`` logger.

Extension point, *request interceptor*: ``LocalKms(request_interceptor=fn)`` (provider
option ``request_interceptor``) makes every data-plane call (GenerateDataKey, Encrypt,
Decrypt, ReEncrypt, GenerateMac, VerifyMac, DescribeKey) first call
``fn(operation, keystore_dir)``, under the keystore lock, before the keystore is read.
An exception it raises fails the call and is audited as its outcome (under the name of
its first public class); the provider retries a :class:`~spark_kms.errors.ThrottlingError`
with its retry policy, as it would a real KMS's. ``fn`` runs in every process the
provider is pickled to, so it must pickle; state it shares across processes belongs in
the keystore directory, where the lock held around ``fn`` serialises it.
The test helpers of :mod:`spark_kms.testing` use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.errors import (
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    KmsUnavailableError,
)
from spark_kms.kms.base import DataKey, KeyDescription, WrappedKey, canonical_context
from spark_kms.kms.local import _audit, _keys, _policy, _store
from spark_kms.kms.local._admin import _AdminOperations
from spark_kms.kms.local._keys import DESTROYED, ENABLED, PENDING_DELETION
from spark_kms.kms.local._store import KeystoreLock, KeystoreView

__all__ = ["LocalKms", "RequestInterceptor"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ``fn(operation, keystore_dir)``, called before each data-plane call (see the module docstring)
RequestInterceptor = Callable[[str, Path], None]

#: keystores this process has served a call from (read a keystore file and answered)
_SERVED_KEYSTORES: set[Path] = set()
#: calls that carry a wrapped key: some keystore made it, so "create a key first" cannot be the fix
_UNWRAP_OPERATIONS = frozenset({"Decrypt", "ReEncrypt"})


class LocalKms(_AdminOperations):
    """Admin and data-plane API over one keystore directory (see the module docstring).

    :param keystore_dir: the keystore directory (created on the first key creation).
    :param principal: who is calling; default ``$SPARK_KMS_PRINCIPAL``, else the OS user.
    :param root_key: 32 bytes (or their base64); default ``$SPARK_KMS_ROOT_KEY`` (base64), else
        ``<keystore>/root.key`` (created 0600 on first use -- a convenience that puts the
        root key next to the store; production should inject it).
    :param clock: returns the current time as an aware UTC datetime (tests inject one).
    :param request_tag: written into every audit line this object makes (e.g. a job's run id).
    :param request_interceptor: called as ``request_interceptor(operation, keystore_dir)``
        before each data-plane call, under the keystore lock; see the module docstring.
    """

    def __init__(
        self,
        keystore_dir: str | os.PathLike[str],
        *,
        principal: str | None = None,
        root_key: bytes | str | None = None,
        clock: Callable[[], datetime] | None = None,
        request_tag: str | None = None,
        request_interceptor: RequestInterceptor | None = None,
    ) -> None:
        self.keystore_dir = Path(keystore_dir).expanduser().absolute()
        # Written into every audit line this object makes (e.g. a job's run id), so the
        # audit log ties a call to the job even where the encryption context cannot change.
        self.request_tag = request_tag
        self.principal = _policy.resolve_principal(principal)
        if isinstance(root_key, str):  # base64, as in $SPARK_KMS_ROOT_KEY (JSON-able job options)
            try:
                root_key = base64.b64decode(root_key, validate=True)
            except ValueError:
                raise ConfigurationError("root_key must be 32 bytes, or their base64") from None
        if root_key is not None and (not isinstance(root_key, (bytes, bytearray)) or len(root_key) != 32):
            raise ConfigurationError("root_key must be 32 bytes (AES-256), or their base64")
        if request_interceptor is not None and not callable(request_interceptor):
            raise ConfigurationError(
                f"request_interceptor must be a callable (operation, keystore_dir), "
                f"got {type(request_interceptor).__name__}"
            )
        self._root_key_option = bytes(root_key) if root_key is not None else None
        self._clock = clock or _keys.utcnow
        self._request_interceptor = request_interceptor
        self._lock = KeystoreLock(self.keystore_dir)

    def __repr__(self) -> str:
        return f"LocalKms({str(self.keystore_dir)!r}, principal={self.principal!r})"

    def __reduce__(self) -> Any:
        raise TypeError("LocalKms holds a lock and a root key; pickle a LocalKmsProvider instead")

    @property
    def keystore_file(self) -> Path:
        return self.keystore_dir / _store.KEYSTORE_FILE

    @property
    def audit_file(self) -> Path:
        return self.keystore_dir / _store.AUDIT_FILE

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ConfigurationError("the LocalKms clock must return timezone-aware datetimes")
        return now

    # ================================================================ data plane
    def generate_data_key(self, key: str, encryption_context: Mapping[str, str] | None = None) -> DataKey:
        """GenerateDataKey: 32 random bytes and their wrap under the key's primary version."""
        ctx = canonical_context(encryption_context)

        def op(store: KeystoreView, rec: dict[str, Any]) -> DataKey:
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

        def op(store: KeystoreView, rec: dict[str, Any]) -> WrappedKey:
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

        def op(store: KeystoreView, rec: dict[str, Any]) -> bytearray:
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

        def op(store: KeystoreView, rec: dict[str, Any]) -> WrappedKey:
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

        def op(store: KeystoreView, rec: dict[str, Any]) -> bytes:
            kid, version = self._wrap_target(store, key, "GenerateMac", rec, spec="HMAC_256")
            tag = hmac.new(store.material(kid, version), bytes(message), hashlib.sha256).digest()
            return _store.MAC_MAGIC + bytes([1]) + version.to_bytes(4, "big") + tag

        return self._call("GenerateMac", key, op, data_plane=True)

    def verify_mac(self, key: str, message: bytes, mac: bytes) -> bool:
        """VerifyMac: whether ``mac`` (from :meth:`generate_mac`) matches ``message``."""

        def op(store: KeystoreView, rec: dict[str, Any]) -> bool:
            kid = _keys.resolve_key(store, key, self.keystore_dir)
            rec["key_id"] = kid
            k = store.keys[kid]
            _policy.authorize(k, kid, self.principal, "decrypt", "VerifyMac")
            _keys.require_spec(k, kid, "HMAC_256", "VerifyMac")
            _keys.require_key_usable(k, kid)
            if len(mac) != 39 or mac[:2] != _store.MAC_MAGIC or mac[2] != 1:
                rec["result"] = "invalid"
                return False
            version = int.from_bytes(mac[3:7], "big")
            rec["key_version"] = version
            _keys.require_version_usable(k, kid, version)
            expected = hmac.new(store.material(kid, version), bytes(message), hashlib.sha256).digest()
            ok = hmac.compare_digest(expected, mac[7:])
            rec["result"] = "valid" if ok else "invalid"
            return ok

        return self._call("VerifyMac", key, op, data_plane=True)

    def describe_key(self, key: str) -> KeyDescription:
        """DescribeKey (any role on the key)."""

        def op(store: KeystoreView, rec: dict[str, Any]) -> KeyDescription:
            kid = _keys.resolve_key(store, key, self.keystore_dir)
            rec["key_id"] = kid
            _policy.authorize(store.keys[kid], kid, self.principal, None, "DescribeKey")
            return _keys.describe(store, kid, self.keystore_dir)

        return self._call("DescribeKey", key, op, data_plane=True)

    def list_keys(self) -> list[KeyDescription]:
        """ListKeys: every key in the keystore (destroyed ones included, by state)."""

        def op(store: KeystoreView, rec: dict[str, Any]) -> list[KeyDescription]:
            return [
                _keys.describe(store, kid, self.keystore_dir)
                for kid in sorted(store.keys, key=lambda k: store.keys[k]["created_at"])
            ]

        if not self.keystore_file.exists():
            return []
        return self._call("ListKeys", None, op)

    def list_aliases(self) -> dict[str, str]:
        """Alias -> key id."""
        if not self.keystore_file.exists():
            return {}
        return self._call("ListAliases", None, lambda store, rec: dict(sorted(store.aliases.items())))

    # ================================================================ internals
    def _locked(self) -> KeystoreLock:
        return self._lock

    def _call(
        self,
        operation: str,
        key_ref: str | None,
        fn: Callable[[KeystoreView, dict[str, Any]], T],
        *,
        context: Mapping[str, str] | None = None,
        create: bool = False,
        data_plane: bool = False,
    ) -> T:
        """Run one KMS call under the keystore lock and audit it, whatever the outcome.

        A missing keystore (no directory, or no keystore file in it) is *unavailable*
        (:class:`KmsUnavailableError`, transient: a volume unmounted or a directory moved away
        mid-job) when this process has served a call from it before, or when the call unwraps a
        key that a keystore wrapped (Decrypt, ReEncrypt). Otherwise it was never created here:
        :class:`KeyNotFoundError`, "create a key first".
        """
        if not self.keystore_dir.is_dir():
            if not create:
                if self._keystore_was_there(operation):
                    raise self._keystore_gone(operation, key_ref)
                raise KeyNotFoundError(
                    f"keystore {self.keystore_dir} does not exist; create a key first "
                    f"(spark-kms keys --keystore {self.keystore_dir} create --alias alias/pii)",
                    key_id=key_ref,
                    operation=operation,
                )
            _store.make_keystore_dir(self.keystore_dir)
        request_id = uuid.uuid4().hex
        rec: dict[str, Any] = {"key_id": key_ref, "key_version": None}
        outcome = "ok"
        with self._locked():
            try:
                if data_plane and self._request_interceptor is not None:
                    self._request_interceptor(operation, self.keystore_dir)
                store = self._load(create=create)
                if not store.exists and not create and self._keystore_was_there(operation):
                    raise self._keystore_gone(operation, key_ref)
                try:
                    self._apply_due(store, request_id)
                    result = fn(store, rec)
                finally:
                    if store.dirty:
                        self._save(store)
                if store.exists:
                    _SERVED_KEYSTORES.add(self.keystore_dir)
                return result
            except Exception as exc:
                outcome = _audit.outcome_name(exc)
                raise
            finally:
                self._audit(operation, rec, context or {}, outcome, request_id)

    def _keystore_was_there(self, operation: str) -> bool:
        return self.keystore_dir in _SERVED_KEYSTORES or operation in _UNWRAP_OPERATIONS

    def _keystore_gone(self, operation: str, key_ref: str | None) -> KmsUnavailableError:
        if self.keystore_dir in _SERVED_KEYSTORES:
            why = "after serving this process: it was moved, unmounted or deleted while in use; restore it"
        else:
            why = (f"although a keystore made the wrapped key this {operation} needs: it was moved, unmounted "
                   "or deleted, or the keystore option points to the wrong directory; restore it or point to it")
        return KmsUnavailableError(
            f"keystore {self.keystore_dir} is missing (no keystore file there) {why}, then run again",
            key_id=key_ref,
            operation=operation,
        )

    def _audit(
        self,
        operation: str,
        rec: Mapping[str, Any],
        context: Mapping[str, str],
        outcome: str,
        request_id: str,
        principal: str | None = None,
    ) -> None:
        event = _audit.make_event(
            time=_keys.iso(self._now()),
            principal=principal or self.principal,
            operation=operation,
            rec=rec,
            context=context,
            outcome=outcome,
            request_id=request_id,
            request_tag=self.request_tag,
        )
        _audit.append_event(self.audit_file, event)
        logger.debug(
            "local KMS %s: key %s version %s, encryption context %s, principal %s, outcome %s "
            "(keystore %s, request %s)",
            operation, event["key_id"], event["key_version"], event["encryption_context"],
            event["principal"], outcome, self.keystore_dir, request_id,
        )

    def _load(self, *, create: bool) -> KeystoreView:
        return _store.load_keystore(self.keystore_dir, self._root_key_option, create=create)

    def _save(self, store: KeystoreView) -> None:
        _store.save_keystore(store)

    def _apply_due(self, store: KeystoreView, request_id: str) -> None:
        """Lazy transitions: due deletions destroy keys; due rotations add a version."""
        now = self._now()
        for kid, k in list(store.keys.items()):
            if (
                k["state"] == PENDING_DELETION
                and k.get("deletion_date")
                and now >= _keys.parse_time(k["deletion_date"])
            ):
                k = store.edit()["keys"][kid]
                k["state"] = DESTROYED
                k["destroyed_at"] = _keys.iso(now)
                for v in k["versions"].values():
                    v["state"] = DESTROYED
                    v["material"] = None
                self._audit("DeleteKey", {"key_id": kid, "detail": "waiting period over"}, {}, "ok",
                            request_id, principal="system")
            elif (
                k["state"] == ENABLED
                and k.get("rotation_period_days")
                and now >= _keys.parse_time(k["last_rotated_at"]) + timedelta(days=k["rotation_period_days"])
            ):
                version = _keys.add_version(store, kid, _keys.iso(now))
                store.keys[kid]["last_rotated_at"] = _keys.iso(now)
                self._audit("RotateKey", {"key_id": kid, "key_version": version, "detail": "rotation period"},
                            {}, "ok", request_id, principal="system")

    def _wrap_target(
        self,
        store: KeystoreView,
        key: str,
        operation: str,
        rec: dict[str, Any],
        *,
        role: str | None = None,
        spec: str = "SYMMETRIC_DEFAULT",
    ) -> tuple[str, int]:
        kid = _keys.resolve_key(store, key, self.keystore_dir)
        rec["key_id"] = kid
        k = store.keys[kid]
        _policy.authorize(k, kid, self.principal, role or _policy.ROLE_OF[operation], operation)
        _keys.require_spec(k, kid, spec, operation)
        _keys.require_key_usable(k, kid, operation)
        enabled = _keys.enabled_versions(k)
        if not enabled:
            raise KeyStateError(
                f"key {kid} has no enabled version to wrap with: enable one or rotate the key",
                key_id=kid,
                operation=operation,
            )
        rec["key_version"] = max(enabled)
        return kid, max(enabled)

    def _seal(
        self, store: KeystoreView, kid: str, version: int, plaintext: bytes, ctx: Mapping[str, str]
    ) -> bytes:
        header = _store.pack_blob_header(kid, version)
        nonce = secrets.token_bytes(_store.NONCE_LEN)
        sealed = AESGCM(store.material(kid, version)).encrypt(
            nonce, plaintext, header + _store.canonical_context_bytes(ctx)
        )
        return header + nonce + sealed

    def _unseal(
        self,
        store: KeystoreView,
        ciphertext: bytes,
        ctx: Mapping[str, str],
        operation: str,
        rec: dict[str, Any],
        *,
        expected_key: str | None = None,
    ) -> bytes:
        blob = _store.parse_blob(ciphertext)
        rec["key_id"] = blob.key_id
        rec["key_version"] = blob.version
        if expected_key is not None:
            expected = _keys.resolve_key(store, expected_key, self.keystore_dir)
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
        _policy.authorize(k, blob.key_id, self.principal, _policy.ROLE_OF[operation], operation)
        _keys.require_spec(k, blob.key_id, "SYMMETRIC_DEFAULT", operation)
        _keys.require_key_usable(k, blob.key_id, operation)
        _keys.require_version_usable(k, blob.key_id, blob.version, operation)
        try:
            return AESGCM(store.material(blob.key_id, blob.version)).decrypt(
                blob.nonce, blob.sealed, blob.header + _store.canonical_context_bytes(ctx)
            )
        except InvalidTag:
            raise InvalidCiphertextError(
                f"the ciphertext does not decrypt under key {blob.key_id} version {blob.version}: "
                "it was tampered with or the encryption context differs",
                key_id=blob.key_id,
                operation=operation,
            ) from None
