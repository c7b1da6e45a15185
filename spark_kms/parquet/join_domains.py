"""Join domains: one deterministic key per domain, made once, found and reused by every later writer.

Deterministic (AES-SIV) and blind-index columns are joinable only while equal values give equal
cells, i.e. while every writer uses the same key. That key belongs to a *join domain*:

* the **default domain** is the dataset itself: its key is recorded in the dataset root, in
  ``_spark_kms_join_keys.json``; every later write of the dataset (append, partition or full
  overwrite, re-encrypt) finds and reuses it;
* a **named domain** (writer option ``join_domain="customers"``) is shared by several datasets:
  its key lives in a *domain store* directory (``join_domain_store=...`` or the environment
  variable ``SPARK_KMS_JOIN_DOMAIN_STORE``) as ``<store>/<name>.json``, and each dataset of the
  domain also records it in its own ``_spark_kms_join_keys.json``.

A domain key is an ordinary wrapped data key (a :class:`~spark_kms.crypto.DekEntry` of
algorithm AES-256-SIV) with the encryption context ``{"spark_kms_join_domain": <name>}``: the
KMS sees which domain is unwrapped, and the wrapped key is useless without the KMS. It is made
by the first writer (one GenerateDataKey); the record is read and written under a lock file
beside it (and replaced atomically), so writers racing on a new domain agree on one key. Every writer of deterministic columns unwraps
the domain key once (KMS Decrypt) before any task runs: it therefore needs *Decrypt* on the
domain key's KMS key as well as *GenerateDataKey* on its own, and gets a clear error naming the
domain and key when it lacks it.

Rotating a domain key is explicit (``rotate=True``, used by ``reencrypt_dataset(...,
rotate_join_domain=True)``): a new key becomes current and the old one is kept in the file's
history (files written under it still name it in their footers); the domain's columns must then
be rewritten -- re-encrypt does that for one dataset, and every dataset of a named domain must be
re-encrypted for joins across them to match again (docs/ROTATION.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from spark_kms.crypto import AES_256_SIV, DekEntry
from spark_kms.errors import AccessDeniedError, ConfigurationError, FormatError, JobError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.dataset import dataset_path, read_manifest
from spark_kms.parquet.keys import DekResolver, new_deterministic_entry
from spark_kms.storage import Location, LockTimeout, StoragePath, lock, resolve

__all__ = [
    "DEFAULT_DOMAIN",
    "DOMAIN_CONTEXT_KEY",
    "DOMAIN_STORE_ENV",
    "JOIN_KEYS_NAME",
    "domain_key",
    "read_join_keys",
]

logger = logging.getLogger(__name__)

#: the name of the default domain: the dataset itself
DEFAULT_DOMAIN = "dataset"
#: the dataset root's record of its join-domain keys
JOIN_KEYS_NAME = "_spark_kms_join_keys.json"
#: the encryption-context key naming the domain of a domain key
DOMAIN_CONTEXT_KEY = "spark_kms_join_domain"
#: where named domains keep their keys when no ``join_domain_store`` is given
DOMAIN_STORE_ENV = "SPARK_KMS_JOIN_DOMAIN_STORE"
_FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(domain: str) -> str:
    if not isinstance(domain, str) or not _NAME_RE.match(domain):
        raise ConfigurationError(
            f"a join domain name is 1 to 128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            f"got {domain!r}"
        )
    return domain


def _load(path: Location, what: str) -> dict[str, Any]:
    raw = path.read_bytes_or_none()
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{what} {path} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format_version") != _FORMAT_VERSION:
        raise FormatError(f"{what} {path}: expected a JSON object with format_version {_FORMAT_VERSION}")
    return doc


def _entry(doc: Mapping[str, Any], path: Location) -> DekEntry:
    try:
        entry = DekEntry.from_dict(doc["current"])
    except (KeyError, TypeError) as exc:
        raise FormatError(f"join-domain record {path} has no valid 'current' key entry ({exc})") from None
    if entry.algorithm != AES_256_SIV:
        raise FormatError(f"join-domain record {path}: the domain key must be {AES_256_SIV}, got {entry.algorithm}")
    return entry


def read_join_keys(dataset_root: StoragePath) -> dict[str, DekEntry]:
    """The current key of every join domain the dataset records, by domain name (no KMS call)."""
    path = resolve(dataset_root).join(JOIN_KEYS_NAME)
    doc = _load(path, "join-domain record")
    out: dict[str, DekEntry] = {}
    for name, record in (doc.get("domains") or {}).items():
        out[name] = _entry(record, path)
    return out


def _record_path(dataset_root: Location | None, domain: str, store: StoragePath | None) -> Location:
    if domain == DEFAULT_DOMAIN:
        assert dataset_root is not None
        return dataset_root.join(JOIN_KEYS_NAME)
    where = store or os.environ.get(DOMAIN_STORE_ENV)
    if not where:
        raise ConfigurationError(
            f"join domain {domain!r} is shared by several datasets, so its key needs a place they all find: "
            f"pass join_domain_store=<directory> (or set ${DOMAIN_STORE_ENV})"
        )
    return resolve(dataset_path(where, what="join_domain_store")).join(f"{domain}.json")


def _new_record(entry: DekEntry, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    history = list((previous or {}).get("history") or [])
    if previous and previous.get("current"):
        history.append(previous["current"])
    return {"format_version": _FORMAT_VERSION, "current": entry.to_dict(), "history": history}


def domain_key(
    dataset_root: StoragePath | None,
    *,
    key_uri: str,
    kms_options: KmsConfigLike = None,
    domain: str | None = None,
    store: StoragePath | None = None,
    rotate: bool = False,
) -> DekEntry:
    """The key of the join domain that ``dataset_root``'s deterministic columns belong to.

    Reuses the domain's key when it exists (no GenerateDataKey), else makes it under ``key_uri``.
    Either way the key is unwrapped once here, so a writer without Decrypt on it fails before any
    task runs.

    :param dataset_root: the dataset written (``None`` for writers without one, e.g. the ML
        transformer: then ``domain`` must name a domain of a store).
    :param domain: the domain name; default the dataset's own domain (:data:`DEFAULT_DOMAIN`).
    :param store: the domain store directory of a named domain.
    :param rotate: make a new key the domain's current one (the old one goes to its history).
    :raises AccessDeniedError: this principal may not unwrap the domain's key (names domain and key).
    """
    kms = KmsConfig.of(kms_options)
    name = _check_name(domain or DEFAULT_DOMAIN)
    if dataset_root is None and name == DEFAULT_DOMAIN:
        raise ConfigurationError("a writer without a dataset path must name its join domain (and its store)")
    try:
        location = resolve(dataset_root) if dataset_root is not None else None  # keeps a Location's options
    except ConfigurationError as exc:
        raise ConfigurationError(f"join domain {name!r}: {exc}") from None
    root = location.uri if location is not None else ""
    path = _record_path(location, name, store)
    record = _domain_record(path, name)
    fresh: DekEntry | None = None
    if record is not None and not rotate:
        entry = _entry(record, path)
    else:
        # The KMS call comes before anything is created: a writer whose key is disabled or denied
        # leaves no trace. Writers racing on a new domain then settle under a lock beside the
        # record (spark_kms.storage.lock): the first to store its key wins, the others use that one.
        fresh = new_deterministic_entry(kms.provider(key_uri), {DOMAIN_CONTEXT_KEY: name})
        with _record_lock(path):
            current = _domain_record(path, name)
            if current is not None and (not rotate or current != record):
                entry, fresh = _entry(current, path), None  # another writer made (or rotated) it meanwhile
            else:
                entry = fresh
                _store_record(path, name, _new_record(entry, current))
                logger.info("join domain %r: %s key %s under %s", name, "rotated to" if rotate else "made",
                            entry.dek_id, entry.key_uri)
    if location is not None and name != DEFAULT_DOMAIN:
        _remember(location, name, entry)
    # A rewrap of the dataset re-wrapped this key too (it is in every footer that uses it): the
    # manifest's entry for it takes precedence, as for every other data key of the dataset.
    if location is not None:
        entry = read_manifest(location).get(entry.dek_id, entry)
    if fresh is None:
        if entry.key_uri != key_uri:
            # Someone who can write to storage could plant a domain key wrapped under a key *they*
            # hold; a writer therefore only adopts a domain key wrapped under its own key.
            raise ConfigurationError(
                f"join domain {name!r} of {root or 'the store'} has its key wrapped under {entry.key_uri}, not "
                f"under this writer's key {key_uri}: write with that key, or rotate the domain to this key "
                f"(reencrypt_dataset(..., rotate_join_domain=True) / spark-kms reencrypt --rotate-join-domain)"
            )
        logger.debug("join domain %r: reusing key %s (%s, version %s)", name, entry.dek_id, entry.key_uri,
                     entry.key_version)
    _check_unwrap(entry, kms, name)
    return entry


def _record_lock(path: Location) -> Any:
    """The lock beside a join-domain record (60 s to get it)."""
    from contextlib import contextmanager

    @contextmanager
    def held() -> Any:
        try:
            with lock(path.parent.join(f".{path.name}.lock"), timeout=60):
                yield
        except LockTimeout as exc:
            raise JobError(f"join-domain record {path.uri} stayed locked for 60 s ({exc})") from None

    return held()


def _domain_record(path: Location, name: str) -> dict[str, Any] | None:
    if name == DEFAULT_DOMAIN:
        return (_load(path, "join-domain record").get("domains") or {}).get(name)
    return _load(path, "join-domain store record") or None


def _store_record(path: Location, name: str, record: dict[str, Any]) -> None:
    if name == DEFAULT_DOMAIN:
        doc = _load(path, "join-domain record")
        domains = dict(doc.get("domains") or {})
        domains[name] = record
        path.write_json_atomic({"format_version": _FORMAT_VERSION, "domains": domains})
    else:
        path.write_json_atomic(record)


def _remember(root: Location, name: str, entry: DekEntry) -> None:
    """Record a named domain's current key in the dataset too (inspection, re-encrypt)."""
    path = root.join(JOIN_KEYS_NAME)
    with _record_lock(path):
        doc = _load(path, "join-domain record") or {"format_version": _FORMAT_VERSION, "domains": {}}
        domains = dict(doc.get("domains") or {})
        current = domains.get(name, {}).get("current")
        if current == entry.to_dict():
            return
        domains[name] = _new_record(entry, domains.get(name))
        path.write_json_atomic({"format_version": _FORMAT_VERSION, "domains": domains})


def _check_unwrap(entry: DekEntry, kms: KmsConfig, name: str) -> None:
    resolver = DekResolver({entry.dek_id: entry}, kms_options=kms, where=f"join domain {name!r}")
    try:
        resolver.lookup(entry.dek_id_bytes)
    except AccessDeniedError as exc:
        raise AccessDeniedError(
            f"writing deterministic or blind-index columns of join domain {name!r} needs Decrypt on its key "
            f"{entry.key_id} ({entry.key_uri}), which this principal lacks: {exc}",
            key_id=entry.key_id, operation="Decrypt",
        ) from exc
