"""Where SQL ``kms_decrypt`` finds a cell's key table by itself: the file the row came from.

The SQL functions pass ``input_file_name()`` to their Python UDFs (:mod:`spark_kms.spark.sql`), so
for every row Spark read from a Parquet file -- a path (``parquet.`/data/x```, a temporary view of
``spark.read.parquet``) or a table (``CREATE TABLE t USING parquet LOCATION '...'``) -- the UDF
knows the file. Its key table is that file's footer with the dataset root's manifest applied
(:class:`spark_kms.parquet.dataset.Dataset`, the same precedence every reader uses), read in the
Python worker and kept per worker process (:data:`_CACHE`, bounded). Version-2 cells need the
column's recorded spec (its Arrow type) to authenticate, which only the footer has.

A cached key table can go stale (a file replaced in place by a re-encrypt, a manifest rewritten
by a rewrap): :func:`file_key_tables` with ``fresh=True`` reads again, and the SQL layer does so
once before it reports a cell as undecryptable.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import DEK_ID_BYTES, KeyTable
from spark_kms.errors import ConfigurationError, FormatError, JobError, UnknownDataKeyError
from spark_kms.kms import KmsConfig
from spark_kms.parquet.dataset import Dataset

__all__ = ["file_key_tables", "missing_dek_ids", "source_files", "unknown_key_error"]

logger = logging.getLogger(__name__)

#: key tables kept per worker process, by data file URI
CACHE_SIZE = 1024
_CACHE: OrderedDict[str, KeyTable | None] = OrderedDict()
_LOCK = threading.Lock()


def source_files(files: pa.Array | None) -> list[str]:
    """The distinct non-empty ``input_file_name()`` values of a batch, sorted."""
    if files is None:
        return []
    return sorted(str(f) for f in pc.unique(files.drop_null()).to_pylist() if f)


def _path_of(file_name: str) -> str:
    """``input_file_name()`` (a URI, percent-encoded: ``file:///a%20b/x.parquet``) as a spark_kms path."""
    text = unquote(file_name)
    if text.startswith("file:"):
        return "/" + text[len("file:"):].lstrip("/")
    return text


def _read(file_name: str, kms: KmsConfig, storage_options: Mapping[str, str] | None) -> KeyTable | None:
    dataset = Dataset.open(_path_of(file_name), missing_ok=True, require_files=False, kms_options=kms,
                           storage_options=dict(storage_options) if storage_options else None)
    if not dataset.files:  # a Parquet file without a key table (e.g. Spark's own writer): nothing here
        return None
    return dataset.key_table()


def file_key_tables(
    files: Sequence[str],
    kms: KmsConfig,
    storage_options: Mapping[str, str] | None = None,
    *,
    fresh: bool = False,
    failures: dict[str, str] | None = None,
) -> list[KeyTable]:
    """The key tables (manifest applied) of the data files ``files`` (``input_file_name()`` values),
    from this worker's cache unless ``fresh``. Files without a key table give none; a file whose key
    table cannot be read (unreachable, tampered, a commit in progress) gives none either, and its error
    goes into ``failures`` (file -> message)."""
    out: list[KeyTable] = []
    for name in files:
        with _LOCK:
            hit = name in _CACHE and not fresh
            table = _CACHE.get(name) if hit else None
            if hit:
                _CACHE.move_to_end(name)
        if not hit:
            try:
                table = _read(name, kms, storage_options)
            except (ConfigurationError, FormatError, JobError, OSError) as exc:  # a KMS error propagates
                # Other key tables (datasets=, the registry) may still hold the keys; if none does, the
                # error names this failure (unknown_key_error). Not cached: the next batch tries again.
                logger.warning("SQL kms_decrypt: cannot read the key table of %s: %s", name, exc)
                if failures is not None:
                    failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            with _LOCK:
                _CACHE[name] = table
                _CACHE.move_to_end(name)
                while len(_CACHE) > CACHE_SIZE:
                    _CACHE.popitem(last=False)
            logger.debug("SQL kms_decrypt: key table of %s read (%s)", name,
                         "no key table" if table is None else f"{len(table.deks)} data keys")
        if table is not None:
            out.append(table)
    return out


def missing_dek_ids(table: KeyTable, cells: pa.Array) -> list[str]:
    """Hex DEK ids named by ``cells`` (bytes 1..8) that ``table`` does not hold."""
    ids = pc.unique(pc.binary_slice(cells.drop_null(), 1, 1 + DEK_ID_BYTES)).to_pylist()
    return sorted(h for h in (bytes(i).hex() for i in ids if len(i) == DEK_ID_BYTES) if h not in table.deks)


def unknown_key_error(function: str, missing: Sequence[str], files: Sequence[str],
                      failures: Mapping[str, str] | None = None) -> UnknownDataKeyError:
    """The error for cells whose data keys no key table holds, saying what to do."""
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if failures:
        first = sorted(failures)[0]
        where = (f"the key table of the file {first} these rows came from could not be read ({failures[first]})"
                 f"{f' (and {len(failures) - 1} more files)' if len(failures) > 1 else ''}")
    elif files:
        where = (f"the key tables of the files these rows came from ({', '.join(files[:2])}"
                 f"{', ...' if len(files) > 2 else ''}) do not hold them: the files or their dataset's "
                 "manifest were written by something else, or the cells were copied from another dataset")
    else:
        where = ("these rows did not come straight from a Parquet file (input_file_name() is empty: the cells "
                 "passed a join, an aggregation, a shuffle or a cache, or were never read from a file)")
    return UnknownDataKeyError(
        f"{function}: no key table holds data key(s) {shown}: {where}. Decrypt where the query reads the "
        "encrypted files directly (kms_decrypt(col) over parquet.`/path` or a table over the files, then "
        "join), or register the functions with the key tables they need: "
        "register_functions(spark, datasets=[path, ...]) or key_registry=..."
    )
