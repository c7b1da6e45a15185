"""The Vault Transit provider, with real hvac over HTTP to the in-test Transit server.

The cross-provider contract lives in test_contract.py; this file covers what is
Vault's own: derived keys vs the client-side context tag, server-side rewrap,
AppRole / Kubernetes login, namespaces, min_decryption_version, option checks.
"""

from __future__ import annotations

import base64
import pickle
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    KmsUnavailableError,
    ThrottlingError,
)
from spark_kms.kms import provider_from_uri
from spark_kms.kms.base import WrappedKey
from spark_kms.kms.vault import VaultTransitProvider
from spark_kms.testing.vault import VaultTransitHarness

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers", "run_id": "run-7"}


@pytest.fixture(scope="module", params=[False, True], ids=["tagged", "derived"])
def harness(request: pytest.FixtureRequest) -> Iterator[VaultTransitHarness]:
    h = VaultTransitHarness(key_name=f"pii-{request.param}", derived=request.param)
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[VaultTransitHarness]:
    h = VaultTransitHarness()
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _calls(h: VaultTransitHarness, since: int, op: str) -> int:
    return sum(1 for _, path in h.server.requests[since:] if f"/{op}/" in path)


def test_round_trip_rotation_reencrypt_and_describe(harness: VaultTransitHarness) -> None:
    kms = harness.provider()
    dek = kms.generate_data_key(CTX)
    assert dek.wrapped.key_id == f"transit/keys/{harness.key_name}"
    assert dek.wrapped.ciphertext.startswith(f"vault:v{dek.wrapped.key_version}:".encode())
    assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    harness.rotate()
    primary = kms.describe_key().primary_version
    assert int(primary) == int(dek.wrapped.key_version) + 1
    assert kms.generate_data_key(CTX).wrapped.key_version == primary
    start = len(harness.server.requests)
    rewrapped = kms.reencrypt(dek.wrapped, CTX)
    # Server-side: one rewrap, no decrypt, so the data key never came to this process.
    assert (_calls(harness, start, "rewrap"), _calls(harness, start, "decrypt")) == (1, 0)
    assert rewrapped.key_version == primary
    assert kms.decrypt_data_key(rewrapped, CTX) == dek.plaintext
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_data_key(rewrapped, {"dataset": "orders"})


def test_context_mismatch_and_tampering(harness: VaultTransitHarness) -> None:
    kms = harness.provider()
    dek = kms.generate_data_key(CTX)
    for ctx in ({"dataset": "orders", "run_id": "run-7"}, {}):
        with pytest.raises(InvalidCiphertextError) as info:
            kms.decrypt_data_key(dek.wrapped, ctx)
        assert bytes(dek.plaintext).hex() not in str(info.value)
    payload = kms.encrypt(b"a small secret", CTX)
    assert kms.decrypt(payload, CTX) == b"a small secret"
    with pytest.raises(InvalidCiphertextError):  # Vault checks the AAD / derived context itself
        kms.decrypt(payload, {"dataset": "orders"})
    for bad in (b"not-vault", dek.wrapped.ciphertext[:20], dek.wrapped.ciphertext.replace(b":v", b":x", 1)):
        with pytest.raises(InvalidCiphertextError):
            kms.decrypt_data_key(WrappedKey(bad, dek.wrapped.key_id, dek.wrapped.key_version), CTX)


def test_stripping_the_context_tag_does_not_bypass_it(plain: VaultTransitHarness) -> None:
    kms = plain.provider()
    dek = kms.generate_data_key(CTX)
    body, mark, _ = dek.wrapped.ciphertext.partition(b"|ctx-hmac-sha256:")
    assert mark, "a non-derived key's data key carries the context tag"
    stripped = WrappedKey(body, dek.wrapped.key_id, dek.wrapped.key_version)
    for ctx in (CTX, {}):
        with pytest.raises(InvalidCiphertextError):
            kms.decrypt_data_key(stripped, ctx)
    forged = WrappedKey(body + mark + base64.b64encode(bytes(32)), dek.wrapped.key_id, dek.wrapped.key_version)
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_data_key(forged, CTX)


def test_reencrypt_with_another_context_falls_back_client_side(plain: VaultTransitHarness) -> None:
    kms = plain.provider()
    dek = kms.generate_data_key(CTX)
    start = len(plain.server.requests)
    moved = kms.reencrypt(dek.wrapped, CTX, destination_context={"dataset": "archive"})
    assert _calls(plain, start, "rewrap") == 0 and _calls(plain, start, "decrypt") == 1
    assert kms.decrypt(moved, {"dataset": "archive"}) == bytes(dek.plaintext)
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt(moved, CTX)


def test_errors_map_to_spark_kms_types(plain: VaultTransitHarness) -> None:
    with pytest.raises(KeyNotFoundError) as info:
        plain.provider_for_missing_key().generate_data_key(CTX)
    assert info.value.key_id == "transit/keys/no-such-key"
    with pytest.raises(KeyNotFoundError):
        plain.provider_for_missing_key().describe_key()
    with pytest.raises(KeyNotFoundError):  # an app token may not upsert a key through encrypt
        plain.provider_for_missing_key().encrypt(b"x", CTX)
    denied = plain.provider_denied()
    with pytest.raises(AccessDeniedError) as denied_info:
        denied.generate_data_key(CTX)
    assert denied.options["token"] not in str(denied_info.value)
    unknown = VaultTransitProvider(plain.key_uri(), tls=False, token="hvs.never-issued")
    with pytest.raises(AccessDeniedError):
        unknown.describe_key()


