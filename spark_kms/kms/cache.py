"""A per-process cache of unwrapped data keys.

Readers decrypt many cells with few data keys; the cache makes that at most one
KMS Decrypt per data key per process. Entries expire after ``ttl`` seconds or
``max_uses`` look-ups, and are wiped on eviction.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from spark_kms._env import seconds_from_env

__all__ = ["DataKeyCache", "process_dek_cache"]


@dataclass
class _Entry:
    key: bytearray
    created: float
    uses: int = 0


class DataKeyCache:
    """LRU cache of plaintext data keys keyed by anything hashable (e.g. the wrapped bytes)."""

    def __init__(self, *, ttl: float = 3600.0, max_uses: int = 1 << 40, max_entries: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_uses = max_uses
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        #: keys whose load said they are erased (KeyErasedError), by cache key -> when (time.monotonic()): a
        #: negative entry, kept for the TTL so readers of erased data do not ask the KMS again for every batch
        self.erased: dict[Hashable, float] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"DataKeyCache({len(self._entries)} keys, hits={self.hits}, misses={self.misses})"

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_load(self, cache_key: Hashable, load: Callable[[], bytes | bytearray]) -> bytes:
        """The cached plaintext for ``cache_key``, calling ``load`` (a KMS Decrypt) on a miss."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and (now - entry.created > self.ttl or entry.uses >= self.max_uses):
                self._evict(cache_key)
                entry = None
            if entry is not None:
                entry.uses += 1
                self._entries.move_to_end(cache_key)
                self.hits += 1
                return bytes(entry.key)
        # Load outside the lock: a KMS call may be slow; a racing loader at worst loads twice.
        plaintext = bytearray(load())
        with self._lock:
            self.misses += 1
            if cache_key in self._entries:  # a racing loader stored it first: wipe its copy, keep ours
                self._evict(cache_key)
            self._entries[cache_key] = _Entry(plaintext, now, 1)
            while len(self._entries) > self.max_entries:
                self._evict(next(iter(self._entries)))
            return bytes(plaintext)

    def clear(self) -> None:
        with self._lock:
            for k in list(self._entries):
                self._evict(k)
            self.erased.clear()
            self.hits = self.misses = 0

    def _evict(self, cache_key: Hashable) -> None:
        entry = self._entries.pop(cache_key)
        for i in range(len(entry.key)):
            entry.key[i] = 0


_PROCESS_CACHE: DataKeyCache | None = None


#: seconds an unwrapped data key stays in a process's cache (default 3600): how long a long-lived process (a
#: Spark Python worker of a running session) can still read data whose tenant key was erased since it unwrapped it
DEK_CACHE_TTL_ENV = "SPARK_KMS_DEK_CACHE_TTL_S"


def process_dek_cache() -> DataKeyCache:
    """The cache shared by everything in this (worker) process; its TTL is ``$SPARK_KMS_DEK_CACHE_TTL_S``
    seconds (default 3600), read when the process first uses it."""
    global _PROCESS_CACHE
    if _PROCESS_CACHE is None:
        ttl = seconds_from_env(DEK_CACHE_TTL_ENV, 3600.0)
        _PROCESS_CACHE = DataKeyCache(ttl=ttl)
    return _PROCESS_CACHE
