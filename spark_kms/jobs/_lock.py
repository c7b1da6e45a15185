"""One rotation job per dataset at a time.

Rewrap and re-encrypt both read-modify-write the manifest and (re-encrypt) the data files; two
of them at once on one dataset would lose each other's work. The lock is
:func:`spark_kms.storage.lock` on ``<dataset>/_spark_kms_runs/.lock``:

* **local disks**: an OS file lock (``filelock``). The OS drops it when the holder dies, even by
  SIGKILL, so a killed job never leaves a stale lock behind.
* **object stores**: a lock object, created only if absent (atomic on S3: a conditional PUT), that
  names its holder and carries a lease the holder renews while it runs. A killed holder renews
  nothing: its lock is taken over once the lease ran out -- :data:`spark_kms.storage.DEFAULT_LEASE_S`
  seconds by default; the environment variable ``SPARK_KMS_LOCK_LEASE_S`` (:data:`LEASE_ENV`) or
  ``lease_s=`` set it, e.g. short in tests. So after a killed rotation job on an object store,
  the next one waits for the lease to run out (or fails at once with ``timeout=0``, saying who
  holds the lock); ``SPARK_KMS_LOCK_TIMEOUT_S`` makes every job wait that long for the lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from spark_kms._env import seconds_from_env
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.jobs._common import StorageOptions, locate
from spark_kms.jobs._summary import RUNS_DIR_NAME
from spark_kms.storage import DEFAULT_LEASE_S, Location, LockTimeout, StoragePath, lock

__all__ = ["LEASE_ENV", "TIMEOUT_ENV", "dataset_lock", "lease_seconds", "lock_location", "timeout_seconds"]

#: environment variable: the lease (seconds) of a rotation lock on an object store
LEASE_ENV = "SPARK_KMS_LOCK_LEASE_S"
#: environment variable: how long (seconds) a job waits for the rotation lock (default: not at all)
TIMEOUT_ENV = "SPARK_KMS_LOCK_TIMEOUT_S"
LOCK_NAME = ".lock"


def lease_seconds() -> float:
    """The lease of a lock on an object store: ``$SPARK_KMS_LOCK_LEASE_S``, else
    :data:`~spark_kms.storage.DEFAULT_LEASE_S`."""
    lease = seconds_from_env(LEASE_ENV, DEFAULT_LEASE_S)
    if lease <= 0:
        raise ConfigurationError(f"${LEASE_ENV} must be positive, got {lease!r}")
    return lease


def timeout_seconds() -> float:
    """How long a job waits for a lock: ``$SPARK_KMS_LOCK_TIMEOUT_S``, else 0 (not at all)."""
    return seconds_from_env(TIMEOUT_ENV, 0.0)


def lock_location(dataset: Location) -> Location:
    """``<dataset>/_spark_kms_runs/.lock``."""
    return dataset.join(RUNS_DIR_NAME, LOCK_NAME)


@contextmanager
def dataset_lock(
    dataset: StoragePath,
    job: str,
    *,
    timeout: float | None = None,
    lease_s: float | None = None,
    storage_options: StorageOptions = None,
) -> Iterator[None]:
    """Hold the rotation lock of ``dataset`` for the ``with`` block.

    :param timeout: seconds to wait for the lock (default ``$SPARK_KMS_LOCK_TIMEOUT_S``, else 0).
    :param lease_s: the lease on an object store (default ``$SPARK_KMS_LOCK_LEASE_S``, else
        :data:`~spark_kms.storage.DEFAULT_LEASE_S`).
    :raises JobError: another rotation job holds it ("another rotation job is running").
    """
    root = locate(dataset, job, storage_options)
    where = lock_location(root)
    wait = timeout_seconds() if timeout is None else float(timeout)
    lease = lease_seconds() if lease_s is None else float(lease_s)
    if lease <= 0:
        raise ConfigurationError(f"the lock lease must be positive, got {lease!r}")
    with ExitStack() as stack:
        try:
            stack.enter_context(lock(where, timeout=wait, lease_s=lease))
        except LockTimeout as exc:
            holder = f", held by {exc.holder}" if exc.holder else ""
            raise JobError(
                f"{job}: another rotation job is running on dataset {root.uri!r} "
                f"(it holds {where.uri!r}{holder}); wait for it to finish, then run again"
            ) from None
        yield
