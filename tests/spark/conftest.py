"""Fixtures of the Spark tests (the session itself is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spark_kms.spark import fastpath


@pytest.fixture
def small_batches(spark: Any) -> Iterator[None]:
    """Arrow batches of 4 rows, so every task feeds the UDFs several batches."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "4")
    try:
        yield
    finally:
        spark.conf.set(key, before)


@pytest.fixture
def fast(spark: Any) -> Iterator[Any]:
    """The shared session with the JVM fast path switched on: the plugin and the SQL extension (batch-by-batch
    decryption) loaded from the jar (`make jar` builds it; `make install` runs it)."""
    assert fastpath.jar_path() is not None, "the fast-path jar is not built: run `make jar`"
    assert fastpath.extension_active(spark), spark.conf.get("spark.sql.extensions", "")
    spark.conf.set(fastpath.CONF_SWITCH, "true")
    try:
        assert fastpath.unavailable_reason(spark) is None, fastpath.unavailable_reason(spark)
        yield spark
    finally:
        spark.conf.set(fastpath.CONF_SWITCH, "false")
