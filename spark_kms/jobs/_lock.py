"""One rotation job per dataset at a time.

Rewrap and re-encrypt both read-modify-write the manifest and (re-encrypt) the
data files; two of them at once on one dataset would lose each other's work.
The lock is an OS file lock (``filelock``) on ``<dataset>/_spark_kms_runs/.lock``:
the OS drops it when the holder dies, even by SIGKILL, so a killed job never
leaves a stale lock behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from spark_kms.errors import JobError
from spark_kms.jobs._summary import runs_dir

__all__ = ["dataset_lock"]


@contextmanager
def dataset_lock(dataset: str | Path, job: str, *, timeout: float = 0.0) -> Iterator[None]:
    directory = runs_dir(dataset)
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / ".lock"), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise JobError(
            f"{job}: another rotation job is running on dataset {str(dataset)!r} "
            f"(it holds {str(directory / '.lock')!r}); wait for it to finish, then run again"
        ) from None
    try:
        yield
    finally:
        lock.release()
