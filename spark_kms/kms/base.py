"""The KMS provider protocol every backend implements.

A provider is bound to one *key URI* (``local://alias/pii``,
``aws-kms://arn:aws:kms:...``, ``gcp-kms://projects/...``, ``azure-kv://...``,
``vault://...``) plus plain options. It is picklable: the vendor client is built
lazily, per process, on first use and never pickled (Spark ships providers to
executors by pickling them).

Public methods do the shared work (validation, call metrics, retries of
throttled calls, error context) and call the ``_``-prefixed abstract method the
backend implements, in the manner of the AWS Encryption SDK's master keys.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spark_kms.errors import ConfigurationError, InvalidCiphertextError, KmsError

__all__ = [
    "DataKey",
    "KeyDeletion",
    "KeyDescription",
    "KmsProvider",
    "PROTECTION_LEVELS",
    "WrappedKey",
    "canonical_context",
    "kms_call_counts",
    "reset_kms_call_counts",
]

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096
DATA_KEY_BYTES = 32

# Process-wide counters of KMS operations, by (scheme, operation). Spark tasks
# report their delta in commit messages; tests and benchmarks read them.
_CALLS: Counter[tuple[str, str]] = Counter()
_CALLS_LOCK = threading.Lock()


def _count(scheme: str, operation: str) -> None:
    with _CALLS_LOCK:
        _CALLS[(scheme, operation)] += 1


def _log_call(operation: str, key_uri: str, context: Mapping[str, str], key: str = "", version: str = "") -> None:
    # Key ids, versions and encryption contexts only: never key bytes or payloads.
    if logger.isEnabledFor(logging.DEBUG):
        which = f" (key {key}, version {version})" if key else ""
        logger.debug("KMS %s on %s%s, encryption context %s", operation, key_uri, which, dict(context))


def kms_call_counts() -> dict[str, int]:
    """KMS operations this process made, as ``{"<scheme>:<Operation>": n}``."""
    with _CALLS_LOCK:
        return {f"{scheme}:{op}": n for (scheme, op), n in sorted(_CALLS.items())}


def reset_kms_call_counts() -> None:
    with _CALLS_LOCK:
        _CALLS.clear()


def canonical_context(encryption_context: Mapping[str, str] | None) -> dict[str, str]:
    """Validate an encryption context: a flat mapping of str to str (as AWS KMS requires)."""
    if not encryption_context:
        return {}
    out: dict[str, str] = {}
    for k, v in encryption_context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigurationError("encryption context must map str to str")
        out[k] = v
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class WrappedKey:
    """A key (or small payload) encrypted under a KMS key.

    :param ciphertext: the opaque bytes the KMS returned (store them).
    :param key_id: canonical id of the wrapping key (ARN, resource name, key id...).
    :param key_version: the version of that key that wrapped it, as a string
        (``"1"``, ``"3"``, a GCP ``cryptoKeyVersions/N`` number, an Azure version id...).
    """

    ciphertext: bytes
    key_id: str
    key_version: str

    def __repr__(self) -> str:  # ciphertext is not secret, but it is noise
        return f"WrappedKey(key_id={self.key_id!r}, key_version={self.key_version!r}, {len(self.ciphertext)} bytes)"


@dataclass(eq=False)
class DataKey:
    """A fresh data key: the plaintext (a wipeable buffer) and its wrapped form.

    The plaintext never appears in ``repr``. Call :meth:`wipe` when done, or use
    the object as a context manager. Python and OpenSSL may still hold copies we
    cannot reach; see docs/ARCHITECTURE.md ("What wiping can and cannot do").
    """

    plaintext: bytearray = field(repr=False)
    wrapped: WrappedKey

    def wipe(self) -> None:
        for i in range(len(self.plaintext)):
            self.plaintext[i] = 0

    def __enter__(self) -> DataKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __repr__(self) -> str:
        return f"DataKey(wrapped={self.wrapped!r}, plaintext=<{len(self.plaintext)} bytes hidden>)"


@dataclass(frozen=True)
class KeyDescription:
    """What a KMS says about a key.

    :param key_id: canonical key id.
    :param primary_version: the version new wraps use.
    :param versions: every known version and its state (``enabled``, ``disabled``,
        ``pending_deletion``, ``destroyed``), where the KMS exposes them.
    :param enabled: whether the key may be used at all.
    :param state: the key's overall state as the KMS names it.
    :param extra: backend-specific facts (aliases, rotation period, tags...).
    :param protection_level: what guards the key material, as the KMS reports it, in one of
        :data:`PROTECTION_LEVELS`: ``software`` (a software keystore), ``hsm`` (a hardware security
        module: an HSM-backed cloud key, a CloudHSM custom key store, Azure Managed HSM, a PKCS#11 token) or
        ``external`` (an external key manager: GCP EXTERNAL / EXTERNAL_VPC, AWS external key store).
    :param protection_detail: the vendor's own words (``"HSM"``, ``"AWS_CLOUDHSM"``, ``"Managed HSM"``...).
    """

    key_id: str
    primary_version: str
    enabled: bool
    state: str = "enabled"
    versions: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    protection_level: str = "software"
    protection_detail: str = ""

    @property
    def erased(self) -> bool:
        """Whether the key is scheduled for deletion or destroyed (the key itself, or its primary
        version), so that what it wrapped is erased. A *disabled* key is not erased: it can come back."""
        if _erased_state(self.state):
            return True
        return bool(self.primary_version) and _erased_state(self.versions.get(self.primary_version, ""))


#: state names (lower case, without ``_``) that mean scheduled for deletion or destroyed, as providers
#: spell them: ``pending_deletion`` / ``PendingDeletion``, ``destroyed``, ``destroy_scheduled``
_ERASED_STATES = frozenset({"pendingdeletion", "destroyed", "destroyscheduled"})


def _erased_state(state: str) -> bool:
    return str(state).replace("_", "").lower() in _ERASED_STATES


@dataclass(frozen=True)
class KeyDeletion:
    """What :meth:`KmsProvider.schedule_key_deletion` did.

    :param key_id: canonical id of the key scheduled for deletion.
    :param state: the key's state afterwards (``pending_deletion``, or ``destroyed`` where the KMS
        destroys at once).
    :param deletion_date: when the KMS destroys the key material for good (ISO 8601, UTC), or None
        when it is destroyed already or the KMS does not say.
    :param already: the key was already scheduled for deletion or destroyed before this call (then
        nothing changed, and ``deletion_date`` is the one scheduled earlier).
    """

    key_id: str
    state: str
    deletion_date: str | None
    already: bool = False


#: the protection levels a key description names (:attr:`KeyDescription.protection_level`)
PROTECTION_LEVELS = ("software", "hsm", "external")


class KmsProvider(ABC):
    """A KMS bound to one key, described by a key URI and options.

    Backends set ``scheme`` and implement the ``_`` methods. They must not keep a
    vendor client in ``__dict__`` under a name other than ``_client`` (dropped
    when pickling); build it in :meth:`_make_client`.
    """

    scheme: ClassVar[str] = ""
    #: the extra that installs this backend's SDK
    extra: ClassVar[str] = ""
    #: option names whose values are secrets (root keys, tokens, client secrets): never shown in
    #: a repr, persisted with a saved stage or run record, or written to a log
    secret_options: ClassVar[frozenset[str]] = frozenset()
    #: the most requests of :meth:`reencrypt_many` worth having in flight against this backend (None: no
    #: cap beyond the caller's ``concurrency``); e.g. a KMS that serialises every call under one lock
    max_concurrency: ClassVar[int | None] = None

    def __init__(self, key_uri: str, **options: Any) -> None:
        if not key_uri.startswith(f"{self.scheme}://"):
            raise ConfigurationError(f"{type(self).__name__} takes '{self.scheme}://...' key URIs, got {key_uri!r}")
        self.key_uri = key_uri
        self.options = dict(options)
        self._client: Any = None

    # -- pickling: config only, never clients ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key_uri!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (self.key_uri, self.public_options()) == (
            other.key_uri,  # type: ignore[attr-defined]
            other.public_options(),  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.key_uri))

    def public_options(self) -> dict[str, Any]:
        """The options without the ones this class declares secret."""
        return {k: v for k, v in self.options.items() if k not in self.secret_options}

    def cache_identity(self) -> str:
        """Who asks, and through which key: part of the cache key of unwrapped data keys, so the
        same wrapped key read in one process through another principal or other credentials goes
        back to the KMS (its policy decides, its audit log records) instead of hitting the cache.

        A digest of the backend, key URI, options (secrets included, never stored in clear) and
        :meth:`_identity_extra`. Ambient credentials a vendor SDK finds on its own (environment,
        instance metadata) are not part of it.
        """
        digest = hashlib.sha256()
        for part in (type(self).__qualname__, self.key_uri, repr(self._identity_extra())):
            digest.update(part.encode() + b"\0")
        for name, value in sorted(self.options.items()):
            digest.update(f"{name}={value!r}".encode() + b"\0")
        return digest.hexdigest()

    def _identity_extra(self) -> Any:
        """What identifies the caller beyond the options (e.g. a principal read from the environment)."""
        return None

    @property
    def client(self) -> Any:
        """The vendor client of this process, built on first use."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        return None

    # -- the protocol ---------------------------------------------------------
    def generate_data_key(self, encryption_context: Mapping[str, str] | None = None) -> DataKey:
        """A new 256-bit data key, wrapped under this provider's key (GenerateDataKey)."""
        ctx = canonical_context(encryption_context)
        _count(self.scheme, "GenerateDataKey")
        _log_call("GenerateDataKey", self.key_uri, ctx)
        key = self._generate_data_key(ctx)
        if len(key.plaintext) != DATA_KEY_BYTES:
            size = len(key.plaintext)
            key.wipe()
            raise KmsError(f"{self.key_uri}: the KMS returned a data key of {size} bytes, not {DATA_KEY_BYTES}",
                           key_id=key.wrapped.key_id, operation="GenerateDataKey")
        return key

    def decrypt_data_key(
        self, wrapped: WrappedKey, encryption_context: Mapping[str, str] | None = None
    ) -> bytearray:
        """Unwrap a data key. ``wrapped.key_id`` says which key wrapped it."""
        ctx = canonical_context(encryption_context)
        _count(self.scheme, "Decrypt")
        _log_call("Decrypt", self.key_uri, ctx, wrapped.key_id, wrapped.key_version)
        plaintext = bytearray(self._decrypt(wrapped, ctx))
        if len(plaintext) != DATA_KEY_BYTES:
            size = len(plaintext)
            plaintext[:] = bytes(size)
            raise InvalidCiphertextError(
                f"{self.key_uri}: key {wrapped.key_id} version {wrapped.key_version} unwrapped to {size} bytes, "
                f"not a {DATA_KEY_BYTES}-byte data key", key_id=wrapped.key_id, operation="Decrypt")
        return plaintext

    def encrypt(self, plaintext: bytes, encryption_context: Mapping[str, str] | None = None) -> WrappedKey:
        """Encrypt a small payload (at most 4 KiB) under this provider's key."""
        if len(plaintext) > MAX_PAYLOAD_BYTES:
            raise ConfigurationError(f"KMS payloads are at most {MAX_PAYLOAD_BYTES} bytes, got {len(plaintext)}")
        ctx = canonical_context(encryption_context)
        _count(self.scheme, "Encrypt")
        _log_call("Encrypt", self.key_uri, ctx)
        return self._encrypt(bytes(plaintext), ctx)

    def decrypt(self, wrapped: WrappedKey, encryption_context: Mapping[str, str] | None = None) -> bytes:
        """Decrypt a small payload made by :meth:`encrypt`."""
        ctx = canonical_context(encryption_context)
        _count(self.scheme, "Decrypt")
        _log_call("Decrypt", self.key_uri, ctx, wrapped.key_id, wrapped.key_version)
        return bytes(self._decrypt(wrapped, ctx))

    def reencrypt(
        self,
        wrapped: WrappedKey,
        encryption_context: Mapping[str, str] | None = None,
        *,
        destination: KmsProvider | None = None,
        destination_context: Mapping[str, str] | None = None,
    ) -> WrappedKey:
        """Re-wrap a wrapped key under the current primary version of ``destination``
        (default: this provider's key), without the caller seeing the plaintext where
        the KMS supports it server-side (AWS ReEncrypt, Vault rewrap)."""
        ctx = canonical_context(encryption_context)
        dest = destination if destination is not None else self
        dctx = canonical_context(destination_context) if destination_context is not None else ctx
        _count(self.scheme, "ReEncrypt")
        _log_call("ReEncrypt", f"{self.key_uri} -> {dest.key_uri}", ctx, wrapped.key_id, wrapped.key_version)
        return self._reencrypt(wrapped, ctx, dest, dctx)

    def reencrypt_many(
        self,
        items: Sequence[tuple[WrappedKey, Mapping[str, str] | None]],
        *,
        destination: KmsProvider | None = None,
        concurrency: int = 1,
        on_result: Callable[[int, WrappedKey], None] | None = None,
    ) -> list[WrappedKey]:
        """:meth:`reencrypt` of many ``(wrapped key, encryption context)`` pairs, each keeping its
        context, with up to ``concurrency`` KMS requests in flight
        (:func:`spark_kms.kms.concurrent.bounded_map`: results in input order, ``on_result`` called in
        the calling thread as each one is done, the first error raised once the calls in flight end).

        Backends with a batch endpoint override it (Vault Transit: ``rewrap`` with ``batch_input``);
        either way the call counters record one ReEncrypt per item, and the error raised carries the
        failed item's position as ``item_index``.
        """
        from spark_kms.kms.concurrent import bounded_map

        return bounded_map(
            lambda item: self.reencrypt(item[0], item[1], destination=destination, destination_context=item[1]),
            items, concurrency=min(concurrency, self.max_concurrency or concurrency), on_result=on_result,
        )

    def describe_key(self) -> KeyDescription:
        """What the KMS says about this provider's key."""
        _count(self.scheme, "DescribeKey")
        _log_call("DescribeKey", self.key_uri, {})
        return self._describe_key()

    def schedule_key_deletion(self, pending_days: int = 7) -> KeyDeletion:
        """Erase this provider's key through the KMS's own deletion (crypto-shredding): after this,
        Decrypt, GenerateDataKey and ReEncrypt against the key raise
        :class:`~spark_kms.errors.KeyErasedError` (or :class:`~spark_kms.errors.KeyNotFoundError` where
        the KMS deletes at once and cannot tell a deleted key from a missing one). ``pending_days`` is
        the waiting period where the KMS has one; docs/PROVIDERS.md ("Erasing a key") says what each
        KMS does and which permission it needs. Idempotent: a key already scheduled for deletion or
        destroyed gives its :class:`KeyDeletion` with ``already=True``.
        """
        if not isinstance(pending_days, int) or isinstance(pending_days, bool) or pending_days < 1:
            raise ConfigurationError(f"pending_days is a whole number of days >= 1, got {pending_days!r}")
        _count(self.scheme, "ScheduleKeyDeletion")
        _log_call("ScheduleKeyDeletion", self.key_uri, {})
        deletion = self._schedule_key_deletion(pending_days)
        logger.info("KMS key %s (%s) %s: %s, deletion date %s", deletion.key_id, self.key_uri,
                    "was already scheduled for deletion" if deletion.already else "scheduled for deletion",
                    deletion.state, deletion.deletion_date or "not given")
        return deletion

    # -- what a backend implements -------------------------------------------
    @abstractmethod
    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey: ...

    @abstractmethod
    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey: ...

    @abstractmethod
    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytes | bytearray: ...

    @abstractmethod
    def _describe_key(self) -> KeyDescription: ...

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        raise ConfigurationError(
            f"{self.scheme} keys cannot be scheduled for deletion by spark_kms: destroy the key in the KMS"
        )

    def _reencrypt(
        self,
        wrapped: WrappedKey,
        encryption_context: dict[str, str],
        destination: KmsProvider,
        destination_context: dict[str, str],
    ) -> WrappedKey:
        # Client-side fallback: unwrap here, wrap there, wipe the plaintext.
        plaintext = bytearray(self._decrypt(wrapped, encryption_context))
        try:
            return destination._encrypt(bytes(plaintext), destination_context)
        finally:
            for i in range(len(plaintext)):
                plaintext[i] = 0


