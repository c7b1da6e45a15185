"""Encrypted PII columns in Delta Lake and Apache Iceberg tables (docs/TABLES.md).

Tables are read and committed through their own libraries -- delta-rs (``pip install 'spark-kms[delta]'``)
and pyiceberg (``pip install 'spark-kms[iceberg]'``) -- and never rewritten in place: every change is a new
file plus a commit of the table's log, so the table stays readable by its own engines at every step.

* detection and addressing (:mod:`~spark_kms.tables.detect`): ``detect_table``, ``refuse_table`` (for the
  plain-directory jobs), ``resolve_table``, ``TableRef``; Delta by path, Iceberg by
  ``iceberg://<catalog>/<namespace>.<table>`` or by directory (read-only);
* snapshots (:mod:`~spark_kms.tables.snapshot`): ``snapshot_files`` (time travel by version, snapshot id or
  timestamp), ``open_table``; snapshots needing more than a file list are refused;
* keys (:mod:`~spark_kms.tables.keys`): footers and ``_spark_kms_keys`` columns, the table key manifest;
* write (:mod:`~spark_kms.tables.write`): ``encrypt_into_table``;
* read (:mod:`~spark_kms.tables.read`): ``read_table_decrypted``, ``table_scan`` (Spark's native scan),
  ``decrypt_table``;
* jobs (:mod:`~spark_kms.tables.jobs`, :mod:`~spark_kms.tables.reencrypt`): ``inspect_table``,
  ``rewrap_table``, ``reencrypt_table``, ``vacuum_table``;
* storage options (:mod:`~spark_kms.tables.options`): spark_kms options -> delta-rs / pyiceberg options.

Importing this package imports neither library nor any job module: each name is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DELTA": "detect",
    "ICEBERG": "detect",
    "TableRef": "detect",
    "detect_table": "detect",
    "find_table": "detect",
    "refuse_table": "detect",
    "resolve_table": "detect",
    "is_table_uri": "detect",
    "open_table": "snapshot",
    "snapshot_files": "snapshot",
    "Snapshot": "snapshot",
    "TableFile": "snapshot",
    "KEYS_COLUMN": "keys",
    "MANIFEST_PROPERTY": "keys",
    "TableKeys": "keys",
    "load_table_keys": "keys",
    "read_table_manifest": "keys",
    "encrypt_into_table": "write",
    "read_table_decrypted": "read",
    "iter_table_decrypted": "read",
    "table_scan": "read",
    "TableScan": "read",
    "decrypt_table": "read",
    "inspect_table": "jobs",
    "TableInspection": "jobs",
    "rewrap_table": "jobs",
    "vacuum_table": "jobs",
    "reencrypt_table": "reencrypt",
    "delta_storage_options": "options",
    "iceberg_io_properties": "options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spark_kms.tables' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"spark_kms.tables.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
