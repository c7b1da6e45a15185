"""Checks and file helpers shared by the dataset jobs.

Every file the jobs touch is reached through :mod:`spark_kms.storage` (a :class:`Location`):
local paths and ``s3://``/``s3a://``, ``gs://``, ``abfs[s]://``, ``hdfs://`` URIs alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import pyarrow.parquet as pq

from spark_kms._atomic import replace_atomically
from spark_kms.errors import ConfigurationError
from spark_kms.parquet.dataset import dataset_location, dataset_root_of
from spark_kms.storage import SECRET_OPTIONS, Location, StoragePath

__all__ = [
    "StorageOptions", "dataset_root", "file_rows", "locate", "publish_file", "require_dataset", "require_dataset_dir",
    "storage_secrets", "temp_sibling",
]

#: what a job's ``storage_options=`` takes: a mapping, its JSON text, or nothing
StorageOptions = Mapping[str, str] | str | None


def locate(path: StoragePath, job: str, storage_options: StorageOptions = None) -> Location:
    """The :class:`Location` of a path or URI (local: absolute, symlinks resolved); errors name ``job``."""
    try:
        return dataset_location(path, storage_options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{job}: {exc}") from None


def require_dataset(path: StoragePath, job: str, storage_options: StorageOptions = None) -> Location:
    """The dataset directory (a local directory, or an object-store prefix holding objects); a clear
    error when there is nothing there or it is one file."""
    loc = locate(path, job, storage_options)
    if loc.is_dir():
        return loc
    if loc.is_file():
        raise ConfigurationError(f"{job}: {loc.uri!r} is a file; {job} works on a dataset directory")
    raise ConfigurationError(f"{job}: dataset {loc.uri!r} does not exist")


def dataset_root(location: Location) -> Location:
    """The dataset root of a directory inside a dataset (a hive partition directory: its parents'),
    with ``location``'s storage options."""
    return locate(dataset_root_of(location), "spark_kms", location.options)


def require_dataset_dir(path: StoragePath, job: str, storage_options: StorageOptions = None) -> Location:
    """:func:`require_dataset` (the name earlier versions had)."""
    return require_dataset(path, job, storage_options)


def storage_secrets(location: Location) -> list[str]:
    """The secret storage option values of ``location`` (to mask in records and messages)."""
    return [v for k, v in location.options.items() if k in SECRET_OPTIONS and v]


def temp_sibling(target: Location, tag: str) -> Location:
    """A fresh hidden sibling ``.<name>.<8 random hex>.<tag>`` of ``target`` (never listed as data;
    ``spark-kms gc`` recognises the pattern)."""
    return target.parent.join(f".{target.name}.{secrets.token_hex(4)}.{tag}")


def publish_file(temp: Location, target: Location) -> None:
    """Put the complete file ``temp`` in place of ``target`` so that a reader sees the whole old or the
    whole new file.

    Local disks: fsync, ``os.replace`` (atomic), fsync of the directory. Object stores: one server-side
    copy (the object under ``target``'s key is replaced whole when the copy completes; until then the
    old object is what readers get), then ``temp`` is deleted. A process killed between the two leaves
    ``temp`` behind: hidden, removed by the next rotation job and by ``spark-kms gc``.
    """
    if temp.is_local:
        replace_atomically(temp.path, target.path)
        return
    temp.copy_to(target)
    temp.delete_file()


def file_rows(location: Location) -> int:
    """The number of rows of a Parquet file, from its footer."""
    with location.open_input_file() as fh:
        return int(pq.read_metadata(fh).num_rows)
