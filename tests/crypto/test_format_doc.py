"""docs/FORMAT.md is executable: its recipe decrypts a spark_kms Parquet file with pyarrow + cryptography only."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    HMAC_SHA256_BIDX,
    KEY_TABLE_METADATA_KEY,
    BlindIndexer,
    CellEncryptor,
    ColumnSpec,
    DekEntry,
    DeterministicEncryptor,
    KeyTable,
    column_binding,
    new_dek_id,
    row_context,
    utc_now_iso,
)

FORMAT_MD = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"


def _recipe() -> str:
    text = FORMAT_MD.read_text()
    section = text.split("## 11. Recipe", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_recipe_is_short():
    assert len(_recipe().strip().splitlines()) <= 62


def _run_recipe(path, unwrap):
    namespace: dict = {}
    exec(compile(_recipe(), str(FORMAT_MD), "exec"), namespace)
    return namespace["decrypt_file"](str(path), unwrap)


def _entry(dek_id: bytes, algorithm: str, wrapped: bytes) -> DekEntry:
    return DekEntry(
        dek_id.hex(), "local://alias/pii", "k", "1", wrapped, {"dataset": "t"}, algorithm, utc_now_iso()
    )


@pytest.mark.parametrize("version", [1, 2])
def test_recipe_decrypts_a_file_written_with_the_crypto_core(tmp_path, version):
    # A stand-in KMS for the test: the wrapped DEK is a label and the "KMS" is a dict. The thing under test is
    # the file format, which the recipe reads without importing spark_kms.
    kms: dict[bytes, bytes] = {}
    part_key, part_id = bytes(range(32)), new_dek_id()
    det_key, det_id = bytes(range(1, 33)), new_dek_id()
    kms[b"wrapped-part"], kms[b"wrapped-det"] = part_key, det_key

    emails = ["alice@example.com", None, "Zoë@example.com"]
    ages = [31, 47, None]
    births = pa.array([0, 19000, None], pa.int32()).cast(pa.date32())
    customers = ["c-1", "c-2", "c-1"]
    blobs = [b"\x00\xff", b"", None]
    gcm = CellEncryptor(part_key, part_id)
    det = DeterministicEncryptor(det_key, det_id)

    def utf8(values):
        return [None if v is None else str(v).encode() for v in values]

    birth_text = births.cast(pa.string()).to_pylist()
    ssns = ["078-05-1120", None, "219-09-9999"]
    specs = {
        "email": ColumnSpec("email", AES_256_GCM, "string"),
        "email_bidx": ColumnSpec("email_bidx", HMAC_SHA256_BIDX, "string", source="email"),
        "age": ColumnSpec("age", AES_256_GCM, "int64"),
        "birth": ColumnSpec("birth", AES_256_GCM, str(pa.date32())),
        "customer": ColumnSpec("customer", AES_256_SIV, "string"),
        "blob": ColumnSpec("blob", AES_256_GCM, "binary"),
    }
    if version == 2:
        specs["ssn"] = ColumnSpec("ssn", AES_256_GCM, "string", row_binding="id")

    def ctx(name):  # version 1: the empty context; version 2: the column's binding (FORMAT.md section 3)
        return column_binding(specs[name]) if version == 2 else b""

    columns = {
        "id": pa.array([1, 2, 3], pa.int64()),
        "email": pa.array(gcm.encrypt_many(utf8(emails), "email", ctx("email")), pa.binary()),
        # The blind index is keyed by its *source* column's name (FORMAT.md section 2.3).
        "email_bidx": pa.array(BlindIndexer(det_key, det_id).index_many(utf8(emails), "email"), pa.binary()),
        "age": pa.array(gcm.encrypt_many(utf8(ages), "age", ctx("age")), pa.binary()),
        "birth": pa.array(gcm.encrypt_many(utf8(birth_text), "birth", ctx("birth")), pa.binary()),
        "customer": pa.array(det.encrypt_many(utf8(customers), "customer", ctx("customer")), pa.binary()),
        "blob": pa.array(gcm.encrypt_many(blobs, "blob", ctx("blob")), pa.binary()),
    }
    if version == 2:
        rows = [row_context(ctx("ssn"), str(i).encode()) for i in (1, 2, 3)]
        columns["ssn"] = pa.array(gcm.encrypt_rows(utf8(ssns), "ssn", rows), pa.binary())
    table = pa.table(columns)
    key_table = KeyTable(
        deks={
            part_id.hex(): _entry(part_id, AES_256_GCM, b"wrapped-part"),
            det_id.hex(): _entry(det_id, AES_256_SIV, b"wrapped-det"),
        },
        columns=specs,
        format_version=version,
    )
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table.replace_schema_metadata({KEY_TABLE_METADATA_KEY: key_table.to_json()}), path)

    result = _run_recipe(path, lambda entry: kms[base64.b64decode(entry["wrapped_dek"])])
    if version == 2:
        assert result["ssn"].to_pylist() == ssns

    assert result["email"].to_pylist() == emails
    assert result["age"].type == pa.int64() and result["age"].to_pylist() == ages
    assert result["birth"].type == pa.date32() and result["birth"].to_pylist() == births.to_pylist()
    assert result["customer"].to_pylist() == customers
    assert result["blob"].to_pylist() == blobs
    assert result["id"].to_pylist() == [1, 2, 3]
    bidx = result["email_bidx"].to_pylist()
    assert bidx[1] is None and bidx[0] != bidx[2] and len(bidx[0]) == 25

    # A changed arrow_type (version 2: bound into every cell), or a row-bound cell moved to another row, fails.
    if version == 2:
        from cryptography.exceptions import InvalidTag

        unwrap = lambda entry: kms[base64.b64decode(entry["wrapped_dek"])]  # noqa: E731
        doc = json.loads(key_table.to_json())
        doc["columns"]["age"]["arrow_type"] = "int32"
        pq.write_table(table.replace_schema_metadata({KEY_TABLE_METADATA_KEY: json.dumps(doc)}), path)
        with pytest.raises(InvalidTag):
            _run_recipe(path, unwrap)
        ssn = table["ssn"].to_pylist()
        moved = table.set_column(table.column_names.index("ssn"), "ssn", pa.array([ssn[2], None, ssn[0]], pa.binary()))
        pq.write_table(moved.replace_schema_metadata({KEY_TABLE_METADATA_KEY: key_table.to_json()}), path)
        with pytest.raises(InvalidTag):
            _run_recipe(path, unwrap)


def test_recipe_reads_what_the_file_layer_writes(tmp_path):
    """The spec is complete for spark_kms's own writer: row binding, deterministic columns, several types."""
    from spark_kms.kms import provider_from_uri
    from spark_kms.kms.base import WrappedKey
    from spark_kms.kms.local import LocalKms
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

    LocalKms(tmp_path / "ks").create_key(alias="alias/pii")
    provider = provider_from_uri("local://alias/pii", keystore=str(tmp_path / "ks"))
    table = pa.table({
        "id": pa.array([7, 8, 9], pa.int64()),
        "ssn": ["078-05-1120", None, "219-09-9999"],
        "score": pa.array([1.5, -2.25, None], pa.float64()),
        "email": ["a@x.org", "b@x.org", "a@x.org"],
    })
    spec = EncryptionSpec(columns=["ssn", "score"], deterministic=["email"], blind_index={"email": "email_bidx"},
                          row_binding="id")
    path = tmp_path / "part-0.parquet"
    with EncryptedParquetWriter(path, table.schema, spec, provider) as writer:
        writer.write_batch(table)

    def unwrap(entry):
        wrapped = WrappedKey(base64.b64decode(entry["wrapped_dek"]), entry["key_id"], entry["key_version"])
        return bytes(provider.decrypt_data_key(wrapped, entry["encryption_context"]))

    result = _run_recipe(path, unwrap)
    for name in ("id", "ssn", "score", "email"):
        assert result[name].to_pylist() == table[name].to_pylist()


def test_recipe_rejects_a_cell_moved_to_another_column(tmp_path):
    from cryptography.exceptions import InvalidTag

    key, dek_id = bytes(range(32)), new_dek_id()
    enc = CellEncryptor(key, dek_id)
    spec = ColumnSpec("email", AES_256_GCM, "string")
    cells = enc.encrypt_many([b"alice"], "email", column_binding(spec))
    table = pa.table({"phone": pa.array(cells, pa.binary())})
    key_table = KeyTable(
        deks={dek_id.hex(): _entry(dek_id, AES_256_GCM, b"w")},
        columns={"phone": ColumnSpec("phone", AES_256_GCM, "string")},
    )
    path = tmp_path / "moved.parquet"
    pq.write_table(table.replace_schema_metadata({KEY_TABLE_METADATA_KEY: key_table.to_json()}), path)
    with pytest.raises(InvalidTag):
        _run_recipe(path, lambda entry: key)
