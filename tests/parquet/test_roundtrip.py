"""Round trips through the file layer: every supported Arrow type, nulls, unicode, empty values."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, GCM_OVERHEAD, parse_cell_header
from spark_kms.kms import kms_call_counts
from spark_kms.parquet import (
    BatchDecryptor,
    BatchEncryptor,
    EncryptedParquetWriter,
    EncryptionSpec,
    iter_decrypted_batches,
    read_decrypted_table,
    read_key_table,
)
from spark_kms.parquet._types import parse_arrow_type

from .conftest import Kms, make_kms

UTC = dt.timezone.utc

# One column per supported type, each with a null, edge values and (for text) unicode and "".
TYPED_COLUMNS: dict[str, pa.Array] = {
    "s": pa.array(["plain", "", None, "ünï©ødé ✓ 𝄞", "x" * 5000], pa.string()),
    "ls": pa.array(["a", "", None, "日本語", "z"], pa.large_string()),
    "b": pa.array([b"\x00\xff", b"", None, bytes(range(256)), b"z"], pa.binary()),
    "lb": pa.array([b"\x00", b"", None, b"\xfe" * 3, b"q"], pa.large_binary()),
    "i8": pa.array([-128, 127, None, 0, 1], pa.int8()),
    "i16": pa.array([-(2**15), 2**15 - 1, None, 0, 1], pa.int16()),
    "i32": pa.array([-(2**31), 2**31 - 1, None, 0, 1], pa.int32()),
    "i64": pa.array([-(2**63), 2**63 - 1, None, 0, 1], pa.int64()),
    "u64": pa.array([0, 2**64 - 1, None, 7, 1], pa.uint64()),
    "f32": pa.array([1.1, -3.4028234663852886e38, None, 1e-45, -0.0], pa.float32()),
    "f64": pa.array([0.1 + 0.2, 5e-324, None, float("inf"), -0.0], pa.float64()),
    "bool": pa.array([True, False, None, True, False], pa.bool_()),
    "date": pa.array([dt.date(1970, 1, 1), dt.date(2024, 2, 29), None, dt.date(1, 1, 1), dt.date(9999, 12, 31)]),
    "ts": pa.array([dt.datetime(2024, 1, 1, 12, 30, 45, 123456), None, None, dt.datetime(1900, 1, 1), dt.datetime(2262, 4, 11)], pa.timestamp("us")),
    "ts_utc": pa.array([dt.datetime(2024, 1, 1, tzinfo=UTC), None, None, dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(2000, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
    "ts_ns_zone": pa.array([1, None, -1, 1_700_000_000_123_456_789, 0], pa.timestamp("ns", tz="Europe/Paris")),
    "ts_s": pa.array([0, None, 1, 2, -5], pa.timestamp("s")),
    "dec": pa.array([decimal.Decimal("1.20"), decimal.Decimal("-99999999.99"), None, decimal.Decimal("0.00"), decimal.Decimal("0.01")], pa.decimal128(10, 2)),
    "dec38": pa.array([decimal.Decimal("1" * 38), None, decimal.Decimal("-1"), decimal.Decimal("0"), decimal.Decimal("5")], pa.decimal128(38, 0)),
}


def _typed_table() -> pa.Table:
    return pa.table({"id": pa.array(range(5), pa.int64()), **TYPED_COLUMNS})


def test_every_supported_type_round_trips_through_a_file(kms: Kms, tmp_path: Path) -> None:
    table = _typed_table()
    spec = EncryptionSpec(columns=list(TYPED_COLUMNS))
    path = tmp_path / "typed.parquet"
    with EncryptedParquetWriter(path, table.schema, spec, kms.provider, encryption_context={"dataset": "typed"}) as w:
        w.write_batch(table)

    stored = pq.read_table(path)
    for name in TYPED_COLUMNS:
        assert stored.schema.field(name).type == pa.binary(), name
        cells = stored.column(name).to_pylist()
        # nulls stay nulls; every other cell is a GCM cell of the one DEK
        assert [c is None for c in cells] == [v is None for v in table.column(name).to_pylist()], name
        assert all(len(c) >= GCM_OVERHEAD for c in cells if c is not None)
    assert stored.column("id").equals(table.column("id"))

    back = read_decrypted_table(path, kms_options=kms.options)
    assert back.schema == table.schema
    for name in table.column_names:
        assert back.column(name).equals(table.column(name)), name


def test_nan_float_round_trips(kms: Kms, tmp_path: Path) -> None:
    table = pa.table({"f": pa.array([float("nan"), 1.0, None], pa.float64())})
    path = tmp_path / "nan.parquet"
    with EncryptedParquetWriter(path, table.schema, EncryptionSpec(columns=["f"]), kms.provider) as w:
        w.write_batch(table)
    values = read_decrypted_table(path, kms_options=kms.options).column("f").to_pylist()
    assert math.isnan(values[0]) and values[1:] == [1.0, None]


def test_key_table_records_original_types_and_algorithms(kms: Kms, tmp_path: Path) -> None:
    table = _typed_table()
    path = tmp_path / "typed.parquet"
    spec = EncryptionSpec(columns=["s", "ts_utc", "dec"], deterministic=["i64"])
    with EncryptedParquetWriter(path, table.schema, spec, kms.provider) as w:
        w.write_batch(table)
    kt = read_key_table(path)
    assert {n: (c.algorithm, c.arrow_type) for n, c in kt.columns.items()} == {
        "s": (AES_256_GCM, "string"),
        "ts_utc": (AES_256_GCM, "timestamp[us, tz=UTC]"),
        "dec": (AES_256_GCM, "decimal128(10, 2)"),
        "i64": (AES_256_SIV, "int64"),
    }
    assert sorted(e.algorithm for e in kt.deks.values()) == sorted([AES_256_GCM, AES_256_SIV])


@pytest.mark.parametrize("column", list(TYPED_COLUMNS))
def test_arrow_type_names_parse_back(column: str) -> None:
    t = TYPED_COLUMNS[column].type
    assert parse_arrow_type(str(t)) == t


def test_dictionary_encoded_and_chunked_input(kms: Kms) -> None:
    dict_col = pa.array(["a", "b", "a", None]).dictionary_encode()
    batch = pa.record_batch({"d": dict_col, "n": pa.array([1, 2, 3, 4])})
    with BatchEncryptor(EncryptionSpec(columns=["d"]), kms.provider) as enc:
        out = enc.encrypt_batch(batch)
        kt = enc.key_table()
    assert kt.columns["d"].arrow_type == "string"
    dec = BatchDecryptor(kt, kms_options=kms.options)
    chunked = pa.chunked_array([out.column(0).slice(0, 2), out.column(0).slice(2)])
    assert dec.decrypt_array(chunked, "d").to_pylist() == ["a", "b", "a", None]


def test_empty_batches_make_no_kms_call_and_keep_the_schema(kms: Kms) -> None:
    schema = pa.schema([("id", pa.int64()), ("ssn", pa.string())])
    enc = BatchEncryptor(EncryptionSpec(columns=["ssn"], blind_index={"ssn": "ssn_bidx"}), kms.provider)
    empty = pa.RecordBatch.from_arrays([pa.array([], pa.int64()), pa.array([], pa.string())], schema=schema)
    out = enc.encrypt_batch(empty)
    assert out.num_rows == 0
    assert out.schema.names == ["id", "ssn", "ssn_bidx"]
    assert out.schema.field("ssn").type == pa.binary()
    assert enc.kms_calls == 0 and kms_call_counts() == {}
    assert enc.key_table().deks == {}
    enc.close()


def test_empty_batches_between_full_ones_round_trip(kms: Kms, tmp_path: Path) -> None:
    schema = pa.schema([("ssn", pa.string())])
    batches = [
        pa.record_batch({"ssn": pa.array([], pa.string())}),
        pa.record_batch({"ssn": ["1", None]}),
        pa.record_batch({"ssn": pa.array([], pa.string())}),
        pa.record_batch({"ssn": ["", "3"]}),
    ]
    path = tmp_path / "e.parquet"
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn"]), kms.provider) as w:
        for b in batches:
            w.write_batch(b)
    assert w.rows == 4
    got = [b.to_pydict() for b in iter_decrypted_batches(path, kms_options=kms.options)]
    assert sum((g["ssn"] for g in got), []) == ["1", None, "", "3"]


# -- hypothesis: random string / binary columns with nulls ---------------------------------------


@pytest.fixture(scope="module")
def module_kms(tmp_path_factory: pytest.TempPathFactory) -> Kms:
    return make_kms(tmp_path_factory.mktemp("hyp") / "keystore")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=30),
    blobs=st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=30),
    column=st.text(min_size=1, max_size=12),
)
def test_random_string_and_binary_columns_round_trip(module_kms: Kms, texts, blobs, column) -> None:
    n = min(len(texts), len(blobs))
    other = column + "_b"
    batch = pa.record_batch({column: pa.array(texts[:n], pa.string()), other: pa.array(blobs[:n], pa.binary())})
    with BatchEncryptor(EncryptionSpec(columns=[column], deterministic=[other]), module_kms.provider) as enc:
        out = enc.encrypt_batch(batch)
        kt = enc.key_table()
    back = BatchDecryptor(kt, kms_options=module_kms.options).decrypt_batch(out)
    assert back.equals(batch)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), st.floats(allow_nan=False, width=64)), min_size=1, max_size=20))
def test_random_doubles_round_trip_bit_exactly(module_kms: Kms, values) -> None:
    batch = pa.record_batch({"x": pa.array(values, pa.float64())})
    with BatchEncryptor(EncryptionSpec(columns=["x"]), module_kms.provider) as enc:
        out = enc.encrypt_batch(batch)
        kt = enc.key_table()
    back = BatchDecryptor(kt, kms_options=module_kms.options).decrypt_array(out.column(0), "x").to_pylist()
    pack = [None if v is None else struct.pack(">d", v) for v in values]
    assert [None if v is None else struct.pack(">d", v) for v in back] == pack


def test_cells_name_the_dek_of_the_key_table(kms: Kms) -> None:
    batch = pa.record_batch({"ssn": ["a", "b"]})
    with BatchEncryptor(EncryptionSpec(columns=["ssn"]), kms.provider) as enc:
        out = enc.encrypt_batch(batch)
        (entry,) = enc.key_table().deks.values()
    for cell in out.column(0).to_pylist():
        header = parse_cell_header(cell)
        assert header.dek_id.hex() == entry.dek_id and header.algorithm == AES_256_GCM
    assert entry.key_uri == "local://alias/pii" and entry.key_version == "1"
