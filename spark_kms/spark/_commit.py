"""The commit protocol of the ``spark_kms`` data source, on the driver side: staging, the
commit journal, roll forward, roll back, recovery, and the readers' check for a commit in
progress (the protocol is described in :mod:`spark_kms.spark.datasource`, "Layout and
protocol", and per store in docs/ARCHITECTURE.md, "Commit protocol on object stores").

Layout under a dataset ``<path>`` (a local directory or an object-store prefix)::

    _spark_kms_staging/<write_id>/_STARTED     written by the driver when the write starts; tasks
                                               write only while it exists (abort deletes it)
    _spark_kms_staging/<write_id>/...          files the tasks of one write staged
    _spark_kms_staging/<write_id>/_COMMITTING  the journal: the commit was decided, every move listed
    _spark_kms_trash/<write_id>/...            old files an overwrite moved aside, until the commit ends

Every file operation goes through :mod:`spark_kms.storage` (a :class:`~spark_kms.storage.Location`):
a move is ``os.replace`` on a local disk and copy + delete on an object store, where the target
appears whole but both exist for a moment. The journal is one object PUT (local: temp file +
rename), so it appears whole or not at all. The journal lists paths *relative to the dataset*,
so a commit decided through ``s3://`` is completed through ``s3a://`` (the same objects).

Every step of :func:`roll_forward` and :func:`roll_back` first lists where each file is, so both
are idempotent: a commit interrupted anywhere -- also between the copy and the delete of an
object-store move -- is completed (or undone) by running them again. :func:`roll_forward`
refuses (JobError) if a file the journal moves is neither staged nor in place.

Readers: while a decided commit is being rolled forward, or after its driver died midway, the
dataset holds a mix of old and new files. :func:`pending_commits` names such commits;
the ``spark_kms`` reader (and :class:`~spark_kms.parquet.dataset.Dataset`) refuse to read then
(:func:`refuse_pending_commits`).

Abandoned writes (:func:`remove_abandoned_writes`, run at the start of every write through
:func:`recover_interrupted_commits`, and by ``spark-kms gc``). A write is *in progress* while
anything in its staging directory -- the ``_STARTED`` marker the driver writes when the write
starts, each file a task stages (its modification time: when the object was completed) -- was
modified within the grace period (:data:`DEFAULT_GRACE_S`); on local disks the directory's own
modification time counts too. A staging directory without a journal whose newest modification
is older than that is the leftover of a killed write: nothing of it was ever visible, and it is
removed. A staging directory *with* a journal is a decided commit: never removed here, it is
completed by the next write (:func:`recover_interrupted_commits`). A trash directory is removed
on the same age rule unless its write has a journal (a roll back may still need its files).
Committed data is never touched. The rule's limit: a write whose tasks complete no file for
longer than the grace period -- e.g. upstream stages that run longer than that before the first
task finishes a file -- looks abandoned; choose the grace period above that. Its commit then
fails cleanly (:func:`commit_staged` checks every staged file is still there before deciding),
leaving the previous data as it was.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from spark_kms.errors import ConfigurationError, JobError
from spark_kms.parquet.dataset import COMMIT_JOURNAL_NAME, MANIFEST_NAME, STAGING_DIR_NAME
from spark_kms.parquet.dataset import pending_commits as _dataset_pending_commits
from spark_kms.storage import Location, StoragePath, resolve

__all__ = [
    "DEFAULT_GRACE_S",
    "JOURNAL_NAME",
    "STAGING_DIR",
    "STARTED_NAME",
    "TRASH_DIR",
    "Leftover",
    "abort_staged",
    "commit_staged",
    "decide_commit",
    "final_name",
    "newest_mtime",
    "pending_commits",
    "recover_interrupted_commits",
    "refuse_pending_commits",
    "remove_abandoned_writes",
    "roll_back",
    "roll_forward",
    "staging_alive",
    "staging_dir",
    "staging_location",
    "start_staging",
]

logger = logging.getLogger(__name__)

STAGING_DIR = STAGING_DIR_NAME  # the names readers know too (spark_kms.parquet.dataset)
TRASH_DIR = "_spark_kms_trash"
JOURNAL_NAME = COMMIT_JOURNAL_NAME
STARTED_NAME = "_STARTED"
#: a staging or trash directory unmodified for this long (seconds) belongs to no live write
DEFAULT_GRACE_S = 6 * 3600.0
_JOURNAL_FORMAT = 2
_WHAT = "the spark_kms data source"
_MOVE_THREADS = 16  # object-store moves are two requests each: run them side by side


def _root(path: StoragePath, storage_options: Mapping[str, str] | str | None = None) -> Location:
    try:
        return resolve(path, storage_options)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{_WHAT}: {exc}") from None


def staging_location(path: StoragePath, write_id: str) -> Location:
    """Where the tasks of write ``write_id`` stage their files."""
    return _root(path).join(STAGING_DIR, write_id)


def staging_dir(path: StoragePath, write_id: str) -> str:
    """:func:`staging_location` as text (a local path or a URI)."""
    return staging_location(path, write_id).uri


def start_staging(path: StoragePath, write_id: str, *, mode: str) -> Location:
    """Open the staging of write ``write_id``: write its ``_STARTED`` marker (tasks stage files only
    while it exists). Returns the staging location."""
    stage = staging_location(path, write_id)
    stage.mkdirs()
    stage.join(STARTED_NAME).write_json_atomic(
        {"write_id": write_id, "mode": mode, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return stage


def staging_alive(stage: Location) -> bool:
    """Whether the write staging into ``stage`` still accepts files (not aborted, not finished)."""
    return stage.join(STARTED_NAME).is_file()


def final_name(staged_rel: str) -> str:
    """A staged file's path in the dataset: the attempt number only matters inside staging."""
    head, name = posixpath.split(staged_rel)
    stem = posixpath.splitext(name)[0].rsplit("-a", 1)[0]
    return posixpath.join(head, f"{stem}.parquet")


