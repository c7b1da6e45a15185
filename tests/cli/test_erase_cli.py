"""``spark-kms erase``: a tenant (its local KMS key scheduled for deletion), a subject (its key deleted from a real
SQLite subject key store), the receipt as a table and as JSON, refusals with the CLI's exit codes, the erasure
log; through click's CliRunner and once as a real ``python -m spark_kms`` process. No Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec
from spark_kms.parquet.tenants import TenantKeys
from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "local://alias/tenant-{tenant}"


class Setup:
    def __init__(self, root: Path) -> None:
        self.keystore = root / "keystore"
        self.kms = LocalKms(self.keystore, principal="admin")
        for alias in ("alias/tenant-acme", "alias/tenant-globex", "alias/subjects"):
            self.kms.create_key(alias=alias)
        options = {"local": {"keystore": str(self.keystore), "principal": "admin"}}
        self.store_url = f"sqlite://{root / 'subjects.db'}"
        self.store = SubjectKeyStore.open(self.store_url, options, key_uri="local://alias/subjects",
                                          principal="admin", create=True)
        self.orders = root / "orders"
        self.orders.mkdir()
        rows = pa.table({"id": pa.array(range(8), pa.int64()), "tenant": ["acme", "globex"] * 4,
                         "user_id": [f"u{i % 3}" for i in range(8)], "email": [f"p{i}@example.com" for i in range(8)]})
        with EncryptedParquetWriter(self.orders / "part-0.parquet", rows.schema,
                                    EncryptionSpec(columns=["email"], subject_column="user_id"), None,
                                    kms_options=options, tenant_keys=TenantKeys("tenant", TEMPLATE),
                                    subject_store=self.store) as writer:
            writer.write_batch(rows)

    def args(self, *extra: str, principal: str = "admin") -> list[str]:
        return ["erase", *extra, "--keystore", str(self.keystore), "--principal", principal,
                "--subject-store", self.store_url]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    for name in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(name)
    subject_key_cache().clear()
    return Setup(tmp_path)


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_erase_a_tenant_prints_the_receipt_and_is_idempotent(setup: Setup) -> None:
    result = _run(*setup.args("--tenant", "acme", "--tenant-keys", TEMPLATE, "--dataset", str(setup.orders),
                              "--pending-days", "8", "--reason", "TICKET-1", "--json"))
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.stdout)
    assert (receipt["kind"], receipt["target"], receipt["key_uri"], receipt["principal"]) == (
        "tenant", "acme", "local://alias/tenant-acme", "admin")
    assert receipt["datasets"] == {str(setup.orders): 1} and receipt["already_erased"] is False
    assert receipt["reason"] == "TICKET-1" and receipt["deletion_date"]
    assert setup.kms.describe_key("alias/tenant-acme").state == "PendingDeletion"
    assert setup.kms.describe_key("alias/tenant-globex").state == "Enabled"

    again = _run(*setup.args("--tenant", "acme", "--tenant-keys", json.dumps({"*": TEMPLATE})))
    assert again.exit_code == 0, again.output
    assert "tenant already erased" in again.stdout and "local://alias/tenant-acme" in again.stdout

    log = _run(*setup.args("--log", "--kind", "tenant", "--json"))
    rows = json.loads(log.stdout)
    assert [(r["outcome"], r["detail"]["already_erased"]) for r in rows] == [("ok", False), ("ok", True)]
    assert rows[0]["id"] == receipt["receipt_id"]


def test_a_refused_erasure_exits_4_and_is_logged(setup: Setup) -> None:
    setup.kms.put_key_policy("alias/tenant-globex", {"admin": ["admin"], "reader": ["decrypt"]})
    result = _run(*setup.args("--tenant", "globex", "--tenant-keys", TEMPLATE, principal="reader"))
    assert result.exit_code == ExitCode.ACCESS_DENIED == 4
    assert "error (AccessDeniedError)" in result.stderr and "reader" in result.stderr
    assert "Traceback" not in result.stderr
    assert setup.kms.describe_key("alias/tenant-globex").state == "Enabled"

    denied = _run(*setup.args("--subject", "u1", "--dataset", str(setup.orders), principal="intern"))
    assert denied.exit_code == ExitCode.ACCESS_DENIED, denied.output
    assert "lacks the 'erase' permission" in denied.stderr

    table = _run(*setup.args("--log"))
    assert table.exit_code == 0 and table.stdout.count("denied") == 2
    assert "reader" in table.stdout and "intern" in table.stdout


def test_erase_a_subject(setup: Setup) -> None:
    result = _run(*setup.args("--subject", "u1", "--dataset", str(setup.orders), "--json"))
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.stdout)
    assert (receipt["kind"], receipt["store_id"], receipt["datasets"]) == (
        "subject", setup.store.store_id, {str(setup.orders): ["email"]})
    subject_key_cache().clear()
    assert setup.store.keys_for(["u1"]) == {"u1": None}
    table = _run(*setup.args("--subject", "u1"))
    assert table.exit_code == 0 and "subject already erased" in table.stdout
    assert "none of those given" in table.stdout


@pytest.mark.parametrize("args, message", [
    ((), "exactly one of --tenant, --subject or --log"),
    (("--tenant", "acme", "--subject", "u1"), "got --tenant, --subject"),
    (("--tenant", "acme"), "--tenant needs --tenant-keys"),
    (("--subject", "u1", "--kind", "tenant"), "--kind goes with --log"),
    (("--tenant", "a b", "--tenant-keys", TEMPLATE), "tenant id is 1-128 characters"),
])
def test_usage_errors_exit_2(setup: Setup, args: tuple[str, ...], message: str) -> None:
    result = _run(*setup.args(*args))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.stderr
    assert setup.kms.describe_key("alias/tenant-acme").state == "Enabled"


def test_python_m_spark_kms_erase_in_a_real_process(setup: Setup) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_KMS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["SPARK_KMS_SUBJECT_STORE"] = setup.store_url  # the store from the environment this time
    command = [sys.executable, "-m", "spark_kms", "erase", "--tenant", "globex", "--tenant-keys", TEMPLATE,
               "--dataset", str(setup.orders), "--keystore", str(setup.keystore), "--principal", "admin", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert receipt["target"] == "globex" and receipt["datasets"] == {str(setup.orders): 1}
    assert setup.kms.describe_key("alias/tenant-globex").state == "PendingDeletion"
    setup.kms.put_key_policy("alias/tenant-acme", {"admin": ["admin"], "reader": ["decrypt"]})
    denied_command = [sys.executable, "-m", "spark_kms", "erase", "--tenant", "acme", "--tenant-keys", TEMPLATE,
                      "--keystore", str(setup.keystore), "--principal", "reader"]
    denied = subprocess.run(denied_command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert denied.returncode == 4, denied.stderr
    assert "AccessDeniedError" in denied.stderr and denied.stdout == ""


def test_encrypt_and_decrypt_verbs_take_the_erasure_options(setup: Setup, tmp_path: Path) -> None:
    # Into a Delta table and back: pyarrow, no Spark.
    import pyarrow.parquet as pq

    landing = tmp_path / "landing"
    landing.mkdir()
    rows = pa.table({"id": pa.array(range(8), pa.int64()), "tenant": ["acme", "globex"] * 4,
                     "user_id": [f"w{i % 4}" for i in range(8)], "email": [f"q{i}@example.com" for i in range(8)]})
    pq.write_table(rows, landing / "part-0.parquet")
    table, plain = tmp_path / "delta", tmp_path / "plain"
    kms = ["--keystore", str(setup.keystore), "--principal", "admin"]
    encrypted = _run("encrypt", str(landing), str(table), "--table-format", "delta", "--columns", "email",
                     "--tenant-column", "tenant", "--tenant-keys", TEMPLATE, "--subject-column", "user_id",
                     "--subject-store", setup.store_url, "--json", *kms)
    assert encrypted.exit_code == 0, encrypted.output
    assert _run(*setup.args("--subject", "w2", "--dataset", str(table))).exit_code == 0

    refused = _run("decrypt", str(table), str(plain), "--subject-store", setup.store_url, "--on-erased", "raise", *kms)
    assert refused.exit_code == ExitCode.DATA, refused.output
    assert "error (ErasedDataError)" in refused.stderr and not plain.exists()
    decrypted = _run("decrypt", str(table), str(plain), "--subject-store", setup.store_url, *kms)
    assert decrypted.exit_code == 0, decrypted.output
    got = pq.read_table(plain).sort_by("id")
    expected = rows.column("email").to_pylist()
    assert got.column("email").to_pylist() == [None if i % 4 == 2 else expected[i] for i in range(8)]

    bad = _run("decrypt", str(table), str(plain), "--on-erased", "skip", *kms)
    assert bad.exit_code == ExitCode.USAGE and "--on-erased" in bad.stderr
