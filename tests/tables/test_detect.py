"""Recognising tables, addressing them, the plain-directory guard, the option mapping and the missing extras."""

from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms import tables
from spark_kms.errors import ConfigurationError, MissingExtraError
from spark_kms.storage import resolve
from spark_kms.tables.options import delta_storage_options, iceberg_io_properties, masked


@pytest.fixture
def delta_root(tmp_path, source, local_kms):
    root = tmp_path / "people"
    tables.encrypt_into_table(source, root, format="delta", columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=local_kms.kms_options, partition_by=["day"])
    return root


def test_detect_delta_iceberg_and_plain(tmp_path, delta_root, source, local_kms, iceberg_catalog):
    assert tables.detect_table(delta_root) == "delta"
    assert tables.detect_table(delta_root / "day=2024-01-01") == "delta"  # a partition directory inside it
    one_file = next((delta_root / "day=2024-01-01").glob("*.parquet"))
    assert tables.detect_table(one_file) == "delta"
    assert tables.find_table(one_file)[1].path == str(delta_root)
    plain = tmp_path / "plain"
    plain.mkdir()
    pq.write_table(pa.table({"a": [1]}), plain / "part-0.parquet")
    assert tables.detect_table(plain) is None
    assert tables.detect_table(tmp_path / "absent") is None

    tables.encrypt_into_table(source, "iceberg://test/crm.people", columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=local_kms.kms_options, catalog_properties=iceberg_catalog)
    assert tables.detect_table("iceberg://test/crm.people") == "iceberg"
    ice_dir = tmp_path / "iceberg" / "warehouse" / "crm" / "people"
    assert tables.detect_table(ice_dir) == "iceberg"
    assert tables.detect_table(next(ice_dir.rglob("*.parquet"))) == "iceberg"
    # by directory: read-only, found through its newest metadata file
    ref = tables.resolve_table(ice_dir)
    assert ref.format == "iceberg" and not ref.writable and ref.metadata_location.endswith(".metadata.json")
    assert tables.read_table_decrypted(ice_dir, kms_options=local_kms.kms_options).num_rows == source.num_rows
    with pytest.raises(ConfigurationError, match="addressed by its directory"):
        tables.rewrap_table(ice_dir, kms_options=local_kms.kms_options)


@pytest.mark.parametrize("job", ["inspect", "rewrap", "reencrypt", "decrypt", "gc"])
def test_refuse_table_for_plain_directory_jobs(tmp_path, delta_root, job):
    with pytest.raises(ConfigurationError) as err:
        tables.refuse_table(delta_root, job)
    text = str(err.value)
    assert "is a Delta table" in text and "_delta_log" in text and "spark_kms.tables." in text and job in text
    with pytest.raises(ConfigurationError, match=r"inside .*people"):
        tables.refuse_table(delta_root / "day=2024-01-02", job)
    with pytest.raises(ConfigurationError, match="is an Iceberg table"):
        tables.refuse_table("iceberg://prod/crm.people", job)
    plain = tmp_path / "plain"
    plain.mkdir()
    tables.refuse_table(plain, job)  # a plain dataset passes
    tables.refuse_table(tmp_path / "absent", job)


def test_addressing_errors(tmp_path, iceberg_catalog):
    with pytest.raises(ConfigurationError, match="iceberg://<catalog>/<namespace>.<table>"):
        tables.resolve_table("iceberg://only-a-catalog")
    with pytest.raises(ConfigurationError, match="not a Delta table"):
        tables.resolve_table(tmp_path)
    with pytest.raises(ConfigurationError, match="created through a catalog"):
        tables.resolve_table(tmp_path / "new", format="iceberg", must_exist=False)
    ref = tables.resolve_table(tmp_path / "new", format="delta", must_exist=False)
    assert ref.format == "delta" and ref.writable
    with pytest.raises(ConfigurationError, match="does not exist in catalog"):
        tables.read_table_decrypted("iceberg://test/crm.absent", catalog_properties=iceberg_catalog)


def test_time_travel_by_timestamp_and_bad_versions(tmp_path, source, local_kms):
    import datetime as dt
    import time

    root = tmp_path / "t"
    kms = local_kms.kms_options
    tables.encrypt_into_table(source.slice(0, 3), root, format="delta", columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=kms)
    time.sleep(0.05)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    tables.encrypt_into_table(source.slice(3), root, columns=["ssn"], key_uri=local_kms.key_uri, kms_options=kms)
    assert tables.read_table_decrypted(root, kms_options=kms).num_rows == source.num_rows
    assert tables.read_table_decrypted(root, version=0, kms_options=kms).num_rows == 3
    assert tables.read_table_decrypted(root, version=between, kms_options=kms).num_rows == 3
    assert tables.read_table_decrypted(root, version=between.isoformat(), kms_options=kms).num_rows == 3
    with pytest.raises(ConfigurationError, match="version 7"):
        tables.snapshot_files(root, 7)


def test_storage_option_mapping():
    loc = resolve("s3://bucket/tables/people", {
        "s3.endpoint_override": "http://127.0.0.1:9000", "s3.access_key": "AK", "s3.secret_key": "SK",
        "s3.region": "eu-west-1",
    })
    delta = delta_storage_options(loc, {"aws_conditional_put": "etag"})
    assert delta == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "eu-west-1",
                     "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "aws_conditional_put": "etag"}
    assert masked(delta)["AWS_SECRET_ACCESS_KEY"] == "***"
    ice = iceberg_io_properties(loc)
    assert ice == {"s3.endpoint": "http://127.0.0.1:9000", "s3.region": "eu-west-1", "s3.access-key-id": "AK",
                   "s3.secret-access-key": "SK"}
    assert delta_storage_options(resolve("/tmp/x")) == {}
    azure = resolve("abfss://c@acct.dfs.core.windows.net/t", {"azure.account_key": "K"})
    assert delta_storage_options(azure) == {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "K"}
    assert iceberg_io_properties(azure) == {"adls.account-name": "acct", "adls.account-key": "K"}
    with pytest.raises(ConfigurationError, match="role"):
        delta_storage_options(resolve("s3://b/t", {"s3.role_arn": "arn:aws:iam::1:role/r"}))


def test_missing_extras_name_the_extra(monkeypatch):
    from spark_kms.tables._deps import require_deltalake, require_pyiceberg

    monkeypatch.setitem(sys.modules, "deltalake", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'spark-kms\[delta\]'") as err:
        require_deltalake()
    assert isinstance(err.value, ImportError)
    monkeypatch.setitem(sys.modules, "pyiceberg", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'spark-kms\[iceberg\]'"):
        require_pyiceberg()


def test_keys_column_is_the_column_encryptor_convention():
    from spark_kms.spark._options import KEYS_COLUMN

    assert tables.KEYS_COLUMN == KEYS_COLUMN
