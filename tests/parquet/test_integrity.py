"""Format version 2 integrity (issue #14, items 1 and 10): authenticated column specs, row binding, strict
readers, required encryption and the authenticated declaration of a dataset's encrypted columns.

The tests named ``test_v1_hole_*`` read data whose footer key table was changed by someone who can write to
storage: before version 2 every one of them returned a silently different value.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import (
    AES_256_GCM,
    DATASET_MANIFEST_NAME,
    KEY_TABLE_METADATA_KEY,
    CellEncryptor,
    ColumnSpec,
    KeyTable,
    _native,
    decode_manifest_document,
)
from spark_kms.crypto import _fastgcm as fastgcm
from spark_kms.errors import (
    ConfigurationError,
    DecryptionError,
    FormatError,
    SparkKmsError,
)
from spark_kms.kms import WrappedKey, kms_call_counts
from spark_kms.parquet import (
    BatchDecryptor,
    BatchEncryptor,
    Dataset,
    EncryptedParquetWriter,
    EncryptionSpec,
    check_required_encryption,
    declare_encryption,
    iter_decrypted_batches,
    read_decrypted_table,
    read_key_table,
)

from .conftest import Kms

KEY = KEY_TABLE_METADATA_KEY.encode()
ROWS = 12
TABLE = pa.table({
    "id": pa.array(range(100, 100 + ROWS), pa.int64()),
    "ssn": [None if i == 3 else f"SECRET-{i:03d}-45-6789" for i in range(ROWS)],
    "amount": pa.array([i * 1.25 + 0.1 for i in range(ROWS)], pa.float64()),
    "email": [f"person{i % 5}@example.org" for i in range(ROWS)],
})
SPEC = EncryptionSpec(columns=["ssn", "amount"], deterministic=["email"], blind_index={"email": "email_bidx"},
                      row_binding="id")
SECRETS = [v for v in TABLE["ssn"].to_pylist() if v] + TABLE["email"].to_pylist()


@pytest.fixture(params=["native", "pure"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both GCM paths: the C extension and the pure-Python twin (the seam of tests/crypto/test_native.py)."""
    monkeypatch.setattr(_native, "_BACKEND", fastgcm if request.param == "native" else _native._PureBackend)
    monkeypatch.setattr(_native, "_native", fastgcm if request.param == "native" else None)
    return request.param


def _write(kms: Kms, path: Path, table: pa.Table = TABLE, spec: EncryptionSpec = SPEC) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with EncryptedParquetWriter(path, table.schema, spec, kms.provider) as writer:
        writer.write_batch(table)
    return path


def _edit_footer(path: Path, edit) -> None:
    """Rewrite ``path`` with its cells as they are and ``edit(doc)`` applied to the footer's key table JSON."""
    meta = dict(pq.read_metadata(path).metadata)
    doc = json.loads(meta[KEY])
    edit(doc)
    meta[KEY] = json.dumps(doc).encode()
    _rewrite(path, pq.read_table(path), meta)


def _rewrite(path: Path, table: pa.Table, meta: dict | None = None) -> None:
    meta = dict(pq.read_metadata(path).metadata) if meta is None else meta
    meta = {k: v for k, v in meta.items() if k != b"ARROW:schema"}
    pq.write_table(table.replace_schema_metadata(meta), path)


def _clean(exc: BaseException) -> None:
    text = f"{exc} {exc!r}"
    assert not any(s in text for s in SECRETS), text


# --------------------------------------------------------------------------- the writer


def test_writer_produces_version_2_with_row_binding_on_gcm_columns_only(kms: Kms, tmp_path: Path) -> None:
    table = read_key_table(_write(kms, tmp_path / "f.parquet"))
    assert table.format_version == 2 and table.source_versions == {2}
    assert table.columns["ssn"].row_binding == "id" and table.columns["amount"].row_binding == "id"
    assert table.columns["email"].row_binding is None and table.columns["email_bidx"].row_binding is None
    again = EncryptionSpec.from_key_table(table)
    assert (set(again.columns), again.deterministic, again.blind_index, again.row_binding) == (
        set(SPEC.columns), SPEC.deterministic, SPEC.blind_index, SPEC.row_binding)


