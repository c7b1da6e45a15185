"""Regenerate the committed test vectors: ``python tests/vectors/generate.py``.

Everything is pinned through the deterministic seams (fixed DEKs, DEK ids, nonce salt and counters), so running
it again produces byte-identical files; tests/crypto/test_vectors.py checks exactly that for the positive cells.
The JSON files, not this script, are the reference: other implementations replay them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_GCM_SUBJECT,
    AES_256_SIV,
    DECLARATION_PURPOSE,
    HMAC_SHA256_BIDX,
    MANIFEST_MAC_ALGORITHM,
    BlindIndexer,
    CellEncryptor,
    ColumnSpec,
    Declaration,
    DekEntry,
    DeterministicEncryptor,
    KeyTable,
    SubjectCellEncryptor,
    column_binding,
    encode_signed_manifest,
    row_context,
    subject_context,
)

HERE = Path(__file__).resolve().parent

#: name -> (dek_id, DEK); the DEK bytes are test constants, never use them for data
DEKS: dict[str, tuple[bytes, bytes]] = {
    "A": (bytes.fromhex("a1a2a3a4a5a6a7a8"), bytes(range(32))),
    "B": (bytes.fromhex("b1b2b3b4b5b6b7b8"), bytes(range(32, 64))),
}
SALT = bytes.fromhex("5a17c0de")
#: the plaintext of the manifest MAC key of the manifest vectors (a test constant)
MAC_KEY = bytes(range(64, 96))
DATASET = "/data/users"
UNKNOWN_DEK_ID = bytes.fromhex("0000000000000bad")


def _gcm(dek: str, value: bytes, column: str, context: bytes, counter: int) -> tuple[bytes, bytes]:
    dek_id, key = DEKS[dek]
    nonce = SALT + counter.to_bytes(8, "big")
    return nonce, CellEncryptor(key, dek_id, salt=SALT)._encrypt_with_nonce(value, column, context, nonce)


def positive_vectors() -> list[dict[str, Any]]:
    """The positive cases: (name, algorithm, dek, column, context, value, counter for GCM)."""
    cases: list[tuple[str, str, str, str, bytes, bytes, int]] = [
        ("gcm-ascii", AES_256_GCM, "A", "email", b"", b"alice@example.com", 0),
        ("gcm-empty-value", AES_256_GCM, "A", "email", b"", b"", 1),
        ("gcm-unicode", AES_256_GCM, "A", "name", b"", "Zoë Łukasiewicz 日本語 🙂".encode(), 2),
        ("gcm-binary", AES_256_GCM, "A", "blob", b"", bytes(range(256)), 3),
        ("gcm-long-value", AES_256_GCM, "A", "notes", b"", bytes((i * 7 + 3) % 256 for i in range(5000)), 4),
        (
            "gcm-context",
            AES_256_GCM,
            "A",
            "email",
            b"dataset=s3://bucket/users;run=42",
            b"bob@example.com",
            5,
        ),
        ("gcm-unicode-column", AES_256_GCM, "B", "prénom_名前", b"", b"Chlo\xc3\xa9", 2**40 + 17),
        ("gcm-dek-b-high-counter", AES_256_GCM, "B", "ssn", b"", b"078-05-1120", 2**28 - 1),
        ("siv-ascii", AES_256_SIV, "A", "email", b"", b"alice@example.com", 0),
        ("siv-empty-value", AES_256_SIV, "A", "email", b"", b"", 0),
        ("siv-unicode", AES_256_SIV, "B", "city", b"", "Zürich".encode(), 0),
        ("siv-context", AES_256_SIV, "A", "email", b"tenant=7", b"alice@example.com", 0),
        ("siv-long-value", AES_256_SIV, "B", "notes", b"", bytes((i * 13 + 1) % 256 for i in range(3000)), 0),
        ("bidx-ascii", HMAC_SHA256_BIDX, "A", "email", b"", b"alice@example.com", 0),
        ("bidx-other-column", HMAC_SHA256_BIDX, "A", "email_backup", b"", b"alice@example.com", 0),
        ("bidx-empty-value", HMAC_SHA256_BIDX, "B", "email", b"", b"", 0),
        ("bidx-unicode", HMAC_SHA256_BIDX, "B", "name", b"", "Zoë".encode(), 0),
    ]
    out = []
    for name, algorithm, dek, column, context, value, counter in cases:
        dek_id, key = DEKS[dek]
        vector: dict[str, Any] = {
            "name": name,
            "algorithm": algorithm,
            "dek_id": dek_id.hex(),
            "column": column,
            "context_hex": context.hex(),
            "plaintext_hex": value.hex(),
        }
        if algorithm == AES_256_GCM:
            nonce, cell = _gcm(dek, value, column, context, counter)
            vector["nonce_hex"] = nonce.hex()
        elif algorithm == AES_256_SIV:
            cell = DeterministicEncryptor(key, dek_id).encrypt(value, column, context)
        else:
            cell = BlindIndexer(key, dek_id).index(value, column)
        vector["cell_hex"] = cell.hex()
        out.append(vector)
    return out


def _flip(cell: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(cell)
    b[index] ^= mask
    return bytes(b)


def negative_vectors() -> list[dict[str, Any]]:
    """Cells a reader must reject, each with the spark_kms error class it must raise."""
    _, gcm = _gcm("A", b"alice@example.com", "email", b"", 0)
    _, gcm_ctx = _gcm("A", b"bob@example.com", "email", b"tenant=7", 1)
    dek_a, key_a = DEKS["A"]
    dek_b, _ = DEKS["B"]
    siv = DeterministicEncryptor(key_a, dek_a).encrypt(b"alice@example.com", "email")
    bidx = BlindIndexer(key_a, dek_a).index(b"alice@example.com", "email")
    cases: list[tuple[str, str, bytes, str, bytes, str]] = [
        ("bad-tag", "last tag byte flipped", _flip(gcm, len(gcm) - 1), "email", b"", "DecryptionError"),
        (
            "flipped-ciphertext",
            "first ciphertext byte flipped",
            _flip(gcm, 21),
            "email",
            b"",
            "DecryptionError",
        ),
        ("flipped-nonce", "a nonce byte flipped", _flip(gcm, 12), "email", b"", "DecryptionError"),
        (
            "flipped-header-algorithm",
            "byte 0 turned from GCM (0x11) into SIV (0x12)",
            _flip(gcm, 0, 0x03),
            "email",
            b"",
            "DecryptionError",
        ),
        ("wrong-column", "a valid cell read as another column", gcm, "phone", b"", "DecryptionError"),
        (
            "wrong-context",
            "a valid cell read with another context",
            gcm_ctx,
            "email",
            b"tenant=8",
            "DecryptionError",
        ),
        (
            "missing-context",
            "a cell written with a context read without it",
            gcm_ctx,
            "email",
            b"",
            "DecryptionError",
        ),
        (
            "wrong-dek",
            "header re-pointed at another known DEK",
            gcm[:1] + dek_b + gcm[9:],
            "email",
            b"",
            "DecryptionError",
        ),
        (
            "unknown-dek-id",
            "header names a DEK id absent from the key table",
            gcm[:1] + UNKNOWN_DEK_ID + gcm[9:],
            "email",
            b"",
            "UnknownDataKeyError",
        ),
        (
            "truncated-below-minimum",
            "GCM cell one byte shorter than 37",
            gcm[:36],
            "email",
            b"",
            "MalformedCellError",
        ),
        ("truncated-below-header", "5 bytes: not even a header", gcm[:5], "email", b"", "MalformedCellError"),
        ("empty-cell", "zero bytes", b"", "email", b"", "MalformedCellError"),
        ("truncated-tag", "last byte of the tag cut off", gcm[:-1], "email", b"", "DecryptionError"),
        ("appended-byte", "one byte appended", gcm + b"\x00", "email", b"", "DecryptionError"),
        (
            "unknown-version-2",
            "version nibble 2",
            bytes([0x21]) + gcm[1:],
            "email",
            b"",
            "UnknownFormatVersionError",
        ),
        (
            "unknown-version-0",
            "version nibble 0",
            bytes([0x01]) + gcm[1:],
            "email",
            b"",
            "UnknownFormatVersionError",
        ),
        (
            "unknown-algorithm",
            "algorithm id 0xf",
            bytes([0x1F]) + gcm[1:],
            "email",
            b"",
            "MalformedCellError",
        ),
        (
            "unknown-algorithm-0",
            "algorithm id 0x0",
            bytes([0x10]) + gcm[1:],
            "email",
            b"",
            "MalformedCellError",
        ),
        (
            "blind-index-not-decryptable",
            "a blind-index cell given to decrypt",
            bidx,
            "email",
            b"",
            "MalformedCellError",
        ),
        ("siv-flipped", "SIV synthetic IV byte flipped", _flip(siv, 9), "email", b"", "DecryptionError"),
        ("siv-wrong-column", "SIV cell read as another column", siv, "phone", b"", "DecryptionError"),
        ("siv-truncated", "SIV cell shorter than 25 bytes", siv[:24], "email", b"", "MalformedCellError"),
    ]
    return [
        {
            "name": name,
            "description": description,
            "cell_hex": cell.hex(),
            "column": column,
            "context_hex": context.hex(),
            "expected_error": error,
        }
        for name, description, cell, column, context, error in cases
    ]


def _entry(dek: str, algorithm: str) -> DekEntry:
    dek_id, _ = DEKS[dek]
    return DekEntry(
        dek_id=dek_id.hex(),
        key_uri="local://alias/pii",
        key_id="3f0c2d8e-1b7a-4c55-9f3e-0d6a2b9c7e11",
        key_version="2",
        wrapped_dek=b"opaque wrapped DEK " + dek_id,
        encryption_context={"dataset": "users", "run_id": "r-0001"},
        algorithm=algorithm,
        created_at="2025-01-31T12:00:00Z",
    )


def keytable_vectors() -> dict[str, Any]:
    table = KeyTable(
        deks={e.dek_id: e for e in (_entry("A", AES_256_GCM), _entry("B", AES_256_SIV))},
        columns={
            "email": ColumnSpec("email", AES_256_GCM, "string"),
            "birth_date": ColumnSpec("birth_date", AES_256_GCM, "date32[day]"),
            "customer_id": ColumnSpec("customer_id", AES_256_SIV, "int64"),
            "email_bidx": ColumnSpec("email_bidx", HMAC_SHA256_BIDX, "string", source="email"),
        },
        format_version=1,
        writer="spark_kms 0.1.0",
    )
    valid = json.loads(table.to_json())
    a = DEKS["A"][0].hex()

    def mutate(fn: Any) -> str:
        doc = json.loads(table.to_json())
        fn(doc)
        return json.dumps(doc, sort_keys=True)

    invalid = [
        ("not-json", "{not json", "FormatError", "not valid JSON"),
        ("not-an-object", "[1, 2]", "FormatError", "not a JSON object"),
        (
            "future-version",
            mutate(lambda d: d.update(format_version=3)),
            "UnknownFormatVersionError",
            "format_version 3",
        ),
        ("version-missing", mutate(lambda d: d.pop("format_version")), "FormatError", "format_version"),
        ("version-string", mutate(lambda d: d.update(format_version="1")), "FormatError", "format_version"),
        ("deks-missing", mutate(lambda d: d.pop("deks")), "FormatError", "'deks'"),
        ("columns-missing", mutate(lambda d: d.pop("columns")), "FormatError", "'columns'"),
        (
            "bad-base64",
            mutate(lambda d: d["deks"][a].update(wrapped_dek="not*base64")),
            "FormatError",
            "wrapped_dek",
        ),
        (
            "empty-wrapped-dek",
            mutate(lambda d: d["deks"][a].update(wrapped_dek="")),
            "FormatError",
            "wrapped_dek",
        ),
        (
            "bad-hex-dek-id",
            mutate(lambda d: d["deks"].update({"zz": {**d["deks"][a], "dek_id": "zz"}})),
            "FormatError",
            "dek_id",
        ),
        ("dek-id-mismatch", mutate(lambda d: d["deks"][a].update(dek_id="00" * 8)), "FormatError", a),
        (
            "key-version-int",
            mutate(lambda d: d["deks"][a].update(key_version=2)),
            "FormatError",
            "key_version",
        ),
        ("key-uri-missing", mutate(lambda d: d["deks"][a].pop("key_uri")), "FormatError", "key_uri"),
        (
            "context-not-strings",
            mutate(lambda d: d["deks"][a].update(encryption_context={"a": 1})),
            "FormatError",
            "encryption_context",
        ),
        (
            "unknown-dek-algorithm",
            mutate(lambda d: d["deks"][a].update(algorithm="DES")),
            "FormatError",
            "algorithm",
        ),
        (
            "created-at-not-utc",
            mutate(lambda d: d["deks"][a].update(created_at="2025-01-31T12:00:00+02:00")),
            "FormatError",
            "created_at",
        ),
        (
            "created-at-garbage",
            mutate(lambda d: d["deks"][a].update(created_at="yesterday")),
            "FormatError",
            "created_at",
        ),
        (
            "column-unknown-algorithm",
            mutate(lambda d: d["columns"]["email"].update(algorithm="ROT13")),
            "FormatError",
            "algorithm",
        ),
        (
            "column-name-mismatch",
            mutate(lambda d: d["columns"]["email"].update(name="phone")),
            "FormatError",
            "email",
        ),
        (
            "column-arrow-type-missing",
            mutate(lambda d: d["columns"]["email"].pop("arrow_type")),
            "FormatError",
            "arrow_type",
        ),
        (
            "bidx-without-source",
            mutate(lambda d: d["columns"]["email_bidx"].update(source=None)),
            "FormatError",
            "source",
        ),
        (
            "row-binding-on-blind-index",
            mutate(lambda d: d["columns"]["email_bidx"].update(row_binding="customer_id")),
            "FormatError",
            "row_binding",
        ),
        (
            "row-binding-to-itself",
            mutate(lambda d: d["columns"]["email"].update(row_binding="email")),
            "FormatError",
            "row_binding",
        ),
        (
            "row-binding-not-a-string",
            mutate(lambda d: d["columns"]["email"].update(row_binding=7)),
            "FormatError",
            "row_binding",
        ),
        (
            "manifest-mac-key-as-data-key",
            mutate(lambda d: d["deks"][a].update(algorithm=MANIFEST_MAC_ALGORITHM)),
            "FormatError",
            MANIFEST_MAC_ALGORITHM,
        ),
    ]
    table_v2 = KeyTable(
        deks={e.dek_id: e for e in (_entry("A", AES_256_GCM), _entry("B", AES_256_SIV))},
        columns={
            "ssn": ColumnSpec("ssn", AES_256_GCM, "string", row_binding="customer_id"),
            "amount": ColumnSpec("amount", AES_256_GCM, "double", row_binding="customer_id"),
            "email": ColumnSpec("email", AES_256_SIV, "string"),
            "email_bidx": ColumnSpec("email_bidx", HMAC_SHA256_BIDX, "string", source="email"),
        },
        format_version=2,
        writer="spark_kms 0.1.0",
    )
    manifest_valid = {"deks": {a: valid["deks"][a]}, "format_version": 1}
    return {
        "valid": [
            {"name": "four-columns-two-deks", "json": table.to_json().decode("ascii")},
            {"name": "v2-row-binding", "json": table_v2.to_json().decode("ascii")},
        ],
        "valid_manifest": [{"name": "one-rewrapped-dek", "json": json.dumps(manifest_valid, sort_keys=True)}],
        "invalid": [
            {"name": name, "json": text, "expected_error": error, "message_contains": needle}
            for name, text, error, needle in invalid
        ],
    }


# --------------------------------------------------------------------------- format version 2


def _v2_context(arrow_type: str, row_binding: str | None, row_value: bytes | None) -> bytes:
    spec = ColumnSpec("x", AES_256_GCM, arrow_type, row_binding=row_binding)
    binding = column_binding(spec)
    return binding if row_binding is None else row_context(binding, row_value)


def _spec_doc(arrow_type: str, row_binding: str | None) -> dict[str, Any]:
    return {"arrow_type": arrow_type, "row_binding": row_binding}


def format2_cells() -> list[dict[str, Any]]:
    """Version-2 cells: the AAD context binds the column spec (and the row, when bound)."""
    cases: list[tuple[str, str, str, str, str, str | None, bytes | None, bytes, int]] = [
        ("v2-gcm-string", AES_256_GCM, "A", "email", "string", None, None, b"alice@example.com", 100),
        ("v2-gcm-int64", AES_256_GCM, "A", "age", "int64", None, None, b"31", 101),
        ("v2-gcm-double", AES_256_GCM, "A", "amount", "double", None, None, b"12.5", 102),
        ("v2-gcm-date", AES_256_GCM, "B", "birth", "date32[day]", None, None, b"1994-02-03", 103),
        ("v2-gcm-empty-value", AES_256_GCM, "A", "email", "string", None, None, b"", 104),
        ("v2-gcm-row-bound", AES_256_GCM, "A", "ssn", "string", "customer_id", b"42", b"078-05-1120", 105),
        ("v2-gcm-row-bound-null-key", AES_256_GCM, "A", "ssn", "string", "customer_id", None, b"078-05-1121", 106),
        ("v2-gcm-row-bound-empty-key", AES_256_GCM, "B", "ssn", "string", "customer_id", b"", b"078-05-1122", 107),
        ("v2-gcm-unicode-column", AES_256_GCM, "B", "prénom_名前", "string", None, None, "Chloé".encode(), 108),
        ("v2-siv-string", AES_256_SIV, "A", "email", "string", None, None, b"alice@example.com", 0),
        ("v2-siv-decimal", AES_256_SIV, "B", "price", "decimal128(10, 2)", None, None, b"19.99", 0),
    ]
    out = []
    for name, algorithm, dek, column, arrow_type, bound, row_value, value, counter in cases:
        dek_id, key = DEKS[dek]
        context = _v2_context(arrow_type, bound, row_value)
        vector: dict[str, Any] = {
            "name": name,
            "algorithm": algorithm,
            "dek_id": dek_id.hex(),
            "column": column,
            "spec": _spec_doc(arrow_type, bound),
            "row_value_hex": None if row_value is None else row_value.hex(),
            "context_hex": context.hex(),
            "plaintext_hex": value.hex(),
        }
        if algorithm == AES_256_GCM:
            nonce, cell = _gcm(dek, value, column, context, counter)
            vector["nonce_hex"] = nonce.hex()
        else:
            cell = DeterministicEncryptor(key, dek_id).encrypt(value, column, context)
        vector["cell_hex"] = cell.hex()
        out.append(vector)
    return out


def format2_negative(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Version-2 cells read under another spec, row or rule: every one must fail to authenticate."""
    by_name = {c["name"]: c for c in cells}
    _, v1_cell = _gcm("A", b"alice@example.com", "email", b"", 0)  # = the v1 vector gcm-ascii

    def case(name: str, description: str, cell: str, column: str, arrow_type: str, bound: str | None,
             row_value: bytes | None, rules: list[int]) -> dict[str, Any]:
        return {
            "name": name, "description": description, "cell_hex": cell, "column": column,
            "spec": _spec_doc(arrow_type, bound), "row_value_hex": None if row_value is None else row_value.hex(),
            "aad_versions": rules, "expected_error": "DecryptionError",
        }

    return [
        case("double-read-as-float", "arrow_type double -> float in the key table",
             by_name["v2-gcm-double"]["cell_hex"], "amount", "float", None, None, [2, 1]),
        case("string-read-as-binary", "arrow_type string -> binary in the key table",
             by_name["v2-gcm-string"]["cell_hex"], "email", "binary", None, None, [2, 1]),
        case("int64-read-as-int32", "arrow_type int64 -> int32 in the key table",
             by_name["v2-gcm-int64"]["cell_hex"], "age", "int32", None, None, [2, 1]),
        case("siv-decimal-scale-changed", "arrow_type decimal128(10, 2) -> decimal128(10, 3)",
             by_name["v2-siv-decimal"]["cell_hex"], "price", "decimal128(10, 3)", None, None, [2, 1]),
        case("row-binding-dropped", "row_binding removed from the key table",
             by_name["v2-gcm-row-bound"]["cell_hex"], "ssn", "string", None, None, [2, 1]),
        case("row-binding-renamed", "row_binding names another column (same value)",
             by_name["v2-gcm-row-bound"]["cell_hex"], "ssn", "string", "account_id", b"42", [2]),
        case("row-binding-added", "a row_binding added to a column written without one",
             by_name["v2-gcm-string"]["cell_hex"], "email", "string", "customer_id", b"42", [2]),
        case("cell-moved-to-another-row", "a row-bound cell read in the row of key 43",
             by_name["v2-gcm-row-bound"]["cell_hex"], "ssn", "string", "customer_id", b"43", [2]),
        case("null-key-read-as-empty-key", "bound value null, read where the key is the empty string",
             by_name["v2-gcm-row-bound-null-key"]["cell_hex"], "ssn", "string", "customer_id", b"", [2]),
        case("empty-key-read-as-null-key", "bound value empty, read where the key is null",
             by_name["v2-gcm-row-bound-empty-key"]["cell_hex"], "ssn", "string", "customer_id", None, [2]),
        case("v2-cell-read-by-v1-rule", "a version-2 cell read with the version-1 (empty) context only",
             by_name["v2-gcm-string"]["cell_hex"], "email", "string", None, None, [1]),
        case("v1-cell-read-by-strict-reader", "a version-1 cell read by a reader that accepts version 2 only",
             v1_cell.hex(), "email", "string", None, None, [2]),
        case("v2-cell-other-column", "a version-2 cell read as another column with the same spec",
             by_name["v2-gcm-string"]["cell_hex"], "phone", "string", None, None, [2, 1]),
    ]


