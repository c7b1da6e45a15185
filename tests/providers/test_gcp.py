"""Google Cloud KMS provider specifics: resource-name URIs, CRC32C integrity
checks (the server is made to lie), AAD binding, version states, bounded retries.
The real google-cloud-kms client talks gRPC to the in-process test server."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import pytest
from google.api_core import exceptions as gexc
from hypothesis import given, settings
from hypothesis import strategies as st

import spark_kms.kms.gcp as gcp_module
from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyStateError,
    KmsError,
    ThrottlingError,
)
from spark_kms.kms import provider_from_uri
from spark_kms.kms.base import WrappedKey
from spark_kms.kms.gcp import GcpKmsProvider, canonical_aad, crc32c, parse_gcp_key_uri
from spark_kms.testing.gcp import GcpKmsHarness

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers", "column_set": "email,phone"}
KEY = "projects/p1/locations/europe-west1/keyRings/ring/cryptoKeys/pii"


@pytest.fixture(scope="module")
def gcp() -> Iterator[GcpKmsHarness]:
    with GcpKmsHarness(key_ring="gcp-tests") as h:
        yield h  # type: ignore[misc]


# -- pure parts ---------------------------------------------------------------------------------
def test_key_uri_is_the_crypto_key_resource_name() -> None:
    assert parse_gcp_key_uri(f"gcp-kms://{KEY}") == KEY
    provider = provider_from_uri(f"gcp-kms://{KEY}")
    assert isinstance(provider, GcpKmsProvider) and provider.key_name == KEY


@pytest.mark.parametrize(
    "uri",
    [
        f"gcp-kms://{KEY}/cryptoKeyVersions/3",
        "gcp-kms://projects/p1/locations/global/keyRings/ring",
        "gcp-kms://pii",
        "gcp-kms://projects//locations/global/keyRings/r/cryptoKeys/k",
    ],
)
def test_bad_key_uris_state_the_rule(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="CryptoKey|cryptoKeys"):
        GcpKmsProvider(uri)


@pytest.mark.parametrize("endpoint", ["kms.example.internal:443", "10.0.0.5:9000", "127.0.0.1"])
def test_insecure_endpoint_only_on_loopback(endpoint: str) -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        GcpKmsProvider(f"gcp-kms://{KEY}", endpoint=endpoint)


@pytest.mark.parametrize("retry", [-1, {"deadline": 0}, {"bogus": 1}, "soon"])
def test_bad_retry_option(retry: object) -> None:
    with pytest.raises(ConfigurationError, match="retry"):
        GcpKmsProvider(f"gcp-kms://{KEY}", retry=retry)


def test_crc32c_known_answer_and_fallback_table(monkeypatch: pytest.MonkeyPatch) -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    monkeypatch.setattr(gcp_module, "_google_crc32c", None)
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_fallback_table_matches_google_crc32c(data: bytes) -> None:
    saved = gcp_module._google_crc32c
    gcp_module._google_crc32c = None
    try:
        assert crc32c(data) == google_crc32c.value(data)
    finally:
        gcp_module._google_crc32c = saved


def test_aad_is_canonical_json() -> None:
    assert canonical_aad({"b": "2", "a": "é"}) == '{"a":"é","b":"2"}'.encode()
    assert canonical_aad({}) == b""


def test_token_stays_out_of_repr_and_pickles_carry_no_client(gcp: GcpKmsHarness) -> None:
    provider = gcp.provider()
    provider.generate_data_key(CTX)
    assert provider._client is not None
    assert gcp.provider().options["access_token"] not in repr(provider)
    clone = pickle.loads(pickle.dumps(provider))
    assert clone._client is None and clone == provider


# -- over the wire ---------------------------------------------------------------------------------
def test_version_comes_from_the_encrypt_response_name(gcp: GcpKmsHarness) -> None:
    provider = gcp.provider()
    first = provider.generate_data_key(CTX).wrapped
    gcp.rotate()
    second = provider.generate_data_key(CTX).wrapped
    assert int(second.key_version) == int(first.key_version) + 1
    assert first.key_id == second.key_id == gcp.key_name
    desc = provider.describe_key()
    assert desc.primary_version == second.key_version
    assert {first.key_version, second.key_version} <= set(desc.versions)


@pytest.mark.parametrize("fault", ["encrypt_ciphertext_crc", "encrypt_unverified"])
def test_corrupted_encrypt_responses_are_rejected(gcp: GcpKmsHarness, fault: str) -> None:
    gcp.corrupt(fault)
    try:
        with pytest.raises(KmsError, match="CRC32C|checksums") as info:
            gcp.provider().generate_data_key(CTX)
        assert type(info.value) is KmsError
    finally:
        gcp.corrupt()


def test_corrupted_decrypt_response_is_rejected(gcp: GcpKmsHarness) -> None:
    provider = gcp.provider()
    wrapped = provider.generate_data_key(CTX).wrapped
    gcp.corrupt("decrypt_plaintext_crc")
    try:
        with pytest.raises(KmsError, match="CRC32C"):
            provider.decrypt_data_key(wrapped, CTX)
    finally:
        gcp.corrupt()
    assert len(provider.decrypt_data_key(wrapped, CTX)) == 32


def test_server_checks_request_checksums(gcp: GcpKmsHarness) -> None:
    provider = gcp.provider()
    with pytest.raises(gexc.InvalidArgument, match="plaintext_crc32c"):
        provider.client.encrypt(
            request={"name": gcp.key_name, "plaintext": b"abc", "plaintext_crc32c": crc32c(b"abd")},
            metadata=[("authorization", "Bearer x")], retry=None,
        )


def test_ciphertext_is_bound_to_the_key(gcp: GcpKmsHarness) -> None:
    provider = gcp.provider()
    wrapped = provider.generate_data_key(CTX).wrapped
    other_key = f"{gcp.key_ring}/cryptoKeys/other"
    gcp._admin_client().create_crypto_key(
        request={"parent": gcp.key_ring, "crypto_key_id": "other", "crypto_key": {"purpose": 1}},
        metadata=gcp._admin_metadata(), retry=None,
    )
    moved = WrappedKey(wrapped.ciphertext, other_key, wrapped.key_version)
    with pytest.raises(InvalidCiphertextError):
        provider.decrypt_data_key(moved, CTX)


@pytest.mark.parametrize("state", ["disabled", "destroyed"])
def test_unusable_versions_raise_key_state_error(state: str) -> None:
    with GcpKmsHarness(key_ring=f"states-{state}") as h:
        provider = h.provider()
        old = provider.generate_data_key(CTX)
        h.rotate()
        h.set_version_state(old.wrapped.key_version, state)
        with pytest.raises(KeyStateError) as info:
            provider.decrypt_data_key(old.wrapped, CTX)
        assert info.value.operation == "Decrypt"
        assert provider.describe_key().versions[old.wrapped.key_version] in {"disabled", "pending_deletion"}
        fresh = provider.generate_data_key(CTX)  # the primary still works
        assert provider.decrypt_data_key(fresh.wrapped, CTX) == fresh.plaintext


def test_throttling_retries_are_bounded_by_the_deadline(gcp: GcpKmsHarness) -> None:
    provider = GcpKmsProvider(gcp.provider().key_uri, **{**gcp.provider().options,
                                                          "retry": {"initial": 0.05, "deadline": 0.5}})
    provider.describe_key()
    gcp.throttle(1, 1)
    try:
        with pytest.raises(ThrottlingError):
            provider.generate_data_key(CTX)
        assert 2 <= gcp.throttled_requests() <= 12
    finally:
        gcp.throttle(0, 1)


def test_retry_off_fails_on_the_first_throttle(gcp: GcpKmsHarness) -> None:
    provider = GcpKmsProvider(gcp.provider().key_uri, **{**gcp.provider().options, "retry": 0})
    gcp.throttle(1, 1)
    try:
        with pytest.raises(ThrottlingError, match="retries are off"):
            provider.generate_data_key(CTX)
        assert gcp.throttled_requests() == 1
    finally:
        gcp.throttle(0, 1)


def test_missing_credentials_are_access_denied_not_a_google_auth_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Application Default Credentials are looked up lazily, inside the first call; a file that
    # is not there fails before any network traffic and must surface as a spark_kms error.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    provider = GcpKmsProvider(f"gcp-kms://{KEY}", retry=0)
    with pytest.raises(AccessDeniedError, match="credentials") as info:
        provider.generate_data_key(CTX)
    assert info.value.operation == "GenerateDataKey" and info.value.key_id == KEY
