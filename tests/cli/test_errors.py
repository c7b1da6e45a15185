"""One exit-code table for every command group (spark_kms.cli._errors), shown in ``spark-kms --help``."""

from __future__ import annotations

import base64
import inspect
import logging
import os
import re

import pytest
from click.testing import CliRunner

import spark_kms.errors as errors_module
from spark_kms.cli import cli
from spark_kms.cli._errors import ERROR_TABLE, ExitCode, exit_code_for, exit_codes_help, row_for
from spark_kms.errors import MissingExtraError, SparkKmsError
from spark_kms.kms.local import LocalKms

ERROR_CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors_module, inspect.isclass) if issubclass(c, SparkKmsError)),
    key=lambda c: c.__name__,
)


def _instance(cls: type[SparkKmsError]) -> SparkKmsError:
    if cls is MissingExtraError:
        return cls("reading from S3", "aws")
    return cls(f"boom from a {cls.__name__}")


@pytest.fixture
def env(tmp_path):
    return {
        "SPARK_KMS_KEYSTORE": str(tmp_path / "ks"),
        "SPARK_KMS_ROOT_KEY": base64.b64encode(os.urandom(32)).decode(),
        "SPARK_KMS_PRINCIPAL": "admin",
    }


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


# --------------------------------------------------------------------------- the table itself


def test_each_code_has_one_meaning_and_each_meaning_one_code():
    assert len({int(c) for c in ExitCode}) == len(ExitCode)  # @enum.unique, checked anyway
    meanings = [c.meaning for c in ExitCode]
    assert all(meanings) and len(set(meanings)) == len(meanings)
    for row in ERROR_TABLE:
        assert row.meaning == row.code.meaning  # a row cannot carry a meaning of its own
    assert (ExitCode.OK, ExitCode.DATA, ExitCode.USAGE) == (0, 1, 2)


def test_rows_go_from_most_to_least_specific():
    # A row after one of its base classes could never match: the first isinstance match wins.
    for i, row in enumerate(ERROR_TABLE):
        shadowing = [earlier.error.__name__ for earlier in ERROR_TABLE[:i] if issubclass(row.error, earlier.error)]
        assert not shadowing, f"{row.error.__name__} is shadowed by {shadowing}"
    assert ERROR_TABLE[-1].error is SparkKmsError


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_has_a_code(cls):
    exc = _instance(cls)
    assert exit_code_for(exc) is row_for(exc).code
    assert exit_code_for(exc) not in (ExitCode.OK, ExitCode.UNEXPECTED, ExitCode.ABORTED)


def test_codes_of_the_error_tree():
    expected = {
        "ConfigurationError": ExitCode.USAGE, "MissingExtraError": ExitCode.USAGE,
        "FormatError": ExitCode.DATA, "MalformedCellError": ExitCode.DATA, "MissingKeyTableError": ExitCode.DATA,
        "UnknownFormatVersionError": ExitCode.DATA, "DecryptionError": ExitCode.DATA,
        "UnknownDataKeyError": ExitCode.DATA, "InvalidCiphertextError": ExitCode.DATA,
        "ErasedDataError": ExitCode.DATA, "UnknownSubjectError": ExitCode.DATA, "KeyErasedError": ExitCode.KEY_STATE,
        "KeyNotFoundError": ExitCode.KEY_NOT_FOUND, "AccessDeniedError": ExitCode.ACCESS_DENIED,
        "KeyStateError": ExitCode.KEY_STATE, "KeystoreError": ExitCode.KEYSTORE,
        "ThrottlingError": ExitCode.KMS_UNAVAILABLE, "KmsUnavailableError": ExitCode.KMS_UNAVAILABLE,
        "KmsError": ExitCode.KMS, "JobError": ExitCode.JOB, "KeyUsageLimitError": ExitCode.KEY_USAGE_LIMIT,
        "SparkKmsError": ExitCode.ERROR,
    }
    assert {c.__name__: exit_code_for(_instance(c)) for c in ERROR_CLASSES} == expected


def _epilog_blocks(help_text: str) -> dict[int, str]:
    """``{code: its meaning and causes}`` from the "Exit codes:" part of ``--help``."""
    epilog = help_text.split("Exit codes:", 1)[1]
    blocks: dict[int, str] = {}
    code = None
    for line in epilog.splitlines():
        m = re.match(r"\s+(\d+)  (\S.*)$", line)
        if m:
            code = int(m.group(1))
            blocks[code] = m.group(2)
        elif line.strip() and code is not None:
            blocks[code] += " " + line.strip()
    return blocks


