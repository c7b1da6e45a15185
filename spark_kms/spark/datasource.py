"""The ``spark_kms`` Spark data source: encrypted Parquet writes with a commit protocol, and a
full-scan decrypting reader.

Usage::

    spark_kms.spark.register(spark)
    (df.write.format("spark_kms")
       .option("key_uri", "local://alias/pii")
       .option("columns", "ssn,email")
       .option("kms_options", json.dumps({"local": {"keystore": "/tmp/ks"}}))
       .mode("overwrite")
       .save("/data/customers"))

Options (all strings, names lower case):

``key_uri``               the KMS key that wraps the data keys (required when there is a column to encrypt)
``columns``               comma list of columns encrypted with AES-256-GCM, one data key per task
``deterministic_columns`` comma list of columns encrypted with AES-SIV under one job-wide data key
``blind_index``           ``"email:email_bidx,ssn:ssn_bidx"``: source column -> new HMAC index column
``encryption_context``    JSON object of extra str -> str context sent to the KMS
``kms_options``           JSON object of provider options per URI scheme
``partition_by``          comma list of plain columns; files go to hive-style ``col=value/`` dirs.
                          (``df.write.partitionBy`` does not reach Python data sources in Spark 4.3:
                          Spark rejects it with "partitioning columns do not match", so use this option.)
``max_cells_per_dek``     roll to a new data key after this many cells (default 2**28)
``run_id``                the job id recorded in the encryption context (default: a fresh id)
``join_domain``           the join domain of deterministic / blind-index columns (default: the dataset's own);
                          its one key is made by the first writer and reused by every later one
                          (:mod:`spark_kms.parquet.join_domains`)
``join_domain_store``     the directory where a named join domain's key lives (shared by its datasets;
                          default ``$SPARK_KMS_JOIN_DOMAIN_STORE``)

Layout and protocol
-------------------
* Each task encrypts its batches with one :class:`spark_kms.parquet.BatchEncryptor`: exactly one
  GenerateDataKey per non-empty task (plus roll-overs at the cell limit); an empty task makes no
  file and no KMS call. It writes one Parquet file per (task, hive partition) into
  ``<path>/_spark_kms_staging/<write_id>/<hive dirs>/part-<partition>-<write_id>-a<attempt>.parquet``;
  each footer holds the key table (wrapped data keys only) under ``spark_kms.key_table``.
* A DataFrame carrying the ``_spark_kms_keys`` column (cells already encrypted by
  :mod:`spark_kms.spark.ml`) has that column stripped; its key tables are merged into the footers.
* The task's commit message lists its staged files, rows, DEK entries and KMS call counts.
* Commit (driver): write the journal ``<staging>/_COMMITTING`` (the decision, with every move
  listed), then for ``overwrite`` move the old data files (and the dataset manifest) aside into
  ``<path>/_spark_kms_trash/<write_id>/``, move the staged files listed in commit messages into
  place, delete the trash, delete staging. Files a failed task attempt left in staging are never
  listed, so retries leave no duplicates.
* Abort: delete this write's staging (rolling back first if a journal shows a commit had begun).
  The previous data is untouched. Tasks never create the staging dir (the driver does), so a
  task of the failed job still running after abort fails when it opens a file instead of
  leaving an orphan; one racing the abort by microseconds can leave a file in a ``_`` dir
  (invisible to readers).
* Recovery: every write first finishes any interrupted commit of the same dataset (a journal
  present = the commit was decided: roll forward). :func:`recover_interrupted_commits` does it
  on demand.

The window, honestly: moving files is not one atomic step. While a commit runs (milliseconds
per file), a concurrent reader may see a mix (old files gone, new ones partly moved). A driver
killed in that window leaves the dataset incomplete until the next write or a call to
:func:`recover_interrupted_commits`, which completes it from the journal. A driver killed before
the journal is written leaves only a staging directory, which readers ignore (``_`` prefix).
Only local / POSIX file systems are supported (``os.replace``).

Reading
-------
``spark.read.format("spark_kms").option("kms_options", json).load(path)`` decrypts inside the
Python worker and sends only plaintext Arrow batches to the JVM (one way), instead of
:func:`spark_kms.spark.read_encrypted`'s native scan + Arrow UDFs (ciphertext JVM -> Python ->
JVM). Read options:

``kms_options``          JSON object of provider options per URI scheme (to unwrap keys in tasks)
``batch_size``           rows per Arrow batch read from Parquet (default 65536)
``max_partition_bytes``  a file larger than this (uncompressed row-group bytes) is split into
                         runs of row groups, one task each (default 128 MiB)
``filter_pushdown``      ``true`` to push filters on plain and hive partition columns
                         (:class:`SparkKmsFilteringReader`); Spark also needs
                         ``spark.sql.python.filterPushdown.enabled=true``. Load a fresh
                         DataFrame per query then (a Spark 4.3 caveat, see the class)
``require_encrypted``    comma list of columns every file must store encrypted (else the read is refused)
``min_format_version``   ``2`` refuses files whose key tables predate authenticated column specs

* Schema (``.schema(...)`` optional): the stored columns with encrypted ones at their original
  types (from the footers' key tables), blind indexes ``binary``, then hive partition columns
  from ``name=value`` dirs, typed as Spark's partition discovery does (int, long, decimal,
  double, date, else string). Footers only: planning makes no KMS call.
* Path: the dataset root, one hive partition directory in it, or one data file. The key tables
  are the footers' with the *dataset root's* manifest applied (:mod:`spark_kms.parquet.dataset`),
  so a rewrapped dataset reads under its new wrapping whichever of them is loaded.
* Partitions: one per data file (or per run of row groups for a large file); each carries the
  file's *wrapped* key table. A task reads its file with ``pq.ParquetFile.iter_batches``
  (streaming: memory stays flat), decrypts with :class:`spark_kms.parquet.BatchDecryptor`
  (keys unwrapped on first use, at most once per key per worker process), and yields batches.
  A cell that fails to authenticate raises DecryptionError naming the file and the column.
* The trade-off: Spark 4.3 gives Python data source readers **no column pruning**: every column
  of the schema is read and decrypted even if the query uses one. Pass a narrower
  ``.schema(...)`` to read less, or use ``read_encrypted`` for selective queries; this reader is
  for full scans and exports.

Code
----
This module holds the data source class and :func:`register`; the writer is
:mod:`spark_kms.spark._source_write`, the commit protocol :mod:`spark_kms.spark._commit`, the
reader :mod:`spark_kms.spark._source_scan`. :func:`spark_kms.spark.write_encrypted` and
:func:`spark_kms.spark.read_encrypted` (:mod:`spark_kms.spark.io`) sit above this module.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql.datasource import DataSource

from spark_kms.spark._commit import STAGING_DIR, TRASH_DIR, recover_interrupted_commits
from spark_kms.spark._options import KEYS_COLUMN
from spark_kms.spark._source_scan import (
    SparkKmsFilteringReader,
    SparkKmsInputPartition,
    SparkKmsReader,
    _ScanOptions,
)
from spark_kms.spark._source_write import SparkKmsCommitMessage, SparkKmsWriter, WriteResult

__all__ = [
    "KEYS_COLUMN",
    "STAGING_DIR",
    "TRASH_DIR",
    "SparkKmsCommitMessage",
    "SparkKmsDataSource",
    "SparkKmsFilteringReader",
    "SparkKmsInputPartition",
    "SparkKmsReader",
    "SparkKmsWriter",
    "WriteResult",
    "recover_interrupted_commits",
    "register",
]


class SparkKmsDataSource(DataSource):
    """``format("spark_kms")``: writes encrypted Parquet, and reads it back decrypted.

    Writing: see the module docstring. Reading (``spark.read.format("spark_kms").load(path)``):
    a full-scan reader that decrypts inside the Python worker, see "Reading" in the module
    docstring and :class:`SparkKmsReader`. :func:`spark_kms.spark.read_encrypted` (Spark's
    native Parquet scan, with column pruning) stays the path for selective queries.
    """

    @classmethod
    def name(cls) -> str:
        return "spark_kms"

    def schema(self) -> Any:
        """The plaintext schema of the dataset (footers only: no KMS call)."""
        return _ScanOptions.from_options(self.options).plan().spark_schema()

    def reader(self, schema: Any) -> SparkKmsReader:
        scan = _ScanOptions.from_options(self.options)
        cls = SparkKmsFilteringReader if scan.filter_pushdown else SparkKmsReader
        return cls(scan, schema)

    def writer(self, schema: Any, overwrite: bool) -> SparkKmsWriter:
        return SparkKmsWriter(dict(self.options), schema, overwrite)


def register(spark: Any) -> None:
    """Register the ``spark_kms`` data source with ``spark`` (idempotent)."""
    spark.dataSource.register(SparkKmsDataSource)
