"""On-disk layout of the embedded local KMS: root key, keystore file, wrapped blobs.

A keystore is a directory (mode 0700; every file in it 0600, whatever the umask)::

    <keystore>/keystore.json   keys, versions, aliases, policies; master key material
                               encrypted under the root key (replaced atomically)
    <keystore>/keystore.lock   the cross-process lock (filelock) guarding every call
    <keystore>/audit.log       append-only JSON lines, one per call
    <keystore>/root.key        only when no root key is injected (created on first use)

The modes are set explicitly (``chmod``/``fchmod``), not left to the umask: files are
created 0600 and the directory 0700, and a keystore found looser -- e.g. made by an older
release or copied with ``cp -r`` under umask 022 -- is tightened by the first call of a
process that owns it (:func:`secure_keystore_dir`, run as the lock is taken).

``keystore.json`` (``"format": "spark_kms.local_keystore/1"``) holds a *root-key check
value*: AES-256-GCM under the root key of a fixed label, so a wrong root key is told
apart from a corrupt file. Each key version's material is
``base64(nonce(12) || AES-256-GCM(root_key, nonce, material, aad))`` with
``aad = b"spark_kms.local.material|<key id>|<version>"``, so material cannot be moved
to another key or version unnoticed.

Wrapped blob (the ``CiphertextBlob`` of Encrypt / GenerateDataKey)::

    offset  size  field
    0       2     magic b"LK"
    2       1     format version, 0x01
    3       16    key id (UUID, 16 raw bytes)
    19      4     key version, unsigned 32-bit big-endian
    23      12    nonce (random)
    35      n     ciphertext (n = plaintext length)
    35+n    16    GCM tag

It is AES-256-GCM under the key version's material with
``AAD = blob[0:23] || canonical JSON of the encryption context`` (keys sorted, no
spaces, UTF-8). MAC token (GenerateMac): ``b"LM" || 0x01 || version (u32 BE) ||
HMAC-SHA256(material, message)`` (39 bytes).

This module also owns what a call needs to read and write that directory: the
cross-process :class:`KeystoreLock`, :func:`load_keystore` / :func:`save_keystore`, and
the per-process caches of parsed keystores and decrypted material.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
import secrets
import stat
import struct
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms._atomic import atomic_write_bytes
from spark_kms.errors import ConfigurationError, InvalidCiphertextError, KeystoreError, KmsUnavailableError

__all__ = [
    "AUDIT_FILE",
    "BLOB_HEADER_LEN",
    "BLOB_MAGIC",
    "DIR_MODE",
    "FILE_MODE",
    "KEYSTORE_ENV",
    "KEYSTORE_FILE",
    "KEYSTORE_FORMAT",
    "LOCK_FILE",
    "LOCK_TIMEOUT_S",
    "MAC_MAGIC",
    "ROOT_KEY_ENV",
    "ROOT_KEY_FILE",
    "KeystoreLock",
    "KeystoreView",
    "ParsedBlob",
    "canonical_context_bytes",
    "decrypt_material",
    "default_keystore_dir",
    "encrypt_material",
    "load_keystore",
    "load_root_key",
    "make_keystore_dir",
    "make_root_check",
    "pack_blob_header",
    "parse_blob",
    "parse_keystore",
    "save_keystore",
    "secure_keystore_dir",
    "verify_root_check",
]

KEYSTORE_ENV = "SPARK_KMS_KEYSTORE"
KEYSTORE_FILE = "keystore.json"
LOCK_FILE = "keystore.lock"
AUDIT_FILE = "audit.log"
ROOT_KEY_FILE = "root.key"
KEYSTORE_FORMAT = "spark_kms.local_keystore/1"
ROOT_KEY_ENV = "SPARK_KMS_ROOT_KEY"
LOCK_TIMEOUT_S = 60.0
#: mode of the keystore directory and of every file in it, whatever the umask
DIR_MODE = 0o700
FILE_MODE = 0o600
_KEYSTORE_FILES = (KEYSTORE_FILE, LOCK_FILE, AUDIT_FILE, ROOT_KEY_FILE)

BLOB_MAGIC = b"LK"
MAC_MAGIC = b"LM"
BLOB_FORMAT = 1
_HEADER = struct.Struct(">2sB16sI")
BLOB_HEADER_LEN = _HEADER.size  # 23
NONCE_LEN = 12
TAG_LEN = 16

_ROOT_CHECK_LABEL = b"spark_kms local keystore root-key check v1"
_ROOT_CHECK_AAD = b"spark_kms.local.root_check"


def default_keystore_dir() -> Path:
    """``$SPARK_KMS_KEYSTORE``, else ``~/.spark_kms/keystore``."""
    env = os.environ.get(KEYSTORE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".spark_kms" / "keystore"


# ---------------------------------------------------------------- the directory and its modes
_SECURED: set[str] = set()  # keystore dirs whose files this process has checked


def make_keystore_dir(keystore_dir: Path) -> None:
    """Create the keystore directory (and its parents) if missing; then :func:`secure_keystore_dir`."""
    keystore_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    secure_keystore_dir(keystore_dir)


def secure_keystore_dir(keystore_dir: Path) -> None:
    """Make the keystore directory 0700 and its files 0600 if this process's user owns them.

    One ``stat`` per call once a process has checked a keystore: the directory's mode is
    checked every time, its files the first time and whenever the directory was found loose.
    A keystore owned by another user is left as it is (not ours to change, and chmod would fail).
    """
    try:
        st = os.stat(keystore_dir)
    except FileNotFoundError:
        return
    loose = stat.S_IMODE(st.st_mode) != DIR_MODE
    if (not loose and str(keystore_dir) in _SECURED) or st.st_uid != os.geteuid():
        return
    if loose:
        os.chmod(keystore_dir, DIR_MODE)
    for name in _KEYSTORE_FILES:
        path = keystore_dir / name
        try:
            fst = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(fst.st_mode) and fst.st_uid == os.geteuid() and stat.S_IMODE(fst.st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)
    _SECURED.add(str(keystore_dir))


# ---------------------------------------------------------------- root key and material
def load_root_key(keystore_dir: Path, root_key: bytes | None, *, create: bool) -> bytes | None:
    """The root key: ``root_key`` if given, else env ``SPARK_KMS_ROOT_KEY`` (base64 of 32
    bytes), else ``<keystore>/root.key``, created (0600) when ``create`` is true.

    Returns None only when there is no root key anywhere and ``create`` is false.
    """
    if root_key is not None:
        if not isinstance(root_key, (bytes, bytearray)) or len(root_key) != 32:
            raise ConfigurationError("root_key must be 32 bytes (AES-256)")
        return bytes(root_key)
    env = os.environ.get(ROOT_KEY_ENV)
    if env:
        try:
            raw = base64.b64decode(env, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ConfigurationError(f"{ROOT_KEY_ENV} must be the base64 encoding of 32 bytes")
        return raw
    path = keystore_dir / ROOT_KEY_FILE
    if path.exists():
        try:
            raw = base64.b64decode(path.read_bytes().strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise KeystoreError(f"root key file {path} is corrupt: expected base64 of 32 bytes")
        return raw
    if not create:
        return None
    make_keystore_dir(keystore_dir)
    raw = secrets.token_bytes(32)
    # O_EXCL: two processes creating the store at once must not end with two root keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return load_root_key(keystore_dir, None, create=False)
    os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(raw) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return raw


def make_root_check(root_key: bytes) -> str:
    nonce = secrets.token_bytes(NONCE_LEN)
    return base64.b64encode(nonce + AESGCM(root_key).encrypt(nonce, _ROOT_CHECK_LABEL, _ROOT_CHECK_AAD)).decode()


def verify_root_check(root_key: bytes, check: str, keystore_dir: Path) -> None:
    try:
        raw = base64.b64decode(check, validate=True)
        ok = AESGCM(root_key).decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], _ROOT_CHECK_AAD) == _ROOT_CHECK_LABEL
    except (InvalidTag, binascii.Error, ValueError):
        ok = False
    if not ok:
        raise KeystoreError(
            f"the root key does not open keystore {keystore_dir} "
            f"(check {ROOT_KEY_ENV}, the root_key option or {keystore_dir / ROOT_KEY_FILE})"
        )


def _material_aad(key_id: str, version: int) -> bytes:
    return f"spark_kms.local.material|{key_id}|{version}".encode()


def encrypt_material(root_key: bytes, key_id: str, version: int, material: bytes) -> str:
    nonce = secrets.token_bytes(NONCE_LEN)
    ct = AESGCM(root_key).encrypt(nonce, material, _material_aad(key_id, version))
    return base64.b64encode(nonce + ct).decode()


def decrypt_material(root_key: bytes, key_id: str, version: int, blob: str, path: Path) -> bytes:
    try:
        raw = base64.b64decode(blob, validate=True)
        return AESGCM(root_key).decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], _material_aad(key_id, version))
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise KeystoreError(
            f"keystore file {path} is corrupt: the material of key {key_id} version {version} "
            "does not authenticate"
        ) from exc


# ---------------------------------------------------------------- wrapped blobs
def canonical_context_bytes(encryption_context: Mapping[str, str]) -> bytes:
    """Canonical JSON of an encryption context: sorted keys, no spaces, UTF-8."""
    return json.dumps(dict(encryption_context), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pack_blob_header(key_id: str, version: int) -> bytes:
    return _HEADER.pack(BLOB_MAGIC, BLOB_FORMAT, uuid.UUID(key_id).bytes, version)


@dataclass(frozen=True)
class ParsedBlob:
    header: bytes
    key_id: str
    version: int
    nonce: bytes
    sealed: bytes  # ciphertext || tag


def parse_blob(blob: bytes) -> ParsedBlob:
    """Split a wrapped blob, checking every length before slicing."""
    if not isinstance(blob, (bytes, bytearray)):
        raise InvalidCiphertextError("a local KMS ciphertext must be bytes", operation="Decrypt")
    blob = bytes(blob)
    if len(blob) < BLOB_HEADER_LEN + NONCE_LEN + TAG_LEN:
        raise InvalidCiphertextError(
            f"ciphertext of {len(blob)} bytes is too short for a local KMS blob "
            f"(at least {BLOB_HEADER_LEN + NONCE_LEN + TAG_LEN})",
            operation="Decrypt",
        )
    magic, fmt, kid, version = _HEADER.unpack_from(blob)
    if magic != BLOB_MAGIC or fmt != BLOB_FORMAT:
        raise InvalidCiphertextError(
            "ciphertext is not a local KMS blob of format 1 (bad magic or format byte)", operation="Decrypt"
        )
    return ParsedBlob(
        header=blob[:BLOB_HEADER_LEN],
        key_id=str(uuid.UUID(bytes=kid)),
        version=version,
        nonce=blob[BLOB_HEADER_LEN : BLOB_HEADER_LEN + NONCE_LEN],
        sealed=blob[BLOB_HEADER_LEN + NONCE_LEN :],
    )


# ---------------------------------------------------------------- keystore file
def parse_keystore(raw: bytes, path: Path) -> dict[str, Any]:
    """Decode and shape-check ``keystore.json``; any defect is a KeystoreError naming the file."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeystoreError(f"keystore file {path} is corrupt or truncated: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or data.get("format") != KEYSTORE_FORMAT:
        raise KeystoreError(f"keystore file {path} is not a spark_kms local keystore (format {KEYSTORE_FORMAT})")
    if not isinstance(data.get("keys"), dict) or not isinstance(data.get("aliases"), dict):
        raise KeystoreError(f"keystore file {path} is corrupt: 'keys' and 'aliases' must be objects")
    if not isinstance(data.get("root_check"), str):
        raise KeystoreError(f"keystore file {path} is corrupt: no root-key check value")
    for key_id, key in data["keys"].items():
        if not isinstance(key, dict) or not isinstance(key.get("versions"), dict) or "state" not in key:
            raise KeystoreError(f"keystore file {path} is corrupt: entry of key {key_id} is malformed")
    return data


# -- per-process cache of parsed keystores and decrypted material -------------------------------
# The keystore file is small; re-reading it under the lock on each call is cheap and
# always correct (a (mtime, size, inode) key can collide when inodes are reused after
# os.replace). What is costly -- JSON parsing, the root check, and AES-GCM unsealing of
# every master key -- is done once per distinct file content / sealed blob.
_CACHE_LOCK = threading.Lock()
_PARSED: dict[str, tuple[bytes, bytes, dict[str, Any]]] = {}  # path -> (raw, root digest, data)
_MATERIAL: dict[tuple[str, str, int, str], bytes] = {}  # (path, key id, version, sealed) -> material
_MATERIAL_MAX = 4096


def _root_digest(root_key: bytes) -> bytes:
    return hashlib.sha256(b"spark_kms.local.root-digest|" + root_key).digest()


class KeystoreView:
    """One call's view of the keystore: the cached parsed data, copied on first edit."""

    def __init__(self, path: Path, data: dict[str, Any], root_key: bytes | None, exists: bool) -> None:
        self.path = path
        self.data = data
        self.root_key = root_key
        self.exists = exists
        self.dirty = False

    def edit(self) -> dict[str, Any]:
        if not self.dirty:
            self.data = copy.deepcopy(self.data)
            self.dirty = True
        return self.data

    @property
    def keys(self) -> dict[str, Any]:
        return self.data["keys"]

    @property
    def aliases(self) -> dict[str, str]:
        return self.data["aliases"]

    def material(self, key_id: str, version: int) -> bytes:
        sealed = self.keys[key_id]["versions"][str(version)]["material"]
        cache_key = (str(self.path), key_id, version, sealed)
        with _CACHE_LOCK:
            hit = _MATERIAL.get(cache_key)
        if hit is not None:
            return hit
        assert self.root_key is not None
        material = decrypt_material(self.root_key, key_id, version, sealed, self.path)
        with _CACHE_LOCK:
            if len(_MATERIAL) >= _MATERIAL_MAX:
                _MATERIAL.clear()
            _MATERIAL[cache_key] = material
        return material


