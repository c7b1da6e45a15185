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

Reading all this makes no KMS call: footers and the manifest hold wrapped keys only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms._atomic import atomic_write_bytes
from spark_kms.crypto import (
    DATASET_MANIFEST_NAME,
    KEY_TABLE_METADATA_KEY,
    ColumnSpec,
    DekEntry,
    KeyTable,
    decode_manifest,
    encode_manifest,
)
from spark_kms.errors import ConfigurationError, FormatError, MissingKeyTableError

__all__ = [
    "MANIFEST_NAME",
    "Dataset",
    "apply_manifest",
    "dataset_path",
    "dataset_root_of",
    "is_hidden",
    "key_table_from_metadata",
    "list_data_files",
    "local_path",
    "open_parquet",
    "read_dataset_key_table",
    "read_key_table",
    "read_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
#: the dataset manifest's file name, in the dataset root
MANIFEST_NAME = DATASET_MANIFEST_NAME
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


def dataset_path(path: PathLike, *, what: str = "spark_kms") -> str:
    """The absolute local path of a dataset (or file) path; a clear error for a URI of another
    filesystem, which this release does not reach yet."""
    text = local_path(path)
    if "://" in text:
        raise ConfigurationError(f"{what} reads and writes local/POSIX paths only, got {os.fspath(path)!r}")
    return os.path.abspath(text)


def is_hidden(name: str) -> bool:
    """Whether a file or directory name is not data (``_`` or ``.`` prefix)."""
    return name.startswith(("_", "."))


def list_data_files(dataset_dir: PathLike) -> list[str]:
    """The data files of a dataset, sorted: every file under ``dataset_dir`` (hive partition
    directories included) whose own name and directories do not start with ``_`` or ``.``.
    A path to a file lists just that file."""
    root = local_path(dataset_dir)
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise ConfigurationError(f"no such dataset directory: {root}")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if not is_hidden(f))
    return sorted(found)


def _is_partition_dir(path: Path) -> bool:
    return "=" in path.name and not is_hidden(path.name) and path.parent != path


def dataset_root_of(path: PathLike) -> str:
    """The dataset root of any path inside a dataset: the nearest directory (the path itself
    if it is one) that is not a hive partition directory (``name=value``)."""
    p = Path(local_path(path))
    directory = p if p.is_dir() else p.parent
    while _is_partition_dir(directory):
        directory = directory.parent
    return str(directory)


# -- footers ----------------------------------------------------------------------------


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file opened for reading; clear errors for a missing or unreadable file."""
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise ConfigurationError(f"no such file: {path}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {path} is not a readable Parquet file ({type(exc).__name__})") from None


def key_table_from_metadata(metadata: Mapping[bytes, bytes] | None, path: str) -> KeyTable:
    """The key table in a Parquet footer's key-value metadata (as pyarrow returns it)."""
    raw = (metadata or {}).get(_KEY)
    if raw is None:
        raise MissingKeyTableError(
            f"file {path} has no spark_kms key table in its Parquet footer (metadata key "
            f"{KEY_TABLE_METADATA_KEY!r}): it was not written by spark_kms, or its footer was rewritten"
        )
    return KeyTable.from_json(raw, where=f"file {path}")


