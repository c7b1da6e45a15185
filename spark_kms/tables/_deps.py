"""The optional table libraries, imported on first use: ``deltalake`` (delta-rs) and ``pyiceberg``.

A missing library raises :class:`~spark_kms.errors.MissingExtraError` (an ``ImportError`` and a
``ConfigurationError``) naming the extra to install: ``pip install 'spark-kms[delta]'`` or
``pip install 'spark-kms[iceberg]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from spark_kms.errors import MissingExtraError

__all__ = ["require_deltalake", "require_pyiceberg"]


def _require(module: str, what: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(what, extra) from exc


def require_deltalake() -> ModuleType:
    """The ``deltalake`` package (delta-rs); MissingExtraError naming the ``delta`` extra if absent."""
    return _require("deltalake", "Delta Lake tables (the deltalake package, delta-rs)", "delta")


def require_pyiceberg() -> ModuleType:
    """The ``pyiceberg`` package; MissingExtraError naming the ``iceberg`` extra if absent."""
    mod = _require("pyiceberg", "Apache Iceberg tables (the pyiceberg package)", "iceberg")
    _require("pyiceberg.io.pyarrow", "Apache Iceberg tables (pyiceberg with pyarrow)", "iceberg")
    return mod
