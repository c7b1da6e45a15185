"""Replace a whole output directory only once its new content is complete.

A job that writes a directory it does not own the format of (the plaintext Parquet, CSV or JSON
of :func:`spark_kms.jobs.decrypt_dataset`) writes into a *staging* directory beside the
destination, and swaps it in only after the write succeeded. A failed write deletes its staging:
the destination is left byte for byte as it was (Spark's own ``mode("overwrite")`` deletes the
destination first, so a failing job used to leave it empty).

Beside ``<parent>/<name>``, all hidden (``.``: Spark, pyarrow and spark_kms skip them)::

    .<name>.spark_kms-lock                  one job at a time per destination (an OS file lock)
    .<name>.spark_kms-staging-<token>/      the new content being written
    .<name>.spark_kms-replace.json          the journal: the swap was decided; staging, old
    .<name>.spark_kms-old-<token>/          the previous destination, until the swap ends

The swap: write the journal, rename the destination to ``old``, rename staging to the
destination, delete ``old``, delete the journal. Each step checks where things are, so running
it again finishes a swap that a killed process left half done (:func:`recover_replacement`, run
under the lock before every new job on the destination): the destination is missing only
between the two renames. Under the lock no other job writes this destination, so staging and
``old`` directories without a journal are a killed job's leftovers (possibly plaintext), and are
deleted. Local / POSIX file systems only (``os.rename``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from spark_kms._atomic import atomic_write_json, fsync_dir
from spark_kms.errors import JobError

__all__ = ["recover_replacement", "staged_replacement"]

logger = logging.getLogger(__name__)

_TAG = "spark_kms"


def _beside(destination: Path, what: str) -> Path:
    return destination.parent / f".{destination.name}.{_TAG}-{what}"


def _journal_path(destination: Path) -> Path:
    return _beside(destination, "replace.json")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def _roll_forward(destination: Path, journal: dict[str, Any]) -> None:
    staging, old = Path(journal["staging"]), Path(journal["old"])
    if _exists(staging):
        if _exists(destination):
            if _exists(old):
                raise JobError(
                    f"cannot finish replacing {str(destination)!r}: its previous content "
                    f"{str(old)!r} and its replacement {str(staging)!r} both exist beside it; "
                    "keep the one you want as the destination and delete the other and "
                    f"{str(_journal_path(destination))!r}"
                )
            os.rename(destination, old)
        os.rename(staging, destination)
        fsync_dir(destination.parent)
    elif not _exists(destination) and _exists(old):
        # Not a state the swap leaves behind (staging is renamed before old is deleted), but if
        # someone removed the new destination by hand, the previous content is the only copy.
        os.rename(old, destination)
    _remove(old)
    with contextlib.suppress(FileNotFoundError):
        _journal_path(destination).unlink()
    fsync_dir(destination.parent)


def recover_replacement(destination: str | os.PathLike[str]) -> bool:
    """Finish the swap into ``destination`` that a killed job left half done (the journal says
    the new content was complete). Returns whether there was one. Call it under the lock."""
    dst = Path(destination)
    journal_path = _journal_path(dst)
    try:
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except ValueError as exc:  # atomic_write_json never leaves a torn journal; someone edited it
        raise JobError(f"the replacement journal {str(journal_path)!r} is not JSON ({exc}); "
                       "check the destination and its hidden .spark_kms-* neighbours by hand") from None
    logger.info("finishing the interrupted replacement of %s from its journal", dst)
    _roll_forward(dst, journal)
    return True


def _remove_leftovers(destination: Path) -> None:
    """Staging and old directories of killed jobs (no journal names them: nothing decided)."""
    prefix = f".{destination.name}.{_TAG}-"
    for entry in destination.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name[len(prefix):].startswith(("staging-", "old-")):
            logger.info("removing %s, left by a job on %s that did not finish", entry, destination)
            _remove(entry)


@contextlib.contextmanager
def staged_replacement(destination: str | os.PathLike[str], job: str) -> Iterator[Path]:
    """Yield a fresh staging path beside ``destination`` (not created) to write the new content to.

    On normal exit the staging directory replaces ``destination`` (which may not exist yet); on an
    exception it is deleted and ``destination`` is untouched. One job per destination at a time:
    a second one fails at once with :class:`~spark_kms.errors.JobError`.
    """
    dst = Path(destination)
    dst.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_beside(dst, "lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise JobError(f"{job}: another job is writing {str(dst)!r} (it holds {str(_beside(dst, 'lock'))!r}); "
                       "wait for it to finish, then run again") from None
    try:
        recover_replacement(dst)
        _remove_leftovers(dst)
        token = secrets.token_hex(6)
        staging = _beside(dst, f"staging-{token}")
        try:
            yield staging
        except BaseException:
            with contextlib.suppress(OSError):
                _remove(staging)
            logger.info("%s into %s failed: staging removed, the destination is as it was", job, dst)
            raise
        if not staging.is_dir():
            raise JobError(f"{job}: the new content of {str(dst)!r} was not written (no {str(staging)!r})")
        journal = {"destination": str(dst), "staging": str(staging), "old": str(_beside(dst, f"old-{token}"))}
        atomic_write_json(_journal_path(dst), journal)
        _roll_forward(dst, journal)
        logger.info("%s: %s replaced with its new content", job, dst)
    finally:
        lock.release()
