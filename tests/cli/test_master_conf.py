"""``--master`` and ``--conf`` on the verbs that run Spark.

* Usage errors (a malformed ``--conf``, an unknown master, ``--conf`` without a master on a verb
  that runs without Spark) exit 2 before any JVM starts: click's CliRunner, in this process.
* ``--master local[1]`` and ``--conf`` really reach the session: a real ``spark-kms`` subprocess
  (this test process may already hold the suite's ``local[2]`` SparkContext, which Spark would
  reuse), whose log names the running master and app name, and whose data keys count the input
  splits that ``spark.sql.files.maxPartitionBytes`` made.
* A real Spark Connect server in its own process (:mod:`spark_kms.testing.connect`), on the same
  filesystem (the point here is the option plumbing; tests/connect/ isolates the client's view of
  the files): ``encrypt`` / ``inspect`` / ``decrypt --master sc://...`` as subprocesses, the
  decrypted values equal to the source. A process that made a Spark Connect session cannot hold a
  classic one, so every Connect client here is a subprocess.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.cli._spark import parse_conf
from spark_kms.kms.local import LocalKms
from spark_kms.testing.connect import connect_server, free_port

SPARK_KMS = str(Path(sys.executable).parent / "spark-kms")
ROWS = 300
SPLIT_BYTES = 2048  # --conf spark.sql.files.maxPartitionBytes: several input splits, so several data keys


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_KMS_MASTER", "MASTER")}
    env["PYSPARK_PYTHON"] = sys.executable
    return subprocess.run([SPARK_KMS, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CSV of ``ROWS`` people and a keystore with ``alias/pii``, shared by the module's tests."""
    root = tmp_path_factory.mktemp("master_conf")
    rows = [{"id": str(i), "name": f"name{i}", "ssn": f"{100 + i % 800:03d}-{i % 99 + 1:02d}-{i:04d}",
             "email": f"user{i}@example.org"} for i in range(ROWS)]
    source = root / "people.csv"
    with source.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keystore = root / "keystore"
    LocalKms(keystore).create_key(alias="alias/pii")
    return {"root": root, "source": source, "rows": rows, "keystore": str(keystore),
            "splits": math.ceil(source.stat().st_size / SPLIT_BYTES)}


def _encrypt_args(landing: dict[str, Any], destination: Path, *extra: str) -> list[str]:
    return ["encrypt", str(landing["source"]), str(destination), "--format", "csv", "--key-uri", "local://alias/pii",
            "--columns", "ssn,email", "--keystore", landing["keystore"], "--json", *extra]


def _check_plaintext(directory: Path, rows: list[dict[str, str]]) -> None:
    table = pq.read_table(directory)
    got = sorted((str(r["id"]), r["name"], r["ssn"], r["email"]) for r in table.to_pylist())
    assert got == sorted((r["id"], r["name"], r["ssn"], r["email"]) for r in rows)


def _check_encrypted(directory: Path, rows: list[dict[str, str]]) -> None:
    files = sorted(directory.glob("*.parquet"))
    assert files
    cells = [c for f in files for c in pq.read_table(f, columns=["ssn"]).column("ssn").to_pylist()]
    assert len(cells) == len(rows)
    assert all(isinstance(c, bytes) for c in cells)
    assert not {c for c in cells} & {r["ssn"].encode() for r in rows}  # no plaintext SSN on disk


# -- usage errors: exit 2, no Spark ------------------------------------------------------------------------
def test_parse_conf_takes_key_value_pairs_and_the_last_key_wins() -> None:
    assert parse_conf(("spark.a=1", "spark.b=x=y", "spark.c=", "spark.a=2")) == \
        {"spark.a": "2", "spark.b": "x=y", "spark.c": ""}


@pytest.mark.parametrize("bad", ["spark.sql.shuffle.partitions", "=8", " =8", "spark sql=8"])
def test_a_malformed_conf_is_a_usage_error_before_spark_starts(bad: str, tmp_path: Path) -> None:
    result = _cli("encrypt", str(tmp_path / "in"), str(tmp_path / "out"), "--key-uri", "local://alias/pii",
                  "--columns", "ssn", "--conf", "spark.ok=1", "--conf", bad)
    assert result.exit_code == ExitCode.USAGE
    assert "Invalid value for --conf: expected KEY=VALUE" in result.stderr and repr(bad) in result.stderr


@pytest.mark.parametrize("verb", ["inspect", "rewrap", "reencrypt", "gc"])
def test_conf_without_a_master_is_a_usage_error_on_the_verbs_that_run_without_spark(verb: str, tmp_path: Path):
    result = _cli(verb, str(tmp_path), "--conf", "spark.sql.shuffle.partitions=8")
    assert result.exit_code == ExitCode.USAGE
    assert "--conf needs --master" in result.stderr


@pytest.mark.parametrize("verb", ["encrypt", "decrypt", "demo", "inspect", "rewrap", "reencrypt", "gc"])
def test_every_spark_verb_has_master_and_conf(verb: str) -> None:
    shown = _cli(verb, "--help").output
    assert "--master URL" in shown and "--conf KEY=VALUE" in shown and "sc://HOST:PORT" in shown


