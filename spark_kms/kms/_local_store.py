"""On-disk layout of the embedded local KMS: root key, keystore file, wrapped blobs.

A keystore is a directory::

    <keystore>/keystore.json   keys, versions, aliases, policies; master key material
                               encrypted under the root key (replaced atomically)
    <keystore>/keystore.lock   the cross-process lock (filelock) guarding every call
    <keystore>/audit.log       append-only JSON lines, one per call
    <keystore>/root.key        only when no root key is injected (0600, created on first use)
    <keystore>/faults.json     test-only fault injection (throttling), absent normally

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
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.errors import ConfigurationError, InvalidCiphertextError, KeystoreError

__all__ = [
    "AUDIT_FILE",
    "BLOB_HEADER_LEN",
    "BLOB_MAGIC",
    "FAULTS_FILE",
    "KEYSTORE_FILE",
    "KEYSTORE_FORMAT",
    "LOCK_FILE",
    "MAC_MAGIC",
    "ROOT_KEY_ENV",
    "ROOT_KEY_FILE",
    "ParsedBlob",
    "canonical_context_bytes",
    "decrypt_material",
    "encrypt_material",
    "load_root_key",
    "make_root_check",
    "pack_blob_header",
    "parse_blob",
    "parse_keystore",
    "verify_root_check",
]

KEYSTORE_FILE = "keystore.json"
LOCK_FILE = "keystore.lock"
AUDIT_FILE = "audit.log"
ROOT_KEY_FILE = "root.key"
FAULTS_FILE = "faults.json"
KEYSTORE_FORMAT = "spark_kms.local_keystore/1"
ROOT_KEY_ENV = "SPARK_KMS_ROOT_KEY"

BLOB_MAGIC = b"LK"
MAC_MAGIC = b"LM"
BLOB_FORMAT = 1
_HEADER = struct.Struct(">2sB16sI")
BLOB_HEADER_LEN = _HEADER.size  # 23
NONCE_LEN = 12
TAG_LEN = 16

_ROOT_CHECK_LABEL = b"spark_kms local keystore root-key check v1"
_ROOT_CHECK_AAD = b"spark_kms.local.root_check"


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
    keystore_dir.mkdir(parents=True, exist_ok=True)
    raw = secrets.token_bytes(32)
    # O_EXCL: two processes creating the store at once must not end with two root keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_root_key(keystore_dir, None, create=False)
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


