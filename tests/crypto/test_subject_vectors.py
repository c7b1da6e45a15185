"""tests/vectors/subjects.json: per-subject cells (AES_256_GCM_SUBJECT, docs/FORMAT.md section 15).

Each vector is replayed through spark_kms (SubjectCellDecryptor, the key-table spec's binding) and through an
independent reader written from FORMAT.md with ``cryptography`` alone; every negative vector must fail both
(or read as erased when the subject key is gone).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spark_kms.crypto import (
    AES_256_GCM_SUBJECT,
    CellDecryptor,
    ColumnSpec,
    KeyTable,
    SubjectCellDecryptor,
    column_binding,
    derive_subject_cell_key,
    subject_context,
)
from spark_kms.errors import DecryptionError, MalformedCellError

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
DOC = json.loads((VECTORS / "subjects.json").read_text())
DEKS = {bytes.fromhex(k): bytes.fromhex(v) for k, v in DOC["deks"].items()}


def _spec(vector: dict) -> ColumnSpec:
    s = vector["spec"]
    return ColumnSpec(name=vector["column"], algorithm=AES_256_GCM_SUBJECT, arrow_type=s["arrow_type"],
                      subject=s["subject"], subject_store=s["subject_store"])


def _read(vector: dict) -> tuple[list, list]:
    sid = vector["subject_id"].encode()
    key = vector["subject_key_hex"]
    reader = SubjectCellDecryptor(DEKS.__getitem__)
    return reader.decrypt_rows([bytes.fromhex(vector["cell_hex"])], vector["column"], column_binding(_spec(vector)),
                               [sid], {sid: None if key is None else bytes.fromhex(key)})


def _u16(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def _spec_read(vector: dict) -> bytes | None:
    """FORMAT.md section 15, from the text alone."""
    cell = bytes.fromhex(vector["cell_hex"])
    assert cell[0] == 0x14, "not a per-subject cell"
    if vector["subject_key_hex"] is None:
        return None  # erased
    dek = DEKS[cell[1:9]]
    key = HKDF(hashes.SHA256(), 32, dek, b"spark_kms/v2 subject AES-256-GCM").derive(
        bytes.fromhex(vector["subject_key_hex"]))
    s = vector["spec"]
    sid = vector["subject_id"].encode()
    context = (b"\x03" + _u16(s["arrow_type"].encode()) + _u16(s["subject"].encode())
               + len(sid).to_bytes(4, "big") + sid)
    return AESGCM(key).decrypt(cell[9:21], cell[21:], cell[:9] + _u16(vector["column"].encode()) + context)


def test_the_file_covers_the_rules():
    names = {v["name"] for v in DOC["cells"]}
    assert {"subject-email", "subject-empty-value", "subject-int-id", "subject-unicode-id-and-column"} <= names
    assert len(DOC["negative"]) >= 8 and len(DOC["key_wrapping"]) == 3
    assert all(v["cell_hex"].startswith("14") for v in DOC["cells"])


@pytest.mark.parametrize("vector", DOC["cells"], ids=lambda v: v["name"])
def test_cell_replays_and_is_rederived(vector):
    plain, erased = _read(vector)
    assert plain == [bytes.fromhex(vector["plaintext_hex"])] and erased == []
    dek = DEKS[bytes.fromhex(vector["dek_id"])]
    assert derive_subject_cell_key(bytes.fromhex(vector["subject_key_hex"]), dek).hex() == vector["cell_key_hex"]
    binding = column_binding(_spec(vector))
    assert subject_context(binding, vector["subject_id"].encode()).hex() == vector["context_hex"]
    assert bytes.fromhex(vector["cell_hex"])[9:21].hex() == vector["nonce_hex"]
    assert _spec_read(vector) == bytes.fromhex(vector["plaintext_hex"])


@pytest.mark.parametrize("vector", DOC["negative"], ids=lambda v: v["name"])
def test_negative_vector_fails_or_reads_as_erased(vector):
    if vector["expected"] == "erased":
        assert _read(vector) == ([None], [0])
        assert _spec_read(vector) is None
        return
    expected = {"DecryptionError": DecryptionError, "MalformedCellError": MalformedCellError}[vector["expected"]]
    with pytest.raises(expected) as info:
        _read(vector)
    message = str(info.value)
    assert vector["cell_hex"] not in message and "alice" not in message
    if vector["cell_hex"].startswith("14"):
        with pytest.raises(InvalidTag):
            _spec_read(vector)


def test_plain_readers_refuse_per_subject_cells():
    # A reader that does not know section 15 (or a key table without the subject field) must not guess.
    vector = DOC["cells"][0]
    with pytest.raises(MalformedCellError, match="per-subject"):
        CellDecryptor(DEKS.__getitem__).decrypt(bytes.fromhex(vector["cell_hex"]), vector["column"])


@pytest.mark.parametrize("vector", DOC["key_wrapping"], ids=lambda v: v["subject_id"])
def test_subject_key_wrapping_vector(vector):
    raw = bytes.fromhex(vector["wrapped_hex"])
    sid = vector["subject_id"].encode()
    aad = b"spark_kms subject key v1" + DOC["store_id"].encode() + len(sid).to_bytes(4, "big") + sid
    assert aad.hex() == vector["aad_hex"]
    key = AESGCM(bytes.fromhex(DOC["store_kek_hex"])).decrypt(raw[:12], raw[12:], aad)
    assert key.hex() == vector["subject_key_hex"]


def test_key_table_round_trips_the_subject_fields():
    vector = DOC["cells"][3]
    table = KeyTable(deks={}, columns={vector["column"]: _spec(vector)})
    doc = json.loads(table.to_json())
    spec = doc["columns"][vector["column"]]
    assert spec["subject"] == "persön" and spec["subject_store"] == DOC["store_id"]
    assert spec["algorithm"] == AES_256_GCM_SUBJECT
    assert KeyTable.from_json(table.to_json()).columns == table.columns


@pytest.mark.parametrize("fields, match", [
    ({"subject": None}, "subject"),
    ({"subject_store": "nothex"}, "subject_store"),
    ({"subject": "email"}, "subject"),  # the column itself
])
def test_invalid_subject_specs_are_refused(fields, match):
    base = {"name": "email", "algorithm": AES_256_GCM_SUBJECT, "arrow_type": "string", "subject": "user_id",
            "subject_store": DOC["store_id"]}
    base.update(fields)
    with pytest.raises(Exception, match=match):
        ColumnSpec(**base)