def test_round_trip_with_row_binding_on_both_paths(kms: Kms, tmp_path: Path, backend: str) -> None:
    path = _write(kms, tmp_path / "f.parquet")
    back = read_decrypted_table(path, kms_options=kms.options, verify_blind_indexes=True)
    assert back.select(TABLE.column_names).equals(TABLE)
    # The bound column is read along even when it is not asked for, and not returned.
    only = read_decrypted_table(path, ["ssn"], kms_options=kms.options)
    assert only.column_names == ["ssn"] and only["ssn"].to_pylist() == TABLE["ssn"].to_pylist()
    batches = list(iter_decrypted_batches(path, ["amount"], kms_options=kms.options, batch_size=5))
    assert [b.schema.names for b in batches] == [["amount"]] * 3
    assert pa.Table.from_batches(batches)["amount"].to_pylist() == TABLE["amount"].to_pylist()


def test_spec_rules_for_row_binding(kms: Kms) -> None:
    with pytest.raises(ConfigurationError, match="plain column"):
        EncryptionSpec(columns=["ssn"], row_binding="ssn")
    with pytest.raises(ConfigurationError, match="plain column"):
        EncryptionSpec(columns=["ssn"], blind_index={"ssn": "ssn_bidx"}, row_binding="ssn_bidx")
    with pytest.raises(ConfigurationError, match="not in the data"):
        BatchEncryptor(EncryptionSpec(columns=["ssn"], row_binding="pk"), kms.provider).output_schema(TABLE.schema)
    assert EncryptionSpec(columns=["ssn"], row_binding="id").to_dict()["row_binding"] == "id"
    assert hash(EncryptionSpec(columns=["ssn"], row_binding="id")) != hash(EncryptionSpec(columns=["ssn"]))


# --------------------------------------------------------------------------- item 1: specs are authenticated


@pytest.mark.parametrize(
    ("column", "field", "value"),
    [
        ("amount", "arrow_type", "float"),  # double -> float: silently rounded values in version 1
        ("amount", "arrow_type", "string"),  # double -> string: the values' text in version 1
        ("ssn", "arrow_type", "binary"),  # string -> binary: bytes instead of text in version 1
        ("email", "arrow_type", "binary"),  # the deterministic column too
        ("ssn", "row_binding", None),  # row binding dropped: cells movable between rows again
        ("ssn", "row_binding", "amount"),  # bound to another column
    ],
)
def test_v1_hole_a_changed_column_spec_is_an_error_naming_file_and_column(
    kms: Kms, tmp_path: Path, backend: str, column: str, field: str, value: object
) -> None:
    path = _write(kms, tmp_path / "f.parquet")

    def edit(doc: dict) -> None:
        if value is None:
            doc["columns"][column].pop(field)
        else:
            doc["columns"][column][field] = value

    _edit_footer(path, edit)
    for reader in (read_decrypted_table, lambda p, **kw: pa.Table.from_batches(list(iter_decrypted_batches(p, **kw)))):
        with pytest.raises(DecryptionError, match="column spec does not match the cells") as info:
            reader(path, kms_options=kms.options)
        message = str(info.value)
        assert str(path) in message and f"'{column}'" in message
        _clean(info.value)


def test_v1_hole_a_cell_column_relabelled_as_blind_index_is_refused(kms: Kms, tmp_path: Path) -> None:
    path = _write(kms, tmp_path / "f.parquet")
    def relabel(doc: dict) -> None:
        doc["columns"]["ssn"].update(algorithm="HMAC_SHA256_128", source="email")
        doc["columns"]["ssn"].pop("row_binding")

    _edit_footer(path, relabel)
    with pytest.raises(FormatError, match=r"blind-index column 'ssn', row 0: not a blind-index cell") as info:
        read_decrypted_table(path, kms_options=kms.options)
    assert str(path) in str(info.value)


