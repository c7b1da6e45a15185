"""The reading half of the ``spark_kms`` data source: ``spark.read.format("spark_kms")``, a
full-scan reader that decrypts in the Python worker (see "Reading" in :mod:`spark_kms.spark.datasource`).

The plan comes from :class:`spark_kms.parquet.dataset.Dataset` (files, footers, the dataset
root's manifest, the precedence rule), whatever the path names inside a dataset: its root, a
hive partition directory or one data file -- a local path or a storage URI, reached through
:mod:`spark_kms.storage` (option ``storage_options``). Footers only: planning makes no KMS call.

Planning refuses a dataset with a commit in progress or interrupted (its journal exists:
:func:`spark_kms.spark._commit.refuse_pending_commits`), whose directory may then hold a mix of
old and new files; and plans again if a write staging into the dataset ended while it listed.
"""

from __future__ import annotations

import decimal
import logging
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyspark.sql.datasource import DataSourceReader, InputPartition

from spark_kms.errors import ConfigurationError, FormatError, JobError
from spark_kms.kms import KmsConfig
from spark_kms.parquet.dataset import Dataset, dataset_location, dataset_root_of, open_parquet
from spark_kms.spark._commit import refuse_pending_commits
from spark_kms.spark._hive import hive_partition_values, infer_partition_type, partition_scalar
from spark_kms.spark._options import (
    kms_config_option,
    on_erased_option,
    positive_int,
    split_list,
    storage_location_option,
    subject_store_url,
)
from spark_kms.spark._scan_filters import and_all, filter_expression
from spark_kms.storage import Location, resolve

__all__ = ["SparkKmsFilteringReader", "SparkKmsInputPartition", "SparkKmsReader"]

logger = logging.getLogger(__name__)

_DEFAULT_READ_BATCH_ROWS = 65_536
_DEFAULT_MAX_PARTITION_BYTES = 128 * 1024 * 1024  # Spark's spark.sql.files.maxPartitionBytes default
_WHAT = "the spark_kms data source"
_PLAN_TRIES = 3


@dataclass(frozen=True)
class _ScanOptions:
    """The read options, parsed once (driver side); picklable (the KmsConfig as options only, the
    Location as URI and storage options)."""

    location: Location
    kms: KmsConfig
    batch_size: int
    max_partition_bytes: int
    filter_pushdown: bool
    require_encrypted: tuple[str, ...] = ()
    min_format_version: int = 1
    subject_store: str | None = None  # the subject key store of per-subject columns (URL or path)
    on_erased: str = "null"  # erased cells: "null" or "raise" (ErasedDataError)

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> _ScanOptions:
        opts = {k.lower(): v for k, v in options.items()}
        location = dataset_location(storage_location_option(opts, _WHAT))
        pushdown = (opts.get("filter_pushdown") or "false").strip().lower()
        if pushdown not in ("true", "false"):
            raise ConfigurationError(f"option filter_pushdown must be 'true' or 'false', got {pushdown!r}")
        return cls(
            location=location,
            kms=kms_config_option(opts),
            batch_size=positive_int(opts, "batch_size", _DEFAULT_READ_BATCH_ROWS),
            max_partition_bytes=positive_int(opts, "max_partition_bytes", _DEFAULT_MAX_PARTITION_BYTES),
            filter_pushdown=pushdown == "true",
            require_encrypted=tuple(split_list(opts.get("require_encrypted"))),
            min_format_version=positive_int(opts, "min_format_version", 1),
            subject_store=subject_store_url(opts.get("subject_store")),
            on_erased=on_erased_option(opts),
        )

    @property
    def path(self) -> str:
        return self.location.uri

    def file(self, uri: str) -> Location:
        """One data file of the dataset, with the dataset's storage options (any process)."""
        return resolve(uri).with_options(self.location.options)

    def plan(self) -> _DatasetPlan:
        return _DatasetPlan.build(self.location, self)


@dataclass(frozen=True)
class _DataFile:
    """One data file as the driver saw its footer: wrapped keys only, no cell."""

    path: str
    key_table: bytes  # the footer's key table (JSON), the dataset manifest applied
    partition_values: tuple[str | None, ...]  # raw hive values, unescaped; None = null
    row_group_bytes: tuple[int, ...]
    arrow_schema: pa.Schema


