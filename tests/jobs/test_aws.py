"""Rewrap, re-encrypt and inspect against AWS KMS: the real boto3 client over HTTP to moto's server
(behind the fault proxy of spark_kms.testing.aws, which tracks key material across rotations)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spark_kms.jobs import inspect_dataset, needs_rotation, reencrypt_dataset, rewrap_dataset
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.parquet import read_dataset_key_table

pytestmark = pytest.mark.providers


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    from spark_kms.testing.aws import AwsKmsHarness

    with AwsKmsHarness() as harness:
        yield harness


@pytest.fixture
def aws_dataset(aws, build, tmp_path):
    options = {"aws-kms": aws.provider_options()}
    ds = build(tmp_path / "customers", aws.provider().key_uri, options)
    reset_kms_call_counts()
    return ds


def test_rewrap_on_aws_uses_reencrypt_once_per_dek_and_keeps_cells(aws, aws_dataset):
    ds = aws_dataset
    aws.rotate()
    assert needs_rotation(ds.root, kms_options=ds.kms_options) is True
    cells = ds.cell_bytes()
    before = read_dataset_key_table(ds.root).deks
    reset_kms_call_counts()

    summary = rewrap_dataset(ds.root, kms_options=ds.kms_options)

    assert summary.kms_calls.get("aws-kms:ReEncrypt") == len(before) == 5
    assert ds.cell_bytes() == cells
    after = read_dataset_key_table(ds.root).deks
    assert all(after[d].key_version != before[d].key_version for d in before)
    assert all(after[d].wrapped_dek != before[d].wrapped_dek for d in before)
    assert ds.decrypted().equals(ds.expected)
    assert needs_rotation(ds.root, kms_options=ds.kms_options) is False
    reset_kms_call_counts()
    rewrap_dataset(ds.root, kms_options=ds.kms_options)
    assert "aws-kms:ReEncrypt" not in kms_call_counts()


def test_reencrypt_on_aws_makes_new_deks_and_reads_equal(aws, aws_dataset):
    ds = aws_dataset
    aws.rotate()
    before = set(read_dataset_key_table(ds.root).deks)
    summary = reencrypt_dataset(ds.root, kms_options=ds.kms_options)
    assert summary.files == 4 and summary.kms_calls["aws-kms:GenerateDataKey"] == 5
    assert not set(read_dataset_key_table(ds.root).deks) & before
    assert ds.decrypted().equals(ds.expected)
    insp = inspect_dataset(ds.root, kms_options=ds.kms_options)
    assert insp.behind_files == [] and insp.keys[0].key_id == aws.key_arn
    reset_kms_call_counts()
    assert reencrypt_dataset(ds.root, kms_options=ds.kms_options).files == 0
    assert set(kms_call_counts()) == {"aws-kms:DescribeKey"}
