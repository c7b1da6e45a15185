"""Replay the committed vectors (tests/vectors/*.json) against spark_kms.crypto and an independent reader."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spark_kms import errors
from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    HMAC_SHA256_BIDX,
    BlindIndexer,
    CellDecryptor,
    CellEncryptor,
    ColumnSpec,
    DeterministicEncryptor,
    KeyTable,
    authenticate_manifest,
    column_binding,
    decode_manifest,
    decode_manifest_document,
    row_context,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
POSITIVE = json.loads((VECTORS / "cells_positive.json").read_text())
NEGATIVE = json.loads((VECTORS / "cells_negative.json").read_text())
KEYTABLE = json.loads((VECTORS / "keytable.json").read_text())
FORMAT2 = json.loads((VECTORS / "format2.json").read_text())
MAC_KEY = bytes.fromhex(FORMAT2["mac_key_hex"])
DEKS = {bytes.fromhex(k): bytes.fromhex(v) for k, v in POSITIVE["deks"].items()}


def _lookup(dek_id: bytes) -> bytes:
    return DEKS[dek_id]  # KeyError for unknown ids, as the CellDecryptor contract asks


def _by_name(vectors: list[dict]) -> list:
    return [pytest.param(v, id=v["name"]) for v in vectors]


def test_vector_files_are_big_enough_and_cover_every_algorithm():
    algorithms = {v["algorithm"] for v in POSITIVE["vectors"]}
    assert algorithms == {AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX}
    assert len(POSITIVE["vectors"]) >= 12
    assert len(NEGATIVE["vectors"]) >= 12
    assert {v["expected_error"] for v in NEGATIVE["vectors"]} == {
        "DecryptionError",
        "MalformedCellError",
        "UnknownDataKeyError",
        "UnknownFormatVersionError",
    }


@pytest.mark.parametrize("vector", _by_name(POSITIVE["vectors"]))
def test_positive_vector_replays(vector):
    cell = bytes.fromhex(vector["cell_hex"])
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    context = bytes.fromhex(vector["context_hex"])
    if vector["algorithm"] == HMAC_SHA256_BIDX:
        dek_id = bytes.fromhex(vector["dek_id"])
        assert BlindIndexer(DEKS[dek_id], dek_id).index(plaintext, vector["column"]) == cell
        return
    decryptor = CellDecryptor(_lookup)
    assert decryptor.decrypt(cell, vector["column"], context) == plaintext
    assert decryptor.decrypt_many([None, cell], vector["column"], context) == [None, plaintext]


@pytest.mark.parametrize("vector", _by_name(POSITIVE["vectors"]))
def test_positive_vector_is_rederived_from_the_seams(vector):
    """The generator and the encryptors agree: same DEK, salt and counter give the committed bytes."""
    dek_id = bytes.fromhex(vector["dek_id"])
    dek = DEKS[dek_id]
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    context = bytes.fromhex(vector["context_hex"])
    column = vector["column"]
    if vector["algorithm"] == AES_256_GCM:
        nonce = bytes.fromhex(vector["nonce_hex"])
        assert nonce[:4].hex() == POSITIVE["salt_hex"]
        cell = CellEncryptor(dek, dek_id, salt=nonce[:4])._encrypt_with_nonce(
            plaintext, column, context, nonce
        )
    elif vector["algorithm"] == AES_256_SIV:
        cell = DeterministicEncryptor(dek, dek_id).encrypt_many([plaintext], column, context)[0]
    else:
        cell = BlindIndexer(dek, dek_id).index_many([plaintext], column)[0]
    assert cell.hex() == vector["cell_hex"]


def test_counter_path_matches_the_nonce_seam():
    """encrypt_many with a pinned salt numbers nonces 0, 1, 2 ... exactly like the vectors' nonces."""
    first = next(v for v in POSITIVE["vectors"] if v["name"] == "gcm-ascii")
    second = next(v for v in POSITIVE["vectors"] if v["name"] == "gcm-empty-value")
    dek_id = bytes.fromhex(first["dek_id"])
    enc = CellEncryptor(DEKS[dek_id], dek_id, salt=bytes.fromhex(POSITIVE["salt_hex"]))
    cells = enc.encrypt_many([bytes.fromhex(first["plaintext_hex"]), None, b""], "email")
    assert cells[0].hex() == first["cell_hex"]
    assert cells[1] is None
    assert cells[2].hex() == second["cell_hex"]


