"""The commit protocol of the ``spark_kms`` data source, on the driver side: staging, the
commit journal, roll forward, roll back, recovery (the protocol is described in
:mod:`spark_kms.spark.datasource`, "Layout and protocol").

Layout under a dataset ``<path>``::

    _spark_kms_staging/<write_id>/...          files the tasks of one write staged
    _spark_kms_staging/<write_id>/_COMMITTING  the journal: the commit was decided, every move listed
    _spark_kms_trash/<write_id>/...            old files an overwrite moved aside, until the commit ends

Every step of :func:`roll_forward` and :func:`roll_back` checks where each file is, so both
are idempotent: a commit interrupted anywhere is completed (or undone) by running them again.
Only local / POSIX file systems are supported (``os.replace``).

Abandoned writes (:func:`remove_abandoned_writes`, run at the start of every write through
:func:`recover_interrupted_commits`, and by ``spark-kms gc``). A write is *in progress* while
anything in its staging directory -- the directory the driver creates when the write starts,
each file and hive directory a task creates, each file a task writes into -- was modified
within the grace period (:data:`DEFAULT_GRACE_S`). A staging directory without a journal whose
newest modification is older than that is the leftover of a killed write: nothing of it was
ever visible, and it is removed. A staging directory *with* a journal is a decided commit:
never removed here, it is completed by the next write (:func:`recover_interrupted_commits`).
A trash directory is removed on the same age rule unless its write has a journal (a roll
back may still need its files). Committed data is never touched. The rule's limit: a write
whose tasks modify nothing for longer than the grace period -- e.g. upstream stages that run
longer than that before the first task writes -- looks abandoned; choose the grace period
above that. Its commit then fails cleanly (:func:`commit_staged` checks every staged file
is still there before deciding), leaving the previous data as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from spark_kms._atomic import atomic_write_json
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.parquet.dataset import MANIFEST_NAME, dataset_path, list_data_files

__all__ = [
    "DEFAULT_GRACE_S",
    "JOURNAL_NAME",
    "STAGING_DIR",
    "TRASH_DIR",
    "Leftover",
    "abort_staged",
    "commit_staged",
    "newest_mtime",
    "recover_interrupted_commits",
    "remove_abandoned_writes",
    "staging_dir",
]

logger = logging.getLogger(__name__)

STAGING_DIR = "_spark_kms_staging"
TRASH_DIR = "_spark_kms_trash"
JOURNAL_NAME = "_COMMITTING"
#: a staging or trash directory unmodified for this long (seconds) belongs to no live write
DEFAULT_GRACE_S = 6 * 3600.0


def staging_dir(path: str, write_id: str) -> str:
    """Where the tasks of write ``write_id`` stage their files."""
    return os.path.join(path, STAGING_DIR, write_id)


def commit_staged(path: str, write_id: str, staged: Sequence[str], *, overwrite: bool) -> list[str]:
    """Publish the staged files ``staged`` (relative to the write's staging dir) into ``path``:
    write the journal (the decision), then roll forward. For ``overwrite`` the dataset's data
    files and its manifest are moved aside first. Returns the final paths of the files."""
    stage = staging_dir(path, write_id)
    moves = [(os.path.join(stage, rel), os.path.join(path, _final_name(rel))) for rel in staged]
    missing = [rel for rel, (src, _) in zip(staged, moves, strict=True) if not os.path.isfile(src)]
    if missing:
        # Before the decision: roll_forward skips files it does not find (idempotence), so a
        # commit without them would publish an incomplete write.
        raise JobError(
            f"dataset {path}: write {write_id} cannot commit: {len(missing)} staged files are gone "
            f"(e.g. {missing[0]!r}); was its staging removed as abandoned while the write waited longer "
            "than the grace period? The previous data is untouched; run the write again"
        )
    old = _existing_data_files(path) if overwrite else []
    journal = {
        "write_id": write_id,
        "mode": "overwrite" if overwrite else "append",
        "trash": os.path.join(path, TRASH_DIR, write_id),
        "old": old,
        "moves": moves,
    }
    os.makedirs(stage, exist_ok=True)
    atomic_write_json(os.path.join(stage, JOURNAL_NAME), journal)
    logger.info("commit of write %s to %s decided (%s): %d staged files in, %d old files aside",
                write_id, path, journal["mode"], len(moves), len(old))
    roll_forward(path, journal)
    return [dst for _, dst in moves]


def abort_staged(path: str, write_id: str) -> None:
    """Drop write ``write_id``: roll back first if its journal shows a commit had begun, then
    delete its staging. The previous data is untouched."""
    journal_path = os.path.join(staging_dir(path, write_id), JOURNAL_NAME)
    if os.path.exists(journal_path):
        # The commit itself failed midway: put the old data back.
        with open(journal_path, encoding="utf-8") as fh:
            journal = json.load(fh)
        logger.info("write %s of %s failed during its commit: rolling it back", write_id, path)
        roll_back(path, journal)
    shutil.rmtree(staging_dir(path, write_id), ignore_errors=True)
    _remove_if_empty(os.path.join(path, STAGING_DIR))
    logger.info("aborted write %s of %s: staging removed, previous data untouched", write_id, path)


def recover_interrupted_commits(path: str, *, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """Finish every commit of ``path`` that a dead driver left half done (roll forward from its
    journal), then remove abandoned writes (:func:`remove_abandoned_writes`: staging without a
    journal unmodified for ``grace_s`` seconds). Returns the write ids completed. Staging of a
    write that may be in progress is left alone: nothing of it is visible anyway."""
    path = dataset_path(path, what="the spark_kms data source")
    staging_root = os.path.join(path, STAGING_DIR)
    done: list[str] = []
    if os.path.isdir(staging_root):
        for write_id in sorted(os.listdir(staging_root)):
            journal_path = os.path.join(staging_root, write_id, JOURNAL_NAME)
            if not os.path.isfile(journal_path):
                continue
            with open(journal_path, encoding="utf-8") as fh:
                journal = json.load(fh)
            logger.info("completing the interrupted commit of write %s to %s from its journal", write_id, path)
            roll_forward(path, journal)
            done.append(write_id)
    remove_abandoned_writes(path, grace_s=grace_s)
    return done


@dataclass(frozen=True)
class Leftover:
    """Something a write or a job left in a dataset, and what garbage collection did with it.

    :param path: absolute path (a directory for staging and trash, a file for temp files).
    :param kind: ``staging``, ``trash`` or ``temp``.
    :param age_s: seconds since the newest modification of anything in it.
    :param abandoned: it belongs to no live write or job: removed, or would be in a dry run.
    :param removed: whether it was removed (always false in a dry run).
    :param reason: why it was (or would be) removed, or kept.
    """

    path: str
    kind: str
    age_s: float
    abandoned: bool
    removed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_mtime(path: str) -> float:
    """The newest modification time of ``path`` and, for a directory, of everything under it
    (symlinks not followed). 0.0 when it is gone."""
    try:
        newest = os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def remove_abandoned_writes(path: str, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False) -> list[Leftover]:
    """Remove the staging and trash directories of ``path`` that belong to no live write (the rule
    is in the module docstring); with ``dry_run``, only say what would go. Returns every staging and
    trash directory found, removed or kept, with the reason."""
    if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or grace_s < 0:
        raise ConfigurationError(f"the grace period is a non-negative number of seconds, got {grace_s!r}")
    path = dataset_path(path, what="the spark_kms data source")
    staging_root = os.path.join(path, STAGING_DIR)
    now = time.time()
    found: list[Leftover] = []

    def consider(directory: str, kind: str, decided: bool) -> None:
        age = max(0.0, now - newest_mtime(directory))
        if decided:
            reason = ("its commit was decided: the next write completes it (recover_interrupted_commits)"
                      if kind == "staging" else "holds the old files of a decided commit")
            found.append(Leftover(directory, kind, age, False, False, reason))
        elif age < grace_s:
            found.append(Leftover(directory, kind, age, False, False,
                                  f"may belong to a write in progress (modified {age:.0f}s ago, grace {grace_s:.0f}s)"))
        elif dry_run:
            found.append(Leftover(directory, kind, age, True, False, f"abandoned: unmodified for {age:.0f}s"))
        else:
            try:
                shutil.rmtree(directory)
            except OSError as exc:
                found.append(Leftover(directory, kind, age, True, False,
                                      f"abandoned, but could not be removed ({type(exc).__name__})"))
                return
            logger.info("removed the %s directory of an abandoned write of %s: %s (unmodified for %.0fs)",
                        kind, path, directory, age)
            found.append(Leftover(directory, kind, age, True, True, f"abandoned: unmodified for {age:.0f}s"))

    for root_name, kind in ((STAGING_DIR, "staging"), (TRASH_DIR, "trash")):
        root = os.path.join(path, root_name)
        if not os.path.isdir(root):
            continue
        for write_id in sorted(os.listdir(root)):
            directory = os.path.join(root, write_id)
            if os.path.isdir(directory) and not os.path.islink(directory):
                consider(directory, kind, os.path.isfile(os.path.join(staging_root, write_id, JOURNAL_NAME)))
        if not dry_run:
            _remove_if_empty(root)
    return found


def roll_forward(path: str, journal: Mapping[str, Any]) -> None:
    """Complete a decided commit. Idempotent: each step checks where each file is."""
    trash = journal["trash"]
    for old in journal["old"]:
        if os.path.exists(old):
            dst = os.path.join(trash, os.path.relpath(old, path))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(old, dst)
    for src, dst in journal["moves"]:
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(trash, ignore_errors=True)
    _remove_if_empty(os.path.join(path, TRASH_DIR))
    _remove_empty_dirs(path, [os.path.dirname(o) for o in journal["old"]])
    # Removing staging (journal included) is the last step: the commit is then complete.
    shutil.rmtree(staging_dir(path, journal["write_id"]), ignore_errors=True)
    _remove_if_empty(os.path.join(path, STAGING_DIR))
    logger.debug("commit of write %s to %s complete", journal["write_id"], path)


def roll_back(path: str, journal: Mapping[str, Any]) -> None:
    """Undo a commit that failed midway: new files back to staging, old files back in place."""
    trash = journal["trash"]
    for src, dst in journal["moves"]:
        if os.path.exists(dst) and not os.path.exists(src):
            os.makedirs(os.path.dirname(src), exist_ok=True)
            os.replace(dst, src)
    for old in journal["old"]:
        parked = os.path.join(trash, os.path.relpath(old, path))
        if os.path.exists(parked) and not os.path.exists(old):
            os.makedirs(os.path.dirname(old), exist_ok=True)
            os.replace(parked, old)
    shutil.rmtree(trash, ignore_errors=True)
    _remove_if_empty(os.path.join(path, TRASH_DIR))
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(staging_dir(path, journal["write_id"]), JOURNAL_NAME))


def _final_name(staged_rel: str) -> str:
    head, name = os.path.split(staged_rel)
    stem, _ext = os.path.splitext(name)
    stem = stem.rsplit("-a", 1)[0]  # the attempt number only matters inside staging
    return os.path.join(head, f"{stem}.parquet")


def _existing_data_files(path: str) -> list[str]:
    """What an overwrite replaces: the dataset's data files and its manifest."""
    if not os.path.isdir(path):
        return []
    out = list_data_files(path)
    manifest = os.path.join(path, MANIFEST_NAME)
    if os.path.exists(manifest):
        out.append(manifest)
    return out


def _remove_if_empty(directory: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _remove_empty_dirs(root: str, candidates: Sequence[str]) -> None:
    """Remove now-empty hive partition dirs an overwrite emptied (deepest first)."""
    root = os.path.abspath(root)
    for d in sorted(set(candidates), key=len, reverse=True):
        d = os.path.abspath(d)
        while d != root and d.startswith(root + os.sep):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)