def format2_blind_index() -> list[dict[str, Any]]:
    """Blind index cells (unchanged in version 2): the HMAC message holds the *source* column's name."""
    dek_id, key = DEKS["B"]
    cases = [("bidx-source-email", "email_bidx", "email", b"alice@example.com"),
             ("bidx-source-ssn", "ssn_token", "ssn", b"078-05-1120")]
    return [
        {"name": name, "dek_id": dek_id.hex(), "index_column": index, "source": source,
         "plaintext_hex": value.hex(), "cell_hex": BlindIndexer(key, dek_id).index(value, source).hex(),
         "cell_under_index_name_hex": BlindIndexer(key, dek_id).index(value, index).hex()}
        for name, index, source, value in cases
    ]


def _auth_key(dataset: str = DATASET, purpose: str = DECLARATION_PURPOSE) -> DekEntry:
    return DekEntry(
        dek_id="c1c2c3c4c5c6c7c8",
        key_uri="local://alias/pii",
        key_id="3f0c2d8e-1b7a-4c55-9f3e-0d6a2b9c7e11",
        key_version="2",
        wrapped_dek=b"opaque wrapped manifest MAC key",
        encryption_context={"dataset": dataset, "purpose": purpose},
        algorithm=MANIFEST_MAC_ALGORITHM,
        created_at="2025-01-31T12:00:00Z",
    )


