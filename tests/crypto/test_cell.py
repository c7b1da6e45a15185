"""Behaviour of the cell encryptors and decryptor: round trips, tampering, nonces, limits, leaks."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    HMAC_SHA256_BIDX,
    BlindIndexer,
    CellDecryptor,
    CellEncryptor,
    CellHeader,
    DeterministicEncryptor,
    dek_id_from_hex,
    dek_id_hex,
    new_dek_id,
    parse_cell_header,
)
from spark_kms.errors import (
    ConfigurationError,
    DecryptionError,
    FormatError,
    KeyUsageLimitError,
    MalformedCellError,
    UnknownFormatVersionError,
)

DEK = bytes(range(100, 132))
DEK_ID = bytes.fromhex("0011223344556677")
OTHER_DEK = bytes(range(200, 232))
OTHER_ID = bytes.fromhex("8899aabbccddeeff")
KEYS = {DEK_ID: DEK, OTHER_ID: OTHER_DEK}

values_st = st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=30)
text_values_st = st.lists(st.one_of(st.none(), st.text(max_size=100)), max_size=30)
column_st = st.text(min_size=0, max_size=40)
context_st = st.binary(max_size=40)


def decryptor() -> CellDecryptor:
    return CellDecryptor(KEYS.__getitem__)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(values=values_st, column=column_st, context=context_st)
def test_gcm_round_trip_arbitrary_bytes(values, column, context):
    cells = CellEncryptor(DEK, DEK_ID).encrypt_many(values, column, context)
    assert [c is None for c in cells] == [v is None for v in values]
    assert all(len(c) == len(v) + 37 for c, v in zip(cells, values) if v is not None)
    assert decryptor().decrypt_many(cells, column, context) == values


@settings(max_examples=60, deadline=None)
@given(values=text_values_st, column=column_st)
def test_gcm_and_siv_round_trip_unicode_text(values, column):
    raw = [None if v is None else v.encode("utf-8") for v in values]
    for enc in (CellEncryptor(DEK, DEK_ID), DeterministicEncryptor(OTHER_DEK, OTHER_ID)):
        cells = enc.encrypt_many(raw, column)
        back = decryptor().decrypt_many(cells, column)
        assert [None if b is None else b.decode("utf-8") for b in back] == values


@settings(max_examples=60, deadline=None)
@given(values=values_st, column=column_st, context=context_st)
def test_siv_round_trip_and_determinism(values, column, context):
    enc = DeterministicEncryptor(DEK, DEK_ID)
    cells = enc.encrypt_many(values, column, context)
    assert cells == DeterministicEncryptor(DEK, DEK_ID).encrypt_many(values, column, context)
    assert decryptor().decrypt_many(cells, column, context) == values


@settings(max_examples=60, deadline=None)
@given(value=st.binary(max_size=200), column=column_st)
def test_blind_index_is_rfc2104_hmac_of_the_spec(value, column):
    """The precomputed-pad HMAC equals the standard library's HMAC over the spec's message."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"spark_kms/v1 HMAC-SHA256 blind index").derive(DEK)
    col = column.encode("utf-8")
    expected = hmac.new(key, len(col).to_bytes(2, "big") + col + value, hashlib.sha256).digest()[:16]
    indexer = BlindIndexer(DEK, DEK_ID)
    assert indexer.index(value, column) == b"\x13" + DEK_ID + expected
    assert indexer.index_many([value, None], column) == [b"\x13" + DEK_ID + expected, None]


def test_mixed_deks_and_algorithms_in_one_batch():
    gcm_a = CellEncryptor(DEK, DEK_ID).encrypt_many([b"a1", b"a2"], "c")
    gcm_b = CellEncryptor(OTHER_DEK, OTHER_ID).encrypt_many([b"b1"], "c")
    siv_a = DeterministicEncryptor(DEK, DEK_ID).encrypt_many([b"s1"], "c")
    cells = [gcm_a[0], gcm_b[0], siv_a[0], None, gcm_a[1]]
    assert decryptor().decrypt_many(cells, "c") == [b"a1", b"b1", b"s1", None, b"a2"]


