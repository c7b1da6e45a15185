"""Spark adapters: the ``spark_kms`` data source (encrypted writes with a commit
protocol), the native-scan decrypting reader, Arrow UDFs and SQL functions, and the
pyspark.ml column-encryption transformers.

Modules, top to bottom (each imports only those below it):

* :mod:`~spark_kms.spark.io`: ``write_encrypted``, ``read_encrypted`` (native Parquet scan + decrypt UDFs)
* :mod:`~spark_kms.spark.erasure`: ``count_erased`` (erased cells per column, counted without decrypting)
* :mod:`~spark_kms.spark.datasource`: the ``spark_kms`` data source and ``register``; its writer
  (``_source_write``), commit protocol (``_commit``) and reader (``_source_scan``)
* :mod:`~spark_kms.spark.ml`: ``ColumnEncryptor`` / ``ColumnDecryptor``
* :mod:`~spark_kms.spark.sql`: ``register`` (the data source and the SQL functions: one call per session),
  ``register_functions`` (``kms_encrypt``, ``kms_decrypt``, ``kms_decrypt_bigint``, ...)
* :mod:`~spark_kms.spark.conf`: ``SparkKmsConf``: every option from the ``spark.spark_kms.*`` Spark conf
* :mod:`~spark_kms.spark.udfs`: the Arrow UDF factories
* :mod:`~spark_kms.spark.key_registry`: the on-disk registry where encrypting UDFs publish data keys
* :mod:`~spark_kms.spark.session`: ``local_session``
* ``_errors``: ``errors_translated`` / ``translate_spark_error``: a spark_kms error raised inside Spark
  back as itself (the library's own Spark actions use it; wrap your actions on ``read_encrypted``
  DataFrames in it)

Every KMS is reached through a :class:`spark_kms.kms.KmsConfig` (the ``kms_options`` option or
parameter), every dataset through :mod:`spark_kms.parquet.dataset`.

Importing this package does not import pyspark (Airflow DAG files import it at parse
time); each name below is loaded from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module under spark_kms.spark that defines it
_EXPORTS: dict[str, str] = {
    "register": "sql",
    "write_encrypted": "io",
    "WriteResult": "io",
    "recover_interrupted_commits": "io",
    "read_encrypted": "io",
    "count_erased": "erasure",
    "local_session": "session",
    "decrypt_udf": "udfs",
    "encrypt_udf": "udfs",
    "deterministic_udf": "udfs",
    "blind_index_udf": "udfs",
    "register_functions": "sql",
    "read_key_registry": "key_registry",
    "SparkKmsConf": "conf",
    "ColumnEncryptor": "ml",
    "ColumnDecryptor": "ml",
    "KEYS_COLUMN": "ml",
    "errors_translated": "_errors",
    "translate_spark_error": "_errors",
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
