"""Erasure as an operation (spark_kms.erasure): erase a tenant (its KMS key scheduled for deletion) or a subject
(its key deleted from the subject key store), the receipt, the erasure log, refusals -- against the real embedded
KMS and a real SQLite subject key store. The datasets are written with the file layer (no Spark), except the last
test, which runs the encrypt / decrypt jobs through the session's Spark."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest

from spark_kms.erasure import ErasureReceipt, erase_subject, erase_tenant, erasure_log
from spark_kms.errors import AccessDeniedError, ConfigurationError
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table
from spark_kms.parquet.dataset import read_key_table
from spark_kms.parquet.tenants import TenantKeys
from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache

TEMPLATE = "local://alias/tenant-{tenant}"
TENANTS = ("acme", "globex")


class World:
    """A keystore with a key per tenant and one for the store, a subject key store, two datasets:
    ``orders`` (both tenants, per-subject ``email``) and ``invoices`` (globex only, no subject column)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keystore = root / "keystore"
        self.kms = LocalKms(self.keystore, principal="admin")
        for name in (*TENANTS, "other"):
            self.kms.create_key(alias=f"alias/tenant-{name}")
        self.kms.create_key(alias="alias/subjects")
        self.options: dict[str, dict[str, Any]] = {"local": {"keystore": str(self.keystore), "principal": "admin"}}
        self.store_url = f"sqlite://{root / 'subjects.db'}"
        self.store = SubjectKeyStore.open(self.store_url, self.options, key_uri="local://alias/subjects",
                                          principal="admin", create=True)
        self.orders = root / "orders"
        self.invoices = root / "invoices"
        self.orders_rows = pa.table({
            "id": pa.array(range(12), pa.int64()),
            "tenant": [TENANTS[i % 2] for i in range(12)],
            "user_id": [f"u{i % 4}" for i in range(12)],
            "email": [f"person{i}@example.com" for i in range(12)],
        })
        self._write(self.orders / "part-0.parquet", self.orders_rows,
                    EncryptionSpec(columns=["email"], subject_column="user_id"))
        self._write(self.invoices / "part-0.parquet", pa.table({
            "id": pa.array(range(4), pa.int64()), "tenant": ["globex"] * 4, "amount": [1.5, 2.5, 3.5, 4.5],
        }), EncryptionSpec(columns=["amount"]))

    def _write(self, path: Path, table: pa.Table, spec: EncryptionSpec) -> None:
        path.parent.mkdir(parents=True)
        with EncryptedParquetWriter(path, table.schema, spec, None, kms_options=self.options,
                                    tenant_keys=TenantKeys("tenant", TEMPLATE), subject_store=self.store) as writer:
            writer.write_batch(table)

    def state(self, tenant: str) -> str:
        return self.kms.describe_key(f"alias/tenant-{tenant}").state


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.delenv("SPARK_KMS_PRINCIPAL", raising=False)
    monkeypatch.delenv("SPARK_KMS_SUBJECT_STORE", raising=False)
    subject_key_cache().clear()
    return World(tmp_path)


def _tenant_deks(path: Path, tenant: str) -> int:
    table = read_key_table(path / "part-0.parquet")
    return sum(1 for e in table.deks.values() if e.encryption_context.get("spark_kms.tenant") == tenant)


def test_erase_tenant_schedules_its_key_and_reports_the_datasets_holding_its_data(world: World) -> None:
    started = time.perf_counter()
    receipt = erase_tenant("acme", tenant_keys=TEMPLATE, kms_options=world.options,
                           datasets=[str(world.orders), str(world.invoices)], subject_store=world.store_url,
                           pending_days=9, principal="admin", reason="contract ended")

    assert isinstance(receipt, ErasureReceipt)
    assert (receipt.kind, receipt.target, receipt.key_uri, receipt.principal) == (
        "tenant", "acme", "local://alias/tenant-acme", "admin")
    assert receipt.key_id == world.kms.describe_key("alias/tenant-acme").key_id
    assert receipt.store_id == world.store.store_id and receipt.already_erased is False
    assert receipt.state == "pending_deletion" and receipt.reason == "contract ended"
    # Only orders holds acme's data keys (invoices is globex's alone), and the count is the footer's.
    n = _tenant_deks(world.orders, "acme")
    assert n >= 1 and receipt.datasets == {str(world.orders): n}
    assert world.state("acme") == "PendingDeletion" and world.state("globex") == "Enabled"
    assert receipt.deletion_date and receipt.deletion_date[:10] >= receipt.at[:10]

    # The erasure log holds the receipt; a second erasure changes nothing and says so.
    rows = erasure_log(world.store_url, kind="tenant")
    assert [(r["id"], r["outcome"], r["principal"]) for r in rows] == [(receipt.receipt_id, "ok", "admin")]
    assert rows[0]["detail"]["datasets"] == {str(world.orders): n} and rows[0]["detail"]["tenant"] == "acme"
    again = erase_tenant("acme", tenant_keys={"*": TEMPLATE}, kms_options=world.options,
                         subject_store=world.store_url, principal="admin")
    assert again.already_erased is True and again.deletion_date == receipt.deletion_date
    assert again.receipt_id > receipt.receipt_id and again.datasets == {}
    assert world.kms.describe_key("alias/tenant-acme").state == "PendingDeletion"

    # Readers get acme's cells as null, globex's as written.
    got = read_decrypted_table(str(world.orders), kms_options=world.options, subject_store=world.store).sort_by("id")
    expected = world.orders_rows.column("email").to_pylist()
    emails = got.column("email").to_pylist()
    for i, tenant in enumerate(got.column("tenant").to_pylist()):
        assert emails[i] == (None if tenant == "acme" else expected[i])
    assert time.perf_counter() - started < 60


