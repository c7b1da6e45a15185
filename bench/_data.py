"""The benchmark DataFrame shared by the bench scripts: ``rows`` rows, 5 columns (id, amount and the
3 PII strings name, email, ssn), generated inside Spark from ``spark.range`` so it costs no driver memory."""

from __future__ import annotations

from typing import Any

PII = ("name", "email", "ssn")


def benchmark_frame(spark: Any, rows: int, partitions: int) -> Any:
    return spark.range(0, rows, numPartitions=partitions).selectExpr(
        "id",
        "cast(pmod(xxhash64(id), 1000000) / 100 as double) as amount",
        "concat('Name ', id, ' Surname') as name",
        "concat('user', id, '@example.org') as email",
        "format_string('%03d-%02d-%04d', pmod(id, 899) + 100, pmod(id, 99) + 1, pmod(id, 9999)) as ssn",
    )
