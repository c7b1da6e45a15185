"""A dataset on storage: its paths, data files, root, manifest, and the key table readers use.

Every reader (the pyarrow file layer, Spark's native-scan reader, the ``spark_kms`` data
source, SQL functions), every job and the CLI reach a dataset's files and keys through this
module, so the rules below live here and nowhere else -- it is the seam where other storage
(object stores) and table formats plug in.

Layout rules (docs/FORMAT.md section 8):

* A dataset is a directory of Parquet files, possibly in hive partition directories
  (``date=2024-01-01/``). Names starting with ``_`` or ``.`` are not data (staging, run
  journals, ``_SUCCESS``, checksums) -- the rule pyarrow.dataset and Spark apply.
* A file's key table is the JSON under ``spark_kms.key_table`` in its Parquet footer.
* The dataset manifest ``<root>/_spark_kms_keys.json`` (written by rewrap and re-encrypt)
  holds DEK entries that **replace footer entries with the same DEK id**; manifest entries
  no footer references open nothing and are ignored (:func:`apply_manifest`).
* The dataset root of any path inside a dataset -- the root itself, a hive partition
  directory, or a single file -- is the nearest directory that is not a hive partition
  directory (``name=value``), so a reader given one partition still finds the manifest.

Reading all this makes no KMS call: footers and the manifest hold wrapped keys only -- except
to verify an authenticated manifest (below), one KMS Decrypt per process.

Integrity (format version 2, docs/FORMAT.md sections 8 and 13):

* A version-2 manifest may carry the dataset's **declaration** -- its encrypted columns with their
  exact specs, and the lowest key-table version its files may have -- and is then authenticated:
  an HMAC-SHA256 over the whole manifest under a data key made for it (encryption context
  ``{"purpose": "spark_kms.declaration", "dataset": <root>}``), wrapped beside it. Someone who
  can write to storage but cannot use the KMS key can neither forge nor alter it.
  :meth:`Dataset.verify` checks it (one unwrap, cached per process); the key tables of a dataset
  whose manifest is authenticated are not handed out before (:meth:`Dataset.key_table`).
* A file whose footer stores a declared column in plaintext, or describes it otherwise than the
  declaration, is refused (:func:`check_required_encryption`); so is one whose key table is older
  than the declared (or the reader's) ``min_format_version``.
* Deleting the whole manifest deletes the declaration with it: readers that must not depend on
  it name the columns themselves (``require_encrypted``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from spark_kms.crypto import (
    FORMAT_VERSIONS,
    KEY_TABLE_METADATA_KEY,
    ColumnSpec,
    Declaration,
    DekEntry,
    KeyTable,
    Manifest,
)
from spark_kms.errors import ConfigurationError, FormatError, JobError, MissingKeyTableError
from spark_kms.kms import KmsConfigLike
from spark_kms.parquet.manifest import (
    MANIFEST_NAME,
    apply_manifest,
    read_manifest,
    read_manifest_document,
    verify_manifest,
    write_manifest,
)
from spark_kms.storage import Location, StoragePath, is_hidden, resolve

__all__ = [
    "MANIFEST_NAME",
    "Dataset",
    "apply_manifest",
    "check_required_encryption",
    "dataset_location",
    "dataset_path",
    "dataset_root_of",
    "declare_encryption",
    "is_hidden",
    "key_table_from_metadata",
    "list_data_files",
    "local_path",
    "open_parquet",
    "pending_commits",
    "read_dataset_key_table",
    "read_key_table",
    "read_manifest",
    "read_manifest_document",
    "verify_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
#: where the ``spark_kms`` data source stages a write's files (hidden from every reader)
STAGING_DIR_NAME = "_spark_kms_staging"
#: a write's commit journal, in its staging directory: written when the commit is decided, removed when done
COMMIT_JOURNAL_NAME = "_COMMITTING"
_KEY = KEY_TABLE_METADATA_KEY.encode("utf-8")


# -- paths ------------------------------------------------------------------------------


def local_path(path: PathLike) -> str:
    """A local filesystem path; Spark hands out ``file:/x`` and ``file:///x`` URIs for local paths."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return text[len("file://") :]
    if text.startswith("file:"):
        return text[len("file:") :]
    return text


def dataset_path(path: StoragePath, *, what: str = "spark_kms") -> str:
    """The text of a dataset (or file) path as spark_kms shows it and hands it to Spark: an absolute
    local path, or a storage URI (``s3://``, ``s3a://``, ``gs://``, ``abfs[s]://``, ``hdfs://``;
    :mod:`spark_kms.storage`).

    :raises ConfigurationError: a URI of a scheme spark_kms does not reach (names ``what``).
    """
    try:
        return resolve(path).uri
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None