def test_a_refused_tenant_erasure_is_recorded_and_raised(world: World) -> None:
    # The reader may decrypt globex's data but not erase it: the KMS refuses, the log says so.
    world.kms.put_key_policy("alias/tenant-globex", {"admin": ["admin"], "reader": ["decrypt"]})
    with pytest.raises(AccessDeniedError, match="reader"):
        erase_tenant("globex", tenant_keys=TEMPLATE, kms_options=world.options, datasets=[str(world.invoices)],
                     subject_store=world.store_url, principal="reader", reason="test")
    assert world.state("globex") == "Enabled"
    rows = erasure_log(world.store_url)
    assert [(r["kind"], r["outcome"], r["principal"]) for r in rows] == [("tenant", "denied", "reader")]
    assert rows[0]["detail"]["tenant"] == "globex" and rows[0]["detail"]["error"].startswith("AccessDeniedError")
    denied = [e for e in world.kms.audit_events("alias/tenant-globex") if e["operation"] == "ScheduleKeyDeletion"]
    assert [(e["principal"], e["outcome"]) for e in denied] == [("reader", "AccessDeniedError")]

    # The erase role is enough (without decrypt); the same principal then succeeds.
    world.kms.put_key_policy("alias/tenant-globex", {"admin": ["admin"], "reader": ["decrypt"], "dpo": ["erase"]})
    receipt = erase_tenant("globex", tenant_keys=TEMPLATE, kms_options=world.options,
                           datasets=[str(world.orders), str(world.invoices)], subject_store=world.store_url,
                           principal="dpo")
    assert receipt.principal == "dpo" and set(receipt.datasets) == {str(world.orders), str(world.invoices)}
    assert receipt.datasets[str(world.invoices)] == _tenant_deks(world.invoices, "globex")
    assert [r["outcome"] for r in erasure_log(world.store_url, kind="tenant")] == ["denied", "ok"]


def test_erase_tenant_refuses_bad_arguments_before_any_kms_call(world: World) -> None:
    with pytest.raises(ConfigurationError, match="tenant id"):
        erase_tenant("ac me", tenant_keys=TEMPLATE, kms_options=world.options, subject_store=world.store_url)
    with pytest.raises(ConfigurationError, match="does not exist"):
        erase_tenant("acme", tenant_keys=TEMPLATE, kms_options=world.options, subject_store=world.store_url,
                     datasets=[str(world.root / "nowhere")])
    with pytest.raises(ConfigurationError, match="no key in tenant_keys"):
        erase_tenant("initech", tenant_keys={"acme": "local://alias/tenant-acme"}, kms_options=world.options,
                     subject_store=world.store_url)
    assert world.state("acme") == "Enabled" and erasure_log(world.store_url) == []
    with pytest.raises(ConfigurationError, match="kind"):
        erasure_log(world.store_url, kind="everything")


def test_erase_subject_receipt_idempotence_and_refusal(world: World) -> None:
    assert world.store.keys_for(["u1"])["u1"] is not None
    with pytest.raises(AccessDeniedError, match="intern"):
        erase_subject("u1", subject_store=world.store_url, principal="intern", datasets=[str(world.orders)])
    assert world.store.keys_for(["u1"])["u1"] is not None  # refused: still there

    receipt = erase_subject("u1", subject_store=world.store_url, principal="admin", reason="GDPR art. 17",
                            datasets=[str(world.orders), str(world.invoices)])
    assert (receipt.kind, receipt.target, receipt.store_id, receipt.principal) == (
        "subject", "u1", world.store.store_id, "admin")
    assert receipt.datasets == {str(world.orders): ["email"]} and receipt.already_erased is False
    assert receipt.key_uri is None and receipt.deletion_date is None and receipt.state == "erased"
    assert "u1" not in repr(receipt)
    subject_key_cache().clear()
    assert world.store.keys_for(["u1", "u2"]) == {"u1": None, "u2": world.store.keys_for(["u2"])["u2"]}
    again = erase_subject("u1", subject_store=world.store, datasets=[str(world.orders)])
    assert again.already_erased is True and again.receipt_id > receipt.receipt_id
    assert again.to_dict()["datasets"] == {str(world.orders): ["email"]}

    rows = erasure_log(world.store_url, kind="subject")
    assert [(r["outcome"], r["principal"]) for r in rows] == [("denied", "intern"), ("ok", "admin"), ("ok", "admin")]
    assert rows[1]["id"] == receipt.receipt_id and rows[1]["detail"]["datasets"] == [str(world.orders)]
    assert erasure_log(world.store, kind="tenant") == []

    # u1's cells read as null, everyone else's as written.
    got = read_decrypted_table(str(world.orders), kms_options=world.options, subject_store=world.store).sort_by("id")
    expected = world.orders_rows.column("email").to_pylist()
    for i, (user, email) in enumerate(zip(got.column("user_id").to_pylist(), got.column("email").to_pylist(),
                                          strict=True)):
        assert email == (None if user == "u1" else expected[i])
    with pytest.raises(ConfigurationError, match="principal"):
        erase_subject("u2", subject_store=world.store, principal="someone-else")


