"""A small Azure Key Vault (keys) server for tests, a static token credential, and the harness.

No Key Vault emulator is installable from the package registries, so the test
suite speaks to this one with the real ``azure-keyvault-keys`` client over real
HTTPS on 127.0.0.1 (the SDK refuses bearer tokens over plain HTTP). The server
makes a throw-away self-signed certificate for ``localhost``/``127.0.0.1``;
clients trust it through ``connection_verify=<ca_path>``.

REST endpoints (``?api-version=`` required on every call, JSON bodies, base64url fields):

==============================================  ============================================
``POST  /keys/<name>/create``                   new RSA key (``kty`` RSA / RSA-HSM, ``key_size``, ``key_ops``)
``GET   /keys/<name>[/<version>]``              key bundle: ``key`` (JWK: ``kid``, ``n``, ``e``), ``attributes``
``PATCH /keys/<name>/<version>``                ``attributes.enabled``
``GET   /keys/<name>/versions``                 the versions (one page)
``POST  /keys/<name>/rotate``                   new version
``POST  /keys/<name>[/<version>]/wrapkey``      ``alg`` (RSA-OAEP-256, RSA-OAEP), ``value`` -> ``kid``, ``value``
``POST  /keys/<name>/<version>/unwrapkey``      the reverse
``DELETE /keys/<name>``                         soft delete: every version moves to the deleted keys
                                                (``DeletedKeyBundle``: ``recoveryId``, ``deletedDate``,
                                                ``scheduledPurgeDate`` = deletion + ``recoverableDays``)
``GET   /deletedkeys/<name>``                   the deleted key's ``DeletedKeyBundle`` (404 if none)
``POST  /deletedkeys/<name>/recover``           undelete: the key and its versions come back
==============================================  ============================================

After a soft delete the key's name answers 404 ``KeyNotFound`` on ``/keys/...`` (wrap, unwrap, get)
and a new key of that name is refused with 409 ``Conflict`` until it is recovered or purged, as in
Key Vault with soft delete on (the default, and mandatory for new vaults).

Authentication follows Key Vault's challenge protocol: a request without
``Authorization`` gets 401 with ``WWW-Authenticate: Bearer authorization="...",
resource="..."``; the client then sends ``Authorization: Bearer <token>``. Tokens
the server does not know get 401 again; known tokens without permissions get 403.
Faults: 429 with ``Retry-After: 0`` on the throttle pattern. Errors are
``{"error": {"code": ..., "message": ...}}`` with Key Vault's codes
(``KeyNotFound``, ``Forbidden``, ``BadParameter``, ``Throttled``).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from spark_kms.kms.base import KmsProvider
from spark_kms.testing.harness import ProviderHarness

__all__ = ["AzureKeyVaultHarness", "AzureKeyVaultServer", "StaticTokenCredential"]

#: how long a soft-deleted key stays recoverable (Key Vault's default retention)
_RECOVERABLE_DAYS = 90
_KEY_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]


class StaticTokenCredential:
    """An ``azure.core.credentials.TokenCredential`` that always returns one bearer token.

    Picklable (plain attributes), so providers using it can be shipped to Spark
    executors in tests. ``scopes_seen`` records what the SDK asked for (the
    challenge's resource + ``/.default``) in this process.
    """

    def __init__(self, token: str, *, expires_in: int = 3600) -> None:
        self.token = token
        self.expires_in = expires_in
        self.scopes_seen: list[str] = []

    def __repr__(self) -> str:
        return "StaticTokenCredential(<token hidden>)"

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes_seen.extend(scopes)
        return AccessToken(self.token, int(time.time()) + self.expires_in)

    def close(self) -> None:
        return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class _KeyVersion:
    version: str
    private_key: rsa.RSAPrivateKey
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class _Key:
    name: str
    versions: dict[str, _KeyVersion] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    key_ops: list[str] = field(default_factory=lambda: list(_KEY_OPS))
    #: ``RSA`` (software-protected) or ``RSA-HSM`` (HSM-protected: Premium vaults, Managed HSM)
    kty: str = "RSA"

    @property
    def current(self) -> _KeyVersion:
        return self.versions[self.order[-1]]

    def add_version(self, key_size: int = 2048) -> _KeyVersion:
        version = _KeyVersion(uuid.uuid4().hex, rsa.generate_private_key(public_exponent=65537, key_size=key_size))
        self.versions[version.version] = version
        self.order.append(version.version)
        return version


class _KvError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _self_signed(directory: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


class AzureKeyVaultServer:
    """An in-process Key Vault (keys) over HTTPS on ``127.0.0.1:<ephemeral port>``.

    :param resource: the ``resource`` of the bearer challenge (Key Vault's is
        ``https://vault.azure.net``); clients then ask their credential for
        ``<resource>/.default``.
    """

    def __init__(self, *, resource: str = "https://vault.azure.net",
                 tenant_id: str = "00000000-0000-0000-0000-00000000beef") -> None:
        self.resource = resource
        self.tenant_id = tenant_id
        self._keys: dict[str, _Key] = {}
        # soft-deleted keys: name -> (key, deletedDate, scheduledPurgeDate) in epoch seconds
        self._deleted: dict[str, tuple[_Key, int, int]] = {}
        self._tokens: dict[str, bool] = {}  # token -> may use keys
        self._lock = threading.Lock()
        self._throttle = (0, 1)
        self._throttle_count = 0
        self._throttled = 0
        self.requests: list[tuple[str, str]] = []  # (method, path), for tests
        self.api_versions: set[str] = set()
        self._dir = ""
        self.ca_path = ""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="spark-kms-azure-")
        self.ca_path, key_path = _self_signed(self._dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_path, key_path)
        handler = type("_Handler", (_KeyVaultHandler,), {"kv": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # The handshake then happens in the handler thread, not in the accept loop.
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="azure-kv-test-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the Key Vault test server is not running")
        return int(self._httpd.server_address[1])

    @property
    def vault_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- admin ------------------------------------------------------------------
    def create_key(self, name: str, *, key_size: int = 2048, kty: str = "RSA") -> str:
        """A new key (or a new version of ``name``); ``kty`` ``RSA`` or ``RSA-HSM`` (the bundle's ``kty``)."""
        with self._lock:
            return self._create(name, key_size, kty).version

    def rotate_key(self, name: str) -> str:
        with self._lock:
            return self._keys[name].add_version().version

    def set_enabled(self, name: str, enabled: bool, version: str | None = None) -> None:
        with self._lock:
            key = self._keys[name]
            (key.versions[version] if version else key.current).enabled = enabled

    def add_token(self, *, allowed: bool = True) -> str:
        token = "eyJ0eXAi." + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = allowed
        return token

    def throttle(self, failures: int, period: int) -> None:
        if period < 1 or not 0 <= failures <= period:
            raise ValueError("throttle needs 0 <= failures <= period and period >= 1")
        with self._lock:
            self._throttle = (failures, period)
            self._throttle_count = 0
            self._throttled = 0

    def throttled_requests(self) -> int:
        """Requests answered 429 since the last :meth:`throttle` (authenticated ones only:
        the throttle pattern counts requests that got past the token check)."""
        with self._lock:
            return self._throttled

    # -- requests -----------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], Any]:
        split = urlsplit(target)
        path = split.path.rstrip("/") if split.path != "/" else split.path
        self.requests.append((method, path))
        try:
            return 200, {}, self._serve(method, split.path, parse_qs(split.query), headers, raw)
        except _KvError as exc:
            return exc.status, exc.headers, {"error": {"code": exc.code, "message": exc.message}}

    def _serve(self, method: str, path: str, query: dict[str, list[str]], headers: Any, raw: bytes) -> Any:
        api_version = (query.get("api-version") or [""])[0]
        if not api_version:
            raise _KvError(400, "BadParameter", "The 'api-version' query parameter is required.")
        self.api_versions.add(api_version)
        auth = headers.get("Authorization") or ""
        challenge = {"WWW-Authenticate": f'Bearer authorization="https://localhost/{self.tenant_id}", '
                                         f'resource="{self.resource}"'}
        if not auth.startswith("Bearer "):
            raise _KvError(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", challenge)
        with self._lock:
            allowed = self._tokens.get(auth[len("Bearer "):])
        if allowed is None:
            raise _KvError(401, "Unauthorized", "AKV10022: Invalid audience or token.", challenge)
        if not allowed:
            raise _KvError(403, "Forbidden", "The user, group or application does not have keys permission "
                                             "on this key vault.")
        with self._lock:
            failures, period = self._throttle
            n = self._throttle_count
            self._throttle_count += 1
            throttled = n % period < failures
            self._throttled += throttled
        if throttled:
            raise _KvError(429, "Throttled", "Request was not processed because too many requests were received.",
                           {"Retry-After": "0"})
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise _KvError(400, "BadParameter", "The request body is not valid JSON.") from None
        host = headers.get("Host") or f"127.0.0.1:{self.port}"
        parts = [p for p in path.split("/")]
        if len(parts) < 3 or parts[1] not in ("keys", "deletedkeys") or not parts[2]:
            raise _KvError(404, "NotFound", "No such operation in this test server.")
        name, rest = parts[2], parts[3:]
        with self._lock:
            if parts[1] == "deletedkeys":
                return self._deleted_key_op(method, f"https://{host}", name, rest)
            return self._key_op(method, f"https://{host}", name, rest, body)

    def _deleted_bundle(self, base: str, name: str) -> dict[str, Any]:
        entry = self._deleted.get(name)
        if entry is None:
            raise _KvError(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        key, deleted, purge = entry
        return {**self._bundle(base, key, key.current), "recoveryId": f"{base}/deletedkeys/{name}",
                "deletedDate": deleted, "scheduledPurgeDate": purge}

    def _deleted_key_op(self, method: str, base: str, name: str, rest: list[str]) -> Any:
        if method == "GET" and not rest:
            return self._deleted_bundle(base, name)
        if method == "POST" and rest == ["recover"]:
            self._deleted_bundle(base, name)  # 404 unless deleted
            key, _, _ = self._deleted.pop(name)
            self._keys[name] = key
            return self._bundle(base, key, key.current)
        raise _KvError(405, "MethodNotAllowed", f"{method} is not supported on this path by this test server.")

    def _create(self, name: str, key_size: int = 2048, kty: str = "RSA") -> _KeyVersion:
        if name in self._deleted:
            raise _KvError(409, "Conflict", f"Key {name} is currently in a deleted but recoverable state, and its "
                                            "name cannot be reused; in this state, the key can only be recovered "
                                            "or purged.")
        if kty not in ("RSA", "RSA-HSM"):
            raise _KvError(400, "BadParameter", "This test server makes RSA keys only.")
        key = self._keys.setdefault(name, _Key(name, kty=kty))
        return key.add_version(key_size)

    def _find(self, name: str, version: str) -> tuple[_Key, _KeyVersion]:
        key = self._keys.get(name)
        if key is None or (version and version not in key.versions):
            shown = f"{name}/{version}" if version else name
            raise _KvError(404, "KeyNotFound", f"A key with (name/id) {shown} was not found in this key vault.")
        return key, key.versions[version] if version else key.current

    def _bundle(self, base: str, key: _Key, ver: _KeyVersion) -> dict[str, Any]:
        numbers = ver.private_key.public_key().public_numbers()
        return {
            "key": {"kid": f"{base}/keys/{key.name}/{ver.version}", "kty": key.kty, "key_ops": key.key_ops,
                    "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))},
            "attributes": {"enabled": ver.enabled, "created": ver.created, "updated": ver.created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": _RECOVERABLE_DAYS},
            "tags": {},
        }

    def _key_op(self, method: str, base: str, name: str, rest: list[str], body: dict[str, Any]) -> Any:
        if method == "POST" and rest == ["create"]:
            ver = self._create(name, int(body.get("key_size") or 2048), str(body.get("kty") or "RSA"))
            return self._bundle(base, self._keys[name], ver)
        if method == "POST" and rest == ["rotate"]:
            key, _ = self._find(name, "")
            return self._bundle(base, key, key.add_version())
        if method == "GET" and rest == ["versions"]:
            key, _ = self._find(name, "")
            items = []
            for version in key.order:
                bundle = self._bundle(base, key, key.versions[version])
                items.append({"kid": bundle["key"]["kid"], "attributes": bundle["attributes"], "tags": {}})
            return {"value": items, "nextLink": None}
        if method == "DELETE" and not rest:
            key, _ = self._find(name, "")
            now = int(time.time())
            self._deleted[name] = (self._keys.pop(name), now, now + _RECOVERABLE_DAYS * 86400)
            return self._deleted_bundle(base, name)
        if method == "GET" and len(rest) <= 1:
            key, ver = self._find(name, rest[0] if rest else "")
            return self._bundle(base, key, ver)
        if method == "PATCH" and len(rest) <= 1:
            key, ver = self._find(name, rest[0] if rest else "")
            attributes = body.get("attributes") or {}
            if "enabled" in attributes:
                ver.enabled = bool(attributes["enabled"])
            return self._bundle(base, key, ver)
        if method == "POST" and rest and rest[-1] in ("wrapkey", "unwrapkey") and len(rest) <= 2:
            operation = rest[-1]
            key, ver = self._find(name, rest[0] if len(rest) == 2 else "")
            op_name = "wrapKey" if operation == "wrapkey" else "unwrapKey"
            if not ver.enabled:
                raise _KvError(403, "Forbidden", f"Operation {op_name} is not allowed on a disabled key.")
            if op_name not in key.key_ops:
                raise _KvError(403, "Forbidden", f"Operation {op_name} is not allowed by the key's key_ops.")
            pad = _oaep(str(body.get("alg", "")))
            try:
                value = _unb64url(str(body.get("value", "")))
            except ValueError:
                raise _KvError(400, "BadParameter", "The value is not base64url.") from None
            if operation == "wrapkey":
                out = ver.private_key.public_key().encrypt(value, pad)
            else:
                try:
                    out = ver.private_key.decrypt(value, pad)
                except ValueError:
                    raise _KvError(400, "BadParameter", "Bad Request: the ciphertext could not be unwrapped.") \
                        from None
            return {"kid": f"{base}/keys/{name}/{ver.version}", "value": _b64url(out)}
        raise _KvError(405, "MethodNotAllowed", f"{method} is not supported on this path by this test server.")


def _oaep(alg: str) -> padding.OAEP:
    if alg == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if alg == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    raise _KvError(400, "BadParameter", f"Invalid algorithm {alg!r}; this test server knows RSA-OAEP-256, RSA-OAEP.")


class _KeyVaultHandler(BaseHTTPRequestHandler):
    kv: AzureKeyVaultServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, headers, payload = self.kv.handle(self.command, self.path, self.headers, raw)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


class AzureKeyVaultHarness(ProviderHarness):
    """The Azure Key Vault provider against :class:`AzureKeyVaultServer` (the real SDK over HTTPS)."""

    name = "azure"

    def __init__(self, *, key_name: str = "pii", vault_host: str = "spark-kms-test.vault.azure.net",
                 kty: str = "RSA") -> None:
        """``vault_host`` is the host the key URIs name (``<pool>.managedhsm.azure.net`` for a
        Managed HSM: the server then answers the Managed HSM challenge resource); the provider's
        ``vault_url`` points at the local server whatever the URI names."""
        self.key_name = key_name
        self.vault_host = vault_host
        self.kty = kty
        managed_hsm = vault_host.lower().endswith(".managedhsm.azure.net")
        self.server = AzureKeyVaultServer(resource="https://managedhsm.azure.net" if managed_hsm
                                          else "https://vault.azure.net")
        self._token = ""
        self._denied_token = ""

    def start(self) -> None:
        self.server.start()
        self.server.create_key(self.key_name, kty=self.kty)
        self._token = self.server.add_token(allowed=True)
        self._denied_token = self.server.add_token(allowed=False)

    def stop(self) -> None:
        self.server.stop()

    def key_uri(self, name: str | None = None) -> str:
        return f"azure-kv://{self.vault_host}/keys/{name or self.key_name}"

    def options(self, token: str | None = None) -> dict[str, Any]:
        return {
            "vault_url": self.server.vault_url,
            "credential": StaticTokenCredential(token or self._token),
            # The challenge names Key Vault's resource, not 127.0.0.1: skip the domain check.
            "verify_challenge_resource": False,
            "connection_verify": self.server.ca_path,
            "retry_total": 3,
            "retry_backoff_factor": 0.01,
        }

    def provider(self) -> KmsProvider:
        from spark_kms.kms.azure import AzureKeyVaultProvider

        return AzureKeyVaultProvider(self.key_uri(), **self.options())

    def provider_for_missing_key(self) -> KmsProvider:
        from spark_kms.kms.azure import AzureKeyVaultProvider

        return AzureKeyVaultProvider(self.key_uri("no-such-key"), **self.options())

    def provider_denied(self) -> KmsProvider:
        from spark_kms.kms.azure import AzureKeyVaultProvider

        return AzureKeyVaultProvider(self.key_uri(), **self.options(self._denied_token))

    def rotate(self) -> None:
        self.server.rotate_key(self.key_name)

    def new_key_provider(self) -> KmsProvider:
        """A provider bound to a new key of its own in the vault."""
        from spark_kms.kms.azure import AzureKeyVaultProvider

        name = f"extra-{uuid.uuid4().hex[:8]}"
        self.server.create_key(name, kty=self.kty)
        return AzureKeyVaultProvider(self.key_uri(name), **self.options())

    def disable_key(self, provider: KmsProvider) -> None:
        """Disable every version of the provider's key (``attributes.enabled = false``)."""
        from spark_kms.kms.azure import AzureKeyVaultProvider

        assert isinstance(provider, AzureKeyVaultProvider)
        with self.server._lock:
            versions = list(self.server._keys[provider.name].versions)
        for version in versions:
            self.server.set_enabled(provider.name, False, version)

    def throttle(self, failures: int, period: int) -> None:
        self.server.throttle(failures, period)

    def throttled_requests(self) -> int:
        return self.server.throttled_requests()

    def max_throttled_requests(self) -> int:
        """``retry_total`` + 1 (4): azure-core's RetryPolicy retries a 429 ``retry_total``
        times after the first request, sleeping the server's ``Retry-After: 0``."""
        return int(self.options()["retry_total"]) + 1