def test_decrypt_accepts_bytearray_and_memoryview_cells():
    cell = CellEncryptor(DEK, DEK_ID).encrypt(b"v", "c")
    assert decryptor().decrypt_many([bytearray(cell), memoryview(cell)], "c") == [b"v", b"v"]


def test_dek_lookup_is_called_once_per_dek_id():
    calls: list[bytes] = []

    def lookup(dek_id: bytes) -> bytes:
        calls.append(dek_id)
        return KEYS[dek_id]

    dec = CellDecryptor(lookup)
    a = CellEncryptor(DEK, DEK_ID).encrypt_many([b"x"] * 5, "c")
    b = CellEncryptor(OTHER_DEK, OTHER_ID).encrypt_many([b"y"] * 5, "c")
    s = DeterministicEncryptor(DEK, DEK_ID).encrypt_many([b"z"] * 3, "c")
    dec.decrypt_many(a + b + s + a, "c")
    dec.decrypt(b[0], "c")
    assert sorted(calls) == sorted([DEK_ID, OTHER_ID])


def test_blind_index_equal_within_column_different_across_columns_and_keys():
    idx = BlindIndexer(DEK, DEK_ID)
    assert idx.index(b"alice", "email") == idx.index(b"alice", "email")
    assert idx.index(b"alice", "email") != idx.index(b"alice", "email2")
    assert idx.index(b"alice", "email") != BlindIndexer(OTHER_DEK, DEK_ID).index(b"alice", "email")
    # Key separation: the blind index is not a prefix of the SIV cell of the same value.
    siv = DeterministicEncryptor(DEK, DEK_ID).encrypt(b"alice", "email")
    assert idx.index(b"alice", "email")[9:] != siv[9:25]


def test_gcm_is_randomised_siv_is_not():
    enc = CellEncryptor(DEK, DEK_ID)
    one, two = enc.encrypt_many([b"same", b"same"], "c")
    assert one != two and one[9:13] == two[9:13]  # same salt, different counters
    # Salts are drawn per encryptor: 20 encryptors sharing one is a 2**-600-ish event, not a flake.
    assert len({CellEncryptor(DEK, DEK_ID).encrypt(b"same", "c")[9:13] for _ in range(20)}) > 1
    det = DeterministicEncryptor(DEK, DEK_ID)
    assert det.encrypt(b"same", "c") == det.encrypt(b"same", "c")
    assert det.encrypt(b"same", "c") != det.encrypt(b"same", "d")


# --------------------------------------------------------------------------- headers and ids


def test_cell_headers_and_ids():
    cell = CellEncryptor(DEK, DEK_ID).encrypt(b"v", "c")
    assert parse_cell_header(cell) == CellHeader(version=1, algorithm=AES_256_GCM, dek_id=DEK_ID)
    assert parse_cell_header(DeterministicEncryptor(DEK, DEK_ID).encrypt(b"v", "c")).algorithm == AES_256_SIV
    assert parse_cell_header(BlindIndexer(DEK, DEK_ID).index(b"v", "c")).algorithm == HMAC_SHA256_BIDX
    assert cell[0] == 0x11
    with pytest.raises(UnknownFormatVersionError, match="version 3"):
        parse_cell_header(b"\x31" + cell[1:])
    with pytest.raises(MalformedCellError, match="shorter than the 9-byte header"):
        parse_cell_header(cell[:8], where="file f.parquet")
    assert len(new_dek_id()) == 8 and new_dek_id() != new_dek_id()
    assert dek_id_from_hex(dek_id_hex(DEK_ID)) == DEK_ID
    assert dek_id_hex(DEK_ID) == "0011223344556677"
    for bad in ("0011", "zz11223344556677", 7):
        with pytest.raises(ConfigurationError):
            dek_id_from_hex(bad)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dek": b"short"}, "32 bytes"),
        ({"dek_id": b"1234"}, "8 bytes"),
        ({"max_cells": 0}, "max_cells"),
        ({"max_cells": 2**32 + 1}, "max_cells"),
        ({"salt": b"12345"}, "salt"),
    ],
)
def test_encryptor_argument_errors_state_the_rule(kwargs, needle):
    args = {"dek": DEK, "dek_id": DEK_ID, **kwargs}
    with pytest.raises(ConfigurationError, match=needle):
        CellEncryptor(args.pop("dek"), args.pop("dek_id"), **args)


