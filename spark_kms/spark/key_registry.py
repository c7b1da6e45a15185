"""The on-disk key registry of the encrypting UDFs and SQL functions.

A UDF returns one column: it cannot add a key-table column, and it never sees the Parquet
footer of whatever the DataFrame is later written to. So the wrapped data key of each task
must be published elsewhere, or the cells could never be decrypted. Each encrypting UDF
(:mod:`spark_kms.spark.udfs`, ``kms_encrypt`` of :mod:`spark_kms.spark.sql`) therefore takes
``key_registry``, a directory (shared by driver and executors) with one file per data key::

    <key_registry>/<dek_id>.json    KeyTable JSON: that one DekEntry (wrapped DEK, key
                                    URI, key id, key version, encryption context) plus
                                    the ColumnSpec(s) of the columns it encrypted

A task writes the file before the first cell encrypted under that key leaves the task, as a
temporary file then ``os.replace`` (readers never see half a file), merging with an existing
file under a lock (a shared deterministic key serves several columns). A failed or retried
task may leave an unused file: harmless, a wrapped key alone decrypts nothing. Read the
registry back with :func:`read_key_registry`. Wrapped keys only: no KMS call here.

Under Spark Connect the registry is a directory of the server side (its tasks write it): give
:func:`read_key_registry` the session (``spark=``) to read it there, and the UDF factories and SQL
functions create it there (:func:`spark_kms.spark.remote.run_near_data`).
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms._atomic import atomic_write_bytes
from spark_kms.crypto import DEK_ID_BYTES, ColumnSpec, DekEntry, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.spark.remote import is_connect, run_near_data

__all__ = ["publish_key_table", "read_key_registry"]

logger = logging.getLogger(__name__)

_REGISTRY_LOCK = ".spark_kms_registry.lock"


def require_registry(key_registry: str | os.PathLike[str] | None) -> str:
    """The registry directory an encrypting UDF publishes to (created if missing)."""
    if not key_registry:
        raise ConfigurationError(
            "encrypting UDFs need key_registry=<directory shared by driver and executors>: a UDF cannot "
            "write a Parquet footer, so each task's wrapped data key is published there"
        )
    path = os.fspath(key_registry)
    os.makedirs(path, exist_ok=True)
    return path


def publish_key_table(key_registry: str | os.PathLike[str], table: KeyTable) -> list[str]:
    """Write each data key of ``table`` to ``<key_registry>/<dek_id>.json`` (module docstring).

    The file holds a KeyTable with that one DEK and the column specs of ``table``; an
    existing file for the same DEK is merged (a shared deterministic key serves several
    columns). Returns the paths written.
    """
    from filelock import FileLock

    directory = os.fspath(key_registry)
    os.makedirs(directory, exist_ok=True)
    written: list[str] = []
    with FileLock(os.path.join(directory, _REGISTRY_LOCK)):
        for dek_id, entry in table.deks.items():
            path = os.path.join(directory, f"{dek_id}.json")
            one = KeyTable(deks={dek_id: entry}, columns=dict(table.columns))
            if os.path.exists(path):
                one = _read_registry_file(path).merge(one)
            data = one.to_json()
            atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
            written.append(path)
    logger.debug("published data keys %s to key registry %s", sorted(table.deks), directory)
    return written


def _read_registry_file(path: str) -> KeyTable:
    with open(path, "rb") as fh:
        data = fh.read()
    return KeyTable.from_json(data, where=f"key registry file {path}")


def read_key_registry(key_registry: str | os.PathLike[str], *, spark: Any = None) -> KeyTable:
    """All data keys and column specs published to ``key_registry``, merged into one KeyTable.

    :param spark: a Spark Connect session: read the registry on its server side, where it is
        (default, or a classic session: here).
    """
    if is_connect(spark):
        return run_near_data(spark, read_key_registry, os.fspath(key_registry))
    deks: dict[str, DekEntry] = {}
    columns: dict[str, ColumnSpec] = {}
    for path in sorted(glob.glob(os.path.join(os.fspath(key_registry), "*.json"))):
        one = _read_registry_file(path)
        deks.update(one.deks)
        # Jobs may reuse a column name with another type; the first spec seen names it.
        for name, spec in one.columns.items():
            columns.setdefault(name, spec)
    return KeyTable(deks=deks, columns=columns)


def _registry_entry(key_registry: str, dek_id_hex: str) -> DekEntry | None:
    path = os.path.join(key_registry, f"{dek_id_hex}.json")
    if not os.path.exists(path):
        return None
    return _read_registry_file(path).deks.get(dek_id_hex)


def with_registry_entries(table: KeyTable, key_registry: str | None, cells: pa.Array) -> KeyTable:
    """``table`` plus the registry entries of DEK ids in ``cells`` that the table lacks.

    The DEK ids are read per batch with Arrow (bytes 1..8 of each cell, distinct values), not
    per cell in Python; a cell too short to hold one is left to the decryptor, which names it.
    """
    if not key_registry:
        return table
    ids = pc.unique(pc.binary_slice(cells.drop_null(), 1, 1 + DEK_ID_BYTES)).to_pylist()
    missing = sorted(h for h in (bytes(i).hex() for i in ids if len(i) == DEK_ID_BYTES) if h not in table.deks)
    found = {h: e for h in missing if (e := _registry_entry(key_registry, h)) is not None}
    if not found:
        return table
    logger.debug("key registry %s: data keys %s found for cells of no known key table", key_registry, sorted(found))
    return KeyTable(deks={**table.deks, **found}, columns=dict(table.columns))
