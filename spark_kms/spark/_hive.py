"""Hive partition directories (``name=value/``) as Spark writes and reads them: escaping a
value into a directory name (the writer), and parsing and typing it back (the reader).

Both directions live here so they stay each other's inverse.
"""

from __future__ import annotations

import datetime
import decimal
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from spark_kms.errors import FormatError

__all__ = [
    "HIVE_NULL",
    "hive_dir_value",
    "hive_partition_values",
    "infer_partition_type",
    "partition_scalar",
]

#: the directory value of a null (or empty) partition value, as Spark writes it
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Spark's ExternalCatalogUtils.escapePathName escapes these in partition values.
_HIVE_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^') | {chr(c) for c in range(0x20)}

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


# -- writing --------------------------------------------------------------------


def hive_dir_value(value: Any) -> str:
    """A partition value as Spark writes it into a directory name (escaped; nulls and ``""``
    become :data:`HIVE_NULL`)."""
    if value is None:
        return HIVE_NULL
    text = value.isoformat() if hasattr(value, "isoformat") and not isinstance(value, str) else str(value)
    if text == "":
        return HIVE_NULL
    return "".join(f"%{ord(ch):02X}" if ch in _HIVE_ESCAPE else ch for ch in text)


# -- reading --------------------------------------------------------------------


def _unescape(text: str) -> str:
    # The inverse of hive_dir_value's escaping (Spark's ExternalCatalogUtils.unescapePathName).
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def hive_partition_values(rel_dir: str, path: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """The partition column names and raw values (unescaped; ``None`` = null) of the directories
    ``rel_dir`` (``/``-separated) between a dataset's base directory and its file ``path``."""
    if rel_dir in ("", "."):
        return (), ()
    names: list[str] = []
    values: list[str | None] = []
    for part in rel_dir.split("/"):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise FormatError(f"file {path}: directory {part!r} is not a hive partition directory (name=value)")
        names.append(_unescape(name))
        raw = _unescape(value)
        values.append(None if raw in (HIVE_NULL, "") else raw)
    return tuple(names), tuple(values)


def _value_type(raw: str) -> Any:
    from pyspark.sql import types as T

    if _INT_RE.match(raw):
        n = int(raw)
        if _INT32[0] <= n <= _INT32[1]:
            return T.IntegerType()
        if _INT64[0] <= n <= _INT64[1]:
            return T.LongType()
        digits = len(raw.lstrip("+-"))
        return T.DecimalType(digits, 0) if digits <= 38 else T.StringType()
    if _FLOAT_RE.match(raw):
        return T.DoubleType()
    if _DATE_RE.match(raw):
        try:
            datetime.date.fromisoformat(raw)
        except ValueError:
            return T.StringType()
        return T.DateType()
    return T.StringType()


def infer_partition_type(raws: Sequence[str | None]) -> Any:
    """Spark's partition value inference, restricted to what the writer produces: int, then
    long, then decimal(n, 0), then double, then date, else string; mixed numbers widen
    (int < long < decimal < double), any other mix is string. Timestamps stay strings."""
    from pyspark.sql import types as T

    kinds = {_value_type(r) for r in raws if r is not None}
    if not kinds:
        return T.StringType()
    if len(kinds) == 1:
        return kinds.pop()
    order = (T.IntegerType, T.LongType, T.DecimalType, T.DoubleType)
    if all(isinstance(k, order) for k in kinds):
        if any(isinstance(k, T.DoubleType) for k in kinds):
            return T.DoubleType()
        decimals = [k for k in kinds if isinstance(k, T.DecimalType)]
        if decimals:
            return T.DecimalType(max(d.precision for d in decimals), 0)
        return T.LongType()
    return T.StringType()


def partition_scalar(raw: str | None, arrow_type: pa.DataType) -> pa.Scalar:
    """A raw partition value as an Arrow scalar of ``arrow_type``."""
    if raw is None:
        return pa.scalar(None, type=arrow_type)
    if pa.types.is_date32(arrow_type):
        return pa.scalar(datetime.date.fromisoformat(raw), type=arrow_type)
    if pa.types.is_decimal(arrow_type):
        return pa.scalar(decimal.Decimal(raw), type=arrow_type)
    return pa.scalar(raw, type=pa.string()).cast(arrow_type)