def test_v1_hole_an_encrypted_column_replaced_by_plaintext_is_refused_when_required(kms: Kms, tmp_path: Path) -> None:
    path = _write(kms, tmp_path / "ds" / "f.parquet")
    stripped = pq.read_table(path).set_column(1, "ssn", TABLE["ssn"])  # plaintext where cells were
    meta = dict(pq.read_metadata(path).metadata)
    doc = json.loads(meta[KEY])
    doc["columns"].pop("ssn")
    meta[KEY] = json.dumps(doc).encode()
    _rewrite(path, stripped, meta)
    for read in (lambda **kw: read_decrypted_table(path, **kw), lambda **kw: read_decrypted_table(path.parent, **kw),
                 lambda **kw: list(iter_decrypted_batches(path, **kw))):
        with pytest.raises(FormatError, match="'ssn' must be encrypted but is stored in plaintext") as info:
            read(kms_options=kms.options, require_encrypted=["ssn", "amount"])
        assert str(path) in str(info.value)
        _clean(info.value)
    # Through the plumbing point too (what the Spark layer calls).
    with pytest.raises(FormatError, match="plaintext"):
        Dataset.open(path.parent, require_encrypted=["ssn"])
    with pytest.raises(FormatError, match="plaintext"):
        check_required_encryption(Dataset.open(path.parent), ["ssn"])
    with pytest.raises(FormatError, match="plaintext"):
        check_required_encryption(read_key_table(path), ["ssn"], f"file {path}")
    check_required_encryption(read_key_table(path), ["not_in_this_file"], columns=["id"])  # absent: not checked


def test_a_row_bound_cell_moved_to_another_row_fails(kms: Kms, tmp_path: Path, backend: str) -> None:
    path = _write(kms, tmp_path / "f.parquet")
    stored = pq.read_table(path)
    cells = stored["ssn"].to_pylist()
    cells[0], cells[1] = cells[1], cells[0]
    _rewrite(path, stored.set_column(1, "ssn", pa.array(cells, pa.binary())))
    with pytest.raises(DecryptionError, match=r"column 'ssn', row 0") as info:
        read_decrypted_table(path, ["ssn"], kms_options=kms.options)
    _clean(info.value)


def test_a_changed_row_key_fails_its_bound_cells(kms: Kms, tmp_path: Path) -> None:
    path = _write(kms, tmp_path / "f.parquet")
    stored = pq.read_table(path)
    ids = stored["id"].to_pylist()
    ids[5] = 999
    _rewrite(path, stored.set_column(0, "id", pa.array(ids, pa.int64())))
    with pytest.raises(DecryptionError, match=r"row 5"):
        read_decrypted_table(path, kms_options=kms.options)


def test_a_decrypt_without_the_bound_column_is_refused_clearly(kms: Kms, tmp_path: Path) -> None:
    path = _write(kms, tmp_path / "f.parquet")
    table = read_key_table(path)
    decryptor = BatchDecryptor(table, kms_options=kms.options)
    with pytest.raises(ConfigurationError, match="bound to rows by column 'id'"):
        decryptor.decrypt_array(pq.read_table(path)["ssn"], "ssn")
    with pytest.raises(ConfigurationError, match="which was not read"):
        decryptor.decrypt_table(pq.read_table(path, columns=["ssn"]))


def test_blind_index_cells_are_checked_and_verified_on_request(kms: Kms, tmp_path: Path) -> None:
    path = _write(kms, tmp_path / "f.parquet")
    stored = pq.read_table(path)
    i = stored.column_names.index("email_bidx")
    cells = stored["email_bidx"].to_pylist()
    cells[2] = cells[2][:-1] + bytes([cells[2][-1] ^ 1])  # a flipped token: still shaped like one
    _rewrite(path, stored.set_column(i, "email_bidx", pa.array(cells, pa.binary())))
    assert read_decrypted_table(path, kms_options=kms.options)["email_bidx"].to_pylist()[2] == cells[2]
    with pytest.raises(DecryptionError, match=r"blind-index column 'email_bidx', row 2"):
        read_decrypted_table(path, ["email_bidx"], kms_options=kms.options, verify_blind_indexes=True)
    cells[2] = cells[2][:24]  # truncated: refused without verification
    _rewrite(path, stored.set_column(i, "email_bidx", pa.array(cells, pa.binary())))
    with pytest.raises(FormatError, match=r"row 2: not a blind-index cell"):
        read_decrypted_table(path, kms_options=kms.options)


# --------------------------------------------------------------------------- version 1 data and strict readers