# -- commit ----------------------------------------------------------------------------------------


def commit_staged(path: StoragePath, write_id: str, staged: Sequence[str], *, overwrite: bool,
                  storage_options: Mapping[str, str] | str | None = None) -> list[str]:
    """Publish the staged files ``staged`` (relative to the write's staging dir) into ``path``:
    write the journal (the decision, :func:`decide_commit`), then roll forward. For ``overwrite``
    the dataset's data files and its manifest are moved aside first. Returns the final paths
    (URIs) of the files."""
    root = _root(path, storage_options)
    journal = decide_commit(root, write_id, staged, overwrite=overwrite)
    roll_forward(root, journal)
    return [root.join(dst).uri for _src, dst in journal["moves"]]


def decide_commit(path: StoragePath, write_id: str, staged: Sequence[str], *, overwrite: bool) -> dict[str, Any]:
    """Check every staged file is there, then write the journal: from here on the commit is decided
    (a failure rolls it back while the driver lives; a dead driver's is completed by the next write).
    Returns the journal."""
    root = _root(path)
    stage = root.join(STAGING_DIR, write_id)
    have = {e.location.relative_to(stage) for e in stage.list_files(include_hidden=True)}
    missing = [rel for rel in staged if rel not in have]
    if missing:
        # Before the decision: roll_forward would refuse a commit without them.
        raise JobError(
            f"dataset {root.uri}: write {write_id} cannot commit: {len(missing)} staged files are gone "
            f"(e.g. {missing[0]!r}); was its staging removed as abandoned while the write waited longer "
            "than the grace period? The previous data is untouched; run the write again"
        )
    old: list[str] = []
    if overwrite:
        old = [e.location.relative_to(root) for e in root.list_files()]
        if root.join(MANIFEST_NAME).is_file():
            old.append(MANIFEST_NAME)
    journal = {
        "format": _JOURNAL_FORMAT,
        "write_id": write_id,
        "mode": "overwrite" if overwrite else "append",
        "old": old,
        "moves": [[rel, final_name(rel)] for rel in staged],
    }
    stage.join(JOURNAL_NAME).write_json_atomic(journal)
    logger.info("commit of write %s to %s decided (%s): %d staged files in, %d old files aside",
                write_id, root.uri, journal["mode"], len(staged), len(old))
    return journal


