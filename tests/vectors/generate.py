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
    AES_256_SIV,
    HMAC_SHA256_BIDX,
    BlindIndexer,
    CellEncryptor,
    ColumnSpec,
    DekEntry,
    DeterministicEncryptor,
    KeyTable,
)

HERE = Path(__file__).resolve().parent

#: name -> (dek_id, DEK); the DEK bytes are test constants, never use them for data
DEKS: dict[str, tuple[bytes, bytes]] = {
    "A": (bytes.fromhex("a1a2a3a4a5a6a7a8"), bytes(range(32))),
    "B": (bytes.fromhex("b1b2b3b4b5b6b7b8"), bytes(range(32, 64))),
}
SALT = bytes.fromhex("5a17c0de")
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
            mutate(lambda d: d.update(format_version=2)),
            "UnknownFormatVersionError",
            "format_version 2",
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
    ]
    manifest_valid = {"deks": {a: valid["deks"][a]}, "format_version": 1}
    return {
        "valid": [{"name": "four-columns-two-deks", "json": table.to_json().decode("ascii")}],
        "valid_manifest": [{"name": "one-rewrapped-dek", "json": json.dumps(manifest_valid, sort_keys=True)}],
        "invalid": [
            {"name": name, "json": text, "expected_error": error, "message_contains": needle}
            for name, text, error, needle in invalid
        ],
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
    }


def main() -> int:
    for name, doc in build().items():
        (HERE / name).write_text(json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True) + "\n")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
