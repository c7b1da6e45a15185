"""The writer streams: memory stays flat however many batches a file receives."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

from .conftest import Kms

ROWS = 500
BATCHES = 200


def _batch(i: int, schema: pa.Schema) -> pa.RecordBatch:
    base = i * ROWS
    return pa.record_batch(
        {"id": pa.array(range(base, base + ROWS), pa.int64()),
         "ssn": [f"{n:09d}-ssn-value" for n in range(base, base + ROWS)]},
        schema=schema,
    )


def test_writer_memory_does_not_grow_with_the_number_of_batches(kms: Kms, tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("ssn", pa.string())])
    path = tmp_path / "big.parquet"
    arrow: list[int] = []
    python_peaks: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        with EncryptedParquetWriter(path, schema, EncryptionSpec(columns=["ssn"]), kms.provider) as w:
            for i in range(BATCHES):
                tracemalloc.reset_peak()
                w.write_batch(_batch(i, schema))
                arrow.append(pa.total_allocated_bytes())
                python_peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert pq.read_metadata(path).num_rows == ROWS * BATCHES
    # One batch of encrypted cells is ~40 KB; keeping the batches would add ~8 MB by the end.
    early_arrow, late_arrow = max(arrow[10:30]), max(arrow[-50:])
    early_py, late_py = max(python_peaks[10:30]), max(python_peaks[-50:])
    assert late_arrow <= early_arrow + 1_000_000, (early_arrow, late_arrow)
    assert late_py <= early_py * 1.25 + 200_000, (early_py, late_py)