def abort_staged(path: StoragePath, write_id: str, *, storage_options: Mapping[str, str] | str | None = None) -> None:
    """Drop write ``write_id``: roll back first if its journal shows a commit had begun, then
    delete its staging (its ``_STARTED`` marker first: straggling tasks stop). The previous data is
    untouched."""
    root = _root(path, storage_options)
    stage = root.join(STAGING_DIR, write_id)
    raw = stage.join(JOURNAL_NAME).read_bytes_or_none()
    if raw is not None:
        # The commit itself failed midway: put the old data back.
        logger.info("write %s of %s failed during its commit: rolling it back", write_id, root.uri)
        roll_back(root, _load_journal(raw, stage.join(JOURNAL_NAME)), write_id=write_id)
    stage.join(STARTED_NAME).delete_file()
    stage.delete_dir()
    root.join(STAGING_DIR).remove_dir_if_empty()
    logger.info("aborted write %s of %s: staging removed, previous data untouched", write_id, root.uri)


@dataclass(frozen=True)
class _Journal:
    write_id: str
    old: list[str]  # relative to the dataset
    moves: list[tuple[str, str]]  # (relative to the staging dir, relative to the dataset)


def _parse_journal(root: Location, journal: Mapping[str, Any], write_id: str | None) -> _Journal:
    wid = str(journal.get("write_id") or write_id or "")
    if not wid:
        raise JobError(f"dataset {root.uri}: a commit journal names no write")
    stage = root.join(STAGING_DIR, wid)

    def rel(p: str, base: Location) -> str:
        # Journals of spark_kms <= 0.2 hold absolute local paths.
        return posixpath.relpath(p, base.path) if posixpath.isabs(p) and root.is_local else p

    old = [rel(str(p), root) for p in journal.get("old") or ()]
    moves = [(rel(str(s), stage), rel(str(d), root)) for s, d in journal.get("moves") or ()]
    return _Journal(wid, old, moves)


def _load_journal(raw: bytes, where: Location) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise JobError(f"commit journal {where.uri} is not a JSON object: inspect it before removing it")
    return doc


def _present(root: Location) -> set[str]:
    """The paths of every file under ``root`` (hidden ones included): one listing."""
    return {e.location.path for e in root.list_files(include_hidden=True)}


def _move(pair: tuple[Location, Location]) -> None:
    src, dst = pair
    try:
        src.move_to(dst)
    except OSError:
        if dst.is_file() and not src.exists():
            return  # another process (a concurrent recovery) moved it meanwhile
        raise


def _each(root: Location, fn: Callable[[Any], None], items: Iterable[Any]) -> None:
    todo = list(items)
    if root.is_local or len(todo) < 2:
        for item in todo:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(_MOVE_THREADS, len(todo)), thread_name_prefix="spark_kms-commit") as ex:
        list(ex.map(fn, todo))  # re-raises the first failure


def roll_forward(path: StoragePath, journal: Mapping[str, Any], *, write_id: str | None = None) -> None:
    """Complete a decided commit. Idempotent: each step checks where each file is."""
    root = _root(path)
    j = _parse_journal(root, journal, write_id)
    stage, trash = root.join(STAGING_DIR, j.write_id), root.join(TRASH_DIR, j.write_id)
    present = _present(root)
    incoming = [(stage.join(s), root.join(d)) for s, d in j.moves]
    lost = [src.uri for src, dst in incoming if src.path not in present and dst.path not in present]
    if lost:
        raise JobError(
            f"dataset {root.uri}: the decided commit of write {j.write_id} cannot complete: {len(lost)} of its "
            f"files are neither staged nor in place (e.g. {lost[0]}); its journal "
            f"{stage.join(JOURNAL_NAME).uri} lists every move. Restore them, or remove the journal to give up"
        )
    _each(root, _move, [(root.join(r), trash.join(r)) for r in j.old if root.join(r).path in present])
    _each(root, _move, [(src, dst) for src, dst in incoming if src.path in present])
    # The dataset is complete: readers may read it again.
    stage.join(JOURNAL_NAME).delete_file()
    logger.debug("commit of write %s to %s complete", j.write_id, root.uri)
    try:
        trash.delete_dir()
        root.join(TRASH_DIR).remove_dir_if_empty()
        _remove_empty_dirs(root, [root.join(r).parent for r in j.old])
        stage.delete_dir()
        root.join(STAGING_DIR).remove_dir_if_empty()
    except OSError as exc:  # committed; what is left is hidden and goes with the next gc
        logger.warning("write %s to %s committed, but its staging or trash was not removed (%s); "
                       "the next write or spark-kms gc removes it", j.write_id, root.uri, type(exc).__name__)


