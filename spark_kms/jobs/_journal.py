"""The journal of a re-encrypt run, and which run a request continues (see
:mod:`spark_kms.jobs.reencrypt`, "Resumable" and "Which run a request continues").

The journal is ``<dataset>/_spark_kms_runs/<run_id>.state.json``, replaced whole on every change
(:meth:`~spark_kms.storage.Location.write_json_atomic`: temp + fsync + rename on a local disk, one
PUT on an object store), so a reader -- the next run -- sees the previous state or the new one,
never a torn one.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spark_kms.errors import ConfigurationError, JobError, SparkKmsError
from spark_kms.jobs._summary import runs_dir, validate_run_id
from spark_kms.kms import KmsConfig
from spark_kms.kms.registry import parse_key_uri
from spark_kms.parquet.dataset import Dataset
from spark_kms.storage import Location, StoragePath, resolve

__all__ = [
    "JOURNAL_SUFFIX",
    "choose_run",
    "journal_location",
    "journal_path",
    "load_journal",
    "pending_runs",
    "requester",
    "set_status",
    "target_options",
    "target_uri",
    "write_journal",
]

#: a journal's name: ``<run_id>.state.json``
JOURNAL_SUFFIX = ".state.json"
#: options that do not say which key a URI names: who asks, and per-call plumbing
_NOT_LOCATION_OPTIONS = frozenset({"principal", "request_tag", "request_interceptor"})


def journal_location(dataset: StoragePath, run_id: str) -> Location:
    """Where run ``run_id`` of ``dataset`` keeps its journal (pass a Location to keep its options)."""
    return runs_dir(dataset).join(f"{run_id}{JOURNAL_SUFFIX}")


def journal_path(dataset: StoragePath, run_id: str) -> Path | Location:
    """The journal of run ``run_id``: a :class:`pathlib.Path` for a local dataset (as in earlier
    versions), a :class:`~spark_kms.storage.Location` on an object store (see :func:`journal_location`)."""
    where = journal_location(dataset, run_id)
    return Path(where.path) if where.is_local else where


def write_journal(dataset: Location, journal: Mapping[str, Any]) -> None:
    journal_location(dataset, journal["run_id"]).write_json_atomic(journal)


def set_status(dataset: Location, journal: dict[str, Any], status: str, **facts: Any) -> None:
    journal.update(status=status, **facts)
    write_journal(dataset, journal)


def load_journal(path: Location) -> dict[str, Any] | None:
    """The journal at ``path``; None when there is none.

    :raises JobError: it is not a re-encrypt journal (it was edited by hand).
    """
    try:
        raw = path.read_bytes_or_none()
        if raw is None:
            return None
        journal = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise JobError(
            f"reencrypt: journal {path.uri!r} is unreadable ({type(exc).__name__}); "
            "it is written atomically, so it was edited by hand: restore or remove it"
        ) from None
    if (not isinstance(journal, dict) or not isinstance(journal.get("files"), dict) or "run_id" not in journal
            or "target_key_uri" not in journal):
        raise JobError(f"reencrypt: journal {path.uri!r} is not a re-encrypt journal")
    return journal


def target_options(kms: KmsConfig, key_uri: str) -> dict[str, Any]:
    """The options of ``key_uri``'s scheme that say *where* its key lives (a keystore, a region, an
    endpoint...): the public options (secrets dropped) without who asks (``principal``) and per-call
    plumbing (``request_tag``, ``request_interceptor``, ``_``-prefixed test seams). A journal records
    them; a pending run is resumed only by a request with equal ones, so ``local://alias/pii`` of
    another keystore is another target."""
    scheme, _ = parse_key_uri(key_uri)
    out: dict[str, Any] = {}
    for name, value in sorted(kms.public_options().get(scheme, {}).items()):
        if name in _NOT_LOCATION_OPTIONS or name.startswith("_"):
            continue
        try:
            out[name] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue  # not data (a callable...): cannot say where a key lives
    return out


def pending_runs(dataset: StoragePath, *, storage_options: Mapping[str, str] | str | None = None
                 ) -> list[dict[str, Any]]:
    """The journals of unfinished re-encrypt runs of ``dataset`` (status ``running``), oldest first."""
    found = []
    for entry in runs_dir(resolve(dataset, storage_options)).list_files(recursive=False):
        if not entry.location.name.endswith(JOURNAL_SUFFIX):
            continue
        journal = load_journal(entry.location)
        if journal is not None and journal.get("job") == "reencrypt" and journal.get("status") == "running":
            found.append(journal)
    return sorted(found, key=lambda j: (str(j.get("started_at", "")), j["run_id"]))


def target_uri(keys: Dataset, key_uri: str | None) -> str:
    """The target of a new run: ``key_uri``, else the one key all the dataset's DEKs are under."""
    if key_uri:
        return key_uri
    uris = sorted({e.key_uri for e in keys.effective_deks().values()})
    if len(uris) != 1:
        raise ConfigurationError(
            f"reencrypt: the DEKs of {str(keys.root)!r} are wrapped by {len(uris)} keys {uris}; "
            "name the target key with key_uri= (--key-uri)"
        )
    return uris[0]