def format2_manifests() -> list[dict[str, Any]]:
    """Authenticated manifests: which must verify (read at DATASET, MAC key MAC_KEY) and which must not."""
    declaration = Declaration(
        columns={
            "ssn": ColumnSpec("ssn", AES_256_GCM, "string", row_binding="customer_id"),
            "email": ColumnSpec("email", AES_256_SIV, "string"),
            "email_bidx": ColumnSpec("email_bidx", HMAC_SHA256_BIDX, "string", source="email"),
        },
        min_format_version=2,
    )
    entries = {_entry("A", AES_256_GCM).dek_id: _entry("A", AES_256_GCM)}
    signed = encode_signed_manifest(entries, declaration, _auth_key(), MAC_KEY).decode("ascii")
    base = json.loads(signed)

    def mutate(fn: Any) -> str:
        doc = json.loads(signed)
        fn(doc)
        return json.dumps(doc, sort_keys=True)

    a = DEKS["A"][0].hex()
    cases: list[tuple[str, str, str, str]] = [
        ("signed", "a declaration and one rewrapped entry, authenticated", signed, "valid"),
        ("spaces-and-key-order", "the same document re-serialised with whitespace",
         json.dumps(base, indent=2), "valid"),
        ("declared-column-removed", "ssn deleted from the declaration",
         mutate(lambda d: d["declaration"]["columns"].pop("ssn")), "DecryptionError"),
        ("declared-type-changed", "declared arrow_type string -> binary",
         mutate(lambda d: d["declaration"]["columns"]["email"].update(arrow_type="binary")), "DecryptionError"),
        ("declared-row-binding-removed", "row_binding deleted from a declared column",
         mutate(lambda d: d["declaration"]["columns"]["ssn"].pop("row_binding")), "DecryptionError"),
        ("min-version-lowered", "min_format_version 2 -> 1",
         mutate(lambda d: d["declaration"].update(min_format_version=1)), "DecryptionError"),
        ("dek-entry-changed", "a rewrapped entry's key_version changed",
         mutate(lambda d: d["deks"][a].update(key_version="1")), "DecryptionError"),
        ("dek-entry-removed", "the rewrapped entry deleted",
         mutate(lambda d: d["deks"].pop(a)), "DecryptionError"),
        ("field-added", "an unknown top-level field added", mutate(lambda d: d.update(note="x")), "DecryptionError"),
        ("mac-flipped", "one tag bit flipped",
         mutate(lambda d: d["auth"].update(mac=f"{int(d['auth']['mac'][0], 16) ^ 1:x}" + d["auth"]["mac"][1:])),
         "DecryptionError"),
        ("auth-removed", "the declaration kept, its authentication deleted",
         mutate(lambda d: d.pop("auth")), "FormatError"),
        ("declaration-in-version-1", "a declaration in a version-1 manifest",
         mutate(lambda d: (d.pop("auth"), d.update(format_version=1))), "FormatError"),
        ("other-dataset", "validly signed, but for dataset /data/other",
         encode_signed_manifest(entries, declaration, _auth_key("/data/other"), MAC_KEY).decode("ascii"),
         "DecryptionError"),
        ("not-a-declaration-key", "validly signed with a key whose context purpose is not a declaration",
         encode_signed_manifest(entries, declaration, _auth_key(purpose="data"), MAC_KEY).decode("ascii"),
         "DecryptionError"),
    ]
    return [{"name": n, "description": d, "json": j, "read_at": DATASET, "expected": e} for n, d, j, e in cases]


