"""The Azure Key Vault provider, with the real azure-keyvault-keys SDK over HTTPS to the
in-test Key Vault server (bearer challenge included).

The cross-provider contract lives in test_contract.py; this file covers what is
Azure's own: the challenge protocol, the context-binding format, disabled keys,
pinned versions, the SDK's admin calls against the server, option checks.
"""

from __future__ import annotations

import pickle
import struct
import time
from collections.abc import Iterator

import pytest
from azure.keyvault.keys import KeyClient

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    ThrottlingError,
)
from spark_kms.kms import provider_from_uri
from spark_kms.kms.azure import AzureKeyVaultProvider
from spark_kms.kms.base import WrappedKey
from spark_kms.testing.azure import AzureKeyVaultHarness, StaticTokenCredential

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers", "run_id": "run-9"}


@pytest.fixture(scope="module")
def harness() -> Iterator[AzureKeyVaultHarness]:
    h = AzureKeyVaultHarness()
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _admin(h: AzureKeyVaultHarness) -> KeyClient:
    opts = h.options()
    return KeyClient(h.server.vault_url, opts["credential"], verify_challenge_resource=False,
                     connection_verify=h.server.ca_path, retry_total=0)


def test_challenge_protocol_then_bearer_token(harness: AzureKeyVaultHarness) -> None:
    credential = StaticTokenCredential(harness._token)
    opts = {**harness.options(), "credential": credential}
    start = len(harness.server.requests)
    kms = AzureKeyVaultProvider(harness.key_uri(), **opts)
    dek = kms.generate_data_key(CTX)
    assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    # The SDK asked for a token for the resource named in the server's 401 challenge.
    assert credential.scopes_seen and set(credential.scopes_seen) == {"https://vault.azure.net/.default"}
    assert harness.server.api_versions  # every request carried ?api-version=
    paths = [p for _, p in harness.server.requests[start:]]
    assert any(p.endswith("/unwrapkey") for p in paths)


def test_wrapped_key_layout_and_version(harness: AzureKeyVaultHarness) -> None:
    kms = harness.provider()
    dek = kms.generate_data_key(CTX)
    blob = dek.wrapped.ciphertext
    assert blob[0] == 0x01 and len(blob) == 1 + 256 + 32  # RSA-2048 wrap + context tag
    assert dek.wrapped.key_id == "https://spark-kms-test.vault.azure.net/keys/pii"
    assert len(dek.wrapped.key_version) == 32 and dek.wrapped.key_version == kms.describe_key().primary_version
    payload = kms.encrypt(b"x" * 4096, CTX)
    assert payload.ciphertext[0] == 0x02
    assert kms.decrypt(payload, CTX) == b"x" * 4096


def test_context_binding_and_tampering(harness: AzureKeyVaultHarness) -> None:
    kms = harness.provider()
    dek = kms.generate_data_key(CTX)
    w = dek.wrapped
    cases = {
        "other context": (w, {"dataset": "orders"}),
        "no context": (w, {}),
        "forged tag": (WrappedKey(w.ciphertext[:-32] + bytes(32), w.key_id, w.key_version), CTX),
        "flipped wrap": (WrappedKey(w.ciphertext[:100] + bytes([w.ciphertext[100] ^ 1]) + w.ciphertext[101:],
                                    w.key_id, w.key_version), CTX),
        "truncated": (WrappedKey(w.ciphertext[:40], w.key_id, w.key_version), CTX),
        "unknown format": (WrappedKey(b"\x09" + w.ciphertext[1:], w.key_id, w.key_version), CTX),
        "no version": (WrappedKey(w.ciphertext, w.key_id, ""), CTX),
    }
    for name, (wrapped, ctx) in cases.items():
        with pytest.raises(InvalidCiphertextError) as info:
            kms.decrypt_data_key(wrapped, ctx)
        assert bytes(dek.plaintext).hex() not in str(info.value), name
    payload = kms.encrypt(b"secret payload", CTX).ciphertext
    (inner_len,) = struct.unpack(">H", payload[1:3])
    for bad in (payload[:-1] + bytes([payload[-1] ^ 1]), payload[: 3 + inner_len + 5]):
        with pytest.raises(InvalidCiphertextError):
            kms.decrypt(WrappedKey(bad, w.key_id, w.key_version), CTX)
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt(kms.encrypt(b"secret payload", CTX), {"dataset": "orders"})


def test_rotation_reencrypt_and_pinned_versions(harness: AzureKeyVaultHarness) -> None:
    kms = harness.provider()
    old = kms.generate_data_key(CTX)
    harness.rotate()
    primary = kms.describe_key().primary_version
    assert primary != old.wrapped.key_version
    rewrapped = kms.reencrypt(old.wrapped, CTX)
    assert rewrapped.key_version == primary and rewrapped.ciphertext[0] == 0x01
    assert kms.decrypt_data_key(rewrapped, CTX) == old.plaintext
    pinned = AzureKeyVaultProvider(f"{harness.key_uri()}/{old.wrapped.key_version}", **harness.options())
    assert pinned.generate_data_key(CTX).wrapped.key_version == old.wrapped.key_version
    assert pinned.describe_key().primary_version == old.wrapped.key_version


