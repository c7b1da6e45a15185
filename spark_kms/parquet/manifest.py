"""A dataset's key manifest ``<root>/_spark_kms_keys.json``: read, verify, write (docs/FORMAT.md section 8).

The manifest holds DEK entries that **replace footer entries with the same DEK id** (rewrap and re-encrypt
write it); entries no footer references open nothing and are ignored (:func:`apply_manifest`). A version-2
manifest may carry the dataset's declaration and is then authenticated (an HMAC under a KMS data key made
for it, bound to the dataset's identity): see :mod:`spark_kms.parquet.dataset`. The manifest is one object:
replaced atomically on a local disk (temp + fsync + rename) and by one PUT on an object store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from spark_kms.crypto import (
    DATASET_MANIFEST_NAME,
    DECLARATION_PURPOSE,
    MANIFEST_MAC_ALGORITHM,
    Declaration,
    DekEntry,
    KeyTable,
    Manifest,
    authenticate_manifest,
    decode_manifest_document,
    dek_id_hex,
    encode_manifest,
    encode_signed_manifest,
    new_dek_id,
    utc_now_iso,
)
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.keys import DekResolver
from spark_kms.storage import Location, StoragePath, resolve

__all__ = [
    "MANIFEST_NAME",
    "apply_manifest",
    "manifest_path",
    "read_manifest",
    "read_manifest_document",
    "verify_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

#: the dataset manifest's file name, in the dataset root
MANIFEST_NAME = DATASET_MANIFEST_NAME


def manifest_path(dataset_root: StoragePath) -> str:
    return resolve(dataset_root).join(MANIFEST_NAME).uri


def read_manifest_document(dataset_root: StoragePath) -> Manifest | None:
    """The parsed manifest in ``dataset_root`` (tag not yet checked, see :func:`verify_manifest`); None if absent."""
    loc = resolve(dataset_root).join(MANIFEST_NAME)
    data = loc.read_bytes_or_none()
    if data is None:
        return None
    return decode_manifest_document(data, where=f"manifest {loc.uri}")


def read_manifest(dataset_root: StoragePath) -> dict[str, DekEntry]:
    """The DEK entries of the manifest in ``dataset_root``; empty if there is none."""
    document = read_manifest_document(dataset_root)
    return {} if document is None else dict(document.deks)


def _root_text(dataset_root: StoragePath) -> str:
    """The dataset's identity bound into its authenticated manifest (:attr:`Location.identity`)."""
    return resolve(dataset_root).identity


def verify_manifest(document: Manifest, dataset_root: StoragePath, kms_options: KmsConfigLike) -> None:
    """Check an authenticated manifest: its key unwraps (the KMS checks the encryption context), was made
    for declarations of *this* dataset, and its HMAC covers the manifest as read. One KMS Decrypt per
    process (the process key cache serves later checks). An unauthenticated manifest passes unchecked.

    :raises DecryptionError: the tag does not match, or the key was made for another dataset or purpose.
    :raises KmsError: the key does not unwrap (no access, disabled key version, altered context).
    """
    key = document.auth_key
    if key is None:
        return
    where = f"manifest {manifest_path(dataset_root)}"
    resolver = DekResolver({key.dek_id: key}, kms_options=kms_options, where=where)
    authenticate_manifest(document, resolver.lookup(key.dek_id_bytes), _root_text(dataset_root), where=where)


def write_manifest(
    dataset_root: StoragePath,
    entries: Mapping[str, DekEntry],
    *,
    kms_options: KmsConfigLike = None,
    declaration: Declaration | None = None,
    key_uri: str | None = None,
    _verified: bool = False,
) -> Manifest | None:
    """Replace the manifest atomically (local: temp + fsync + rename; object stores: one PUT), or remove
    it when it would be empty.

    Without a declaration (given or already in the manifest), the manifest is version 1: entries only, no
    KMS call. With one, it is version 2 and authenticated: the current manifest is verified first (a
    manifest is never re-signed unchecked), then a fresh MAC key is made (one GenerateDataKey under
    ``key_uri``, default the key of the current authentication) and the new manifest is signed with it.

    :param kms_options: how to reach the KMS; required when the manifest is (or becomes) authenticated.
    :param declaration: a new declaration; default: keep the current one, if any.
    :returns: the manifest written (None when removed).
    :raises ConfigurationError: an authenticated manifest and no ``kms_options``, or no key to sign with.
    """
    root = resolve(dataset_root)
    target = root.join(MANIFEST_NAME)
    current = read_manifest_document(root)
    if declaration is not None and not isinstance(declaration, Declaration):
        raise ConfigurationError(f"declaration must be a Declaration, got {type(declaration).__name__}")
    authenticated = current is not None and current.authenticated
    if authenticated or declaration is not None:
        if kms_options is None:
            raise ConfigurationError(
                f"the manifest of dataset {root.uri!r} is authenticated (it holds the dataset's declaration): "
                "pass kms_options so it can be verified and signed again"
            )
        if authenticated and not _verified:
            verify_manifest(current, root, kms_options)  # type: ignore[arg-type]
        keep = declaration if declaration is not None else (current.declaration if current else None)
        uri = key_uri or (current.auth_key.key_uri if current and current.auth_key else None)
        if not uri:
            raise ConfigurationError(f"dataset {root.uri!r}: name the key that authenticates its manifest (key_uri=)")
        document = _signed_manifest(root, entries, keep, uri, KmsConfig.of(kms_options))
        logger.info("wrote the authenticated manifest of %s: %d data key entries, %s declared columns",
                    root.uri, len(entries), len(keep.columns) if keep else 0)
        return document
    if not entries:
        target.delete_file()
        logger.info("removed the manifest of %s", root.uri)
        return None
    data = encode_manifest(dict(sorted(entries.items())))
    target.write_bytes_atomic(data)
    logger.info("wrote the manifest of %s: %d data key entries", root.uri, len(entries))
    return decode_manifest_document(data, where=f"manifest {target.uri}")


def _signed_manifest(
    root: Location, entries: Mapping[str, DekEntry], declaration: Declaration | None, key_uri: str, kms: KmsConfig
) -> Manifest:
    provider = kms.provider(key_uri)
    context = {"dataset": root.identity, "purpose": DECLARATION_PURPOSE}
    with provider.generate_data_key(context) as data_key:
        auth_key = DekEntry(
            dek_id=dek_id_hex(new_dek_id()),
            key_uri=provider.key_uri,
            key_id=data_key.wrapped.key_id,
            key_version=data_key.wrapped.key_version,
            wrapped_dek=bytes(data_key.wrapped.ciphertext),
            encryption_context=context,
            algorithm=MANIFEST_MAC_ALGORITHM,
            created_at=utc_now_iso(),
        )
        data = encode_signed_manifest(dict(sorted(entries.items())), declaration, auth_key, data_key.plaintext)
    target = root.join(MANIFEST_NAME)
    target.write_bytes_atomic(data)
    return decode_manifest_document(data, where=f"manifest {target.uri}")


def apply_manifest(table: KeyTable, manifest: Mapping[str, DekEntry]) -> KeyTable:
    """The manifest precedence rule: ``table`` with each DEK entry the manifest also holds
    replaced by the manifest's; manifest entries ``table`` does not reference are ignored."""
    overrides = {dek_id: entry for dek_id, entry in manifest.items() if dek_id in table.deks}
    return table.with_overrides(overrides) if overrides else table
