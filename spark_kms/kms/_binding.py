"""Helpers shared by backends whose KMS cannot bind an encryption context itself.

Azure Key Vault's wrapkey and Vault Transit's datakey/rewrap take no associated data,
so those providers append an HMAC tag over the canonical context, keyed from the data
key, and check it after unwrapping (docs/PROVIDERS.md says per backend how).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["BINDING_TAG_BYTES", "binding_tag", "context_bytes", "wipe"]

BINDING_TAG_BYTES = 32
_BIND_INFO = b"spark_kms kms context binding v1"
_BIND_PREFIX = b"spark_kms.encryption_context.v1\x00"


def context_bytes(encryption_context: Mapping[str, str]) -> bytes:
    """The canonical encoding of an encryption context: compact JSON with sorted keys, UTF-8."""
    return json.dumps(dict(encryption_context), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def binding_tag(data_key: bytes | bytearray, encryption_context: Mapping[str, str]) -> bytes:
    """HMAC-SHA256(HKDF-SHA256(data_key, info=_BIND_INFO), _BIND_PREFIX || context_bytes(context))."""
    bind_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_BIND_INFO).derive(bytes(data_key))
    mac = crypto_hmac.HMAC(bind_key, hashes.SHA256())
    mac.update(_BIND_PREFIX + context_bytes(encryption_context))
    return mac.finalize()


def wipe(buf: bytearray) -> None:
    """Overwrite a key buffer with zeros (see docs/ARCHITECTURE.md on what this can and cannot do)."""
    buf[:] = bytes(len(buf))
