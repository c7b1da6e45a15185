"""Key table and dataset manifest codec."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    DECLARATION_PURPOSE,
    HMAC_SHA256_BIDX,
    KEY_TABLE_METADATA_KEY,
    MANIFEST_MAC_ALGORITHM,
    ColumnSpec,
    Declaration,
    DekEntry,
    KeyTable,
    authenticate_manifest,
    column_binding,
    decode_manifest,
    decode_manifest_document,
    encode_manifest,
    encode_signed_manifest,
    row_context,
    utc_now_iso,
)
from spark_kms.errors import ConfigurationError, DecryptionError, FormatError, UnknownFormatVersionError


def entry(dek_id: str = "a1a2a3a4a5a6a7a8", **changes) -> DekEntry:
    base = DekEntry(
        dek_id=dek_id,
        key_uri="local://alias/pii",
        key_id="key-1",
        key_version="1",
        wrapped_dek=b"\x00wrapped\xff",
        encryption_context={"dataset": "users"},
        algorithm=AES_256_GCM,
        created_at="2025-02-01T00:00:00Z",
    )
    return base.replace(**changes) if changes else base


def table(*entries: DekEntry) -> KeyTable:
    return KeyTable(
        deks={e.dek_id: e for e in entries},
        columns={"email": ColumnSpec("email", AES_256_GCM, "string")},
    )


def test_round_trip_and_canonical_bytes():
    t = table(entry(), entry("b1b2b3b4b5b6b7b8", algorithm=AES_256_SIV))
    raw = t.to_json()
    assert isinstance(raw, bytes)
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    back = KeyTable.from_json(raw)
    assert back == t and back.to_json() == raw
    assert KeyTable.from_json(raw.decode()) == t
    assert back.writer.startswith("spark_kms ")
    assert back.dek(bytes.fromhex("a1a2a3a4a5a6a7a8")).key_id == "key-1"
    assert KEY_TABLE_METADATA_KEY == "spark_kms.key_table"


@settings(max_examples=40, deadline=None)
@given(
    wrapped=st.binary(min_size=1, max_size=64),
    context=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    version=st.text(max_size=10),
    column=st.text(min_size=1, max_size=20),
)
def test_round_trip_arbitrary_fields(wrapped, context, version, column):
    t = KeyTable(
        deks={
            "0123456789abcdef": entry(
                "0123456789abcdef", wrapped_dek=wrapped, encryption_context=context, key_version=version
            )
        },
        columns={column: ColumnSpec(column, AES_256_SIV, "int64")},
    )
    assert KeyTable.from_json(t.to_json(), where="f") == t


def test_unknown_fields_are_ignored_for_forward_compatibility():
    doc = json.loads(table(entry()).to_json())
    doc["future_field"] = {"x": 1}
    doc["deks"]["a1a2a3a4a5a6a7a8"]["future_field"] = 3
    assert KeyTable.from_json(json.dumps(doc)) == table(entry())


def test_unknown_version_and_where():
    doc = json.loads(table(entry()).to_json())
    doc["format_version"] = 7
    with pytest.raises(UnknownFormatVersionError, match=r"in file x\.parquet has format_version 7"):
        KeyTable.from_json(json.dumps(doc), where="file x.parquet")
    with pytest.raises(FormatError, match="not UTF-8"):
        KeyTable.from_json(b"\xff\xfe", where="file x.parquet")


def test_merge_unions_and_detects_conflicts():
    a, b = entry(), entry("b1b2b3b4b5b6b7b8")
    merged = table(a).merge(table(b))
    assert set(merged.deks) == {a.dek_id, b.dek_id}
    assert table(a).merge(table(a)) == table(a)
    with pytest.raises(FormatError, match=r"DEK a1a2a3a4a5a6a7a8 has two different .* in dataset d"):
        table(a).merge(table(a.replace(key_version="2")), where="dataset d")
    other_cols = KeyTable(deks={}, columns={"email": ColumnSpec("email", AES_256_GCM, "int64")})
    with pytest.raises(FormatError, match="column 'email' is described differently"):
        table(a).merge(other_cols)


def test_with_overrides_takes_precedence_and_leaves_the_original():
    a = entry()
    rewrapped = a.replace(key_version="2", wrapped_dek=b"new wrapping")
    t = table(a)
    o = t.with_overrides({a.dek_id: rewrapped})
    assert o.deks[a.dek_id].key_version == "2" and t.deks[a.dek_id].key_version == "1"
    assert o.columns == t.columns
    with pytest.raises(ConfigurationError):
        t.with_overrides({"ffffffffffffffff": rewrapped})


def test_manifest_round_trip_and_shape():
    a, b = entry(), entry("b1b2b3b4b5b6b7b8", algorithm=AES_256_SIV)
    raw = encode_manifest({a.dek_id: a, b.dek_id: b})
    assert json.loads(raw)["format_version"] == 1 and set(json.loads(raw)) == {"deks", "format_version"}
    assert encode_manifest([a, b]) == raw
    assert decode_manifest(raw, where="_spark_kms_keys.json") == {a.dek_id: a, b.dek_id: b}
    with pytest.raises(UnknownFormatVersionError, match="format_version 3"):
        decode_manifest(raw.replace(b'"format_version":1', b'"format_version":3'))
    # An unauthenticated version-2 manifest is entries only, as version 1.
    assert decode_manifest(raw.replace(b'"format_version":1', b'"format_version":2')) == {a.dek_id: a, b.dek_id: b}
    with pytest.raises(FormatError, match=r"_spark_kms_keys\.json"):
        decode_manifest(b'{"format_version":1}', where="dataset /d/_spark_kms_keys.json")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"dek_id": "A1A2A3A4A5A6A7A8"}, "dek_id"),
        ({"dek_id": "a1a2"}, "dek_id"),
        ({"wrapped_dek": b""}, "wrapped_dek"),
        ({"wrapped_dek": "text"}, "wrapped_dek"),
        ({"encryption_context": {"a": 1}}, "encryption_context"),
        ({"algorithm": HMAC_SHA256_BIDX}, "algorithm"),
        ({"created_at": "2025-02-01T00:00:00"}, "created_at"),
        ({"key_uri": ""}, "key_uri"),
    ],
)
def test_dek_entry_constructor_states_the_rule(changes, needle):
    with pytest.raises(ConfigurationError, match=needle):
        entry(**changes)


def test_dek_entry_copies_its_inputs_and_repr_is_short():
    context = {"dataset": "users"}
    e = entry(wrapped_dek=bytearray(b"abc"), encryption_context=context)
    context["dataset"] = "changed"
    assert e.encryption_context == {"dataset": "users"} and isinstance(e.wrapped_dek, bytes)
    assert "wrapped" not in repr(e) and "a1a2a3a4a5a6a7a8" in repr(e)
    assert e.dek_id_bytes == bytes.fromhex("a1a2a3a4a5a6a7a8")


def test_column_spec_rules():
    assert ColumnSpec("e_bidx", HMAC_SHA256_BIDX, "string", source="e").source == "e"
    with pytest.raises(ConfigurationError, match="source"):
        ColumnSpec("e_bidx", HMAC_SHA256_BIDX, "string")
    with pytest.raises(ConfigurationError, match="source"):
        ColumnSpec("e", AES_256_GCM, "string", source="x")
    with pytest.raises(ConfigurationError, match="algorithm"):
        ColumnSpec("e", "AES_128_CBC", "string")
    with pytest.raises(ConfigurationError, match="deks"):
        KeyTable(deks={"0000000000000000": entry()}, columns={})


def test_version_1_tables_keep_their_version_and_bytes_and_merges_keep_the_lowest():
    v1 = KeyTable(deks={"a1a2a3a4a5a6a7a8": entry()}, columns={"email": ColumnSpec("email", AES_256_GCM, "string")},
                  format_version=1)
    back = KeyTable.from_json(v1.to_json())
    assert back.format_version == 1 and back.to_json() == v1.to_json() and back.source_versions == {1}
    assert b"row_binding" not in v1.to_json()
    v2 = KeyTable.from_json(table(entry("b1b2b3b4b5b6b7b8")).to_json())
    assert v2.format_version == 2 and v2.source_versions == {2}
    merged = v2.merge(back)
    assert merged.format_version == 1 and merged.source_versions == {1, 2}
    assert merged.with_overrides({}).source_versions == {1, 2}
    # The AAD rules a reader tries: version 2 only for version-2 tables, row-bound columns or strict readers.
    assert v2.aad_versions("email") == (2,)
    assert back.aad_versions("email") == (2, 1) and merged.aad_versions("email") == (2, 1)
    assert back.aad_versions("email", min_format_version=2) == (2,)
    assert KeyTable(deks={}, columns={}).aad_versions("email") == (2, 1)  # built in code: unknown origin
    bound = KeyTable(deks={}, columns={"ssn": ColumnSpec("ssn", AES_256_GCM, "string", row_binding="id")},
                     format_version=1)
    assert bound.aad_versions("ssn") == (2,)
    with pytest.raises(ConfigurationError, match="format_version"):
        KeyTable(deks={}, columns={}, format_version=3)


def test_row_binding_rules_and_codec():
    spec = ColumnSpec("ssn", AES_256_GCM, "string", row_binding="customer_id")
    assert spec.to_dict()["row_binding"] == "customer_id"
    assert ColumnSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "row_binding" not in ColumnSpec("ssn", AES_256_GCM, "string").to_dict()
    for bad, needle in [
        (lambda: ColumnSpec("b", HMAC_SHA256_BIDX, "string", source="e", row_binding="id"), "row_binding"),
        (lambda: ColumnSpec("ssn", AES_256_GCM, "string", row_binding="ssn"), "another column"),
        (lambda: ColumnSpec("ssn", AES_256_GCM, "string", row_binding=""), "row_binding"),
        (lambda: ColumnSpec("ssn", AES_256_GCM, "x" * 70000), "arrow_type"),
    ]:
        with pytest.raises(ConfigurationError, match=needle):
            bad()
    a, b = table(entry()), KeyTable(deks={}, columns={"email": ColumnSpec("email", AES_256_GCM, "string",
                                                                          row_binding="id")})
    with pytest.raises(FormatError, match="bound to id"):
        a.merge(b)


def test_column_binding_and_row_context_are_length_prefixed():
    plain = column_binding(ColumnSpec("c", AES_256_SIV, "int64"))
    assert plain == b"\x02\x00\x05int64\x00\x00"
    bound = column_binding(ColumnSpec("c", AES_256_GCM, "string", row_binding="id"))
    assert bound == b"\x02\x00\x06string\x00\x02id"
    assert row_context(bound, None) == bound + b"\x00"
    assert row_context(bound, b"") == bound + b"\x01\x00\x00\x00\x00"
    assert row_context(bound, b"42") == bound + b"\x01\x00\x00\x00\x0242"
    # The algorithm is not in the binding: the cell header (in the AAD since version 1) carries it.
    assert column_binding(ColumnSpec("c", AES_256_GCM, "int64")) == plain


def test_signed_manifest_round_trip_and_tamper():
    key = bytes(range(32))
    auth = entry("c1c2c3c4c5c6c7c8", algorithm=MANIFEST_MAC_ALGORITHM,
                 encryption_context={"purpose": DECLARATION_PURPOSE, "dataset": "/d"})
    declaration = Declaration({"email": ColumnSpec("email", AES_256_GCM, "string")})
    raw = encode_signed_manifest({"a1a2a3a4a5a6a7a8": entry()}, declaration, auth, key)
    doc = decode_manifest_document(raw, where="m")
    assert doc.format_version == 2 and doc.authenticated and doc.declaration == declaration
    assert doc.deks == {"a1a2a3a4a5a6a7a8": entry()}
    authenticate_manifest(doc, key, "/d")
    with pytest.raises(DecryptionError, match="not for '/e'"):
        authenticate_manifest(doc, key, "/e")
    with pytest.raises(DecryptionError, match="does not authenticate"):
        authenticate_manifest(doc, bytes(32), "/d")
    changed = raw.replace(b'"arrow_type":"string"', b'"arrow_type":"binary"')
    with pytest.raises(DecryptionError, match="does not authenticate"):
        authenticate_manifest(decode_manifest_document(changed), key, "/d")
    with pytest.raises(ConfigurationError, match="not a data key"):
        encode_manifest([auth])
    with pytest.raises(ConfigurationError, match=MANIFEST_MAC_ALGORITHM):
        KeyTable(deks={auth.dek_id: auth}, columns={})
    with pytest.raises(ConfigurationError, match="auth key"):
        encode_signed_manifest({}, declaration, entry(), key)


def test_utc_now_iso_is_accepted_by_the_codec():
    e = entry(created_at=utc_now_iso())
    assert e.created_at.endswith("Z")
    assert KeyTable.from_json(table(e).to_json()).deks[e.dek_id].created_at == e.created_at
