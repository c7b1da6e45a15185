"""Delta tables with per-tenant keys and per-subject cells (issue #17, crypto-shredding): written by
``encrypt_into_table`` at version 0 and appended at version 1, then a tenant's KMS key and a person's subject key
erased; the readers return the erased cells as null in the current snapshot and in the older one, or raise with
``on_erased="raise"``; rewrap and re-encrypt keep each tenant's key and drop the erased cells.

Real parts: delta-rs, the embedded local KMS (a key per tenant), a SQLite subject key store in tmp_path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spark_kms.errors import ErasedDataError
from spark_kms.kms import KmsConfig, process_dek_cache
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import erased_counts
from spark_kms.parquet.tenants import TENANT_CONTEXT_KEY
from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache
from spark_kms.tables import encrypt_into_table, read_table_decrypted, reencrypt_table, rewrap_table
from spark_kms.tables.keys import load_table_keys
from spark_kms.tables.snapshot import open_table

TENANTS = ("A", "B", "C")
TEMPLATE = "local://alias/tenant-{tenant}"
ERASED_SUBJECT = "person-7"  # rows 70..79, tenants B, C, A, B, C, A, B, C, A, B: 6 rows of live tenants
HALF = 1500


def source(start: int, n: int) -> pa.Table:
    ids = range(start, start + n)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "tenant": [TENANTS[i % 3] for i in ids],
        "user_id": [f"person-{(i // 10) % 300}" for i in ids],
        "email": [f"user{i}@example.com" for i in ids],
        "amount": pa.array([i * 1.25 for i in ids], pa.float64()),
    })


@dataclass
class Table:
    root: Path
    kms: LocalKms
    kms_options: dict[str, dict[str, Any]]
    store: SubjectKeyStore
    store_url: str

    def read(self, version: int | None = None, on_erased: str = "null") -> pa.Table:
        process_dek_cache().clear()
        subject_key_cache().clear()
        t = read_table_decrypted(str(self.root), version=version, kms_options=self.kms_options,
                                 subject_store=self.store_url, on_erased=on_erased)
        return t.sort_by("id").replace_schema_metadata(t.schema.metadata)

    def deks(self) -> dict[str, Any]:
        return load_table_keys(open_table(str(self.root)).snapshot()).effective_deks()

    def erase(self) -> None:
        KmsConfig.of(self.kms_options).provider(TEMPLATE.format(tenant="B")).schedule_key_deletion(7)
        self.store.erase(ERASED_SUBJECT)


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Table:
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
    kw: dict[str, Any] = {"columns": ["email", "amount"], "tenant_keys": TEMPLATE, "tenant_column": "tenant",
                          "subject_column": "user_id", "subject_store": url, "kms_options": options}
    first = encrypt_into_table(source(0, HALF), str(root), format="delta", **kw)
    second = encrypt_into_table(source(HALF, HALF), str(root), **kw)
    assert (first.details["table_version"], second.details["table_version"]) == (0, 1)
    return Table(root, kms, options, store, url)


def _check(got: pa.Table, expected: pa.Table, *, counted: bool) -> None:
    """Tenant B's and person-7's cells null (counted when ``counted``), every other value as written."""
    assert got.num_rows == expected.num_rows
    dead = pc.or_(pc.equal(got.column("tenant"), "B"), pc.equal(got.column("user_id"), ERASED_SUBJECT))
    live = pc.invert(dead)
    want = expected.select(got.column_names)
    assert got.filter(live).replace_schema_metadata(None).equals(want.filter(live))
    n_dead = pc.sum(dead.cast(pa.int64())).as_py()
    for column in ("email", "amount"):
        assert got.filter(dead).column(column).null_count == n_dead
    assert erased_counts(got) == ({"amount": n_dead, "email": n_dead} if counted else {})


def test_delta_table_reads_erased_cells_as_null_now_and_in_older_versions(table: Table) -> None:
    everything = pa.concat_tables([source(0, HALF), source(HALF, HALF)])
    assert table.read().select(everything.column_names).replace_schema_metadata(None).equals(everything)
    deks = table.deks()
    assert {(e.key_uri, e.encryption_context[TENANT_CONTEXT_KEY]) for e in deks.values()} == {
        (TEMPLATE.format(tenant=t), t) for t in TENANTS}
    assert len(deks) == 2 * len(TENANTS)  # one per (file, tenant)

    table.erase()

    current = table.read()
    _check(current, everything, counted=True)
    assert erased_counts(current)["email"] == 1000 + 6
    old = table.read(version=0)  # time travel: the older snapshot's files hold the same erased keys
    _check(old, source(0, HALF), counted=True)
    assert erased_counts(old)["email"] == 500 + 6
    for version in (None, 0):
        with pytest.raises(ErasedDataError):
            table.read(version=version, on_erased="raise")


def test_delta_table_rewrap_and_reencrypt_after_erasure_keep_tenant_keys(table: Table) -> None:
    everything = pa.concat_tables([source(0, HALF), source(HALF, HALF)])
    before = table.deks()
    table.erase()
    for t in ("A", "C"):
        table.kms.rotate_key(f"alias/tenant-{t}")

    rewrapped = rewrap_table(str(table.root), kms_options=table.kms_options)
    assert rewrapped.status == "succeeded"
    assert rewrapped.deks == 4 and rewrapped.details["deks_erased"] == 2
    assert rewrapped.details["erased_key_uris"] == [TEMPLATE.format(tenant="B")]
    _check(table.read(), everything, counted=True)

    summary = reencrypt_table(str(table.root), kms_options=table.kms_options, subject_store=table.store_url)
    assert summary.status == "succeeded" and summary.files == 2
    assert summary.details["erased_cells"] == {"amount": 1006, "email": 1006}
    after = table.deks()
    assert not set(after) & set(before) and len(after) == 4
    for entry in after.values():
        tenant = entry.encryption_context[TENANT_CONTEXT_KEY]
        assert tenant in ("A", "C") and entry.key_uri == TEMPLATE.format(tenant=tenant)
        assert entry.encryption_context["spark_kms.job_id"] == summary.run_id
    _check(table.read(), everything, counted=False)  # the erased values are gone from the current files
    # The version before the re-encrypt still reads (its files are there until vacuum), erased cells null.
    _check(table.read(version=1), everything, counted=True)
