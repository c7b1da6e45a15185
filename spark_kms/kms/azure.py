"""Azure Key Vault (and Managed HSM) as a spark_kms KMS provider (``azure-kv://`` key URIs).

Key URI: ``azure-kv://<vault-name>.vault.azure.net/keys/<name>[/<version>]``, or for an Azure
Managed HSM pool ``azure-kv://<pool-name>.managedhsm.azure.net/keys/<name>[/<version>]`` (the same
keys API; the SDK asks its credential for the pool's ``https://managedhsm.azure.net`` scope as the
challenge says). Without a version, new wraps use the key's current version (so they follow
rotation); with one, they are pinned to it.

Protection level (``describe_key``): a Managed HSM key is ``hsm`` ("Managed HSM"); a vault key of
type ``RSA-HSM`` / ``EC-HSM`` / ``oct-HSM`` is ``hsm`` ("HSM", Premium tier); any other is ``software``.

Options:

- ``vault_url``: the endpoint to talk to (default ``https://<host of the URI>``); the SDK
  only sends bearer tokens over https.
- ``credential``: an ``azure.core.credentials.TokenCredential`` (default
  ``DefaultAzureCredential()``, built in each process); or ``tenant_id`` + ``client_id`` +
  ``client_secret`` for a ``ClientSecretCredential``. The secret never appears in ``repr``.
  A credential object given here must be picklable to reach Spark executors.
- ``algorithm``: the key-wrap algorithm, ``"RSA-OAEP-256"`` (default, RSA keys) or
  ``"A256KW"`` (Managed HSM AES keys).
- ``verify_challenge_resource`` (default ``True``), ``connection_verify`` (CA bundle),
  ``api_version``, and azure-core's retry settings ``retry_total`` (default 6),
  ``retry_backoff_factor``, ``retry_backoff_max``: 429 answers (with ``Retry-After``) are
  retried by azure-core; after that :class:`~spark_kms.errors.ThrottlingError`.

The principal needs ``keys/get``, ``wrapKey`` and ``unwrapKey`` (e.g. the *Key Vault Crypto
Service Encryption User* role).

Erasure: ``schedule_key_deletion`` deletes the key (``DELETE /keys/<name>``, permission ``keys/delete``).
With soft delete (the default) the key and its versions stay recoverable (``recover``) until the
vault's retention ends (``scheduled_purge_date``), then are purged. Afterwards Key Vault answers 404
for the key; spark_kms reads ``GET /deletedkeys/<name>`` (``keys/get`` on deleted keys, in the
*Key Vault Crypto Officer* role) and raises :class:`~spark_kms.errors.KeyErasedError` when the key is
soft-deleted, :class:`~spark_kms.errors.KeyNotFoundError` when there is no such record either.

Operations: a data key is 32 bytes from ``os.urandom`` wrapped with
``CryptographyClient.wrap_key``; the key is first read (``GET /keys/<name>``: current version,
enabled flag, public key), and for RSA keys the SDK then wraps locally with the public key,
as it is designed to. Unwrapping always goes to Key Vault (``unwrapkey`` on the version that
wrapped). The key version of a wrap is the last segment of the wrap result's key id.

Binding the encryption context: Key Vault's wrap has no associated data, so spark_kms binds
the context itself. The stored wrapped key is::

    0x01 || <Key Vault wrapped DEK> || tag (32 bytes)
    tag = HMAC-SHA256(HKDF-SHA256(DEK, info="spark_kms kms context binding v1"),
                      "spark_kms.encryption_context.v1\\x00" || canonical JSON of the context)

checked after unwrap; only the DEK's holder can compute a tag, so a wrapped key presented
with another context fails with :class:`~spark_kms.errors.InvalidCiphertextError`.
Small payloads (``encrypt``) are enveloped the same way::

    0x02 || u16 length || <0x01 wrapped key K as above> || nonce (12) || AES-256-GCM_K(payload, aad=JSON)
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from datetime import timezone
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyErasedError,
    KeyNotFoundError,
    KeyStateError,
    KmsError,
    KmsUnavailableError,
    MissingExtraError,
    SparkKmsError,
    ThrottlingError,
)
from spark_kms.kms._binding import binding_tag as _binding_tag
from spark_kms.kms._binding import context_bytes as _context_bytes
from spark_kms.kms._binding import wipe as _wipe
from spark_kms.kms.base import DATA_KEY_BYTES, DataKey, KeyDeletion, KeyDescription, KmsProvider, WrappedKey

try:
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.keyvault.keys import KeyClient, KeyVaultKeyIdentifier
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError("the Azure Key Vault provider", "azure") from exc

__all__ = ["AzureKeyVaultProvider"]

T = TypeVar("T")

_FORMAT_KEY = 0x01
_FORMAT_PAYLOAD = 0x02
_TAG_BYTES = 32
_MANAGED_HSM_SUFFIX = ".managedhsm.azure.net"
_ALGORITHMS = {"RSA-OAEP-256": KeyWrapAlgorithm.rsa_oaep_256, "RSA-OAEP": KeyWrapAlgorithm.rsa_oaep,
               "A256KW": KeyWrapAlgorithm.aes_256}
_OPTIONS = {"vault_url", "credential", "tenant_id", "client_id", "client_secret", "algorithm",
            "verify_challenge_resource", "connection_verify", "api_version", "retry_total",
            "retry_backoff_factor", "retry_backoff_max"}


class _Clients:
    """The per-process SDK objects: one KeyClient, one CryptographyClient per key version."""

    def __init__(self, key_client: Any, credential: Any, kwargs: dict[str, Any]) -> None:
        self.key_client = key_client
        self.credential = credential
        self.kwargs = kwargs
        self.crypto: dict[str, Any] = {}


class AzureKeyVaultProvider(KmsProvider):
    """An Azure Key Vault key as a spark_kms KMS key. See the module docstring."""

    scheme = "azure-kv"
    extra = "azure"
    #: ``credential`` is an azure-identity credential object: it holds secrets, and it is not data
    secret_options = frozenset({"client_secret", "credential"})

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ConfigurationError(f"{key_uri}: unknown Azure Key Vault option(s) {sorted(unknown)}")
        rest = key_uri[len("azure-kv://"):]
        parts = rest.split("/")
        if len(parts) not in (3, 4) or not parts[0] or parts[1] != "keys" or not parts[2] or (
                len(parts) == 4 and not parts[3]):
            raise ConfigurationError(
                "an Azure Key Vault key URI looks like 'azure-kv://<vault>.vault.azure.net/keys/<name>[/<version>]' "
                f"(or '<pool>.managedhsm.azure.net' for a Managed HSM), got {key_uri!r}")
        self.vault_host = parts[0]
        #: a Managed HSM pool (``<name>.managedhsm.azure.net``): same keys API, keys always in its HSMs
        self.managed_hsm = self.vault_host.lower().split(":")[0].endswith(_MANAGED_HSM_SUFFIX)
        self.name = parts[2]
        self.pinned_version = parts[3] if len(parts) == 4 else None
        self.vault_url = str(options.get("vault_url") or f"https://{self.vault_host}").rstrip("/")
        algorithm = str(options.get("algorithm", "RSA-OAEP-256"))
        if algorithm not in _ALGORITHMS:
            raise ConfigurationError(f"{key_uri}: algorithm must be one of {sorted(_ALGORITHMS)}, got {algorithm!r}")
        self.algorithm = algorithm
        if any(options.get(k) for k in ("tenant_id", "client_id", "client_secret")) and not all(
                options.get(k) for k in ("tenant_id", "client_id", "client_secret")):
            raise ConfigurationError(f"{key_uri}: a client-secret credential needs tenant_id, client_id and "
                                     "client_secret together")
        #: the key's canonical id (the vault named in the URI, not the endpoint override)
        self.key_id = f"https://{self.vault_host}/keys/{self.name}"

    # -- clients --------------------------------------------------------------------
    def _credential(self) -> Any:
        if self.options.get("credential") is not None:
            return self.options["credential"]
        try:
            from azure.identity import ClientSecretCredential, DefaultAzureCredential
        except ImportError as exc:
            raise MissingExtraError("the Azure Key Vault provider's default credential", "azure") from exc
        if self.options.get("client_secret"):
            return ClientSecretCredential(self.options["tenant_id"], self.options["client_id"],
                                          self.options["client_secret"])
        return DefaultAzureCredential()

    def _make_client(self) -> _Clients:
        kwargs: dict[str, Any] = {
            "verify_challenge_resource": bool(self.options.get("verify_challenge_resource", True)),
            "retry_total": int(self.options.get("retry_total", 6)),
        }
        for name in ("connection_verify", "api_version", "retry_backoff_factor", "retry_backoff_max"):
            if self.options.get(name) is not None:
                kwargs[name] = self.options[name]
        credential = self._credential()
        return _Clients(KeyClient(self.vault_url, credential, **kwargs), credential, kwargs)

    def _crypto_client(self, version: str) -> Any:
        clients: _Clients = self.client
        crypto = clients.crypto.get(version)
        if crypto is None:
            crypto = CryptographyClient(f"{self.vault_url}/keys/{self.name}/{version}", clients.credential,
                                        **clients.kwargs)
            clients.crypto[version] = crypto
        return crypto

    def _call(self, operation: str, fn: Callable[[], T], *, version: str | None = None) -> T:
        """Run SDK calls, translating azure-core errors at the edge (retries are azure-core's)."""
        where = f"Azure Key Vault {operation} on {self.key_id}" + (f" version {version}" if version else "")
        kw = {"key_id": self.key_id, "operation": operation}
        try:
            return fn()
        except SparkKmsError:
            raise
        except ResourceNotFoundError as exc:
            if operation != "ScheduleKeyDeletion" and self._deleted_key() is not None:
                raise KeyErasedError(f"{where}: the key is deleted (soft-deleted, recoverable until it is purged); "
                                     "what it wrapped is erased", **kw) from exc
            raise KeyNotFoundError(f"{where}: no such key or version", **kw) from exc
        except ClientAuthenticationError as exc:
            raise AccessDeniedError(f"{where}: the credential was not accepted (401)", **kw) from exc
        except HttpResponseError as exc:
            status = exc.status_code or 0
            message = str(getattr(exc.error, "message", "") or exc.reason or "")
            if status == 403 and "disabled" in message.lower():
                raise KeyStateError(f"{where}: the key is disabled", **kw) from exc
            if status == 403:
                raise AccessDeniedError(f"{where}: the principal may not do this (403)", **kw) from exc
            if status == 429:
                raise ThrottlingError(f"{where}: still throttled after azure-core's retries "
                                      "(lower the job's parallelism or raise retry_total)", **kw) from exc
            if status == 400 and operation in ("Decrypt", "ReEncrypt"):
                raise InvalidCiphertextError(f"{where}: the wrapped key does not unwrap (tampered or truncated)",
                                             **kw) from exc
            if status >= 500:
                raise KmsUnavailableError(f"{where}: Key Vault answered {status}", **kw) from exc
            raise KmsError(f"{where} failed: HTTP {status} {getattr(exc.error, 'code', '') or ''}".rstrip(),
                           **kw) from exc
        except ServiceRequestError as exc:
            if not self.vault_url.lower().startswith("https"):
                raise ConfigurationError(f"{self.key_uri}: the Azure SDK sends bearer tokens only over https; "
                                         f"vault_url is {self.vault_url!r}") from exc
            raise KmsUnavailableError(f"{where}: Key Vault at {self.vault_url} could not be reached", **kw) from exc
        except ServiceResponseError as exc:
            raise KmsUnavailableError(f"{where}: no usable answer from {self.vault_url}", **kw) from exc
        except ValueError as exc:  # the SDK's not-before / expires-on check of the key
            raise KeyStateError(f"{where}: the key is not valid now ({exc})", **kw) from exc

    def _deleted_key(self) -> Any:
        """The key's soft-deleted record (``GET /deletedkeys/<name>``), or None when there is none or it
        cannot be read (then a 404 stays a KeyNotFoundError: erasure is never claimed without proof)."""
        try:
            return self.client.key_client.get_deleted_key(self.name)
        except (HttpResponseError, ServiceRequestError, ServiceResponseError):
            return None

    # -- wrap / unwrap with the context binding --------------------------------------------
    def _wrap_bound(self, data_key: bytes | bytearray, encryption_context: dict[str, str]) -> WrappedKey:
        def wrap() -> tuple[str, bytes]:
            key = self.client.key_client.get_key(self.name, self.pinned_version)
            if not key.properties.enabled:
                raise KeyStateError(f"Azure Key Vault key {self.key_id} version {key.properties.version} is disabled",
                                    key_id=self.key_id, operation="GenerateDataKey")
            crypto = CryptographyClient(key, self.client.credential, **self.client.kwargs)
            result = crypto.wrap_key(_ALGORITHMS[self.algorithm], bytes(data_key))
            return str(result.key_id), bytes(result.encrypted_key)

        kid, encrypted = self._call("GenerateDataKey", wrap)
        version = KeyVaultKeyIdentifier(kid).version if kid else None
        if not version:
            raise KmsError(f"Azure Key Vault did not say which version of {self.key_id} wrapped the key",
                           key_id=self.key_id, operation="GenerateDataKey")
        blob = bytes([_FORMAT_KEY]) + encrypted + _binding_tag(data_key, encryption_context)
        return WrappedKey(blob, self.key_id, version)

    def _unwrap_bound(self, blob: bytes, version: str, encryption_context: dict[str, str],
                      operation: str = "Decrypt") -> bytearray:
        if len(blob) < 1 + 16 + _TAG_BYTES or blob[0] != _FORMAT_KEY:
            raise InvalidCiphertextError(f"{self.key_id}: not a spark_kms Azure wrapped key (bad header or length)",
                                         key_id=self.key_id, operation=operation)
        encrypted, tag = blob[1:-_TAG_BYTES], blob[-_TAG_BYTES:]
        result = self._call(operation, lambda: self._crypto_client(version).unwrap_key(
            _ALGORITHMS[self.algorithm], encrypted), version=version)
        plaintext = bytearray(result.key)
        if not hmac.compare_digest(_binding_tag(plaintext, encryption_context), tag):
            _wipe(plaintext)
            raise InvalidCiphertextError(
                f"{self.key_id}: the wrapped key (version {version}) was made for another encryption context",
                key_id=self.key_id, operation=operation)
        return plaintext

    # -- the protocol -------------------------------------------------------------------
    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey:
        plaintext = bytearray(os.urandom(DATA_KEY_BYTES))
        try:
            wrapped = self._wrap_bound(plaintext, encryption_context)
        except BaseException:
            _wipe(plaintext)
            raise
        return DataKey(plaintext=plaintext, wrapped=wrapped)

    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey:
        envelope_key = bytearray(AESGCM.generate_key(bit_length=256))
        try:
            inner = self._wrap_bound(envelope_key, encryption_context)
            nonce = os.urandom(12)
            sealed = AESGCM(bytes(envelope_key)).encrypt(nonce, plaintext, _context_bytes(encryption_context))
        finally:
            _wipe(envelope_key)
        blob = bytes([_FORMAT_PAYLOAD]) + struct.pack(">H", len(inner.ciphertext)) + inner.ciphertext + nonce + sealed
        return WrappedKey(blob, self.key_id, inner.key_version)

    def _check_wrapped(self, wrapped: WrappedKey) -> None:
        if not wrapped.key_version:
            raise InvalidCiphertextError(f"{self.key_id}: a wrapped key without a key version cannot be unwrapped "
                                         "(Key Vault needs the version)", key_id=self.key_id, operation="Decrypt")
        if not wrapped.ciphertext:
            raise InvalidCiphertextError(f"{self.key_id}: empty wrapped key", key_id=self.key_id, operation="Decrypt")

    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytearray:
        self._check_wrapped(wrapped)
        blob = wrapped.ciphertext
        if blob[0] == _FORMAT_KEY:
            return self._unwrap_bound(blob, wrapped.key_version, encryption_context)
        if blob[0] != _FORMAT_PAYLOAD or len(blob) < 3:
            raise InvalidCiphertextError(f"{self.key_id}: unknown Azure wrapped-key format {blob[0]:#04x}",
                                         key_id=self.key_id, operation="Decrypt")
        (inner_len,) = struct.unpack(">H", blob[1:3])
        if len(blob) < 3 + inner_len + 12 + 16:
            raise InvalidCiphertextError(f"{self.key_id}: truncated Azure encrypted payload",
                                         key_id=self.key_id, operation="Decrypt")
        inner, nonce, sealed = blob[3:3 + inner_len], blob[3 + inner_len:15 + inner_len], blob[15 + inner_len:]
        envelope_key = self._unwrap_bound(inner, wrapped.key_version, encryption_context)
        try:
            return bytearray(AESGCM(bytes(envelope_key)).decrypt(nonce, sealed, _context_bytes(encryption_context)))
        except InvalidTag as exc:
            raise InvalidCiphertextError(f"{self.key_id}: the encrypted payload does not authenticate",
                                         key_id=self.key_id, operation="Decrypt") from exc
        finally:
            _wipe(envelope_key)

    def _reencrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str], destination: KmsProvider,
                   destination_context: dict[str, str]) -> WrappedKey:
        # Key Vault has no server-side re-encrypt: unwrap here, wrap with the current version.
        # A wrapped data key stays a wrapped data key (format 0x01) when it stays in Azure.
        self._check_wrapped(wrapped)
        if not (isinstance(destination, AzureKeyVaultProvider) and wrapped.ciphertext[0] == _FORMAT_KEY):
            return super()._reencrypt(wrapped, encryption_context, destination, destination_context)
        plaintext = self._unwrap_bound(wrapped.ciphertext, wrapped.key_version, encryption_context, "ReEncrypt")
        try:
            return destination._wrap_bound(plaintext, destination_context)
        finally:
            _wipe(plaintext)

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        """Delete the key (soft delete; needs ``keys/delete``). Key Vault's waiting period is the vault's
        soft-delete retention (7-90 days, set on the vault); ``pending_days`` cannot change it."""
        already = False
        try:
            deleted = self._call("ScheduleKeyDeletion", lambda: self.client.key_client.begin_delete_key(self.name)
                                 .result())
        except KeyNotFoundError:
            deleted = self._deleted_key()
            if deleted is None:
                raise
            already = True
        purge = deleted.scheduled_purge_date
        # no recovery id: soft delete is off in this vault and the key is gone for good
        state = "pending_deletion" if deleted.recovery_id else "destroyed"
        return KeyDeletion(self.key_id, state, purge.astimezone(timezone.utc).isoformat() if purge else None,
                           already=already)

    def _describe_deleted(self) -> KeyDescription | None:
        deleted = self._deleted_key()
        if deleted is None:
            return None
        purge = deleted.scheduled_purge_date
        version = str(deleted.properties.version or "")
        level, detail = self._protection(str(getattr(deleted.key_type, "value", deleted.key_type) or ""))
        return KeyDescription(
            key_id=self.key_id, primary_version=version, enabled=False, state="pending_deletion",
            versions={version: "pending_deletion"} if version else {},
            extra={"vault_url": self.vault_url, "managed_hsm": self.managed_hsm,
                   "deletion_date": purge.astimezone(timezone.utc).isoformat() if purge else None,
                   "recovery_id": deleted.recovery_id},
            protection_level=level,
            protection_detail=detail,
        )

    def _protection(self, key_type: str) -> tuple[str, str]:
        if self.managed_hsm:
            return "hsm", "Managed HSM"
        if key_type.upper().endswith("-HSM"):
            return "hsm", "HSM"
        return "software", "software"

    def _describe_key(self) -> KeyDescription:
        def describe() -> tuple[Any, list[Any]]:
            key = self.client.key_client.get_key(self.name, self.pinned_version)
            versions = list(self.client.key_client.list_properties_of_key_versions(self.name))
            return key, versions

        try:
            key, versions = self._call("DescribeKey", describe)
        except KeyErasedError:
            deleted = self._describe_deleted()
            if deleted is None:
                raise
            return deleted
        key_type = str(getattr(key.key_type, "value", key.key_type) or "")
        level, detail = self._protection(key_type)
        return KeyDescription(
            key_id=self.key_id,
            primary_version=str(key.properties.version),
            enabled=bool(key.properties.enabled),
            state="enabled" if key.properties.enabled else "disabled",
            versions={str(v.version): ("enabled" if v.enabled else "disabled") for v in versions},
            extra={"key_type": key_type, "vault_url": self.vault_url, "managed_hsm": self.managed_hsm,
                   "recovery_level": str(getattr(key.properties.recovery_level, "value",
                                                 key.properties.recovery_level))},
            protection_level=level,
            protection_detail=detail,
        )
