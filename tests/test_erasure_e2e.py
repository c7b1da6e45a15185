"""Issue 17's acceptance scenario, end to end through the public entry points.

Three tenants and 10,000 people (each person belongs to one tenant and has two rows), written with per-tenant
KMS keys and per-person cells, by Spark (`write_encrypted`) into a dataset and by the table writer into a Delta
table. Then one tenant and one person are erased -- first by principals without the erase permission (refused
and audited), then for real, then again (idempotent) -- and every reader must return every other value equal
to the source and the erased ones as null (or raise, when asked): the pyarrow reader, `read_encrypted` (Python
UDFs and the JVM fast path's automatic fallback), `format("spark_kms")`, SQL `kms_decrypt`, the decrypt job,
`count_erased`, and again after a rewrap, after a re-encrypt, and in the Delta table's older snapshot.

Real parts: the embedded local KMS (key policies, scheduled deletion, its audit log), a SQLite subject key store
in tmp_path, local Spark, delta-rs. The SIGKILL-mid-erasure case is in tests/subjects/test_crash.py.

Caches: this test process reads only after the erasures (a process that unwrapped a key before an erasure
keeps it in its caches until they expire: docs/ERASURE.md), so every read here is a "job started afterwards".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spark_kms.errors import AccessDeniedError, ErasedDataError
from spark_kms.kms import process_dek_cache
from spark_kms.kms.local import LocalKms
from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache

pytestmark = [pytest.mark.spark, pytest.mark.slow]

TENANTS = ("acme", "globex", "initech")
TEMPLATE = "local://alias/tenant-{tenant}"
PEOPLE = 10_000
ERASED_TENANT = "globex"
ERASED_PERSON = "person-00042"  # a person of tenant acme (42 % 3 == 0)
PII = ["email", "phone", "amount"]


def source_table() -> pa.Table:
    rows = []
    for i in range(PEOPLE * 2):
        person = i % PEOPLE
        rows.append({
            "row_id": i,
            "tenant": TENANTS[person % 3],
            "user_id": f"person-{person:05d}",
            "email": None if i % 17 == 0 else f"p{person}.{i}@example.com",
            "phone": f"+44 20 7946 {person:04d}"[: 12 + i % 5],
            "amount": (i * 37) % 100_000 - 5_000,
        })
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("row_id", pa.int64()), ("tenant", pa.string()), ("user_id", pa.string()), ("email", pa.string()),
        ("phone", pa.string()), ("amount", pa.int64()),
    ]))


def expected_after_erasure(source: pa.Table) -> list[dict[str, Any]]:
    out = []
    for row in source.to_pylist():
        if row["tenant"] == ERASED_TENANT or row["user_id"] == ERASED_PERSON:
            row = {**row, **dict.fromkeys(PII)}
        out.append(row)
    return out


def by_row_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: r[k] for k in ("row_id", "tenant", "user_id", *PII)} for r in rows),
                  key=lambda r: r["row_id"])


def fresh_process_caches() -> None:
    """What a new process starts with (this test process plays every reader in turn)."""
    process_dek_cache().clear()
    subject_key_cache().clear()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> dict[str, Any]:
    from spark_kms.spark import write_encrypted
    from spark_kms.tables import encrypt_into_table

    root = tmp_path_factory.mktemp("erasure_e2e")
    keystore = root / "keystore"
    admin = LocalKms(keystore, principal="key-admin")
    for tenant in TENANTS:
        # Everyone may encrypt and decrypt; only "eraser" may schedule deletion (and "key-admin" administer).
        admin.create_key(alias=f"alias/tenant-{tenant}")
        admin.put_key_policy(f"alias/tenant-{tenant}",
                             {"*": ["encrypt", "decrypt"], "eraser": ["erase"], "key-admin": ["admin"]})
    admin.create_key(alias="alias/subjects")
    kms = {"local": {"keystore": str(keystore)}}
    store_url = f"sqlite://{root / 'subjects.db'}"
    store = SubjectKeyStore.open(store_url, kms, key_uri="local://alias/subjects", principal="dpo", create=True)
    store.grant("eraser", "erase")  # "*" may read and write keys (the store's default), only these may erase
    source = source_table()
    dataset = str(root / "people")
    write_encrypted(spark.createDataFrame(source.to_pandas()).repartition(4), dataset, columns=PII,
                    tenant_column="tenant", tenant_keys=TEMPLATE, subject_column="user_id",
                    subject_store=store_url, kms_options=kms)
    delta = str(root / "people_delta")
    encrypt_into_table(source, delta, format="delta", columns=PII, tenant_keys=TEMPLATE, tenant_column="tenant",
                       subject_column="user_id", subject_store=SubjectKeyStore.open(
                           store_url, kms, principal="pipeline"), kms_options=kms)
    return {"root": root, "kms": kms, "admin": admin, "store_url": store_url, "store": store, "source": source,
            "dataset": dataset, "delta": delta, "keystore": keystore}


@pytest.fixture(scope="module")
def erased(world: dict[str, Any]) -> dict[str, Any]:
    from spark_kms.erasure import erase_subject, erase_tenant, erasure_log

    kms, url, dataset, delta = world["kms"], world["store_url"], world["dataset"], world["delta"]
    # 1. principals without the erase permission are refused, and the refusals are audited
    with pytest.raises(AccessDeniedError):
        erase_tenant(ERASED_TENANT, tenant_keys=TEMPLATE, datasets=[dataset, delta], subject_store=url,
                     kms_options={"local": {**kms["local"], "principal": "analyst"}}, principal="analyst")
    with pytest.raises(AccessDeniedError):
        erase_subject(ERASED_PERSON, subject_store=SubjectKeyStore.open(url, kms, principal="analyst"),
                      datasets=[dataset])
    denied = [e for e in erasure_log(subject_store=url) if e["outcome"] == "denied"]
    assert len(denied) == 2 and {e["principal"] for e in denied} == {"analyst"}
    kms_audit = [json.loads(line) for line in (world["keystore"] / "audit.log").read_text().splitlines()]
    assert any(e.get("operation") == "ScheduleKeyDeletion" and e.get("principal") == "analyst"
               and e.get("outcome") != "ok" for e in kms_audit)
    # 2. the real erasures, by the eraser
    eraser_kms = {"local": {**kms["local"], "principal": "eraser"}}
    tenant_receipt = erase_tenant(ERASED_TENANT, tenant_keys=TEMPLATE, datasets=[dataset, delta],
                                  subject_store=url, kms_options=eraser_kms, principal="eraser",
                                  reason="contract ended")
    person_receipt = erase_subject(ERASED_PERSON, subject_store=SubjectKeyStore.open(url, kms, principal="eraser"),
                                   datasets=[dataset, delta], reason="GDPR art. 17")
    # 3. a second erasure is idempotent
    again = erase_tenant(ERASED_TENANT, tenant_keys=TEMPLATE, datasets=[dataset], subject_store=url,
                         kms_options=eraser_kms, principal="eraser")
    again_person = erase_subject(ERASED_PERSON, subject_store=SubjectKeyStore.open(url, kms, principal="eraser"))
    assert not tenant_receipt.already_erased and again.already_erased
    assert not person_receipt.already_erased and again_person.already_erased
    fresh_process_caches()
    return {"tenant": tenant_receipt, "person": person_receipt}


def test_receipts_name_the_key_and_the_affected_datasets(world, erased) -> None:
    tenant = erased["tenant"].to_dict()
    assert tenant["kind"] == "tenant" and tenant["key_uri"] == TEMPLATE.format(tenant=ERASED_TENANT)
    assert tenant["principal"] == "eraser" and tenant["deletion_date"]
    assert set(map(str, tenant["datasets"])) >= {world["dataset"], world["delta"]} or len(tenant["datasets"]) == 2
    person = erased["person"].to_dict()
    assert person["kind"] == "subject" and person["store_id"] == world["store"].store_id
    assert len(person["datasets"]) == 2
    assert world["admin"].describe_key("alias/tenant-globex").erased


def test_pyarrow_reader(world, erased) -> None:
    from spark_kms.parquet import erased_counts, read_decrypted_table

    table = read_decrypted_table(world["dataset"], kms_options=world["kms"], subject_store=world["store_url"])
    assert by_row_id(table.to_pylist()) == by_row_id(expected_after_erasure(world["source"]))
    counts = erased_counts(table)
    erased_rows = [r for r in world["source"].to_pylist()
                   if r["tenant"] == ERASED_TENANT or r["user_id"] == ERASED_PERSON]
    assert counts["amount"] == len(erased_rows)
    assert counts["email"] == sum(1 for r in erased_rows if r["email"] is not None)
    with pytest.raises(ErasedDataError):
        read_decrypted_table(world["dataset"], kms_options=world["kms"], subject_store=world["store_url"],
                             on_erased="raise")


@pytest.mark.parametrize("fast_path", [False, "auto"])
def test_read_encrypted(world, erased, spark, fast_path) -> None:
    from spark_kms.spark import read_encrypted

    df = read_encrypted(spark, world["dataset"], kms_options=world["kms"], subject_store=world["store_url"],
                        fast_path=fast_path)
    assert by_row_id([r.asDict() for r in df.collect()]) == by_row_id(expected_after_erasure(world["source"]))


def test_read_encrypted_raises_when_asked(world, erased, spark) -> None:
    from spark_kms.spark import errors_translated, read_encrypted

    df = read_encrypted(spark, world["dataset"], kms_options=world["kms"], subject_store=world["store_url"],
                        on_erased="raise")
    with pytest.raises(ErasedDataError), errors_translated():
        df.select("amount").collect()


def test_data_source_reader(world, erased, spark) -> None:
    df = (spark.read.format("spark_kms").option("kms_options", json.dumps(world["kms"]))
          .option("subject_store", world["store_url"]).load(world["dataset"]))
    assert by_row_id([r.asDict() for r in df.collect()]) == by_row_id(expected_after_erasure(world["source"]))


def test_sql(world, erased, spark) -> None:
    from spark_kms.spark.sql import register_functions

    register_functions(spark, kms_options=world["kms"], subject_store=world["store_url"])
    spark.read.parquet(world["dataset"]).createOrReplaceTempView("people_e2e")
    rows = spark.sql(
        "SELECT row_id, tenant, user_id, kms_decrypt(email, 'email', user_id) AS email, "
        "kms_decrypt(phone, 'phone', user_id) AS phone, "
        "CAST(kms_decrypt(amount, 'amount', user_id) AS BIGINT) AS amount FROM people_e2e"
    ).collect()
    assert by_row_id([r.asDict() for r in rows]) == by_row_id(expected_after_erasure(world["source"]))


def test_decrypt_job_and_count_erased(world, erased, spark, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from spark_kms.jobs import decrypt_dataset
    from spark_kms.spark import count_erased

    out = tmp_path / "plain"
    summary = decrypt_dataset(world["dataset"], str(out), kms_options=world["kms"],
                              subject_store=world["store_url"], spark=spark)
    rows = pq.read_table(out).to_pylist()
    assert by_row_id(rows) == by_row_id(expected_after_erasure(world["source"]))
    counts = count_erased(spark, world["dataset"], kms_options=world["kms"], subject_store=world["store_url"])
    erased_rows = [r for r in world["source"].to_pylist()
                   if r["tenant"] == ERASED_TENANT or r["user_id"] == ERASED_PERSON]
    assert counts["amount"] == counts["phone"] == len(erased_rows)
    assert summary.details["erased_cells"] == {c: n for c, n in counts.items() if n}  # the job says how many


def test_delta_table_snapshots(world, erased) -> None:
    from spark_kms.tables import encrypt_into_table, read_table_decrypted

    more = world["source"].slice(0, 30).set_column(0, "row_id", pa.array(range(10**6, 10**6 + 30), pa.int64()))
    # per-tenant keys of live tenants only: the erased tenant's key cannot make data keys any more
    more = more.filter(pa.compute.not_equal(more["tenant"], ERASED_TENANT))
    encrypt_into_table(more, world["delta"], columns=PII, tenant_keys=TEMPLATE, tenant_column="tenant",
                       subject_column="user_id", subject_store=SubjectKeyStore.open(
                           world["store_url"], world["kms"], principal="pipeline"), kms_options=world["kms"])
    old = read_table_decrypted(world["delta"], version=0, kms_options=world["kms"], subject_store=world["store_url"])
    assert by_row_id(old.to_pylist()) == by_row_id(expected_after_erasure(world["source"]))
    with pytest.raises(ErasedDataError):
        read_table_decrypted(world["delta"], version=0, kms_options=world["kms"], subject_store=world["store_url"],
                             on_erased="raise")
    now = read_table_decrypted(world["delta"], kms_options=world["kms"], subject_store=world["store_url"])
    assert now.num_rows == world["source"].num_rows + more.num_rows


def test_after_rewrap_and_reencrypt(world, erased, spark) -> None:
    from spark_kms.jobs import reencrypt_dataset, rewrap_dataset
    from spark_kms.parquet import read_decrypted_table

    admin = world["admin"]
    for tenant in ("acme", "initech"):
        admin.rotate_key(f"alias/tenant-{tenant}")
    rewrap = rewrap_dataset(world["dataset"], kms_options=world["kms"])
    assert rewrap.details.get("deks_erased", 0) >= 1  # the erased tenant's data keys cannot be rewrapped
    fresh_process_caches()
    expected = by_row_id(expected_after_erasure(world["source"]))
    table = read_decrypted_table(world["dataset"], kms_options=world["kms"], subject_store=world["store_url"])
    assert by_row_id(table.to_pylist()) == expected
    reencrypt_dataset(world["dataset"], kms_options=world["kms"], subject_store=world["store_url"], force=True)
    fresh_process_caches()
    table = read_decrypted_table(world["dataset"], kms_options=world["kms"], subject_store=world["store_url"])
    assert by_row_id(table.to_pylist()) == expected
    # the erased tenant's data keys are gone from the files; every remaining key is a live tenant's
    from spark_kms.parquet import Dataset

    keys = Dataset.open(world["dataset"], kms_options=world["kms"]).key_table()
    assert {e.key_uri for e in keys.deks.values()} == {TEMPLATE.format(tenant=t) for t in ("acme", "initech")}