def _write_v1(kms: Kms, path: Path, ids: range) -> Path:
    """A file as version 1 wrote it: empty AAD context, key table format_version 1."""
    with BatchEncryptor(EncryptionSpec(columns=["ssn"]), kms.provider) as enc:
        enc.encrypt_batch(pa.record_batch({"ssn": ["x"]}))  # only to get a real data key
        entry = enc.dek_entries[0]
    dek = kms.provider.decrypt_data_key(WrappedKey(entry.wrapped_dek, entry.key_id, entry.key_version),
                                        entry.encryption_context)
    cells = CellEncryptor(dek, bytes.fromhex(entry.dek_id)).encrypt_many([f"v1-{i}".encode() for i in ids], "ssn")
    table = KeyTable(deks={entry.dek_id: entry}, columns={"ssn": ColumnSpec("ssn", AES_256_GCM, "string")},
                     format_version=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pa.table({"id": pa.array(ids, pa.int64()), "ssn": pa.array(cells, pa.binary())})
    pq.write_table(data.replace_schema_metadata({KEY_TABLE_METADATA_KEY: table.to_json()}), path)
    return path


def test_version_1_files_stay_readable_and_strict_readers_refuse_them(kms: Kms, tmp_path: Path, backend: str) -> None:
    path = _write_v1(kms, tmp_path / "ds" / "old.parquet", range(4))
    assert read_decrypted_table(path, kms_options=kms.options)["ssn"].to_pylist() == [f"v1-{i}" for i in range(4)]
    for read in (lambda: read_decrypted_table(path, kms_options=kms.options, min_format_version=2),
                 lambda: read_decrypted_table(path.parent, kms_options=kms.options, min_format_version=2),
                 lambda: list(iter_decrypted_batches(path, kms_options=kms.options, min_format_version=2))):
        with pytest.raises(FormatError, match="format_version 1.*2 or later") as info:
            read()
        assert str(path) in str(info.value) or "key table" in str(info.value)
    with pytest.raises(FormatError, match="min_format_version=2"):
        BatchDecryptor(read_key_table(path), min_format_version=2)


def test_a_version_1_table_that_claims_version_2_fails_and_the_reverse(kms: Kms, tmp_path: Path) -> None:
    old = _write_v1(kms, tmp_path / "old.parquet", range(3))
    _edit_footer(old, lambda d: d.update(format_version=2))
    with pytest.raises(DecryptionError, match="column spec"):
        read_decrypted_table(old, kms_options=kms.options)
    new = _write(kms, tmp_path / "new.parquet", TABLE.select(["id", "ssn"]), EncryptionSpec(columns=["ssn"]))
    _edit_footer(new, lambda d: d.update(format_version=1))  # a downgrade: readers still apply version 2 first
    assert read_decrypted_table(new, kms_options=kms.options)["ssn"].to_pylist() == TABLE["ssn"].to_pylist()
    _edit_footer(new, lambda d: d["columns"]["ssn"].update(arrow_type="binary"))  # ... so the spec still counts
    with pytest.raises(DecryptionError, match="column spec"):
        read_decrypted_table(new, kms_options=kms.options)
    with pytest.raises(FormatError, match="format_version 1"):
        read_decrypted_table(new, kms_options=kms.options, min_format_version=2)


def test_a_dataset_of_both_versions_reads_with_each_files_rule(kms: Kms, tmp_path: Path, backend: str) -> None:
    root = tmp_path / "ds"
    _write_v1(kms, root / "a.parquet", range(3))
    _write(kms, root / "b.parquet", pa.table({"id": pa.array([7, 8], pa.int64()), "ssn": ["n7", "n8"]}),
           EncryptionSpec(columns=["ssn"]))
    back = read_decrypted_table(root, kms_options=kms.options).sort_by("id")
    assert back["ssn"].to_pylist() == ["v1-0", "v1-1", "v1-2", "n7", "n8"]
    merged = Dataset.open(root).key_table()
    assert merged.format_version == 1 and merged.source_versions == {1, 2}
    # A version-1 cell planted into the version-2 file is refused there (its key table says version 2).
    old_cells = pq.read_table(root / "a.parquet")["ssn"].to_pylist()
    b = pq.read_table(root / "b.parquet")
    _rewrite(root / "b.parquet", b.set_column(1, "ssn", pa.array([old_cells[0], b["ssn"][1].as_py()], pa.binary())))
    with pytest.raises(DecryptionError, match="b.parquet"):
        read_decrypted_table(root, kms_options=kms.options)


# --------------------------------------------------------------------------- the declaration


@pytest.fixture
def declared(kms: Kms, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "ds"
    _write(kms, root / "k=1" / "a.parquet", TABLE.slice(0, 6))
    _write(kms, root / "k=2" / "b.parquet", TABLE.slice(6))
    declaration = declare_encryption(root, kms_options=kms.options)
    assert set(declaration.columns) == {"ssn", "amount", "email", "email_bidx"}
    assert declaration.min_format_version == 2
    yield root


def test_declaring_writes_an_authenticated_manifest_readers_verify_once(kms: Kms, declared: Path) -> None:
    document = decode_manifest_document((declared / DATASET_MANIFEST_NAME).read_bytes())
    assert document.format_version == 2 and document.authenticated
    assert document.auth_key.encryption_context == {"dataset": str(declared.resolve()),
                                                    "purpose": "spark_kms.declaration"}
    before = kms_call_counts().get("local:Decrypt", 0)
    back = read_decrypted_table(declared, ["id", "ssn"], kms_options=kms.options).sort_by("id")
    assert back["ssn"].to_pylist() == TABLE["ssn"].to_pylist()
    after_first = kms_call_counts()["local:Decrypt"]
    read_decrypted_table(declared / "k=1" / "a.parquet", ["id"], kms_options=kms.options)
    assert kms_call_counts()["local:Decrypt"] == after_first  # the verification is cached per process
    assert after_first - before >= 1
    # Without KMS access the key tables of a declared dataset are not handed out.
    opened = Dataset.open(declared)
    with pytest.raises(ConfigurationError, match="authenticated manifest"):
        opened.key_table()
    opened.verify(kms.options)
    assert opened.declaration is not None and opened.key_table().columns.keys() == opened.declaration.columns.keys()


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["declaration"]["columns"].pop("ssn"),
        lambda d: d["declaration"]["columns"]["amount"].update(arrow_type="float"),
        lambda d: d["declaration"].update(min_format_version=1),
        lambda d: d["auth"]["key"]["encryption_context"].update(dataset="/elsewhere"),
        lambda d: d["auth"].update(mac="0" * 64),
        lambda d: d.update(extra=1),
    ],
    ids=["column-removed", "type-changed", "min-version-lowered", "context-changed", "mac-zeroed", "field-added"],
)
def test_a_changed_manifest_is_refused(kms: Kms, declared: Path, edit) -> None:
    manifest = declared / DATASET_MANIFEST_NAME
    doc = json.loads(manifest.read_bytes())
    edit(doc)
    manifest.write_text(json.dumps(doc))
    with pytest.raises(SparkKmsError) as info:
        read_decrypted_table(declared, kms_options=kms.options)
    assert "manifest" in str(info.value) or "unwrap" in str(info.value)
    _clean(info.value)


