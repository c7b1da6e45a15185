"""An AWS KMS test server: moto's server behind a small fault-injecting proxy.

::

    boto3 (AwsKmsProvider) --HTTP--> KmsFaultProxy (127.0.0.1) --HTTP--> moto ThreadedMotoServer (127.0.0.1)

moto speaks the real KMS JSON-1.1 protocol and checks encryption contexts, but
does not throttle, does not enforce key policies, lets disabled keys decrypt and
does not change key material on rotation. The proxy closes those gaps *on the
wire*, answering exactly as AWS does (status 400, ``x-amzn-ErrorType`` header,
``{"__type": ..., "message": ...}`` body), so boto3's real retry and error
parsing run:

- throttling: ``failures`` of every ``period`` KMS requests get ``ThrottlingException``;
- denied principals: requests SigV4-signed with a denied access key id get
  ``AccessDeniedException``;
- key state: requests that touch a key marked disabled / pending deletion get
  ``DisabledException`` / ``KMSInvalidStateException`` (``<arn> is pending deletion.``);
  ScheduleKeyDeletion / CancelKeyDeletion / DisableKey / EnableKey sent through the proxy
  mark the key, and a second ScheduleKeyDeletion is refused as AWS does;
- key material: each key has a list of ``KeyMaterialId`` s (64 hex digits, a new one
  per rotation); the proxy adds them to GenerateDataKey / Decrypt / ReEncrypt /
  DescribeKey / ListKeyRotations responses as current AWS KMS does. moto keeps one
  real key material per key, so old wraps unwrapping after a rotation is by
  construction here; what the tests check through the proxy is the bookkeeping.

Admin operations of :class:`AwsKmsHarness` (create, rotate, disable) talk to moto
directly, not through the proxy, so they are never throttled.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spark_kms.kms.aws import AwsKmsProvider
from spark_kms.kms.base import KmsProvider
from spark_kms.testing.harness import ProviderHarness

__all__ = ["AwsKmsHarness", "KmsFaultProxy", "ProxyState"]

ACCOUNT = "123456789012"
REGION = "us-east-1"
ALLOWED_ACCESS_KEY = "AKIASPARKKMSALLOWED0"
DENIED_ACCESS_KEY = "AKIASPARKKMSDENIED00"

#: operations a key's state does not refuse (AWS lets you describe, re-enable, schedule or cancel the
#: deletion of a disabled key; ScheduleKeyDeletion of a key pending deletion is refused before forwarding)
_STATE_EXEMPT = {"DescribeKey", "ListKeyRotations", "EnableKey", "DisableKey", "ScheduleKeyDeletion",
                 "CancelKeyDeletion", "ListAliases", "ListKeys"}
_CREDENTIAL_RE = re.compile(r"Credential=([A-Z0-9]+)/")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class ProxyState:
    """What the proxy injects, shared with the harness. All methods are thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failures = 0
        self.period = 1
        self.kms_requests = 0
        self.throttled = 0
        self.requests_by_operation: Counter[str] = Counter()
        self.access_keys_seen: Counter[str] = Counter()
        self.denied_access_keys: set[str] = {DENIED_ACCESS_KEY}
        # key ARN -> AWS error code answered for any use of it
        self.key_state_errors: dict[str, str] = {}
        # key ARN -> key material ids, oldest first; the last one is current
        self.materials: dict[str, list[str]] = {}
        # base64 ciphertext blob -> key material id that made it
        self.blob_material: dict[str, str] = {}
        # key ARN -> CustomKeyStoreId (moto keeps a key's Origin but not its custom key store)
        self.custom_key_stores: dict[str, str] = {}
        # KMS requests being served right now, and the most at once (a client's concurrency, seen server side)
        self.in_flight = 0
        self.max_in_flight = 0

    def current_material(self, arn: str) -> str:
        with self.lock:
            ids = self.materials.setdefault(arn, [_material_id(arn, 0)])
            return ids[-1]

    def rotate(self, arn: str) -> str:
        with self.lock:
            ids = self.materials.setdefault(arn, [_material_id(arn, 0)])
            ids.append(_material_id(arn, len(ids)))
            return ids[-1]

    def should_throttle(self) -> bool:
        with self.lock:
            n = self.kms_requests
            self.kms_requests += 1
            hit = self.failures > 0 and (n % self.period) < self.failures
            if hit:
                self.throttled += 1
            return hit