def format2() -> dict[str, Any]:
    cells = format2_cells()
    return {
        "format_version": 2,
        "deks": {dek_id.hex(): key.hex() for dek_id, key in DEKS.values()},
        "salt_hex": SALT.hex(),
        "mac_key_hex": MAC_KEY.hex(),
        "cells": cells,
        "negative": format2_negative(cells),
        "blind_index": format2_blind_index(),
        "manifests": format2_manifests(),
    }


#: subject id -> subject key (test constants) of the per-subject vectors (docs/FORMAT.md section 15)
SUBJECT_KEYS: dict[str, bytes] = {
    "user-0001": bytes(range(96, 128)),
    "42": bytes(range(128, 160)),
    "Zoë": bytes(range(160, 192)),
}
#: the subject key store's key-encryption key and id of the key-wrapping vectors (test constants)
STORE_KEK = bytes(range(192, 224))
STORE_ID = "5ab1ec7570e1d0000000000000000001"


def _subject_spec(column: str, arrow_type: str, subject: str) -> ColumnSpec:
    return ColumnSpec(name=column, algorithm=AES_256_GCM_SUBJECT, arrow_type=arrow_type, subject=subject,
                      subject_store=STORE_ID)


def subject_cells() -> list[dict[str, Any]]:
    """Per-subject cells: (name, dek, subject id, column, arrow_type, subject column, value, counter)."""
    from spark_kms.crypto import derive_subject_cell_key

    cases = [
        ("subject-email", "A", "user-0001", "email", "string", "user_id", b"alice@example.com", 0),
        ("subject-empty-value", "A", "user-0001", "email", "string", "user_id", b"", 1),
        ("subject-int-id", "A", "42", "amount", "int64", "customer", b"-1234", 2),
        ("subject-unicode-id-and-column", "B", "Zoë", "näme", "string", "persön",
         "Zoë Łukasiewicz".encode(), 0),
        ("subject-other-dek", "B", "user-0001", "email", "string", "user_id", b"alice@example.com", 7),
    ]
    out = []
    for name, dek, sid, column, arrow_type, subject_column, value, counter in cases:
        dek_id, key = DEKS[dek]
        cells = CellEncryptor(key, dek_id, salt=SALT)
        if counter:
            cells._reserve(counter)
        binding = column_binding(_subject_spec(column, arrow_type, subject_column))
        (cell,) = SubjectCellEncryptor(cells).encrypt_rows(
            [value], column, binding, [sid.encode()], {sid.encode(): SUBJECT_KEYS[sid]}
        )
        out.append({
            "name": name, "dek_id": dek_id.hex(), "subject_id": sid, "subject_key_hex": SUBJECT_KEYS[sid].hex(),
            "column": column, "spec": {"arrow_type": arrow_type, "subject": subject_column, "subject_store": STORE_ID},
            "cell_key_hex": derive_subject_cell_key(SUBJECT_KEYS[sid], key).hex(),
            "context_hex": subject_context(binding, sid.encode()).hex(),
            "plaintext_hex": value.hex(), "nonce_hex": (SALT + counter.to_bytes(8, "big")).hex(),
            "cell_hex": cell.hex(),  # type: ignore[union-attr]
        })
    return out