@dataclass(frozen=True)
class _DatasetPlan:
    """A dataset's data files, stored schema, encrypted column types and hive partition columns.

    Built from footers only (pyarrow reads the footer, never a data page): no KMS call.
    """

    root: str
    files: tuple[_DataFile, ...]
    stored_schema: pa.Schema  # the first file's schema, as stored (encrypted columns binary)
    plaintext_types: dict[str, pa.DataType]  # encrypted (decryptable) column -> plaintext Arrow type
    key_table_columns: frozenset[str]  # every column a key table describes: encrypted and blind indexes
    partition_columns: tuple[str, ...]
    partition_types: tuple[Any, ...]  # Spark DataTypes, inferred like Spark's partition discovery

    @classmethod
    def build(cls, location: Location | str, scan: _ScanOptions | None = None) -> _DatasetPlan:
        """The plan of the files under ``location`` (the dataset root, a hive partition directory
        or one data file), with the dataset root's manifest applied to every footer.

        Partition columns are the ``name=value`` directories between ``location`` (or, for a
        file, the dataset root) and each file, as Spark's partition discovery sees them.

        :raises JobError: a commit of the dataset is in progress or was interrupted.
        """
        loc = dataset_location(location)
        root = resolve(dataset_root_of(loc)).with_options(loc.options)
        for _ in range(_PLAN_TRIES):
            writing = refuse_pending_commits(root, what=_WHAT)
            plan = cls._build(loc, scan)
            still = refuse_pending_commits(root, what=_WHAT)
            if writing <= still:
                return plan
            # A write staging into the dataset ended while the files were listed: its commit may
            # have run meanwhile, so the listing may hold part of it. List again.
            logger.info("spark_kms scan of %s: writes %s ended while planning; planning again", loc.uri,
                        sorted(writing - still))
        raise JobError(f"{_WHAT}: dataset {loc.uri} kept changing while its files were listed "
                       f"({_PLAN_TRIES} tries): writes are committing to it; read again later")

    @classmethod
    def _build(cls, loc: Location, scan: _ScanOptions | None) -> _DatasetPlan:
        from spark_kms.crypto import AES_256_GCM, AES_256_GCM_SUBJECT, AES_256_SIV
        from spark_kms.parquet import parse_arrow_type

        path = loc.uri
        dataset = Dataset.open(
            loc, job=_WHAT, require_files=False, kms_options=scan.kms if scan else None,
            require_encrypted=scan.require_encrypted if scan else None,
            min_format_version=scan.min_format_version if scan else 1,
        )
        if not dataset.files:
            raise ConfigurationError(
                f"dataset {path} has no data files, so its schema cannot be inferred: pass .schema(...)"
            )
        base = loc if loc.is_dir() else dataset.location
        merged = dataset.key_table()
        files: list[_DataFile] = []
        partition_columns: tuple[str, ...] | None = None
        for file in dataset.files:
            file_loc = dataset.file_location(file)
            names, values = hive_partition_values(posixpath.dirname(file_loc.relative_to(base)), file)
            if partition_columns is None:
                partition_columns = names
            elif names != partition_columns:
                raise FormatError(
                    f"dataset {path}: file {file} sits in partition directories {list(names)}, "
                    f"other files in {list(partition_columns)}"
                )
            pf = open_parquet(file_loc)
            meta = pf.metadata
            files.append(
                _DataFile(
                    path=file,
                    key_table=dataset.effective_table(file).to_json(),
                    partition_values=values,
                    row_group_bytes=tuple(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
                    arrow_schema=pf.schema_arrow,
                )
            )
        stored = files[0].arrow_schema
        clash = [c for c in partition_columns or () if c in stored.names]
        if clash:
            raise FormatError(f"dataset {path}: partition columns {clash} are also stored in the data files")
        plaintext = {
            name: parse_arrow_type(spec.arrow_type, column=name, where=f"dataset {path}")
            for name, spec in merged.columns.items()
            if spec.algorithm in (AES_256_GCM, AES_256_SIV, AES_256_GCM_SUBJECT)
        }
        partition_columns = partition_columns or ()
        types = tuple(
            infer_partition_type([f.partition_values[i] for f in files]) for i in range(len(partition_columns))
        )
        logger.debug(
            "spark_kms scan of %s (dataset root %s): %d data files, %d manifest entries, encrypted columns %s, "
            "partition columns %s",
            path, dataset.root, len(files), len(dataset.manifest), sorted(plaintext), list(partition_columns),
        )
        return cls(path, tuple(files), stored, plaintext, frozenset(merged.columns), partition_columns, types)

    def spark_schema(self) -> Any:
        """The default schema: stored columns (encrypted ones at their plaintext types, blind
        indexes binary), then the hive partition columns, as Spark orders them."""
        from pyspark.sql import types as T
        from pyspark.sql.pandas.types import from_arrow_type

        fields = []
        for f in self.stored_schema:
            t = self.plaintext_types.get(f.name, f.type)
            if pa.types.is_dictionary(t):
                t = t.value_type
            try:
                spark_type = from_arrow_type(t)
            except TypeError:  # PySparkTypeError: e.g. unsigned integers
                raise ConfigurationError(
                    f"dataset {self.root}: column {f.name!r} has Arrow type {t}, which has no Spark type"
                ) from None
            fields.append(T.StructField(f.name, spark_type, True))
        fields.extend(T.StructField(n, t, True) for n, t in zip(self.partition_columns, self.partition_types, strict=True))
        return T.StructType(fields)


@dataclass
class SparkKmsInputPartition(InputPartition):
    """One read task: a data file, or a run of its row groups (``None`` = all of them).

    Holds only the file's *wrapped* key table; the worker unwraps each data key on first use.
    """

    path: str
    key_table: bytes
    partition_values: tuple[str | None, ...]
    row_groups: list[int] | None = None


class SparkKmsReader(DataSourceReader):
    """Full-scan reader: each task reads its file with ``pq.ParquetFile.iter_batches``, decrypts
    with :class:`spark_kms.parquet.BatchDecryptor` and yields plaintext Arrow batches.

    Planned on the driver side from footers (wrapped keys only, no KMS call). Partitions: one
    per data file, or runs of row groups of at most ``max_partition_bytes`` (uncompressed) for
    larger files. Spark 4.3 gives Python data sources no column pruning: every column of the
    schema is read and decrypted. A ``.schema(...)`` naming only some columns is the way to read
    less (only those columns are read from disk, only their keys unwrapped).
    """

    def __init__(self, scan: _ScanOptions, schema: Any) -> None:
        from pyspark.sql.pandas.types import to_arrow_schema

        self.scan = scan
        plan = scan.plan()
        self.root = plan.root
        self.files = plan.files
        self.partition_columns = plan.partition_columns
        names = list(schema.fieldNames())
        known = [*plan.stored_schema.names, *plan.partition_columns]
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigurationError(f"dataset {self.root} has no columns {missing} (columns: {known})")
        # The exact Arrow schema Spark checks the batches against.
        self.output_schema: pa.Schema = to_arrow_schema(schema, timezone="UTC")
        self.partition_arrow_types = {
            n: self.output_schema.field(n).type for n in names if n in plan.partition_columns
        }
        self.stored_columns = [n for n in names if n not in plan.partition_columns]
        self.encrypted_columns = [n for n in self.stored_columns if n in plan.plaintext_types]
        # Encrypted and blind-index columns: their stored cells say nothing about the plaintext,
        # so no filter on them is pushed. Derived once from the plan, not per filter and file.
        self.key_table_columns = plan.key_table_columns
        self.row_filters: list[Any] = []  # pyarrow expressions on stored plain columns (pushdown)
        self.row_filter_columns: set[str] = set()
        self.partition_filters: list[Any] = []  # pyarrow expressions on hive partition columns

    # -- planning (driver side) -----------------------------------------------
    def partitions(self) -> list[InputPartition]:
        out: list[InputPartition] = []
        row_filter = and_all(self.row_filters)
        for f in self.files:
            if self.partition_filters and not self._partition_matches(f):
                continue
            groups = list(range(len(f.row_group_bytes)))
            if row_filter is not None:
                groups = _row_groups_matching(self.scan.file(f.path), row_filter, groups)
                if not groups:
                    continue
            for run in _runs(groups, f.row_group_bytes, self.scan.max_partition_bytes):
                whole = row_filter is None and len(run) == len(f.row_group_bytes)
                out.append(SparkKmsInputPartition(f.path, f.key_table, f.partition_values, None if whole else run))
        logger.info("spark_kms scan of %s: %d read tasks over %d of %d data files; encrypted columns decrypted: %s",
                    self.root, len(out), len({p.path for p in out}), len(self.files), self.encrypted_columns)
        return out

    def _partition_matches(self, f: _DataFile) -> bool:
        # Evaluate the filters on a one-row table of the file's partition values: pyarrow
        # applies SQL's null semantics for us.
        arrays = {}
        for i, name in enumerate(self.partition_columns):
            t = self._partition_filter_type(name)
            arrays[name] = pa.array([partition_scalar(f.partition_values[i], t).as_py()], type=t)
        return pa.table(arrays).filter(and_all(self.partition_filters)).num_rows == 1

    def _partition_filter_type(self, name: str) -> pa.DataType:
        if name in self.partition_arrow_types:
            return self.partition_arrow_types[name]
        return pa.string()

    # -- reading (executor side) ------------------------------------------------
    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not isinstance(partition, SparkKmsInputPartition):
            return iter(())  # Spark sends InputPartition(None) when there is no file
        return self._read_file(partition)

    def _read_file(self, part: SparkKmsInputPartition) -> Iterator[pa.RecordBatch]:
        from spark_kms.crypto import KeyTable
        from spark_kms.parquet import BatchDecryptor

        where = f"file {part.path}"
        pf = open_parquet(self.scan.file(part.path))
        stored_names = pf.schema_arrow.names
        row_filter = and_all(self.row_filters)
        filter_columns = sorted(self.row_filter_columns - set(self.stored_columns))
        decryptor = BatchDecryptor(KeyTable.from_json(part.key_table, where=where), kms_options=self.scan.kms,
                                   subject_store=self.scan.subject_store, on_erased=self.scan.on_erased)
        # The row-binding / subject columns of the encrypted columns read are read too, even when the schema
        # leaves them out (they are not returned).
        needed = decryptor.required_columns([*self.stored_columns, *filter_columns])
        absent = [c for c in needed if c not in stored_names]
        if absent:
            raise FormatError(f"{where} has no columns {absent} (dataset {self.root})")
        constants = self._partition_constants(part)
        logger.debug("reading %s (row groups %s): decrypting %s", part.path,
                     "all" if part.row_groups is None else part.row_groups, self.encrypted_columns)
        offset = 0
        for batch in pf.iter_batches(batch_size=self.scan.batch_size, row_groups=part.row_groups, columns=needed):
            read_rows = batch.num_rows
            if row_filter is not None:
                batch = batch.filter(row_filter)
            if batch.num_rows:
                # Row offsets are only meaningful for an unfiltered whole file.
                at = where if offset == 0 or row_filter is not None or part.row_groups else f"{where} (batch from row {offset})"
                batch = decryptor.decrypt_batch(batch, self.encrypted_columns, where=at)
                yield self._output(batch, constants, where)
            offset += read_rows
        if decryptor.erased:
            logger.warning("read %s: erased cells read as null, by column: %s", part.path, decryptor.erased)
        logger.debug("read %s: %d rows, %d KMS Decrypt calls", part.path, offset, decryptor.kms_calls)

    def _partition_constants(self, part: SparkKmsInputPartition) -> dict[str, pa.Scalar]:
        out = {}
        for name, t in self.partition_arrow_types.items():
            raw = part.partition_values[self.partition_columns.index(name)]
            try:
                out[name] = partition_scalar(raw, t)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, decimal.InvalidOperation):
                raise ConfigurationError(
                    f"file {part.path}: partition directory value of column {name!r} does not convert to {t}"
                ) from None
        return out

    def _output(self, batch: pa.RecordBatch, constants: Mapping[str, pa.Scalar], where: str) -> pa.RecordBatch:
        arrays = []
        n = batch.num_rows
        for field_ in self.output_schema:
            if field_.name in constants:
                arrays.append(pa.repeat(constants[field_.name], n))
                continue
            arr = batch.column(batch.schema.get_field_index(field_.name))
            if not arr.type.equals(field_.type):
                try:
                    arr = arr.cast(field_.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    # Arrow's message may quote a value: say only where and which types.
                    raise ConfigurationError(
                        f"{where}: column {field_.name!r} of type {arr.type} does not convert to {field_.type} "
                        "(the schema passed to .schema(...))"
                    ) from None
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)


