"""Fixtures for the table tests: real delta-rs and pyiceberg (a SQL catalog on SQLite in tmp_path).

* ``source``: a small PII table (8 rows, two values of the partition column ``day``).
* ``iceberg_catalog``: catalog properties of a fresh SQL catalog (SQLite file + local warehouse).
* ``target``: parametrised over ``delta`` and ``iceberg``: a :class:`Target` naming a table that does not
  exist yet, with the format's own reader and history.
* ``s3``, ``s3_prefix``: moto's S3 server (tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

PII = ["ssn", "amount", "birth"]


@pytest.fixture
def source() -> pa.Table:
    n = 8
    return pa.table({
        "id": pa.array(range(1, n + 1), pa.int64()),
        "name": [f"person {i}" for i in range(n)],
        "ssn": [f"078-05-{1120 + i}" if i != 3 else None for i in range(n)],
        "email": [f"p{i % 3}@example.org" for i in range(n)],
        "amount": pa.array([10.5 * i for i in range(n)], pa.float64()),
        "birth": pa.array([dt.date(1970 + i, 1, 1 + i) for i in range(n)], pa.date32()),
        "day": ["2024-01-01" if i < 5 else "2024-01-02" for i in range(n)],
    })


@pytest.fixture
def iceberg_catalog(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "iceberg").mkdir()
    return {"type": "sql", "uri": f"sqlite:///{tmp_path}/iceberg/catalog.db",
            "warehouse": f"file://{tmp_path}/iceberg/warehouse"}


@dataclass
class Target:
    """A table to create: its URI, the keyword arguments reaching it, and its own library's views."""

    format: str
    uri: str
    kw: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        if self.format == "delta":
            return Path(self.uri)
        return Path(self.own_table().location().replace("file://", ""))

    def own_table(self) -> Any:
        if self.format == "delta":
            from deltalake import DeltaTable

            return DeltaTable(self.uri)
        from pyiceberg.catalog import load_catalog

        return load_catalog("test", **self.kw["catalog_properties"]).load_table(self.uri.split("/", 3)[3])

    def own_read(self, version: Any = None) -> pa.Table:
        """The table as its own library reads it (no spark_kms involved)."""
        if self.format == "delta":
            from deltalake import DeltaTable

            return DeltaTable(self.uri, version=version).to_pyarrow_table()
        scan = self.own_table().scan(snapshot_id=version) if version is not None else self.own_table().scan()
        return scan.to_arrow()

    def current_version(self) -> int:
        if self.format == "delta":
            return self.own_table().version()
        return self.own_table().current_snapshot().snapshot_id

    def operations(self) -> list[tuple[str, str | None]]:
        """(operation, spark_kms job) of every commit that made a version / snapshot, oldest first."""
        if self.format == "delta":
            return [(h["operation"], h.get("spark_kms.job")) for h in sorted(self.own_table().history(),
                                                                               key=lambda h: h["version"])]
        snaps = sorted(self.own_table().snapshots(), key=lambda s: s.timestamp_ms)
        return [(s.summary.operation.value, s.summary.additional_properties.get("spark_kms.job")) for s in snaps]

    def metadata_commits(self) -> int:
        """How many commits the table has had (Delta versions; Iceberg metadata files, property-only included)."""
        if self.format == "delta":
            return self.own_table().version() + 1
        return len(self.own_table().metadata.metadata_log) + 1

    def data_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*.parquet") if not any(
            part.startswith(("_", ".")) for part in p.relative_to(self.root).parts) and "metadata" not in p.parts)


@pytest.fixture(params=["delta", "iceberg"])
def target(request: pytest.FixtureRequest, tmp_path: Path, iceberg_catalog: dict[str, str]) -> Target:
    if request.param == "delta":
        return Target("delta", str(tmp_path / "people"), {"format": "delta"})
    return Target("iceberg", "iceberg://test/crm.people", {"catalog_properties": iceberg_catalog})
