"""Fixtures of the Spark tests (the session itself is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


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