def test_column_name_too_long_and_bad_context_are_configuration_errors():
    enc = CellEncryptor(DEK, DEK_ID)
    with pytest.raises(ConfigurationError, match="65535"):
        enc.encrypt_many([b"x"], "c" * 70000)
    with pytest.raises(ConfigurationError, match="context"):
        enc.encrypt(b"x", "c", "text context")  # type: ignore[arg-type]
    assert enc.cells_used == 0  # nothing reserved when the arguments are wrong


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "make",
    [
        lambda: CellEncryptor(DEK, DEK_ID).encrypt(b"alice@example.com", "email"),
        lambda: DeterministicEncryptor(DEK, DEK_ID).encrypt(b"alice@example.com", "email"),
        lambda: CellEncryptor(DEK, DEK_ID).encrypt(b"", "email"),
    ],
    ids=["gcm", "siv", "gcm-empty"],
)
def test_flipping_any_bit_of_any_byte_never_yields_plaintext(make):
    cell = make()
    dec = decryptor()
    allowed = (DecryptionError, MalformedCellError, UnknownFormatVersionError)
    for position in range(len(cell)):
        for mask in (0x01, 0x80):
            tampered = bytearray(cell)
            tampered[position] ^= mask
            with pytest.raises(allowed):
                dec.decrypt(bytes(tampered), "email")
    for length in range(len(cell)):
        with pytest.raises(allowed):
            dec.decrypt(cell[:length], "email")
    with pytest.raises(DecryptionError):
        dec.decrypt(cell + b"\x00", "email")


def test_oversized_cell_is_malformed():
    class TinyLimit(CellDecryptor):
        _MAX_CELL_BYTES = 64

    cell = CellEncryptor(DEK, DEK_ID).encrypt(b"x" * 40, "c")
    with pytest.raises(MalformedCellError, match="larger than the format allows"):
        TinyLimit(KEYS.__getitem__).decrypt_many([cell], "c", where="file big.parquet")


def test_non_bytes_cell_is_malformed():
    with pytest.raises(MalformedCellError, match="row 1"):
        decryptor().decrypt_many([None, "a string"], "c")  # type: ignore[list-item]


def test_lookup_returning_a_bad_key_is_a_decryption_error():
    cell = CellEncryptor(DEK, DEK_ID).encrypt(b"x", "c")
    with pytest.raises(DecryptionError, match="0011223344556677"):
        CellDecryptor(lambda _id: b"short").decrypt(cell, "c")


# --------------------------------------------------------------------------- nonces and limits


def test_100k_nonces_are_distinct_and_the_counter_is_monotonic():
    enc = CellEncryptor(DEK, DEK_ID)
    cells = []
    for _ in range(10):
        cells += enc.encrypt_many([b""] * 10_000, "c")
    nonces = [c[9:21] for c in cells]
    assert len(set(nonces)) == 100_000
    assert {n[:4] for n in nonces} == {nonces[0][:4]}
    counters = [int.from_bytes(n[4:], "big") for n in nonces]
    assert counters == list(range(100_000))
    assert enc.cells_used == 100_000


def test_none_values_do_not_consume_counters():
    enc = CellEncryptor(DEK, DEK_ID, max_cells=3)
    cells = enc.encrypt_many([None, b"a", None, b"b", None, b"c", None], "c")
    assert [int.from_bytes(c[13:21], "big") for c in cells if c is not None] == [0, 1, 2]
    assert enc.cells_left == 0
    assert enc.encrypt_many([None, None], "c") == [None, None]


def test_limit_is_enforced_before_anything_is_encrypted():
    enc = CellEncryptor(DEK, DEK_ID, max_cells=5)
    enc.encrypt_many([b"1", b"2", b"3"], "c")
    with pytest.raises(KeyUsageLimitError, match="may encrypt 5 cells; 3 used, 3 more requested") as info:
        enc.encrypt_many([b"4", b"5", b"6"], "c")
    assert DEK_ID.hex() in str(info.value)
    assert enc.cells_used == 3 and enc.cells_left == 2
    assert len(enc.encrypt_many([b"4", b"5"], "c")) == 2
    with pytest.raises(KeyUsageLimitError):
        enc.encrypt(b"6", "c")
    assert enc.cells_used == 5