def requester(kms: KmsConfig, key_uri: str) -> dict[str, str]:
    """Who asks: the KMS principal where the provider names one (the local KMS: its ``principal``
    option, else ``$SPARK_KMS_PRINCIPAL``, else the OS user), and the OS user. Other KMSs
    authenticate through their SDK's credentials, which we do not ask about: the OS user stands in."""
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        os_user = f"uid:{os.getuid()}"
    try:
        principal = getattr(kms.provider(key_uri), "principal", None)
    except SparkKmsError:
        principal = None
    return {"principal": str(principal or os_user), "os_user": os_user}


# --------------------------------------------------------------------------- which run


def choose_run(
    dataset: Location, run_id: str | None, key_uri: str | None, force: bool, kms: KmsConfig
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(journal to resume or None for a new run, pending journals the run supersedes)``; raises
    when a pending run is in the way (module docstring, "Which run a request continues")."""
    if run_id is not None:
        journal = load_journal(journal_location(dataset, validate_run_id(run_id)))
        if journal is not None:
            _check_named_run(dataset, journal, key_uri, force)
            return journal, []
    pending = pending_runs(dataset)
    if not pending:
        return None, []
    target = _requested_target(dataset, key_uri)
    for journal in pending:
        mismatch = _mismatch(journal, target, force, kms)
        if mismatch:
            raise _pending_run_error(dataset, journal, mismatch)
    if run_id is not None:
        return None, pending  # a new run of the same target: it replaces the pending one
    *older, latest = pending
    return latest, older


def _check_named_run(dataset: Location, journal: dict[str, Any], key_uri: str | None, force: bool) -> None:
    run_id, status = journal["run_id"], journal.get("status")
    if status == "succeeded":
        return
    if status != "running":
        raise ConfigurationError(
            f"reencrypt: run {run_id} of {dataset.uri!r} was {status} and cannot be resumed; "
            "start a new run (another run id, or none)"
        )
    conflict = ""
    if key_uri and key_uri != journal["target_key_uri"]:
        conflict = f"it targets {journal['target_key_uri']}, not {key_uri}: resume it without --key-uri"
    elif force and not journal.get("force", False):
        conflict = "it was planned without force: resume it without --force"
    if conflict:
        raise ConfigurationError(
            f"reencrypt: run {run_id} of {dataset.uri!r} cannot be resumed by this request: {conflict}, "
            f"or give it up with --abandon {run_id} (abandon={run_id!r}) and start a new run"
        )


def _requested_target(dataset: Location, key_uri: str | None) -> str | None:
    """The target key URI a new run would have; None when the default cannot be computed (the
    dataset's DEKs are under several keys -- e.g. because a pending run moved some files)."""
    if key_uri:
        return key_uri
    try:
        return target_uri(Dataset.open(dataset, job="reencrypt"), None)
    except ConfigurationError:
        return None


def _mismatch(journal: Mapping[str, Any], target: str | None, force: bool, kms: KmsConfig) -> str:
    """Why a request may not resume ``journal`` ("" when it may)."""
    theirs = journal["target_key_uri"]
    if "target_options" not in journal:
        return "it was started by an older spark_kms, whose journals do not record the target's options"
    if target is None:
        return (f"it targets {theirs}, and this request names no key while the dataset's data keys are "
                "under several keys")
    if target != theirs:
        return f"it targets {theirs}, this request {target}"
    if bool(force) != bool(journal.get("force", False)):
        return f"it was planned with force={bool(journal.get('force'))}, this request has force={bool(force)}"
    ours = target_options(kms, target)
    if ours != journal["target_options"]:
        scheme, _ = parse_key_uri(target)
        return f"it reaches {theirs} with {scheme} options {journal['target_options']}, this request with {ours}"
    return ""


def _pending_run_error(dataset: Location, journal: Mapping[str, Any], why: str) -> ConfigurationError:
    run_id = journal["run_id"]
    who = (journal.get("requested_by") or {}).get("principal", "an unrecorded principal")
    done = sum(1 for state in journal["files"].values() if state == "done")
    return ConfigurationError(
        f"reencrypt: dataset {dataset.uri!r} has a pending re-encrypt run {run_id!r} "
        f"(target {journal['target_key_uri']}, started {journal.get('started_at', 'at an unrecorded time')} "
        f"by {who}, {done} of {len(journal['files'])} files done) that this request does not match: {why}. "
        f"A pending run is resumed only by a request for the same target key and options. "
        f"Resume it explicitly with --run-id {run_id} (run_id={run_id!r}), or give it up with "
        f"--abandon {run_id} (abandon={run_id!r}): its journal is kept for audit, and files it finished "
        "stay under its target key"
    )
