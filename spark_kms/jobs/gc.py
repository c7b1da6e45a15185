"""Garbage collection of a dataset: what killed writes and jobs left behind, removed on demand.

:func:`collect_garbage` (``spark-kms gc DATASET [--dry-run] [--grace SECONDS]``) removes

* the staging and trash directories of abandoned Spark writes -- the rule, and why it never
  touches a write in progress or a decided commit, is :mod:`spark_kms.spark._commit`'s
  (:func:`~spark_kms.spark._commit.remove_abandoned_writes`, which every write also runs when
  it starts);
* hidden temp files of killed jobs: re-encrypt's ``.<file>.<random>.reencrypt`` next to the
  data files and the ``.<name>.<random>.tmp`` of an atomic write (manifest, journal, run
  record) -- those unmodified for the grace period, and only while no rotation job holds the
  dataset's lock (a running re-encrypt owns its temp file).

A Delta or Iceberg table is refused (its clean-up is its own vacuum / snapshot expiry:
:func:`spark_kms.tables.vacuum_table`, ``spark-kms vacuum``).

Data files, the manifest, run records and journals (of finished, failed or abandoned runs,
kept for audit) are never touched. Everything it removes starts with ``_`` or ``.``, so no
reader ever saw it.

**Object stores** (``s3://``, ``gs://``, ``abfs://``...): the same rules, with a directory's age
being its newest object's modification time (:attr:`~spark_kms.storage.FileEntry.mtime`, S3's
``LastModified``) and listings paged by the store's client (any number of objects). An object
being uploaded is invisible until its upload completes, so a multipart upload that a
killed job never completed is not listed at all: a bucket lifecycle rule
(``AbortIncompleteMultipartUpload``) removes those.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from spark_kms.errors import ConfigurationError, JobError
from spark_kms.jobs._common import StorageOptions, dataset_root, require_dataset
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._tables import table_format
from spark_kms.jobs.reencrypt import TEMP_SUFFIX
from spark_kms.spark._commit import (
    DEFAULT_GRACE_S,
    STAGING_DIR,
    TRASH_DIR,
    Leftover,
    remove_abandoned_writes,
)
from spark_kms.storage import FileEntry, Location, StoragePath

__all__ = ["DEFAULT_GRACE_S", "GcReport", "Leftover", "collect_garbage"]

logger = logging.getLogger(__name__)

# ``.<name>.<8 random chars>.<tag>``: the temp files of _atomic.sibling_temp_path (tempfile.mkstemp) and of
# jobs._common.temp_sibling (8 hex); ``.<name>.<12 hex>.tmp``: spark_kms.storage.temp_name
_TEMP_FILE = re.compile(r"^\..+\.([a-z0-9_]{8}|[0-9a-f]{12})(\.tmp|" + re.escape(TEMP_SUFFIX) + r")$")


@dataclass
class GcReport:
    """What :func:`collect_garbage` found.

    :param dataset: the dataset root.
    :param dry_run: nothing was removed; ``leftovers`` says what would have been.
    :param grace_s: the grace period, in seconds.
    :param leftovers: every staging and trash directory and temp file found, removed or kept.
    """

    dataset: str
    dry_run: bool
    grace_s: float
    leftovers: list[Leftover] = field(default_factory=list)

    @property
    def removed(self) -> list[Leftover]:
        return [x for x in self.leftovers if x.removed]

    @property
    def abandoned(self) -> list[Leftover]:
        """What belongs to no live write or job: removed, or (dry run) would be."""
        return [x for x in self.leftovers if x.abandoned]

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "dry_run": self.dry_run, "grace_s": self.grace_s,
                "leftovers": [x.to_dict() for x in self.leftovers]}


def collect_garbage(path: StoragePath, *, grace_s: float = DEFAULT_GRACE_S,
                    dry_run: bool = False, spark: Any = None, storage_options: StorageOptions = None) -> GcReport:
    """Remove what killed writes and jobs left in the dataset at ``path`` (the module docstring says what).

    :param path: the dataset root (or a directory inside it: its root is collected).
    :param grace_s: leave alone anything modified less than this many seconds ago (it may belong
        to a write or job in progress). Default: :data:`DEFAULT_GRACE_S` (6 hours).
    :param dry_run: remove nothing; report what would be removed.
    :param spark: a Spark Connect session: collect on its server side, where the data is (default,
        or a classic session: here).
    :param storage_options: options of the store (:data:`spark_kms.storage.OPTION_NAMES`), when
        ``path`` is a storage URI (``s3://``...).
    """
    from spark_kms.spark.remote import is_connect, run_near_data

    if is_connect(spark):
        return run_near_data(spark, collect_garbage, path, grace_s=grace_s, dry_run=dry_run,
                             storage_options=storage_options)
    if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or grace_s < 0:
        raise ConfigurationError(f"the grace period is a non-negative number of seconds, got {grace_s!r}")
    _refuse_table(path, storage_options)
    root = dataset_root(require_dataset(path, "gc", storage_options))
    report = GcReport(dataset=root.uri, dry_run=dry_run, grace_s=float(grace_s))
    report.leftovers.extend(remove_abandoned_writes(root, grace_s=grace_s, dry_run=dry_run))
    report.leftovers.extend(_temp_files(root, grace_s, dry_run))
    logger.info("gc of %s%s: %d of %d leftovers removed", root, " (dry run)" if dry_run else "",
                len(report.removed), len(report.leftovers))
    return report


def _refuse_table(path: StoragePath, storage_options: StorageOptions) -> None:
    """A Delta or Iceberg table is cleaned by its own vacuum / snapshot expiry, never by gc: what the
    table's log no longer references is the table's to delete (and gc's rules know nothing of it)."""
    if not table_format(path, storage_options):
        return
    from spark_kms import tables

    try:
        tables.refuse_table(path, "gc", storage_options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc}; on the command line: spark-kms vacuum TABLE --retention-hours H") from None
    raise ConfigurationError(  # refuse_table found nothing where detect_table did: never clean it anyway
        f"gc: {path} is a table: use spark_kms.tables.vacuum_table (spark-kms vacuum TABLE --retention-hours H)")


def _age(entry: FileEntry, now: float) -> float:
    # A store that reports no modification time: treat the object as fresh (kept), never as old.
    return max(0.0, now - (entry.mtime if entry.mtime is not None else now))


def _temp_files(root: Location, grace_s: float, dry_run: bool) -> list[Leftover]:
    now = time.time()
    candidates: list[tuple[Location, float]] = []
    for entry in root.list_files(include_hidden=True):
        if entry.location.relative_to(root).split("/", 1)[0] in (STAGING_DIR, TRASH_DIR):
            continue  # remove_abandoned_writes'
        if _TEMP_FILE.match(entry.location.name):
            candidates.append((entry.location, _age(entry, now)))
    found = [
        Leftover(p.uri, "temp", age, False, False,
                 f"may belong to a job in progress (modified {age:.0f}s ago, grace {grace_s:.0f}s)")
        for p, age in candidates if age < grace_s
    ]
    old = [(p, age) for p, age in candidates if age >= grace_s]
    if not old:
        return found
    if dry_run:
        return found + [Leftover(p.uri, "temp", age, True, False,
                                 f"abandoned: unmodified for {age:.0f}s (kept if a rotation job is running)")
                        for p, age in old]
    try:
        with dataset_lock(root, "gc"):
            removed = [_remove_temp(p, age) for p, age in old]
    except JobError:  # only taking the lock raises it: a rotation job is running and may own them
        return found + [Leftover(p.uri, "temp", age, False, False, "a rotation job is running on the dataset")
                        for p, age in old]
    return found + removed


def _remove_temp(path: Location, age: float) -> Leftover:
    path.delete_file()
    logger.info("removed the temp file of a killed job: %s (unmodified for %.0fs)", path.uri, age)
    return Leftover(path.uri, "temp", age, True, True, f"abandoned: unmodified for {age:.0f}s")
