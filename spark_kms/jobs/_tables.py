"""How the dataset jobs hand a Delta Lake or Iceberg table to :mod:`spark_kms.tables` (docs/TABLES.md).

Every public job starts (after its Spark Connect branch) with :func:`table_format`: a path that is a
table -- an ``iceberg://CATALOG/NAMESPACE.TABLE`` URI, a directory holding ``_delta_log/`` or
``metadata/*.metadata.json``, or a path *inside* such a directory -- goes to the table function, which
commits through the table's own library and never rewrites a file the table's log references. Only
plain directories reach the plain-directory code, and the jobs that would rewrite, move or read every
file below a directory also refuse a directory that *holds* a table (:func:`refuse_nested_tables`).

``spark_kms.tables`` is imported lazily, through the package: it imports ``spark_kms.jobs`` itself.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from typing import Any

from spark_kms.errors import ConfigurationError
from spark_kms.storage import Location, StoragePath

__all__ = [
    "refuse_nested_tables", "refuse_table_arguments_over_connect", "reject_table_arguments", "table_format",
    "table_kwargs",
]

logger = logging.getLogger(__name__)

_DELTA_LOG = "_delta_log"
_ICEBERG_METADATA = "metadata"


def table_format(path: Any, storage_options: Mapping[str, str] | str | None = None) -> str | None:
    """``"delta"`` or ``"iceberg"`` when ``path`` is (or is inside) a table, else None.

    A path this process cannot examine (an unsupported URI, a store that refuses a listing of some
    ancestor) is not taken for a table here: the plain-directory job then reports it in its own words.
    """
    from spark_kms import tables

    if isinstance(path, tables.TableRef):
        return str(path.format)
    if tables.is_table_uri(path):
        return "iceberg"
    try:
        return tables.detect_table(path, storage_options)
    except (ConfigurationError, OSError) as exc:
        logger.debug("could not tell whether %s is a table (%s): treated as a plain dataset", path, exc)
        return None


def table_kwargs(storage_options: Any, catalog_properties: Mapping[str, str] | None,
                 table_options: Mapping[str, str] | None) -> dict[str, Any]:
    """The keyword arguments every :mod:`spark_kms.tables` function takes, as a job got them."""
    return {"storage_options": storage_options, "catalog_properties": dict(catalog_properties or {}) or None,
            "table_options": dict(table_options or {}) or None}


def _given(arguments: Mapping[str, Any]) -> list[str]:
    """The names of the arguments actually given (None and empty mappings or lists are not)."""
    return sorted(k for k, v in arguments.items()
                  if v is not None and not (isinstance(v, (Mapping, list, tuple)) and not v))


def reject_table_arguments(job: str, path: StoragePath, **given: Any) -> None:
    """Refuse table-only arguments (``version=``...) given for a plain dataset: silently ignoring them
    would answer another question (the current files instead of an older snapshot)."""
    named = _given(given)
    if named:
        raise ConfigurationError(
            f"{job}: {', '.join(f'{n}=' for n in named)} is for Delta and Iceberg tables; {path} is a plain "
            "dataset directory (no _delta_log/ nor metadata/*.metadata.json)"
        )


def refuse_table_arguments_over_connect(spark: Any, job: str, **given: Any) -> None:
    """Refuse table-only arguments with a Spark Connect session: the job runs on the server side with the
    arguments the Connect routing forwards, which are the dataset jobs' own (a Delta table's path alone
    works there: the dispatch happens on the server side)."""
    named = _given(given)
    if not named:
        return
    from spark_kms.spark.remote import is_connect

    if is_connect(spark):
        raise ConfigurationError(
            f"{job}: {', '.join(f'{n}=' for n in named)} (Delta / Iceberg tables) cannot be passed over Spark "
            "Connect yet: run the job without a Spark Connect session (table jobs run in this process, with "
            "the table's own library)"
        )


def refuse_nested_tables(root: Location, job: str) -> None:
    """Raise when a Delta or Iceberg table lies *below* the plain directory ``root``: a job that rewrites,
    moves or reads every Parquet file under ``root`` would treat the table's files as its own (rewriting
    files the table's log references corrupts the table; reading them all reads files the table removed).

    One listing of ``root`` (hidden files included).
    """
    for entry in root.list_files(include_hidden=True):
        parts = entry.location.relative_to(root).split("/")
        found = None
        if _DELTA_LOG in parts[:-1]:
            found = ("a Delta table", parts[:parts.index(_DELTA_LOG)], f"its transaction log {_DELTA_LOG}/")
        elif len(parts) >= 2 and parts[-2] == _ICEBERG_METADATA and parts[-1].endswith(".metadata.json"):
            found = ("an Iceberg table", parts[:-2], "its metadata/*.metadata.json")
        if found is None:
            continue
        what, below, why = found
        table = root.join(posixpath.join(*below)).uri if below else root.uri
        raise ConfigurationError(
            f"{job}: the dataset directory {root.uri} holds {what} at {table} ({why}): the plain-directory {job} "
            f"job would treat the table's data files as the dataset's and could rewrite, move or read files the "
            f"table's log no longer (or still) references. Run {job} on the table itself ({table}), and keep "
            "tables out of plain dataset directories (docs/TABLES.md)"
        )