def _material_id(arn: str, n: int) -> str:
    # Deterministic and of the real shape: 64 lowercase hex digits.
    return hashlib.sha256(f"{arn}#material-{n}".encode()).hexdigest()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the client's
    # delayed ACK (~40 ms a request on Linux), which would dwarf the KMS work being tested or benchmarked.
    disable_nagle_algorithm = True
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        state = self.server.state
        if not target.startswith("TrentService."):
            self._forward(body)  # STS, IAM...: untouched
            return
        operation = target.split(".", 1)[1]
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._handle_kms(operation, body)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _handle_kms(self, operation: str, body: bytes) -> None:
        state = self.server.state
        m = _CREDENTIAL_RE.search(self.headers.get("Authorization", ""))
        access_key = m.group(1) if m else ""
        with state.lock:
            state.requests_by_operation[operation] += 1
            state.access_keys_seen[access_key] += 1
            denied = access_key in state.denied_access_keys
        if denied:
            self._error(
                "AccessDeniedException",
                f"User: arn:aws:iam::{ACCOUNT}:user/denied is not authorized to perform: kms:{operation} "
                "on this resource because no resource-based policy allows the action",
            )
            return
        if state.should_throttle():
            self._error("ThrottlingException", "Rate exceeded")
            return
        if operation == "ScheduleKeyDeletion":
            arn = self._arn_of(str(json.loads(body or b"{}").get("KeyId", "")), [])
            with state.lock:
                pending = state.key_state_errors.get(arn) == "KMSInvalidStateException"
            if pending:  # AWS refuses to schedule a key pending deletion again (moto would reschedule it)
                self._error("KMSInvalidStateException", f"{arn} is pending deletion.")
                return
        if operation in ("ScheduleKeyDeletion", "CancelKeyDeletion", "EnableKey", "DisableKey"):
            # moto looks these up by bare key id only; AWS takes an ARN too (moto does not check SigV4)
            request = json.loads(body or b"{}")
            key_id = str(request.get("KeyId", ""))
            if key_id.startswith("arn:") and ":key/" in key_id:
                body = json.dumps({**request, "KeyId": key_id.rsplit("/", 1)[1]}).encode()
        status, headers, payload = self._upstream(body)
        if status == 200 and payload:
            request = json.loads(body or b"{}")
            response = json.loads(payload)
            if not isinstance(response, dict):  # moto answers "null" to EnableKey / DisableKey
                response = {}
            error = self._key_state_error(operation, response)
            if error:
                self._error(*error)
                return
            response = self._track_key_state(operation, request, response)
            response = self._add_material_ids(operation, request, response)
            payload = json.dumps(response).encode()
        self._reply(status, headers, payload)

    # -- pieces ------------------------------------------------------------------
    def _key_state_error(self, operation: str, response: dict[str, Any]) -> tuple[str, str] | None:
        state = self.server.state
        arns = [response.get("KeyId"), response.get("SourceKeyId")]
        if operation in _STATE_EXEMPT:
            return None
        with state.lock:
            for arn in arns:
                code = state.key_state_errors.get(arn or "")
                if code == "DisabledException":
                    return code, f"{arn} is disabled."
                if code:
                    return code, f"{arn} is pending deletion."
        return None

    def _track_key_state(self, operation: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """Key-state changes made through the proxy (a provider's ScheduleKeyDeletion, CancelKeyDeletion...),
        so the data plane then answers as AWS does; ScheduleKeyDeletion's response gains AWS's
        ``KeyState`` and ``PendingWindowInDays``, which moto leaves out."""
        arn = self._arn_of(str(response.get("KeyId") or request.get("KeyId", "")), [])
        codes = {"ScheduleKeyDeletion": "KMSInvalidStateException", "CancelKeyDeletion": "DisabledException",
                 "DisableKey": "DisabledException", "EnableKey": None}
        if operation not in codes:
            return response
        with self.server.state.lock:
            if codes[operation] is None:
                self.server.state.key_state_errors.pop(arn, None)
            else:
                self.server.state.key_state_errors[arn] = str(codes[operation])
        if operation == "ScheduleKeyDeletion":
            response["KeyId"] = arn  # AWS answers with the key ARN
            response.setdefault("KeyState", "PendingDeletion")
            response.setdefault("PendingWindowInDays", int(request.get("PendingWindowInDays") or 30))
        return response

    def _add_material_ids(self, operation: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        state = self.server.state
        arn = response.get("KeyId", "")
        if operation == "GenerateDataKey" or operation == "GenerateDataKeyWithoutPlaintext":
            material = state.current_material(arn)
            response["KeyMaterialId"] = material
            with state.lock:
                state.blob_material[response["CiphertextBlob"]] = material
        elif operation == "Encrypt":  # real Encrypt responses carry no KeyMaterialId
            material = state.current_material(arn)
            with state.lock:
                state.blob_material[response["CiphertextBlob"]] = material
        elif operation == "Decrypt":
            with state.lock:
                known = state.blob_material.get(request.get("CiphertextBlob", ""))
            response["KeyMaterialId"] = known or state.current_material(arn)
        elif operation == "ReEncrypt":
            with state.lock:
                known = state.blob_material.get(request.get("CiphertextBlob", ""))
            response["SourceKeyMaterialId"] = known or state.current_material(response.get("SourceKeyId", ""))
            material = state.current_material(arn)
            response["DestinationKeyMaterialId"] = material
            with state.lock:
                state.blob_material[response["CiphertextBlob"]] = material
        elif operation == "DescribeKey":
            meta = response.get("KeyMetadata", {})
            meta["CurrentKeyMaterialId"] = state.current_material(meta.get("Arn", ""))
            with state.lock:
                store = state.custom_key_stores.get(meta.get("Arn", ""))
            if store:
                meta["CustomKeyStoreId"] = store
        elif operation == "ListKeyRotations":
            rotations = response.get("Rotations", [])
            key_arn = self._arn_of(request.get("KeyId", ""), rotations)
            with state.lock:
                ids = list(state.materials.get(key_arn, [_material_id(key_arn, 0)]))
            entries = [
                {"KeyId": key_arn, "KeyMaterialId": mid, "RotationType": "ON_DEMAND",
                 "KeyMaterialState": "CURRENT" if i == len(ids) - 1 else "NON_CURRENT",
                 **({"RotationDate": r["RotationDate"]} if (r := _nth(rotations, i - 1)) else {})}
                for i, mid in enumerate(ids)
            ]
            if request.get("IncludeKeyMaterial") != "ALL_KEY_MATERIAL":
                entries = entries[1:]  # the initial material is not a rotation
            response["Rotations"] = entries
        return response

    def _arn_of(self, key_id: str, rotations: list[dict[str, Any]]) -> str:
        if key_id.startswith("arn:"):
            return key_id
        with self.server.state.lock:
            for arn in self.server.state.materials:
                if arn.endswith("/" + key_id):
                    return arn
        return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"

    def _upstream(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS], payload
        finally:
            conn.close()

    def _forward(self, body: bytes) -> None:
        self._reply(*self._upstream(body))

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, code: str, message: str) -> None:
        payload = json.dumps({"__type": code, "message": message}).encode()
        self._reply(
            400,
            [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-RequestId", str(uuid.uuid4())),
                ("x-amzn-ErrorType", f"{code}:"),
            ],
            payload,
        )


def _nth(items: list[dict[str, Any]], i: int) -> dict[str, Any] | None:
    return items[i] if 0 <= i < len(items) else None


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], state: ProxyState) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.state = state


