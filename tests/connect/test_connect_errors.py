"""Errors over Spark Connect reach the client as the spark_kms error itself, with its message: raised in a
Spark task (a decrypt UDF), in the server's driver (the data source's writer) or in a job that runs near
the data. And the client really is cut off: from the data, and from the KMS keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from spark_kms.errors import AccessDeniedError, ConfigurationError, JobError, KeyStateError
from spark_kms.jobs import decrypt_dataset, inspect_dataset, reencrypt_dataset
from spark_kms.kms import KmsConfig
from spark_kms.spark import errors_translated, read_encrypted, write_encrypted
from spark_kms.spark.remote import run_near_data

from ._support import CLIENT_PRINCIPAL, Kms, assert_client_sees_nothing, source_df


@pytest.fixture(scope="module")
def disabled(spark: Any, kms: Kms, dirs: Any) -> tuple[str, Path]:
    """A dataset whose key was disabled after the write: ``(key URI, path)``."""
    key_uri = kms.new_key("disabled")
    path = dirs.data / "disabled"
    write_encrypted(source_df(spark), str(path), key_uri=key_uri, columns=["ssn"], kms_options=kms.kms_options)
    kms.admin.disable_key(key_uri[len("local://"):])
    return key_uri, path


def test_a_disabled_key_fails_a_read_as_key_state_error(spark: Any, kms: Kms, disabled: tuple[str, Path]) -> None:
    _, path = disabled
    df = read_encrypted(spark, str(path), kms_options=kms.kms_options)  # footers only: no KMS call yet
    with pytest.raises(KeyStateError, match="Disabled"):
        with errors_translated():
            df.collect()
    # The plain columns need no key.
    assert df.select("id").count() == 60


def test_a_disabled_key_fails_a_write_and_leaves_nothing(spark: Any, kms: Kms, disabled: tuple[str, Path],
                                                          data_dir: Path) -> None:
    key_uri, _ = disabled
    with pytest.raises(KeyStateError, match="Disabled"):
        write_encrypted(source_df(spark), str(data_dir), key_uri=key_uri, columns=["ssn"],
                        kms_options=kms.kms_options)
    assert run_near_data(spark, os.path.exists, str(data_dir / "_spark_kms_staging")) is False


def test_a_disabled_key_fails_the_jobs(spark: Any, kms: Kms, disabled: tuple[str, Path], data_dir: Path) -> None:
    _, path = disabled
    with pytest.raises(KeyStateError, match="Disabled"):
        reencrypt_dataset(path, kms_options=kms.kms_options, spark=spark, force=True)  # in a server-side task
    with pytest.raises(KeyStateError, match="Disabled"):
        decrypt_dataset(path, data_dir, kms_options=kms.kms_options, spark=spark)
    assert run_near_data(spark, os.path.exists, str(data_dir)) is False  # the destination was never made
    records = inspect_dataset(path, kms_options=kms.kms_options, spark=spark).runs
    assert {(r["job"], r["status"]) for r in records} >= {("decrypt", "failed"), ("reencrypt", "failed")}


def test_a_missing_dataset_is_named_by_the_server_side(spark: Any, kms: Kms, dirs: Any) -> None:
    missing = dirs.data / "nothing-here"
    with pytest.raises(ConfigurationError, match=r"inspect: dataset .*nothing-here.* does not exist"):
        inspect_dataset(missing, kms_options=kms.kms_options, spark=spark)
    with pytest.raises(Exception, match=r"PATH_NOT_FOUND"):  # Spark's own analysis error, on the server side
        read_encrypted(spark, str(missing), kms_options=kms.kms_options)


def test_other_errors_near_the_data_become_job_errors(spark: Any) -> None:
    with pytest.raises(JobError, match=r"posix\.listdir failed on the Spark Connect server side: "
                                       r"builtins\.FileNotFoundError: .*No such file or directory"):
        run_near_data(spark, os.listdir, "/nonexistent/spark_kms")


def test_the_client_sees_neither_the_data_nor_a_usable_key(spark: Any, kms: Kms, dirs: Any) -> None:
    key_uri = kms.new_key("client")
    write_encrypted(source_df(spark), str(dirs.data / "client"), key_uri=key_uri, columns=["ssn"],
                    kms_options=kms.kms_options)
    assert_client_sees_nothing(dirs.data)
    # The same KMS call from this process is refused: the key's policy knows the server side only.
    with pytest.raises(AccessDeniedError, match=CLIENT_PRINCIPAL):
        KmsConfig.of(kms.kms_options).provider(key_uri).describe_key()
    events = kms.admin.audit_events(key_uri[len("local://"):])
    assert [(e["principal"], e["operation"], e["outcome"]) for e in events if e["principal"] == CLIENT_PRINCIPAL] \
        == [(CLIENT_PRINCIPAL, "DescribeKey", "AccessDeniedError")]
