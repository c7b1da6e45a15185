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

Data files, the manifest, run records and journals (of finished, failed or abandoned runs,
kept for audit) are never touched. Everything it removes starts with ``_`` or ``.``, so no
reader ever saw it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_kms.errors import JobError
from spark_kms.jobs._common import require_dataset_dir
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs.reencrypt import TEMP_SUFFIX
from spark_kms.parquet.dataset import dataset_root_of
from spark_kms.spark._commit import (
    DEFAULT_GRACE_S,
    STAGING_DIR,
    TRASH_DIR,
    Leftover,
    newest_mtime,
    remove_abandoned_writes,
)

__all__ = ["DEFAULT_GRACE_S", "GcReport", "Leftover", "collect_garbage"]

logger = logging.getLogger(__name__)

# ``.<name>.<8 random chars of tempfile.mkstemp>.<tag>``: the temp files of _atomic.sibling_temp_path
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}(\.tmp|" + re.escape(TEMP_SUFFIX) + r")$")


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


def collect_garbage(path: str | os.PathLike[str], *, grace_s: float = DEFAULT_GRACE_S,
                    dry_run: bool = False) -> GcReport:
    """Remove what killed writes and jobs left in the dataset at ``path`` (the module docstring says what).

    :param path: the dataset root (or a directory inside it: its root is collected).
    :param grace_s: leave alone anything modified less than this many seconds ago (it may belong
        to a write or job in progress). Default: :data:`DEFAULT_GRACE_S` (6 hours).
    :param dry_run: remove nothing; report what would be removed.
    """
    root = Path(dataset_root_of(require_dataset_dir(path, "gc")))
    report = GcReport(dataset=str(root), dry_run=dry_run, grace_s=float(grace_s))
    report.leftovers.extend(remove_abandoned_writes(str(root), grace_s=grace_s, dry_run=dry_run))
    report.leftovers.extend(_temp_files(root, grace_s, dry_run))
    logger.info("gc of %s%s: %d of %d leftovers removed", root, " (dry run)" if dry_run else "",
                len(report.removed), len(report.leftovers))
    return report


def _temp_files(root: Path, grace_s: float, dry_run: bool) -> list[Leftover]:
    now = time.time()
    candidates: list[tuple[Path, float]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in (STAGING_DIR, TRASH_DIR))  # remove_abandoned_writes'
        for name in sorted(filenames):
            if _TEMP_FILE.match(name):
                temp = Path(dirpath) / name
                candidates.append((temp, max(0.0, now - newest_mtime(str(temp)))))
    found = [
        Leftover(str(p), "temp", age, False, False,
                 f"may belong to a job in progress (modified {age:.0f}s ago, grace {grace_s:.0f}s)")
        for p, age in candidates if age < grace_s
    ]
    old = [(p, age) for p, age in candidates if age >= grace_s]
    if not old:
        return found
    if dry_run:
        return found + [Leftover(str(p), "temp", age, True, False,
                                 f"abandoned: unmodified for {age:.0f}s (kept if a rotation job is running)")
                        for p, age in old]
    try:
        with dataset_lock(root, "gc"):
            removed = [_remove_temp(p, age) for p, age in old]
    except JobError:  # only taking the lock raises it: a rotation job is running and may own them
        return found + [Leftover(str(p), "temp", age, False, False, "a rotation job is running on the dataset")
                        for p, age in old]
    return found + removed


def _remove_temp(path: Path, age: float) -> Leftover:
    path.unlink(missing_ok=True)
    logger.info("removed the temp file of a killed job: %s (unmodified for %.0fs)", path, age)
    return Leftover(str(path), "temp", age, True, True, f"abandoned: unmodified for {age:.0f}s")