def test_a_declaration_without_its_authentication_is_refused(kms: Kms, declared: Path) -> None:
    manifest = declared / DATASET_MANIFEST_NAME
    doc = json.loads(manifest.read_bytes())
    doc.pop("auth")
    manifest.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="without authentication"):
        read_decrypted_table(declared, kms_options=kms.options)


def test_v1_hole_a_stripped_column_in_a_declared_dataset_is_refused(kms: Kms, declared: Path) -> None:
    path = declared / "k=2" / "b.parquet"
    stripped = pq.read_table(path).set_column(1, "ssn", TABLE.slice(6)["ssn"])
    meta = dict(pq.read_metadata(path).metadata)
    doc = json.loads(meta[KEY])
    doc["columns"].pop("ssn")
    meta[KEY] = json.dumps(doc).encode()
    _rewrite(path, stripped, meta)
    for target in (declared, path):  # the dataset, and the single file (it finds the root's manifest)
        with pytest.raises(FormatError, match=r"column 'ssn' must be encrypted but is stored in plaintext") as info:
            read_decrypted_table(target, ["id", "ssn"], kms_options=kms.options)
        assert str(path.resolve()) in str(info.value)
        _clean(info.value)


def test_a_spec_differing_from_the_declaration_is_refused(kms: Kms, declared: Path) -> None:
    # GCM relabelled SIV reads the same values (the cell header decides), but the declaration says otherwise.
    path = declared / "k=1" / "a.parquet"
    _edit_footer(path, lambda d: d["columns"]["amount"].update(algorithm="AES_256_SIV", row_binding=None))
    with pytest.raises(FormatError, match=r"'amount' is described by the key table as AES_256_SIV") as info:
        read_decrypted_table(path, kms_options=kms.options)
    assert str(path.resolve()) in str(info.value)