def read_key_table(path: PathLike) -> KeyTable:
    """The key table in the footer of one Parquet file, as stored (no manifest, no KMS call).

    :raises MissingKeyTableError: the footer has no key table (names the file).
    :raises FormatError: the key table is not valid (names the file and field).
    """
    local = local_path(path)
    try:
        metadata = pq.read_metadata(local).metadata
    except FileNotFoundError:
        raise ConfigurationError(f"no such file: {local}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FormatError(f"file {local} is not a readable Parquet file ({type(exc).__name__})") from None
    return key_table_from_metadata(metadata, local)


# -- manifest ---------------------------------------------------------------------------


def manifest_path(dataset_root: PathLike) -> str:
    return os.path.join(local_path(dataset_root), MANIFEST_NAME)


def read_manifest(dataset_root: PathLike) -> dict[str, DekEntry]:
    """The DEK entries of the manifest in ``dataset_root``; empty if there is none."""
    path = manifest_path(dataset_root)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return {}
    return dict(decode_manifest(data, where=f"manifest {path}"))


def write_manifest(dataset_root: PathLike, entries: Mapping[str, DekEntry]) -> None:
    """Replace the manifest atomically (temp + fsync + rename), or remove it when empty."""
    path = Path(manifest_path(dataset_root))
    if not entries:
        path.unlink(missing_ok=True)
        logger.info("removed the manifest of %s", dataset_root)
        return
    atomic_write_bytes(path, encode_manifest(dict(sorted(entries.items()))))
    logger.info("wrote the manifest of %s: %d data key entries", dataset_root, len(entries))


def apply_manifest(table: KeyTable, manifest: Mapping[str, DekEntry]) -> KeyTable:
    """The manifest precedence rule: ``table`` with each DEK entry the manifest also holds
    replaced by the manifest's; manifest entries ``table`` does not reference are ignored."""
    overrides = {dek_id: entry for dek_id, entry in manifest.items() if dek_id in table.deks}
    return table.with_overrides(overrides) if overrides else table


# -- the dataset ------------------------------------------------------------------------


@dataclass
class Dataset:
    """A dataset's data files, each file's footer key table, and the manifest entries.

    :param root: the dataset root (absolute; holds the manifest).
    :param files: the data files read, sorted, as absolute paths (all of the dataset's, or
        those under the path it was opened with).
    :param footers: the footer key table of each file, as stored.
    :param manifest: the manifest's DEK entries (see :func:`apply_manifest`).
    """

    root: Path
    files: list[str]
    footers: dict[str, KeyTable]
    manifest: dict[str, DekEntry] = field(default_factory=dict)

    @classmethod
    def open(cls, path: PathLike, *, job: str = "", missing_ok: bool = False, require_files: bool = True) -> Dataset:
        """Read the footers and the manifest of the dataset at (or around) ``path``.

        :param path: the dataset root, a hive partition directory in it, or one data file: the
            files read are those under ``path``; the manifest is always the dataset root's.
        :param job: named in errors (``"rewrap: ..."``).
        :param missing_ok: skip files without a key table (a dataset written by Spark's own
            Parquet writer, whose keys travel in a column) instead of raising.
        :param require_files: raise when there is no data file.
        """
        prefix = f"{job}: " if job else ""
        local = dataset_path(path, what=job or "spark_kms")
        if not os.path.exists(local):
            raise ConfigurationError(f"{prefix}dataset {local!r} does not exist")
        files = sorted(str(Path(f).resolve()) for f in list_data_files(local))
        if not files and require_files:
            raise ConfigurationError(f"{prefix}dataset {local!r} holds no data files")
        footers: dict[str, KeyTable] = {}
        for f in files:
            try:
                footers[f] = read_key_table(f)
            except MissingKeyTableError:
                if not missing_ok:
                    raise
        root = Path(dataset_root_of(local)).resolve()
        dataset = cls(root=root, files=[f for f in files if f in footers], footers=footers,
                      manifest=read_manifest(root))
        logger.debug("dataset %s: %d data files, %d manifest entries", root, len(dataset.files), len(dataset.manifest))
        return dataset

    def relpath(self, file: str) -> str:
        return str(Path(file).relative_to(self.root))

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
        """The key table a reader uses for ``file``: its footer with the manifest applied."""
        return apply_manifest(self.footers[file], self.manifest)

    def key_table(self) -> KeyTable:
        """The key tables of all files merged, with the manifest applied.

        :raises FormatError: two files describe a DEK or a column differently.
        """
        merged = KeyTable(deks={}, columns={})
        for file in self.files:
            merged = merged.merge(self.footers[file], where=f"dataset {self.root}")
        return apply_manifest(merged, self.manifest)

    def columns(self) -> dict[str, ColumnSpec]:
        out: dict[str, ColumnSpec] = {}
        for table in self.footers.values():
            for name, spec in table.columns.items():
                out.setdefault(name, spec)
        return out

    def files_of(self, dek_ids: Iterable[str]) -> list[str]:
        wanted = set(dek_ids)
        return [f for f in self.files if wanted & set(self.footers[f].deks)]

    def write_manifest(self, entries: Mapping[str, DekEntry]) -> None:
        """Replace this dataset's manifest (see :func:`write_manifest`) and keep ``manifest`` in step."""
        write_manifest(self.root, entries)
        self.manifest = dict(entries)


def read_dataset_key_table(path: PathLike, *, missing_ok: bool = False) -> KeyTable:
    """The merged key table of the dataset at (or around) ``path``, manifest applied (no KMS call).

    :param missing_ok: skip files without a key table instead of raising MissingKeyTableError
        (for datasets written by Spark's own Parquet writer, whose keys travel in a column).
    :raises FormatError: a corrupt key table, or two files describing a DEK or column differently.
    """
    return Dataset.open(path, missing_ok=missing_ok, require_files=False).key_table()