def test_committed_files_equal_a_fresh_generation():
    spec = importlib.util.spec_from_file_location("spark_kms_vector_generator", VECTORS / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name, doc in generator.build().items():
        assert json.loads((VECTORS / name).read_text()) == doc, (
            f"{name} is stale: rerun tests/vectors/generate.py"
        )


@pytest.mark.parametrize("vector", _by_name(NEGATIVE["vectors"]))
def test_negative_vector_raises_the_expected_error(vector):
    cell = bytes.fromhex(vector["cell_hex"])
    context = bytes.fromhex(vector["context_hex"])
    expected = getattr(errors, vector["expected_error"])
    decryptor = CellDecryptor(_lookup)
    with pytest.raises(expected) as info:
        decryptor.decrypt(cell, vector["column"], context, where="file part-0.parquet")
    assert type(info.value) is expected
    assert "part-0.parquet" in str(info.value) and vector["column"] in str(info.value)
    with pytest.raises(expected) as info:
        decryptor.decrypt_many([None, None, cell], vector["column"], context, where="file part-0.parquet")
    assert "row 2" in str(info.value)


# --------------------------------------------------------------------------- independent reader
# Written from docs/FORMAT.md alone, with cryptography + stdlib only: if it reads every positive vector,
# the spec is sufficient to implement a reader.


def _spec_column_binding(column: str) -> bytes:
    raw = column.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _spec_read(cell: bytes, column: str, context: bytes, deks: dict[bytes, bytes]) -> bytes:
    version, alg = cell[0] >> 4, cell[0] & 0xF
    assert version == 1
    dek = deks[cell[1:9]]
    aad = cell[:9] + _spec_column_binding(column) + context
    if alg == 1:
        return AESGCM(dek).decrypt(cell[9:21], cell[21:], aad)
    if alg == 2:
        key = HKDF(hashes.SHA256(), 64, salt=None, info=b"spark_kms/v1 AES-256-SIV").derive(dek)
        return AESSIV(key).decrypt(cell[9:], [aad])
    raise ValueError("not decryptable")


def _spec_blind_index(value: bytes, column: str, dek_id: bytes, dek: bytes) -> bytes:
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"spark_kms/v1 HMAC-SHA256 blind index").derive(dek)
    tag = hmac.new(key, _spec_column_binding(column) + value, hashlib.sha256).digest()[:16]
    return b"\x13" + dek_id + tag


@pytest.mark.parametrize("vector", _by_name(POSITIVE["vectors"]))
def test_independent_reader_follows_the_spec(vector):
    cell = bytes.fromhex(vector["cell_hex"])
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    dek_id = bytes.fromhex(vector["dek_id"])
    assert cell[1:9] == dek_id
    if vector["algorithm"] == HMAC_SHA256_BIDX:
        assert _spec_blind_index(plaintext, vector["column"], dek_id, DEKS[dek_id]) == cell
    else:
        assert _spec_read(cell, vector["column"], bytes.fromhex(vector["context_hex"]), DEKS) == plaintext
    if vector["algorithm"] == AES_256_GCM:
        assert cell[9:21].hex() == vector["nonce_hex"]
        assert len(cell) == 37 + len(plaintext)
    elif vector["algorithm"] == AES_256_SIV:
        assert len(cell) == 25 + len(plaintext)
    else:
        assert len(cell) == 25


@pytest.mark.parametrize(
    "vector",
    _by_name([v for v in NEGATIVE["vectors"] if v["expected_error"] in ("DecryptionError", "UnknownDataKeyError")]),
)
def test_independent_reader_rejects_the_tampered_vectors(vector):
    cell = bytes.fromhex(vector["cell_hex"])
    with pytest.raises((InvalidTag, KeyError)):
        _spec_read(cell, vector["column"], bytes.fromhex(vector["context_hex"]), DEKS)


# --------------------------------------------------------------------------- key table vectors


@pytest.mark.parametrize("vector", _by_name(KEYTABLE["valid"]))
def test_valid_key_table_vector_round_trips_byte_for_byte(vector):
    table = KeyTable.from_json(vector["json"], where="vector")
    assert table.to_json().decode("ascii") == vector["json"]
    assert table.format_version == json.loads(vector["json"])["format_version"]
    assert table.source_versions == {table.format_version}
    assert table.columns["email_bidx"].source == "email"
    assert all(len(e.wrapped_dek) > 0 for e in table.deks.values())


@pytest.mark.parametrize("vector", _by_name(KEYTABLE["valid_manifest"]))
def test_valid_manifest_vector_decodes(vector):
    entries = decode_manifest(vector["json"], where="_spark_kms_keys.json")
    assert list(entries) == ["a1a2a3a4a5a6a7a8"]
    assert entries["a1a2a3a4a5a6a7a8"].encryption_context == {"dataset": "users", "run_id": "r-0001"}


