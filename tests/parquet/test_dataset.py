"""Files and datasets: no file for empty input, listing, hive partitions, the manifest, lazy KMS use."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import DATASET_MANIFEST_NAME, encode_manifest
from spark_kms.errors import KeyStateError
from spark_kms.kms import WrappedKey, kms_call_counts
from spark_kms.parquet import (
    EncryptedParquetWriter,
    EncryptionSpec,
    dataset_root_of,
    iter_decrypted_batches,
    list_data_files,
    read_dataset_key_table,
    read_decrypted_table,
    read_key_table,
)

from .conftest import Kms

SCHEMA = pa.schema([("id", pa.int64()), ("ssn", pa.string()), ("amount", pa.float64())])
SPEC = EncryptionSpec(columns=["ssn"])


def _write(kms: Kms, path: Path, ids: range, **kw) -> EncryptedParquetWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    with EncryptedParquetWriter(path, SCHEMA, SPEC, kms.provider, **kw) as w:
        if len(ids):
            w.write_batch(pa.record_batch(
                {"id": list(ids), "ssn": [f"ssn-{i}" for i in ids], "amount": [i / 2 for i in ids]}, schema=SCHEMA))
    return w


def test_empty_writer_makes_no_file_and_no_kms_call(kms: Kms, tmp_path: Path) -> None:
    w = _write(kms, tmp_path / "empty.parquet", range(0))
    assert not (tmp_path / "empty.parquet").exists() and not w.written
    assert w.kms_calls == 0 and kms_call_counts() == {}


def test_write_empty_gives_a_valid_zero_row_file(kms: Kms, tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    w = _write(kms, path, range(0), write_empty=True, metadata={"spark_kms.job_id": "j1"})
    assert w.kms_calls == 0 and kms_call_counts() == {}
    assert pq.read_metadata(path).num_rows == 0
    assert pq.read_metadata(path).metadata[b"spark_kms.job_id"] == b"j1"
    kt = read_key_table(path)
    assert kt.deks == {} and set(kt.columns) == {"ssn"}
    back = read_decrypted_table(path)
    assert back.num_rows == 0 and back.schema == SCHEMA


def test_list_data_files_skips_underscore_and_dot_names(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for rel in ["a.parquet", "date=2024-01-01/b.parquet", "date=2024-01-01/x=1/c.parquet",
                "_SUCCESS", ".a.parquet.crc", "_spark_kms_staging/job/d.parquet", ".hidden/e.parquet",
                DATASET_MANIFEST_NAME, "_spark_kms_runs/r.json"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert [Path(p).relative_to(root).as_posix() for p in list_data_files(root)] == [
        "a.parquet", "date=2024-01-01/b.parquet", "date=2024-01-01/x=1/c.parquet"]
    assert list_data_files(f"file://{root}") == list_data_files(root)
    assert list_data_files(root / "a.parquet") == [str(root / "a.parquet")]
    assert dataset_root_of(root / "date=2024-01-01" / "x=1" / "c.parquet") == str(root)


def test_hive_dataset_reads_back_with_partition_columns(kms: Kms, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(kms, root / "date=2024-01-01" / "part-0.parquet", range(0, 5))
    _write(kms, root / "date=2024-01-01" / "part-1.parquet", range(5, 8))
    _write(kms, root / "date=2024-01-02" / "part-0.parquet", range(8, 10))
    (root / "_SUCCESS").write_bytes(b"")
    kt = read_dataset_key_table(root)
    assert len(kt.deks) == 3 and set(kt.columns) == {"ssn"}
    table = read_decrypted_table(root, kms_options=kms.options).sort_by("id")
    assert table.column("id").to_pylist() == list(range(10))
    assert table.column("ssn").to_pylist() == [f"ssn-{i}" for i in range(10)]
    assert table.schema.field("ssn").type == pa.string()
    assert "date" in table.column_names
    assert pc.unique(table.column("date").cast(pa.string())).to_pylist() == ["2024-01-01", "2024-01-02"]
    assert kms_call_counts()["local:Decrypt"] == 3
    only = read_decrypted_table(root, ["id", "date"], kms_options=kms.options)
    assert only.column_names == ["id", "date"] and only.num_rows == 10


def test_plain_columns_only_make_no_kms_call(kms: Kms, tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    _write(kms, path, range(100))
    before = len(kms.admin.audit_events())
    batches = list(iter_decrypted_batches(path, ["id", "amount"], kms_options=kms.options, batch_size=30))
    assert sum(b.num_rows for b in batches) == 100 and len(batches) == 4
    assert batches[0].schema.names == ["id", "amount"]
    table = read_decrypted_table(path, ["amount"], kms_options=kms.options)
    assert table.column("amount").to_pylist()[:3] == [0.0, 0.5, 1.0]
    assert "local:Decrypt" not in kms_call_counts()
    assert len(kms.admin.audit_events()) == before
    # asking for the encrypted column then makes exactly one Decrypt
    list(iter_decrypted_batches(path, ["ssn"], kms_options=kms.options, batch_size=30))
    assert kms_call_counts()["local:Decrypt"] == 1


def test_manifest_entries_take_precedence_over_footers(kms: Kms, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(kms, root / "k=1" / "a.parquet", range(0, 3))
    _write(kms, root / "k=2" / "b.parquet", range(3, 6))
    footer_table = read_dataset_key_table(root)
    # rewrap every DEK under version 2, record it in the manifest, then retire version 1
    kms.admin.rotate_key("alias/pii")
    rewrapped = {}
    for dek_id, entry in footer_table.deks.items():
        new = kms.provider.reencrypt(
            WrappedKey(entry.wrapped_dek, entry.key_id, entry.key_version), entry.encryption_context)
        assert new.key_version == "2"
        rewrapped[dek_id] = entry.replace(wrapped_dek=new.ciphertext, key_version=new.key_version)
    (root / DATASET_MANIFEST_NAME).write_bytes(encode_manifest(rewrapped))
    kms.admin.disable_key_version("alias/pii", 1)

    merged = read_dataset_key_table(root)
    assert {e.key_version for e in merged.deks.values()} == {"2"}
    assert read_key_table(root / "k=1" / "a.parquet").deks.keys() <= merged.deks.keys()
    table = read_decrypted_table(root, kms_options=kms.options).sort_by("id")
    assert table.column("ssn").to_pylist() == [f"ssn-{i}" for i in range(6)]
    # a single file of the dataset finds the manifest at the dataset root too
    one = read_decrypted_table(root / "k=2" / "b.parquet", kms_options=kms.options)
    assert one.column("ssn").to_pylist() == ["ssn-3", "ssn-4", "ssn-5"]
    # without the manifest, the footer wraps need the disabled version
    (root / DATASET_MANIFEST_NAME).unlink()
    with pytest.raises(KeyStateError):
        read_decrypted_table(root, kms_options=kms.options)


def test_abort_removes_the_partial_file(kms: Kms, tmp_path: Path) -> None:
    path = tmp_path / "partial.parquet"
    with pytest.raises(RuntimeError):
        with EncryptedParquetWriter(path, SCHEMA, SPEC, kms.provider) as w:
            w.write_batch(pa.record_batch({"id": [1], "ssn": ["x"], "amount": [1.0]}, schema=SCHEMA))
            assert path.exists()
            raise RuntimeError("task failed")
    assert not path.exists()


def test_spark_style_batches_with_other_nullability_are_accepted(kms: Kms, tmp_path: Path) -> None:
    strict = pa.schema([pa.field("id", pa.int64(), nullable=False), ("ssn", pa.string()), ("amount", pa.float64())])
    path = tmp_path / "n.parquet"
    with EncryptedParquetWriter(path, strict, SPEC, kms.provider) as w:
        w.write_batch(pa.record_batch({"id": [1], "ssn": ["x"], "amount": [1.0]}, schema=SCHEMA))
    assert read_decrypted_table(path, kms_options=kms.options).column("ssn").to_pylist() == ["x"]


def test_timestamp_partitioned_dataset_and_date_columns(kms: Kms, tmp_path: Path) -> None:
    schema = pa.schema([("when", pa.timestamp("ms", tz="UTC")), ("born", pa.date32())])
    path = tmp_path / "t" / "f.parquet"
    path.parent.mkdir()
    rows = {"when": [dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.timezone.utc), None],
            "born": [dt.date(1990, 7, 14), dt.date(1985, 1, 2)]}
    with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["when", "born"]), kms.provider) as w:
        w.write_batch(pa.record_batch(rows, schema=schema))
    assert read_decrypted_table(path.parent, kms_options=kms.options).to_pydict() == rows


def test_open_reads_each_footer_once_in_parallel_keeping_order_and_row_counts(kms: Kms, tmp_path: Path) -> None:
    """Dataset.open reads the footers FOOTER_READERS at a time: files stay in listing order, each file's row
    count comes from that one read (rows_of needs no second read), and a plain file is skipped with
    missing_ok and refused without it, as with one reader."""
    from spark_kms.errors import MissingKeyTableError
    from spark_kms.parquet.dataset import FOOTER_READERS, Dataset

    root = tmp_path / "ds"
    sizes = {f"part-{i:03d}.parquet": i % 7 + 1 for i in range(3 * FOOTER_READERS)}
    start = 0
    for name, n in sizes.items():
        _write(kms, root / name, range(start, start + n))
        start += n
    ds = Dataset.open(root)
    assert [Path(f).name for f in ds.files] == sorted(sizes)
    assert {Path(f).name: n for f, n in ds.file_rows.items()} == sizes
    for f in ds.files:  # gone: a second read of a footer would fail
        Path(f).rename(Path(f).with_suffix(".away"))
    assert ds.rows_of(ds.files) == sum(sizes.values())
    for f in ds.files:
        Path(f).with_suffix(".away").rename(f)
    pq.write_table(pa.table({"id": [1]}), root / "part-plain.parquet")
    assert len(Dataset.open(root, missing_ok=True).files) == len(sizes)
    with pytest.raises(MissingKeyTableError):
        Dataset.open(root)