def test_help_lists_every_code_and_every_row():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    blocks = _epilog_blocks(result.output)
    assert set(blocks) == {int(c) for c in ExitCode}
    for code in ExitCode:
        assert blocks[code].startswith(code.meaning)
    for row in ERROR_TABLE:
        assert re.search(rf"\b{row.error.__name__}\b", blocks[row.code]), f"{row.error.__name__} not under {row.code}"
    assert exit_codes_help().startswith("\b")  # click keeps the table's line breaks


# --------------------------------------------------------------------------- the same code from every group


@pytest.mark.parametrize("row", ERROR_TABLE, ids=lambda r: r.error.__name__)
def test_an_error_exits_with_the_same_code_from_keys_jobs_and_demo(row, env, monkeypatch, tmp_path):
    import spark_kms.cli.demo
    import spark_kms.jobs

    exc = _instance(row.error)
    monkeypatch.setattr(LocalKms, "list_keys", _raise(exc))
    monkeypatch.setattr(spark_kms.jobs, "inspect_dataset", _raise(exc))
    monkeypatch.setattr(spark_kms.cli.demo, "run_demo", _raise(exc))
    runner = CliRunner()
    results = {
        "keys": runner.invoke(cli, ["keys", "list"], env=env, catch_exceptions=False),
        "jobs": runner.invoke(cli, ["inspect", str(tmp_path / "ds")], env=env, catch_exceptions=False),
        "demo": runner.invoke(cli, ["demo", "--workdir", str(tmp_path / "demo")], catch_exceptions=False),
    }
    for group, result in results.items():
        assert result.exit_code == row.code, f"{group}: {result.output}"
        assert f"error ({row.error.__name__}): {exc}" in result.stderr, group
        assert "Traceback" not in result.stderr
        if row.hint:
            assert f"what to do: {row.hint}" in result.stderr


def test_click_usage_errors_share_the_configuration_code(env):
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "create", "--spec", "nope"], env=env).exit_code == ExitCode.USAGE
    assert runner.invoke(cli, ["rewrap"]).exit_code == ExitCode.USAGE  # missing argument
    assert runner.invoke(cli, ["no-such-verb"]).exit_code == ExitCode.USAGE


def test_ctrl_c_aborts_and_other_exceptions_are_not_data_errors(env, monkeypatch):
    runner = CliRunner()
    monkeypatch.setattr(LocalKms, "list_keys", _raise(KeyboardInterrupt()))
    interrupted = runner.invoke(cli, ["keys", "list"], env=env)
    assert interrupted.exit_code == ExitCode.ABORTED and "Aborted!" in interrupted.stderr

    monkeypatch.setattr(LocalKms, "list_keys", _raise(RuntimeError("a bug")))
    crashed = runner.invoke(cli, ["keys", "list"], env=env)
    assert crashed.exit_code == ExitCode.UNEXPECTED != ExitCode.DATA
    assert "Traceback" in crashed.stderr and "RuntimeError: a bug" in crashed.stderr


# --------------------------------------------------------------------------- --verbose


def test_verbose_shows_library_logs_and_puts_logging_back(env, monkeypatch):
    library = logging.getLogger("spark_kms")
    before = (library.level, list(library.handlers))

    def list_keys(self):
        logging.getLogger("spark_kms.kms.local").info("listing keys of the keystore")
        logging.getLogger("spark_kms.kms.local").debug("debug detail")
        logging.getLogger("py4j").info("not ours")
        return []

    monkeypatch.setattr(LocalKms, "list_keys", list_keys)
    runner = CliRunner()
    quiet = runner.invoke(cli, ["keys", "list", "--json"], env=env, catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.stderr == ""
    info = runner.invoke(cli, ["-v", "keys", "list", "--json"], env=env, catch_exceptions=False)
    assert "listing keys of the keystore" in info.stderr and "debug detail" not in info.stderr
    assert "not ours" not in info.stderr
    assert info.stdout.strip() == "[]"  # logs go to stderr, never into JSON output
    debug = runner.invoke(cli, ["-vv", "keys", "list", "--json"], env=env, catch_exceptions=False)
    assert "debug detail" in debug.stderr
    assert (library.level, list(library.handlers)) == before


def test_very_verbose_logs_the_traceback_of_a_spark_kms_error(env, monkeypatch):
    monkeypatch.setattr(LocalKms, "list_keys", _raise(errors_module.JobError("boom")))
    result = CliRunner().invoke(cli, ["-vv", "keys", "list"], env=env, catch_exceptions=False)
    assert result.exit_code == ExitCode.JOB
    assert "Traceback" in result.stderr and "error (JobError): boom" in result.stderr