def roll_back(path: StoragePath, journal: Mapping[str, Any], *, write_id: str | None = None) -> None:
    """Undo a commit that failed midway: new files back to staging, old files back in place."""
    root = _root(path)
    j = _parse_journal(root, journal, write_id)
    stage, trash = root.join(STAGING_DIR, j.write_id), root.join(TRASH_DIR, j.write_id)
    present = _present(root)
    back: list[tuple[Location, Location]] = []
    drop: list[Location] = []
    for s, d in j.moves:
        src, dst = stage.join(s), root.join(d)
        if dst.path in present and src.path in present:  # copied in, not yet deleted: the staged one is whole
            drop.append(dst)
        elif dst.path in present:
            back.append((dst, src))
    for r in j.old:
        parked, home = trash.join(r), root.join(r)
        if parked.path in present and home.path in present:
            drop.append(parked)
        elif parked.path in present:
            back.append((parked, home))
    _each(root, lambda loc: loc.delete_file(), drop)
    _each(root, _move, back)
    stage.join(JOURNAL_NAME).delete_file()
    trash.delete_dir()
    root.join(TRASH_DIR).remove_dir_if_empty()
    logger.info("commit of write %s to %s rolled back: %d files restored", j.write_id, root.uri, len(back))


def _remove_empty_dirs(root: Location, candidates: Sequence[Location]) -> None:
    """Remove now-empty hive partition dirs an overwrite emptied (deepest first; local disks only)."""
    if not root.is_local:
        return
    base = root.path.rstrip("/") + "/"
    for d in sorted({c.path: c for c in candidates}.values(), key=lambda c: len(c.path), reverse=True):
        while d.path.startswith(base):
            d.remove_dir_if_empty()
            if d.exists():
                break
            d = d.parent


# -- readers and recovery ---------------------------------------------------------------------------


def _staging_ids(root: Location) -> list[str]:
    return [d.name for d in root.join(STAGING_DIR).list_dirs()]


def pending_commits(location: StoragePath, storage_options: Mapping[str, str] | str | None = None) -> list[str]:
    """The write ids of the decided commits of the dataset rooted at ``location`` that are being
    rolled forward or were interrupted (a ``_spark_kms_staging/<id>/_COMMITTING`` journal exists):
    while there is one, the dataset may hold a mix of old and new files. Sorted; empty normally.
    One listing of the staging prefix; no KMS call. (The rule lives in
    :func:`spark_kms.parquet.dataset.pending_commits`, which :meth:`Dataset.open` applies too.)"""
    return _dataset_pending_commits(_root(location, storage_options))


def refuse_pending_commits(location: StoragePath, *, what: str = _WHAT) -> frozenset[str]:
    """Raise :class:`~spark_kms.errors.JobError` if a commit of the dataset rooted at ``location`` is
    in progress or was interrupted (:func:`pending_commits`). Returns the ids of the writes staging
    into it (a reader compares them before and after planning)."""
    root = _root(location)
    ids = _staging_ids(root)
    pending = pending_commits(root)
    if pending:
        raise JobError(
            f"{what}: dataset {root.uri} has a commit in progress or interrupted (write {pending[0]}; journal "
            f"{root.join(STAGING_DIR, pending[0], JOURNAL_NAME).uri}): its files are being moved into place, so "
            "reading now could return a mix of old and new data. A commit in progress ends in moments; an "
            "interrupted one is completed by the next write to the dataset or by "
            "spark_kms.spark.recover_interrupted_commits(path). Read again then"
        )
    return frozenset(ids)


