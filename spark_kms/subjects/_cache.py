"""The per-process cache of unwrapped subject keys.

An LRU of at most 100,000 keys (:class:`~spark_kms.kms.cache.DataKeyCache`: entries are bytearrays, wiped on
eviction) whose TTL is ``$SPARK_KMS_SUBJECT_CACHE_TTL_S`` seconds (default 300; 0 turns caching off). The TTL
bounds how long a process that did not erase a subject may keep serving its key from memory after another
process erased it; :meth:`SubjectKeyStore.erase` evicts the subject in its own process at once.
"""

from __future__ import annotations

from typing import Any

from spark_kms._env import seconds_from_env
from spark_kms.kms import DataKeyCache
from spark_kms.kms.cache import _Entry

__all__ = ["CACHE_TTL_ENV", "subject_key_cache"]

CACHE_TTL_ENV = "SPARK_KMS_SUBJECT_CACHE_TTL_S"
MAX_ENTRIES = 100_000


def _cache_ttl() -> float:
    return seconds_from_env(CACHE_TTL_ENV, 300.0)


class _SubjectKeyCache(DataKeyCache):
    """The process cache of unwrapped subject keys: :class:`DataKeyCache` (LRU, TTL, wiped on eviction) with
    batch-friendly look-ups and eviction of one subject."""

    def peek(self, cache_key: Any) -> bytes | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and now - entry.created > self.ttl:
                self._evict(cache_key)
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(cache_key)
            entry.uses += 1
            self.hits += 1
            return bytes(entry.key)

    def put(self, cache_key: Any, key: bytes) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if cache_key in self._entries:
                self._evict(cache_key)
            self._entries[cache_key] = _Entry(bytearray(key), self._clock())
            while len(self._entries) > self.max_entries:
                self._evict(next(iter(self._entries)))

    def discard(self, cache_key: Any) -> None:
        with self._lock:
            if cache_key in self._entries:
                self._evict(cache_key)


_CACHE = _SubjectKeyCache(ttl=300.0, max_entries=MAX_ENTRIES)


def subject_key_cache() -> _SubjectKeyCache:
    """The cache of this process, its TTL as ``$SPARK_KMS_SUBJECT_CACHE_TTL_S`` says now."""
    _CACHE.ttl = _cache_ttl()
    return _CACHE
