"""The provider contract: every KMS backend (local, AWS, GCP, Azure, Vault) behaves
the same through :class:`spark_kms.kms.base.KmsProvider`, against its test server,
with the real vendor client over the wire.

The ``harness`` fixture (conftest.py) is session-scoped, so tests leave the server
as they found it except for rotations, which they only ever add.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest

from spark_kms.errors import (
    AccessDeniedError,
    InvalidCiphertextError,
    KeyNotFoundError,
    MissingExtraError,
    ThrottlingError,
)
from spark_kms.kms.base import WrappedKey
from spark_kms.testing.harness import ProviderHarness

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers", "run_id": "run-42"}

#: vendor modules to block to simulate a missing extra, and the extra that installs them
VENDOR_MODULES: dict[str, tuple[tuple[str, ...], str]] = {
    "aws": (("boto3", "botocore"), "aws"),
    "gcp": (("google.cloud.kms", "google.cloud.kms_v1", "grpc"), "gcp"),
    "azure": (("azure.keyvault.keys", "azure.keyvault", "azure.identity"), "azure"),
    "vault": (("hvac",), "vault"),
    "pkcs11": (("pkcs11",), "hsm"),
}


def _run_python(code: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_data_key_round_trip(harness: ProviderHarness) -> None:
    kms = harness.provider()
    other = kms.generate_data_key(CTX)
    with kms.generate_data_key(CTX) as dek:
        assert len(dek.plaintext) == 32
        assert dek.plaintext != other.plaintext
        assert dek.wrapped.ciphertext != other.wrapped.ciphertext
        assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
        assert bytes(dek.plaintext).hex() not in repr(dek)
    assert not any(dek.plaintext)  # wiped on leaving the block


def test_every_wrapped_key_names_key_and_version(harness: ProviderHarness) -> None:
    kms = harness.provider()
    wraps = [kms.generate_data_key(CTX).wrapped, kms.encrypt(b"payload", CTX)]
    for wrapped in wraps:
        assert isinstance(wrapped, WrappedKey)
        assert wrapped.key_id and isinstance(wrapped.key_id, str)
        assert wrapped.key_version and isinstance(wrapped.key_version, str)


def test_encrypt_decrypt_small_payload(harness: ProviderHarness) -> None:
    kms = harness.provider()
    payload = bytes(range(256)) * 4
    wrapped = kms.encrypt(payload, CTX)
    assert payload not in wrapped.ciphertext
    assert kms.decrypt(wrapped, CTX) == payload


@pytest.mark.parametrize("wrong_context", [{"dataset": "orders", "run_id": "run-42"}, {}],
                         ids=["other-dataset", "no-context"])
def test_encryption_context_mismatch_rejected(harness: ProviderHarness, wrong_context: dict[str, str]) -> None:
    kms = harness.provider()
    wrapped = kms.generate_data_key(CTX).wrapped
    with pytest.raises((InvalidCiphertextError, AccessDeniedError)):
        kms.decrypt_data_key(wrapped, wrong_context)


@pytest.mark.parametrize("where", ["middle", "last"])
def test_tampered_wrapped_key_rejected(harness: ProviderHarness, where: str) -> None:
    kms = harness.provider()
    wrapped = kms.generate_data_key(CTX).wrapped
    index = len(wrapped.ciphertext) // 2 if where == "middle" else len(wrapped.ciphertext) - 1
    tampered = WrappedKey(_flip(wrapped.ciphertext, index), wrapped.key_id, wrapped.key_version)
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_data_key(tampered, CTX)


def test_rotation_new_version_old_wraps_still_unwrap(harness: ProviderHarness) -> None:
    kms = harness.provider()
    before = kms.generate_data_key(CTX)
    harness.rotate()
    after = kms.generate_data_key(CTX)
    assert after.wrapped.key_version != before.wrapped.key_version
    assert after.wrapped.key_id == before.wrapped.key_id
    assert kms.decrypt_data_key(before.wrapped, CTX) == before.plaintext
    assert kms.decrypt_data_key(after.wrapped, CTX) == after.plaintext
    assert kms.describe_key().primary_version == after.wrapped.key_version


def test_reencrypt_moves_to_the_new_version(harness: ProviderHarness) -> None:
    kms = harness.provider()
    old = kms.generate_data_key(CTX)
    harness.rotate()
    primary = kms.describe_key().primary_version
    assert primary != old.wrapped.key_version
    rewrapped = kms.reencrypt(old.wrapped, CTX)
    assert rewrapped.key_version == primary
    assert rewrapped.ciphertext != old.wrapped.ciphertext
    assert kms.decrypt_data_key(rewrapped, CTX) == old.plaintext


def test_describe_key_returns_the_primary_version(harness: ProviderHarness) -> None:
    kms = harness.provider()
    desc = kms.describe_key()
    assert desc.enabled
    assert desc.primary_version == kms.generate_data_key(CTX).wrapped.key_version
    if desc.versions:
        assert desc.primary_version in desc.versions


def test_unknown_key_is_key_not_found(harness: ProviderHarness) -> None:
    with pytest.raises(KeyNotFoundError) as info:
        harness.provider_for_missing_key().generate_data_key(CTX)
    assert info.value.key_id


def test_denied_credentials_are_access_denied(harness: ProviderHarness) -> None:
    wrapped = harness.provider().generate_data_key(CTX).wrapped
    denied = harness.provider_denied()
    with pytest.raises(AccessDeniedError):
        denied.generate_data_key(CTX)
    with pytest.raises(AccessDeniedError):
        denied.decrypt_data_key(wrapped, CTX)


def test_throttled_calls_are_retried(harness: ProviderHarness) -> None:
    kms = harness.provider()
    # Build the clients (and any token, key metadata) before the faults start: a
    # provider's first decrypt may fetch the key version once (Azure does).
    warm = kms.generate_data_key(CTX)
    kms.decrypt_data_key(warm.wrapped, CTX)
    harness.throttle(2, 3)
    try:
        assert harness.throttled_requests() == 0
        # Warm, each call is one request once let through, so with 2 of every 3
        # throttled each call is throttled exactly twice and its third attempt succeeds.
        dek = kms.generate_data_key(CTX)
        assert harness.throttled_requests() == 2
        assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
        assert harness.throttled_requests() == 4
    finally:
        harness.throttle(0, 1)
    assert harness.throttled_requests() == 0


def test_throttling_that_never_stops_is_bounded(harness: ProviderHarness) -> None:
    kms = harness.provider()
    kms.describe_key()
    bound = harness.max_throttled_requests()
    assert bound > 1, "the harness must configure retries for this test to mean anything"
    harness.throttle(1, 1)
    start = time.monotonic()
    try:
        with pytest.raises(ThrottlingError):
            kms.generate_data_key(CTX)
        throttled = harness.throttled_requests()
    finally:
        harness.throttle(0, 1)
    assert time.monotonic() - start < 30
    # Retried (more than one request), but only as often as the retry settings allow.
    assert 1 < throttled <= bound
    if harness.throttle_bound_is_exact:
        assert throttled == bound
    assert kms.generate_data_key(CTX).wrapped.key_version  # recovers once throttling stops
    assert harness.throttled_requests() == 0


def test_provider_pickles_into_another_process(harness: ProviderHarness) -> None:
    kms = harness.provider()
    dek = kms.generate_data_key(CTX)  # the parent's client exists now; it must not travel
    blob = pickle.dumps((kms, dek.wrapped, CTX))
    code = (
        "import pickle, sys\n"
        "kms, wrapped, ctx = pickle.loads(sys.stdin.buffer.read())\n"
        "assert kms._client is None\n"
        "plaintext = kms.decrypt_data_key(wrapped, ctx)\n"
        "fresh = kms.generate_data_key(ctx)\n"
        "sys.stdout.write(bytes(plaintext).hex() + ' ' + fresh.wrapped.key_version)\n"
    )
    result = _run_python(code, blob)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    hex_plaintext, version = result.stdout.decode().split()
    assert hex_plaintext == bytes(dek.plaintext).hex()
    assert version == kms.describe_key().primary_version


def test_missing_extra_names_the_extra(harness: ProviderHarness) -> None:
    key_uri = harness.provider().key_uri
    if harness.name in VENDOR_MODULES:
        blocked, extra = VENDOR_MODULES[harness.name]
        code = (
            "import sys\n"
            f"for name in {list(blocked)!r}:\n"
            "    sys.modules[name] = None\n"
            "from spark_kms.errors import MissingExtraError\n"
            "from spark_kms.kms import provider_from_uri\n"
            "try:\n"
            f"    provider_from_uri({key_uri!r})\n"
            "except MissingExtraError as exc:\n"
            "    print(type(exc).__name__, exc.extra, '|', exc)\n"
            "else:\n"
            "    print('no error')\n"
        )
        result = _run_python(code)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        out = result.stdout.decode()
        assert out.startswith(f"{MissingExtraError.__name__} {extra} |"), out
        assert f"spark-kms[{extra}]" in out
    else:
        # The embedded KMS needs no extra: it loads with every vendor SDK blocked.
        blocked = [m for mods, _ in VENDOR_MODULES.values() for m in mods]
        code = (
            "import sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None\n"
            "from spark_kms.kms.registry import provider_class\n"
            f"print(provider_class({key_uri!r}).__name__)\n"
        )
        result = _run_python(code)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert result.stdout.decode().strip() == type(harness.provider()).__name__