def load_keystore(keystore_dir: Path, root_key_option: bytes | None, *, create: bool) -> KeystoreView:
    """Read ``keystore.json`` (call under the keystore lock); an empty view if there is none yet."""
    path = keystore_dir / KEYSTORE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        root_key = load_root_key(keystore_dir, root_key_option, create=create)
        empty = {"format": KEYSTORE_FORMAT, "generation": 0, "root_check": None, "keys": {}, "aliases": {}}
        return KeystoreView(path, empty, root_key, exists=False)
    root_key = load_root_key(keystore_dir, root_key_option, create=False)
    if root_key is None:
        raise _keystore_error_no_root(keystore_dir)
    digest = _root_digest(root_key)
    cache_key = str(path)
    with _CACHE_LOCK:
        cached = _PARSED.get(cache_key)
    if cached is not None and cached[0] == raw and cached[1] == digest:
        return KeystoreView(path, cached[2], root_key, exists=True)
    data = parse_keystore(raw, path)
    verify_root_check(root_key, data["root_check"], keystore_dir)
    with _CACHE_LOCK:
        _PARSED[cache_key] = (raw, digest, data)
    return KeystoreView(path, data, root_key, exists=True)


def save_keystore(view: KeystoreView) -> None:
    """Replace ``keystore.json`` atomically with the view's data (call under the keystore lock)."""
    data = view.data
    assert view.root_key is not None
    if not data.get("root_check"):
        data["root_check"] = make_root_check(view.root_key)
    data["generation"] = int(data.get("generation", 0)) + 1
    raw = json.dumps(data, indent=1, sort_keys=True).encode()
    atomic_write_bytes(view.path, raw)  # temp files are 0600 (mkstemp)
    with _CACHE_LOCK:
        _PARSED[str(view.path)] = (raw, _root_digest(view.root_key), data)


