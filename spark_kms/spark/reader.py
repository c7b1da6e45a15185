"""Reading encrypted datasets with Spark's native Parquet scan.

``read_encrypted(spark, path)`` is ``spark.read.parquet(path)`` plus, for each encrypted column
the query keeps, the decrypt Arrow UDF of :mod:`spark_kms.spark.functions` with the column's
original type. So Spark keeps column pruning (``ReadSchema``) and predicate pushdown
(``PushedFilters``) on plain columns: the UDFs are deterministic projections the optimizer
moves filters through.

Where the keys come from, without any KMS call on the driver:

* the key tables in the Parquet footers of the dataset's files (pyarrow reads footers only),
  merged, with the dataset manifest ``_spark_kms_keys.json`` taking precedence
  (:func:`spark_kms.parquet.reader.read_dataset_key_table`);
* for a dataset written by Spark's own Parquet writer from :mod:`spark_kms.spark.ml` output,
  the distinct values of its ``_spark_kms_keys`` column (one small Spark job over that column).

Only wrapped keys travel to executors; each worker process unwraps a data key the first time
one of its cells needs it (at most one KMS Decrypt per DEK per process). A query that keeps
only plain columns builds no UDF and makes no KMS call. Blind-index columns stay ``binary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spark_kms.crypto import HMAC_SHA256_BIDX, KeyTable
from spark_kms.errors import ConfigurationError
from spark_kms.spark._options import KEYS_COLUMN, _local_path

__all__ = ["dataset_key_table", "read_encrypted"]


def dataset_key_table(spark: Any, path: str, *, df: Any = None) -> KeyTable:
    """The merged key table of the dataset at ``path`` (footers, manifest precedence, and the
    ``_spark_kms_keys`` column if the files carry one). Wrapped keys only: no KMS call."""
    from spark_kms.parquet.reader import read_dataset_key_table

    local = _local_path(path)
    if df is None:
        df = spark.read.parquet(path)
    has_keys_column = KEYS_COLUMN in df.columns
    table = read_dataset_key_table(local, missing_ok=has_keys_column)
    if has_keys_column:
        for row in df.select(KEYS_COLUMN).distinct().collect():
            text = row[0]
            if text is not None:
                table = table.merge(KeyTable.from_json(text, where=f"dataset {local}, column {KEYS_COLUMN}"))
    return table


def read_encrypted(
    spark: Any,
    path: str,
    *,
    columns: Sequence[str] | None = None,
    kms_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """A DataFrame of the dataset at ``path`` with its encrypted columns decrypted lazily.

    :param columns: keep only these columns (plain or encrypted), in this order; default all.
    :param kms_options: provider options per key-URI scheme, used on executors to unwrap keys.
    :raises MissingKeyTableError: a data file has no key table (names the file).
    :raises ConfigurationError: ``columns`` names a column the dataset does not have.
    """
    from spark_kms.spark.functions import decrypt_udf

    df = spark.read.parquet(path)
    table = dataset_key_table(spark, path, df=df)
    if KEYS_COLUMN in df.columns:
        df = df.drop(KEYS_COLUMN)
    names = list(df.columns)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigurationError(f"dataset {_local_path(path)} has no columns {missing} (columns: {names})")
        names = list(columns)
    options = {k: dict(v) for k, v in (kms_options or {}).items()}
    selected = []
    for name in names:
        spec = table.columns.get(name)
        if spec is None or spec.algorithm == HMAC_SHA256_BIDX:
            selected.append(df[name])
            continue
        udf = decrypt_udf(name, spec.arrow_type, table.deks, options)
        selected.append(udf(df[name]).alias(name))
    return df.select(*selected)