def subject_negative(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-subject cells read under something else than they were written with: every one must fail."""
    first = cells[0]
    cases = [
        ("another-subject-id", {"subject_id": "user-0002"}, "the cell moved to another person's row"),
        ("another-subject-key", {"subject_key_hex": SUBJECT_KEYS["42"].hex()}, "the wrong person's key"),
        ("another-column", {"column": "email2"}, "the cell moved to another column"),
        ("another-subject-column", {"spec": {**first["spec"], "subject": "owner_id"}}, "a changed subject column"),
        ("another-arrow-type", {"spec": {**first["spec"], "arrow_type": "binary"}}, "a changed arrow_type"),
        ("erased-subject", {"subject_key_hex": None}, "the subject key was deleted: the cell reads as erased"),
    ]
    out = []
    for name, change, description in cases:
        vector = {k: v for k, v in first.items() if k not in ("cell_key_hex", "context_hex", "plaintext_hex",
                                                                "nonce_hex", "name")}
        vector.update(change)
        vector.update({"name": name, "description": description,
                       "expected": "erased" if name == "erased-subject" else "DecryptionError"})
        out.append(vector)
    tampered = dict(out[0])
    tampered.update({"name": "flipped-tag-bit", "subject_id": first["subject_id"], "description": "a flipped bit",
                     "cell_hex": _flip(bytes.fromhex(first["cell_hex"]), -1).hex()})
    out.append(tampered)
    relabelled = dict(out[0])
    relabelled.update({"name": "relabelled-as-gcm", "subject_id": first["subject_id"],
                       "description": "byte 0 changed to 0x11: read as a plain GCM cell under the DEK",
                       "cell_hex": "11" + first["cell_hex"][2:], "expected": "MalformedCellError"})
    out.append(relabelled)
    return out


def subject_key_wrapping() -> list[dict[str, Any]]:
    """Subject keys wrapped by the store's key-encryption key (docs/FORMAT.md section 15.3)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    out = []
    for n, (sid, key) in enumerate(sorted(SUBJECT_KEYS.items())):
        nonce = bytes([n]) * 12
        raw = sid.encode()
        aad = b"spark_kms subject key v1" + STORE_ID.encode() + len(raw).to_bytes(4, "big") + raw
        out.append({"subject_id": sid, "subject_key_hex": key.hex(), "aad_hex": aad.hex(),
                    "wrapped_hex": (nonce + AESGCM(STORE_KEK).encrypt(nonce, key, aad)).hex()})
    return out


def subjects() -> dict[str, Any]:
    cells = subject_cells()
    return {
        "deks": {dek_id.hex(): key.hex() for dek_id, key in DEKS.values()},
        "salt_hex": SALT.hex(),
        "store_id": STORE_ID,
        "store_kek_hex": STORE_KEK.hex(),
        "cells": cells,
        "negative": subject_negative(cells),
        "key_wrapping": subject_key_wrapping(),
    }


def build() -> dict[str, Any]:
    """All vector files as name -> JSON document."""
    deks = {dek_id.hex(): key.hex() for dek_id, key in DEKS.values()}
    return {
        "cells_positive.json": {
            "format_version": 1,
            "deks": deks,
            "salt_hex": SALT.hex(),
            "vectors": positive_vectors(),
        },
        "cells_negative.json": {"format_version": 1, "deks": deks, "vectors": negative_vectors()},
        "keytable.json": keytable_vectors(),
        "format2.json": format2(),
        "subjects.json": subjects(),
    }


def main() -> int:
    for name, doc in build().items():
        (HERE / name).write_text(json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True) + "\n")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
