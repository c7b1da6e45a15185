"""Replace a whole output directory only once its new content is complete.

A job that writes a directory it does not own the format of (the plaintext Parquet, CSV or JSON
of :func:`spark_kms.jobs.decrypt_dataset`) writes into a *staging* directory beside the
destination, and swaps it in only after the write succeeded. A failed write deletes its staging:
the destination is left byte for byte as it was (Spark's own ``mode("overwrite")`` deletes the
destination first, so a failing job used to leave it empty).

Beside ``<parent>/<name>``, all hidden (``.``: Spark, pyarrow and spark_kms skip them)::

    .<name>.spark_kms-lock                  one job at a time per destination (spark_kms.storage.lock)
    .<name>.spark_kms-staging-<token>/      the new content being written
    .<name>.spark_kms-replace.json          the journal: the swap was decided; staging, old
    .<name>.spark_kms-old-<token>/          the previous destination, until the swap ends

Under the lock no other job writes this destination, so staging and ``old`` directories without
a journal are a killed job's leftovers (possibly plaintext), and are deleted before every new
job; a journal left by a killed job is finished first (:func:`recover_replacement`). Both are
idempotent: each step checks where things are.

**Local disks** (directory renames are atomic): write the journal, rename the destination to
``old``, rename staging to the destination, delete ``old``, delete the journal. A reader sees the
old directory or the new one; the destination is missing only between the two renames.

**Object stores** (``s3://``, ``gs://``, ``abfs[s]://``: a "directory" is a key prefix, and
nothing renames a prefix; rename = copy + delete, object by object). The journal lists the
destination's objects at decision time (``previous``) and the staged ones (``new``), and a
``phase`` rewritten as each phase ends:

1. ``park``: each previous object is copied under ``old`` and deleted from the destination
   (Spark's ``_SUCCESS`` marker first);
2. ``publish``: each staged object is copied (server-side) into the destination (``_SUCCESS``
   last);
3. ``clean``: ``old`` and staging are deleted, then the journal -- last.

What a reader sees meanwhile: before the journal, the old content; during ``park``, a shrinking
subset of the old objects; between the phases, nothing; during ``publish``, a growing subset of
the new objects; never a mix of old and new objects, never a partial object (each copy appears
whole), and ``_SUCCESS`` only while the destination is complete. A reader that must not see a
partial destination waits for ``_SUCCESS`` (as Spark pipelines do) or does not read during the
swap. A swap killed midway is finished by the next job on the destination (or
:func:`recover_replacement`): every object is then in the destination or still in staging/old.
The lock is a leased lock object (:func:`spark_kms.storage.lock`; the lease:
:func:`spark_kms.jobs._lock.lease_seconds`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from spark_kms._atomic import fsync_dir
from spark_kms.errors import JobError
from spark_kms.jobs._lock import lease_seconds
from spark_kms.storage import FileEntry, Location, LockTimeout, StoragePath, lock, resolve

__all__ = ["recover_replacement", "staged_replacement"]

logger = logging.getLogger(__name__)

_TAG = "spark_kms"
#: Spark's commit markers: parked first, published last (a reader waiting for them sees a whole destination)
_MARKERS = frozenset({"_SUCCESS"})


def _beside(destination: Location, what: str) -> Location:
    return destination.parent.join(f".{destination.name}.{_TAG}-{what}")


def _journal_location(destination: Location) -> Location:
    return _beside(destination, "replace.json")


def _at(base: Location, rel: str) -> Location:
    return base.join(rel) if rel else base


def _sync(directory: Location) -> None:
    if directory.is_local:
        fsync_dir(directory.path)


# -- local disks: directory renames ------------------------------------------------------------


def _roll_forward_local(destination: Location, journal: Mapping[str, Any]) -> None:
    staging, old = resolve(journal["staging"]), resolve(journal["old"])
    if staging.exists():
        if destination.exists():
            if old.exists():
                raise JobError(
                    f"cannot finish replacing {destination.uri!r}: its previous content "
                    f"{old.uri!r} and its replacement {staging.uri!r} both exist beside it; "
                    "keep the one you want as the destination and delete the other and "
                    f"{_journal_location(destination).uri!r}"
                )
            destination.move_to(old)
        staging.move_to(destination)
        _sync(destination.parent)
    elif not destination.exists() and old.exists():
        # Not a state the swap leaves behind (staging is renamed before old is deleted), but if
        # someone removed the new destination by hand, the previous content is the only copy.
        old.move_to(destination)
    _remove(old)
    _journal_location(destination).delete_file()
    _sync(destination.parent)


def _remove(location: Location) -> None:
    if location.is_dir():
        location.delete_dir()  # a symlink to a directory: the link only
    else:
        location.delete_file()


# -- object stores: copies, in three journaled phases --------------------------------------------


def _markers_first(rels: list[str]) -> list[str]:
    return sorted(rels, key=lambda r: (r.rsplit("/", 1)[-1] not in _MARKERS, r))


def _roll_forward_objects(destination: Location, journal: dict[str, Any]) -> None:
    staging, old = resolve(journal["staging"], destination.options), resolve(journal["old"], destination.options)
    where = _journal_location(destination)
    if journal.get("phase") == "park":
        present = {"" if e.location.path == destination.path else e.location.relative_to(destination)
                   for e in _objects(destination)}
        for rel in _markers_first([r for r in journal["previous"] if r in present]):
            _at(destination, rel).copy_to(_at(old, rel))
            _at(destination, rel).delete_file()
        journal["phase"] = "publish"
        where.write_json_atomic(journal)
    if journal.get("phase") == "publish":
        staged = {e.location.relative_to(staging) for e in staging.list_files(include_hidden=True)}
        for rel in reversed(_markers_first(list(journal["new"]))):
            if rel in staged:
                _at(staging, rel).copy_to(_at(destination, rel))
            elif not _at(destination, rel).is_file():
                raise JobError(
                    f"cannot finish replacing {destination.uri!r}: the new object {rel!r} is neither in "
                    f"{staging.uri!r} nor in the destination (was the staging removed by hand?). The previous "
                    f"content is parked in {old.uri!r}; restore it, then delete {where.uri!r}"
                )
        journal["phase"] = "clean"
        where.write_json_atomic(journal)
    old.delete_dir()
    old.delete_file()  # a destination that was a single object was parked as one
    staging.delete_dir()
    where.delete_file()  # last: the swap is complete


def _objects(location: Location) -> list[FileEntry]:
    """Every object under ``location`` (hidden ones too), or the object itself if it is one."""
    entries = location.list_files(include_hidden=True)
    if not entries and location.is_file():
        return [FileEntry(location, location.size(), None)]
    return entries


# -- both ------------------------------------------------------------------------------------------


def recover_replacement(destination: StoragePath, *, storage_options: Mapping[str, str] | str | None = None) -> bool:
    """Finish the swap into ``destination`` that a killed job left half done (the journal says
    the new content was complete). Returns whether there was one. Call it under the lock."""
    dst = resolve(destination, storage_options)
    where = _journal_location(dst)
    raw = where.read_bytes_or_none()
    if raw is None:
        return False
    try:
        journal = json.loads(raw)
    except ValueError as exc:  # written whole (temp + rename, or one PUT): someone edited it
        raise JobError(f"the replacement journal {where.uri!r} is not JSON ({exc}); "
                       "check the destination and its hidden .spark_kms-* neighbours by hand") from None
    logger.info("finishing the interrupted replacement of %s from its journal", dst.uri)
    if dst.is_local:
        _roll_forward_local(dst, journal)
    else:
        _roll_forward_objects(dst, journal)
    return True


def _remove_leftovers(destination: Location) -> None:
    """Staging and old directories of killed jobs (no journal names them: nothing decided)."""
    prefix = f".{destination.name}.{_TAG}-"
    for entry in destination.parent.list_dirs():
        if entry.name.startswith(prefix) and entry.name[len(prefix):].startswith(("staging-", "old-")):
            logger.info("removing %s, left by a job on %s that did not finish", entry.uri, destination.uri)
            entry.delete_dir()


@contextlib.contextmanager
def staged_replacement(
    destination: StoragePath, job: str, *, storage_options: Mapping[str, str] | str | None = None
) -> Iterator[Any]:
    """Yield a fresh staging location beside ``destination`` (not created) to write the new content to:
    a :class:`pathlib.Path` for a local destination, a :class:`~spark_kms.storage.Location` on an
    object store (its ``uri`` is what to hand to Spark).

    On normal exit the staging directory replaces ``destination`` (which may not exist yet); on an
    exception it is deleted and ``destination`` is untouched. One job per destination at a time:
    a second one fails at once with :class:`~spark_kms.errors.JobError`.
    """
    dst = resolve(destination, storage_options)
    holder = _beside(dst, "lock")
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(lock(holder, timeout=0, lease_s=lease_seconds()))
        except LockTimeout:
            raise JobError(f"{job}: another job is writing {dst.uri!r} (it holds {holder.uri!r}); "
                           "wait for it to finish, then run again") from None
        recover_replacement(dst)
        _remove_leftovers(dst)
        token = secrets.token_hex(6)
        staging = _beside(dst, f"staging-{token}")
        try:
            yield Path(staging.path) if staging.is_local else staging
        except BaseException:
            with contextlib.suppress(OSError):
                staging.delete_dir()
            logger.info("%s into %s failed: staging removed, the destination is as it was", job, dst.uri)
            raise
        if not staging.is_dir():
            raise JobError(f"{job}: the new content of {dst.uri!r} was not written (no {staging.uri!r})")
        old = _beside(dst, f"old-{token}")
        if dst.is_local:
            journal: dict[str, Any] = {"destination": dst.path, "staging": staging.path, "old": old.path}
            _journal_location(dst).write_json_atomic(journal)
            _roll_forward_local(dst, journal)
        else:
            previous = ["" if e.location.path == dst.path else e.location.relative_to(dst) for e in _objects(dst)]
            new = [e.location.relative_to(staging) for e in staging.list_files(include_hidden=True)]
            journal = {"destination": dst.uri, "staging": staging.uri, "old": old.uri, "phase": "park",
                       "previous": previous, "new": new}
            _journal_location(dst).write_json_atomic(journal)
            _roll_forward_objects(dst, journal)
        logger.info("%s: %s replaced with its new content", job, dst.uri)
