"""Data keys for the file layer: making key-table entries and unwrapping them lazily.

A :class:`~spark_kms.crypto.DekEntry` holds only the *wrapped* data key, so entries
are safe to ship to Spark executors. :class:`DekResolver` unwraps an entry the first
time a cell needs it, through the KMS named by the entry's ``key_uri``, and keeps the
plaintext in the per-process cache (:func:`spark_kms.kms.process_dek_cache`): at most
one KMS Decrypt per data key per process, however many batches, files or readers ask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from spark_kms.crypto import AES_256_SIV, DekEntry, dek_id_hex, new_dek_id, utc_now_iso
from spark_kms.errors import KeyErasedError, KmsError
from spark_kms.kms import DataKeyCache, KmsConfig, KmsConfigLike, KmsProvider, WrappedKey, process_dek_cache
from spark_kms.kms.base import DataKey, canonical_context

__all__ = ["DekResolver", "entry_for", "new_deterministic_entry"]

logger = logging.getLogger(__name__)


def entry_for(
    data_key: DataKey,
    dek_id: bytes,
    provider: KmsProvider,
    encryption_context: Mapping[str, str],
    algorithm: str,
) -> DekEntry:
    """The key-table entry describing a freshly generated data key (wrapped form only)."""
    return DekEntry(
        dek_id=dek_id_hex(dek_id),
        key_uri=provider.key_uri,
        key_id=data_key.wrapped.key_id,
        key_version=data_key.wrapped.key_version,
        wrapped_dek=bytes(data_key.wrapped.ciphertext),
        encryption_context=dict(encryption_context),
        algorithm=algorithm,
        created_at=utc_now_iso(),
    )


def new_deterministic_entry(
    provider: KmsProvider, encryption_context: Mapping[str, str] | None = None
) -> DekEntry:
    """Make the dataset-level data key of deterministic (AES-SIV) and blind-index columns.

    Called once per job on the driver (one GenerateDataKey). Only the wrapped key is
    kept: executors unwrap it lazily through :class:`DekResolver`, so every task and
    every file of the job encrypts equal values to equal cells (joinable columns).
    """
    ctx = canonical_context(encryption_context)
    with provider.generate_data_key(ctx) as data_key:
        return entry_for(data_key, new_dek_id(), provider, ctx, AES_256_SIV)


class DekResolver:
    """Unwraps the data keys of a key table on demand.

    :param entries: DEK entries by hex DEK id (``KeyTable.deks``, manifest entries applied).
    :param kms_options: how to reach each KMS (:class:`~spark_kms.kms.KmsConfig`, or what
        :meth:`~spark_kms.kms.KmsConfig.of` takes).
    :param cache: where plaintext keys live; default the per-process cache.
    :param where: default location named in errors (``"file a.parquet"``, ``"dataset d"``).

    ``lookup`` is the ``dek_lookup`` callable of :class:`~spark_kms.crypto.CellDecryptor`:
    it raises ``KeyError`` for a DEK id the table does not hold (the decryptor turns that
    into a DecryptionError naming the column), and re-raises a KMS failure as the same
    :class:`~spark_kms.errors.KmsError` class with the DEK id, key id, key version and
    location in its message — never the wrapped bytes or any plaintext.
    """

    def __init__(
        self,
        entries: Mapping[str, DekEntry],
        *,
        kms_options: KmsConfigLike = None,
        cache: DataKeyCache | None = None,
        where: str = "",
    ) -> None:
        self._entries = dict(entries)
        self.kms = KmsConfig.of(kms_options)
        self._cache = cache
        self.where = where
        #: KMS Decrypt calls this resolver made (cache misses)
        self.kms_calls = 0

    def __reduce__(self) -> tuple[object, ...]:
        # Configuration only: a custom cache (it holds plaintext keys and a lock) is not
        # shipped; the receiving process uses its own process cache.
        return (DekResolver, (self._entries,), {"kms": self.kms, "where": self.where})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.kms = state["kms"]
        self.where = state["where"]

    def __repr__(self) -> str:
        return f"DekResolver({len(self._entries)} DEKs, kms_calls={self.kms_calls})"

    def __contains__(self, dek_id_hex_: str) -> bool:
        return dek_id_hex_ in self._entries

    @property
    def entries(self) -> dict[str, DekEntry]:
        return dict(self._entries)

    def add(self, entry: DekEntry) -> None:
        """Make one more entry resolvable (a writer's own freshly made key)."""
        self._entries[entry.dek_id] = entry

    def lookup(self, dek_id: bytes, *, where: str | None = None) -> bytes:
        """The plaintext data key for ``dek_id`` (8 raw bytes); KeyError if not in the table."""
        entry = self._entries[dek_id_hex(dek_id)]
        cache = self._cache if self._cache is not None else process_dek_cache()
        # The wrapped bytes identify the key material; the same DEK rewrapped under a
        # new key version is a different entry, costing one more Decrypt, never a wrong key.
        # The provider identity keeps principals apart: a key one principal unwrapped is
        # never served from the cache to another (the KMS policy and audit log see each).
        # The encryption context is part of the key too: the KMS checks it on unwrap, so an
        # entry whose context was changed must go back to the KMS and fail there.
        cache_key = (
            "spark_kms.dek",
            entry.dek_id,
            entry.wrapped_dek,
            tuple(sorted(entry.encryption_context.items())),
            self._provider(entry.key_uri).cache_identity(),
        )
        known = cache.erased.get(cache_key)
        if known is not None and time.monotonic() - known < cache.ttl:
            # Found erased before in this process: say so again without asking the KMS once per batch.
            raise KeyErasedError(
                f"data key {entry.dek_id} (key {entry.key_id}, {entry.key_uri}) is erased: its KMS key is scheduled "
                "for deletion or destroyed", key_id=entry.key_id, operation="Decrypt",
            )
        try:
            return cache.get_or_load(cache_key, lambda: self._unwrap(entry, self.where if where is None else where))
        except KeyErasedError:
            if len(cache.erased) > 4096:
                cache.erased.clear()
            cache.erased[cache_key] = time.monotonic()
            raise

    def _provider(self, key_uri: str) -> KmsProvider:
        return self.kms.provider(key_uri)

    def _unwrap(self, entry: DekEntry, where: str) -> bytearray:
        provider = self._provider(entry.key_uri)
        wrapped = WrappedKey(entry.wrapped_dek, entry.key_id, entry.key_version)
        self.kms_calls += 1
        logger.debug("unwrapping data key %s (key %s, version %s) for %s, encryption context %s",
                     entry.dek_id, entry.key_id, entry.key_version, where or "-", entry.encryption_context)
        try:
            return provider.decrypt_data_key(wrapped, entry.encryption_context)
        except KmsError as exc:
            place = f" for {where}" if where else ""
            message = (
                f"cannot unwrap data key {entry.dek_id} (key {entry.key_id}, version {entry.key_version}, "
                f"{entry.key_uri}){place}: {exc}"
            )
            try:
                enriched = type(exc)(message, key_id=entry.key_id, operation=exc.operation or "Decrypt")
            except TypeError:  # a backend subclass with its own constructor
                enriched = KmsError(message, key_id=entry.key_id, operation="Decrypt")
            raise enriched from exc
