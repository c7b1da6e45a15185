"""How much of an encrypted dataset is erased (crypto-shredding, docs/ERASURE.md), counted by a Spark job that
decrypts nothing: :func:`count_erased`.

A reader returns erased cells as null (or raises ``ErasedDataError``), but the counts its executors keep
(``BatchDecryptor.erased``) never reach the driver. ``count_erased`` counts them directly:

* a cell is erased when its data key (the DEK id, bytes 1..8 of the cell) is wrapped by a KMS key that is
  scheduled for deletion or destroyed -- checked on the driver once per (KMS key, key version): one data key of
  each is unwrapped through :class:`~spark_kms.parquet.keys.DekResolver`, and ``KeyErasedError`` means erased
  (any other KMS error is raised: a denied key is not an erased one);
* or when it is a per-subject cell whose subject (the row's value of the subject column) has a tombstone in
  the subject key store (``store.erased(ids)``, once per batch for the batch's distinct subjects, in the
  executors).

Null cells are never counted (a subject erased before the write has its cells written as null).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from spark_kms.crypto import HMAC_SHA256_BIDX, KeyTable
from spark_kms.errors import ConfigurationError, KeyErasedError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.spark._errors import errors_translated
from spark_kms.spark.conf import SparkKmsConf

__all__ = ["count_erased", "erased_data_keys"]

logger = logging.getLogger(__name__)


def erased_data_keys(table: KeyTable, kms_options: KmsConfigLike = None) -> set[str]:
    """The hex ids of the data keys of ``table`` whose KMS key is erased (scheduled for deletion or destroyed).

    One unwrap per (key URI, key version): every data key of an erased key version is erased with it.
    """
    from spark_kms.parquet.keys import DekResolver

    kms = KmsConfig.of(kms_options)
    groups: dict[tuple[str, str], list[str]] = {}
    for dek_id, entry in sorted(table.deks.items()):
        groups.setdefault((entry.key_uri, str(entry.key_version or "")), []).append(dek_id)
    resolver = DekResolver(table.deks, kms_options=kms, where="count_erased")
    erased: set[str] = set()
    for (key_uri, version), ids in groups.items():
        try:
            resolver.lookup(bytes.fromhex(ids[0]))
        except KeyErasedError:
            erased.update(ids)
            logger.info("count_erased: KMS key %s (version %s) is erased: %d data keys", key_uri, version or "-",
                        len(ids))
    return erased


def _subject_erased(store: Any, subjects: pa.Array) -> pa.Array:
    """Per row: is the row's subject erased in ``store`` (one look-up for the batch's distinct subjects)."""
    from spark_kms.parquet import encode_values

    ids = [None if v is None else v.decode("utf-8") for v in encode_values(subjects)]
    distinct = sorted({i for i in ids if i is not None})
    gone = store.erased(distinct) if distinct else set()
    return pa.array([i is not None and i in gone for i in ids], pa.bool_())


def count_erased(
    spark: Any,
    path: str,
    *,
    kms_options: KmsConfigLike = None,
    subject_store: str | os.PathLike[str] | None = None,
    columns: Sequence[str] | None = None,
) -> dict[str, int]:
    """The number of erased cells of each encrypted column of the dataset at ``path`` (default: every encrypted
    column; blind indexes are not counted), with one Spark job over the stored cells, without decrypting any.

    :param kms_options: how to reach each KMS (over the session's ``spark.spark_kms.*`` conf): one unwrap per
        KMS key version, on the driver.
    :param subject_store: the subject key store of per-subject columns (URL or path; default the conf's
        ``spark.spark_kms.subjectStore``, then ``$SPARK_KMS_SUBJECT_STORE``).
    :raises ConfigurationError: ``columns`` names a column that is not encrypted in the dataset.
    """
    from pyspark.sql import functions as F  # noqa: N812 - pyspark's convention
    from pyspark.sql.types import BooleanType

    from spark_kms.spark._options import subject_store_url
    from spark_kms.spark.io import dataset_key_table
    from spark_kms.spark.udfs import arrow_udf_of

    conf = SparkKmsConf.of(spark)
    kms = conf.kms_config(kms_options)
    store_url = subject_store_url(subject_store) or conf.option("subject_store")
    df = spark.read.parquet(path)
    table = dataset_key_table(spark, path, df=df)
    encrypted = [n for n, s in table.columns.items() if s.algorithm != HMAC_SHA256_BIDX and n in df.columns]
    if columns is not None:
        unknown = [c for c in columns if c not in encrypted]
        if unknown:
            raise ConfigurationError(f"count_erased: dataset {path} has no encrypted columns {unknown} "
                                     f"(encrypted columns: {encrypted})")
        encrypted = list(columns)
    if not encrypted:
        return {}
    erased_ids = sorted(erased_data_keys(table, kms))
    store = None
    if any(table.columns[n].subject is not None for n in encrypted):
        from spark_kms.subjects import store_of

        store = store_of(store_url, kms_options=kms)  # pickles as its configuration; workers reopen it

    def subject_erased(subjects: pa.Array) -> pa.Array:
        return _subject_erased(store, subjects)

    erased_subject = arrow_udf_of(subject_erased, BooleanType(), iterator=False)
    sums = []
    for name in encrypted:
        cell = df[name]
        condition = F.lit(False)
        if erased_ids:
            condition = F.lower(F.hex(F.substring(cell, 2, 8))).isin(erased_ids)
        subject = table.columns[name].subject
        if subject is not None:
            if subject not in df.columns:
                raise ConfigurationError(f"count_erased: column {name!r} of dataset {path} is encrypted per "
                                         f"subject, by column {subject!r}, which the dataset does not have")
            condition = condition | erased_subject(df[subject])
        sums.append(F.sum(F.when(cell.isNotNull() & condition, 1).otherwise(0)).alias(name))
    with errors_translated():
        row = df.select(*sums).collect()[0]
    counts = {name: int(row[name] or 0) for name in encrypted}
    logger.info("count_erased of %s: %d erased data keys; erased cells by column %s", path, len(erased_ids), counts)
    return counts