def test_a_batch_failing_midway_never_reuses_its_counters():
    enc = CellEncryptor(DEK, DEK_ID)
    with pytest.raises(TypeError):
        enc.encrypt_many([b"ok", 12345, b"never"], "c")  # type: ignore[list-item]
    assert enc.cells_used == 3  # the whole batch was reserved
    assert enc.encrypt(b"next", "c")[13:21] == (3).to_bytes(8, "big")


def test_wipe_zeroes_the_key_and_disables_the_encryptor():
    enc, det, idx = CellEncryptor(DEK, DEK_ID), DeterministicEncryptor(DEK, DEK_ID), BlindIndexer(DEK, DEK_ID)
    for obj in (enc, det, idx):
        obj.wipe()
        assert obj._dek == bytearray(32)
        assert "wiped=True" in repr(obj)
    with pytest.raises(KeyUsageLimitError, match="wiped"):
        enc.encrypt_many([b"x"], "c")
    with pytest.raises(KeyUsageLimitError, match="wiped"):
        det.encrypt(b"x", "c")
    with pytest.raises(KeyUsageLimitError, match="wiped"):
        idx.index_many([b"x"], "c")
    dec = decryptor()
    dec.decrypt(CellEncryptor(DEK, DEK_ID).encrypt(b"x", "c"), "c")
    dec.wipe()
    assert repr(dec) == "CellDecryptor(cached_deks=0)"


# --------------------------------------------------------------------------- what errors and reprs reveal


def test_messages_and_reprs_hold_no_plaintext_or_key_material():
    secret = b"4111-1111-1111-1111 SECRET"
    enc = CellEncryptor(DEK, DEK_ID)
    cell = enc.encrypt(secret, "card")
    dec = decryptor()
    forbidden = [
        repr(secret),
        secret.decode(),
        "SECRET",
        DEK.hex(),
        repr(DEK),
        cell.hex(),
        repr(cell),
        cell[21:].hex(),
    ]
    texts = [repr(enc), repr(DeterministicEncryptor(DEK, DEK_ID)), repr(BlindIndexer(DEK, DEK_ID)), repr(dec)]
    failures = [
        lambda: dec.decrypt(cell, "other", where="file f.parquet"),
        lambda: dec.decrypt_many([cell[:-1] + bytes([cell[-1] ^ 1])], "card", where="file f.parquet"),
        lambda: CellDecryptor(lambda _i: OTHER_DEK).decrypt(cell, "card"),
        lambda: CellDecryptor({}.__getitem__).decrypt_many([cell], "card", where="file f.parquet"),
        lambda: dec.decrypt(cell[:20], "card"),
        lambda: dec.decrypt(b"\x51" + cell[1:], "card"),
        lambda: CellEncryptor(DEK, DEK_ID, max_cells=1).encrypt_many([secret, secret], "card"),
        lambda: CellEncryptor(secret, DEK_ID),
    ]
    for fail in failures:
        with pytest.raises((FormatError, DecryptionError, KeyUsageLimitError, ConfigurationError)) as info:
            fail()
        texts.append(str(info.value))
        texts.append(repr(info.value))
        assert info.value.__cause__ is None or "InvalidTag" not in repr(info.value.__cause__)
    for text in texts:
        for needle in forbidden:
            assert needle not in text, (needle, text)


def test_unknown_dek_message_names_the_dek_id_column_row_and_file():
    cell = CellEncryptor(OTHER_DEK, OTHER_ID).encrypt(b"x", "email")
    with pytest.raises(DecryptionError) as info:
        CellDecryptor({DEK_ID: DEK}.__getitem__).decrypt_many([None, cell], "email", where="file p.parquet")
    message = str(info.value)
    for needle in ("unknown DEK 8899aabbccddeeff", "column 'email'", "row 1", "file p.parquet"):
        assert needle in message


def test_random_keys_round_trip():
    dek, dek_id = os.urandom(32), new_dek_id()
    cells = CellEncryptor(bytearray(dek), dek_id).encrypt_many([b"a", None], "c")
    assert CellDecryptor({dek_id: bytearray(dek)}.__getitem__).decrypt_many(cells, "c") == [b"a", None]