def test_declared_min_version_makes_every_reader_strict(kms: Kms, declared: Path) -> None:
    _write_v1(kms, declared / "k=3" / "c.parquet", range(2))
    with pytest.raises(FormatError, match="format_version 1"):
        read_decrypted_table(declared, kms_options=kms.options)


def test_a_moved_dataset_must_be_redeclared(kms: Kms, declared: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.move(str(declared), moved)
    with pytest.raises(DecryptionError, match="was authenticated for dataset") as info:
        read_decrypted_table(moved, kms_options=kms.options)
    assert "replace=True" in str(info.value)
    declare_encryption(moved, kms_options=kms.options, replace=True)
    assert read_decrypted_table(moved, kms_options=kms.options).num_rows == ROWS


def test_rewriting_the_manifest_keeps_the_declaration_and_needs_the_kms(kms: Kms, declared: Path) -> None:
    dataset = Dataset.open(declared)
    with pytest.raises(ConfigurationError, match="pass kms_options"):
        dataset.write_manifest(dataset.manifest)
    dataset.write_manifest(dict(dataset.footer_deks()), kms_options=kms.options)
    document = decode_manifest_document((declared / DATASET_MANIFEST_NAME).read_bytes())
    assert document.declaration is not None and set(document.declaration.columns) == {"ssn", "amount", "email",
                                                                                       "email_bidx"}
    assert read_decrypted_table(declared, kms_options=kms.options).num_rows == ROWS


def test_rewrap_keeps_a_declaration_valid(kms: Kms, declared: Path) -> None:
    from spark_kms.jobs import rewrap_dataset

    kms.admin.rotate_key("alias/pii")
    summary = rewrap_dataset(declared, kms_options=kms.options)
    assert summary.deks == len(Dataset.open(declared).footer_deks())
    document = decode_manifest_document((declared / DATASET_MANIFEST_NAME).read_bytes())
    assert document.declaration is not None and document.auth_key.key_version == "2"
    kms.admin.disable_key_version("alias/pii", 1)
    assert read_decrypted_table(declared, kms_options=kms.options).num_rows == ROWS


def test_a_tampered_manifest_is_never_re_signed(kms: Kms, declared: Path) -> None:
    manifest = declared / DATASET_MANIFEST_NAME
    doc = json.loads(manifest.read_bytes())
    doc["declaration"]["columns"].pop("ssn")
    manifest.write_text(json.dumps(doc))
    with pytest.raises(DecryptionError, match="does not authenticate"):
        Dataset.open(declared).write_manifest({}, kms_options=kms.options)


def test_declare_names_unknown_columns_and_a_key_when_it_cannot_guess(kms: Kms, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(kms, root / "a.parquet")
    with pytest.raises(ConfigurationError, match=r"\['id'\] are not encrypted"):
        declare_encryption(root, kms_options=kms.options, columns=["id"])
    declaration = declare_encryption(root, kms_options=kms.options, columns=["ssn"])
    assert list(declaration.columns) == ["ssn"]
    with pytest.raises(ConfigurationError, match="min_format_version"):
        Dataset.open(root, min_format_version=3)


def test_decrypt_bytes_gives_the_plaintext_bytes_under_the_recorded_spec(kms: Kms, tmp_path: Path) -> None:
    path = _write(kms, tmp_path / "f.parquet", TABLE.select(["id", "amount"]), EncryptionSpec(columns=["amount"]))
    table = read_key_table(path)
    cells = pq.read_table(path)["amount"]
    raw = BatchDecryptor(table, kms_options=kms.options).decrypt_bytes(cells, "amount")
    assert raw.to_pylist()[:2] == [b"0.1", b"1.35"]
    # A caller that states another arrow_type is refused: the type is authenticated.
    other = KeyTable(deks=table.deks, columns={"amount": ColumnSpec("amount", AES_256_GCM, "binary")})
    with pytest.raises(DecryptionError, match="column spec"):
        BatchDecryptor(other, kms_options=kms.options).decrypt_bytes(cells, "amount")
