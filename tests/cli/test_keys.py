"""`spark-kms keys ...` through click's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.kms.local import LocalKms


@pytest.fixture
def env(tmp_path):
    root = os.urandom(32)
    return {
        "SPARK_KMS_KEYSTORE": str(tmp_path / "ks"),
        "SPARK_KMS_ROOT_KEY": base64.b64encode(root).decode(),
        "SPARK_KMS_PRINCIPAL": "admin",
    }


@pytest.fixture
def run(env):
    runner = CliRunner()

    def _run(*args: str, code: int = ExitCode.OK, input: str | None = None):
        result = runner.invoke(cli, ["keys", *args], env=env, input=input, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    return _run


@pytest.fixture
def key_id(run):
    return run("create", "--alias", "alias/pii", "--description", "customer PII", "--tag", "team=data").strip()


def kms_of(env) -> LocalKms:
    return LocalKms(env["SPARK_KMS_KEYSTORE"], principal="admin",
                    root_key=base64.b64decode(env["SPARK_KMS_ROOT_KEY"]))


def test_create_list_describe(run, key_id, env):
    assert str(uuid.UUID(key_id)) == key_id
    out = json.loads(run("create", "--spec", "HMAC_256", "--rotation-period-days", "90", "--json"))
    assert out["spec"] == "HMAC_256"
    listing = run("list")
    assert key_id in listing and "alias/pii" in listing and "not an HSM" in listing
    rows = json.loads(run("list", "--json"))
    assert [r["extra"]["spec"] for r in rows] == ["SYMMETRIC_DEFAULT", "HMAC_256"]
    assert rows[1]["extra"]["rotation_period_days"] == 90
    desc = json.loads(run("describe", "alias/pii", "--json"))
    assert desc["key_id"] == key_id and desc["extra"]["tags"] == {"team": "data"}
    human = run("describe", key_id)
    assert "customer PII" in human and "Enabled" in human
    run("create", "--tag", "novalue", code=ExitCode.USAGE)


def test_user_text_is_shown_verbatim_not_as_rich_markup(run, env):
    # Descriptions and principals are user data: "[/x]" used to crash `keys list` with a
    # rich MarkupError, and "[bold]" vanished from the table.
    key = run("create", "--description", "[/x] [bold]raw").strip()
    assert "[/x] [bold]raw" in run("list")
    assert "[/x] [bold]raw" in run("describe", key)
    CliRunner().invoke(cli, ["keys", "--principal", "[/p]", "rotate", key], env=env)
    assert "[/p]" in run("audit")


def test_rotate_enable_disable(run, key_id, env):
    assert json.loads(run("rotate", "alias/pii", "--json"))["primary_version"] == "2"
    assert "new primary version 3" in run("rotate", key_id)
    run("disable", key_id, "--version", "3")
    assert kms_of(env).describe_key(key_id).primary_version == "2"
    run("enable", key_id, "--version", "3")
    run("disable", "alias/pii")
    out = run("describe", "alias/pii", "--json")
    assert json.loads(out)["state"] == "Disabled"
    err = run("rotate", "alias/pii", code=0)  # rotating a disabled key is allowed
    assert "version 4" in err
    run("enable", "alias/pii")
    assert kms_of(env).describe_key(key_id).enabled


def test_deletion_schedule_and_cancel(run, key_id, env):
    out = run("schedule-deletion", key_id, "--days", "3", code=ExitCode.USAGE)
    assert "7 to 30 days" in out
    assert "pending deletion" in run("schedule-deletion", key_id, "--days", "7")
    out = run("rotate", key_id, code=ExitCode.KEY_STATE)
    assert "PendingDeletion" in out and "cancel-deletion" in out
    run("cancel-deletion", key_id)
    assert kms_of(env).describe_key(key_id).state == "Enabled"


def test_destroy_version(run, key_id, env):
    run("rotate", key_id)
    run("destroy-version", key_id, "--version", "1", input="n\n", code=ExitCode.ABORTED)  # declined: aborted, nothing happens
    assert kms_of(env).describe_key(key_id).versions["1"] == "enabled"
    run("destroy-version", key_id, "--version", "1", input="y\n")
    assert kms_of(env).describe_key(key_id).versions == {"1": "destroyed", "2": "enabled"}
    run("destroy-version", key_id, "--version", "7", "--yes", code=ExitCode.KEY_NOT_FOUND)


def test_alias_commands(run, key_id, env):
    other = run("create").strip()
    run("alias", "create", "alias/extra", key_id)
    assert json.loads(run("alias", "list", "--json")) == {"alias/extra": key_id, "alias/pii": key_id}
    run("alias", "update", "alias/extra", other)
    assert f"alias/extra -> {other}" in run("alias", "list")
    run("alias", "delete", "alias/extra")
    assert "alias/extra" not in run("alias", "list")
    out = run("alias", "delete", "alias/extra", code=ExitCode.KEY_NOT_FOUND)
    assert "does not exist" in out and "spark-kms keys list" in out
    run("alias", "create", "bad-name", key_id, code=ExitCode.USAGE)


def test_policy_set_and_denial(run, key_id, env):
    out = run("policy", "set", key_id, "--principal", "etl", "--role", "encrypt")
    assert "granted 'admin' admin" in out
    assert json.loads(run("policy", "show", key_id)) == {"admin": ["admin"], "etl": ["encrypt"]}
    runner = CliRunner()
    denied = runner.invoke(cli, ["keys", "--principal", "etl", "rotate", key_id], env=env)
    assert denied.exit_code == ExitCode.ACCESS_DENIED
    assert "may not call RotateKey" in denied.output and "policy set" in denied.output
    run("policy", "set", key_id, "--principal", "x", "--role", "owner", code=ExitCode.USAGE)


def test_audit_command(run, key_id, env):
    run("rotate", "alias/pii")
    run("describe", "alias/missing", code=ExitCode.KEY_NOT_FOUND)
    events = json.loads(run("audit", "--json"))
    assert [e["operation"] for e in events] == ["CreateKey", "RotateKey", "DescribeKey"]
    assert events[-1]["outcome"] == "KeyNotFoundError"
    assert [e["operation"] for e in json.loads(run("audit", "--key", "alias/pii", "--json"))] == [
        "CreateKey", "RotateKey"]
    human = run("audit", "--limit", "1")
    assert "DescribeKey" in human and "RotateKey" not in human


def test_errors_wrong_root_key_and_corrupt_store(run, key_id, env):
    runner = CliRunner()
    wrong = runner.invoke(cli, ["keys", "list"],
                          env={**env, "SPARK_KMS_ROOT_KEY": base64.b64encode(os.urandom(32)).decode()})
    assert wrong.exit_code == ExitCode.KEYSTORE and "root key does not open keystore" in wrong.output
    with open(os.path.join(env["SPARK_KMS_KEYSTORE"], "keystore.json"), "w") as fh:
        fh.write("{trunc")
    out = run("describe", key_id, code=ExitCode.KEYSTORE)
    assert "keystore.json is corrupt" in out


def test_real_subprocess_create_and_list(env, tmp_path):
    full_env = {**os.environ, **env}
    script = Path(sys.executable).with_name("spark-kms")  # the installed console script
    assert script.exists()
    exe = [str(script)]
    created = subprocess.run([*exe, "keys", "create", "--alias", "alias/sub"], env=full_env,
                             capture_output=True, text=True, timeout=60, check=True)
    key_id = created.stdout.strip()
    listed = subprocess.run([*exe, "keys", "list", "--json"], env=full_env, capture_output=True, text=True,
                            timeout=60, check=True)
    rows = json.loads(listed.stdout)
    assert [(r["key_id"], r["extra"]["aliases"]) for r in rows] == [(key_id, ["alias/sub"])]
    failed = subprocess.run([*exe, "keys", "describe", "alias/none"], env=full_env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == ExitCode.KEY_NOT_FOUND and "alias 'alias/none' does not exist" in failed.stderr