@pytest.mark.parametrize(("master", "message"), [
    ("bogus", "unsupported Spark master 'bogus'"),
    ("http://127.0.0.1:7077", "unsupported Spark master"),
    ("sc://127.0.0.1:15002/path", "must be empty"),
    ("sc://h/;token", "key-value pair"),
])
def test_an_unknown_master_is_a_usage_error(master: str, message: str, tmp_path: Path) -> None:
    result = _cli("inspect", str(tmp_path), "--master", master)
    assert result.exit_code == ExitCode.USAGE
    assert "Invalid value for '--master'" in result.stderr and message in result.stderr


def test_the_master_also_comes_from_the_environment(tmp_path: Path) -> None:
    result = _cli("inspect", str(tmp_path), env={"SPARK_KMS_MASTER": "nonsense", "SPARK_REMOTE": None})
    assert result.exit_code == ExitCode.USAGE and "'nonsense'" in result.stderr
    result = _cli("inspect", str(tmp_path), env={"SPARK_KMS_MASTER": None, "SPARK_REMOTE": "sc://h:1/x"})
    assert result.exit_code == ExitCode.USAGE and "Spark Connect URL" in result.stderr
    # an explicit --master wins over both
    result = _cli("inspect", str(tmp_path), "--master", "nope", env={"SPARK_KMS_MASTER": "local[1]"})
    assert result.exit_code == ExitCode.USAGE and "'nope'" in result.stderr


def test_a_token_in_a_spark_connect_url_never_reaches_the_output(tmp_path: Path) -> None:
    result = _cli("inspect", str(tmp_path), "--master", "sc://h:1/x;token=s3cr3t-t0ken")
    assert result.exit_code == ExitCode.USAGE
    assert "s3cr3t-t0ken" not in result.output and "token=***" in result.stderr


# -- a classic master, really used -------------------------------------------------------------------------
@pytest.mark.spark
@pytest.mark.slow
def test_master_local_1_and_conf_reach_the_session(landing: dict[str, Any]) -> None:
    out = landing["root"] / "local1"
    done = _run("-v", *_encrypt_args(landing, out, "--master", "local[1]",
                                     "--conf", f"spark.sql.files.maxPartitionBytes={SPLIT_BYTES}",
                                     "--conf", "spark.app.name=spark-kms-master-conf-test"))
    assert done.returncode == 0, done.stderr
    log = " ".join(done.stderr.split())  # rich wraps log lines
    assert "Spark session on master local[1]" in log  # read back from the running SparkContext
    assert "app spark-kms-master-conf-test" in log
    summary = json.loads(done.stdout)
    assert summary["rows"] == ROWS
    # one data key per non-empty partition, and each input split of maxPartitionBytes is one partition
    assert summary["deks"] == landing["splits"] > 1
    _check_encrypted(out, landing["rows"])


# -- a real Spark Connect server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(landing: dict[str, Any]) -> Iterator[Any]:
    with connect_server(cwd=landing["root"], log_dir=landing["root"]) as running:
        yield running


@pytest.mark.spark
@pytest.mark.slow
def test_encrypt_inspect_and_decrypt_over_spark_connect(server: Any, landing: dict[str, Any]) -> None:
    encrypted, plain = landing["root"] / "connect_enc", landing["root"] / "connect_plain"
    done = _run("-v", *_encrypt_args(landing, encrypted, "--master", server.url,
                                     "--conf", f"spark.sql.files.maxPartitionBytes={SPLIT_BYTES}"))
    assert done.returncode == 0, done.stderr + server.log_tail()
    assert f"on {server.url}" in " ".join(done.stderr.split())  # the Spark Connect session's log line
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded" and summary["rows"] == ROWS
    assert summary["deks"] == landing["splits"] > 1  # the --conf was set on the server's session
    _check_encrypted(encrypted, landing["rows"])

    shown = _run("inspect", str(encrypted), "--keystore", landing["keystore"], "--master", server.url, "--json")
    assert shown.returncode == 0, shown.stderr
    inspection = json.loads(shown.stdout)
    assert inspection["rows"] == ROWS and inspection["up_to_date"] is True
    assert len(inspection["files"]) == summary["files"]

    back = _run("decrypt", str(encrypted), str(plain), "--keystore", landing["keystore"], "--master", server.url,
                "--json")
    assert back.returncode == 0, back.stderr + server.log_tail()
    assert json.loads(back.stdout)["rows"] == ROWS
    _check_plaintext(plain, landing["rows"])


@pytest.mark.spark
@pytest.mark.slow
def test_a_setting_the_server_refuses_is_a_usage_error(server: Any, landing: dict[str, Any]) -> None:
    done = _run(*_encrypt_args(landing, landing["root"] / "refused", "--master", server.url,
                               "--conf", "spark.executor.memory=1g"))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "does not let a client set 'spark.executor.memory'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (landing["root"] / "refused").exists()


@pytest.mark.spark
def test_an_unreachable_spark_connect_server_fails_fast() -> None:
    done = _run("inspect", "/nonexistent", "--master", f"sc://127.0.0.1:{free_port()}", timeout=60)
    assert done.returncode == ExitCode.JOB, done.stderr
    assert "cannot reach the Spark Connect server at sc://127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr
