"""``spark-kms encrypt|decrypt|rewrap|reencrypt|inspect``: click's CliRunner, one real subprocess, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.kms import provider_from_uri
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import (
    EncryptedParquetWriter,
    EncryptionSpec,
    read_dataset_key_table,
    read_decrypted_table,
)

SPARK_KMS = str(Path(sys.executable).parent / "spark-kms")


@pytest.fixture
def ds(tmp_path, local_kms) -> Path:
    provider = provider_from_uri(local_kms.key_uri, **local_kms.kms_options["local"])
    root = tmp_path / "ds"
    for i in range(2):
        (root / f"day={i}").mkdir(parents=True)
        t = pa.table({"id": [i, i + 10], "email": [f"a{i}@x.org", None]})
        with EncryptedParquetWriter(root / f"day={i}" / "part-0.parquet", t.schema,
                                    EncryptionSpec(columns=["email"]), provider) as w:
            w.write_batch(t)
    return root


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_inspect_json_and_table(ds, local_kms):
    result = _run("inspect", str(ds), "--keystore", str(local_kms.keystore_dir), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] == 4 and len(data["files"]) == 2 and data["up_to_date"] is True
    table = _run("inspect", str(ds), "--keystore", str(local_kms.keystore_dir))
    assert table.exit_code == 0 and "day=0/part-0.parquet" in table.stdout and "up to date" in table.stdout


def test_rewrap_then_reencrypt_from_the_cli(ds, local_kms):
    ks = str(local_kms.keystore_dir)
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    result = _run("rewrap", str(ds), "--keystore", ks, "--json", "--run-id", "cli-rewrap")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_id"] == "cli-rewrap" and summary["kms_calls"]["local:ReEncrypt"] == 2
    assert (ds / "_spark_kms_runs" / "cli-rewrap.json").exists()

    kms.rotate_key("alias/pii")
    result = _run("reencrypt", str(ds), "--kms-option", f"local.keystore={ks}")
    assert result.exit_code == 0, result.output
    assert "reencrypt succeeded" in result.stdout and "2 files" in result.stdout
    assert {e.key_version for e in read_dataset_key_table(ds).deks.values()} == {"3"}
    kms.disable_key_version("alias/pii", 1)
    kms.disable_key_version("alias/pii", 2)
    table = read_decrypted_table(str(ds), kms_options=local_kms.kms_options).sort_by("id")
    assert table.column("email").to_pylist() == ["a0@x.org", "a1@x.org", None, None]


def test_exit_codes(ds, local_kms, tmp_path):
    ks = str(local_kms.keystore_dir)
    # 2: usage -- a malformed option, a missing dataset
    bad_option = _run("rewrap", str(ds), "--kms-option", "keystore")
    assert bad_option.exit_code == ExitCode.USAGE == 2 and "scheme.key=value" in bad_option.output
    missing = _run("rewrap", str(tmp_path / "nope"), "--keystore", ks)
    assert missing.exit_code == ExitCode.USAGE and "does not exist" in missing.stderr
    # 5: key state -- the old version was disabled before the dataset was rotated
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    kms.disable_key_version("alias/pii", 1)
    kms_error = _run("reencrypt", str(ds), "--keystore", ks)
    assert kms_error.exit_code == ExitCode.KEY_STATE == 5
    assert "KeyStateError" in kms_error.stderr and "what to do" in kms_error.stderr
    assert "Traceback" not in kms_error.stderr
    kms.enable_key_version("alias/pii", 1)
    # 3: no such key -- a target key that does not exist
    no_key = _run("rewrap", str(ds), "--keystore", ks, "--key-uri", "local://alias/none")
    assert no_key.exit_code == ExitCode.KEY_NOT_FOUND == 3 and "spark-kms keys list" in no_key.stderr
    # 1: data -- a data file that is not Parquet
    (ds / "day=0" / "part-9.parquet").write_bytes(b"not parquet")
    data_error = _run("rewrap", str(ds), "--keystore", ks)
    assert data_error.exit_code == ExitCode.DATA == 1 and "part-9.parquet" in data_error.stderr


def test_decrypt_into_its_source_is_a_usage_error(ds, local_kms):
    result = _run("decrypt", str(ds), str(ds / "plain"), "--keystore", str(local_kms.keystore_dir))
    assert result.exit_code == ExitCode.USAGE and "different directory" in result.stderr


def test_real_subprocess_inspect_and_rewrap(ds, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    env_ks = ["--keystore", str(local_kms.keystore_dir)]
    done = subprocess.run([SPARK_KMS, "rewrap", str(ds), *env_ks], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rewrap succeeded" in done.stdout
    shown = subprocess.run([SPARK_KMS, "inspect", str(ds), "--json", *env_ks], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["behind_files"] == []
    failed = subprocess.run([SPARK_KMS, "inspect", str(ds / "nope"), *env_ks], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 2 and "does not exist" in failed.stderr