class SparkKmsFilteringReader(SparkKmsReader):
    """:class:`SparkKmsReader` with filter pushdown (option ``filter_pushdown=true``; Spark also
    needs ``spark.sql.python.filterPushdown.enabled=true``, else it refuses the reader).

    Pushed: comparisons, ``IN``, ``IS [NOT] NULL``, ``<=>``, ``NOT`` and string prefix/suffix/
    contains on *plain* stored columns of integer, floating, string, binary, boolean, date or
    decimal type, and on hive partition columns. Partition-column filters drop whole files at
    planning; the others drop row groups whose statistics cannot match (planning) and then
    rows (in the task, before decryption: filtered-out cells are never decrypted). Spark does
    not re-check pushed filters, so each is applied exactly, with SQL's null semantics.
    Encrypted columns (only ciphertext is stored) and timestamps are left to Spark.

    **Spark 4.3 caveat: one query per DataFrame.** Spark keeps the reader of a query whose
    filters were pushed on the DataFrame (``PythonDataSourceV2.setReadInfo``), and a later query
    on the *same* DataFrame that has no pushable filter (no filter, or only ORs) reuses it:
    its rows are silently filtered by the earlier query's filters. Call ``.load()`` again for
    each query (planning reads footers only, no KMS call). The default reader, without
    ``filter_pushdown``, has nothing query-specific and is safe to reuse.
    """

    def pushFilters(self, filters: list[Any]) -> list[Any]:  # noqa: N802 (Spark's name)
        left = []
        for f in filters:
            target = self._classify(f)
            if target is None:
                left.append(f)
                continue
            expr, column, is_partition = target
            if is_partition:
                self.partition_filters.append(expr)
            else:
                self.row_filters.append(expr)
                self.row_filter_columns.add(column)
        return left

    def _classify(self, f: Any) -> tuple[Any, str, bool] | None:
        from pyspark.sql.datasource import Not

        inner = f.child if isinstance(f, Not) else f
        attribute = getattr(inner, "attribute", None)
        if not isinstance(attribute, tuple) or len(attribute) != 1:
            return None
        column = attribute[0]
        if column in self.partition_columns:
            t, is_partition = self._partition_filter_type(column), True
        elif column in self.files[0].arrow_schema.names and column not in self.key_table_columns:
            t, is_partition = self.files[0].arrow_schema.field(column).type, False
        else:
            return None
        expr = filter_expression(f, t)
        return None if expr is None else (expr, column, is_partition)


def _row_groups_matching(file: Location, expr: Any, groups: list[int]) -> list[int]:
    """Row groups whose statistics may satisfy ``expr`` (pyarrow's own row-group pruning)."""
    import pyarrow.dataset as pds

    fragment = pds.ParquetFileFormat().make_fragment(file.path, filesystem=file.fs)
    kept = {rg.id for rg in fragment.subset(filter=expr).row_groups}
    return [g for g in groups if g in kept]


def _runs(groups: list[int], sizes: Sequence[int], limit: int) -> Iterator[list[int]]:
    """Consecutive row groups cut into runs of at most ``limit`` bytes (at least one group each)."""
    run: list[int] = []
    total = 0
    for g in groups:
        if run and total + sizes[g] > limit:
            yield run
            run, total = [], 0
        run.append(g)
        total += sizes[g]
    if run or not groups:
        yield run