def test_disabled_key_is_a_key_state_error(harness: AzureKeyVaultHarness) -> None:
    admin = _admin(harness)
    created = admin.create_key("to-disable", "RSA", size=2048)  # the SDK's create, against the server
    kms = AzureKeyVaultProvider(harness.key_uri("to-disable"), **harness.options())
    dek = kms.generate_data_key(CTX)
    assert dek.wrapped.key_version == created.properties.version
    admin.update_key_properties("to-disable", created.properties.version, enabled=False)
    with pytest.raises(KeyStateError):
        kms.generate_data_key(CTX)
    with pytest.raises(KeyStateError):
        kms.decrypt_data_key(dek.wrapped, CTX)
    assert kms.describe_key().state == "disabled"
    rotated = admin.rotate_key("to-disable")  # the SDK's rotate: a new, enabled version
    assert kms.generate_data_key(CTX).wrapped.key_version == rotated.properties.version


def test_errors_map_to_spark_kms_types(harness: AzureKeyVaultHarness) -> None:
    with pytest.raises(KeyNotFoundError) as info:
        harness.provider_for_missing_key().generate_data_key(CTX)
    assert info.value.key_id == "https://spark-kms-test.vault.azure.net/keys/no-such-key"
    wrapped = harness.provider().generate_data_key(CTX).wrapped
    with pytest.raises(AccessDeniedError):  # a known principal without permissions: 403
        harness.provider_denied().decrypt_data_key(wrapped, CTX)
    stranger = AzureKeyVaultProvider(harness.key_uri(), **{
        **harness.options(), "credential": StaticTokenCredential("never-issued")})
    with pytest.raises(AccessDeniedError):  # a token the vault rejects: 401 after the challenge
        stranger.generate_data_key(CTX)
    plain_http = AzureKeyVaultProvider(harness.key_uri(), **{
        **harness.options(), "vault_url": f"http://127.0.0.1:{harness.server.port}"})
    with pytest.raises(ConfigurationError, match="https"):
        plain_http.generate_data_key(CTX)


def test_throttling_is_retried_then_bounded(harness: AzureKeyVaultHarness) -> None:
    kms = harness.provider()
    kms.describe_key()
    harness.throttle(2, 3)
    try:
        dek = kms.generate_data_key(CTX)
        assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    finally:
        harness.throttle(0, 1)
    harness.throttle(1, 1)
    start = time.monotonic()
    try:
        with pytest.raises(ThrottlingError):
            kms.generate_data_key(CTX)
        with pytest.raises(ThrottlingError):
            kms.decrypt_data_key(dek.wrapped, CTX)
    finally:
        harness.throttle(0, 1)
    assert time.monotonic() - start < 10


def test_registry_pickling_and_secrets(harness: AzureKeyVaultHarness) -> None:
    kms = provider_from_uri(harness.key_uri(), **harness.options())
    assert isinstance(kms, AzureKeyVaultProvider)
    dek = kms.generate_data_key(CTX)
    clone = pickle.loads(pickle.dumps(kms))
    assert clone._client is None
    assert clone.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    assert harness._token not in repr(kms.options["credential"])
    secret = AzureKeyVaultProvider(harness.key_uri(), tenant_id="t", client_id="c", client_secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(secret)
    assert secret == AzureKeyVaultProvider(harness.key_uri(), tenant_id="t", client_id="c", client_secret="other")


@pytest.mark.parametrize("uri", ["azure-kv://v.vault.azure.net/pii", "azure-kv://v.vault.azure.net/keys/",
                                 "azure-kv:///keys/pii", "azure-kv://v.vault.azure.net/keys/pii/1/2"])
def test_bad_uris_state_the_rule(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="azure-kv://<vault>"):
        AzureKeyVaultProvider(uri)


def test_bad_options_state_the_rule() -> None:
    uri = "azure-kv://v.vault.azure.net/keys/pii"
    assert AzureKeyVaultProvider(uri).vault_url == "https://v.vault.azure.net"
    with pytest.raises(ConfigurationError, match="unknown Azure Key Vault option"):
        AzureKeyVaultProvider(uri, vaulturl="x")
    with pytest.raises(ConfigurationError, match="algorithm"):
        AzureKeyVaultProvider(uri, algorithm="RSA1_5")
    with pytest.raises(ConfigurationError, match="tenant_id, client_id and client_secret"):
        AzureKeyVaultProvider(uri, client_secret="s")
