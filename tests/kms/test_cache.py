"""The per-process cache of unwrapped data keys: expiry, bounds, and wiping what it drops."""

from __future__ import annotations

import pytest

from spark_kms.kms import DataKeyCache

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_hit_makes_no_load_and_expired_entries_are_wiped_and_reloaded() -> None:
    clock = Clock()
    cache = DataKeyCache(ttl=10.0, clock=clock)
    loads: list[bytes] = []

    def load() -> bytes:
        loads.append(KEY_A)
        return KEY_A

    assert cache.get_or_load("k", load) == KEY_A
    held = cache._entries["k"].key
    assert cache.get_or_load("k", load) == KEY_A and len(loads) == 1
    clock.now = 11.0
    assert cache.get_or_load("k", load) == KEY_A and len(loads) == 2
    assert held == bytearray(32)  # the expired copy was zeroed, not just dropped


def test_max_entries_evicts_the_least_recently_used_and_wipes_it() -> None:
    cache = DataKeyCache(max_entries=1)
    cache.get_or_load("a", lambda: KEY_A)
    held = cache._entries["a"].key
    cache.get_or_load("b", lambda: KEY_B)
    assert list(cache._entries) == ["b"] and held == bytearray(32)


def test_a_racing_loader_leaves_no_unwiped_copy_behind() -> None:
    # Two threads missing the same key both load it (the load runs outside the lock); the
    # copy that loses the race must be wiped like any other evicted key, not left to the GC.
    cache = DataKeyCache()
    dropped: list[bytearray] = []

    def slow_load() -> bytes:
        cache.get_or_load("k", lambda: KEY_A)  # the other thread finishes first
        dropped.append(cache._entries["k"].key)
        return KEY_A

    assert cache.get_or_load("k", slow_load) == KEY_A
    assert len(cache) == 1 and cache._entries["k"].key == bytearray(KEY_A)
    assert dropped[0] is not cache._entries["k"].key and dropped[0] == bytearray(32)


def test_a_wrapped_payload_that_is_not_a_data_key_is_refused_by_decrypt_data_key(tmp_path) -> None:
    # A small payload encrypted under the key unwraps fine with decrypt(), but it is not a
    # 32-byte data key: decrypt_data_key must not hand it to a cipher as one.
    from spark_kms.errors import InvalidCiphertextError
    from spark_kms.kms import provider_from_uri
    from spark_kms.kms.local import LocalKms

    LocalKms(tmp_path / "ks").create_key(alias="alias/pii")
    provider = provider_from_uri("local://alias/pii", keystore=str(tmp_path / "ks"))
    wrapped = provider.encrypt(b"sixteen byte msg", {"purpose": "test"})
    assert provider.decrypt(wrapped, {"purpose": "test"}) == b"sixteen byte msg"
    with pytest.raises(InvalidCiphertextError, match="16 bytes, not a 32-byte data key") as info:
        provider.decrypt_data_key(wrapped, {"purpose": "test"})
    assert "sixteen" not in str(info.value)


def test_process_cache_ttl_from_the_environment() -> None:
    # How long a long-lived worker may still serve a key whose tenant was erased since (docs/ERASURE.md).
    import subprocess
    import sys

    code = "from spark_kms.kms import process_dek_cache; print(process_dek_cache().ttl)"
    run = lambda env: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                     env={**__import__("os").environ, **env}, timeout=120)
    assert run({"SPARK_KMS_DEK_CACHE_TTL_S": "30"}).stdout.strip() == "30.0"
    assert run({"SPARK_KMS_DEK_CACHE_TTL_S": ""}).stdout.strip() == "3600.0"
    bad = run({"SPARK_KMS_DEK_CACHE_TTL_S": "soon"})
    assert bad.returncode != 0 and "SPARK_KMS_DEK_CACHE_TTL_S" in bad.stderr
