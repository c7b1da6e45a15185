"""Spark adapters: the ``spark_kms`` data source (encrypted writes with a commit
protocol), the native-scan decrypting reader, Arrow UDFs and SQL functions, and the
pyspark.ml column-encryption transformers.

Importing this package does not import pyspark (Airflow DAG files import it at parse
time); each name below is loaded from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module under spark_kms.spark that defines it
_EXPORTS: dict[str, str] = {
    "register": "datasource",
    "write_encrypted": "datasource",
    "WriteResult": "datasource",
    "recover_interrupted_commits": "datasource",
    "read_encrypted": "reader",
    "local_session": "session",
    "decrypt_udf": "functions",
    "encrypt_udf": "functions",
    "deterministic_udf": "functions",
    "blind_index_udf": "functions",
    "register_functions": "functions",
    "read_key_registry": "functions",
    "ColumnEncryptor": "ml",
    "ColumnDecryptor": "ml",
    "KEYS_COLUMN": "ml",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spark_kms.spark' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"spark_kms.spark.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
