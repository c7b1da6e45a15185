"""Checks shared by the dataset jobs."""

from __future__ import annotations

import os
from pathlib import Path

from spark_kms.errors import ConfigurationError
from spark_kms.parquet.dataset import dataset_path

__all__ = ["require_dataset_dir"]


def require_dataset_dir(path: str | os.PathLike[str], job: str) -> Path:
    """The dataset directory as an absolute path; a clear error when it is not one."""
    local = dataset_path(path, what=job)
    if not os.path.exists(local):
        raise ConfigurationError(f"{job}: dataset {local!r} does not exist")
    if not os.path.isdir(local):
        raise ConfigurationError(f"{job}: {local!r} is a file; {job} works on a dataset directory")
    return Path(local).resolve()
