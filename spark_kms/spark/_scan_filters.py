"""Filter pushdown of the ``spark_kms`` data source's reader: a Spark data source filter as the
pyarrow expression that evaluates it exactly, with SQL's null semantics
(:class:`spark_kms.spark._source_scan.SparkKmsFilteringReader` says what is pushed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

__all__ = ["and_all", "filter_expression"]


def _pushable_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_boolean(t)
        or pa.types.is_date32(t)
        or pa.types.is_decimal(t)
    )


def filter_expression(f: Any, t: pa.DataType) -> Any:
    """The pyarrow expression of one Spark filter on a column of type ``t``, or None if it is
    not pushable. Null semantics follow SQL: a comparison with a null cell is null (the row is
    dropped, also under NOT), ``<=>`` and ``IS [NOT] NULL`` are never null."""
    import pyarrow.compute as pc
    from pyspark.sql import datasource as sds

    if not _pushable_type(t):
        return None
    col = pc.field(f.child.attribute[0] if isinstance(f, sds.Not) else f.attribute[0])

    def lit(value: Any) -> Any:
        if value is None:
            raise ValueError("null literal")
        if isinstance(value, bytearray):
            value = bytes(value)
        return pa.scalar(value, type=t)

    def positive(g: Any) -> Any:
        if isinstance(g, sds.IsNull):
            return col.is_null()
        if isinstance(g, sds.IsNotNull):
            return col.is_valid()
        if isinstance(g, sds.EqualNullSafe):
            return col.is_null() if g.value is None else (col == lit(g.value)) & col.is_valid()
        if isinstance(g, sds.EqualTo):
            return col == lit(g.value)
        if isinstance(g, sds.GreaterThan):
            return col > lit(g.value)
        if isinstance(g, sds.GreaterThanOrEqual):
            return col >= lit(g.value)
        if isinstance(g, sds.LessThan):
            return col < lit(g.value)
        if isinstance(g, sds.LessThanOrEqual):
            return col <= lit(g.value)
        if isinstance(g, sds.In):
            values = [lit(v) for v in g.value]
            # is_in answers false for a null cell; SQL answers null: keep the null.
            return pc.if_else(col.is_valid(), pc.is_in(col, value_set=pa.array(values, type=t)), pa.scalar(None, pa.bool_()))
        if isinstance(g, (sds.StringStartsWith, sds.StringEndsWith, sds.StringContains)):
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)) or not isinstance(g.value, str):
                return None
            fn = {sds.StringStartsWith: pc.starts_with, sds.StringEndsWith: pc.ends_with,
                  sds.StringContains: pc.match_substring}[type(g)]
            return fn(col, pattern=g.value)
        return None

    try:
        if isinstance(f, sds.Not):
            inner = positive(f.child)
            return None if inner is None else ~inner
        return positive(f)
    except (ValueError, TypeError, OverflowError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None  # a literal that does not fit the column's type: Spark evaluates it


def and_all(exprs: Sequence[Any]) -> Any:
    out = None
    for e in exprs:
        out = e if out is None else out & e
    return out
