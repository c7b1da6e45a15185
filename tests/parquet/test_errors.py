"""Bad input gets a specific spark_kms error saying what and where, never the data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import KEY_TABLE_METADATA_KEY
from spark_kms.errors import (
    ConfigurationError,
    DecryptionError,
    FormatError,
    MissingKeyTableError,
    SparkKmsError,
)
from spark_kms.parquet import (
    BatchDecryptor,
    BatchEncryptor,
    EncryptedParquetWriter,
    EncryptionSpec,
    iter_decrypted_batches,
    read_dataset_key_table,
    read_decrypted_table,
    read_key_table,
)

from .conftest import Kms

SECRETS = [f"SECRET-SSN-{i:03d}-45-6789" for i in range(50)]
EMAILS = [f"secret.person{i}@example.com" for i in range(50)]
KEY = KEY_TABLE_METADATA_KEY.encode()


def _assert_clean(exc: BaseException) -> None:
    text = f"{exc} {exc!r}"
    for value in SECRETS + EMAILS:
        assert value not in text
    assert "SECRET" not in text and "secret.person" not in text


@pytest.fixture
def encrypted(kms: Kms, tmp_path: Path) -> Path:
    path = tmp_path / "data" / "part-0.parquet"
    path.parent.mkdir()
    table = pa.table({"id": list(range(50)), "ssn": SECRETS, "email": EMAILS})
    with EncryptedParquetWriter(path, table.schema, EncryptionSpec(columns=["ssn", "email"]), kms.provider) as w:
        w.write_batch(table)
    return path


def _rewrite(path: Path, table: pa.Table, metadata: dict | None = None) -> None:
    """Rewrite a file with changed cells, keeping its footer key-value metadata (or ``metadata``)."""
    if metadata is None:
        metadata = pq.read_metadata(path).metadata
    metadata = {k: v for k, v in metadata.items() if k != b"ARROW:schema"}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def test_tampered_cell_names_file_column_and_row(kms: Kms, encrypted: Path) -> None:
    table = pq.read_table(encrypted)
    cells = table.column("ssn").to_pylist()
    cell = bytearray(cells[17])
    cell[25] ^= 0x01  # a ciphertext byte
    cells[17] = bytes(cell)
    _rewrite(encrypted, table.set_column(1, "ssn", pa.array(cells, pa.binary())))
    with pytest.raises(DecryptionError) as info:
        read_decrypted_table(encrypted, kms_options=kms.options)
    msg = str(info.value)
    assert str(encrypted) in msg and "'ssn'" in msg and "row 17" in msg
    _assert_clean(info.value)
    # the untouched column and the plain column still read
    ok = read_decrypted_table(encrypted, ["id", "email"], kms_options=kms.options)
    assert ok.column("email").to_pylist() == EMAILS


def test_tampered_cell_in_a_later_batch_names_the_batch_start(kms: Kms, encrypted: Path) -> None:
    table = pq.read_table(encrypted)
    cells = table.column("email").to_pylist()
    cells[43] = cells[43][:-1] + bytes([cells[43][-1] ^ 0x80])  # the tag
    _rewrite(encrypted, table.set_column(2, "email", pa.array(cells, pa.binary())))
    with pytest.raises(DecryptionError) as info:
        for _ in iter_decrypted_batches(encrypted, kms_options=kms.options, batch_size=20):
            pass
    msg = str(info.value)
    assert "row 3" in msg and "batch from row 40" in msg and "'email'" in msg and str(encrypted) in msg
    _assert_clean(info.value)


def test_cells_swapped_between_columns_fail(kms: Kms, encrypted: Path) -> None:
    table = pq.read_table(encrypted)
    swapped = table.set_column(1, "ssn", table.column("email")).set_column(2, "email", table.column("ssn"))
    _rewrite(encrypted, swapped)
    with pytest.raises(DecryptionError) as info:
        read_decrypted_table(encrypted, kms_options=kms.options)
    assert str(encrypted) in str(info.value)
    _assert_clean(info.value)


def test_cell_from_another_file_fails_with_unknown_dek(kms: Kms, encrypted: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.parquet"
    t = pa.table({"id": [0], "ssn": ["x"], "email": ["y"]})
    with EncryptedParquetWriter(other, t.schema, EncryptionSpec(columns=["ssn", "email"]), kms.provider) as w:
        w.write_batch(t)
    foreign = pq.read_table(other).column("ssn").to_pylist()[0]
    table = pq.read_table(encrypted)
    cells = table.column("ssn").to_pylist()
    cells[5] = foreign
    _rewrite(encrypted, table.set_column(1, "ssn", pa.array(cells, pa.binary())))
    with pytest.raises(DecryptionError) as info:
        read_decrypted_table(encrypted, kms_options=kms.options)
    msg = str(info.value)
    assert "unknown DEK" in msg and str(encrypted) in msg and "'ssn'" in msg and "row 5" in msg


def test_deleted_key_table_is_missing_key_table_error(kms: Kms, encrypted: Path) -> None:
    table = pq.read_table(encrypted)
    meta = {k: v for k, v in pq.read_metadata(encrypted).metadata.items() if k != KEY}
    _rewrite(encrypted, table, meta)
    for read in (
        lambda: read_key_table(encrypted),
        lambda: read_decrypted_table(encrypted, kms_options=kms.options),
        lambda: list(iter_decrypted_batches(encrypted, ["id"])),
        lambda: read_dataset_key_table(encrypted.parent),
    ):
        with pytest.raises(MissingKeyTableError, match=str(encrypted)):
            read()
    assert read_dataset_key_table(encrypted.parent, missing_ok=True).deks == {}


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated JSON
        lambda raw: b"\xff\xfe not json",
        lambda raw: json.dumps({**json.loads(raw), "columns": 7}).encode(),
        lambda raw: raw.replace(b'"wrapped_dek":"', b'"wrapped_dek":"!!'),
    ],
    ids=["truncated", "binary", "bad-field", "bad-base64"],
)
def test_corrupt_key_table_is_format_error_naming_the_file(kms: Kms, encrypted: Path, corrupt) -> None:
    table = pq.read_table(encrypted)
    meta = dict(pq.read_metadata(encrypted).metadata)
    meta[KEY] = corrupt(meta[KEY])
    _rewrite(encrypted, table, meta)
    with pytest.raises(FormatError, match=str(encrypted)) as info:
        read_decrypted_table(encrypted, kms_options=kms.options)
    assert not isinstance(info.value, MissingKeyTableError)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    bogus = tmp_path / "x.parquet"
    bogus.write_bytes(b"not parquet at all")
    with pytest.raises(FormatError, match=str(bogus)):
        read_key_table(bogus)
    with pytest.raises(FormatError, match=str(bogus)):
        read_decrypted_table(bogus)
    with pytest.raises(ConfigurationError, match="no such"):
        read_key_table(tmp_path / "missing.parquet")


def test_unsupported_types_name_column_and_type(kms: Kms) -> None:
    schema = pa.schema([("tags", pa.list_(pa.string())), ("addr", pa.struct([("city", pa.string())])),
                        ("m", pa.map_(pa.string(), pa.int32())), ("d64", pa.date64())])
    for column in schema.names:
        with pytest.raises(ConfigurationError) as info:
            BatchEncryptor(EncryptionSpec(columns=[column]), kms.provider).output_schema(schema)
        assert repr(column) in str(info.value) and str(schema.field(column).type) in str(info.value)


def test_unknown_columns_list_the_available_ones(kms: Kms, tmp_path: Path, encrypted: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("ssn", pa.string())])
    with pytest.raises(ConfigurationError, match=r"\['sssn'\].*available columns: \['id', 'ssn'\]"):
        EncryptedParquetWriter(tmp_path / "x.parquet", schema, EncryptionSpec(columns=["sssn"]), kms.provider)
    with pytest.raises(ConfigurationError, match="available columns"):
        read_decrypted_table(encrypted, ["nope"], kms_options=kms.options)
    with pytest.raises(ConfigurationError, match="already exist"):
        BatchEncryptor(EncryptionSpec(blind_index={"ssn": "id"}), kms.provider).output_schema(schema)
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"columns": "ssn,email"}, "not a single string"),
        ({"columns": ["a", "a"]}, "twice"),
        ({}, "at least one column"),
        ({"columns": ["a"], "blind_index": {"a": "a"}}, "must be new columns"),
    ],
)
def test_bad_specs(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        EncryptionSpec(**kwargs)


@pytest.mark.parametrize("max_cells", [0, 2**32 + 1, True, 10.0])
def test_bad_encryptor_options(kms: Kms, max_cells: object) -> None:
    with pytest.raises(ConfigurationError, match="max_cells_per_dek"):
        BatchEncryptor(EncryptionSpec(columns=["a"]), kms.provider, max_cells_per_dek=max_cells)  # type: ignore[arg-type]


def test_max_cells_per_dek_takes_the_documented_ceiling(kms: Kms) -> None:
    # docs/FORMAT.md section 4: the default is 2**28, the configurable ceiling 2**32.
    batch = pa.record_batch({"a": ["x", "y"]})
    with BatchEncryptor(EncryptionSpec(columns=["a"]), kms.provider, max_cells_per_dek=2**32) as enc:
        enc.encrypt_batch(batch)
        assert enc._lane.cell is not None and enc._lane.cell.max_cells == 2**32 and enc.kms_calls == 1


def test_writer_refuses_a_batch_of_another_schema(kms: Kms, tmp_path: Path) -> None:
    schema = pa.schema([("ssn", pa.string())])
    path = tmp_path / "x.parquet"
    with pytest.raises(ConfigurationError, match="does not match"):
        with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn"]), kms.provider) as w:
            w.write_batch(pa.record_batch({"ssn": ["a"]}))
            w.write_batch(pa.record_batch({"ssn": [1]}))
    assert not path.exists()  # the partial file is removed on error


def test_type_changed_in_key_table_fails_authentication_without_values(kms: Kms, encrypted: Path) -> None:
    # Version 2: the arrow_type is in every cell's associated data, so the cells refuse the changed spec
    # (version 1 read them and then failed -- or not -- to convert them).
    table = pq.read_table(encrypted)
    meta = dict(pq.read_metadata(encrypted).metadata)
    doc = json.loads(meta[KEY])
    doc["columns"]["ssn"]["arrow_type"] = "int64"
    meta[KEY] = json.dumps(doc).encode()
    _rewrite(encrypted, table, meta)
    with pytest.raises(DecryptionError, match="column spec does not match") as info:
        read_decrypted_table(encrypted, kms_options=kms.options)
    assert "'ssn'" in str(info.value) and str(encrypted) in str(info.value)
    _assert_clean(info.value)


def test_version_1_cells_whose_type_does_not_convert_are_a_format_error_without_values(kms: Kms) -> None:
    # A version-1 key table (unauthenticated specs) whose arrow_type disagrees with its cells.
    from spark_kms.crypto import AES_256_GCM, CellEncryptor, ColumnSpec, KeyTable

    enc = BatchEncryptor(EncryptionSpec(columns=["ssn"]), kms.provider)
    enc.encrypt_batch(pa.record_batch({"ssn": ["x"]}))
    entry = enc.dek_entries[0]
    key = kms.provider.decrypt_data_key(_wrapped(entry), entry.encryption_context)
    cells = CellEncryptor(key, bytes.fromhex(entry.dek_id)).encrypt_many([s.encode() for s in SECRETS[:3]], "ssn")
    table = KeyTable(deks={entry.dek_id: entry}, columns={"ssn": ColumnSpec("ssn", AES_256_GCM, "int64")},
                     format_version=1)
    with pytest.raises(FormatError, match="int64") as info:
        BatchDecryptor(table, kms_options=kms.options).decrypt_array(pa.array(cells, pa.binary()), "ssn", where="f")
    _assert_clean(info.value)
    enc.close()


def _wrapped(entry):
    from spark_kms.kms.base import WrappedKey

    return WrappedKey(entry.wrapped_dek, entry.key_id, entry.key_version)


def test_no_plaintext_in_reprs(kms: Kms) -> None:
    batch = pa.record_batch({"ssn": SECRETS})
    enc = BatchEncryptor(EncryptionSpec(columns=["ssn"]), kms.provider)
    out = enc.encrypt_batch(batch)
    dec = BatchDecryptor(enc.key_table(), kms_options=kms.options)
    dec.decrypt_batch(out)
    for obj in (enc, dec, enc.key_table(), *enc.dek_entries):
        assert "SECRET" not in repr(obj)
    enc.close()
    with pytest.raises(SparkKmsError, match="closed"):
        enc.encrypt_batch(batch)


@pytest.mark.parametrize(("column", "arrow_type"), [("amount", "float"), ("ssn", "binary"), ("ssn", "large_string")])
def test_a_key_table_that_retypes_a_column_is_refused_not_read(kms: Kms, tmp_path: Path, column: str,
                                                              arrow_type: str) -> None:
    # Issue #14, item 1: version 1 returned rounded doubles, bytes for text... silently.
    path = tmp_path / "d" / "f.parquet"
    path.parent.mkdir()
    table = pa.table({"id": [1, 2], "amount": [0.1, 1234567.891], "ssn": SECRETS[:2]})
    with EncryptedParquetWriter(path, table.schema, EncryptionSpec(columns=["amount", "ssn"]), kms.provider) as w:
        w.write_batch(table)
    meta = dict(pq.read_metadata(path).metadata)
    doc = json.loads(meta[KEY])
    doc["columns"][column]["arrow_type"] = arrow_type
    meta[KEY] = json.dumps(doc).encode()
    _rewrite(path, pq.read_table(path), meta)
    with pytest.raises(DecryptionError) as info:
        read_decrypted_table(path, [column], kms_options=kms.options)
    assert str(path) in str(info.value) and f"'{column}'" in str(info.value)
    _assert_clean(info.value)