@pytest.mark.parametrize("vector", _by_name(KEYTABLE["invalid"]))
def test_invalid_key_table_vector_is_rejected_with_where_and_field(vector):
    expected = getattr(errors, vector["expected_error"])
    with pytest.raises(expected) as info:
        KeyTable.from_json(vector["json"], where="file s3/part-7.parquet")
    assert type(info.value) is expected
    message = str(info.value)
    assert "part-7.parquet" in message
    assert vector["message_contains"] in message


@pytest.mark.parametrize(
    ("key", "aad", "msg", "ct"),
    [
        # RFC 5297 A.1, and an empty-message case, as published in Wycheproof's aes_siv_cmac_test.json.
        (
            "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            "101112131415161718191a1b1c1d1e1f2021222324252627",
            "112233445566778899aabbccddee",
            "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c",
        ),
        (
            "e40992eb4f649e5d49134652aecc24bafa6b45ce8dd9e9d371ede7d5de84fa72",
            "8268c5194a71aed0fc1dafe3",
            "",
            "92bc07ee200fbd488b7f70a10da26a21",
        ),
    ],
    ids=["rfc5297-a1", "wycheproof-empty-message"],
)
def test_the_aes_siv_primitive_matches_published_vectors(key, aad, msg, ct):
    """The SIV cell format relies on RFC 5297 behaviour, empty plaintexts included; pin it on this cryptography."""
    siv = AESSIV(bytes.fromhex(key))
    assert siv.encrypt(bytes.fromhex(msg), [bytes.fromhex(aad)]).hex() == ct
    assert siv.decrypt(bytes.fromhex(ct), [bytes.fromhex(aad)]).hex() == msg


# --------------------------------------------------------------------------- format version 2
# tests/vectors/format2.json: cells whose AAD binds the column spec (and the row), blind indexes under the
# source column's name, authenticated manifests. Replayed by spark_kms, then by the independent reader below.


def _v2_context(spec: dict, row_value_hex: str | None) -> bytes:
    column = ColumnSpec("x", AES_256_GCM, spec["arrow_type"], row_binding=spec["row_binding"])
    binding = column_binding(column)
    if spec["row_binding"] is None:
        return binding
    return row_context(binding, None if row_value_hex is None else bytes.fromhex(row_value_hex))


def test_format2_vectors_cover_every_rule():
    names = {v["name"] for v in FORMAT2["cells"]}
    assert {"v2-gcm-row-bound", "v2-gcm-row-bound-null-key", "v2-siv-string", "v2-gcm-double"} <= names
    assert len(FORMAT2["negative"]) >= 12 and len(FORMAT2["manifests"]) >= 12
    assert {m["expected"] for m in FORMAT2["manifests"]} == {"valid", "DecryptionError", "FormatError"}


@pytest.mark.parametrize("vector", _by_name(FORMAT2["cells"]))
def test_format2_cell_replays_and_is_rederived(vector):
    context = _v2_context(vector["spec"], vector["row_value_hex"])
    assert context.hex() == vector["context_hex"]
    cell, plaintext = bytes.fromhex(vector["cell_hex"]), bytes.fromhex(vector["plaintext_hex"])
    assert CellDecryptor(_lookup).decrypt(cell, vector["column"], context) == plaintext
    # The reader of a version-1 table tries the version-2 context first, then the empty one.
    assert CellDecryptor(_lookup).decrypt_many([cell], vector["column"], context, alternatives=[b""]) == [plaintext]
    dek_id = bytes.fromhex(vector["dek_id"])
    if vector["algorithm"] == AES_256_GCM:
        nonce = bytes.fromhex(vector["nonce_hex"])
        again = CellEncryptor(DEKS[dek_id], dek_id)._encrypt_with_nonce(plaintext, vector["column"], context, nonce)
    else:
        again = DeterministicEncryptor(DEKS[dek_id], dek_id).encrypt(plaintext, vector["column"], context)
    assert again == cell


@pytest.mark.parametrize("vector", _by_name(FORMAT2["negative"]))
def test_format2_negative_vector_fails_to_authenticate(vector):
    cell = bytes.fromhex(vector["cell_hex"])
    v2 = _v2_context(vector["spec"], vector["row_value_hex"])
    contexts = [v2 if rule == 2 else b"" for rule in vector["aad_versions"]]
    with pytest.raises(errors.DecryptionError, match="column spec") as info:
        CellDecryptor(_lookup).decrypt(cell, vector["column"], contexts[0], alternatives=contexts[1:],
                                       where="file part-0.parquet")
    assert type(info.value) is errors.DecryptionError
    assert "part-0.parquet" in str(info.value) and vector["column"] in str(info.value)