def dataset_location(path: StoragePath, options: Mapping[str, str] | str | None = None) -> Location:
    """The :class:`~spark_kms.storage.Location` of a dataset path (local paths with symlinks resolved,
    as the dataset's identity is)."""
    loc = resolve(path, options)
    if loc.is_local:
        loc = resolve(os.path.realpath(loc.path), loc.options)
    return loc


def list_data_files(dataset_dir: StoragePath) -> list[str]:
    """The data files of a dataset, sorted: every file under ``dataset_dir`` (hive partition
    directories included) whose own name and directories do not start with ``_`` or ``.``.
    A path to a file lists just that file."""
    return [loc.uri for loc in _data_files(resolve(dataset_dir))]


def _data_files(loc: Location) -> list[Location]:
    info = loc.info()
    if info.type == pafs.FileType.File:
        return [loc]
    if info.type == pafs.FileType.NotFound:
        raise ConfigurationError(f"no such dataset directory: {loc.uri}")
    return [entry.location for entry in loc.list_files()]


def _is_partition_dir(loc: Location) -> bool:
    return "=" in loc.name and not is_hidden(loc.name) and loc.parent.path != loc.path


def dataset_root_of(path: StoragePath) -> str:
    """The dataset root of any path inside a dataset: the nearest directory (the path itself
    if it is one) that is not a hive partition directory (``name=value``)."""
    return _root_of(resolve(path)).uri


def _root_of(loc: Location) -> Location:
    directory = loc if not loc.is_file() else loc.parent
    while _is_partition_dir(directory):
        directory = directory.parent
    return directory


def pending_commits(root: StoragePath) -> list[str]:
    """The write ids whose commit was decided but is not finished in the dataset at ``root``: their journal
    ``_spark_kms_staging/<write_id>/_COMMITTING`` is still there. While one is, the dataset's data files are
    a mix of the old and the new (a commit publishes files one by one; on object stores a copy each)."""
    staging = resolve(root).join(STAGING_DIR_NAME)
    return sorted(
        e.location.parent.name for e in staging.list_files(include_hidden=True)
        if e.location.name == COMMIT_JOURNAL_NAME and e.location.parent.parent.path == staging.path
    )


def _refuse_unfinished_commit(root: Location, prefix: str) -> None:
    unfinished = pending_commits(root)
    if unfinished:
        raise JobError(
            f"{prefix}dataset {root.uri!r}: write {unfinished[0]} is committing, or stopped while committing "
            f"({len(unfinished)} unfinished), so its files are a mix of old and new data and are not read. A "
            "running commit finishes on its own; an interrupted one is completed by the next write to the "
            "dataset through the spark_kms data source (any mode)"
        )


# -- footers ----------------------------------------------------------------------------


def open_parquet(path: StoragePath) -> pq.ParquetFile:
    """A Parquet file opened for reading; clear errors for a missing or unreadable file."""
    loc = resolve(path)
    try:
        return pq.ParquetFile(loc.open_input_file())
    except FileNotFoundError:
        raise ConfigurationError(f"no such file: {loc.uri}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {loc.uri} is not a readable Parquet file ({type(exc).__name__})") from None


def key_table_from_metadata(metadata: Mapping[bytes, bytes] | None, path: str) -> KeyTable:
    """The key table in a Parquet footer's key-value metadata (as pyarrow returns it)."""
    raw = (metadata or {}).get(_KEY)
    if raw is None:
        raise MissingKeyTableError(
            f"file {path} has no spark_kms key table in its Parquet footer (metadata key "
            f"{KEY_TABLE_METADATA_KEY!r}): it was not written by spark_kms, or its footer was rewritten"
        )
    return KeyTable.from_json(raw, where=f"file {path}")


def read_key_table(path: StoragePath) -> KeyTable:
    """The key table in the footer of one Parquet file, as stored (no manifest, no KMS call).

    :raises MissingKeyTableError: the footer has no key table (names the file).
    :raises FormatError: the key table is not valid (names the file and field).
    """
    return _read_footer(resolve(path))[0]


def _read_footer(loc: Location) -> tuple[KeyTable, list[str]]:
    """The footer's key table and the file's (top-level) column names."""
    table, names, _rows = _read_footer_rows(loc)
    return table, names