class KmsFaultProxy:
    """The fault-injecting HTTP proxy in front of moto (see the module docstring)."""

    def __init__(self, upstream: tuple[str, int], state: ProxyState | None = None) -> None:
        self.state = state or ProxyState()
        self._server = _ProxyServer(upstream, self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kms-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class AwsKmsHarness(ProviderHarness):
    """moto + :class:`KmsFaultProxy`, one symmetric key with an alias.

    ``provider()`` is bound to the key ARN; :attr:`key_arn`, :attr:`alias`,
    :attr:`moto_url` and :attr:`proxy` are there for provider-specific tests.
    """

    name = "aws"

    def __init__(self, *, max_attempts: int = 3, alias: str | None = None) -> None:
        self.max_attempts = max_attempts
        # moto's backends are process-wide: a unique alias lets several harnesses coexist
        self.alias = alias or f"alias/spark-kms-test-{uuid.uuid4().hex[:8]}"
        self.key_arn = ""
        self.key_id = ""
        self._moto: Any = None
        self.proxy: KmsFaultProxy | None = None
        self._admin: Any = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self.proxy = KmsFaultProxy((host, port))
        self.proxy.start()
        self._admin = boto3.client(
            "kms", region_name=REGION, endpoint_url=self.moto_url,
            aws_access_key_id="AKIASPARKKMSADMIN000", aws_secret_access_key="admin-secret",
        )
        meta = self._admin.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT",
                                      Description="spark_kms contract tests")["KeyMetadata"]
        self.key_arn, self.key_id = meta["Arn"], meta["KeyId"]
        self._admin.create_alias(AliasName=self.alias, TargetKeyId=self.key_id)
        self.proxy.state.current_material(self.key_arn)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    # -- providers ----------------------------------------------------------------
    def _options(self, access_key: str = ALLOWED_ACCESS_KEY) -> dict[str, Any]:
        assert self.proxy is not None, "start() the harness first"
        return {
            "endpoint_url": self.proxy.url,
            "region": REGION,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": "test-secret",
            "max_attempts": self.max_attempts,
        }

    def provider(self) -> AwsKmsProvider:
        return AwsKmsProvider(f"aws-kms://{self.key_arn}", **self._options())

    def provider_for(self, key_ref: str, **overrides: Any) -> AwsKmsProvider:
        """A provider for another URI form of a key on this server (``alias/...``, a key id...)."""
        return AwsKmsProvider(f"aws-kms://{key_ref}", **{**self._options(), **overrides})

    def provider_for_missing_key(self) -> AwsKmsProvider:
        missing = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{uuid.uuid4()}"
        return AwsKmsProvider(f"aws-kms://{missing}", **self._options())

    def provider_denied(self) -> AwsKmsProvider:
        return AwsKmsProvider(f"aws-kms://{self.key_arn}", **self._options(DENIED_ACCESS_KEY))

    # -- admin -------------------------------------------------------------------------
    def rotate(self) -> None:
        assert self.proxy is not None
        self._admin.rotate_key_on_demand(KeyId=self.key_id)
        self.proxy.state.rotate(self.key_arn)

    def throttle(self, failures: int, period: int) -> None:
        if period < 1 or not 0 <= failures <= period:
            raise ValueError(f"throttle(failures, period) needs 0 <= failures <= period and period >= 1, "
                             f"got ({failures}, {period})")
        assert self.proxy is not None
        with self.proxy.state.lock:
            self.proxy.state.failures, self.proxy.state.period = failures, period
            self.proxy.state.kms_requests = 0
            self.proxy.state.throttled = 0

    def throttled_requests(self) -> int:
        """KMS requests answered with ThrottlingException since the last :meth:`throttle`."""
        assert self.proxy is not None
        with self.proxy.state.lock:
            return self.proxy.state.throttled

    def max_throttled_requests(self) -> int:
        """``max_attempts`` (default 3): botocore's ``total_max_attempts`` counts the first
        request too, and standard mode's retry quota (500 tokens, 5 per retry) per client is
        far from empty in a test."""
        return self.max_attempts

    def set_key_state(self, state: str) -> None:
        """``"enabled"``, ``"disabled"`` or ``"pending_deletion"``, in moto and in the proxy."""
        assert self.proxy is not None
        codes = {"disabled": "DisabledException", "pending_deletion": "KMSInvalidStateException"}
        if state == "enabled":
            self._admin.enable_key(KeyId=self.key_id)
        elif state == "disabled":
            self._admin.disable_key(KeyId=self.key_id)
        elif state != "pending_deletion":
            raise ValueError(f"unknown key state {state!r}")
        with self.proxy.state.lock:
            if state in codes:
                self.proxy.state.key_state_errors[self.key_arn] = codes[state]
            else:
                self.proxy.state.key_state_errors.pop(self.key_arn, None)

    def new_key_provider(self) -> AwsKmsProvider:
        """A provider bound to a new key of its own (tests that schedule its deletion)."""
        return self.provider_for(self.create_key())

    def disable_key(self, provider: KmsProvider) -> None:
        """Disable (not delete) the key of ``provider``, in moto and in the proxy."""
        assert self.proxy is not None and isinstance(provider, AwsKmsProvider)
        arn = provider.key_ref
        self._admin.disable_key(KeyId=arn.rsplit("/", 1)[1])  # moto looks keys up by bare id here
        with self.proxy.state.lock:
            self.proxy.state.key_state_errors[arn] = "DisabledException"

    def create_key(self, *, origin: str = "AWS_KMS", custom_key_store_id: str | None = None) -> str:
        """Another symmetric key on this server, with DescribeKey's ``Origin`` (moto keeps it) and
        ``CustomKeyStoreId`` (the proxy adds it); its ARN, for :meth:`provider_for`.

        moto makes no key material for ``EXTERNAL`` origins and checks no custom key store, so such
        keys are for DescribeKey (protection levels); AWS_CLOUDHSM / EXTERNAL_KEY_STORE keys also wrap.
        """
        assert self.proxy is not None
        meta = self._admin.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT", Origin=origin,
                                      Description=f"spark_kms tests ({origin})")["KeyMetadata"]
        arn = str(meta["Arn"])
        self.proxy.state.current_material(arn)
        if custom_key_store_id:
            with self.proxy.state.lock:
                self.proxy.state.custom_key_stores[arn] = custom_key_store_id
        return arn

    def blob_key_material(self, ciphertext: bytes) -> str | None:
        """The key material id the proxy saw make ``ciphertext`` (for tests)."""
        assert self.proxy is not None
        with self.proxy.state.lock:
            return self.proxy.state.blob_material.get(base64.b64encode(ciphertext).decode())
