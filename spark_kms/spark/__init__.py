"""Spark adapters: the ``spark_kms`` data source (encrypted writes with a commit
protocol), the native-scan decrypting reader, UDFs and ML transformers.

Importing this package does not import pyspark; the functions below do, when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["WriteResult", "local_session", "read_encrypted", "register", "write_encrypted"]

if TYPE_CHECKING:  # pragma: no cover
    from spark_kms.spark.datasource import WriteResult


def register(spark: Any) -> None:
    """Register the ``spark_kms`` data source with ``spark``."""
    from spark_kms.spark.datasource import register as _register

    _register(spark)


def write_encrypted(df: Any, path: str, **kwargs: Any) -> WriteResult:
    """See :func:`spark_kms.spark.datasource.write_encrypted`."""
    from spark_kms.spark.datasource import write_encrypted as _write

    return _write(df, path, **kwargs)


def read_encrypted(spark: Any, path: str, **kwargs: Any) -> Any:
    """See :func:`spark_kms.spark.reader.read_encrypted`."""
    from spark_kms.spark.reader import read_encrypted as _read

    return _read(spark, path, **kwargs)


def local_session(*args: Any, **kwargs: Any) -> Any:
    """See :func:`spark_kms.spark.session.local_session`."""
    from spark_kms.spark.session import local_session as _local_session

    return _local_session(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "WriteResult":
        from spark_kms.spark.datasource import WriteResult

        return WriteResult
    raise AttributeError(name)