def _read_footer_rows(loc: Location) -> tuple[KeyTable, list[str], int]:
    """The footer's key table, the file's (top-level) column names and its number of rows."""
    try:
        with loc.open_input_file() as fh:
            meta = pq.read_metadata(fh)
        names = list(meta.schema.to_arrow_schema().names)
    except FileNotFoundError:
        raise ConfigurationError(f"no such file: {loc.uri}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {loc.uri} is not a readable Parquet file ({type(exc).__name__})") from None
    return key_table_from_metadata(meta.metadata, loc.uri), names, int(meta.num_rows)


#: footers read at once by :meth:`Dataset.open` (pyarrow releases the GIL; an object store answers in parallel)
FOOTER_READERS = 8


def _map_footers(files: Sequence[Location]) -> list[tuple[KeyTable, list[str], int] | MissingKeyTableError]:
    """:func:`_read_footer_rows` of each file, in order, ``FOOTER_READERS`` at a time; a file without a key
    table gives its MissingKeyTableError (the caller decides), any other error is raised."""

    def one(loc: Location) -> tuple[KeyTable, list[str], int] | MissingKeyTableError:
        try:
            return _read_footer_rows(loc)
        except MissingKeyTableError as exc:
            return exc

    if len(files) < 2:
        return [one(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(FOOTER_READERS, len(files)), thread_name_prefix="spark_kms-footer") as pool:
        return list(pool.map(one, files))


def _describe(spec: ColumnSpec) -> str:
    parts = [spec.algorithm, spec.arrow_type]
    if spec.source is not None:
        parts.append(f"source {spec.source}")
    if spec.row_binding is not None:
        parts.append(f"bound to {spec.row_binding}")
    return "/".join(parts)


def check_required_encryption(
    source: Dataset | KeyTable,
    required: Iterable[str] | Mapping[str, ColumnSpec],
    where: str = "",
    *,
    columns: Iterable[str] | None = None,
) -> None:
    """Refuse data in which a column that must be encrypted is not (or not as declared).

    :param source: a :class:`Dataset` (every file is checked against its own footer) or one file's key table.
    :param required: column names that must be encrypted (any algorithm), or a declaration's
        ``{name: ColumnSpec}`` whose specs must also match exactly.
    :param where: names the file (for a key table) in errors.
    :param columns: for a key table: the file's column names; a required column absent from them is not
        checked (it is not in that file). Default: every required column must be in the key table.
    :raises FormatError: a required column stored in plaintext, or described otherwise than declared
        (the message names the file and the column).
    """
    if isinstance(required, str):
        raise ConfigurationError(f"required columns must be a sequence of names, not a single string: {required!r}")
    if isinstance(source, Dataset):
        for file in source.files:
            check_required_encryption(
                source.footers[file], required, f"file {file}", columns=source.file_columns.get(file)
            )
        return
    if not isinstance(source, KeyTable):
        raise ConfigurationError(f"expected a Dataset or a KeyTable, got {type(source).__name__}")
    specs = dict(required) if isinstance(required, Mapping) else None
    present = None if columns is None else set(columns)
    at = f"{where}: " if where else ""
    for name in (specs or list(required)):
        if present is not None and name not in present:
            continue
        found = source.columns.get(name)
        if found is None:
            raise FormatError(
                f"{at}column {name!r} must be encrypted but is stored in plaintext (its key table has no spec for it)"
            )
        if specs is not None and found != specs[name]:
            raise FormatError(
                f"{at}column {name!r} is described by the key table as {_describe(found)}, but the dataset "
                f"declares it {_describe(specs[name])}"
            )


# -- the dataset ------------------------------------------------------------------------


class _FileRef:
    """Shapes a single file like a listing entry."""

    def __init__(self, location: Location) -> None:
        self.location = location


@dataclass
class Dataset:
    """A dataset's data files, each file's footer key table, and the manifest entries.

    :param root: the dataset root (holds the manifest): an absolute local path or a storage URI.
    :param files: the data files read, sorted, as absolute paths or URIs (all of the dataset's, or
        those under the path it was opened with).
    :param footers: the footer key table of each file, as stored.
    :param manifest: the manifest's DEK entries (see :func:`apply_manifest`).
    :param document: the parsed manifest (declaration, authentication), if there is one.
    :param file_columns: the column names of each file.
    :param required: column names the reader requires to be encrypted (``require_encrypted``).
    :param requested_min_format_version: the reader's ``min_format_version``.
    :param verified: whether an authenticated manifest was verified (:meth:`verify`).
    :param location: the root's :class:`~spark_kms.storage.Location` (filesystem and options).
    :param file_rows: the number of rows of each file, from the footer read by :meth:`open`.
    """

    root: str
    files: list[str]
    footers: dict[str, KeyTable]
    manifest: dict[str, DekEntry] = field(default_factory=dict)
    document: Manifest | None = None
    file_columns: dict[str, list[str]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    requested_min_format_version: int = 1
    verified: bool = False
    location: Location | None = None
    file_rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = str(self.root)
        if self.location is None:
            self.location = resolve(self.root)

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        job: str = "",
        missing_ok: bool = False,
        require_files: bool = True,
        kms_options: KmsConfigLike = None,
        require_encrypted: Iterable[str] | None = None,
        min_format_version: int = 1,
        storage_options: Mapping[str, str] | str | None = None,
    ) -> Dataset:
        """Read the footers and the manifest of the dataset at (or around) ``path``.

        :param path: the dataset root, a hive partition directory in it, or one data file: the
            files read are those under ``path``; the manifest is always the dataset root's. A local
            path or a storage URI (:mod:`spark_kms.storage`).
        :param job: named in errors (``"rewrap: ..."``).
        :param missing_ok: skip files without a key table (a dataset written by Spark's own
            Parquet writer, whose keys travel in a column) instead of raising.
        :param require_files: raise when there is no data file.
        :param kms_options: given, an authenticated manifest is verified now (:meth:`verify`); without
            it the key tables of such a dataset are not handed out (a reader must verify).
        :param require_encrypted: columns every file must store encrypted (refused otherwise), whatever
            the manifest says -- the guard against a deleted manifest.
        :param min_format_version: 2 refuses files whose key table is of version 1 (a strict reader).
        :param storage_options: options of the store (:data:`spark_kms.storage.OPTION_NAMES`).
        """
        prefix = f"{job}: " if job else ""
        if isinstance(min_format_version, bool) or min_format_version not in FORMAT_VERSIONS:
            raise ConfigurationError(
                f"{prefix}min_format_version must be one of {list(FORMAT_VERSIONS)}, got {min_format_version!r}"
            )
        if isinstance(require_encrypted, str):
            raise ConfigurationError(
                f"{prefix}require_encrypted must be a sequence of column names, not a single string: "
                f"{require_encrypted!r}"
            )
        try:
            loc = dataset_location(path, storage_options)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{prefix}{exc}") from None
        info = loc.info()
        if info.type == pafs.FileType.NotFound:
            raise ConfigurationError(f"{prefix}dataset {loc.uri!r} does not exist")
        files = [f.location for f in ([_FileRef(loc)] if info.type == pafs.FileType.File else loc.list_files())]
        if not files and require_files:
            raise ConfigurationError(f"{prefix}dataset {loc.uri!r} holds no data files")
        footers: dict[str, KeyTable] = {}
        names: dict[str, list[str]] = {}
        rows: dict[str, int] = {}
        for f, read in zip(files, _map_footers(files), strict=True):
            if isinstance(read, MissingKeyTableError):
                if not missing_ok:
                    raise read
                continue
            footers[f.uri], names[f.uri], rows[f.uri] = read
        root = _root_of(loc)
        _refuse_unfinished_commit(root, prefix)
        document = read_manifest_document(root)
        dataset = cls(
            root=root.uri, files=[f.uri for f in files if f.uri in footers], footers=footers,
            manifest=dict(document.deks) if document else {}, document=document, file_columns=names,
            required=tuple(require_encrypted or ()), requested_min_format_version=min_format_version,
            location=root, file_rows=rows,
        )
        dataset._check(dataset.required, min_format_version)
        if kms_options is not None and dataset.authenticated:
            dataset.verify(kms_options)
        logger.debug("dataset %s: %d data files, %d manifest entries", root, len(dataset.files), len(dataset.manifest))
        return dataset

    # -- integrity ---------------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        """Whether the manifest is authenticated (it then holds the dataset's declaration)."""
        return self.document is not None and self.document.authenticated

    @property
    def declaration(self) -> Declaration | None:
        """The dataset's declaration once verified; None if there is none (or it is not verified yet)."""
        return self.document.declaration if self.document is not None and self.verified else None

    @property
    def min_format_version(self) -> int:
        """The lowest key-table version readers accept: the reader's, or the declaration's if higher."""
        declared = self.declaration.min_format_version if self.declaration else 1
        return max(self.requested_min_format_version, declared)

    def verify(self, kms_options: KmsConfigLike) -> None:
        """Verify the authenticated manifest (:func:`verify_manifest`), then check every file against its
        declaration. A dataset without an authenticated manifest passes (nothing to verify)."""
        if self.document is None or not self.document.authenticated:
            return
        if not self.verified:
            verify_manifest(self.document, self.location, kms_options)  # type: ignore[arg-type]
            self.verified = True
        declaration = self.document.declaration
        if declaration is not None:
            self._check(declaration.columns, declaration.min_format_version)

    def _check(self, required: Iterable[str] | Mapping[str, ColumnSpec], min_format_version: int) -> None:
        for file in self.files:
            footer = self.footers[file]
            if footer.format_version < min_format_version:
                raise FormatError(
                    f"file {file} has key table format_version {footer.format_version}; the dataset's readers "
                    f"require {min_format_version} or later: re-encrypt the dataset to upgrade it"
                )
        if required:
            check_required_encryption(self, required)

    def _readable(self) -> None:
        if self.authenticated and not self.verified:
            raise ConfigurationError(
                f"dataset {str(self.root)!r} has an authenticated manifest (a declaration of its encrypted "
                "columns): open it with kms_options (Dataset.open(path, kms_options=...)) or call "
                "verify(kms_options) before reading it"
            )

    # -- files and keys ----------------------------------------------------------------

    def relpath(self, file: str) -> str:
        """A data file's path relative to the dataset root (``/``-separated)."""
        return self.file_location(file).relative_to(self.location)  # type: ignore[arg-type]

    def file_location(self, file: str) -> Location:
        """The :class:`~spark_kms.storage.Location` of one of this dataset's files (the root's options)."""
        return resolve(file, None).with_options(self.location.options)  # type: ignore[union-attr]

    def footer_deks(self) -> dict[str, DekEntry]:
        """Every DEK entry of every footer, by dek_id (first footer wins; they are equal by construction)."""
        out: dict[str, DekEntry] = {}
        for table in self.footers.values():
            for dek_id, entry in table.deks.items():
                out.setdefault(dek_id, entry)
        return out

    def effective_deks(self) -> dict[str, DekEntry]:
        """The entries a reader uses: footer entries, replaced by the manifest's with the same dek_id."""
        return {dek_id: self.manifest.get(dek_id, entry) for dek_id, entry in self.footer_deks().items()}

    def effective_table(self, file: str) -> KeyTable:
        """The key table a reader uses for ``file``: its footer with the manifest applied.

        :raises ConfigurationError: the manifest is authenticated and was not verified.
        """
        self._readable()
        return apply_manifest(self.footers[file], self.manifest)

    def key_table(self) -> KeyTable:
        """The key tables of all files merged, with the manifest applied.

        :raises FormatError: two files describe a DEK or a column differently.
        :raises ConfigurationError: the manifest is authenticated and was not verified.
        """
        self._readable()
        merged = KeyTable(deks={}, columns={})
        for file in self.files:
            merged = merged.merge(self.footers[file], where=f"dataset {self.root}")
        return apply_manifest(merged, self.manifest)

    def key_table_for(self, file: str, merged: KeyTable | None = None) -> KeyTable:
        """The merged key table (:meth:`key_table`, or ``merged``) as a reader of ``file`` uses it: the dataset's
        data keys and column specs -- a column encrypted in one file is encrypted in all -- with this file's
        format version and so its AAD rule (docs/FORMAT.md section 3)."""
        table = self.key_table() if merged is None else merged
        footer = self.footers[file]
        return KeyTable(deks=table.deks, columns=table.columns, format_version=footer.format_version,
                        writer=footer.writer, source_versions=footer.source_versions)

    def columns(self) -> dict[str, ColumnSpec]:
        out: dict[str, ColumnSpec] = {}
        for table in self.footers.values():
            for name, spec in table.columns.items():
                out.setdefault(name, spec)
        return out

    def files_of(self, dek_ids: Iterable[str]) -> list[str]:
        wanted = set(dek_ids)
        return [f for f in self.files if wanted & set(self.footers[f].deks)]

    def rows_of(self, files: Iterable[str]) -> int:
        """The rows of ``files`` (of this dataset), from the footers :meth:`open` read (no second read)."""
        total = 0
        for f in files:
            n = self.file_rows.get(f)
            if n is None:
                with self.file_location(f).open_input_file() as fh:
                    n = int(pq.read_metadata(fh).num_rows)
            total += n
        return total

    def write_manifest(
        self,
        entries: Mapping[str, DekEntry],
        *,
        kms_options: KmsConfigLike = None,
        declaration: Declaration | None = None,
        key_uri: str | None = None,
    ) -> None:
        """Replace this dataset's manifest (see :func:`write_manifest`) and keep ``manifest`` in step.

        An authenticated manifest stays authenticated (and keeps its declaration): pass ``kms_options``.
        """
        document = write_manifest(
            self.location, entries, kms_options=kms_options, declaration=declaration,
            key_uri=key_uri or self._default_key_uri(), _verified=self.verified,
        )
        self.manifest = dict(entries)
        self.document = document
        self.verified = document is not None and document.authenticated

    def declare(
        self,
        kms_options: KmsConfigLike,
        *,
        columns: Iterable[str] | None = None,
        key_uri: str | None = None,
        min_format_version: int | None = None,
        replace: bool = False,
    ) -> Declaration:
        """Declare the dataset's encrypted columns in an authenticated manifest (version 2).

        The declared specs are those of the footers as they are now (all encrypted columns, or the named
        ones): declare right after writing. An existing declaration is verified first, unless ``replace``
        (the way to re-declare a dataset that was moved: its old declaration names the old place).

        :param min_format_version: default the lowest key-table version among the files (2 once every
            file is of version 2, e.g. after re-encryption).
        :param key_uri: the KMS key of the manifest's MAC key (default: the current one, else the key of
            the dataset's data keys when there is exactly one).
        """
        if self.authenticated and not replace and not self.verified:
            self.verify(kms_options)
        specs = self._merged_columns()
        if columns is not None:
            if isinstance(columns, str):
                raise ConfigurationError(f"columns must be a sequence of names, not a single string: {columns!r}")
            wanted = list(columns)
            unknown = [c for c in wanted if c not in specs]
            if unknown:
                raise ConfigurationError(
                    f"dataset {str(self.root)!r}: columns {unknown} are not encrypted in any file; "
                    f"encrypted columns: {sorted(specs)}"
                )
            specs = {c: specs[c] for c in wanted}
        if min_format_version is None:
            min_format_version = min((t.format_version for t in self.footers.values()), default=max(FORMAT_VERSIONS))
        declaration = Declaration(columns=specs, min_format_version=min_format_version)
        document = write_manifest(
            self.location, self.manifest, kms_options=kms_options, declaration=declaration,
            key_uri=key_uri or self._default_key_uri(), _verified=self.verified or replace,
        )
        self.document = document
        self.verified = True
        self._check(declaration.columns, declaration.min_format_version)
        return declaration

    def _merged_columns(self) -> dict[str, ColumnSpec]:
        merged = KeyTable(deks={}, columns={})
        for file in self.files:
            merged = merged.merge(KeyTable(deks={}, columns=dict(self.footers[file].columns)),
                                  where=f"dataset {self.root}")
        return merged.columns

    def _default_key_uri(self) -> str | None:
        if self.document is not None and self.document.auth_key is not None:
            return self.document.auth_key.key_uri
        uris = {e.key_uri for e in self.effective_deks().values()}
        return uris.pop() if len(uris) == 1 else None


def declare_encryption(
    path: StoragePath,
    *,
    kms_options: KmsConfigLike,
    columns: Iterable[str] | None = None,
    key_uri: str | None = None,
    min_format_version: int | None = None,
    replace: bool = False,
) -> Declaration:
    """Declare the encrypted columns of the dataset at ``path`` (see :meth:`Dataset.declare`)."""
    dataset = Dataset.open(path, require_files=False)
    return dataset.declare(kms_options, columns=columns, key_uri=key_uri,
                           min_format_version=min_format_version, replace=replace)


def read_dataset_key_table(
    path: StoragePath, *, missing_ok: bool = False, kms_options: KmsConfigLike = None
) -> KeyTable:
    """The merged key table of the dataset at (or around) ``path``, manifest applied (no KMS call,
    except to verify an authenticated manifest, which needs ``kms_options``).

    :param missing_ok: skip files without a key table instead of raising MissingKeyTableError
        (for datasets written by Spark's own Parquet writer, whose keys travel in a column).
    :raises FormatError: a corrupt key table, or two files describing a DEK or column differently.
    """
    return Dataset.open(path, missing_ok=missing_ok, require_files=False, kms_options=kms_options).key_table()
