"""AWS KMS provider specifics: URI forms, ARN parsing, key material ids as key
versions, server-side ReEncrypt, key states, STS role assumption, unreachable
endpoints. boto3 talks HTTP to moto through the fault-injecting proxy."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from spark_kms.errors import (
    ConfigurationError,
    KeyStateError,
    KmsUnavailableError,
    ThrottlingError,
)
from spark_kms.kms import provider_from_uri
from spark_kms.kms.aws import AwsKmsProvider, parse_aws_key_uri
from spark_kms.testing.aws import ALLOWED_ACCESS_KEY, AwsKmsHarness

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers"}
KEY_UUID = "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsKmsHarness]:
    with AwsKmsHarness() as h:
        yield h  # type: ignore[misc]


# -- URIs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "key_ref", "region"),
    [
        (f"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/{KEY_UUID}",
         f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_UUID}", "eu-west-1"),
        ("aws-kms://arn:aws-cn:kms:cn-north-1:111122223333:alias/pii",
         "arn:aws-cn:kms:cn-north-1:111122223333:alias/pii", "cn-north-1"),
        ("aws-kms://alias/pii/customers", "alias/pii/customers", None),
        (f"aws-kms://{KEY_UUID}", KEY_UUID, None),
        ("aws-kms://mrk-1234abcd12ab34cd56ef1234567890ab", "mrk-1234abcd12ab34cd56ef1234567890ab", None),
    ],
)
def test_key_uri_forms(uri: str, key_ref: str, region: str | None) -> None:
    assert parse_aws_key_uri(uri) == (key_ref, region)
    provider = provider_from_uri(uri, region="eu-west-1") if region is None else provider_from_uri(uri)
    assert isinstance(provider, AwsKmsProvider)
    assert provider.region == (region or "eu-west-1")


@pytest.mark.parametrize(
    "uri",
    [
        "aws-kms://arn:aws:kms:eu-west-1:1111:key/abc",  # account is 12 digits
        "aws-kms://arn:aws:s3:::bucket",
        "aws-kms://alias/aws/ebs",  # AWS managed
        "aws-kms://alias/",
        "aws-kms://not a key",
        "aws-kms://",
    ],
)
def test_bad_key_uris_state_the_rule(uri: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        AwsKmsProvider(uri, region="us-east-1")
    assert "aws-kms://" in str(info.value) or "arn:aws:kms" in str(info.value) or "alias/" in str(info.value)


def test_region_option_must_agree_with_the_arn() -> None:
    with pytest.raises(ConfigurationError, match="region"):
        AwsKmsProvider(f"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/{KEY_UUID}", region="us-east-1")


def test_secrets_stay_out_of_repr_equality_and_pickles_carry_no_client(aws: AwsKmsHarness) -> None:
    provider = aws.provider()
    provider.generate_data_key(CTX)
    assert provider._client is not None
    assert "test-secret" not in repr(provider)
    clone = pickle.loads(pickle.dumps(provider))
    assert clone._client is None and clone == provider
    rotated_secret = AwsKmsProvider(provider.key_uri, **{**provider.options, "aws_secret_access_key": "other"})
    assert rotated_secret == provider  # secrets do not take part in equality


# -- over the wire --------------------------------------------------------------------------
def test_alias_and_key_id_uris_resolve_to_the_key_arn(aws: AwsKmsHarness) -> None:
    by_arn = aws.provider()
    for ref in (aws.alias, aws.key_id):
        provider = aws.provider_for(ref)
        dek = provider.generate_data_key(CTX)
        assert dek.wrapped.key_id == aws.key_arn  # the canonical ARN is what gets recorded
        assert by_arn.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext


def test_key_version_is_the_key_material_id(aws: AwsKmsHarness) -> None:
    provider = aws.provider()
    dek = provider.generate_data_key(CTX)
    assert len(dek.wrapped.key_version) == 64 and int(dek.wrapped.key_version, 16) >= 0
    assert aws.blob_key_material(dek.wrapped.ciphertext) == dek.wrapped.key_version
    payload = provider.encrypt(b"x", CTX)  # Encrypt returns no KeyMaterialId: read via DescribeKey
    assert payload.key_version == dek.wrapped.key_version
    aws.rotate()
    desc = provider.describe_key()
    assert desc.primary_version != dek.wrapped.key_version
    assert set(desc.versions) >= {dek.wrapped.key_version, desc.primary_version}
    assert desc.extra["rotations"] >= 1


def test_without_key_material_ids_the_rotation_count_is_the_version(aws: AwsKmsHarness) -> None:
    # moto straight, no proxy: responses carry no KeyMaterialId at all.
    provider = aws.provider_for(aws.key_arn, endpoint_url=aws.moto_url)
    before = provider.generate_data_key(CTX).wrapped.key_version
    assert before.startswith("rotations:")
    aws.rotate()
    after = provider.generate_data_key(CTX).wrapped.key_version
    assert int(after.split(":")[1]) == int(before.split(":")[1]) + 1


def test_reencrypt_is_server_side(aws: AwsKmsHarness) -> None:
    assert aws.proxy is not None
    provider = aws.provider()
    dek = provider.generate_data_key(CTX)
    aws.rotate()
    ops = aws.proxy.state.requests_by_operation
    decrypts, reencrypts = ops["Decrypt"], ops["ReEncrypt"]
    rewrapped = provider.reencrypt(dek.wrapped, CTX, destination_context={"dataset": "customers", "v": "2"})
    assert (ops["Decrypt"], ops["ReEncrypt"]) == (decrypts, reencrypts + 1)  # no plaintext left AWS
    assert rewrapped.key_version == provider.describe_key().primary_version
    assert provider.decrypt_data_key(rewrapped, {"dataset": "customers", "v": "2"}) == dek.plaintext


@pytest.mark.parametrize("state", ["disabled", "pending_deletion"])
def test_unusable_key_states_raise_key_state_error(aws: AwsKmsHarness, state: str) -> None:
    provider = aws.provider()
    wrapped = provider.generate_data_key(CTX).wrapped
    aws.set_key_state(state)
    try:
        with pytest.raises(KeyStateError) as info:
            provider.decrypt_data_key(wrapped, CTX)
        assert info.value.key_id == aws.key_arn and info.value.operation == "Decrypt"
        with pytest.raises(KeyStateError):
            provider.generate_data_key(CTX)
    finally:
        aws.set_key_state("enabled")
    assert len(provider.decrypt_data_key(wrapped, CTX)) == 32


def test_throttling_makes_exactly_max_attempts_requests(aws: AwsKmsHarness) -> None:
    provider = aws.provider_for(aws.key_arn, max_attempts=2)
    provider.describe_key()
    aws.throttle(1, 1)
    try:
        with pytest.raises(ThrottlingError, match="2 attempts"):
            provider.generate_data_key(CTX)
        assert aws.throttled_requests() == 2
    finally:
        aws.throttle(0, 1)


def test_assume_role_through_sts(aws: AwsKmsHarness) -> None:
    assert aws.proxy is not None
    provider = aws.provider_for(
        aws.key_arn, role_arn="arn:aws:iam::123456789012:role/spark-kms-writer", sts_endpoint_url=aws.proxy.url
    )
    seen_before = set(aws.proxy.state.access_keys_seen)
    dek = provider.generate_data_key(CTX)
    assert aws.provider().decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    new_keys = set(aws.proxy.state.access_keys_seen) - seen_before
    # KMS calls were signed with the temporary credentials STS issued, not the source ones
    assert new_keys and ALLOWED_ACCESS_KEY not in new_keys
    assert all(k.startswith("ASIA") for k in new_keys)


def test_unreachable_endpoint_is_kms_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    provider = AwsKmsProvider(
        f"aws-kms://arn:aws:kms:us-east-1:123456789012:key/{KEY_UUID}",
        endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="AKIAX", aws_secret_access_key="x",
        max_attempts=1, connect_timeout=2,
    )
    with pytest.raises(KmsUnavailableError) as info:
        provider.generate_data_key(CTX)
    assert info.value.operation == "GenerateDataKey"


def test_a_missing_profile_is_a_configuration_error_not_a_botocore_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client is built lazily inside the first call; what fails there must still come out as
    # a spark_kms error that says what to fix.
    config = tmp_path / "aws_config"
    config.write_text("[profile other]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no_credentials"))
    provider = AwsKmsProvider(
        f"aws-kms://arn:aws:kms:us-east-1:123456789012:key/{KEY_UUID}",
        profile="no-such-profile", endpoint_url="http://127.0.0.1:9",
    )
    with pytest.raises(ConfigurationError, match="profile"):
        provider.generate_data_key(CTX)