@pytest.mark.parametrize("vector", _by_name(FORMAT2["blind_index"]))
def test_format2_blind_index_is_keyed_by_the_source_column_name(vector):
    dek_id = bytes.fromhex(vector["dek_id"])
    indexer = BlindIndexer(DEKS[dek_id], dek_id)
    value = bytes.fromhex(vector["plaintext_hex"])
    assert indexer.index(value, vector["source"]).hex() == vector["cell_hex"]
    assert vector["cell_under_index_name_hex"] != vector["cell_hex"]


@pytest.mark.parametrize("vector", _by_name(FORMAT2["manifests"]))
def test_format2_manifest_vector(vector):
    if vector["expected"] == "FormatError":
        with pytest.raises(errors.FormatError):
            decode_manifest_document(vector["json"], where="_spark_kms_keys.json")
        return
    document = decode_manifest_document(vector["json"], where="_spark_kms_keys.json")
    if vector["expected"] == "valid":
        authenticate_manifest(document, MAC_KEY, vector["read_at"])
        assert document.declaration is not None and document.declaration.min_format_version == 2
        return
    with pytest.raises(errors.DecryptionError) as info:
        authenticate_manifest(document, MAC_KEY, vector["read_at"], where="manifest m.json")
    assert MAC_KEY.hex() not in str(info.value)


def _spec_v2_context(arrow_type: str, row_binding: str | None, row_value: bytes | None) -> bytes:
    """docs/FORMAT.md section 3, version 2."""
    t, b = arrow_type.encode(), (row_binding or "").encode()
    context = b"\x02" + len(t).to_bytes(2, "big") + t + len(b).to_bytes(2, "big") + b
    if row_binding is None:
        return context
    if row_value is None:
        return context + b"\x00"
    return context + b"\x01" + len(row_value).to_bytes(4, "big") + row_value


def _spec_context_of(vector: dict) -> bytes:
    row = vector["row_value_hex"]
    return _spec_v2_context(vector["spec"]["arrow_type"], vector["spec"]["row_binding"],
                            None if row is None else bytes.fromhex(row))


@pytest.mark.parametrize("vector", _by_name(FORMAT2["cells"]))
def test_independent_reader_follows_the_v2_spec(vector):
    context = _spec_context_of(vector)
    assert context.hex() == vector["context_hex"]
    cell = bytes.fromhex(vector["cell_hex"])
    assert _spec_read(cell, vector["column"], context, DEKS).hex() == vector["plaintext_hex"]


@pytest.mark.parametrize("vector", _by_name(FORMAT2["negative"]))
def test_independent_reader_rejects_the_v2_negatives(vector):
    cell = bytes.fromhex(vector["cell_hex"])
    for rule in vector["aad_versions"]:
        context = _spec_context_of(vector) if rule == 2 else b""
        with pytest.raises(InvalidTag):
            _spec_read(cell, vector["column"], context, DEKS)


@pytest.mark.parametrize("vector", _by_name(FORMAT2["blind_index"]))
def test_independent_reader_computes_blind_indexes_from_the_source_name(vector):
    dek_id = bytes.fromhex(vector["dek_id"])
    value = bytes.fromhex(vector["plaintext_hex"])
    assert _spec_blind_index(value, vector["source"], dek_id, DEKS[dek_id]).hex() == vector["cell_hex"]


def _spec_check_manifest(text: str, key: bytes, read_at: str) -> str:
    """docs/FORMAT.md section 8: 'valid', or why the manifest is refused."""
    doc = json.loads(text)
    if doc["format_version"] == 1:
        return "FormatError" if ("declaration" in doc or "auth" in doc) else "valid"
    auth = doc.get("auth")
    if auth is None:
        return "FormatError" if "declaration" in doc else "valid"
    unsigned = {**doc, "auth": {k: v for k, v in auth.items() if k != "mac"}}
    signed = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    mac_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"spark_kms/v2 manifest MAC").derive(key)
    if not hmac.compare_digest(hmac.new(mac_key, signed, hashlib.sha256).hexdigest(), auth["mac"]):
        return "DecryptionError"
    context = auth["key"]["encryption_context"]
    if context.get("purpose") != "spark_kms.declaration" or context.get("dataset") != read_at:
        return "DecryptionError"
    return "valid"


@pytest.mark.parametrize("vector", _by_name(FORMAT2["manifests"]))
def test_independent_reader_checks_manifests(vector):
    assert _spec_check_manifest(vector["json"], MAC_KEY, vector["read_at"]) == vector["expected"]
