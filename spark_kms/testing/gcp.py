"""A Cloud KMS test server: an in-process gRPC server speaking
``google.cloud.kms.v1.KeyManagementService`` to the real google-cloud-kms client.

Implemented methods: CreateKeyRing, CreateCryptoKey, GetCryptoKey,
CreateCryptoKeyVersion, UpdateCryptoKeyPrimaryVersion, UpdateCryptoKeyVersion
(state ENABLED / DISABLED), DestroyCryptoKeyVersion, RestoreCryptoKeyVersion,
ListCryptoKeyVersions, Encrypt, Decrypt — with the CRC32C request/response checksums
of the real API.

DestroyCryptoKeyVersion follows the documented API: only an ENABLED or DISABLED version may be
scheduled (else FAILED_PRECONDITION); it becomes DESTROY_SCHEDULED with ``destroy_time`` = now +
the CryptoKey's ``destroy_scheduled_duration`` (24 h unless the key was created with another), and
turns DESTROYED (material erased) once that time has passed; RestoreCryptoKeyVersion brings a
DESTROY_SCHEDULED version back as DISABLED. Encrypt and Decrypt with a version that is not ENABLED
answer FAILED_PRECONDITION naming the state, as Cloud KMS does.

Each CryptoKeyVersion holds a random 256-bit AES key; Encrypt uses real
AES-256-GCM (``cryptography``). Server-side ciphertext layout (opaque to clients,
like Google's)::

    0x01 | version number (uint32, big endian) | nonce (12 bytes) | AES-GCM ciphertext + tag (16 bytes)

with GCM AAD = CryptoKey resource name | 0x00 | request AAD, so a ciphertext
only decrypts under the same key and AAD, and names the version that made it.

Fault injection: a call whose ``authorization`` metadata carries a denied bearer
token gets PERMISSION_DENIED; :meth:`GcpKmsHarness.throttle` answers a pattern
of data-plane calls with RESOURCE_EXHAUSTED; :meth:`GcpKmsHarness.corrupt`
makes responses carry wrong checksums (or unverified request checksums).
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud.kms_v1 import types as kms_types
from google.protobuf import duration_pb2, timestamp_pb2

from spark_kms.kms.base import KmsProvider
from spark_kms.kms.gcp import GcpKmsProvider, crc32c
from spark_kms.testing.harness import ProviderHarness

__all__ = ["CloudKmsServer", "GcpKmsHarness"]

SERVICE = "google.cloud.kms.v1.KeyManagementService"
ALLOWED_TOKEN = "spark-kms-test-token"
DENIED_TOKEN = "spark-kms-denied-token"
ADMIN_TOKEN = "spark-kms-admin-token"
_FORMAT = 1
_HEADER = struct.Struct(">BI")
_DATA_PLANE = {"Encrypt", "Decrypt", "GetCryptoKey", "ListCryptoKeyVersions"}
_State = kms_types.CryptoKeyVersion.CryptoKeyVersionState
#: Cloud KMS's documented default wait between DestroyCryptoKeyVersion and the material's destruction
DEFAULT_DESTROY_SCHEDULED_S = 24 * 3600


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CloudKmsServer:
    """The server's state and methods. Thread-safe; one instance per harness."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key_rings: set[str] = set()
        # CryptoKey name -> {"versions": {n: [aes_key, state]}, "primary": n, "purpose": ...}
        self.keys: dict[str, dict[str, Any]] = {}
        self.denied_tokens: set[str] = {DENIED_TOKEN}
        self.failures = 0
        self.period = 1
        self.data_calls = 0
        self.throttled = 0
        self.calls: Counter[str] = Counter()
        #: names of faults to inject: "encrypt_ciphertext_crc", "encrypt_unverified", "decrypt_plaintext_crc"
        self.corruptions: set[str] = set()
        self._server: grpc.Server | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> str:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, fn), request_deserializer=req.deserialize, response_serializer=resp.serialize
            )
            for name, (fn, req, resp) in self._methods().items()
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def _methods(self) -> dict[str, tuple[Callable[[Any], Any], type, type]]:
        t = kms_types
        return {
            "CreateKeyRing": (self.create_key_ring, t.CreateKeyRingRequest, t.KeyRing),
            "CreateCryptoKey": (self.create_crypto_key, t.CreateCryptoKeyRequest, t.CryptoKey),
            "GetCryptoKey": (self.get_crypto_key, t.GetCryptoKeyRequest, t.CryptoKey),
            "CreateCryptoKeyVersion": (self.create_crypto_key_version, t.CreateCryptoKeyVersionRequest,
                                       t.CryptoKeyVersion),
            "UpdateCryptoKeyPrimaryVersion": (self.update_primary, t.UpdateCryptoKeyPrimaryVersionRequest,
                                              t.CryptoKey),
            "UpdateCryptoKeyVersion": (self.update_version, t.UpdateCryptoKeyVersionRequest, t.CryptoKeyVersion),
            "DestroyCryptoKeyVersion": (self.destroy_version, t.DestroyCryptoKeyVersionRequest, t.CryptoKeyVersion),
            "RestoreCryptoKeyVersion": (self.restore_version, t.RestoreCryptoKeyVersionRequest, t.CryptoKeyVersion),
            "ListCryptoKeyVersions": (self.list_versions, t.ListCryptoKeyVersionsRequest,
                                      t.ListCryptoKeyVersionsResponse),
            "Encrypt": (self.encrypt, t.EncryptRequest, t.EncryptResponse),
            "Decrypt": (self.decrypt, t.DecryptRequest, t.DecryptResponse),
        }

    def _wrap(self, name: str, fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            metadata = dict(context.invocation_metadata())
            token = str(metadata.get("authorization", "")).removeprefix("Bearer ")
            with self.lock:
                self.calls[name] += 1
                denied = token in self.denied_tokens
                throttled = False
                if name in _DATA_PLANE:
                    n = self.data_calls
                    self.data_calls += 1
                    throttled = self.failures > 0 and n % self.period < self.failures
                    self.throttled += throttled
            if denied:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Permission 'cloudkms.cryptoKeyVersions.use' denied on resource "
                    f"'{getattr(request, 'name', '') or getattr(request, 'parent', '')}' (or it may not exist).",
                )
            if throttled:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "Quota exceeded for quota metric 'Cryptographic requests'.")
            try:
                with self.lock:
                    return fn(request)
            except _Abort as exc:
                context.abort(exc.code, exc.message)

        return handler

    # -- helpers (called with the lock held) -----------------------------------------------
    def _key(self, name: str) -> dict[str, Any]:
        key = self.keys.get(name)
        if key is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKey {name} not found.")
        return key

    def _version_message(self, key_name: str, n: int) -> kms_types.CryptoKeyVersion:
        self._apply_due_destruction(key_name)
        _, state = self.keys[key_name]["versions"][n]
        msg = kms_types.CryptoKeyVersion(
            name=f"{key_name}/cryptoKeyVersions/{n}",
            state=state,
            protection_level=self.keys[key_name].get("protection_level", kms_types.ProtectionLevel.SOFTWARE),
            algorithm=kms_types.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000 + n),
        )
        destroy_time = self.keys[key_name].setdefault("destroy_times", {}).get(n)
        if destroy_time is not None:
            msg.destroy_time = timestamp_pb2.Timestamp(seconds=int(destroy_time))
            if state == _State.DESTROYED:
                msg.destroy_event_time = timestamp_pb2.Timestamp(seconds=int(destroy_time))
        return msg

    def _apply_due_destruction(self, key_name: str) -> None:
        """DESTROY_SCHEDULED versions whose destroy_time has passed become DESTROYED, material erased."""
        key = self.keys[key_name]
        now = time.time()
        for n, when in key.setdefault("destroy_times", {}).items():
            entry = key["versions"][n]
            if entry[1] == _State.DESTROY_SCHEDULED and now >= when:
                entry[0], entry[1] = b"", _State.DESTROYED

    @staticmethod
    def _state_refusal(version_name: str, state: Any) -> _Abort:
        return _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                      f"The request cannot be fulfilled. Resource {version_name} has value "
                      f"{_State(state).name} in field crypto_key_version.state.")

    def _key_message(self, name: str) -> kms_types.CryptoKey:
        key = self.keys[name]
        msg = kms_types.CryptoKey(
            name=name, purpose=kms_types.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
            version_template=kms_types.CryptoKeyVersionTemplate(
                protection_level=key.get("protection_level", kms_types.ProtectionLevel.SOFTWARE),
                algorithm=kms_types.CryptoKeyVersion.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION),
        )
        if key["primary"]:
            msg.primary = self._version_message(name, key["primary"])
        msg.destroy_scheduled_duration = duration_pb2.Duration(
            seconds=int(key.get("destroy_scheduled_s", DEFAULT_DESTROY_SCHEDULED_S)))
        return msg

    def _new_version(self, key_name: str) -> int:
        versions = self.keys[key_name]["versions"]
        n = max(versions, default=0) + 1
        versions[n] = [AESGCM.generate_key(bit_length=256), _State.ENABLED]
        return n

    @staticmethod
    def _check_crc(request: Any, data_field: str, crc_field: str) -> None:
        if crc_field in request and getattr(request, crc_field) != crc32c(getattr(request, data_field)):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"The checksum in field {crc_field} did not match the data in field {data_field}.")

    # -- admin methods --------------------------------------------------------------------------
    def create_key_ring(self, request: Any) -> Any:
        name = f"{request.parent}/keyRings/{request.key_ring_id}"
        if name in self.key_rings:
            raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"KeyRing {name} already exists.")
        self.key_rings.add(name)
        return kms_types.KeyRing(name=name)

    def create_crypto_key(self, request: Any) -> Any:
        if request.parent not in self.key_rings:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"KeyRing {request.parent} not found.")
        name = f"{request.parent}/cryptoKeys/{request.crypto_key_id}"
        if name in self.keys:
            raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"CryptoKey {name} already exists.")
        # the version template's protection level (SOFTWARE / HSM / EXTERNAL...; unspecified: SOFTWARE)
        level = request.crypto_key.version_template.protection_level or kms_types.ProtectionLevel.SOFTWARE
        wait = request.crypto_key.destroy_scheduled_duration
        wait_s = (wait.total_seconds() if hasattr(wait, "total_seconds") else 0) or DEFAULT_DESTROY_SCHEDULED_S
        self.keys[name] = {"versions": {}, "primary": 0, "protection_level": kms_types.ProtectionLevel(level),
                           "destroy_scheduled_s": wait_s, "destroy_times": {}}
        if not request.skip_initial_version_creation:
            self.keys[name]["primary"] = self._new_version(name)
        return self._key_message(name)

    def get_crypto_key(self, request: Any) -> Any:
        self._key(request.name)
        return self._key_message(request.name)

    def create_crypto_key_version(self, request: Any) -> Any:
        self._key(request.parent)
        return self._version_message(request.parent, self._new_version(request.parent))

    def update_primary(self, request: Any) -> Any:
        key = self._key(request.name)
        n = int(request.crypto_key_version_id)
        if n not in key["versions"]:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {request.name}/cryptoKeyVersions/{n} not found.")
        if key["versions"][n][1] != _State.ENABLED:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "The primary version must be ENABLED.")
        key["primary"] = n
        return self._key_message(request.name)

    def _split_version(self, name: str) -> tuple[str, int]:
        key_name, _, n = name.rpartition("/cryptoKeyVersions/")
        key = self._key(key_name)
        if not n.isdigit() or int(n) not in key["versions"]:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"CryptoKeyVersion {name} not found.")
        return key_name, int(n)

    def update_version(self, request: Any) -> Any:
        key_name, n = self._split_version(request.crypto_key_version.name)
        if list(request.update_mask.paths) != ["state"]:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Only the state field can be updated here.")
        new_state = request.crypto_key_version.state
        if new_state not in (_State.ENABLED, _State.DISABLED):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "state may only be set to ENABLED or DISABLED.")
        entry = self.keys[key_name]["versions"][n]
        if entry[1] not in (_State.ENABLED, _State.DISABLED):
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.crypto_key_version.name} is destroyed.")
        entry[1] = new_state
        return self._version_message(key_name, n)

    def destroy_version(self, request: Any) -> Any:
        key_name, n = self._split_version(request.name)
        self._apply_due_destruction(key_name)
        entry = self.keys[key_name]["versions"][n]
        if entry[1] not in (_State.ENABLED, _State.DISABLED):
            raise self._state_refusal(request.name, entry[1])
        entry[1] = _State.DESTROY_SCHEDULED
        key = self.keys[key_name]
        key["destroy_times"][n] = time.time() + key.get("destroy_scheduled_s", DEFAULT_DESTROY_SCHEDULED_S)
        return self._version_message(key_name, n)

    def restore_version(self, request: Any) -> Any:
        key_name, n = self._split_version(request.name)
        self._apply_due_destruction(key_name)
        entry = self.keys[key_name]["versions"][n]
        if entry[1] != _State.DESTROY_SCHEDULED:
            raise self._state_refusal(request.name, entry[1])
        entry[1] = _State.DISABLED
        self.keys[key_name]["destroy_times"].pop(n, None)
        return self._version_message(key_name, n)

    def list_versions(self, request: Any) -> Any:
        key = self._key(request.parent)
        return kms_types.ListCryptoKeyVersionsResponse(
            crypto_key_versions=[self._version_message(request.parent, n) for n in sorted(key["versions"])],
            total_size=len(key["versions"]),
        )

    # -- data plane -------------------------------------------------------------------------------
    def encrypt(self, request: Any) -> Any:
        key = self._key(request.name)
        if not key["primary"]:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"CryptoKey {request.name} has no primary version.")
        self._check_crc(request, "plaintext", "plaintext_crc32c")
        self._check_crc(request, "additional_authenticated_data", "additional_authenticated_data_crc32c")
        n = key["primary"]
        self._apply_due_destruction(request.name)
        aes_key, state = key["versions"][n]
        if state != _State.ENABLED:
            raise self._state_refusal(f"{request.name}/cryptoKeyVersions/{n}", state)
        nonce = os.urandom(12)
        body = AESGCM(aes_key).encrypt(nonce, request.plaintext, _aad(request.name, request.additional_authenticated_data))
        ciphertext = _HEADER.pack(_FORMAT, n) + nonce + body
        ciphertext_crc = crc32c(ciphertext)
        if "encrypt_ciphertext_crc" in self.corruptions:
            ciphertext_crc ^= 1
        verified = "encrypt_unverified" not in self.corruptions
        return kms_types.EncryptResponse(
            name=f"{request.name}/cryptoKeyVersions/{n}",
            ciphertext=ciphertext,
            ciphertext_crc32c=ciphertext_crc,
            verified_plaintext_crc32c=verified and "plaintext_crc32c" in request,
            verified_additional_authenticated_data_crc32c=verified
            and "additional_authenticated_data_crc32c" in request,
            protection_level=key.get("protection_level", kms_types.ProtectionLevel.SOFTWARE),
        )

    def decrypt(self, request: Any) -> Any:
        key = self._key(request.name)
        self._check_crc(request, "ciphertext", "ciphertext_crc32c")
        self._check_crc(request, "additional_authenticated_data", "additional_authenticated_data_crc32c")
        ct = bytes(request.ciphertext)
        invalid = _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.")
        if len(ct) < _HEADER.size + 12 + 16:
            raise invalid
        fmt, n = _HEADER.unpack_from(ct)
        if fmt != _FORMAT or n not in key["versions"]:
            raise invalid
        self._apply_due_destruction(request.name)
        aes_key, state = key["versions"][n]
        if state != _State.ENABLED:
            raise self._state_refusal(f"{request.name}/cryptoKeyVersions/{n}", state)
        nonce = ct[_HEADER.size:_HEADER.size + 12]
        try:
            plaintext = AESGCM(aes_key).decrypt(nonce, ct[_HEADER.size + 12:],
                                                _aad(request.name, request.additional_authenticated_data))
        except InvalidTag:
            raise invalid from None
        plaintext_crc = crc32c(plaintext)
        if "decrypt_plaintext_crc" in self.corruptions:
            plaintext_crc ^= 1
        return kms_types.DecryptResponse(
            plaintext=plaintext, plaintext_crc32c=plaintext_crc, used_primary=n == key["primary"],
            protection_level=key.get("protection_level", kms_types.ProtectionLevel.SOFTWARE),
        )


