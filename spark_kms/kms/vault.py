"""HashiCorp Vault Transit as a spark_kms KMS provider (``vault://`` key URIs), through hvac.

Key URI: ``vault://<host>:<port>/<mount>/keys/<name>``, e.g.
``vault://vault.internal:8200/transit/keys/pii``. The mount may be nested
(``vault://h:8200/team/transit/keys/pii``).

Options:

- ``tls`` (default ``True``: https), ``verify`` (``True``, ``False`` or a CA bundle path),
  ``namespace`` (Vault Enterprise / OpenBao namespace; default ``$VAULT_NAMESPACE``),
  ``timeout`` (seconds, default 10).
- ``auth_method``: ``"token"`` (default; ``token=`` or ``$VAULT_TOKEN``), ``"approle"``
  (``role_id=``, ``secret_id=``, ``auth_mount="approle"``) or ``"kubernetes"``
  (``role=``, ``jwt_path=`` the service-account token file, ``auth_mount="kubernetes"``).
  Secrets (``token``, ``secret_id``) never appear in ``repr`` or equality.
- ``derived`` (default ``False``): the Vault key was created with ``derived=true``.
- ``retry_max_attempts`` / ``retry_base_delay`` / ``retry_deadline``: the bounded retry
  of throttled (HTTP 429) calls; then :class:`~spark_kms.errors.ThrottlingError`.
- ``batch_size`` (default 250): data keys per ``rewrap`` request with ``batch_input`` when a rotation
  job rewraps many (:meth:`VaultTransitProvider.reencrypt_many`).
- ``protection_level`` (default ``"software"``) and ``protection_detail``: what ``describe_key``
  reports as the key's protection level. Transit keeps key material in Vault's storage, encrypted
  under its barrier: ``software``. Vault cannot tell a client more, so an operator who keys
  Transit from an HSM (Vault Enterprise managed keys backed by a PKCS#11 module, or seal wrap
  under an HSM auto-unseal) says so here (``protection_level="hsm"``, ``protection_detail=
  "managed key: pkcs11"``); ``require_protection_level`` then trusts that statement.

How each operation maps onto Transit:

- ``generate_data_key`` -> ``POST <mount>/datakey/plaintext/<name>`` (Vault makes the key).
- ``decrypt_data_key`` / ``decrypt`` -> ``POST <mount>/decrypt/<name>``.
- ``encrypt`` (small payloads) -> ``POST <mount>/encrypt/<name>``.
- ``reencrypt`` to the same Vault key -> ``POST <mount>/rewrap/<name>`` (server side, the
  data key never leaves Vault) whenever the encryption context stays the same; many at once (rewrap
  jobs) -> the same with ``batch_input`` (per-item results in ``data.batch_results``).
- ``describe_key`` -> ``GET <mount>/keys/<name>`` (``latest_version`` is the primary version).
- ``schedule_key_deletion`` -> ``POST <mount>/keys/<name>/config`` (``deletion_allowed=true``) then
  ``DELETE <mount>/keys/<name>``: Transit has no scheduled deletion, so the key and every version
  are deleted **at once and for good** (``pending_days`` is ignored). The token's policy needs
  ``update`` on ``<mount>/keys/<name>/config`` and ``delete`` on ``<mount>/keys/<name>``. Vault then
  answers "encryption key not found", which stays :class:`~spark_kms.errors.KeyNotFoundError`:
  Vault cannot tell an erased key from one that never existed. For the same reason a second call
  (or a call on a missing key) reports ``already=True``.

The key version of a wrap is the ``N`` of Vault's ``vault:vN:`` ciphertext prefix.

Binding the encryption context (the ``context`` of every spark_kms call):

- **Derived keys** (``derived=True``, recommended): the canonical JSON of the context is
  sent as Vault's base64 ``context``; Vault derives a per-context key, so Vault itself
  refuses a wrong context. The stored ciphertext is Vault's, unchanged.
- **Non-derived keys**: ``datakey`` and ``rewrap`` take no associated data, so a data key
  is bound client side: the stored ciphertext is ``<vault ciphertext>|ctx-hmac-sha256:<b64 tag>``
  with ``tag = HMAC-SHA256(HKDF-SHA256(DEK, info="spark_kms kms context binding v1"),
  "spark_kms.encryption_context.v1\\x00" || canonical JSON)``, checked after Vault unwraps
  the DEK; only the DEK's holder can make a tag, so a wrong context fails with
  :class:`~spark_kms.errors.InvalidCiphertextError`. Server-side rewrap keeps the tag valid.
  Small payloads use Vault's ``associated_data`` (GCM AAD; the server must support it) over the same JSON,
  which Vault checks itself. A data key whose tag was stripped does not decrypt: it was
  wrapped without AAD and is then asked for with AAD.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    KmsError,
    KmsUnavailableError,
    MissingExtraError,
    SparkKmsError,
)
from spark_kms.kms._binding import binding_tag as _binding_tag
from spark_kms.kms._binding import context_bytes as _context_bytes
from spark_kms.kms._binding import wipe as _wipe
from spark_kms.kms.base import (
    PROTECTION_LEVELS,
    DataKey,
    KeyDeletion,
    KeyDescription,
    KmsProvider,
    WrappedKey,
    _log_call,
    canonical_context,
)
from spark_kms.kms.base import _count as _count_call
from spark_kms.kms.concurrent import bounded_map, chunks
from spark_kms.kms.retry import RetryPolicy, call_with_retries

try:
    import hvac
    import hvac.exceptions
    import requests
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError("the Vault Transit provider", "vault") from exc

__all__ = ["VaultTransitProvider"]

T = TypeVar("T")

_URI = re.compile(r"^vault://(?P<host>[^/:]+|\[[^\]]+\]):(?P<port>\d+)/(?P<mount>.+)/keys/(?P<name>[^/]+)$")
_VERSION = re.compile(rb"^vault:v(\d+):")
_TAG_MARK = b"|ctx-hmac-sha256:"
_AUTH_METHODS = ("token", "approle", "kubernetes")
_DEFAULT_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path, not a secret


class VaultTransitProvider(KmsProvider):
    """A Vault Transit key (aes256-gcm96) as a spark_kms KMS key. See the module docstring."""

    scheme = "vault"
    secret_options = frozenset({"token", "secret_id"})
    extra = "vault"

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        match = _URI.match(key_uri)
        if match is None:
            raise ConfigurationError(
                f"a Vault Transit key URI looks like 'vault://<host>:<port>/<mount>/keys/<name>', got {key_uri!r}"
            )
        self.host = match["host"]
        self.port = int(match["port"])
        self.mount = match["mount"].strip("/")
        self.name = match["name"]
        unknown = set(options) - {
            "tls", "verify", "namespace", "timeout", "token", "auth_method", "role_id", "secret_id", "role",
            "jwt_path", "auth_mount", "derived", "retry_max_attempts", "retry_base_delay", "retry_deadline",
            "protection_level", "protection_detail", "batch_size",
        }
        if unknown:
            raise ConfigurationError(f"{key_uri}: unknown Vault option(s) {sorted(unknown)}")
        self.auth_method = str(options.get("auth_method", "token"))
        if self.auth_method not in _AUTH_METHODS:
            raise ConfigurationError(f"{key_uri}: auth_method must be one of {_AUTH_METHODS}, got {self.auth_method!r}")
        if self.auth_method == "approle" and not options.get("role_id"):
            raise ConfigurationError(f"{key_uri}: auth_method 'approle' needs role_id= (and usually secret_id=)")
        if self.auth_method == "kubernetes" and not options.get("role"):
            raise ConfigurationError(f"{key_uri}: auth_method 'kubernetes' needs role=")
        self.namespace = str(options.get("namespace") or os.environ.get("VAULT_NAMESPACE", "")).strip("/")
        self.derived = bool(options.get("derived", False))
        self.protection_level = str(options.get("protection_level") or "software").lower()
        if self.protection_level not in PROTECTION_LEVELS:
            raise ConfigurationError(f"{key_uri}: protection_level must be one of {PROTECTION_LEVELS}, "
                                     f"got {options.get('protection_level')!r}")
        self.protection_detail = str(options.get("protection_detail") or (
            "Vault Transit (software)" if "protection_level" not in options else
            f"Vault Transit ({self.protection_level}, as configured)"))
        self.retry_policy = RetryPolicy(
            max_attempts=int(options.get("retry_max_attempts", 6)),
            base_delay=float(options.get("retry_base_delay", 0.05)),
            deadline=float(options.get("retry_deadline", 20.0)),
        )
        #: items per ``batch_input`` request of :meth:`reencrypt_many`
        self.batch_size = int(options.get("batch_size", 250))
        if self.batch_size < 1:
            raise ConfigurationError(f"{key_uri}: batch_size must be >= 1, got {self.batch_size}")
        ns = f"{self.namespace}/" if self.namespace else ""
        #: the key's canonical id: namespace, mount and name (not the address, which may change)
        self.key_id = f"{ns}{self.mount}/keys/{self.name}"

    # -- the client ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.options.get('tls', True) else 'http'}://{self.host}:{self.port}"

    def _make_client(self) -> Any:
        token = self.options.get("token") if self.auth_method == "token" else None
        if self.auth_method == "token" and not token:
            token = os.environ.get("VAULT_TOKEN")
            if not token:
                raise ConfigurationError(f"{self.key_uri}: no Vault token: pass token= or set VAULT_TOKEN")
        client = hvac.Client(
            url=self.url,
            token=token,
            verify=self.options.get("verify", True),
            namespace=self.namespace or None,
            timeout=float(self.options.get("timeout", 10)),
        )
        if self.auth_method == "approle":
            mount = str(self.options.get("auth_mount", "approle"))
            self._call("Login", lambda: client.auth.approle.login(
                role_id=self.options["role_id"], secret_id=self.options.get("secret_id"), mount_point=mount))
        elif self.auth_method == "kubernetes":
            jwt_path = str(self.options.get("jwt_path", _DEFAULT_JWT_PATH))
            try:
                with open(jwt_path, encoding="utf-8") as fh:
                    jwt = fh.read().strip()
            except OSError as exc:
                raise ConfigurationError(f"{self.key_uri}: cannot read the Kubernetes service-account token "
                                         f"at {jwt_path!r}: {exc.strerror}") from exc
            mount = str(self.options.get("auth_mount", "kubernetes"))
            self._call("Login", lambda: client.auth.kubernetes.login(
                role=self.options["role"], jwt=jwt, mount_point=mount))
        return client

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run one Vault request: retry 429s, translate hvac/requests errors at the edge."""
        try:
            return call_with_retries(
                fn,
                is_throttle=lambda exc: isinstance(exc, hvac.exceptions.RateLimitExceeded),
                policy=self.retry_policy,
                what=f"Vault {operation}",
                key_id=self.key_id,
            )
        except SparkKmsError:
            raise
        except hvac.exceptions.VaultError as exc:
            raise self._translate(exc, operation) from exc
        except requests.exceptions.RequestException as exc:
            raise KmsUnavailableError(
                f"Vault at {self.url} could not be reached for {operation} on {self.key_id}: {type(exc).__name__}",
                key_id=self.key_id, operation=operation,
            ) from exc

    def _translate(self, exc: Exception, operation: str) -> KmsError | ConfigurationError:
        errors = "; ".join(str(e) for e in (getattr(exc, "errors", None) or []))
        where = f"Vault {operation} on {self.key_id} at {self.url}"
        low = errors.lower()
        kw = {"key_id": self.key_id, "operation": operation}
        if operation == "Login" and isinstance(exc, (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)):
            return AccessDeniedError(f"Vault {self.auth_method} login at {self.url} was refused", **kw)
        if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
            return AccessDeniedError(f"{where}: permission denied (check the token's policy)", **kw)
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return KeyNotFoundError(f"{where}: no such key or mount", **kw)
        if any(m in low for m in ("encryption key not found", "policy not found", "could not delete key; not found",
                                  "no existing key named")):
            return KeyNotFoundError(f"{where}: encryption key not found", **kw)
        if "too old" in low or "disallowed by policy" in low:
            return KeyStateError(f"{where}: that key version is below min_decryption_version", **kw)
        if "missing 'context'" in low:
            return ConfigurationError(f"{where}: the key is a derived key; pass derived=True")
        if "authentication failed" in low or "invalid ciphertext" in low or "decode" in low:
            return InvalidCiphertextError(
                f"{where}: the wrapped key does not decrypt (tampered, or another encryption context)", **kw)
        if isinstance(exc, (hvac.exceptions.VaultDown, hvac.exceptions.BadGateway,
                            hvac.exceptions.InternalServerError, hvac.exceptions.VaultNotInitialized)):
            return KmsUnavailableError(f"{where}: Vault is unavailable ({type(exc).__name__})", **kw)
        return KmsError(f"{where} failed: {errors or type(exc).__name__}", **kw)

    @property
    def _transit(self) -> Any:
        return self.client.secrets.transit

    def _context_param(self, encryption_context: dict[str, str]) -> str | None:
        return base64.b64encode(_context_bytes(encryption_context)).decode() if self.derived else None

    def _wrapped(self, vault_ciphertext: bytes) -> WrappedKey:
        match = _VERSION.match(vault_ciphertext)
        if match is None:
            raise KmsError(f"Vault returned a ciphertext without a 'vault:vN:' prefix for {self.key_id}",
                           key_id=self.key_id)
        return WrappedKey(vault_ciphertext, self.key_id, match.group(1).decode())

    # -- the protocol -------------------------------------------------------------
    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey:
        response = self._call("GenerateDataKey", lambda: self._transit.generate_data_key(
            name=self.name, key_type="plaintext", context=self._context_param(encryption_context),
            bits=256, mount_point=self.mount))
        data = response["data"]
        plaintext = bytearray(base64.b64decode(data["plaintext"]))
        ciphertext = str(data["ciphertext"]).encode()
        if not self.derived:
            ciphertext += _TAG_MARK + base64.b64encode(_binding_tag(plaintext, encryption_context))
        wrapped = self._wrapped(ciphertext)
        return DataKey(plaintext=plaintext, wrapped=wrapped)

    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey:
        aad = None if self.derived else base64.b64encode(_context_bytes(encryption_context)).decode()
        response = self._call("Encrypt", lambda: self._transit.encrypt_data(
            name=self.name, plaintext=base64.b64encode(plaintext).decode(),
            context=self._context_param(encryption_context), associated_data=aad, mount_point=self.mount))
        return self._wrapped(str(response["data"]["ciphertext"]).encode())

    def _split(self, wrapped: WrappedKey) -> tuple[str, bytes | None]:
        body, mark, tag_b64 = wrapped.ciphertext.partition(_TAG_MARK)
        if not _VERSION.match(body):
            raise InvalidCiphertextError(
                f"{self.key_id}: a Vault wrapped key starts with 'vault:vN:'; this one does not",
                key_id=self.key_id, operation="Decrypt")
        if not mark:
            return body.decode("ascii", "replace"), None
        try:
            tag = base64.b64decode(tag_b64, validate=True)
        except ValueError:
            tag = b""
        if len(tag) != 32:
            raise InvalidCiphertextError(f"{self.key_id}: the context tag of a Vault wrapped key is malformed",
                                         key_id=self.key_id, operation="Decrypt")
        return body.decode("ascii", "replace"), tag

    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytearray:
        vault_ciphertext, tag = self._split(wrapped)
        if tag is None:
            context, aad = self._context_param(encryption_context), None
            if not self.derived:
                aad = base64.b64encode(_context_bytes(encryption_context)).decode()
        else:
            context, aad = None, None
        response = self._call("Decrypt", lambda: self._transit.decrypt_data(
            name=self.name, ciphertext=vault_ciphertext, context=context, associated_data=aad,
            mount_point=self.mount))
        plaintext = bytearray(base64.b64decode(response["data"]["plaintext"]))
        if tag is not None and not hmac.compare_digest(_binding_tag(plaintext, encryption_context), tag):
            _wipe(plaintext)
            raise InvalidCiphertextError(
                f"{self.key_id}: the wrapped key was made for another encryption context (version "
                f"{wrapped.key_version})", key_id=self.key_id, operation="Decrypt")
        return plaintext

    def _same_key(self, other: KmsProvider) -> bool:
        return (isinstance(other, VaultTransitProvider) and (other.url, other.key_id, other.derived)
                == (self.url, self.key_id, self.derived))

    def _reencrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str], destination: KmsProvider,
                   destination_context: dict[str, str]) -> WrappedKey:
        vault_ciphertext, tag = self._split(wrapped)
        # Server-side rewrap needs the same key and context on both sides, and no AAD
        # (rewrap takes none): a derived-key wrap or a tagged data key qualifies.
        if not (self._same_key(destination) and destination_context == encryption_context
                and (tag is not None or self.derived)):
            return super()._reencrypt(wrapped, encryption_context, destination, destination_context)
        # The tag travels unchanged (it binds the DEK, which rewrap does not change); a wrong
        # context is caught on the next decrypt, never by seeing the DEK here.
        response = self._call("ReEncrypt", lambda: self._transit.rewrap_data(
            name=self.name, ciphertext=vault_ciphertext, context=self._context_param(encryption_context),
            mount_point=self.mount))
        ciphertext = str(response["data"]["ciphertext"]).encode()
        if tag is not None:
            ciphertext += _TAG_MARK + base64.b64encode(tag)
        return self._wrapped(ciphertext)

    def reencrypt_many(self, items: Sequence[tuple[WrappedKey, Mapping[str, str] | None]], *,
                       destination: KmsProvider | None = None, concurrency: int = 1,
                       on_result: Callable[[int, WrappedKey], None] | None = None) -> list[WrappedKey]:
        """Server-side rewraps in batches: ``POST <mount>/rewrap/<name>`` with ``batch_input`` of up to
        ``batch_size`` (option, default 250) items per request, batches ``concurrency`` at a time. Items
        that cannot be rewrapped server-side (another key, a wrap without the context tag on a
        non-derived key) go one by one as :meth:`reencrypt` does. A failed item raises the error Vault
        gave for it (its position in the input named), after the items before it are delivered."""
        dest = destination if destination is not None else self
        if not self._same_key(dest):
            return super().reencrypt_many(items, destination=destination, concurrency=concurrency,
                                          on_result=on_result)
        batchable: list[int] = []
        single: list[int] = []
        for i, (wrapped, _ctx) in enumerate(items):
            (batchable if self.derived or self._split(wrapped)[1] is not None else single).append(i)
        results: list[WrappedKey | None] = [None] * len(items)

        def deliver(i: int, wrapped: WrappedKey) -> None:
            results[i] = wrapped
            if on_result is not None:
                on_result(i, wrapped)

        if single:
            super().reencrypt_many([items[i] for i in single], destination=destination, concurrency=concurrency,
                                   on_result=lambda j, w: deliver(single[j], w))
        batches = chunks(batchable, self.batch_size)

        def one_batch(indexes: Sequence[int]) -> list[WrappedKey | KmsError]:
            return self._rewrap_batch([(items[i][0], canonical_context(items[i][1])) for i in indexes])

        def batch_done(b: int, outcome: list[WrappedKey | KmsError]) -> None:
            for i, one in zip(batches[b], outcome, strict=True):
                if isinstance(one, KmsError):
                    one.item_index = i  # type: ignore[attr-defined]
                    raise one
                deliver(i, one)

        bounded_map(one_batch, batches, concurrency=concurrency, on_result=batch_done)
        return results  # type: ignore[return-value]

    def _rewrap_batch(self, batch: list[tuple[WrappedKey, dict[str, str]]]) -> list[WrappedKey | KmsError]:
        """One ``rewrap`` request for ``batch``: each item's new wrap, or the error Vault gave for it."""
        split = [self._split(wrapped) for wrapped, _ in batch]
        batch_input = [{"ciphertext": body, **({"context": self._context_param(ctx)} if self.derived else {})}
                       for (body, _), (_, ctx) in zip(split, batch, strict=True)]
        for wrapped, ctx in batch:
            _count_call(self.scheme, "ReEncrypt")
            _log_call("ReEncrypt", self.key_uri, ctx, wrapped.key_id, wrapped.key_version)

        def post() -> Any:
            try:
                return self._transit.rewrap_data(name=self.name, ciphertext=None, batch_input=batch_input,
                                                 mount_point=self.mount)
            except hvac.exceptions.InvalidRequest as exc:
                # Vault answers 400 when an item failed, with every item's outcome in the body.
                body = exc.json if isinstance(exc.json, dict) else {}
                if isinstance((body.get("data") or {}).get("batch_results"), list):
                    return body
                raise

        response = self._call("ReEncrypt", post)
        answers = (response.get("data") or {}).get("batch_results") or []
        if len(answers) != len(batch):
            raise KmsError(f"Vault rewrap on {self.key_id} answered {len(answers)} results for {len(batch)} items",
                           key_id=self.key_id, operation="ReEncrypt")
        out: list[WrappedKey | KmsError] = []
        for n, (answer, (_, tag)) in enumerate(zip(answers, split, strict=True)):
            if answer.get("error") or not answer.get("ciphertext"):
                error = self._translate(hvac.exceptions.InvalidRequest(errors=[str(answer.get("error") or
                                                                                   "no ciphertext")]), "ReEncrypt")
                out.append(type(error)(f"{error} (item {n} of a batch rewrap)", key_id=self.key_id,
                                       operation="ReEncrypt") if isinstance(error, KmsError) else
                           KmsError(str(error), key_id=self.key_id, operation="ReEncrypt"))
                continue
            ciphertext = str(answer["ciphertext"]).encode()
            if tag is not None:
                ciphertext += _TAG_MARK + base64.b64encode(tag)
            out.append(self._wrapped(ciphertext))
        return out

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        """Allow deletion, then delete the key: immediate and final (see the module docstring)."""
        try:
            self._call("ScheduleKeyDeletion", lambda: self._transit.update_key_configuration(
                name=self.name, deletion_allowed=True, mount_point=self.mount))
            self._call("ScheduleKeyDeletion", lambda: self._transit.delete_key(name=self.name, mount_point=self.mount))
        except KeyNotFoundError as exc:
            if isinstance(exc.__cause__, hvac.exceptions.InvalidPath):
                raise  # a 404: no such mount (route), not a missing key
            # Vault's 400 "no existing key named ...": deleted already (or never there: Vault cannot tell)
            return KeyDeletion(self.key_id, "destroyed", None, already=True)
        return KeyDeletion(self.key_id, "destroyed", None)

    def _describe_key(self) -> KeyDescription:
        response = self._call("DescribeKey", lambda: self._transit.read_key(name=self.name, mount_point=self.mount))
        data = response["data"]
        min_dec = int(data.get("min_decryption_version") or 1)
        versions = {str(v): ("enabled" if int(v) >= min_dec else "disabled")
                    for v in sorted(data.get("keys", {}), key=int)}
        return KeyDescription(
            key_id=self.key_id,
            primary_version=str(data["latest_version"]),
            enabled=True,
            state="enabled",
            versions=versions,
            extra={k: data.get(k) for k in ("type", "derived", "min_decryption_version", "min_encryption_version",
                                            "deletion_allowed", "exportable", "auto_rotate_period")},
            protection_level=self.protection_level,
            protection_detail=self.protection_detail,
        )
