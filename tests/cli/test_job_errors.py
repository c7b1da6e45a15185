"""A Spark job verb that fails exits with its documented code and one short message: no traceback.

The errors are raised inside Spark's Python workers (a task's GenerateDataKey, a decrypt UDF's
unwrap or tag check), so they reach the CLI through Spark; the table of spark_kms.cli._errors
still decides the code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode, row_for
from spark_kms.errors import AccessDeniedError
from spark_kms.kms import provider_from_uri
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

pytestmark = pytest.mark.spark

SPARK_KMS = str(Path(sys.executable).parent / "spark-kms")


@pytest.fixture
def ds(tmp_path, local_kms) -> Path:
    provider = provider_from_uri(local_kms.key_uri, **local_kms.kms_options["local"])
    root = tmp_path / "ds"
    root.mkdir()
    t = pa.table({"id": list(range(8)), "email": [f"user{i}@example.org" for i in range(8)]})
    with EncryptedParquetWriter(root / "part-0.parquet", t.schema, EncryptionSpec(columns=["email"]), provider) as w:
        w.write_batch(t)
    return root


@pytest.fixture
def plain_source(tmp_path) -> Path:
    src = tmp_path / "land"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "email": ["a@x.org", "b@x.org"]}), src / "part-0.parquet")
    return src


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _assert_short_error(result, code: ExitCode, error: str) -> None:
    assert result.exit_code == code, result.output
    stderr = result.stderr
    assert f"error ({error}): " in stderr, stderr
    assert "Traceback" not in stderr and "PythonException" not in stderr and "SQLSTATE" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, stderr  # the error, what to do (rich may wrap the hint once)
    assert "what to do: " in stderr


def _tamper(file: Path) -> None:
    table = pq.read_table(file)
    meta = pq.read_metadata(file).metadata
    cells = table.column("email").to_pylist()
    cells[3] = cells[3][:-1] + bytes([cells[3][-1] ^ 1])
    table = table.set_column(table.schema.get_field_index("email"), "email", pa.array(cells, pa.binary()))
    pq.write_table(table.replace_schema_metadata(meta), file)


def test_decrypt_with_a_disabled_key_exits_with_the_key_state_code(spark, ds, local_kms, tmp_path):
    LocalKms(local_kms.keystore_dir).disable_key("alias/pii")
    result = _run("decrypt", str(ds), str(tmp_path / "plain"), "--keystore", str(local_kms.keystore_dir))
    _assert_short_error(result, ExitCode.KEY_STATE, "KeyStateError")
    assert "is Disabled" in result.stderr


def test_decrypt_as_a_denied_principal_exits_with_the_access_denied_code(spark, ds, local_kms, tmp_path):
    admin = LocalKms(local_kms.keystore_dir)
    admin.put_key_policy("alias/pii", {admin.principal: ["admin", "encrypt", "decrypt"], "auditor": ["encrypt"]})
    result = _run("decrypt", str(ds), str(tmp_path / "plain"), "--keystore", str(local_kms.keystore_dir),
                  "--kms-option", "local.principal=auditor")
    _assert_short_error(result, ExitCode.ACCESS_DENIED, "AccessDeniedError")
    assert "'auditor'" in result.stderr


def test_decrypt_of_a_tampered_cell_exits_with_the_data_code(spark, ds, local_kms, tmp_path):
    _tamper(ds / "part-0.parquet")
    result = _run("decrypt", str(ds), str(tmp_path / "plain"), "--keystore", str(local_kms.keystore_dir))
    _assert_short_error(result, ExitCode.DATA, "DecryptionError")
    assert "'email'" in result.stderr and "example.org" not in result.stderr


def test_decrypt_with_the_keystore_gone_exits_with_the_unavailable_code(spark, ds, local_kms, tmp_path):
    local_kms.keystore_dir.rename(tmp_path / "unmounted")
    result = _run("decrypt", str(ds), str(tmp_path / "plain"), "--keystore", str(local_kms.keystore_dir))
    _assert_short_error(result, ExitCode.KMS_UNAVAILABLE, "KmsUnavailableError")


def test_encrypt_with_a_disabled_key_or_a_denied_principal(spark, plain_source, local_kms, tmp_path):
    admin = LocalKms(local_kms.keystore_dir)
    args = ["encrypt", str(plain_source), str(tmp_path / "enc"), "--key-uri", local_kms.key_uri, "--columns", "email",
            "--keystore", str(local_kms.keystore_dir)]
    admin.put_key_policy("alias/pii", {admin.principal: ["admin", "encrypt", "decrypt"], "reader": ["decrypt"]})
    _assert_short_error(_run(*args, "--kms-option", "local.principal=reader"), ExitCode.ACCESS_DENIED,
                        "AccessDeniedError")
    admin.disable_key("alias/pii")
    _assert_short_error(_run(*args), ExitCode.KEY_STATE, "KeyStateError")
    _assert_short_error(_run(*args[:-4], "--deterministic", "email", *args[-2:]), ExitCode.KEY_STATE,
                        "KeyStateError")  # the driver-side data key, made while Spark plans the write


def test_a_spark_exception_escaping_any_verb_exits_with_the_code_of_the_error_it_carries(monkeypatch, tmp_path):
    import traceback

    from pyspark.errors import PythonException

    import spark_kms.jobs
    from spark_kms.spark._errors import marked_for_driver

    try:
        with marked_for_driver():
            raise AccessDeniedError("principal 'x' may not call Decrypt on key k", key_id="k", operation="Decrypt")
    except AccessDeniedError as exc:
        text = "An exception was thrown from the Python worker:\n" + "".join(traceback.format_exception(exc))

    def fail(*args, **kwargs):
        raise PythonException(message=text)

    monkeypatch.setattr(spark_kms.jobs, "inspect_dataset", fail)
    result = _run("inspect", str(tmp_path))
    _assert_short_error(result, ExitCode.ACCESS_DENIED, "AccessDeniedError")
    assert f"what to do: {row_for(AccessDeniedError('x')).hint}" in result.stderr


def test_the_real_command_prints_no_traceback_from_spark_either(ds, local_kms, tmp_path):
    """A subprocess: Spark's own log (which repeats the worker's traceback) is not shown without -v."""
    LocalKms(local_kms.keystore_dir).disable_key("alias/pii")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    out = subprocess.run([SPARK_KMS, "decrypt", str(ds), str(tmp_path / "plain"), "--keystore",
                          str(local_kms.keystore_dir)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == ExitCode.KEY_STATE, out.stderr[-3000:]
    assert "error (KeyStateError): " in out.stderr
    assert "Traceback" not in out.stderr and "ERROR" not in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "plain").exists()