def _keystore_error_no_root(keystore_dir: Path) -> KeystoreError:
    return KeystoreError(
        f"keystore {keystore_dir} exists but no root key was given: pass root_key=, set "
        f"{ROOT_KEY_ENV}, or restore {keystore_dir / ROOT_KEY_FILE}"
    )


# ---------------------------------------------------------------- the cross-process lock
class KeystoreLock:
    """The cross-process lock of one keystore (``<keystore>/keystore.lock``).

    Every :class:`~spark_kms.kms.local.LocalKms` call holds it for its whole duration, so
    processes sharing a keystore (Spark executors) see each other's changes whole. Re-entrant
    within one object; a timeout is a :class:`~spark_kms.errors.KmsUnavailableError`. The
    keystore directory must exist; taking the lock first makes it private
    (:func:`secure_keystore_dir`), and the lock file is created 0600.
    """

    def __init__(self, keystore_dir: str | os.PathLike[str], *, timeout: float = LOCK_TIMEOUT_S) -> None:
        self.keystore_dir = Path(keystore_dir)
        self.timeout = timeout
        self._lock = filelock.FileLock(
            str(self.keystore_dir / LOCK_FILE), timeout=timeout, poll_interval=0.001, mode=FILE_MODE
        )

    def __enter__(self) -> KeystoreLock:
        secure_keystore_dir(self.keystore_dir)
        try:
            self._lock.acquire()
        except filelock.Timeout as exc:
            raise KmsUnavailableError(
                f"could not lock keystore {self.keystore_dir} within {self.timeout:.0f}s "
                f"(is a process stuck holding {self.keystore_dir / LOCK_FILE}?)"
            ) from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
