"""Edge values of every Spark-supported type round-trip bit for bit through the ``spark_kms`` data source.

One DataFrame of generated edge values (the exhaustive property tests are in
tests/parquet/test_exact_types.py), written with the session time zone set to a zone with a
local-mean-time offset, and read back in another zone. Spark writes timestamps as
``timestamp[us, tz=<session zone>]``, so under plaintext encoding 1 instants before 1937 came
back up to a minute off and instants late on 9999-12-31 did not read back at all.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import struct
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql.pandas.types import from_arrow_schema

from spark_kms.crypto import KEY_TABLE_METADATA_KEY, KeyTable
from spark_kms.parquet import blind_index_values
from spark_kms.spark import read_encrypted

from ._helpers import data_files

pytestmark = pytest.mark.spark

ROWS = 600
US = 10**6
YEAR_1, YEAR_10000 = -62_135_596_800 * US, 253_402_300_800 * US  # microseconds
LMT_ERA = (-5_364_662_400 * US, 63_072_000 * US)  # 1800 .. 1972
AMSTERDAM_1906 = dt.datetime(1906, 8, 16, 20, 26, 40, 123456, tzinfo=dt.timezone.utc)  # offset +00:19:32

EDGE_TICKS = [YEAR_1, YEAR_1 + 1, YEAR_10000 - 1, YEAR_10000 - 3_600 * US, 0, -1, 1,
              (AMSTERDAM_1906 - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1),
              -1_000_000_000 * US + 7]
EDGE_DOUBLES = [0x0, 1 << 63, 0x7FF0 << 48, 0xFFF0 << 48, 0x7FF8 << 48, 0xFFF8 << 48, 0x7FF0_0000_0000_07A2,
                0x1, 0x000F_FFFF_FFFF_FFFF, 0x7FEF_FFFF_FFFF_FFFF, 0xFFEF_FFFF_FFFF_FFFF, 0x3FB9_9999_9999_999A]
EDGE_FLOATS = [0x0, 1 << 31, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_0000, 0x1, 0x007F_FFFF, 0x7F7F_FFFF, 0xFF7F_FFFF]


def _pick(rng: random.Random, i: int, edges: list, draw) -> object:
    """Row ``i``: a null every 17th row, the edges first, then random draws."""
    if i % 17 == 16:
        return None
    return edges[i] if i < len(edges) else draw()


def _edge_table() -> pa.Table:
    rng = random.Random(20260614)

    def ticks() -> int:
        lo, hi = LMT_ERA if rng.random() < 0.5 else (YEAR_1, YEAR_10000 - 1)
        return rng.randint(lo, hi)

    def bits_of(width: int) -> int:
        return rng.getrandbits(width)

    def decimal_38_10() -> Decimal:
        return Decimal(f"{rng.randint(-(10**38) + 1, 10**38 - 1)}E-10")  # exact: no context rounding

    def text() -> str:
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF), rng.randint(0x10000, 0x10FFFF)]))
                       for _ in range(rng.randint(0, 40)))

    rows = range(ROWS)
    ts = [_pick(rng, i, EDGE_TICKS, ticks) for i in rows]
    doubles = [_pick(rng, i, EDGE_DOUBLES, lambda: bits_of(64)) for i in rows]
    floats = [_pick(rng, i, EDGE_FLOATS, lambda: bits_of(32)) for i in rows]
    top38 = Decimal(f"{10**38 - 1}E-10")  # (unary minus would round to 28 digits)
    ints = {
        "i8": (pa.int8(), 8), "i16": (pa.int16(), 16), "i32": (pa.int32(), 32), "i64": (pa.int64(), 64),
    }
    columns: dict[str, pa.Array] = {
        "id": pa.array(list(rows), pa.int64()),
        "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "ts_det": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "ntz": pa.array(ts, pa.int64()).cast(pa.timestamp("us")),
        "day": pa.array([_pick(rng, i, [-719_162, 2_932_896, 0, -1], lambda: rng.randint(-719_162, 2_932_896)) for i in rows],
                        pa.int32()).cast(pa.date32()),
        "f64": pa.array([None if b is None else struct.unpack("<q", struct.pack("<Q", b))[0] for b in doubles],
                        pa.int64()).view(pa.float64()),
        "f32": pa.array([None if b is None else struct.unpack("<i", struct.pack("<I", b))[0] for b in floats],
                        pa.int32()).view(pa.float32()),
        "dec": pa.array([_pick(rng, i, [top38, Decimal(f"-{10**38 - 1}E-10"), Decimal("0E-10")], decimal_38_10) for i in rows],
                        pa.decimal128(38, 10)),
        "flag": pa.array([_pick(rng, i, [True, False], lambda: rng.random() < 0.5) for i in rows], pa.bool_()),
        "text": pa.array([_pick(rng, i, ["", "x" * 10_000], text) for i in rows], pa.string()),
        "blob": pa.array([_pick(rng, i, [b"", bytes(range(256))], lambda: rng.randbytes(rng.randint(0, 40))) for i in rows],
                         pa.binary()),
    }
    for name, (t, width) in ints.items():
        lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
        columns[name] = pa.array([_pick(rng, i, [lo, hi, 0], lambda lo=lo, hi=hi: rng.randint(lo, hi)) for i in rows], t)
    return pa.table(columns)


def _exact(column: pa.ChunkedArray | pa.Array) -> list[object]:
    """Comparable cells: instants, and floats by bit pattern."""
    a = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_floating(a.type) or pa.types.is_timestamp(a.type) or pa.types.is_date32(a.type):
        return a.view(pa.int64() if a.type.bit_width == 64 else pa.int32()).to_pylist()
    return a.to_pylist()


def test_edge_values_round_trip_through_spark_in_a_local_mean_time_zone(spark, local_kms, tmp_path):
    _, key_uri, opts = local_kms
    table = _edge_table()
    encrypted = [c for c in table.column_names if c not in ("id", "ts_det")]
    out = str(tmp_path / "edges")
    zone_key = "spark.sql.session.timeZone"
    zone_before = spark.conf.get(zone_key)
    try:
        spark.conf.set(zone_key, "Europe/Amsterdam")  # Spark hands the writer timestamp[us, tz=Europe/Amsterdam]
        df = spark.createDataFrame(table, schema=from_arrow_schema(table.schema, prefer_timestamp_ntz=True))
        (df.write.format("spark_kms").mode("overwrite")
         .option("key_uri", key_uri).option("columns", ",".join(encrypted))
         .option("deterministic_columns", "ts_det").option("blind_index", "ts_det:ts_bidx")
         .option("kms_options", json.dumps(opts)).save(out))
        spark.conf.set(zone_key, "Africa/Monrovia")  # read in another zone: the instants must not move
        back = read_encrypted(spark, out, kms_options=opts).toArrow().sort_by("id")
    finally:
        spark.conf.set(zone_key, zone_before)

    for name in table.column_names:
        assert _exact(back.column(name)) == _exact(table.column(name)), name
    assert back.column("ts").to_pylist()[7] == AMSTERDAM_1906  # not 32 s later

    # The blind index of an instant in local mean time is found by a look-up of that instant.
    matches = []
    for f in (f"{out}/{rel}" for rel in data_files(out)):
        key_table = KeyTable.from_json(pq.read_metadata(f).metadata[KEY_TABLE_METADATA_KEY.encode()])
        assert key_table.columns["ts"].arrow_type == "timestamp[us, tz=Europe/Amsterdam]"
        tokens = set(blind_index_values(key_table, "ts_bidx", [AMSTERDAM_1906], kms_options=opts))
        stored = pq.read_table(f, columns=["id", "ts_bidx"])
        matches += [i for i, cell in zip(stored.column("id").to_pylist(), stored.column("ts_bidx").to_pylist(), strict=True)
                    if cell in tokens]
    assert matches == [7]
