"""docs/FORMAT.md is executable: its recipe decrypts a spark_kms Parquet file with pyarrow + cryptography only."""

from __future__ import annotations

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
    new_dek_id,
    utc_now_iso,
)

FORMAT_MD = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"


def _recipe() -> str:
    text = FORMAT_MD.read_text()
    section = text.split("## 11. Recipe", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_recipe_is_short():
    assert len(_recipe().strip().splitlines()) <= 45


def _entry(dek_id: bytes, algorithm: str, wrapped: bytes) -> DekEntry:
    return DekEntry(
        dek_id.hex(), "local://alias/pii", "k", "1", wrapped, {"dataset": "t"}, algorithm, utc_now_iso()
    )


def test_recipe_decrypts_a_file_written_with_the_crypto_core(tmp_path):
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
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "email": pa.array(gcm.encrypt_many(utf8(emails), "email"), pa.binary()),
            "email_bidx": pa.array(
                BlindIndexer(det_key, det_id).index_many(utf8(emails), "email_bidx"), pa.binary()
            ),
            "age": pa.array(gcm.encrypt_many(utf8(ages), "age"), pa.binary()),
            "birth": pa.array(gcm.encrypt_many(utf8(birth_text), "birth"), pa.binary()),
            "customer": pa.array(det.encrypt_many(utf8(customers), "customer"), pa.binary()),
            "blob": pa.array(gcm.encrypt_many(blobs, "blob"), pa.binary()),
        }
    )
    key_table = KeyTable(
        deks={
            part_id.hex(): _entry(part_id, AES_256_GCM, b"wrapped-part"),
            det_id.hex(): _entry(det_id, AES_256_SIV, b"wrapped-det"),
        },
        columns={
            "email": ColumnSpec("email", AES_256_GCM, "string"),
            "email_bidx": ColumnSpec("email_bidx", HMAC_SHA256_BIDX, "string", source="email"),
            "age": ColumnSpec("age", AES_256_GCM, "int64"),
            "birth": ColumnSpec("birth", AES_256_GCM, str(pa.date32())),
            "customer": ColumnSpec("customer", AES_256_SIV, "string"),
            "blob": ColumnSpec("blob", AES_256_GCM, "binary"),
        },
    )
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table.replace_schema_metadata({KEY_TABLE_METADATA_KEY: key_table.to_json()}), path)

    import base64

    namespace: dict = {}
    exec(compile(_recipe(), str(FORMAT_MD), "exec"), namespace)
    result = namespace["decrypt_file"](str(path), lambda entry: kms[base64.b64decode(entry["wrapped_dek"])])

    assert result["email"].to_pylist() == emails
    assert result["age"].type == pa.int64() and result["age"].to_pylist() == ages
    assert result["birth"].type == pa.date32() and result["birth"].to_pylist() == births.to_pylist()
    assert result["customer"].to_pylist() == customers
    assert result["blob"].to_pylist() == blobs
    assert result["id"].to_pylist() == [1, 2, 3]
    bidx = result["email_bidx"].to_pylist()
    assert bidx[1] is None and bidx[0] != bidx[2] and len(bidx[0]) == 25


def test_recipe_rejects_a_cell_moved_to_another_column(tmp_path):
    from cryptography.exceptions import InvalidTag

    key, dek_id = bytes(range(32)), new_dek_id()
    enc = CellEncryptor(key, dek_id)
    cells = enc.encrypt_many([b"alice"], "email")
    table = pa.table({"phone": pa.array(cells, pa.binary())})
    key_table = KeyTable(
        deks={dek_id.hex(): _entry(dek_id, AES_256_GCM, b"w")},
        columns={"phone": ColumnSpec("phone", AES_256_GCM, "string")},
    )
    path = tmp_path / "moved.parquet"
    pq.write_table(table.replace_schema_metadata({KEY_TABLE_METADATA_KEY: key_table.to_json()}), path)
    namespace: dict = {}
    exec(compile(_recipe(), str(FORMAT_MD), "exec"), namespace)
    with pytest.raises(InvalidTag):
        namespace["decrypt_file"](str(path), lambda entry: key)
