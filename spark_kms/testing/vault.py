"""A small HashiCorp Vault Transit server for tests, and its provider harness.

No Vault or OpenBao server is installable from the package registries, so the
test suite speaks to this one with the real ``hvac`` client over real HTTP on
127.0.0.1. It follows the documented REST API for the parts spark_kms uses:

============================================  ===========================================
``POST /v1/<mount>/keys/<name>``              create a key (``type``, ``derived``)
``GET  /v1/<mount>/keys/<name>``              read a key (``latest_version``, ``keys`` ...)
``POST /v1/<mount>/keys/<name>/rotate``       new key version
``POST /v1/<mount>/keys/<name>/config``       ``min_decryption_version`` (``min_encryption_version``),
                                              ``deletion_allowed``
``DELETE /v1/<mount>/keys/<name>``            delete the key (only once ``deletion_allowed``),
                                              at once and for good
``POST /v1/<mount>/datakey/plaintext/<name>`` data key, plaintext and wrapped (``wrapped`` too)
``POST /v1/<mount>/encrypt/<name>``           ``plaintext``, ``context``, ``associated_data``
``POST /v1/<mount>/decrypt/<name>``           ``ciphertext``, ``context``, ``associated_data``
``POST /v1/<mount>/rewrap/<name>``            ``ciphertext``, ``context``
(encrypt, decrypt, rewrap)                    ``batch_input``: ``data.batch_results``, per item
                                              ``error``; 400 if an item failed (unless
                                              ``partial_failure_response_code``)
``POST /v1/auth/approle/login``               ``role_id`` + ``secret_id`` -> token
``POST /v1/auth/kubernetes/login``            ``role`` + ``jwt`` -> token
``GET  /v1/auth/token/lookup-self``           the token's own record
============================================  ===========================================

Semantics kept from Vault: ``X-Vault-Token`` on every request (unknown or
unprivileged token: 403 ``{"errors": ["permission denied"]}``), ``X-Vault-Namespace``
separates keys, aes256-gcm96 ciphertexts ``vault:v<N>:base64(nonce || ct || tag)``,
derived keys (a per-``context`` key, ``context`` then required), ``associated_data``
as GCM AAD, ``min_decryption_version`` refusing older ciphertexts, errors as
``{"errors": [...]}`` with Vault's wording (``encryption key not found``,
``cipher: message authentication failed``), 429 under a rate-limit quota.
Not kept: storage, leases, policies beyond the three token kinds below, other key types.

Token kinds: the *root* token may do anything, including upserting a key on
encrypt (as Vault does when a policy grants ``create``); *app* tokens may use
existing keys but not create them (the usual production policy); *denied*
tokens are known to the server but may do nothing.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spark_kms.kms.base import KmsProvider
from spark_kms.testing.harness import ProviderHarness

__all__ = ["VaultTransitHarness", "VaultTransitServer"]

_CIPHERTEXT = re.compile(r"^vault:v(\d+):(.+)$")


@dataclass
class _TransitKey:
    name: str
    derived: bool = False
    versions: dict[int, bytes] = field(default_factory=dict)
    created: dict[int, int] = field(default_factory=dict)
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    deletion_allowed: bool = False

    @property
    def latest_version(self) -> int:
        return max(self.versions)

    def add_version(self) -> int:
        version = (max(self.versions) + 1) if self.versions else 1
        self.versions[version] = AESGCM.generate_key(bit_length=256)
        self.created[version] = int(time.time())
        return version


class _VaultError(Exception):
    def __init__(self, status: int, *errors: str) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors)


class VaultTransitServer:
    """An in-process Vault Transit server on ``127.0.0.1:<ephemeral port>`` (plain HTTP).

    Admin methods (:meth:`create_key`, :meth:`rotate_key`, :meth:`add_token` ...)
    act directly on the server state; the REST API does the same over the wire.
    """

    def __init__(self, *, mounts: tuple[str, ...] = ("transit",)) -> None:
        self.mounts = set(mounts)
        self.root_token = "root-" + secrets.token_hex(8)
        self._keys: dict[tuple[str, str, str], _TransitKey] = {}
        # token -> {"kind": "root"|"app"|"denied", "namespace": str, ...}
        self._tokens: dict[str, dict[str, Any]] = {self.root_token: {"kind": "root", "policies": ["root"]}}
        self._approles: dict[str, tuple[str, str]] = {}  # role_id -> (secret_id, kind)
        self._k8s_roles: dict[str, tuple[str, str]] = {}  # role -> (jwt, kind)
        self._lock = threading.Lock()
        self._throttle = (0, 1)
        self._throttle_count = 0
        self._throttled = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, for tests
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        handler = type("_Handler", (_VaultHandler,), {"vault": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # idle keep-alive connections must not hold up stop()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="vault-test-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the Vault test server is not running")
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- admin ------------------------------------------------------------------
    def create_key(self, name: str, *, mount: str = "transit", namespace: str = "", derived: bool = False) -> None:
        with self._lock:
            self._create(namespace, mount, name, derived)

    def rotate_key(self, name: str, *, mount: str = "transit", namespace: str = "") -> int:
        with self._lock:
            return self._keys[(namespace, mount, name)].add_version()

    def set_min_decryption_version(self, name: str, version: int, *, mount: str = "transit",
                                   namespace: str = "") -> None:
        with self._lock:
            self._keys[(namespace, mount, name)].min_decryption_version = version

    def add_token(self, kind: str = "app", *, namespace: str = "") -> str:
        """A new token of ``kind`` ``"root"``, ``"app"`` or ``"denied"``."""
        if kind not in ("root", "app", "denied"):
            raise ValueError(f"token kind must be root, app or denied, got {kind!r}")
        token = "hvs." + secrets.token_urlsafe(18)
        with self._lock:
            self._tokens[token] = {"kind": kind, "namespace": namespace, "policies": [kind]}
        return token

    def add_approle(self, kind: str = "app") -> tuple[str, str]:
        """``(role_id, secret_id)`` of a new AppRole whose tokens are of ``kind``."""
        role_id, secret_id = str(uuid.uuid4()), str(uuid.uuid4())
        with self._lock:
            self._approles[role_id] = (secret_id, kind)
        return role_id, secret_id

    def add_kubernetes_role(self, role: str, jwt: str, kind: str = "app") -> None:
        with self._lock:
            self._k8s_roles[role] = (jwt, kind)

    def throttle(self, failures: int, period: int) -> None:
        """Answer ``failures`` of every ``period`` transit calls with 429."""
        if period < 1 or not 0 <= failures <= period:
            raise ValueError("throttle needs 0 <= failures <= period and period >= 1")
        with self._lock:
            self._throttle = (failures, period)
            self._throttle_count = 0
            self._throttled = 0

    def throttled_requests(self) -> int:
        """Transit calls answered 429 since the last :meth:`throttle`."""
        with self._lock:
            return self._throttled

    # -- request handling (called from handler threads) --------------------------
    def handle(self, method: str, path: str, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        self.requests.append((method, path))
        try:
            return self._route(method, path, headers, body)
        except _VaultError as exc:
            return exc.status, {"errors": exc.errors}

    def _route(self, method: str, path: str, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        if not path.startswith("/v1/"):
            raise _VaultError(404)
        rest = path[len("/v1/"):].strip("/")
        namespace = (headers.get("X-Vault-Namespace") or "").strip("/")
        if rest in ("auth/approle/login", "auth/kubernetes/login") and method in ("POST", "PUT"):
            return 200, self._login(rest.split("/")[1], body, namespace)
        token = self._token(headers)
        if rest == "auth/token/lookup-self" and method == "GET":
            return 200, _envelope({"id": token, "policies": self._tokens[token]["policies"],
                                   "namespace_path": self._tokens[token].get("namespace", "")})
        mount, _, op_path = rest.partition("/")
        # Mounts may be nested ("secret/transit"): take the longest mount that matches.
        for candidate in sorted(self.mounts, key=len, reverse=True):
            if rest.startswith(candidate + "/"):
                mount, op_path = candidate, rest[len(candidate) + 1:]
                break
        else:
            raise _VaultError(404, f'no handler for route "{rest}". route entry not found.')
        kind = self._tokens[token]["kind"]
        if kind == "denied":
            raise _VaultError(403, "permission denied")
        if self._tokens[token].get("namespace", "") != namespace and kind != "root":
            raise _VaultError(403, "permission denied")
        with self._lock:
            failures, period = self._throttle
            n = self._throttle_count
            self._throttle_count += 1
            throttled = n % period < failures
            self._throttled += throttled
        if throttled:
            raise _VaultError(429, f'request path "{mount}/{op_path}": rate limit quota exceeded')
        with self._lock:
            return self._transit(method, namespace, mount, op_path, body, root=(kind == "root"))

    def _token(self, headers: Any) -> str:
        token = headers.get("X-Vault-Token") or ""
        auth = headers.get("Authorization") or ""
        if not token and auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
        if token not in self._tokens:
            raise _VaultError(403, "permission denied")
        return token

    def _login(self, method: str, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        with self._lock:
            if method == "approle":
                record = self._approles.get(str(body.get("role_id", "")))
                if record is None:
                    raise _VaultError(400, "invalid role or secret ID")
                secret_id, kind = record
                if not secrets.compare_digest(secret_id, str(body.get("secret_id", ""))):
                    raise _VaultError(400, "invalid role or secret ID")
            else:
                record = self._k8s_roles.get(str(body.get("role", "")))
                if record is None or not secrets.compare_digest(record[0], str(body.get("jwt", ""))):
                    raise _VaultError(403, "permission denied")
                kind = record[1]
        token = self.add_token(kind, namespace=namespace)
        return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
                "data": None, "wrap_info": None, "warnings": None,
                "auth": {"client_token": token, "accessor": secrets.token_hex(12), "policies": [kind],
                         "token_policies": [kind], "lease_duration": 3600, "renewable": True}}

    # -- transit ------------------------------------------------------------------
    def _create(self, namespace: str, mount: str, name: str, derived: bool) -> _TransitKey:
        key = self._keys.get((namespace, mount, name))
        if key is None:
            key = _TransitKey(name=name, derived=derived)
            key.add_version()
            self._keys[(namespace, mount, name)] = key
        return key

    def _existing(self, namespace: str, mount: str, name: str, *, status: int = 400) -> _TransitKey:
        key = self._keys.get((namespace, mount, name))
        if key is None:
            if status == 404:
                raise _VaultError(404)
            raise _VaultError(400, "encryption key not found")
        return key

    def _transit(self, method: str, namespace: str, mount: str, op_path: str, body: dict[str, Any], *,
                 root: bool) -> tuple[int, dict[str, Any] | None]:
        parts = op_path.split("/")
        if parts[0] == "keys" and len(parts) == 2:
            name = parts[1]
            if method == "GET":
                return 200, _envelope(_key_info(self._existing(namespace, mount, name, status=404)))
            if method in ("POST", "PUT"):
                if not root:
                    raise _VaultError(403, "permission denied")
                if body.get("type", "aes256-gcm96") != "aes256-gcm96":
                    raise _VaultError(400, f"unsupported key type {body.get('type')!r} in this test server")
                self._create(namespace, mount, name, bool(body.get("derived", False)))
                return 204, None
        if parts[0] == "keys" and len(parts) == 2 and method == "DELETE":
            if not root:
                raise _VaultError(403, "permission denied")
            name = parts[1]
            key = self._keys.get((namespace, mount, name))
            if key is None:  # Vault's wording (a 400, not a 404)
                raise _VaultError(400, f"error deleting policy {name}: could not delete key; not found")
            if not key.deletion_allowed:
                raise _VaultError(400, f"error deleting policy {name}: deletion is not allowed for this key")
            del self._keys[(namespace, mount, name)]
            return 204, None
        if parts[0] == "keys" and len(parts) == 3 and parts[2] == "config" and method in ("POST", "PUT") \
                and (namespace, mount, parts[1]) not in self._keys:
            raise _VaultError(400 if root else 403,
                              f"no existing key named {parts[1]} could be found" if root else "permission denied")
        if parts[0] == "keys" and len(parts) == 3 and method in ("POST", "PUT"):
            key = self._existing(namespace, mount, parts[1], status=404)
            if not root:
                raise _VaultError(403, "permission denied")
            if parts[2] == "rotate":
                key.add_version()
                return 204, None
            if parts[2] == "config":
                if "min_decryption_version" in body:
                    key.min_decryption_version = int(body["min_decryption_version"])
                if "min_encryption_version" in body:
                    key.min_encryption_version = int(body["min_encryption_version"])
                if "deletion_allowed" in body:
                    key.deletion_allowed = bool(body["deletion_allowed"])
                return 204, None
        if method in ("POST", "PUT") and len(parts) == 3 and parts[0] == "datakey":
            if parts[1] not in ("plaintext", "wrapped"):
                raise _VaultError(400, "Invalid path, must be 'plaintext' or 'wrapped'")
            key = self._existing(namespace, mount, parts[2])
            bits = int(body.get("bits", 256))
            if bits not in (128, 256, 512):
                raise _VaultError(400, "invalid bit length")
            data_key = secrets.token_bytes(bits // 8)
            version = key.latest_version
            out = {"ciphertext": _seal(key, version, data_key, _b64(body, "context"), None),
                   "key_version": version}
            if parts[1] == "plaintext":
                out["plaintext"] = base64.b64encode(data_key).decode()
            return 200, _envelope(out)
        if method in ("POST", "PUT") and len(parts) == 2 and parts[0] in ("encrypt", "decrypt", "rewrap"):
            op, name = parts
            batch = body.get("batch_input")
            if batch is None:
                return 200, _envelope(self._crypt(op, namespace, mount, name, body, root=root))
            if not isinstance(batch, list) or not all(isinstance(item, dict) for item in batch):
                raise _VaultError(400, "failed to parse batch input: expected a list of objects")
            results: list[dict[str, Any]] = []
            for item in batch:  # Vault: each item on its own; the output keeps the input's order
                try:
                    out = self._crypt(op, namespace, mount, name, item, root=root)
                except _VaultError as exc:
                    out = {"error": "; ".join(exc.errors)}
                if "reference" in item:
                    out["reference"] = item["reference"]
                results.append(out)
            failed = sum(1 for r in results if "error" in r)
            status = 200
            if failed:  # Vault: 400 unless partial_failure_response_code is set and some items succeeded
                status = int(body.get("partial_failure_response_code") or 400) if failed < len(results) else 400
            return status, _envelope({"batch_results": results})
        raise _VaultError(405 if parts[0] in ("keys", "encrypt", "decrypt", "rewrap", "datakey") else 404,
                          f'unsupported path "{mount}/{op_path}" in this test server')


    def _crypt(self, op: str, namespace: str, mount: str, name: str, body: dict[str, Any], *,
               root: bool) -> dict[str, Any]:
        """One encrypt / decrypt / rewrap (a request, or one item of its ``batch_input``)."""
        if op == "encrypt":
            key = self._keys.get((namespace, mount, name))
            if key is None:
                if not root:  # Vault upserts only with the policy's create capability
                    raise _VaultError(400, "encryption key not found")
                key = self._create(namespace, mount, name, bool(body.get("context")))
            plaintext = _b64(body, "plaintext")
            if plaintext is None:
                raise _VaultError(400, "missing plaintext to encrypt")
            version = int(body.get("key_version") or key.latest_version)
            if version not in key.versions or version < key.min_encryption_version:
                raise _VaultError(400, "requested version for encryption is invalid")
            ciphertext = _seal(key, version, plaintext, _b64(body, "context"), _b64(body, "associated_data"))
            return {"ciphertext": ciphertext, "key_version": version}
        key = self._existing(namespace, mount, name)
        plaintext = _open(key, str(body.get("ciphertext") or ""), _b64(body, "context"),
                          _b64(body, "associated_data") if op == "decrypt" else None)
        if op == "decrypt":
            return {"plaintext": base64.b64encode(plaintext).decode()}
        version = key.latest_version
        return {"ciphertext": _seal(key, version, plaintext, _b64(body, "context"), None), "key_version": version}


def _b64(body: dict[str, Any], name: str) -> bytes | None:
    value = body.get(name)
    if value in (None, ""):
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise _VaultError(400, f"failed to base64-decode {name}") from None


def _version_key(key: _TransitKey, version: int, context: bytes | None) -> bytes:
    if not key.derived:
        return key.versions[version]
    if not context:
        raise _VaultError(400, "missing 'context' for key derivation; the key was created using a derived key, "
                               "which means additional, per-request information must be included in order to "
                               "perform operations with the key")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(key.versions[version])


def _seal(key: _TransitKey, version: int, plaintext: bytes, context: bytes | None, aad: bytes | None) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_version_key(key, version, context)).encrypt(nonce, plaintext, aad)
    return f"vault:v{version}:" + base64.b64encode(nonce + sealed).decode()


def _open(key: _TransitKey, ciphertext: str, context: bytes | None, aad: bytes | None) -> bytes:
    match = _CIPHERTEXT.match(ciphertext)
    if match is None:
        raise _VaultError(400, "invalid ciphertext: no prefix")
    version = int(match.group(1))
    if version < key.min_decryption_version:
        raise _VaultError(400, "ciphertext or signature version is disallowed by policy (too old)")
    if version not in key.versions:
        raise _VaultError(400, "invalid ciphertext: version is too new")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except ValueError:
        raise _VaultError(400, "invalid ciphertext: could not decode") from None
    if len(raw) < 12 + 16:
        raise _VaultError(400, "invalid ciphertext: too short")
    try:
        return AESGCM(_version_key(key, version, context)).decrypt(raw[:12], raw[12:], aad)
    except InvalidTag:
        raise _VaultError(400, "cipher: message authentication failed") from None


def _key_info(key: _TransitKey) -> dict[str, Any]:
    return {
        "name": key.name, "type": "aes256-gcm96", "derived": key.derived, "exportable": False,
        "allow_plaintext_backup": False, "deletion_allowed": key.deletion_allowed, "auto_rotate_period": 0,
        "keys": {str(v): key.created[v] for v in sorted(key.versions)},
        "latest_version": key.latest_version, "min_available_version": 0,
        "min_decryption_version": key.min_decryption_version,
        "min_encryption_version": key.min_encryption_version,
        "supports_encryption": True, "supports_decryption": True, "supports_derivation": True,
        "supports_signing": False, "imported": False,
    }


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
            "data": data, "wrap_info": None, "warnings": None, "auth": None}


class _VaultHandler(BaseHTTPRequestHandler):
    vault: VaultTransitServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections close on their own

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError:
            status, payload = 400, {"errors": ["failed to parse JSON input"]}
        else:
            path = self.path.split("?", 1)[0]
            status, payload = self.vault.handle(self.command, path, self.headers, body)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Cache-Control", "no-store")
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return  # keep test output clean; self.vault.requests records what came in


class VaultTransitHarness(ProviderHarness):
    """The Vault Transit provider against :class:`VaultTransitServer` (hvac over HTTP).

    :param derived: create the test key as a derived key and bind the encryption
        context through Vault's key derivation instead of the client-side tag.
    """

    name = "vault"

    def __init__(self, *, key_name: str = "pii", derived: bool = False) -> None:
        self.key_name = key_name
        self.derived = derived
        self.server = VaultTransitServer()
        self._app_token = ""
        self._denied_token = ""

    def start(self) -> None:
        self.server.start()
        self.server.create_key(self.key_name, derived=self.derived)
        self._app_token = self.server.add_token("app")
        self._denied_token = self.server.add_token("denied")

    def stop(self) -> None:
        self.server.stop()

    def key_uri(self, name: str | None = None) -> str:
        return f"vault://{self.server.address}/transit/keys/{name or self.key_name}"

    def _options(self, token: str) -> dict[str, Any]:
        # Short retries keep throttle(1, 1) well under a second.
        return {"tls": False, "token": token, "derived": self.derived,
                "retry_max_attempts": 4, "retry_base_delay": 0.01, "retry_deadline": 5.0}

    def provider(self) -> KmsProvider:
        from spark_kms.kms.vault import VaultTransitProvider

        return VaultTransitProvider(self.key_uri(), **self._options(self._app_token))

    def provider_for_missing_key(self) -> KmsProvider:
        from spark_kms.kms.vault import VaultTransitProvider

        return VaultTransitProvider(self.key_uri("no-such-key"), **self._options(self._app_token))

    def provider_denied(self) -> KmsProvider:
        from spark_kms.kms.vault import VaultTransitProvider

        return VaultTransitProvider(self.key_uri(), **self._options(self._denied_token))

    def rotate(self) -> None:
        self.server.rotate_key(self.key_name)

    def new_key_provider(self) -> KmsProvider:
        """A provider bound to a new key of its own, with the root token (deleting a key takes ``update``
        on its config and ``delete`` on it, which the harness's app tokens lack)."""
        from spark_kms.kms.vault import VaultTransitProvider

        name = f"extra-{uuid.uuid4().hex[:8]}"
        self.server.create_key(name, derived=self.derived)
        return VaultTransitProvider(self.key_uri(name), **self._options(self.server.root_token))

    def disable_key(self, provider: KmsProvider) -> None:
        """Transit keys cannot be disabled; the nearest is retiring every version that exists now
        (rotate, then ``min_decryption_version`` = the new version): Vault answers older wraps "too old"."""
        from spark_kms.kms.vault import VaultTransitProvider

        assert isinstance(provider, VaultTransitProvider)
        latest = self.server.rotate_key(provider.name, mount=provider.mount)
        self.server.set_min_decryption_version(provider.name, latest, mount=provider.mount)

    def throttle(self, failures: int, period: int) -> None:
        self.server.throttle(failures, period)

    def throttled_requests(self) -> int:
        return self.server.throttled_requests()

    def max_throttled_requests(self) -> int:
        """``retry_max_attempts`` (4): the provider retries 429s in spark_kms.kms.retry, which
        counts attempts (its 5 s deadline is never reached with backoffs of at most 0.08 s)."""
        return int(self._options("")["retry_max_attempts"])
