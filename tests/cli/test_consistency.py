"""The CLI's shared options sit in the same place on every verb, and the long verbs draw progress bars.

* ``--keystore`` / ``--principal`` after the sub-command on every verb that reaches a KMS, ``keys`` included
  (``spark-kms keys list --keystore DIR`` like ``spark-kms rewrap PATH --keystore DIR``); the 0.1.0 position
  before a ``keys`` sub-command keeps working.
* Progress (stderr): forced on with ``SPARK_KMS_PROGRESS=always`` (CliRunner's stderr is no terminal, where the
  bars are off by default), off with ``--quiet`` and ``--json``; stdout stays the verb's own output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.kms import provider_from_uri
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

KMS_VERBS = ["encrypt", "decrypt", "rewrap", "reencrypt", "inspect", "doctor"]
LONG_VERBS = ["encrypt", "decrypt", "rewrap", "reencrypt", "inspect"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch) -> None:
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)


def _run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _command(*path: str) -> click.Command:
    ctx = click.Context(cli)
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)
        assert command is not None, path
    return command


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in getattr(p, "opts", [])}


def _keys_leaves() -> list[tuple[str, ...]]:
    out = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name in group.list_commands(click.Context(group)):
            sub = group.get_command(click.Context(group), name)
            if isinstance(sub, click.Group):
                walk(sub, (*path, name))
            else:
                out.append((*path, name))

    walk(_command("keys"), ("keys",))
    return out


# --------------------------------------------------------------------------- where the options go


@pytest.mark.parametrize("verb", KMS_VERBS)
def test_every_kms_verb_takes_keystore_principal_and_kms_option_after_it(verb: str) -> None:
    assert {"--keystore", "--principal", "--kms-option"} <= _options(_command(verb))


@pytest.mark.parametrize("path", _keys_leaves(), ids=lambda p: " ".join(p))
def test_every_keys_verb_takes_the_keystore_after_it(path: tuple[str, ...]) -> None:
    options = _options(_command(*path))
    assert "--keystore" in options
    # `keys policy set --principal P` names the principal whose roles are set (0.1.0): the acting principal
    # goes before the sub-command or in SPARK_KMS_PRINCIPAL there.
    assert "--principal" in options


@pytest.mark.parametrize("verb", LONG_VERBS)
def test_every_long_verb_takes_quiet_and_json(verb: str) -> None:
    assert {"--quiet", "-q", "--json"} <= _options(_command(verb))


@pytest.mark.parametrize("verb", ["encrypt", "decrypt", "rewrap", "reencrypt", "inspect", "gc"])
def test_every_dataset_verb_takes_master_conf_and_storage_options(verb: str) -> None:
    assert {"--master", "--conf", "--storage-option"} <= _options(_command(verb))


def test_keys_keystore_and_principal_after_the_sub_command(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    created = _run("keys", "create", "--alias", "alias/one", "--keystore", str(one), "--principal", "alice")
    assert created.exit_code == 0, created.output
    _run("keys", "--keystore", str(two), "create", "--alias", "alias/two")  # the 0.1.0 position
    after = json.loads(_run("keys", "list", "--keystore", str(one), "--json").stdout)
    before = json.loads(_run("keys", "--keystore", str(one), "list", "--json").stdout)
    assert after == before and [d["extra"]["aliases"] for d in after] == [["alias/one"]]
    assert [d["extra"]["aliases"] for d in json.loads(_run("keys", "list", "--json", "--keystore", str(two)).stdout)] \
        == [["alias/two"]]
    nested = _run("keys", "alias", "list", "--keystore", str(one), "--json")
    assert list(json.loads(nested.stdout)) == ["alias/one"]
    audit = json.loads(_run("keys", "audit", "--keystore", str(one), "--json").stdout)
    assert {e["principal"] for e in audit if e["operation"] == "CreateKey"} == {"alice"}


def test_keys_options_given_twice_must_agree(tmp_path: Path) -> None:
    _run("keys", "create", "--alias", "alias/one", "--keystore", str(tmp_path / "one"))
    same = _run("keys", "--keystore", str(tmp_path / "one"), "list", "--keystore", str(tmp_path / "one"))
    assert same.exit_code == 0, same.output
    differ = _run("keys", "--keystore", str(tmp_path / "one"), "list", "--keystore", str(tmp_path / "two"))
    assert differ.exit_code == ExitCode.USAGE and "--keystore given twice" in differ.output


def test_the_sub_command_keystore_wins_over_the_environment(tmp_path: Path) -> None:
    _run("keys", "create", "--alias", "alias/one", "--keystore", str(tmp_path / "one"))
    result = _run("keys", "list", "--json", "--keystore", str(tmp_path / "one"),
                  env={"SPARK_KMS_KEYSTORE": str(tmp_path / "elsewhere")})
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 1


# --------------------------------------------------------------------------- --principal on the jobs


@pytest.fixture
def ds(tmp_path, local_kms) -> Path:
    provider = provider_from_uri(local_kms.key_uri, **local_kms.kms_options["local"])
    root = tmp_path / "ds"
    for i in range(3):
        (root / f"day={i}").mkdir(parents=True)
        t = pa.table({"id": [i, i + 10], "email": [f"a{i}@x.org", None]})
        with EncryptedParquetWriter(root / f"day={i}" / "part-0.parquet", t.schema,
                                    EncryptionSpec(columns=["email"]), provider) as w:
            w.write_batch(t)
    return root


def test_jobs_principal_is_the_local_kms_principal(ds, local_kms) -> None:
    admin = LocalKms(local_kms.keystore_dir)
    admin.put_key_policy("alias/pii", {admin.principal: ["admin", "encrypt", "decrypt"], "reader": ["decrypt"]})
    admin.rotate_key("alias/pii")
    ks = str(local_kms.keystore_dir)
    denied = _run("rewrap", str(ds), "--keystore", ks, "--principal", "reader")
    assert denied.exit_code == ExitCode.ACCESS_DENIED, denied.output
    assert "'reader'" in denied.output
    ok = _run("rewrap", str(ds), "--keystore", ks, "--principal", admin.principal, "--json")
    assert ok.exit_code == 0, ok.output


# --------------------------------------------------------------------------- progress bars

ALWAYS = {"SPARK_KMS_PROGRESS": "always", "COLUMNS": "240"}  # wide: rich folds the bar at 80 columns


def test_inspect_and_rewrap_draw_progress_on_stderr_only(ds, local_kms) -> None:
    ks = str(local_kms.keystore_dir)
    inspected = _run("inspect", str(ds), "--keystore", ks, env=ALWAYS)
    assert inspected.exit_code == 0, inspected.output
    assert "inspecting" in inspected.stderr and "3/3" in inspected.stderr and "files" in inspected.stderr
    assert "inspecting" not in inspected.stdout and "day=0/part-0.parquet" in inspected.stdout

    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    rewrapped = _run("rewrap", str(ds), "--keystore", ks, env=ALWAYS)
    assert rewrapped.exit_code == 0, rewrapped.output
    assert "rewrapping" in rewrapped.stderr and "3/3" in rewrapped.stderr and "data keys" in rewrapped.stderr
    assert "succeeded" in rewrapped.stderr  # the job's own report, shown as the bar's phase
    assert "rewrap succeeded" in rewrapped.stdout


@pytest.mark.parametrize("flag", ["--quiet", "-q", "--json"])
def test_no_progress_with_quiet_or_json(ds, local_kms, flag: str) -> None:
    result = _run("inspect", str(ds), "--keystore", str(local_kms.keystore_dir), flag, env=ALWAYS)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_no_progress_when_stderr_is_not_a_terminal(ds, local_kms) -> None:
    result = _run("reencrypt", str(ds), "--keystore", str(local_kms.keystore_dir), "--force")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


@pytest.mark.spark
def test_encrypt_and_decrypt_show_their_phases(spark, local_kms, tmp_path: Path) -> None:
    source = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": list(range(20)), "ssn": [f"078-05-{i:04d}" for i in range(20)]}), source)
    ks = str(local_kms.keystore_dir)
    enc = _run("encrypt", str(source), str(tmp_path / "enc"), "--key-uri", local_kms.key_uri, "--columns", "ssn",
               "--keystore", ks, env=ALWAYS)
    assert enc.exit_code == 0, enc.output
    assert "encrypting" in enc.stderr and "succeeded" in enc.stderr
    assert "078-05-" not in enc.stderr  # phases are the job's reports: never a value
    dec = _run("decrypt", str(tmp_path / "enc"), str(tmp_path / "out"), "--keystore", ks, env=ALWAYS)
    assert dec.exit_code == 0, dec.output
    assert "decrypting" in dec.stderr and "succeeded" in dec.stderr
    assert "078-05-" not in dec.stderr
