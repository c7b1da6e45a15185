"""Rotation jobs on crypto-shredded data (issue #17): a dataset written with per-tenant keys and per-subject cells,
then rewrapped and re-encrypted after a tenant's KMS key and a person's subject key were erased.

Real parts: the embedded local KMS (one key per tenant, one for the subject store's KEK) and a SQLite subject
key store in tmp_path. 3 tenants x 1,000 rows, 300 people (each person's 10 rows span the three tenants), three
files of 1,000 rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spark_kms.crypto import AES_256_GCM
from spark_kms.errors import ConfigurationError
from spark_kms.jobs import reencrypt_dataset, rewrap_dataset
from spark_kms.kms import KmsConfig, process_dek_cache
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, erased_counts, read_decrypted_table
from spark_kms.parquet.dataset import Dataset
from spark_kms.parquet.tenants import TENANT_CONTEXT_KEY
from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache

TENANTS = ("A", "B", "C")
TEMPLATE = "local://alias/tenant-{tenant}"
ROWS = 3000
FILES = 3
SPEC = EncryptionSpec(columns=["email", "amount"], subject_column="user_id")
ERASED_SUBJECT = "person-7"  # rows 70..79: tenants B, C, A, B, C, A, B, C, A, B


def source(start: int = 0, n: int = ROWS) -> pa.Table:
    ids = range(start, start + n)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "tenant": [TENANTS[i % 3] for i in ids],
        "user_id": [f"person-{(i // 10) % 300}" for i in ids],
        "email": [f"user{i}@example.com" for i in ids],
        "amount": pa.array([i * 1.25 for i in ids], pa.float64()),
    })


@dataclass
class World:
    root: Path
    kms: LocalKms
    kms_options: dict[str, dict[str, Any]]
    store: SubjectKeyStore
    store_url: str
    expected: pa.Table

    def key_uri(self, tenant: str) -> str:
        return TEMPLATE.format(tenant=tenant)

    def erase_tenant(self, tenant: str) -> None:
        KmsConfig.of(self.kms_options).provider(self.key_uri(tenant)).schedule_key_deletion(7)

    def rotate(self, *tenants: str) -> None:
        for t in tenants:
            self.kms.rotate_key(f"alias/tenant-{t}")

    def primary(self, key_uri: str) -> tuple[str, str]:
        d = KmsConfig.of(self.kms_options).provider(key_uri).describe_key()
        return d.key_id, d.primary_version

    def read(self) -> pa.Table:
        process_dek_cache().clear()
        subject_key_cache().clear()
        t = read_decrypted_table(str(self.root), kms_options=self.kms_options, subject_store=self.store_url)
        return t.select(self.expected.column_names).sort_by("id").replace_schema_metadata(t.schema.metadata)

    def deks(self) -> dict[str, Any]:
        return Dataset.open(str(self.root)).effective_deks()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("SPARK_KMS_SUBJECT_STORE", str(tmp_path / "default-subjects.db"))  # never ~/.spark_kms
    subject_key_cache().clear()
    kms = LocalKms(tmp_path / "keystore")
    for t in TENANTS:
        kms.create_key(alias=f"alias/tenant-{t}")
    kms.create_key(alias="alias/subjects")
    options = {"local": {"keystore": str(tmp_path / "keystore")}}
    url = f"sqlite://{tmp_path / 'subjects.db'}"
    store = SubjectKeyStore.open(url, options, key_uri="local://alias/subjects", create=True)
    root = tmp_path / "orders"
    data = source()
    per = ROWS // FILES
    for f in range(FILES):
        part = data.slice(f * per, per)
        path = root / f"day=2024-01-0{f + 1}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        with EncryptedParquetWriter(path, part.schema, SPEC, None, kms_options=options,
                                    encryption_context={"dataset": "orders"},
                                    tenant_keys={"column": "tenant", "keys": TEMPLATE}, subject_store=store) as w:
            w.write_batch(part)
    return World(root, kms, options, store, url, data)


def _tenant_rows(table: pa.Table, tenants: set[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column("tenant"), value_set=pa.array(sorted(tenants))))


def _assert_read(world: World, *, erased_tenants: set[str], erased_subjects: set[str], counted: bool) -> None:
    got = world.read()
    assert got.num_rows == ROWS
    dead = pc.or_(pc.is_in(got.column("tenant"), value_set=pa.array(sorted(erased_tenants) or [""])),
                  pc.is_in(got.column("user_id"), value_set=pa.array(sorted(erased_subjects) or [""])))
    live = pc.invert(dead)
    plain = world.expected.select(got.column_names)
    assert got.filter(live).replace_schema_metadata(None).equals(plain.filter(live)), "live rows differ from source"
    n_dead = pc.sum(dead.cast(pa.int64())).as_py()
    for column in ("email", "amount"):
        assert got.filter(dead).column(column).null_count == n_dead
        assert got.filter(live).column(column).null_count == 0
    assert erased_counts(got) == ({"amount": n_dead, "email": n_dead} if counted and n_dead else {})


def test_rewrap_rewraps_each_tenant_dek_under_its_own_key_and_skips_an_erased_tenant(world: World) -> None:
    before = world.deks()
    assert len(before) == FILES * len(TENANTS)
    assert {e.key_uri for e in before.values()} == {world.key_uri(t) for t in TENANTS}

    world.rotate(*TENANTS)
    first = rewrap_dataset(str(world.root), kms_options=world.kms_options)

    assert first.status == "succeeded"
    assert first.deks == len(before) and first.details["deks_erased"] == 0
    after = world.deks()
    for dek_id, entry in after.items():
        old = before[dek_id]
        assert entry.key_uri == old.key_uri  # each DEK stays under its own tenant's key...
        assert (entry.key_id, entry.key_version) == world.primary(entry.key_uri)  # ...at its new version
        assert entry.key_version != old.key_version
        assert entry.encryption_context == old.encryption_context  # tenant and dataset kept
        assert entry.encryption_context[TENANT_CONTEXT_KEY] == entry.key_uri.rsplit("-", 1)[1]
    _assert_read(world, erased_tenants=set(), erased_subjects=set(), counted=True)

    world.erase_tenant("B")
    world.rotate("A", "C")  # an erased key cannot rotate
    second = rewrap_dataset(str(world.root), kms_options=world.kms_options)

    assert second.status == "succeeded"
    b_deks = {d for d, e in after.items() if e.key_uri == world.key_uri("B")}
    assert second.deks == len(after) - len(b_deks) == 6
    assert second.details["deks_erased"] == len(b_deks) == 3
    assert second.details["erased_key_uris"] == [world.key_uri("B")]
    final = world.deks()
    for dek_id in b_deks:  # the manifest keeps an erased tenant's old entries
        assert final[dek_id] == after[dek_id]
    for dek_id in set(final) - b_deks:
        assert (final[dek_id].key_id, final[dek_id].key_version) == world.primary(final[dek_id].key_uri)
    _assert_read(world, erased_tenants={"B"}, erased_subjects=set(), counted=True)

    # Rewrapping under another key: the live tenants' DEKs move, ReEncrypt of B's refuses (KeyErasedError),
    # and they are counted, not fatal.
    world.kms.create_key(alias="alias/archive")
    third = rewrap_dataset(str(world.root), kms_options=world.kms_options, key_uri="local://alias/archive")
    assert third.status == "succeeded"
    assert third.deks == 6 and third.details["deks_erased"] == 3
    assert {e.key_uri for d, e in world.deks().items() if d not in b_deks} == {"local://alias/archive"}
    _assert_read(world, erased_tenants={"B"}, erased_subjects=set(), counted=True)


def test_reencrypt_keeps_tenant_keys_and_writes_erased_cells_as_null(world: World) -> None:
    before = world.deks()
    world.erase_tenant("B")
    world.store.erase(ERASED_SUBJECT)
    _assert_read(world, erased_tenants={"B"}, erased_subjects={ERASED_SUBJECT}, counted=True)

    with pytest.raises(ConfigurationError, match="per tenant"):
        reencrypt_dataset(str(world.root), kms_options=world.kms_options, key_uri=world.key_uri("A"),
                          subject_store=world.store_url)

    # No force: every file holds a DEK of the erased tenant, so every file is behind.
    summary = reencrypt_dataset(str(world.root), kms_options=world.kms_options, subject_store=world.store_url)

    assert summary.status == "succeeded" and summary.files == FILES
    b_rows = ROWS // 3
    s_live_rows = 6  # person-7's rows of tenants A and C
    assert summary.details["erased_cells"] == {"amount": b_rows + s_live_rows, "email": b_rows + s_live_rows}
    assert summary.details["erased_cells_dropped"] == 2 * (b_rows + s_live_rows)
    assert summary.details["tenant_keys"] == {t: world.key_uri(t) for t in TENANTS}
    assert summary.details["erased_tenant_keys"] == [world.key_uri("B")]
    after = world.deks()
    assert not set(after) & set(before)  # all new data keys...
    assert summary.deks == len(after) == FILES * 2  # ...one per (file, live tenant), none for B
    for entry in after.values():
        tenant = entry.encryption_context[TENANT_CONTEXT_KEY]
        assert tenant in ("A", "C")
        assert entry.key_uri == world.key_uri(tenant)  # under the same tenant key as the old DEK
        assert (entry.key_id, entry.key_version) == world.primary(entry.key_uri)
        assert entry.algorithm == AES_256_GCM
        assert entry.encryption_context["dataset"] == "orders"
        assert entry.encryption_context["spark_kms.job_id"] == summary.run_id
    # Erased cells are stored as null now: nothing reads as "erased" any more, the values are gone.
    _assert_read(world, erased_tenants={"B"}, erased_subjects={ERASED_SUBJECT}, counted=False)

    second = reencrypt_dataset(str(world.root), kms_options=world.kms_options, subject_store=world.store_url,
                               force=True)
    assert second.status == "succeeded" and second.files == FILES
    assert second.details["erased_cells_dropped"] == 0
    assert second.details["tenant_keys"] == {"A": world.key_uri("A"), "C": world.key_uri("C")}
    again = world.deks()
    assert not set(again) & set(after)
    assert {(e.key_uri, e.encryption_context[TENANT_CONTEXT_KEY]) for e in again.values()} == {
        (world.key_uri("A"), "A"), (world.key_uri("C"), "C")}
    _assert_read(world, erased_tenants={"B"}, erased_subjects={ERASED_SUBJECT}, counted=False)


def test_reencrypt_without_the_subject_store_refuses_and_is_resumed(world: World, tmp_path: Path) -> None:
    other = f"sqlite://{tmp_path / 'other.db'}"
    SubjectKeyStore.open(other, world.kms_options, key_uri="local://alias/subjects", create=True)
    with pytest.raises(ConfigurationError, match="subject key store"):
        reencrypt_dataset(str(world.root), kms_options=world.kms_options, subject_store=other, force=True)
    # The failed per-tenant run is pending; the same request (no run id, no key) resumes it.
    done = reencrypt_dataset(str(world.root), kms_options=world.kms_options, subject_store=world.store_url,
                             force=True)
    assert done.status == "succeeded" and done.details.get("resumed") is True and done.files == FILES
    _assert_read(world, erased_tenants=set(), erased_subjects=set(), counted=True)


def test_reencrypt_of_per_subject_cells_under_one_key_drops_an_erased_subject(tmp_path: Path, world: World) -> None:
    # No tenant keys: one KMS key, per-subject cells only (the ordinary writer path of the re-encrypt).
    world.kms.create_key(alias="alias/orders")
    root = tmp_path / "single"
    data = source(0, 1000)
    path = root / "part-0.parquet"
    path.parent.mkdir(parents=True)
    with EncryptedParquetWriter(path, data.schema, SPEC, "local://alias/orders", kms_options=world.kms_options,
                                subject_store=world.store) as w:
        w.write_batch(data)
    world.store.erase(ERASED_SUBJECT)
    world.kms.rotate_key("alias/orders")

    summary = reencrypt_dataset(str(root), kms_options=world.kms_options, subject_store=world.store_url)

    assert summary.status == "succeeded" and summary.files == 1
    assert summary.details["erased_cells"] == {"amount": 10, "email": 10}
    assert "tenant_keys" not in summary.details and summary.details["target_key_uri"] == "local://alias/orders"
    entries = Dataset.open(str(root)).effective_deks()
    assert {(e.key_uri, e.key_version) for e in entries.values()} == {("local://alias/orders", "2")}
    process_dek_cache().clear()
    got = read_decrypted_table(str(root), kms_options=world.kms_options, subject_store=world.store_url)
    got = got.select(data.column_names).sort_by("id")
    dead = pc.equal(got.column("user_id"), ERASED_SUBJECT)
    assert got.filter(dead).column("email").null_count == 10
    assert got.filter(pc.invert(dead)).equals(data.filter(pc.invert(dead)))
