"""Crypto-shredding in the file layer: per-tenant data keys, per-subject cells, erased cells on read.

Real parts only: the embedded local KMS (tenant keys scheduled for deletion through its admin API) and a real
SQLite subject key store under tmp_path. The Spark, job, table and CLI layers have their own tests; this file
pins what they all build on (BatchEncryptor, BatchDecryptor, read_decrypted_table).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import AES_256_GCM, AES_256_GCM_SUBJECT, KEY_TABLE_METADATA_KEY
from spark_kms.errors import ConfigurationError, DecryptionError, ErasedDataError, UnknownSubjectError
from spark_kms.kms import process_dek_cache
from spark_kms.parquet import (
    BatchDecryptor,
    BatchEncryptor,
    EncryptedParquetWriter,
    EncryptionSpec,
    TenantKeys,
    erased_counts,
    read_decrypted_table,
)
from spark_kms.parquet.tenants import TENANT_CONTEXT_KEY
from spark_kms.subjects import SubjectKeyStore

from .conftest import Kms

TENANTS = ("acme", "globex", "initech")
TEMPLATE = "local://alias/tenant-{tenant}"


@pytest.fixture
def tenant_kms(kms: Kms) -> Kms:
    for tenant in TENANTS:
        kms.admin.create_key(alias=f"alias/tenant-{tenant}")
    return kms


@pytest.fixture
def store(kms: Kms, tmp_path: Path) -> SubjectKeyStore:
    kms.admin.create_key(alias="alias/subjects")
    return SubjectKeyStore.open(f"sqlite://{tmp_path / 'subjects.db'}", kms.options, key_uri="local://alias/subjects",
                                create=True)


def people(n: int = 3000, subjects: int = 500) -> pa.Table:
    """Rows of three tenants, interleaved, each row one of ``subjects`` people; some values null."""
    return pa.table({
        "tenant": [TENANTS[i % 3] for i in range(n)],
        "user_id": [f"user-{(i * 7) % subjects:05d}" for i in range(n)],
        "email": [None if i % 11 == 0 else f"p{(i * 7) % subjects}@example.com" for i in range(n)],
        "amount": pa.array([i * 3 - 100 for i in range(n)], pa.int64()),
        "note": ["" if i % 13 == 0 else f"n{i}" for i in range(n)],
    })


def encrypt(table: pa.Table, kms: Kms, *, subjects: SubjectKeyStore | None = None, tenants: bool = True,
            **spec: object) -> tuple[pa.Table, BatchEncryptor]:
    columns = spec.pop("columns", ["email", "amount", "note"])
    enc = BatchEncryptor(
        EncryptionSpec(columns=columns, subject_column="user_id" if subjects else None, **spec),  # type: ignore[arg-type]
        None if tenants else "local://alias/pii",
        kms_options=kms.options, encryption_context={"dataset": "people"},
        tenant_keys=TenantKeys("tenant", TEMPLATE) if tenants else None, subject_store=subjects,
    )
    out = pa.Table.from_batches([enc.encrypt_batch(b) for b in table.to_batches(max_chunksize=700)])
    return out, enc


def expect_erased(source: pa.Table, back: pa.Table, erased_rows: set[int], columns=("email", "amount", "note")) -> None:
    for column in columns:
        want = source[column].to_pylist()
        got = back[column].to_pylist()
        for row, (w, g) in enumerate(zip(want, got, strict=True)):
            assert g == (None if row in erased_rows else w), (column, row)


# -- per-tenant keys ------------------------------------------------------------------------------------------
def test_one_data_key_per_tenant_under_the_tenants_own_kms_key(tenant_kms: Kms) -> None:
    source = people()
    out, enc = encrypt(source, tenant_kms)
    table = enc.key_table()
    # 5 batches of interleaved tenants, still one data key per tenant (and one GenerateDataKey each)
    assert enc.kms_calls == 3 and len(table.deks) == 3
    by_tenant = {e.encryption_context[TENANT_CONTEXT_KEY]: e for e in table.deks.values()}
    assert set(by_tenant) == set(TENANTS)
    for tenant, entry in by_tenant.items():
        assert entry.key_uri == f"local://alias/tenant-{tenant}" and entry.encryption_context["dataset"] == "people"
        assert entry.algorithm == AES_256_GCM
    # every row's cells name its tenant's data key; rows keep their order
    dek_of_row = [cell[1:9].hex() for cell in out["amount"].to_pylist()]
    for row, tenant in enumerate(source["tenant"].to_pylist()):
        assert dek_of_row[row] == by_tenant[tenant].dek_id
    back = BatchDecryptor(table, kms_options=tenant_kms.options).decrypt_table(out)
    assert back.equals(source)


def test_explicit_mapping_and_missing_tenant(tenant_kms: Kms) -> None:
    keys = TenantKeys.of(json.dumps({"acme": "local://alias/tenant-acme", "*": TEMPLATE}), column="tenant")
    assert keys.key_uri("acme") == "local://alias/tenant-acme" and keys.key_uri("globex").endswith("tenant-globex")
    only = TenantKeys("tenant", {"acme": "local://alias/tenant-acme"})
    with pytest.raises(ConfigurationError, match="tenant 'globex' has no key"):
        only.key_uri("globex")
    with pytest.raises(ConfigurationError, match="must contain \\{tenant\\}"):
        TenantKeys("tenant", "local://alias/one-key")
    enc = BatchEncryptor(EncryptionSpec(columns=["email"]), None, kms_options=tenant_kms.options,
                         tenant_keys=TenantKeys("tenant", TEMPLATE))
    bad = pa.table({"tenant": ["acme", None], "email": ["a", "b"]})
    with pytest.raises(ConfigurationError, match="null in 1 rows"):
        enc.encrypt_table(bad)
    with pytest.raises(ConfigurationError, match="tenant id is 1-128 characters"):
        enc.encrypt_table(pa.table({"tenant": ["../x"], "email": ["a"]}))
    with pytest.raises(ConfigurationError, match="join domain"):
        BatchEncryptor(EncryptionSpec(columns=["email"], deterministic=["email"]), None,
                       kms_options=tenant_kms.options, tenant_keys=TenantKeys("tenant", TEMPLATE))


def test_tenant_keys_with_row_binding_and_roll_over(tenant_kms: Kms) -> None:
    source = people(900)
    enc = BatchEncryptor(EncryptionSpec(columns=["email", "note"], row_binding="user_id"), None,
                         kms_options=tenant_kms.options, tenant_keys=TenantKeys("tenant", TEMPLATE),
                         max_cells_per_dek=250)
    out = enc.encrypt_table(source)
    table = enc.key_table()
    assert len(table.deks) > 3  # each tenant rolled over to new data keys
    assert {e.key_uri for e in table.deks.values()} == {TEMPLATE.format(tenant=t) for t in TENANTS}
    assert BatchDecryptor(table, kms_options=tenant_kms.options).decrypt_table(out).equals(source)


def test_erased_tenant_reads_as_null_or_raises(tenant_kms: Kms, tmp_path: Path, caplog) -> None:
    source = people()
    path = tmp_path / "people.parquet"
    with EncryptedParquetWriter(path, source.schema, EncryptionSpec(columns=["email", "amount", "note"]), None,
                                kms_options=tenant_kms.options, tenant_keys=TenantKeys("tenant", TEMPLATE)) as w:
        w.write_batch(source)
    tenant_kms.admin.schedule_key_deletion("alias/tenant-globex", 7)
    process_dek_cache().clear()
    with caplog.at_level(logging.WARNING, logger="spark_kms"):
        back = read_decrypted_table(path, kms_options=tenant_kms.options)
    globex = {i for i, t in enumerate(source["tenant"].to_pylist()) if t == "globex"}
    expect_erased(source, back, globex)
    counts = erased_counts(back)
    assert counts == {
        "email": sum(1 for i in globex if source["email"][i].as_py() is not None),
        "amount": len(globex), "note": len(globex),
    }
    assert "erased" in caplog.text and "p1@example.com" not in caplog.text
    assert back["tenant"].to_pylist() == source["tenant"].to_pylist()  # plain columns untouched
    with pytest.raises(ErasedDataError, match="cells were erased") as info:
        read_decrypted_table(path, kms_options=tenant_kms.options, on_erased="raise")
    assert "example.com" not in str(info.value)
    # a disabled key is not an erasure: it still fails the read
    tenant_kms.admin.disable_key("alias/tenant-acme")
    process_dek_cache().clear()
    from spark_kms.errors import KeyErasedError, KeyStateError

    with pytest.raises(KeyStateError) as disabled:
        read_decrypted_table(path, kms_options=tenant_kms.options)
    assert not isinstance(disabled.value, KeyErasedError)


# -- per-subject cells ----------------------------------------------------------------------------------------
def test_per_subject_cells_round_trip_and_spec(tenant_kms: Kms, store: SubjectKeyStore) -> None:
    source = people()
    out, enc = encrypt(source, tenant_kms, subjects=store)
    table = enc.key_table()
    for column in ("email", "amount", "note"):
        spec = table.columns[column]
        assert spec.algorithm == AES_256_GCM_SUBJECT and spec.subject == "user_id"
        assert spec.subject_store == store.store_id
    assert all(c is None or c[0] == 0x14 for c in out["email"].to_pylist())
    back = BatchDecryptor(table, kms_options=tenant_kms.options, subject_store=store).decrypt_table(out)
    assert back.equals(source)
    # the subject column is needed to read, and the store must be the one written with
    with pytest.raises(ConfigurationError, match="per subject"):
        BatchDecryptor(table, kms_options=tenant_kms.options, subject_store=store).decrypt_table(out.drop(["user_id"]))


def test_erasing_a_subject_nulls_their_cells_everywhere(tenant_kms: Kms, store: SubjectKeyStore, tmp_path: Path) -> None:
    source = people()
    path = tmp_path / "p.parquet"
    spec = EncryptionSpec(columns=["email", "amount", "note"], subject_column="user_id")
    with EncryptedParquetWriter(path, source.schema, spec, None, kms_options=tenant_kms.options,
                                tenant_keys=TenantKeys("tenant", TEMPLATE), subject_store=store) as w:
        w.write_batch(source)
    victim = "user-00007"
    record = store.erase(victim, reason="GDPR art. 17 request 1")
    assert not record.already_erased
    url = store.url
    back = read_decrypted_table(path, kms_options=tenant_kms.options, subject_store=url)
    rows = {i for i, s in enumerate(source["user_id"].to_pylist()) if s == victim}
    assert rows
    expect_erased(source, back, rows)
    assert erased_counts(back)["amount"] == len(rows)
    with pytest.raises(ErasedDataError):
        read_decrypted_table(path, kms_options=tenant_kms.options, subject_store=url, on_erased="raise")
    # both erasures at once: a tenant and a person
    tenant_kms.admin.schedule_key_deletion("alias/tenant-acme", 7)
    process_dek_cache().clear()
    back = read_decrypted_table(path, kms_options=tenant_kms.options, subject_store=url)
    acme = {i for i, t in enumerate(source["tenant"].to_pylist()) if t == "acme"}
    expect_erased(source, back, rows | acme)


def test_subject_cells_do_not_move_between_people(tenant_kms: Kms, store: SubjectKeyStore) -> None:
    source = pa.table({"user_id": ["a", "b"], "email": ["x@a", "y@b"]})
    out, enc = encrypt(source, tenant_kms, subjects=store, tenants=False, columns=["email"])
    swapped = out.set_column(1, "email", pa.array(list(reversed(out["email"].to_pylist())), pa.binary()))
    with pytest.raises(DecryptionError, match="authentication failed") as info:
        BatchDecryptor(enc.key_table(), kms_options=tenant_kms.options, subject_store=store).decrypt_table(swapped)
    assert "x@a" not in str(info.value)


def test_wrong_or_unknown_store(tenant_kms: Kms, store: SubjectKeyStore, tmp_path: Path) -> None:
    source = pa.table({"user_id": ["a", "b"], "email": ["x@a", "y@b"]})
    out, enc = encrypt(source, tenant_kms, subjects=store, tenants=False, columns=["email"])
    other = SubjectKeyStore.open(f"sqlite://{tmp_path / 'other.db'}", tenant_kms.options,
                                 key_uri="local://alias/subjects", create=True)
    with pytest.raises(ConfigurationError, match="was encrypted with subject key store"):
        BatchDecryptor(enc.key_table(), kms_options=tenant_kms.options, subject_store=other).decrypt_table(out)
    # a store restored without the people (same id, no keys, no erasure records) is an error, not nulls
    table = enc.key_table()
    spec = table.columns["email"]
    from dataclasses import replace

    table.columns["email"] = replace(spec, subject_store=other.store_id)
    with pytest.raises(UnknownSubjectError) as info:
        BatchDecryptor(table, kms_options=tenant_kms.options, subject_store=other).decrypt_table(out)
    assert "x@a" not in str(info.value)


def test_writing_for_an_erased_subject_writes_null(tenant_kms: Kms, store: SubjectKeyStore, caplog) -> None:
    store.keys_for(["a", "b"], create=True)
    store.erase("b")
    source = pa.table({"user_id": ["a", "b", "c"], "email": ["x@a", "y@b", "z@c"]})
    with caplog.at_level(logging.WARNING, logger="spark_kms"):
        out, enc = encrypt(source, tenant_kms, subjects=store, tenants=False, columns=["email"])
    assert enc.erased_on_write == 1 and out["email"][1].as_py() is None
    assert "y@b" not in caplog.text
    back = BatchDecryptor(enc.key_table(), kms_options=tenant_kms.options, subject_store=store).decrypt_table(out)
    assert back["email"].to_pylist() == ["x@a", None, "z@c"]
    assert store.erased(["a", "b", "c"]) == {"b"}  # the erased person was not given a new key


def test_footer_is_json_with_the_subject_fields(tenant_kms: Kms, store: SubjectKeyStore, tmp_path: Path) -> None:
    source = people(50, 10)
    path = tmp_path / "f.parquet"
    spec = EncryptionSpec(columns=["email"], subject_column="user_id")
    with EncryptedParquetWriter(path, source.schema, spec, "local://alias/pii", kms_options=tenant_kms.options,
                                subject_store=store) as w:
        w.write_batch(source)
    footer = json.loads(pq.read_metadata(path).metadata[KEY_TABLE_METADATA_KEY.encode()])
    assert footer["columns"]["email"]["subject"] == "user_id"
    assert footer["columns"]["email"]["subject_store"] == store.store_id
    assert footer["format_version"] == 2


def test_an_erased_data_key_is_asked_for_once_per_process(tenant_kms: Kms) -> None:
    # The Spark UDFs build a decryptor per batch: the KMS must not be asked again for every batch.
    from spark_kms.kms import kms_call_counts, reset_kms_call_counts

    source = people(300)
    out, enc = encrypt(source, tenant_kms)
    tenant_kms.admin.schedule_key_deletion("alias/tenant-globex", 7)
    process_dek_cache().clear()
    reset_kms_call_counts()
    for batch in out.to_batches(max_chunksize=50):
        decryptor = BatchDecryptor(enc.key_table(), kms_options=tenant_kms.options)
        decryptor.decrypt_batch(batch)
        assert decryptor.erased["amount"] == sum(1 for t in batch.column(0).to_pylist() if t == "globex")
    assert kms_call_counts() == {"local:Decrypt": 3}  # one per data key, the erased one included
    process_dek_cache().clear()  # a cleared cache forgets the verdict too: the KMS is asked again
    BatchDecryptor(enc.key_table(), kms_options=tenant_kms.options).decrypt_table(out)
    assert kms_call_counts() == {"local:Decrypt": 6}