def test_inspect_reports_tenants_and_per_subject_columns(world: World) -> None:
    from spark_kms.jobs import inspect_dataset

    inspection = inspect_dataset(str(world.orders), kms_options=world.options)
    assert inspection.tenants == {t: _tenant_deks(world.orders, t) for t in TENANTS}
    assert inspection.subject_columns == {"email": world.store.store_id}
    data = inspection.to_dict()
    assert data["tenants"] == inspection.tenants and data["subject_columns"] == {"email": world.store.store_id}
    plain = inspect_dataset(str(world.invoices), kms_options=world.options)
    assert plain.tenants == {"globex": 1} and plain.subject_columns == {}


@pytest.mark.spark
def test_encrypt_and_decrypt_jobs_with_tenant_and_subject_keys(spark: Any, world: World) -> None:
    from spark_kms.errors import ErasedDataError
    from spark_kms.jobs import decrypt_dataset, encrypt_dataset

    source = world.root / "landing"
    source.mkdir()
    rows = pa.table({"id": pa.array(range(30), pa.int64()), "tenant": [TENANTS[i % 2] for i in range(30)],
                     "user_id": [f"s{i % 5}" for i in range(30)], "email": [f"m{i}@example.com" for i in range(30)]})
    pa.parquet.write_table(rows, source / "part-0.parquet")
    encrypted, plain = world.root / "enc", world.root / "plain"
    # s1 is erased before the job: its cells are written as erased. (A subject erased *after* the job would read as
    # null too, but Spark's reused Python workers keep the subject keys they used for the cache TTL,
    # $SPARK_KMS_SUBJECT_CACHE_TTL_S, 300 s by default: a decrypt in the same session within it still sees them.)
    early = erase_subject("s1", subject_store=world.store_url, principal="admin", datasets=[str(world.orders)])
    assert early.datasets == {str(world.orders): ["email"]}
    summary = encrypt_dataset(str(source), str(encrypted), columns=["email"], tenant_column="tenant",
                              tenant_keys=TEMPLATE, subject_column="user_id", subject_store=world.store_url,
                              kms_options=world.options, spark=spark)
    assert summary.rows == 30 and summary.details["tenant_keys"] == TEMPLATE
    assert summary.details["subject_store"] == world.store_url

    erase_tenant("acme", tenant_keys=TEMPLATE, kms_options=world.options, datasets=[str(encrypted)],
                 subject_store=world.store_url, principal="admin")
    receipt = erase_subject("s1", subject_store=world.store_url, principal="admin", datasets=[str(encrypted)])
    assert receipt.datasets == {str(encrypted): ["email"]} and receipt.already_erased is True

    decrypt_dataset(str(encrypted), str(plain), kms_options=world.options, spark=spark, subject_store=world.store_url)
    got = pa.parquet.read_table(plain).sort_by("id")
    assert got.column("id").to_pylist() == list(range(30))
    for tenant, user, email, want in zip(got.column("tenant").to_pylist(), got.column("user_id").to_pylist(),
                                         got.column("email").to_pylist(), rows.column("email").to_pylist(),
                                         strict=True):
        assert email == (None if tenant == "acme" or user == "s1" else want)

    before = sorted(p.name for p in plain.iterdir())
    with pytest.raises(ErasedDataError):
        decrypt_dataset(str(encrypted), str(plain), kms_options=world.options, spark=spark,
                        subject_store=world.store_url, on_erased="raise")
    assert sorted(p.name for p in plain.iterdir()) == before  # a failed decrypt leaves the destination alone
    with pytest.raises(ConfigurationError, match="on_erased"):
        decrypt_dataset(str(encrypted), str(plain), kms_options=world.options, spark=spark, on_erased="skip")


def test_erase_tenant_inspects_a_delta_table_too(world: World) -> None:
    from spark_kms import tables

    rows = pa.table({"id": pa.array(range(6), pa.int64()), "tenant": ["acme", "other"] * 3,
                     "email": [f"e{i}@example.com" for i in range(6)]})
    table = world.root / "delta"
    tables.encrypt_into_table(rows, str(table), format="delta", columns=["email"], kms_options=world.options,
                              tenant_keys=TEMPLATE, tenant_column="tenant")
    receipt = erase_tenant("other", tenant_keys=TEMPLATE, kms_options=world.options,
                           datasets=[str(table), str(world.orders)], subject_store=world.store_url, principal="admin")
    assert receipt.datasets == {str(table): 1}  # orders holds acme's and globex's data keys only
    assert world.state("other") == "PendingDeletion"
