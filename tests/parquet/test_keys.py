"""Data keys in the file layer: one GenerateDataKey per writer, roll-over, the dataset-level
deterministic key, blind indexes, lazy unwrapping at most once per DEK per process."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX, dek_id_from_hex, parse_cell_header
from spark_kms.errors import AccessDeniedError, ConfigurationError, InvalidCiphertextError, KeyStateError
from spark_kms.kms import kms_call_counts, process_dek_cache, provider_from_uri
from spark_kms.parquet import (
    BatchDecryptor,
    BatchEncryptor,
    DekResolver,
    EncryptedParquetWriter,
    EncryptionSpec,
    blind_index_values,
    new_deterministic_entry,
    read_decrypted_table,
    read_key_table,
)

from .conftest import Kms


def _ops(kms: Kms, operation: str) -> list[dict]:
    return [e for e in kms.admin.audit_events() if e.get("operation") == operation]


def test_one_generate_data_key_per_writer_with_context(kms: Kms, tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("ssn", pa.string()), ("email", pa.string())])
    ctx = {"dataset": "customers", "job": "j-1"}
    path = tmp_path / "a.parquet"
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn", "email"]), kms.provider,
                                encryption_context=ctx) as w:
        for i in range(20):
            w.write_batch(pa.record_batch({"id": [i, i], "ssn": [f"s{i}", None], "email": [f"e{i}", "x"]}, schema=schema))
    assert w.kms_calls == 1
    assert kms_call_counts() == {"local:GenerateDataKey": 1}
    (event,) = _ops(kms, "GenerateDataKey")
    assert event["encryption_context"] == ctx and event["outcome"] == "ok"
    (entry,) = read_key_table(path).deks.values()
    assert entry.encryption_context == ctx and entry.algorithm == AES_256_GCM
    assert pq.read_metadata(path).num_rows == 40


def test_roll_over_every_ten_cells_gives_four_deks_that_all_decrypt(kms: Kms, tmp_path: Path) -> None:
    # 35 non-null cells over two columns and three batches, nulls in between (nulls use no nonce).
    values = [f"v{i}" for i in range(35)]
    ssn = values[:20]
    email = values[20:]
    schema = pa.schema([("ssn", pa.string()), ("email", pa.string())])
    batches = [
        pa.record_batch({"ssn": ssn[:7] + [None], "email": [None] * 7 + [email[0]]}, schema=schema),
        pa.record_batch({"ssn": ssn[7:] + [None, None], "email": email[1:14] + [None] * 2}, schema=schema),
        pa.record_batch({"ssn": [None], "email": [email[14]]}, schema=schema),
    ]
    path = tmp_path / "roll.parquet"
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn", "email"]), kms.provider,
                                max_cells_per_dek=10) as w:
        for b in batches:
            w.write_batch(b)
    kt = read_key_table(path)
    assert len(kt.deks) == 4 and w.kms_calls == 4
    assert kms_call_counts()["local:GenerateDataKey"] == 4
    # every DEK encrypted at most 10 cells, and every cell names a DEK of the table
    stored = pq.read_table(path)
    per_dek: dict[str, int] = {}
    for name in ("ssn", "email"):
        for cell in stored.column(name).to_pylist():
            if cell is not None:
                dek = parse_cell_header(cell).dek_id.hex()
                per_dek[dek] = per_dek.get(dek, 0) + 1
    assert set(per_dek) == set(kt.deks) and sorted(per_dek.values()) == [5, 10, 10, 10]
    back = read_decrypted_table(path, kms_options=kms.options)
    assert back.equals(pa.Table.from_batches(batches))
    assert kms_call_counts()["local:Decrypt"] == 4


def test_deterministic_columns_are_equal_across_writers_sharing_the_entry(kms: Kms, tmp_path: Path) -> None:
    entry = new_deterministic_entry(kms.provider, {"dataset": "customers"})
    assert entry.algorithm == AES_256_SIV
    entry = pickle.loads(pickle.dumps(entry))  # it travels to executors
    schema = pa.schema([("email", pa.string()), ("ssn", pa.string())])
    spec = EncryptionSpec(columns=["ssn"], deterministic=["email"])
    cells = []
    for i, rows in enumerate([["a@x", "b@x", None], ["b@x", "c@x", "a@x"]]):
        process_dek_cache().clear()  # as if in another executor process
        with EncryptedParquetWriter(tmp_path / f"p{i}.parquet", schema, spec, kms.provider,
                                    deterministic_entry=entry, kms_options=kms.options) as w:
            w.write_batch(pa.record_batch({"email": rows, "ssn": ["1", "1", "1"]}, schema=schema))
        assert w.kms_calls == 2  # its own GCM key + one unwrap of the job key
        kt = read_key_table(tmp_path / f"p{i}.parquet")
        assert kt.deks[entry.dek_id] == entry
        cells.append(pq.read_table(tmp_path / f"p{i}.parquet"))
    a, b = (t.column("email").to_pylist() for t in cells)
    assert a[0] == b[2] and a[1] == b[0] and a[0] != a[1] and a[2] is None
    # the randomised column differs for equal values
    ssn = cells[0].column("ssn").to_pylist() + cells[1].column("ssn").to_pylist()
    assert len(set(ssn)) == 6
    # a join on ciphertext finds the equal plaintexts
    joined = cells[0].select(["email"]).join(cells[1].select(["email"]), "email", join_type="inner")
    assert joined.num_rows == 2


def test_deterministic_key_is_generated_when_no_entry_is_given(kms: Kms) -> None:
    spec = EncryptionSpec(columns=["ssn"], deterministic=["email"])
    batch = pa.record_batch({"ssn": ["1"], "email": ["a"]})
    with BatchEncryptor(spec, kms.provider) as enc:
        out = enc.encrypt_batch(batch)
        out2 = enc.encrypt_batch(batch)
        kt = enc.key_table()
    assert enc.kms_calls == 2 and kms_call_counts() == {"local:GenerateDataKey": 2}
    assert sorted(e.algorithm for e in kt.deks.values()) == sorted([AES_256_GCM, AES_256_SIV])
    assert out.column("email").equals(out2.column("email")) and not out.column("ssn").equals(out2.column("ssn"))
    assert BatchDecryptor(kt, kms_options=kms.options).decrypt_batch(out).equals(batch)


def test_only_deterministic_columns_need_no_gcm_key(kms: Kms) -> None:
    entry = new_deterministic_entry(kms.provider)
    with BatchEncryptor(EncryptionSpec(deterministic=["email"]), kms.provider, deterministic_entry=entry,
                        kms_options=kms.options) as enc:
        out = enc.encrypt_batch(pa.record_batch({"email": ["a", "a"]}))
    assert out.column(0)[0] == out.column(0)[1]
    assert [e.dek_id for e in enc.dek_entries] == [entry.dek_id]
    assert kms_call_counts() == {"local:Decrypt": 1, "local:GenerateDataKey": 1}


def test_blind_index_equality_lookup(kms: Kms, tmp_path: Path) -> None:
    entry = new_deterministic_entry(kms.provider)
    schema = pa.schema([("id", pa.int32()), ("email", pa.string()), ("zip", pa.int32())])
    spec = EncryptionSpec(columns=["email"], blind_index={"email": "email_bidx", "zip": "zip_bidx"})
    path = tmp_path / "bidx.parquet"
    rows = {"id": [1, 2, 3, 4], "email": ["a@x", "b@x", "a@x", None], "zip": [75001, 10115, 75001, None]}
    with EncryptedParquetWriter(path, schema, spec, kms.provider, deterministic_entry=entry,
                                kms_options=kms.options) as w:
        w.write_batch(pa.record_batch(rows, schema=schema))
    kt = read_key_table(path)
    assert kt.columns["email_bidx"].algorithm == HMAC_SHA256_BIDX and kt.columns["email_bidx"].source == "email"
    stored = pq.read_table(path)
    assert stored.schema.names == ["id", "email", "zip", "email_bidx", "zip_bidx"]

    def ids_where(index: str, value: object) -> list[int]:
        cells = blind_index_values(kt, index, [value], kms_options=kms.options)
        return stored.filter(pc.is_in(stored[index], pa.array(cells, pa.binary()))).column("id").to_pylist()

    assert ids_where("email_bidx", "a@x") == [1, 3]
    assert ids_where("email_bidx", "nobody@x") == []
    assert ids_where("zip_bidx", 10115) == [2]
    # decrypting leaves the index as binary and restores the source
    back = read_decrypted_table(path, kms_options=kms.options)
    assert back.column("email").to_pylist() == rows["email"]
    assert back.schema.field("email_bidx").type == pa.binary()
    with pytest.raises(ConfigurationError, match="blind index"):
        BatchDecryptor(kt).decrypt_array(stored.column("email_bidx"), "email_bidx")
    with pytest.raises(ConfigurationError, match="not a blind-index column"):
        blind_index_values(kt, "email", ["a@x"])


def test_unwrap_happens_at_most_once_per_dek_per_process(kms: Kms, tmp_path: Path) -> None:
    schema = pa.schema([("ssn", pa.string())])
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}.parquet"
        with EncryptedParquetWriter(p, schema, EncryptionSpec(columns=["ssn"]), kms.provider,
                                    max_cells_per_dek=2) as w:
            w.write_batch(pa.record_batch({"ssn": ["a", "b", "c"]}, schema=schema))
        paths.append(p)
    deks = sum(len(read_key_table(p).deks) for p in paths)
    assert deks == 6
    for _ in range(3):  # read everything three times, with fresh decryptors each time
        for p in paths:
            read_decrypted_table(p, kms_options=kms.options)
    assert kms_call_counts()["local:Decrypt"] == deks
    assert len(_ops(kms, "Decrypt")) == deks


def test_resolver_names_dek_key_and_place_on_kms_failure(kms: Kms, tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    schema = pa.schema([("ssn", pa.string())])
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn"]), kms.provider) as w:
        w.write_batch(pa.record_batch({"ssn": ["SECRET-123-45-6789"]}, schema=schema))
    (entry,) = read_key_table(path).deks.values()
    kms.admin.disable_key_version("alias/pii", 1)
    with pytest.raises(KeyStateError) as info:
        read_decrypted_table(path, kms_options=kms.options)
    msg = str(info.value)
    assert entry.dek_id in msg and entry.key_id in msg and str(path) in msg
    assert "SECRET" not in msg and entry.wrapped_dek.hex() not in msg
    assert info.value.key_id == entry.key_id
    # direct use: KeyError for an unknown DEK id (CellDecryptor turns it into DecryptionError)
    resolver = DekResolver({entry.dek_id: entry}, kms_options=kms.options)
    with pytest.raises(KeyError):
        resolver.lookup(dek_id_from_hex("00" * 8))


def test_decryptor_and_resolver_pickle_as_configuration(kms: Kms) -> None:
    batch = pa.record_batch({"ssn": ["a", None, "c"]})
    with BatchEncryptor(EncryptionSpec(columns=["ssn"]), kms.provider) as enc:
        out = enc.encrypt_batch(batch)
        kt = enc.key_table()
    dec = BatchDecryptor(kt, kms_options=kms.options)
    assert dec.decrypt_batch(out).equals(batch)  # warm: cipher objects and cached key inside
    process_dek_cache().clear()  # as on an executor
    shipped = pickle.loads(pickle.dumps(dec))
    assert shipped.decrypt_batch(out).equals(batch)
    resolver = pickle.loads(pickle.dumps(DekResolver(kt.deks, kms_options=kms.options, where="x")))
    (entry,) = kt.deks.values()
    assert len(resolver.lookup(dek_id_from_hex(entry.dek_id))) == 32 and resolver.where == "x"
    assert kms_call_counts()["local:Decrypt"] == 2


def test_spec_pickles_and_hashes() -> None:
    spec = EncryptionSpec(columns=["ssn", "email"], deterministic=["email"], blind_index={"email": "email_bidx"})
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and hash(again) == hash(spec)
    assert spec.randomized == ("ssn",) and spec.needs_deterministic_key
    assert EncryptionSpec(**spec.to_dict()) == spec


def test_cached_data_key_is_not_served_to_another_principal(kms: Kms, tmp_path: Path) -> None:
    # One principal's unwrap must not let another read from the same process's cache: the
    # KMS policy decides for each principal, and its audit log records the denial.
    kms.admin.put_key_policy("alias/pii", {"etl": ["encrypt", "decrypt", "admin"], "intern": ["encrypt"]})
    schema = pa.schema([("ssn", pa.string())])
    path = tmp_path / "f.parquet"
    etl = {"local": {"keystore": str(kms.keystore), "principal": "etl"}}
    intern = {"local": {"keystore": str(kms.keystore), "principal": "intern"}}
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn"]),
                                provider_from_uri("local://alias/pii", **etl["local"])) as w:
        w.write_batch(pa.record_batch({"ssn": ["123-45-6789"]}, schema=schema))
    assert read_decrypted_table(path, kms_options=etl).column("ssn").to_pylist() == ["123-45-6789"]
    with pytest.raises(AccessDeniedError) as err:
        read_decrypted_table(path, kms_options=intern)
    assert "123-45-6789" not in str(err.value)
    denied = [e for e in _ops(kms, "Decrypt") if e["principal"] == "intern"]
    assert [e["outcome"] for e in denied] == ["AccessDeniedError"]


def test_cached_data_key_is_not_served_for_another_encryption_context(kms: Kms, tmp_path: Path) -> None:
    # The KMS binds a wrapped key to its encryption context; a key table entry whose context
    # was changed must be refused by the KMS, not answered from a warm cache.
    path = tmp_path / "f.parquet"
    schema = pa.schema([("ssn", pa.string())])
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn"]), kms.provider,
                                encryption_context={"dataset": "users"}) as w:
        w.write_batch(pa.record_batch({"ssn": ["123-45-6789"]}, schema=schema))
    (entry,) = read_key_table(path).deks.values()
    DekResolver({entry.dek_id: entry}, kms_options=kms.options).lookup(entry.dek_id_bytes)  # warm the cache
    forged = entry.replace(encryption_context={"dataset": "payroll"})
    resolver = DekResolver({entry.dek_id: forged}, kms_options=kms.options)
    with pytest.raises(InvalidCiphertextError) as info:
        resolver.lookup(entry.dek_id_bytes)
    assert entry.dek_id in str(info.value) and resolver.kms_calls == 1
    assert [e["outcome"] for e in _ops(kms, "Decrypt")] == ["ok", "InvalidCiphertextError"]