def test_min_decryption_version_is_a_key_state_error(plain: VaultTransitHarness) -> None:
    kms = plain.provider()
    old = kms.generate_data_key(CTX)
    plain.rotate()
    plain.server.set_min_decryption_version(plain.key_name, int(old.wrapped.key_version) + 1)
    try:
        with pytest.raises(KeyStateError):
            kms.decrypt_data_key(old.wrapped, CTX)
        assert kms.describe_key().versions[old.wrapped.key_version] == "disabled"
    finally:
        plain.server.set_min_decryption_version(plain.key_name, 1)


def test_derived_key_without_derived_option_says_so(plain: VaultTransitHarness) -> None:
    plain.server.create_key("derived-only", derived=True)
    kms = VaultTransitProvider(plain.key_uri("derived-only"), **{**plain._options(plain._app_token),
                                                                "derived": False})
    with pytest.raises(ConfigurationError, match="derived=True"):
        kms.generate_data_key(CTX)


def test_throttling_is_retried_then_bounded(plain: VaultTransitHarness) -> None:
    kms = plain.provider()
    plain.throttle(2, 3)
    try:
        dek = kms.generate_data_key(CTX)
    finally:
        plain.throttle(0, 1)
    assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    plain.throttle(1, 1)
    start = time.monotonic()
    try:
        with pytest.raises(ThrottlingError) as info:
            kms.generate_data_key(CTX)
    finally:
        plain.throttle(0, 1)
    assert time.monotonic() - start < 10
    assert info.value.key_id == kms.key_id


def test_approle_and_kubernetes_login(plain: VaultTransitHarness, tmp_path: Path) -> None:
    role_id, secret_id = plain.server.add_approle("app")
    base = {"tls": False, "auth_method": "approle", "role_id": role_id}
    kms = VaultTransitProvider(plain.key_uri(), **base, secret_id=secret_id)
    dek = kms.generate_data_key(CTX)
    assert secret_id not in repr(kms)
    with pytest.raises(AccessDeniedError):
        VaultTransitProvider(plain.key_uri(), **base, secret_id="wrong").generate_data_key(CTX)
    jwt_file = tmp_path / "token"
    jwt_file.write_text("header.payload.signature\n")
    plain.server.add_kubernetes_role("spark", "header.payload.signature")
    k8s = VaultTransitProvider(plain.key_uri(), tls=False, auth_method="kubernetes", role="spark",
                               jwt_path=str(jwt_file))
    assert k8s.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    with pytest.raises(ConfigurationError, match="service-account token"):
        VaultTransitProvider(plain.key_uri(), tls=False, auth_method="kubernetes", role="spark",
                             jwt_path=str(tmp_path / "missing")).describe_key()


def test_namespaces_separate_keys(plain: VaultTransitHarness) -> None:
    plain.server.create_key("pii", namespace="team-a")
    token = plain.server.add_token("app", namespace="team-a")
    kms = VaultTransitProvider(plain.key_uri(), tls=False, token=token, namespace="team-a")
    dek = kms.generate_data_key(CTX)
    assert dek.wrapped.key_id == "team-a/transit/keys/pii"
    assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    with pytest.raises(InvalidCiphertextError):  # same name, other namespace: another key
        plain.provider().decrypt_data_key(dek.wrapped, CTX)


def test_registry_options_pickling_and_repr(plain: VaultTransitHarness) -> None:
    options = plain._options(plain._app_token)
    kms = provider_from_uri(plain.key_uri(), **options)
    assert isinstance(kms, VaultTransitProvider)
    kms.describe_key()
    clone = pickle.loads(pickle.dumps(kms))
    assert clone._client is None and clone == kms
    assert clone.generate_data_key(CTX).wrapped.key_id == kms.key_id
    assert options["token"] not in repr(kms)
    assert kms == VaultTransitProvider(plain.key_uri(), **{**options, "token": "another"})  # secrets not compared


@pytest.mark.parametrize("uri", ["vault://127.0.0.1/transit/keys/pii", "vault://h:8200/keys/pii",
                                 "vault://h:8200/transit/pii", "vault://h:8200/transit/keys/"])
def test_bad_uris_state_the_rule(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="vault://<host>:<port>/<mount>/keys/<name>"):
        VaultTransitProvider(uri, token="t")


def test_bad_options_state_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "vault://127.0.0.1:8200/team/transit/keys/pii"
    assert VaultTransitProvider(uri, token="t").mount == "team/transit"
    with pytest.raises(ConfigurationError, match="unknown Vault option"):
        VaultTransitProvider(uri, tokn="t")
    with pytest.raises(ConfigurationError, match="auth_method"):
        VaultTransitProvider(uri, auth_method="ldap")
    with pytest.raises(ConfigurationError, match="role_id"):
        VaultTransitProvider(uri, auth_method="approle")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="VAULT_TOKEN"):
        VaultTransitProvider(uri, tls=False).describe_key()


def test_unreachable_vault_is_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kms = VaultTransitProvider(f"vault://127.0.0.1:{port}/transit/keys/pii", tls=False, token="t", timeout=2)
    with pytest.raises(KmsUnavailableError):
        kms.generate_data_key(CTX)