def _aad(key_name: str, request_aad: bytes) -> bytes:
    return key_name.encode() + b"\x00" + bytes(request_aad)


class GcpKmsHarness(ProviderHarness):
    """A :class:`CloudKmsServer` with one key ring and one CryptoKey; admin calls go
    through the real client too (with an admin token, never throttled)."""

    name = "gcp"
    #: google.api_core's Retry has no attempt limit, only a deadline
    throttle_bound_is_exact = False

    def __init__(self, *, project: str = "spark-kms-test", location: str = "global",
                 key_ring: str = "spark-kms", crypto_key: str = "pii", retry_deadline: float = 3.0,
                 protection_level: str = "SOFTWARE") -> None:
        self.parent = f"projects/{project}/locations/{location}"
        self.key_ring = f"{self.parent}/keyRings/{key_ring}"
        self.key_name = f"{self.key_ring}/cryptoKeys/{crypto_key}"
        self.retry_deadline = retry_deadline
        #: the CryptoKey's protection level (Cloud KMS's names: SOFTWARE, HSM, EXTERNAL, EXTERNAL_VPC)
        self.protection_level = protection_level
        self.server = CloudKmsServer()
        self.endpoint = ""
        self._admin: GcpKmsProvider | None = None

    def start(self) -> None:
        self.endpoint = self.server.start()
        admin = self._admin_client()
        admin.create_key_ring(request={"parent": self.parent, "key_ring_id": self.key_ring.rsplit("/", 1)[1]},
                              metadata=self._admin_metadata(), retry=None)
        admin.create_crypto_key(
            request={"parent": self.key_ring, "crypto_key_id": self.key_name.rsplit("/", 1)[1],
                     "crypto_key": {"purpose": kms_types.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
                                    "version_template": {
                                        "protection_level": kms_types.ProtectionLevel[self.protection_level],
                                        "algorithm": kms_types.CryptoKeyVersion.CryptoKeyVersionAlgorithm
                                        .GOOGLE_SYMMETRIC_ENCRYPTION}}},
            metadata=self._admin_metadata(), retry=None,
        )

    def stop(self) -> None:
        self.server.stop()

    def _admin_client(self) -> Any:
        if self._admin is None:
            self._admin = GcpKmsProvider(f"gcp-kms://{self.key_name}", endpoint=self.endpoint)
        return self._admin.client

    @staticmethod
    def _admin_metadata() -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {ADMIN_TOKEN}")]

    def _options(self, token: str = ALLOWED_TOKEN) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "access_token": token,
            "timeout": 10.0,
            "retry": {"initial": 0.05, "maximum": 0.5, "multiplier": 2.0, "deadline": self.retry_deadline},
        }

    def provider(self) -> GcpKmsProvider:
        return GcpKmsProvider(f"gcp-kms://{self.key_name}", **self._options())

    def provider_for_missing_key(self) -> GcpKmsProvider:
        return GcpKmsProvider(f"gcp-kms://{self.key_ring}/cryptoKeys/missing-{uuid.uuid4().hex[:8]}",
                              **self._options())

    def provider_denied(self) -> GcpKmsProvider:
        return GcpKmsProvider(f"gcp-kms://{self.key_name}", **self._options(DENIED_TOKEN))

    def rotate(self) -> None:
        admin = self._admin_client()
        version = admin.create_crypto_key_version(
            request={"parent": self.key_name, "crypto_key_version": {}}, metadata=self._admin_metadata(), retry=None
        )
        admin.update_crypto_key_primary_version(
            request={"name": self.key_name, "crypto_key_version_id": version.name.rsplit("/", 1)[1]},
            metadata=self._admin_metadata(), retry=None,
        )

    def set_version_state(self, version: str, state: str) -> None:
        """``"enabled"``, ``"disabled"`` (UpdateCryptoKeyVersion) or ``"destroyed"`` (DestroyCryptoKeyVersion)."""
        admin = self._admin_client()
        name = f"{self.key_name}/cryptoKeyVersions/{version}"
        if state == "destroyed":
            admin.destroy_crypto_key_version(request={"name": name}, metadata=self._admin_metadata(), retry=None)
            return
        states = {"enabled": _State.ENABLED, "disabled": _State.DISABLED}
        if state not in states:
            raise ValueError(f"state is 'enabled', 'disabled' or 'destroyed', got {state!r}")
        admin.update_crypto_key_version(
            request={"crypto_key_version": {"name": name, "state": states[state]}, "update_mask": {"paths": ["state"]}},
            metadata=self._admin_metadata(), retry=None,
        )

    def new_key_provider(self) -> GcpKmsProvider:
        """A provider bound to a new CryptoKey of its own in the harness's key ring."""
        name = f"{self.key_ring}/cryptoKeys/extra-{uuid.uuid4().hex[:8]}"
        self._admin_client().create_crypto_key(
            request={"parent": self.key_ring, "crypto_key_id": name.rsplit("/", 1)[1],
                     "crypto_key": {"purpose": kms_types.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT}},
            metadata=self._admin_metadata(), retry=None,
        )
        return GcpKmsProvider(f"gcp-kms://{name}", **self._options())

    def disable_key(self, provider: KmsProvider) -> None:
        """Disable every ENABLED version of the provider's CryptoKey (UpdateCryptoKeyVersion)."""
        assert isinstance(provider, GcpKmsProvider)
        admin = self._admin_client()
        for version in admin.list_crypto_key_versions(request={"parent": provider.key_name},
                                                      metadata=self._admin_metadata(), retry=None):
            if version.state == _State.ENABLED:
                admin.update_crypto_key_version(
                    request={"crypto_key_version": {"name": version.name, "state": _State.DISABLED},
                             "update_mask": {"paths": ["state"]}},
                    metadata=self._admin_metadata(), retry=None)

    def throttle(self, failures: int, period: int) -> None:
        if period < 1 or not 0 <= failures <= period:
            raise ValueError(f"throttle(failures, period) needs 0 <= failures <= period and period >= 1, "
                             f"got ({failures}, {period})")
        with self.server.lock:
            self.server.failures, self.server.period = failures, period
            self.server.data_calls = 0
            self.server.throttled = 0

    def throttled_requests(self) -> int:
        """Calls answered with RESOURCE_EXHAUSTED since the last :meth:`throttle`."""
        with self.server.lock:
            return self.server.throttled

    def max_throttled_requests(self) -> int:
        """A ceiling of 20 requests per second of ``retry_deadline`` (60 at the default 3 s).

        google.api_core retries until the next backoff would pass the deadline, sleeping
        ``uniform(0, d)`` with ``d`` = 0.05 s doubling up to 0.5 s. Each retry after the
        fourth sleeps ``uniform(0, 0.5)``, so more than 60 requests in 3 s needs 55 such
        sleeps summing under 3 s: probability below ``6**55 / 55!`` (about 1e-30).
        """
        return math.ceil(20 * self.retry_deadline)

    def corrupt(self, *faults: str) -> None:
        """Inject checksum faults (see :attr:`CloudKmsServer.corruptions`); no arguments = none."""
        known = {"encrypt_ciphertext_crc", "encrypt_unverified", "decrypt_plaintext_crc"}
        if set(faults) - known:
            raise ValueError(f"unknown faults {sorted(set(faults) - known)}; known: {sorted(known)}")
        with self.server.lock:
            self.server.corruptions = set(faults)
