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
    DeterministicEncryptor,
    KeyTable,
    decode_manifest,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
POSITIVE = json.loads((VECTORS / "cells_positive.json").read_text())
NEGATIVE = json.loads((VECTORS / "cells_negative.json").read_text())
KEYTABLE = json.loads((VECTORS / "keytable.json").read_text())
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
