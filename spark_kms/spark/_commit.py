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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from spark_kms._atomic import atomic_write_json
from spark_kms.parquet.dataset import MANIFEST_NAME, dataset_path, list_data_files

__all__ = [
    "JOURNAL_NAME",
    "STAGING_DIR",
    "TRASH_DIR",
    "abort_staged",
    "commit_staged",
    "recover_interrupted_commits",
    "staging_dir",
]

logger = logging.getLogger(__name__)

STAGING_DIR = "_spark_kms_staging"
TRASH_DIR = "_spark_kms_trash"
JOURNAL_NAME = "_COMMITTING"


def staging_dir(path: str, write_id: str) -> str:
    """Where the tasks of write ``write_id`` stage their files."""
    return os.path.join(path, STAGING_DIR, write_id)


def commit_staged(path: str, write_id: str, staged: Sequence[str], *, overwrite: bool) -> list[str]:
    """Publish the staged files ``staged`` (relative to the write's staging dir) into ``path``:
    write the journal (the decision), then roll forward. For ``overwrite`` the dataset's data
    files and its manifest are moved aside first. Returns the final paths of the files."""
    stage = staging_dir(path, write_id)
    moves = [(os.path.join(stage, rel), os.path.join(path, _final_name(rel))) for rel in staged]
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


def recover_interrupted_commits(path: str) -> list[str]:
    """Finish every commit of ``path`` that a dead driver left half done (roll forward from its
    journal). Returns the write ids completed. Staging dirs without a journal (a job still
    running, or one killed before commit) are left alone: nothing of theirs is visible."""
    path = dataset_path(path, what="the spark_kms data source")
    staging_root = os.path.join(path, STAGING_DIR)
    done: list[str] = []
    if not os.path.isdir(staging_root):
        return done
    for write_id in sorted(os.listdir(staging_root)):
        journal_path = os.path.join(staging_root, write_id, JOURNAL_NAME)
        if not os.path.isfile(journal_path):
            continue
        with open(journal_path, encoding="utf-8") as fh:
            journal = json.load(fh)
        logger.info("completing the interrupted commit of write %s to %s from its journal", write_id, path)
        roll_forward(path, journal)
        done.append(write_id)
    return done


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
