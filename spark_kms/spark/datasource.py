"""The ``spark_kms`` Spark data source: encrypted Parquet writes with a commit protocol, and a
full-scan decrypting reader.

Usage::

    spark_kms.spark.register(spark)
    (df.write.format("spark_kms")
       .option("key_uri", "local://alias/pii")
       .option("columns", "ssn,email")
       .option("kms_options", json.dumps({"local": {"keystore": "/tmp/ks"}}))
       .mode("overwrite")
       .save("/data/customers"))            # or "s3://bucket/customers", "s3a://...", "gs://...", ...

Options (all strings, names lower case). Each may also come from the session's Spark conf as
``spark.spark_kms.<option>`` (KMS options also per scheme, ``spark.spark_kms.kms.<scheme>.<option>``; storage
options as ``spark.spark_kms.storage.<name>``), as it was at :func:`register`; ``.option(...)`` wins
(:mod:`spark_kms.spark.conf`, docs/CONFIGURATION.md):

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
``storage_options``       JSON object of storage options (:data:`spark_kms.storage.OPTION_NAMES`, e.g.
                          ``s3.endpoint_override``, ``s3.region``, ``s3.access_key``, ``s3.secret_key``)
                          merged over ``$SPARK_KMS_STORAGE_OPTIONS``; read and write. Secret ones never
                          appear in a log line, a repr, an error or the write's result
``tenant_column``         with ``tenant_keys``: data keys per (task, tenant), under each tenant's KMS key
``tenant_keys``           a key-URI template with ``{tenant}``, or a JSON object tenant -> key URI (``"*"``: the
                          template for the others); ``key_uri`` may then be omitted (docs/ERASURE.md)
``subject_column``        encrypt the randomised columns per data subject (the row's value of this column)
``subject_store``         the subject key store's URL or path (default ``$SPARK_KMS_SUBJECT_STORE``); read too

Paths: a local path, ``file://``, ``s3://`` / ``s3a://`` (the same objects), ``gs://``,
``abfs[s]://`` or ``hdfs://`` (:mod:`spark_kms.storage`). Every file operation of the writer, the
commit and the reader goes through :mod:`spark_kms.storage` in the Python workers, so Spark needs
no Hadoop connector for this data source (Spark's own Parquet scan, used by ``read_encrypted``,
does: docs/STORAGE.md).

Layout and protocol
-------------------
* The driver starts a write by writing ``<path>/_spark_kms_staging/<write_id>/_STARTED`` (after
  completing any interrupted commit of the dataset, and removing abandoned staging).
* Each task encrypts its batches with one :class:`spark_kms.parquet.BatchEncryptor`: exactly one
  GenerateDataKey per non-empty task (plus roll-overs at the cell limit); an empty task makes no
  file and no KMS call. It streams one Parquet file per (task, hive partition) into
  ``<path>/_spark_kms_staging/<write_id>/<hive dirs>/part-<partition>-<write_id>-a<attempt>.parquet``
  (an object store shows the object, whole, when its upload completes); each footer holds the key
  table (wrapped data keys only) under ``spark_kms.key_table``. A task stages files only while
  ``_STARTED`` exists, and takes its files back if it is gone when they are closed.
* A DataFrame carrying the ``_spark_kms_keys`` column (cells already encrypted by
  :mod:`spark_kms.spark.ml`) has that column stripped; its key tables are merged into the footers.
* The task's commit message lists its staged files, rows, DEK entries and KMS call counts.
* Commit (driver): check every listed staged file is there; write the journal
  ``<staging>/_COMMITTING`` (the decision: one object PUT listing every move, relative to the
  dataset); roll forward: for ``overwrite`` move the old data files (and the dataset manifest)
  aside into ``<path>/_spark_kms_trash/<write_id>/``, move the staged files listed in commit
  messages into place, delete the journal (the commit is complete), then the trash and staging.
  Files a failed or speculative task attempt left in staging are never listed, so retries leave
  no duplicates. Each step lists where every file is first, so rolling forward (or back) again
  after an interruption anywhere -- on an object store also between a move's copy and delete --
  completes it.
* Abort: roll back if a journal shows the commit had begun (new files back to staging, old ones
  back in place), then delete this write's staging, ``_STARTED`` first. The previous data is
  untouched.
* Recovery: every write first finishes any interrupted commit of the same dataset (a journal
  present = the commit was decided: roll forward). :func:`recover_interrupted_commits` does it
  on demand.

The window, honestly: publishing is not one atomic step -- a rename per file on a local disk or
HDFS, a copy and a delete per object on S3, GCS and Azure. While a commit is rolled forward, and
after a driver died in the middle, the dataset directory holds a mix of old and new files. This
data source's reader and :class:`spark_kms.parquet.dataset.Dataset` (so ``read_encrypted`` and the
jobs) refuse to read then (:func:`spark_kms.spark._commit.pending_commits`), naming the write;
the next write or :func:`recover_interrupted_commits` completes it. Spark's own Parquet scan
(``spark.read.parquet``) knows nothing of the journal and can see the mix during that window;
only a table format (Delta Lake, Iceberg) makes a whole overwrite atomic for every reader
(docs/ARCHITECTURE.md, "Commit protocol on object stores"). A driver killed before the journal is
written leaves only staging, which readers ignore (``_`` prefix) and the next write or
``spark-kms gc`` removes after the grace period.

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
``storage_options``      as for writing
``subject_store``        the subject key store of per-subject columns (their subject column is read too)
``on_erased``            ``null`` (default): erased cells read as null; ``raise``: ``ErasedDataError``

* Schema (``.schema(...)`` optional): the stored columns with encrypted ones at their original
  types (from the footers' key tables), blind indexes ``binary``, then hive partition columns
  from ``name=value`` dirs, typed as Spark's partition discovery does (int, long, decimal,
  double, date, else string). Footers only: planning makes no KMS call.
* A dataset with a commit in progress or interrupted is refused (JobError naming the write).
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
reader :mod:`spark_kms.spark._source_scan` (its filter pushdown :mod:`spark_kms.spark._scan_filters`). :func:`spark_kms.spark.write_encrypted` and
:func:`spark_kms.spark.read_encrypted` (:mod:`spark_kms.spark.io`) sit above this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pyspark.sql.datasource import DataSource

from spark_kms.spark._commit import STAGING_DIR, TRASH_DIR, pending_commits, recover_interrupted_commits
from spark_kms.spark._errors import marked_for_driver
from spark_kms.spark._options import KEYS_COLUMN
from spark_kms.spark._source_scan import (
    SparkKmsFilteringReader,
    SparkKmsInputPartition,
    SparkKmsReader,
    _ScanOptions,
)
from spark_kms.spark._source_write import SparkKmsCommitMessage, SparkKmsWriter, WriteResult
from spark_kms.spark.conf import AUTO_REGISTER, SparkKmsConf

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
    "pending_commits",
    "recover_interrupted_commits",
    "register",
]


class SparkKmsDataSource(DataSource):
    """``format("spark_kms")``: writes encrypted Parquet, and reads it back decrypted.

    Writing: see the module docstring. Reading (``spark.read.format("spark_kms").load(path)``):
    a full-scan reader that decrypts inside the Python worker, see "Reading" in the module
    docstring and :class:`SparkKmsReader`. :func:`spark_kms.spark.read_encrypted` (Spark's
    native Parquet scan, with column pruning) stays the path for selective queries.

    Options come from ``.option(...)`` over the session's ``spark.spark_kms.*`` conf as it was
    when :func:`register` ran (:attr:`session_conf`; :mod:`spark_kms.spark.conf`).
    """

    #: the ``spark.spark_kms.*`` settings of the session at registration (Spark's Python planner
    #: workers cannot read the session's conf themselves); set on the class :func:`register` makes
    session_conf: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def name(cls) -> str:
        return "spark_kms"

    def merged_options(self) -> dict[str, str]:
        """The call's options over the session conf's (:meth:`SparkKmsConf.source_options`)."""
        return SparkKmsConf(dict(self.session_conf)).source_options(self.options)

    @marked_for_driver()  # a spark_kms error reaches the driver as itself (spark/_errors.py)
    def schema(self) -> Any:
        """The plaintext schema of the dataset (footers only: no KMS call)."""
        return _ScanOptions.from_options(self.merged_options()).plan().spark_schema()

    @marked_for_driver()
    def reader(self, schema: Any) -> SparkKmsReader:
        scan = _ScanOptions.from_options(self.merged_options())
        cls = SparkKmsFilteringReader if scan.filter_pushdown else SparkKmsReader
        return cls(scan, schema)

    def writer(self, schema: Any, overwrite: bool) -> SparkKmsWriter:
        return SparkKmsWriter(self.merged_options(), schema, overwrite)


def register(spark: Any) -> None:
    """Register the ``spark_kms`` data source with ``spark``, carrying the session's ``spark.spark_kms.*``
    conf as it is now (idempotent; call again after changing the conf -- the Python entry points do).

    With ``spark.spark_kms.sql.autoRegister=true`` it also registers the SQL functions
    (:func:`spark_kms.spark.sql.register_functions`, options from the conf) unless the session has a
    ``kms_decrypt`` function already.
    """
    conf = SparkKmsConf.of(spark)
    source: type[SparkKmsDataSource] = SparkKmsDataSource
    if conf:
        # A class made here pickles by value, its conf included, into the planner workers.
        source = type("ConfiguredSparkKmsDataSource", (SparkKmsDataSource,),
                      {"session_conf": dict(conf.entries), "__module__": __name__})
    spark.dataSource.register(source)
    if conf.flag(AUTO_REGISTER) and not spark.catalog.functionExists("kms_decrypt"):
        from spark_kms.spark.sql import register_functions

        register_functions(spark)
