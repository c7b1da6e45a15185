"""How encrypted files are encoded (spark_kms/parquet/writer.py): AES-256-GCM columns without dictionary
or statistics, other columns with both; the files stay ordinary Parquet that reads back equal."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table
from spark_kms.parquet.writer import RowGroupBuffer, parquet_write_options, write_row_group

from .conftest import Kms


def _table(rows: int = 3000) -> pa.Table:
    return pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "country": pa.array([["FR", "JP", None][i % 3] for i in range(rows)], pa.string()),
        "ssn": pa.array([None if i % 7 == 0 else f"{i:09d}" for i in range(rows)], pa.string()),
        "email": pa.array([f"u{i % 10}@example.org" for i in range(rows)], pa.string()),
    })


def _encodings(path: Path) -> dict[str, tuple[set[str], bool]]:
    rg = pq.ParquetFile(path).metadata.row_group(0)
    return {rg.column(i).path_in_schema: (set(rg.column(i).encodings), rg.column(i).is_stats_set)
            for i in range(rg.num_columns)}


def test_gcm_columns_have_no_dictionary_nor_statistics_others_keep_them(kms: Kms, tmp_path: Path) -> None:
    table = _table()
    path = tmp_path / "f.parquet"
    spec = EncryptionSpec(columns=["ssn"], deterministic=["email"], blind_index={"email": "email_bidx"})
    with EncryptedParquetWriter(path, table.schema, spec, kms.provider, kms_options=kms.options) as w:
        w.write_batch(table)
    enc = _encodings(path)
    assert "RLE_DICTIONARY" not in enc["ssn"][0] and not enc["ssn"][1]  # random cells: PLAIN, no min/max
    for kept in ("id", "country", "email", "email_bidx"):  # plain, deterministic (SIV) and blind index
        assert "RLE_DICTIONARY" in enc[kept][0] and enc[kept][1], kept
    meta = pq.ParquetFile(path).metadata.row_group(0)
    assert {meta.column(i).compression for i in range(meta.num_columns)} == {"SNAPPY"}
    back = read_decrypted_table(path, kms_options=kms.options)
    assert back.select(["id", "country", "ssn", "email"]).equals(table)


def test_parquet_options_of_the_caller_win(kms: Kms, tmp_path: Path) -> None:
    table = _table(100)
    path = tmp_path / "f.parquet"
    with EncryptedParquetWriter(path, table.schema, EncryptionSpec(columns=["ssn"]), kms.provider,
                                parquet_options={"use_dictionary": True, "compression": "zstd"}) as w:
        w.write_batch(table)
    enc = _encodings(path)
    assert "RLE_DICTIONARY" in enc["ssn"][0]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert read_decrypted_table(path, kms_options=kms.options).equals(table)


def test_options_when_every_column_is_random() -> None:
    schema = pa.schema([("a", pa.binary()), ("b", pa.binary())])
    assert parquet_write_options(schema, ["a", "b"]) == {
        "compression": "snappy", "use_dictionary": False, "write_statistics": False}
    assert parquet_write_options(schema, ["c"]) == {"compression": "snappy"}  # not in the file: defaults


@pytest.mark.parametrize(("max_bytes", "max_rows", "groups"), [(1 << 30, 250, 4), (1, 1 << 20, 10), (1 << 30, 1 << 20, 1)])
def test_row_group_buffer_gathers_batches(tmp_path: Path, max_bytes: int, max_rows: int, groups: int) -> None:
    table = _table(1000)
    buf = RowGroupBuffer(max_bytes=max_bytes, max_rows=max_rows)
    path = tmp_path / "f.parquet"
    with pq.ParquetWriter(path, table.schema) as w:
        for batch in table.to_batches(max_chunksize=100):
            ready = buf.add(batch)
            if ready:
                write_row_group(w, ready)
        write_row_group(w, buf.drain())
        write_row_group(w, buf.drain())  # nothing left: no empty row group
    assert pq.ParquetFile(path).metadata.num_row_groups == groups
    assert pq.read_table(path).equals(table)
