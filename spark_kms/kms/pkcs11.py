"""PKCS#11 tokens and hardware security modules as a spark_kms KMS provider (``pkcs11://`` key URIs),
through python-pkcs11 (extra ``hsm``). Tested against SoftHSM2; docs/HSM.md says what an HSM does
and does not protect in spark_kms's envelope design.

Key URI, in the spirit of RFC 7512 (attributes separated by ``;``, values percent-encoded)::

    pkcs11://token=spark-kms;object=pii
    pkcs11://token=spark-kms;serial=28ed2bd48922b040;object=pii?module-path=/usr/lib/softhsm/libsofthsm2.so

- ``token`` (required): the token label (``CKA_LABEL`` of the token); ``serial`` (optional) pins
  one token when labels repeat.
- ``object`` (required): the label (``CKA_LABEL``) of the master key objects.
- query ``module-path`` (optional): the PKCS#11 library, instead of the ``module`` option.
  ``pin-value`` / ``pin-source`` are refused: a PIN does not belong in a key URI, which is
  stored in every dataset's key table.

Options:

- ``module``: path of the PKCS#11 library (e.g. ``/usr/lib/softhsm/libsofthsm2.so``).
- the crypto-user (``CKU_USER``) PIN, from one of ``pin`` (the value; a secret option, never
  logged, masked in reprs, dropped from saved params and run records -- but it does travel in
  the pickle Spark ships to executors, like every provider's secret options), ``pin_env`` (the
  name of an environment variable, read in each process) or ``pin_file`` (a file whose
  first line is the PIN, read in each process). With ``pin_env`` or ``pin_file`` the PIN is in no
  pickle, option or log: each process reads it when it logs in and does not keep it.
- ``retry_max_attempts`` / ``retry_base_delay`` / ``retry_deadline``: the bounded retry of a busy
  token (``CKR_DEVICE_MEMORY``, ``CKR_SESSION_COUNT``); then :class:`~spark_kms.errors.ThrottlingError`.
- ``request_interceptor`` (tests): a picklable callable ``(operation)`` run before each token
  request, inside the retry loop (the harness injects busy-token faults through it).

Master key: AES-256 secret key objects with ``CKA_LABEL`` = ``object``, ``CKA_ID`` = the version in
ASCII decimal (``b"1"``, ``b"2"``...), created sensitive and non-extractable
(:func:`create_key_version`); the primary version is the highest one allowed to encrypt. Rotation
creates the next version (same label); older versions still unwrap.

Wrapping -- CKM_AES_GCM inside the token, the encryption context as associated data. The
data key is 32 random bytes from the token (``C_GenerateRandom``); the 96-bit nonce is random from
the token too. The stored ciphertext is::

    b"SKP11" | 0x01 (format) | version (4 bytes, big endian) | nonce (12) | GCM ciphertext | tag (16)

and the AAD is ``b"spark_kms pkcs11 wrap v1\\x00" || the 10 header bytes || canonical JSON of the
context`` (:func:`spark_kms.kms._binding.context_bytes`), so the token itself refuses a wrong
context, a tampered wrapped key or a wrapped key whose version field was changed
(:class:`~spark_kms.errors.InvalidCiphertextError`). GCM was chosen over CKM_AES_KEY_WRAP_PAD
(RFC 5649) because it takes associated data, so no client-side binding tag is needed (unlike
Azure Key Vault and Vault Transit). Random 96-bit nonces: rotate a version well before 2^32 wraps.

Sessions: one logged-in read-only session per provider and process, opened on first use, and
reopened (never reused) in a forked child: the library is re-initialised there (``C_Finalize`` +
``C_Initialize``), as PKCS#11 requires. A session or token error (closed session, logged out,
token removed) reconnects once. PKCS#11 keeps one login per process and token: a provider whose
PIN differs from the one this process is logged in with is refused (a token has one user PIN),
never let in on another provider's login.

Erasure: ``schedule_key_deletion`` destroys every version object of the key (``C_DestroyObject`` in a
read-write session of the crypto user): at once and for good, unless the token or an HSM backup
still holds a copy (``pending_days`` is ignored). Afterwards the key is not found
(:class:`~spark_kms.errors.KeyNotFoundError`): a token cannot tell a destroyed key from a missing one,
so a second call (or a call on a missing key) reports ``already=True``.

Errors: wrong PIN, no PIN, user not logged in -> :class:`~spark_kms.errors.AccessDeniedError`;
unknown token or key label / version -> :class:`~spark_kms.errors.KeyNotFoundError`; a wrapped key
that does not unwrap -> :class:`~spark_kms.errors.InvalidCiphertextError`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KmsError,
    KmsUnavailableError,
    MissingExtraError,
    SparkKmsError,
)
from spark_kms.kms._binding import context_bytes as _context_bytes
from spark_kms.kms._binding import wipe as _wipe
from spark_kms.kms.base import DataKey, KeyDeletion, KeyDescription, KmsProvider, WrappedKey
from spark_kms.kms.registry import parse_key_uri
from spark_kms.kms.retry import RetryPolicy, call_with_retries

try:
    import pkcs11
    import pkcs11.exceptions as p11e
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.mechanisms import GCMParams
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError("the PKCS#11 (HSM) provider", "hsm") from exc

__all__ = ["Pkcs11Provider", "create_key_version", "open_token_session"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MAGIC = b"SKP11\x01"
_HEADER = struct.Struct(">6sI12s")  # magic+format, version, nonce
_AAD_PREFIX = b"spark_kms pkcs11 wrap v1\x00"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KNOWN_OPTIONS = frozenset({"module", "pin", "pin_env", "pin_file", "retry_max_attempts", "retry_base_delay",
                            "retry_deadline", "request_interceptor"})
_URI_ATTRS = frozenset({"token", "object", "serial"})

_PIN_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(p11e, name) for name in ("PinIncorrect", "PinInvalid", "PinLenRange", "PinLocked", "PinExpired")
    if hasattr(p11e, name))
_NOT_LOGGED_IN: tuple[type[Exception], ...] = (p11e.UserNotLoggedIn,)
#: the session or the token went away: reconnect once
_RECONNECT: tuple[type[Exception], ...] = tuple(
    getattr(p11e, name) for name in ("SessionClosed", "SessionHandleInvalid", "DeviceRemoved", "TokenNotPresent",
                                     "DeviceError", "UserNotLoggedIn", "CryptokiNotInitialized",
                                     "ObjectHandleInvalid", "KeyHandleInvalid")
    if hasattr(p11e, name))
#: a busy token: retried with backoff, then ThrottlingError
_BUSY: tuple[type[Exception], ...] = (p11e.DeviceMemory, p11e.SessionCount)
#: what a failed AES-GCM decryption looks like across modules (SoftHSM2 says CKR_GENERAL_ERROR)
_UNWRAP_FAILED: tuple[type[Exception], ...] = tuple(
    getattr(p11e, name) for name in ("EncryptedDataInvalid", "EncryptedDataLenRange", "GeneralError",
                                     "FunctionFailed", "SignatureInvalid", "DataInvalid", "DataLenRange")
    if hasattr(p11e, name))


# -- process-wide state: the loaded libraries and who is logged in --------------------------------
_LOCK = threading.RLock()
_LIBS: dict[str, tuple[int, Any]] = {}  # module path -> (pid, pkcs11.lib); kept alive: its GC finalizes
_LOGINS: dict[tuple[str, str], tuple[int, bytes]] = {}  # (module, token serial) -> (pid, PIN digest)
_PIN_KEY = secrets.token_bytes(32)  # keys the in-memory PIN digests; the PIN itself is never kept


def _pin_digest(pin: str) -> bytes:
    return hmac.new(_PIN_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


def _load_library(module: str, *, reinitialize: bool = False) -> Any:
    """The process's ``pkcs11.lib`` for ``module``; re-initialised in a forked child (PKCS#11 requires
    a child to call C_Initialize) or when ``reinitialize`` (e.g. after SOFTHSM2_CONF changed)."""
    pid = os.getpid()
    with _LOCK:
        entry = _LIBS.get(module)
        if entry is not None and (entry[0] != pid or reinitialize):
            lib = entry[1]
            try:
                lib.reinitialize()
            except p11e.PKCS11Error:
                lib.initialize()
            _LIBS[module] = (pid, lib)
            for key in [k for k in _LOGINS if k[0] == module]:
                del _LOGINS[key]
            return lib
        if entry is not None:
            return entry[1]
        try:
            lib = pkcs11.lib(module)
        except p11e.PKCS11Error as exc:
            raise ConfigurationError(f"cannot load the PKCS#11 module {module!r}: {exc}") from None
        _LIBS[module] = (pid, lib)
        return lib


def open_token_session(module: str, token: Any, pin: str | None, *, rw: bool = False, what: str = "") -> Any:
    """A session on ``token`` logged in as the crypto user with ``pin``.

    PKCS#11 keeps one login per process and token: if this process is logged in already, the
    session shares that login only if it was made with the same PIN (a token has one user PIN, so
    another one is a wrong one); otherwise :class:`~spark_kms.errors.AccessDeniedError`.
    """
    where = what or f"PKCS#11 token {token.label!r}"
    if pin is None:
        raise AccessDeniedError(f"{where}: not logged in: no PIN (pass pin=, pin_env= or pin_file=)",
                                key_id=what or None, operation="Login")
    key = (module, str(token.serial))
    digest = _pin_digest(pin)
    pid = os.getpid()
    with _LOCK:
        try:
            session = token.open(rw=rw, user_pin=pin)
        except p11e.UserAlreadyLoggedIn:
            if _LOGINS.get(key) != (pid, digest):
                raise AccessDeniedError(f"{where}: login refused (this process is logged in to the token "
                                        "with another PIN: a wrong PIN)", key_id=what or None,
                                        operation="Login") from None
            session = token.open(rw=rw)
        except _PIN_ERRORS as exc:
            raise AccessDeniedError(f"{where}: login refused ({type(exc).__name__})", key_id=what or None,
                                    operation="Login") from None
        _LOGINS[key] = (pid, digest)
        return session


def _find_versions(session: Any, label: str) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label,
                                    Attribute.KEY_TYPE: KeyType.AES}):
        try:
            raw = bytes(obj[Attribute.ID])
        except p11e.PKCS11Error:
            continue
        if raw.isdigit():
            found[int(raw)] = obj
    return found


def create_key_version(session: Any, label: str) -> str:
    """Create the next version of master key ``label`` in the token (``session`` must be read-write and
    logged in): a non-extractable, sensitive AES-256 key whose ``CKA_ID`` is the version. Returns it."""
    version = max(_find_versions(session, label), default=0) + 1
    session.generate_key(KeyType.AES, 256, label=label, id=str(version).encode(), store=True, template={
        Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.WRAP: False, Attribute.UNWRAP: False,
        Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.DERIVE: False, Attribute.MODIFIABLE: False,
    })
    return str(version)


@dataclass
class _Connection:
    """One process's session for one provider (the provider's ``_client``; never pickled)."""

    pid: int
    token: Any
    session: Any
    lock: threading.Lock


class Pkcs11Provider(KmsProvider):
    """An AES-256 key in a PKCS#11 token as a spark_kms KMS key. See the module docstring."""

    scheme = "pkcs11"
    extra = "hsm"
    secret_options = frozenset({"pin"})

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        _, rest = parse_key_uri(key_uri)
        shown = "pkcs11://<a URI with a PIN in it>" if "pin-" in rest.lower() else repr(key_uri)
        path, _, query = rest.partition("?")
        attrs: dict[str, str] = {}
        for part in filter(None, path.split(";")):
            name, eq, value = part.partition("=")
            if not eq or name.strip().lower() not in _URI_ATTRS:
                raise ConfigurationError(
                    f"a PKCS#11 key URI looks like 'pkcs11://token=<token label>;object=<key label>' "
                    f"(attributes token, object, serial), got {shown}")
            attrs[name.strip().lower()] = unquote(value)
        query_attrs: dict[str, str] = {}
        for part in filter(None, query.split("&")):
            name, _, value = part.partition("=")
            name = name.strip().lower()
            if name.startswith("pin-"):
                raise ConfigurationError(
                    "a PKCS#11 key URI must not carry a PIN (it is stored in every dataset's key table): "
                    "pass pin=, pin_env= or pin_file= as provider options")
            if name != "module-path":
                raise ConfigurationError(f"unknown PKCS#11 key URI query attribute {name!r} in {shown}")
            query_attrs[name] = unquote(value)
        if not attrs.get("token") or not attrs.get("object"):
            raise ConfigurationError(f"a PKCS#11 key URI names a token and an object: "
                                     f"'pkcs11://token=<token label>;object=<key label>', got {shown}")
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise ConfigurationError(f"{shown}: unknown PKCS#11 option(s) {sorted(unknown)}")
        if sum(1 for name in ("pin", "pin_env", "pin_file") if options.get(name) is not None) > 1:
            raise ConfigurationError(f"{shown}: give the PIN one way: pin=, pin_env= or pin_file=")
        self.token_label = attrs["token"]
        self.token_serial = attrs.get("serial")
        self.label = attrs["object"]
        self.module = str(options.get("module") or query_attrs.get("module-path") or "")
        if not self.module:
            raise ConfigurationError(f"{shown}: name the PKCS#11 library with module= "
                                     f"(e.g. /usr/lib/softhsm/libsofthsm2.so) or ?module-path=")
        interceptor = options.get("request_interceptor")
        if interceptor is not None and not callable(interceptor):
            raise ConfigurationError("request_interceptor must be a callable (operation)")
        self.retry_policy = RetryPolicy(
            max_attempts=int(options.get("retry_max_attempts", 6)),
            base_delay=float(options.get("retry_base_delay", 0.05)),
            deadline=float(options.get("retry_deadline", 20.0)),
        )
        serial = f";serial={self.token_serial}" if self.token_serial else ""
        #: the key's canonical id, RFC 7512 style (no module path: it differs between machines)
        self.key_id = f"pkcs11:token={self.token_label}{serial};object={self.label}"

    # -- the PIN and the session ------------------------------------------------------
    def _pin(self) -> str | None:
        """The PIN from its source, read now and not kept."""
        if self.options.get("pin") is not None:
            return str(self.options["pin"])
        if self.options.get("pin_env"):
            return os.environ.get(str(self.options["pin_env"]))
        if self.options.get("pin_file"):
            path = str(self.options["pin_file"])
            try:
                with open(path, encoding="utf-8") as fh:
                    return fh.readline().rstrip("\r\n")
            except OSError as exc:
                raise ConfigurationError(f"{self.key_id}: cannot read the PIN file {path!r}: {exc.strerror}") from None
        return None

    def _make_client(self) -> _Connection:
        lib = _load_library(self.module)
        kwargs: dict[str, str] = {"token_label": self.token_label}
        if self.token_serial:
            kwargs["token_serial"] = self.token_serial
        try:
            token = lib.get_token(**kwargs)
        except p11e.NoSuchToken:
            raise KeyNotFoundError(f"{self.key_id}: no PKCS#11 token labelled {self.token_label!r} in "
                                   f"{self.module}", key_id=self.key_id, operation="Login") from None
        except p11e.MultipleTokensReturned:
            raise ConfigurationError(f"{self.key_id}: several tokens are labelled {self.token_label!r}: "
                                     "add serial=<token serial> to the key URI") from None
        session = open_token_session(self.module, token, self._pin(), what=self.key_id)
        logger.debug("PKCS#11 session opened on token %r for %s (pid %d)", self.token_label, self.key_id,
                     os.getpid())
        return _Connection(os.getpid(), token, session, threading.Lock())

    def _connection(self) -> _Connection:
        conn = self._client
        if conn is None or conn.pid != os.getpid():
            # Never reuse a session across a fork: the child opens its own.
            self._client = conn = self._make_client()
        return conn

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)``: retry a busy token, reconnect once after a session/token error,
        translate PKCS#11 errors at the edge."""
        interceptor = self.options.get("request_interceptor")

        def attempt() -> T:
            if interceptor is not None:
                interceptor(operation)
            conn = self._connection()
            with conn.lock:
                return fn(conn.session)

        kw = {"key_id": self.key_id, "operation": operation}
        for reconnect in (True, False):
            try:
                return call_with_retries(attempt, is_throttle=lambda exc: isinstance(exc, _BUSY),
                                         policy=self.retry_policy, what=f"PKCS#11 {operation}", key_id=self.key_id)
            except SparkKmsError:
                raise
            except _RECONNECT as exc:
                if reconnect:
                    logger.info("PKCS#11 %s on %s: %s; reconnecting once", operation, self.key_id,
                                type(exc).__name__)
                    self._client = None
                    continue
                if isinstance(exc, _NOT_LOGGED_IN):
                    raise AccessDeniedError(f"PKCS#11 {operation} on {self.key_id}: user not logged in",
                                            **kw) from None
                raise KmsUnavailableError(f"PKCS#11 {operation} on {self.key_id}: the token is unavailable "
                                          f"({type(exc).__name__})", **kw) from None
            except _PIN_ERRORS as exc:
                raise AccessDeniedError(f"PKCS#11 {operation} on {self.key_id}: login refused "
                                        f"({type(exc).__name__})", **kw) from None
            except p11e.PKCS11Error as exc:
                raise KmsError(f"PKCS#11 {operation} on {self.key_id} failed ({type(exc).__name__})", **kw) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- keys -----------------------------------------------------------------------------
    def _versions(self, session: Any, operation: str = "FindObjects") -> dict[int, Any]:
        versions = _find_versions(session, self.label)
        if not versions:
            raise KeyNotFoundError(f"{self.key_id}: no AES key labelled {self.label!r} (with a numeric CKA_ID "
                                   f"version) in token {self.token_label!r}, or the user may not see it",
                                   key_id=self.key_id, operation=operation)
        return versions

    def _primary(self, session: Any) -> tuple[int, Any]:
        versions = self._versions(session)
        usable = [v for v, obj in versions.items() if obj[Attribute.ENCRYPT]]
        if not usable:
            raise KmsError(f"{self.key_id}: no version of the key may encrypt (CKA_ENCRYPT is false)",
                           key_id=self.key_id, operation="GenerateDataKey")
        version = max(usable)
        return version, versions[version]

    def _wrap(self, session: Any, plaintext: bytes | bytearray, encryption_context: dict[str, str]) -> WrappedKey:
        version, key = self._primary(session)
        nonce = session.generate_random(_NONCE_BYTES * 8)
        header = _HEADER.pack(_MAGIC, version, nonce)
        aad = _AAD_PREFIX + header[:10] + _context_bytes(encryption_context)
        body = key.encrypt(bytes(plaintext), mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))
        return WrappedKey(header + bytes(body), self.key_id, str(version))

    # -- the protocol -----------------------------------------------------------------------
    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey:
        def op(session: Any) -> DataKey:
            plaintext = bytearray(session.generate_random(256))
            try:
                wrapped = self._wrap(session, plaintext, encryption_context)
            except BaseException:
                _wipe(plaintext)
                raise
            return DataKey(plaintext=plaintext, wrapped=wrapped)

        return self._call("GenerateDataKey", op)

    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey:
        return self._call("Encrypt", lambda session: self._wrap(session, plaintext, encryption_context))

    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytearray:
        data = wrapped.ciphertext
        kw = {"key_id": self.key_id, "operation": "Decrypt"}
        if len(data) < _HEADER.size + _TAG_BYTES or not data.startswith(_MAGIC):
            raise InvalidCiphertextError(f"{self.key_id}: not a PKCS#11 wrapped key of this format", **kw)
        _, version, nonce = _HEADER.unpack_from(data)
        if str(version) != wrapped.key_version:
            raise InvalidCiphertextError(f"{self.key_id}: the wrapped key says version {version}, its key table "
                                         f"entry {wrapped.key_version}", **kw)
        aad = _AAD_PREFIX + data[:10] + _context_bytes(encryption_context)

        def op(session: Any) -> bytearray:
            key = self._versions(session, "Decrypt").get(version)
            if key is None:
                raise KeyNotFoundError(f"{self.key_id}: version {version} of the key is not in the token", **kw)
            try:
                return bytearray(key.decrypt(data[_HEADER.size:], mechanism=Mechanism.AES_GCM,
                                             mechanism_param=GCMParams(nonce, aad)))
            except _UNWRAP_FAILED:
                raise InvalidCiphertextError(
                    f"{self.key_id}: the wrapped key does not decrypt under version {version} (tampered, or "
                    "another encryption context)", **kw) from None

        return self._call("Decrypt", op)

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        """C_DestroyObject on every version, in a read-write session: immediate and final."""

        def op(session: Any) -> int:
            self._versions(session)  # KeyNotFoundError when there is nothing (left) to destroy
            conn = self._connection()
            # This process is logged in through the provider's session: the read-write one shares that
            # login (and closing it does not log the process out).
            rw = open_token_session(self.module, conn.token, self._pin(), rw=True, what=self.key_id)
            try:
                versions = _find_versions(rw, self.label)
                for obj in versions.values():
                    obj.destroy()
                return len(versions)
            finally:
                rw.close()

        try:
            destroyed = self._call("ScheduleKeyDeletion", op)
        except KeyNotFoundError:
            return KeyDeletion(self.key_id, "destroyed", None, already=True)
        logger.info("PKCS#11 key %s: %d version object(s) destroyed", self.key_id, destroyed)
        return KeyDeletion(self.key_id, "destroyed", None)

    def _describe_key(self) -> KeyDescription:
        def op(session: Any) -> KeyDescription:
            versions = self._versions(session)
            primary, key = self._primary(session)

            def attr(obj: Any, name: Attribute) -> Any:
                try:
                    return obj[name]
                except p11e.PKCS11Error:
                    return None

            token = self._connection().token
            sensitive, extractable = attr(key, Attribute.SENSITIVE), attr(key, Attribute.EXTRACTABLE)
            if extractable or not sensitive:
                logger.warning("PKCS#11 key %s version %d is %s: its value can leave the token", self.key_id,
                               primary, "extractable" if extractable else "not sensitive")
            detail = " ".join(p for p in (str(token.manufacturer_id).strip(), str(token.model).strip()) if p)
            return KeyDescription(
                key_id=self.key_id,
                primary_version=str(primary),
                enabled=True,
                state="enabled",
                versions={str(v): ("enabled" if attr(obj, Attribute.ENCRYPT) else "decrypt_only")
                          for v, obj in sorted(versions.items())},
                extra={
                    "token": self.token_label,
                    "token_serial": str(token.serial.decode() if isinstance(token.serial, bytes) else token.serial),
                    "manufacturer": str(token.manufacturer_id).strip(),
                    "model": str(token.model).strip(),
                    "label": self.label,
                    "sensitive": bool(sensitive),
                    "extractable": bool(extractable),
                    "always_sensitive": bool(attr(key, Attribute.ALWAYS_SENSITIVE)),
                    "never_extractable": bool(attr(key, Attribute.NEVER_EXTRACTABLE)),
                    "mechanism": "CKM_AES_GCM",
                },
                protection_level="hsm",
                protection_detail=detail,
            )

        return self._call("DescribeKey", op)
