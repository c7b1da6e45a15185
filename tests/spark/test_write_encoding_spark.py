"""The data source's files: Spark's small Arrow batches gathered into row groups, AES-256-GCM columns
without dictionary or statistics (spark_kms/parquet/writer.py), and everything reads back equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from spark_kms.spark import read_encrypted, write_encrypted

from ._helpers import data_files, sorted_rows

pytestmark = pytest.mark.spark


def test_small_batches_make_few_row_groups_and_gcm_columns_are_plain(
    spark: Any, local_kms: Any, tmp_path: Path, small_batches: None
) -> None:
    ks, key_uri, opts = local_kms
    df = spark.range(0, 400, numPartitions=2).selectExpr(
        "id", "concat('n', id) as name", "if(id % 5 = 0, null, format_string('%09d', id)) as ssn",
        "concat('c', id % 3) as city")
    out = tmp_path / "ds"
    write_encrypted(df, str(out), key_uri=key_uri, columns=["ssn", "name"], deterministic_columns=["city"],
                    kms_options=opts)
    files = data_files(out)
    assert len(files) == 2
    for rel in files:
        meta = pq.ParquetFile(out / rel).metadata
        assert meta.num_rows == 200
        assert meta.num_row_groups == 1  # 50 Arrow batches of 4 rows, gathered
        rg = meta.row_group(0)
        cols = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
        for random in ("ssn", "name"):
            assert "RLE_DICTIONARY" not in cols[random].encodings and not cols[random].is_stats_set
        for kept in ("id", "city"):
            assert "RLE_DICTIONARY" in cols[kept].encodings and cols[kept].is_stats_set
    assert sorted_rows(read_encrypted(spark, str(out), kms_options=opts, fast_path=False)) == sorted_rows(df)
