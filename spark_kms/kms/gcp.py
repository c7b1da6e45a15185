"""Google Cloud KMS provider (``gcp-kms://projects/...`` key URIs), over google-cloud-kms (gRPC).

Key URI::

    gcp-kms://projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>

Options (plain values, so the provider pickles; the gRPC client is built lazily
in each process and never pickled):

``endpoint``
    ``host:port`` of a Cloud KMS-compatible server on the loopback interface,
    spoken to over an *insecure* gRPC channel (test servers only; any other host
    is refused so a bearer token never crosses a network in clear).
``credentials_file``
    A service-account JSON file; default: Application Default Credentials.
``access_token``
    An OAuth2 access token (secret: never in ``repr``). With ``endpoint`` it is
    sent as ``authorization: Bearer ...`` call metadata.
``timeout``
    Seconds per RPC attempt (default 30).
``retry``
    Throttling (``RESOURCE_EXHAUSTED``) and ``UNAVAILABLE`` are retried with
    google.api_core's ``Retry`` for at most this many seconds overall (default 30),
    or a mapping ``{"initial": s, "maximum": s, "multiplier": x, "deadline": s}``;
    ``0`` turns retries off. Then :class:`ThrottlingError`.

**Data keys.** Cloud KMS has no GenerateDataKey: the 32-byte data key is made
here with ``os.urandom`` and wrapped with Encrypt. The encryption context is
bound as ``additional_authenticated_data``: canonical JSON (sorted keys, no
spaces, UTF-8); an empty context is empty AAD.

**Integrity.** As Google recommends, requests carry CRC32C checksums of the
plaintext / ciphertext and AAD; Encrypt responses must confirm them
(``verified_*_crc32c``) and carry a matching ``ciphertext_crc32c``; Decrypt
responses a matching ``plaintext_crc32c``. A mismatch raises :class:`KmsError`
(data corrupted in transit) and the result is not used.

**Key version.** The version number from the Encrypt response's ``name``
(``.../cryptoKeyVersions/<N>`` -> ``"N"``). Decrypt needs no version: the
ciphertext names it.

**Erasure.** A CryptoKey cannot be deleted in Cloud KMS; ``schedule_key_deletion`` destroys every
ENABLED or DISABLED version (DestroyCryptoKeyVersion: DESTROY_SCHEDULED for the key's
``destroy_scheduled_duration``, then DESTROYED; RestoreCryptoKeyVersion undoes it meanwhile).
Encrypt / Decrypt refused because a version is DESTROY_SCHEDULED or DESTROYED raise
:class:`~spark_kms.errors.KeyErasedError`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

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
    ThrottlingError,
)
from spark_kms.kms.base import DATA_KEY_BYTES, DataKey, KeyDeletion, KeyDescription, KmsProvider, WrappedKey
from spark_kms.kms.registry import parse_key_uri

try:
    import google.auth.exceptions
    import grpc
    from google.api_core import exceptions as gexc
    from google.api_core import retry as gretry
    from google.cloud import kms_v1
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcTransport,
    )
except ImportError as _exc:  # pragma: no cover - exercised by a subprocess test
    raise MissingExtraError("the Google Cloud KMS provider", "gcp") from _exc

try:  # the C implementation google-cloud-kms users normally have; else a table below
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover - depends on the environment
    _google_crc32c = None

__all__ = ["GcpKmsProvider", "canonical_aad", "crc32c", "parse_gcp_key_uri"]

T = TypeVar("T")

_KEY_NAME_RE = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/keyRings/(?P<ring>[^/]+)/cryptoKeys/(?P<key>[^/]+)$"
)
_VERSION_NAME_RE = re.compile(r"^(?P<key>projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)"
                              r"/cryptoKeyVersions/(?P<version>[^/]+)$")
_LOOPBACK_NAMES = {"localhost"}
_STATE_NAMES = {
    "ENABLED": "enabled",
    "DISABLED": "disabled",
    "DESTROYED": "destroyed",
    "DESTROY_SCHEDULED": "pending_deletion",
    "PENDING_GENERATION": "pending_generation",
}


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] | None = None


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``, as Cloud KMS computes its checksums."""
    if _google_crc32c is not None:
        return int(_google_crc32c.value(bytes(data)))
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32c_table()
    crc = 0xFFFFFFFF
    for b in bytes(data):
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def canonical_aad(encryption_context: Mapping[str, str]) -> bytes:
    """The AAD bytes an encryption context binds to: canonical JSON, sorted keys, or empty."""
    if not encryption_context:
        return b""
    return json.dumps(dict(encryption_context), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def parse_gcp_key_uri(key_uri: str) -> str:
    """``gcp-kms://projects/...`` -> the CryptoKey resource name."""
    name = parse_key_uri(key_uri)[1] if "://" in key_uri else key_uri
    if _VERSION_NAME_RE.match(name):
        raise ConfigurationError(
            f"{key_uri}: name the CryptoKey, not one of its versions; new wraps use the primary version "
            "and decryption finds the version from the ciphertext"
        )
    if not _KEY_NAME_RE.match(name):
        raise ConfigurationError(
            "a Cloud KMS key URI is gcp-kms://projects/<project>/locations/<location>/keyRings/<ring>/"
            f"cryptoKeys/<key>, got {key_uri!r}"
        )
    return name


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GcpKmsProvider(KmsProvider):
    """Envelope keys wrapped by a Cloud KMS CryptoKey (symmetric ENCRYPT_DECRYPT).
    See the module docstring for URIs, options, AAD and checksums."""

    scheme = "gcp-kms"
    extra = "gcp"
    secret_options = frozenset({"access_token"})

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        self.key_name = parse_gcp_key_uri(key_uri)
        endpoint = options.get("endpoint")
        if endpoint is not None and (":" not in str(endpoint) or not _is_loopback(str(endpoint))):
            raise ConfigurationError(
                f"the 'endpoint' option opens an insecure gRPC channel and must be a loopback host:port "
                f"(127.0.0.1:<port>, localhost:<port>), got {endpoint!r}"
            )
        self.timeout = float(options.get("timeout", 30.0))
        self._retry_settings = _retry_settings(options.get("retry", 30.0))

    # -- client --------------------------------------------------------------------------
    def _make_client(self) -> Any:
        opts = self.options
        if opts.get("endpoint"):
            channel = grpc.insecure_channel(str(opts["endpoint"]))
            return kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))
        credentials: Any = None
        if opts.get("credentials_file"):
            from google.oauth2 import service_account

            credentials = service_account.Credentials.from_service_account_file(
                str(opts["credentials_file"]), scopes=["https://www.googleapis.com/auth/cloudkms"]
            )
        elif opts.get("access_token"):
            from google.oauth2 import credentials as oauth2

            credentials = oauth2.Credentials(token=str(opts["access_token"]))
        return kms_v1.KeyManagementServiceClient(credentials=credentials)

    def _call_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": self.timeout, "retry": self._retry()}
        if self.options.get("endpoint") and self.options.get("access_token"):
            kwargs["metadata"] = [("authorization", f"Bearer {self.options['access_token']}")]
        return kwargs

    def _retry(self) -> Any:
        if self._retry_settings is None:
            return None
        initial, maximum, multiplier, deadline = self._retry_settings
        return gretry.Retry(
            predicate=gretry.if_exception_type(gexc.ResourceExhausted, gexc.ServiceUnavailable),
            initial=initial, maximum=maximum, multiplier=multiplier, timeout=deadline,
        )

    # -- error edge ------------------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[], T], key_id: str | None = None) -> T:
        key_id = key_id or self.key_name
        try:
            return fn()
        except gexc.RetryError as exc:
            cause = exc.cause
            if isinstance(cause, gexc.ServiceUnavailable):
                raise KmsUnavailableError(
                    f"Cloud KMS {operation} on key {key_id}: still unavailable after retrying for "
                    f"{self._retry_settings[3] if self._retry_settings else 0:.0f}s",
                    key_id=key_id, operation=operation,
                ) from exc
            raise ThrottlingError(
                f"Cloud KMS {operation} on key {key_id}: still throttled (RESOURCE_EXHAUSTED) after retrying for "
                f"{self._retry_settings[3] if self._retry_settings else 0:.0f}s; lower the job's parallelism or "
                "raise the Cloud KMS quota",
                key_id=key_id, operation=operation,
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise _translate(exc, operation, key_id) from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            # Credentials are found or refreshed lazily (client build, first RPC): no usable ones is a denial.
            raise AccessDeniedError(
                f"Cloud KMS {operation} on key {key_id}: no usable Google credentials ({type(exc).__name__}); "
                "set credentials_file or access_token, or configure Application Default Credentials",
                key_id=key_id, operation=operation,
            ) from exc

    # -- the protocol ---------------------------------------------------------------------
    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey:
        plaintext = bytearray(os.urandom(DATA_KEY_BYTES))
        try:
            wrapped = self._encrypt_op(bytes(plaintext), encryption_context, "GenerateDataKey")
        except BaseException:
            for i in range(len(plaintext)):
                plaintext[i] = 0
            raise
        return DataKey(plaintext, wrapped)

    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey:
        return self._encrypt_op(plaintext, encryption_context, "Encrypt")

    def _encrypt_op(self, plaintext: bytes, encryption_context: dict[str, str], operation: str) -> WrappedKey:
        aad = canonical_aad(encryption_context)
        request = {
            "name": self.key_name,
            "plaintext": plaintext,
            "additional_authenticated_data": aad,
            "plaintext_crc32c": crc32c(plaintext),
            "additional_authenticated_data_crc32c": crc32c(aad),
        }
        resp = self._call(operation, lambda: self.client.encrypt(request=request, **self._call_kwargs()))
        if not resp.verified_plaintext_crc32c or not resp.verified_additional_authenticated_data_crc32c:
            raise KmsError(
                f"Cloud KMS {operation} on key {self.key_name}: the server did not verify the request checksums; "
                "the request may have been corrupted in transit (result discarded, retry the operation)",
                key_id=self.key_name, operation=operation,
            )
        if resp.ciphertext_crc32c != crc32c(resp.ciphertext):
            raise KmsError(
                f"Cloud KMS {operation} on key {self.key_name}: the response ciphertext fails its CRC32C check; "
                "it was corrupted in transit (result discarded, retry the operation)",
                key_id=self.key_name, operation=operation,
            )
        m = _VERSION_NAME_RE.match(resp.name)
        if not m:
            raise KmsError(
                f"Cloud KMS {operation} on key {self.key_name}: the response names no key version ({resp.name!r})",
                key_id=self.key_name, operation=operation,
            )
        return WrappedKey(bytes(resp.ciphertext), m.group("key"), m.group("version"))

    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytes | bytearray:
        key_name = wrapped.key_id or self.key_name
        aad = canonical_aad(encryption_context)
        request = {
            "name": key_name,
            "ciphertext": wrapped.ciphertext,
            "additional_authenticated_data": aad,
            "ciphertext_crc32c": crc32c(wrapped.ciphertext),
            "additional_authenticated_data_crc32c": crc32c(aad),
        }
        try:
            resp = self._call("Decrypt", lambda: self.client.decrypt(request=request, **self._call_kwargs()), key_name)
        except KeyErasedError as exc:
            # Erasure destroys every version; one destroyed (retired) version of a key still in use is a
            # rotation gone wrong, which must fail loudly rather than read as erased.
            if not self.describe_key().erased:
                raise KeyStateError(
                    f"Cloud KMS Decrypt on key {key_name}: the key version that wrapped this data key is destroyed "
                    "or scheduled for destruction while the key is in use (rewrap before destroying old versions)",
                    key_id=key_name, operation="Decrypt",
                ) from exc
            raise
        plaintext = bytearray(resp.plaintext)
        if resp.plaintext_crc32c != crc32c(plaintext):
            for i in range(len(plaintext)):
                plaintext[i] = 0
            raise KmsError(
                f"Cloud KMS Decrypt on key {key_name}: the response plaintext fails its CRC32C check; it was "
                "corrupted in transit (result discarded, retry the operation)",
                key_id=key_name, operation="Decrypt",
            )
        return plaintext

    def _describe_key(self) -> KeyDescription:
        key = self._call(
            "GetCryptoKey", lambda: self.client.get_crypto_key(request={"name": self.key_name}, **self._call_kwargs())
        )
        versions: dict[str, str] = {}
        pager = self._call(
            "ListCryptoKeyVersions",
            lambda: self.client.list_crypto_key_versions(request={"parent": self.key_name}, **self._call_kwargs()),
        )
        for v in self._call("ListCryptoKeyVersions", lambda: list(pager)):
            versions[v.name.rsplit("/", 1)[1]] = _STATE_NAMES.get(v.state.name, v.state.name.lower())
        primary = key.primary.name.rsplit("/", 1)[1] if key.primary and key.primary.name else ""
        primary_state = _STATE_NAMES.get(key.primary.state.name, key.primary.state.name.lower()) if primary else ""
        # the primary version's protection level, else the template new versions get
        gcp_level = (key.primary.protection_level.name if primary else "") or (
            key.version_template.protection_level.name if key.version_template else "")
        if gcp_level in ("", "PROTECTION_LEVEL_UNSPECIFIED"):
            gcp_level = "SOFTWARE"  # Cloud KMS's default
        return KeyDescription(
            key_id=key.name,
            primary_version=primary,
            enabled=primary_state == "enabled",
            state=primary_state or "no_primary",
            versions=versions,
            extra={
                "purpose": key.purpose.name,
                "algorithm": key.primary.algorithm.name if primary else "",
                "protection_level": key.primary.protection_level.name if primary else "",
                "rotation_period_s": key.rotation_period.total_seconds() if key.rotation_period else None,
                "labels": dict(key.labels),
                "destroy_scheduled_duration_s": key.destroy_scheduled_duration.total_seconds()
                if key.destroy_scheduled_duration else None,
            },
            protection_level=_PROTECTION_LEVELS.get(gcp_level, gcp_level.lower()),
            protection_detail=gcp_level,
        )

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        """DestroyCryptoKeyVersion on every ENABLED / DISABLED version (needs
        ``cloudkms.cryptoKeyVersions.list`` and ``.destroy``). Cloud KMS's waiting period is the key's
        ``destroy_scheduled_duration``, set when the key was made; ``pending_days`` cannot change it."""
        pager = self._call("ListCryptoKeyVersions", lambda: self.client.list_crypto_key_versions(
            request={"parent": self.key_name}, **self._call_kwargs()))
        versions = self._call("ListCryptoKeyVersions", lambda: list(pager))
        live = {"ENABLED", "DISABLED"}
        destroy_times: list[datetime] = []
        scheduled = False
        for v in versions:
            state = v.state.name
            if state in live:
                try:
                    v = self._call("DestroyCryptoKeyVersion", lambda name=v.name: self.client.destroy_crypto_key_version(
                        request={"name": name}, **self._call_kwargs()))
                    scheduled = True
                except KeyErasedError:  # destroyed by someone else since the listing
                    continue
            if v.state.name == "DESTROY_SCHEDULED" and v.destroy_time:
                destroy_times.append(v.destroy_time)
        pending = bool(destroy_times) or any(v.state.name == "DESTROY_SCHEDULED" for v in versions)
        when = max(destroy_times).astimezone(timezone.utc).isoformat() if destroy_times else None
        return KeyDeletion(self.key_name, "pending_deletion" if pending or scheduled else "destroyed", when,
                           already=not scheduled)


#: Cloud KMS ProtectionLevel -> spark_kms protection level (the vendor name is kept as the detail)
_PROTECTION_LEVELS = {"SOFTWARE": "software", "HSM": "hsm", "EXTERNAL": "external", "EXTERNAL_VPC": "external"}


def _retry_settings(value: Any) -> tuple[float, float, float, float] | None:
    """``retry`` option -> (initial, maximum, multiplier, deadline) or None (no retries)."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigurationError(f"the 'retry' option is a deadline in seconds >= 0, got {value!r}")
        return (0.1, 2.0, 2.0, float(value))
    if isinstance(value, Mapping):
        unknown = set(value) - {"initial", "maximum", "multiplier", "deadline"}
        if unknown:
            raise ConfigurationError(
                f"the 'retry' option takes initial, maximum, multiplier, deadline; unknown: {sorted(unknown)}"
            )
        s = (float(value.get("initial", 0.1)), float(value.get("maximum", 2.0)),
             float(value.get("multiplier", 2.0)), float(value.get("deadline", 30.0)))
        if min(s) <= 0:
            raise ConfigurationError(f"the 'retry' option's values must be > 0, got {dict(value)!r}")
        return s
    raise ConfigurationError(f"the 'retry' option is seconds or a mapping, got {type(value).__name__}")


def _translate(exc: Any, operation: str, key_id: str) -> KmsError:
    """A google.api_core error -> the spark_kms error. Status names only: server
    messages echo resource names, never key material, but we keep ours uniform."""
    kwargs: dict[str, Any] = {"key_id": key_id, "operation": operation}
    where = f"Cloud KMS {operation} on key {key_id}"
    if isinstance(exc, gexc.NotFound):
        return KeyNotFoundError(f"Cloud KMS key {key_id} not found (NOT_FOUND in {operation})", **kwargs)
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated):
        return AccessDeniedError(f"{where}: access denied ({type(exc).__name__})", **kwargs)
    if isinstance(exc, gexc.FailedPrecondition) and any(
            f"value {state} " in str(exc.message) for state in ("DESTROY_SCHEDULED", "DESTROYED")):
        # "... Resource <version> has value DESTROY_SCHEDULED in field crypto_key_version.state."
        return KeyErasedError(
            f"{where}: the key version is scheduled for destruction or destroyed; what it wrapped is erased "
            "(RestoreCryptoKeyVersion brings a version back while it is only scheduled)", **kwargs,
        )
    if isinstance(exc, gexc.FailedPrecondition):
        return KeyStateError(
            f"{where}: the key version is not usable in its current state (disabled, destroyed or scheduled "
            "for destruction)", **kwargs,
        )
    if isinstance(exc, gexc.InvalidArgument):
        if operation == "Decrypt":
            return InvalidCiphertextError(
                f"{where}: the wrapped key does not unwrap (tampered, wrong key or wrong encryption context)",
                **kwargs,
            )
        return KmsError(f"{where}: the server rejected the request (INVALID_ARGUMENT)", **kwargs)
    if isinstance(exc, gexc.ResourceExhausted):
        return ThrottlingError(f"{where}: throttled (RESOURCE_EXHAUSTED) and retries are off", **kwargs)
    if isinstance(exc, gexc.ServiceUnavailable | gexc.DeadlineExceeded):
        return KmsUnavailableError(f"{where}: Cloud KMS could not be reached ({type(exc).__name__})", **kwargs)
    return KmsError(f"{where} failed ({type(exc).__name__})", **kwargs)
