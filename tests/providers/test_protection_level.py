"""Protection levels (issue #13): every provider's ``describe_key`` against its in-test server
(the real vendor clients over the wire), Azure Managed HSM key URIs, ``require_protection_level``
in the file layer and the encrypt CLI, and the level in ``inspect``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from spark_kms.errors import ConfigurationError
from spark_kms.kms import provider_from_uri
from spark_kms.kms.base import PROTECTION_LEVELS
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table
from spark_kms.parquet.encryptor import BatchEncryptor, protection_levels_accepted
from spark_kms.testing.aws import AwsKmsHarness
from spark_kms.testing.azure import AzureKeyVaultHarness
from spark_kms.testing.gcp import GcpKmsHarness
from spark_kms.testing.local_harness import LocalKmsHarness
from spark_kms.testing.vault import VaultTransitHarness


def _started(h):  # type: ignore[no-untyped-def]
    h.start()
    return h


# -- describe_key, provider by provider ----------------------------------------------------------
def test_local_kms_is_software() -> None:
    h = _started(LocalKmsHarness())
    try:
        d = h.provider().describe_key()
        assert (d.protection_level, d.protection_detail) == ("software", "embedded local KMS (software keystore)")
    finally:
        h.stop()


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsKmsHarness]:
    h = _started(AwsKmsHarness())
    try:
        yield h
    finally:
        h.stop()


def test_aws_protection_from_origin_and_custom_key_store(aws: AwsKmsHarness) -> None:
    d = aws.provider().describe_key()
    # AWS KMS keys (Origin AWS_KMS) live in AWS's FIPS 140-3 validated HSMs: AWS's own wording
    assert d.protection_level == "hsm" and d.protection_detail.startswith("AWS_KMS")
    assert d.extra["origin"] == "AWS_KMS" and d.extra["custom_key_store_id"] is None
    cloudhsm = aws.create_key(origin="AWS_CLOUDHSM", custom_key_store_id="cks-1234567890abcdef0")
    d = aws.provider_for(cloudhsm).describe_key()
    assert (d.protection_level, d.protection_detail) == ("hsm", "AWS_CLOUDHSM (cks-1234567890abcdef0)")
    xks = aws.create_key(origin="EXTERNAL_KEY_STORE", custom_key_store_id="cks-0fedcba0987654321")
    d = aws.provider_for(xks).describe_key()
    assert d.protection_level == "external" and d.protection_detail.startswith("EXTERNAL_KEY_STORE")
    imported = aws.create_key(origin="EXTERNAL")
    d = aws.provider_for(imported).describe_key()
    assert d.protection_level == "hsm" and d.protection_detail.startswith("EXTERNAL (imported")


@pytest.mark.parametrize(("gcp_level", "level"), [("SOFTWARE", "software"), ("HSM", "hsm"),
                                                  ("EXTERNAL", "external"), ("EXTERNAL_VPC", "external")])
def test_gcp_protection_level_of_the_key(gcp_level: str, level: str) -> None:
    h = _started(GcpKmsHarness(protection_level=gcp_level))
    try:
        provider = h.provider()
        d = provider.describe_key()
        assert (d.protection_level, d.protection_detail) == (level, gcp_level)
        assert d.extra["protection_level"] == gcp_level
        with provider.generate_data_key({"a": "b"}) as key:  # the key still works
            assert bytes(provider.decrypt_data_key(key.wrapped, {"a": "b"})) == bytes(key.plaintext)
    finally:
        h.stop()


@pytest.mark.parametrize(("kty", "level", "detail"), [("RSA", "software", "software"), ("RSA-HSM", "hsm", "HSM")])
def test_azure_key_type_gives_the_level(kty: str, level: str, detail: str) -> None:
    h = _started(AzureKeyVaultHarness(kty=kty))
    try:
        d = h.provider().describe_key()
        assert (d.protection_level, d.protection_detail, d.extra["key_type"]) == (level, detail, kty)
    finally:
        h.stop()


def test_azure_managed_hsm_uri_end_to_end() -> None:
    """A ``*.managedhsm.azure.net`` key URI, the local server standing in for the pool (vault_url)."""
    h = _started(AzureKeyVaultHarness(vault_host="spark-kms-test.managedhsm.azure.net", kty="RSA-HSM"))
    try:
        provider = h.provider()
        assert provider.key_uri == "azure-kv://spark-kms-test.managedhsm.azure.net/keys/pii"
        assert provider.key_id == "https://spark-kms-test.managedhsm.azure.net/keys/pii"
        d = provider.describe_key()
        assert (d.protection_level, d.protection_detail) == ("hsm", "Managed HSM")
        assert d.extra["managed_hsm"] is True
        with provider.generate_data_key({"t": "1"}) as key:
            assert key.wrapped.key_id == provider.key_id
            assert bytes(provider.decrypt_data_key(key.wrapped, {"t": "1"})) == bytes(key.plaintext)
        # the SDK followed the pool's challenge: it asked for the Managed HSM scope
        assert "https://managedhsm.azure.net/.default" in provider.options["credential"].scopes_seen
        # and through the registry, as a URI string
        same = provider_from_uri(h.key_uri(), **h.options())
        assert same.describe_key().protection_detail == "Managed HSM"
    finally:
        h.stop()


def test_vault_is_software_unless_configured() -> None:
    h = _started(VaultTransitHarness())
    try:
        provider = h.provider()
        d = provider.describe_key()
        assert (d.protection_level, d.protection_detail) == ("software", "Vault Transit (software)")
        configured = type(provider)(provider.key_uri, **{**provider.options, "protection_level": "hsm",
                                                        "protection_detail": "managed key: pkcs11"})
        d = configured.describe_key()
        assert (d.protection_level, d.protection_detail) == ("hsm", "managed key: pkcs11")
        with pytest.raises(ConfigurationError, match="protection_level must be one of"):
            type(provider)(provider.key_uri, **{**provider.options, "protection_level": "fips"})
    finally:
        h.stop()


# -- which levels meet which requirement ------------------------------------------------------------
def test_levels_accepted() -> None:
    assert protection_levels_accepted(None) is None and protection_levels_accepted("") is None
    assert protection_levels_accepted("software") == frozenset(PROTECTION_LEVELS)
    assert protection_levels_accepted("hsm") == {"hsm"}
    assert protection_levels_accepted("HSM, external") == {"hsm", "external"}
    assert protection_levels_accepted(["external"]) == {"external"}
    with pytest.raises(ConfigurationError, match="require_protection_level takes software, hsm, external"):
        protection_levels_accepted("fips-140-3")


# -- the file layer ---------------------------------------------------------------------------------
TABLE = pa.table({"id": [1, 2], "email": ["a@x.org", "b@x.org"]})


def test_file_layer_refuses_a_software_key_before_any_data_key(local_kms, tmp_path: Path) -> None:
    from spark_kms.kms.base import kms_call_counts, reset_kms_call_counts

    reset_kms_call_counts()
    with pytest.raises(ConfigurationError) as info:
        EncryptedParquetWriter(tmp_path / "a.parquet", TABLE.schema, EncryptionSpec(columns=["email"]),
                               local_kms.key_uri, kms_options=local_kms.kms_options, require_protection_level="hsm")
    message = str(info.value)
    assert "local://alias/pii" in message and "'software'" in message and "require_protection_level='hsm'" in message
    assert kms_call_counts() == {"local:DescribeKey": 1}  # no GenerateDataKey
    assert not (tmp_path / "a.parquet").exists()
    with pytest.raises(ConfigurationError, match="protection level 'software'"):
        BatchEncryptor(EncryptionSpec(columns=["email"]), local_kms.key_uri, kms_options=local_kms.kms_options,
                       require_protection_level=["hsm", "external"])
    # "software" accepts it
    with EncryptedParquetWriter(tmp_path / "b.parquet", TABLE.schema, EncryptionSpec(columns=["email"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options,
                                require_protection_level="software") as w:
        w.write_batch(TABLE)
    assert read_decrypted_table(tmp_path / "b.parquet", kms_options=local_kms.kms_options).equals(TABLE)


def test_file_layer_accepts_an_hsm_key(tmp_path: Path) -> None:
    h = _started(AzureKeyVaultHarness(kty="RSA-HSM"))
    try:
        provider = h.provider()
        with EncryptedParquetWriter(tmp_path / "h.parquet", TABLE.schema, EncryptionSpec(columns=["email"]),
                                    provider, require_protection_level="hsm") as w:
            w.write_batch(TABLE)
        assert read_decrypted_table(tmp_path / "h.parquet", kms_options={"azure-kv": h.options()}).equals(TABLE)
        # ... and "external" alone refuses it
        with pytest.raises(ConfigurationError, match="protection level 'hsm' \\(HSM\\)"):
            BatchEncryptor(EncryptionSpec(columns=["email"]), provider, require_protection_level="external")
    finally:
        h.stop()


# -- the encrypt CLI and inspect ---------------------------------------------------------------------
def test_cli_encrypt_refuses_a_software_key(local_kms, tmp_path: Path) -> None:
    from spark_kms.cli import cli

    src = tmp_path / "src.parquet"
    import pyarrow.parquet as pq

    pq.write_table(TABLE, src)
    result = CliRunner().invoke(cli, ["encrypt", str(src), str(tmp_path / "out"), "--key-uri", local_kms.key_uri,
                                      "--columns", "email", "--keystore", str(local_kms.keystore_dir),
                                      "--require-protection-level", "hsm"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "protection level 'software'" in result.stderr and "local://alias/pii" in result.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_reports_the_protection_level(local_kms, tmp_path: Path) -> None:
    from spark_kms.cli import cli
    from spark_kms.jobs import inspect_dataset
    from spark_kms.report import inspection_html

    root = tmp_path / "ds"
    root.mkdir()
    with EncryptedParquetWriter(root / "part-0.parquet", TABLE.schema, EncryptionSpec(columns=["email"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as w:
        w.write_batch(TABLE)
    inspection = inspect_dataset(root, kms_options=local_kms.kms_options)
    assert [k.protection_level for k in inspection.keys] == ["software"]
    assert {d.protection_level for d in inspection.deks} == {"software"}
    data = json.loads(inspection.to_json())
    assert data["keys"][0]["protection_level"] == "software"
    assert data["deks"][0]["protection_detail"] == "embedded local KMS (software keystore)"
    assert "<th>protection</th>" in inspection_html(inspection)
    assert "software (embedded local KMS" in inspection_html(inspection)
    table = CliRunner().invoke(cli, ["inspect", str(root), "--keystore", str(local_kms.keystore_dir)],
                               catch_exceptions=False, terminal_width=250)
    assert table.exit_code == 0 and "protection" in table.output and "software" in table.output