def recover_interrupted_commits(path: StoragePath, *, grace_s: float = DEFAULT_GRACE_S,
                                storage_options: Mapping[str, str] | str | None = None) -> list[str]:
    """Finish every commit of ``path`` that a dead driver left half done (roll forward from its
    journal), then remove abandoned writes (:func:`remove_abandoned_writes`: staging without a
    journal unmodified for ``grace_s`` seconds). Returns the write ids completed. Staging of a
    write that may be in progress is left alone: nothing of it is visible anyway."""
    root = _root(path, storage_options)
    done: list[str] = []
    for write_id in pending_commits(root):
        journal_loc = root.join(STAGING_DIR, write_id, JOURNAL_NAME)
        raw = journal_loc.read_bytes_or_none()
        if raw is None:
            continue  # completed meanwhile by another writer
        logger.info("completing the interrupted commit of write %s to %s from its journal", write_id, root.uri)
        roll_forward(root, _load_journal(raw, journal_loc), write_id=write_id)
        done.append(write_id)
    remove_abandoned_writes(root, grace_s=grace_s)
    return done


# -- abandoned writes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """Something a write or a job left in a dataset, and what garbage collection did with it.

    :param path: absolute path or URI (a directory for staging and trash, a file for temp files).
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


def _own_mtime(loc: Location) -> float:
    info = loc.info()
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def newest_mtime(path: StoragePath) -> float:
    """The newest modification time of ``path`` and, for a directory (prefix), of every file under it
    (:attr:`spark_kms.storage.FileEntry.mtime`). 0.0 when it is gone."""
    loc = resolve(path)
    newest = _own_mtime(loc) if loc.exists() else 0.0
    for entry in loc.list_files(include_hidden=True):
        newest = max(newest, entry.mtime or 0.0)
    return newest


def remove_abandoned_writes(path: StoragePath, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
                            storage_options: Mapping[str, str] | str | None = None) -> list[Leftover]:
    """Remove the staging and trash directories of ``path`` that belong to no live write (the rule
    is in the module docstring); with ``dry_run``, only say what would go. Returns every staging and
    trash directory found, removed or kept, with the reason."""
    if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or grace_s < 0:
        raise ConfigurationError(f"the grace period is a non-negative number of seconds, got {grace_s!r}")
    root = _root(path, storage_options)
    now = time.time()
    decided = set(pending_commits(root))
    found: list[Leftover] = []
    for root_name, kind in ((STAGING_DIR, "staging"), (TRASH_DIR, "trash")):
        base = root.join(root_name)
        newest: dict[str, float] = {}
        for entry in base.list_files(include_hidden=True):  # one listing (all pages) for every write
            wid, sep, _rest = entry.location.relative_to(base).partition("/")
            if sep:
                newest[wid] = max(newest.get(wid, 0.0), entry.mtime or 0.0)
        for wid in sorted(set(newest) | {d.name for d in base.list_dirs()}):
            directory = base.join(wid)
            mtime = max(newest.get(wid, 0.0), _own_mtime(directory) if root.is_local else 0.0)
            found.append(_consider(directory, kind, wid in decided, max(0.0, now - mtime), grace_s, dry_run))
        if not dry_run:
            base.remove_dir_if_empty()
    return found


def _consider(directory: Location, kind: str, decided: bool, age: float, grace_s: float, dry_run: bool) -> Leftover:
    if decided:
        reason = ("its commit was decided: the next write completes it (recover_interrupted_commits)"
                  if kind == "staging" else "holds the old files of a decided commit")
        return Leftover(directory.uri, kind, age, False, False, reason)
    if age < grace_s:
        return Leftover(directory.uri, kind, age, False, False,
                        f"may belong to a write in progress (modified {age:.0f}s ago, grace {grace_s:.0f}s)")
    if dry_run:
        return Leftover(directory.uri, kind, age, True, False, f"abandoned: unmodified for {age:.0f}s")
    if kind == "staging" and directory.join(JOURNAL_NAME).is_file():  # decided since the listing
        return Leftover(directory.uri, kind, age, False, False,
                        "its commit was decided: the next write completes it (recover_interrupted_commits)")
    try:
        directory.delete_dir()
    except OSError as exc:
        return Leftover(directory.uri, kind, age, True, False,
                        f"abandoned, but could not be removed ({type(exc).__name__})")
    logger.info("removed the %s directory of an abandoned write: %s (unmodified for %.0fs)", kind, directory.uri, age)
    return Leftover(directory.uri, kind, age, True, True, f"abandoned: unmodified for {age:.0f}s")
