"""The :class:`~spark_kms.kms.base.KmsProvider` of the embedded local KMS (``local://``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timezone
from pathlib import Path
from typing import Any, ClassVar

from spark_kms.errors import ConfigurationError, KeyErasedError, ThrottlingError
from spark_kms.kms.base import DataKey, KeyDeletion, KeyDescription, KmsProvider, WrappedKey
from spark_kms.kms.local._policy import resolve_principal
from spark_kms.kms.local._store import default_keystore_dir
from spark_kms.kms.local.service import LocalKms
from spark_kms.kms.retry import RetryPolicy, call_with_retries

__all__ = ["LocalKmsProvider"]

# One in-process lock per keystore, taken around each call: the keystore's file lock serialises calls
# anyway, and threads of one process (a rotation job's KMS pool) then queue here instead of all polling
# the file lock (which made 16 threads ~2x slower than one).
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_STATE_NAMES = {"PendingDeletion": "pending_deletion", "Destroyed": "destroyed"}


def _thread_lock(keystore: Path) -> threading.RLock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(str(keystore), threading.RLock())


class LocalKmsProvider(KmsProvider):
    """KmsProvider for ``local://<key id or alias>`` (see the package docstring for options).

    Only configuration is pickled; each process builds its own :class:`LocalKms`
    (lock handle, cached material) on first use. ``root_key`` is kept out of ``repr``
    and equality (it is this class's one secret option). A
    :class:`~spark_kms.errors.ThrottlingError` from the service (a ``request_interceptor``
    may raise one; the local KMS has no request quota of its own) is retried with
    :func:`~spark_kms.kms.retry.call_with_retries` before ThrottlingError surfaces.
    Test seam: option ``_retry`` (a :class:`RetryPolicy`) for how it is retried.
    """

    scheme = "local"
    extra = ""
    secret_options: ClassVar[frozenset[str]] = frozenset({"root_key"})

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        known = {"keystore", "principal", "root_key", "request_tag", "request_interceptor", "_retry"}
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
            request_interceptor=self.options.get("request_interceptor"),
        )

    @property
    def kms(self) -> LocalKms:
        return self.client  # type: ignore[no-any-return]

    def _retrying(self, operation: str, fn: Callable[[], Any]) -> Any:
        lock = _thread_lock(self.keystore)

        def locked() -> Any:
            with lock:  # not held while a throttled call backs off
                return fn()

        return call_with_retries(
            locked,
            is_throttle=lambda exc: isinstance(exc, ThrottlingError),
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

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        """ScheduleKeyDeletion (role ``erase`` or ``admin``): PendingDeletion for ``pending_days``
        (7-30), then destroyed; CancelKeyDeletion undoes it meanwhile."""
        try:
            when = self._retrying(
                "ScheduleKeyDeletion", lambda: self.kms.schedule_key_deletion(self.key_ref, pending_days)
            )
        except KeyErasedError:  # PendingDeletion or Destroyed already
            desc = self._describe_key()
            date = desc.extra.get("deletion_date") if desc.state == "PendingDeletion" else None
            return KeyDeletion(desc.key_id, _STATE_NAMES.get(desc.state, desc.state), date, already=True)
        desc = self._describe_key()
        return KeyDeletion(desc.key_id, "pending_deletion", when.astimezone(timezone.utc).isoformat())
