"""Re-encrypt: new data keys, every cell decrypted and encrypted again, file by file.

For each data file that needs it, the job streams the file's batches through a
:class:`~spark_kms.parquet.BatchDecryptor` (old keys, manifest applied, so a
rewrapped dataset whose old key version is already disabled still works) into an
:class:`~spark_kms.parquet.EncryptedParquetWriter` (new DEK under the target key's
primary version, encryption context ``{..., "spark_kms.job_id": <run id>}``) that
writes a hidden sibling ``.<name>.<random>.reencrypt``; the temp file is fsynced and
``os.replace``-d over the old file, so the file keeps its name and a reader sees
either the old file or the new one, never a torn, missing or duplicated file.

Which files need it: those with a footer DEK not wrapped by the target key's
primary version (after a rewrap the footers still hold the old wraps, so rewrap
then re-encrypt works), or every file with ``force=True``. Deterministic and
blind-index columns share one dataset-level DEK so equal values stay equal across
files; when a dataset has such columns every file is re-encrypted, under one new
deterministic DEK made once per run.

Resumable: the journal ``<dataset>/_spark_kms_runs/<run_id>.state.json`` records
the target (key URI, key id and version, the target scheme's KMS options that say
*where* the key lives -- secrets never), ``force``, who asked (``requested_by``), the
run's deterministic DEK entry (wrapped only) and each file's state, flushed atomically
after every file. After a crash (even SIGKILL) every file is either old or new, both
readable; a re-run skips files already done -- by the journal, or by the footer itself
(its DEKs carry this run's id in their encryption context), which covers a kill
between the rename and the journal write. A re-run after success does nothing: with
the same run id, no KMS call at all; with a new run id, one DescribeKey and no other
KMS call. Manifest entries of DEKs no file uses any more are pruned at the end.

Which run a request continues (the *pending* run is a journal with status ``running``):

* ``run_id=`` naming an existing journal resumes that run (an explicit ``key_uri`` other
  than its target, or ``force=True`` on a run planned without it, is refused);
* no ``run_id``: the pending run is resumed only if the request is for the same target
  -- the explicit ``key_uri``, or the default computed as for a new run -- with the same
  ``force`` and the same location options (:func:`target_options`); a new ``run_id``
  with such a request starts afresh and marks the pending run ``superseded``;
* anything else is refused with a :class:`~spark_kms.errors.ConfigurationError` naming
  the pending run, its target, when and by whom it was started, and how to resume
  (``run_id=``, ``--run-id``) or give it up (``abandon=``, ``--abandon``). Abandoning
  marks the journal ``abandoned`` (kept for audit) and removes the run's temp files;
  files the run finished stay as they are, under its target key.

So a writer who can only write to the dataset directory cannot start a run to a key of
its own, let it fail, and have the next routine rotation finish it.

``spark`` is accepted for API symmetry; files are processed by this process, one
at a time, streaming batch by batch (memory stays flat).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms._atomic import atomic_write_json, replace_atomically, sibling_temp_path
from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    HMAC_SHA256_BIDX,
    KEY_TABLE_METADATA_KEY,
    DekEntry,
    KeyTable,
)
from spark_kms.errors import ConfigurationError, JobError, SparkKmsError
from spark_kms.jobs._common import require_dataset_dir
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._summary import (
    RUN_ID_CONTEXT_KEY,
    RunRecorder,
    RunSummary,
    key_versions_of,
    runs_dir,
    utc_now,
    validate_run_id,
)
from spark_kms.kms import KmsConfig, KmsConfigLike, KmsProvider
from spark_kms.kms.registry import parse_key_uri
from spark_kms.parquet import BatchDecryptor, EncryptedParquetWriter, EncryptionSpec
from spark_kms.parquet.dataset import Dataset
from spark_kms.parquet.join_domains import DEFAULT_DOMAIN, DOMAIN_CONTEXT_KEY, domain_key, read_join_keys

__all__ = ["TEMP_SUFFIX", "journal_path", "pending_runs", "reencrypt_dataset", "target_options"]

logger = logging.getLogger(__name__)

_TEMP_TAG = "reencrypt"
#: suffix of the hidden temp file a re-encrypt writes next to each data file (``.<name>.<random>.reencrypt``)
TEMP_SUFFIX = f".{_TEMP_TAG}"
_BATCH_ROWS = 65_536
#: options that do not say which key a URI names: who asks, and per-call plumbing
_NOT_LOCATION_OPTIONS = frozenset({"principal", "request_tag", "request_interceptor"})
#: progress(file relpath, files done, files to do)
Progress = Callable[[str, int, int], None]


def journal_path(dataset: str | Path, run_id: str) -> Path:
    return runs_dir(dataset) / f"{run_id}.state.json"


def reencrypt_dataset(
    path: str | Path,
    *,
    key_uri: str | None = None,
    kms_options: KmsConfigLike = None,
    spark: Any = None,
    run_id: str | None = None,
    force: bool = False,
    abandon: str | None = None,
    progress: Progress | None = None,
    rotate_join_domain: bool = False,
    join_domain_store: str | None = None,
) -> RunSummary:
    """Re-encrypt the dataset at ``path`` with new data keys under the target key.

    :param path: the dataset directory.
    :param key_uri: the target key. Default: the key the dataset's DEKs are wrapped by (all its
        DEKs must then share one key URI).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per key-URI scheme).
    :param spark: accepted for API symmetry; unused (files are rewritten by this process).
    :param run_id: resume this run if its journal exists (a finished run: returns its summary,
        no KMS call), else start a new run with this id. Default: resume the pending run if
        this request matches it (same target, ``force`` and location options), else start a new run.
    :param force: re-encrypt every file even if its DEKs are already wrapped by the target's primary
        version (e.g. a data key is suspected exposed).
    :param abandon: give up the pending run with this id instead of running anything: its journal
        is marked ``abandoned`` (kept for audit), its temp files removed. Files it finished stay
        under its target key (a new run with ``key_uri=`` moves them).
    :param progress: called after each file with (file, files done, files to do).
    :param rotate_join_domain: also give the dataset's join domain a new deterministic key and rewrite
        its deterministic and blind-index columns under it (default: they keep the domain's key, so
        they stay joinable with the other writes and datasets of the domain). Every other dataset of
        a named domain must then be re-encrypted too (docs/ROTATION.md).
    :param join_domain_store: the store of the dataset's named join domain (needed to rotate it).
    :returns: the run summary, also written to ``<path>/_spark_kms_runs/<run_id>.json``.
    :raises ConfigurationError: a pending run that this request does not match (the message names
        it and says how to resume or abandon it).
    """
    del spark
    dataset = require_dataset_dir(path, "reencrypt")
    base = KmsConfig.of(kms_options)
    with dataset_lock(dataset, "reencrypt"):
        if abandon is not None:
            if run_id is not None or key_uri is not None or force:
                raise ConfigurationError("reencrypt: abandon= gives up a run and starts none; "
                                         "pass it without run_id=, key_uri= or force=")
            return _abandon(dataset, validate_run_id(abandon), base)
        journal, superseded = _choose_run(dataset, run_id, key_uri, force, base)
        if journal is not None and journal["status"] == "succeeded":
            return _finished_summary(dataset, journal["run_id"])
        with RunRecorder("reencrypt", dataset, journal["run_id"] if journal else run_id,
                         secrets=_secret_strings(base)) as recorder:
            kms = base.with_request_tag(recorder.run_id)
            _run(dataset, recorder, journal, superseded, key_uri, kms, force, progress,
                 rotate_join_domain, join_domain_store)
            return recorder.summary


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


def pending_runs(dataset: str | Path) -> list[dict[str, Any]]:
    """The journals of unfinished re-encrypt runs of ``dataset`` (status ``running``), oldest first."""
    found = []
    for path in runs_dir(dataset).glob("*.state.json"):
        journal = _load_journal(path)
        if journal.get("job") == "reencrypt" and journal.get("status") == "running":
            found.append(journal)
    return sorted(found, key=lambda j: (str(j.get("started_at", "")), j["run_id"]))


# --------------------------------------------------------------------------- journal


def _choose_run(
    dataset: Path, run_id: str | None, key_uri: str | None, force: bool, kms: KmsConfig
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(journal to resume or None for a new run, pending journals the run supersedes)``; raises
    when a pending run is in the way (module docstring, "Which run a request continues")."""
    if run_id is not None:
        path = journal_path(dataset, validate_run_id(run_id))
        if path.exists():
            journal = _load_journal(path)
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


def _check_named_run(dataset: Path, journal: dict[str, Any], key_uri: str | None, force: bool) -> None:
    run_id, status = journal["run_id"], journal.get("status")
    if status == "succeeded":
        return
    if status != "running":
        raise ConfigurationError(
            f"reencrypt: run {run_id} of {str(dataset)!r} was {status} and cannot be resumed; "
            "start a new run (another run id, or none)"
        )
    conflict = ""
    if key_uri and key_uri != journal["target_key_uri"]:
        conflict = f"it targets {journal['target_key_uri']}, not {key_uri}: resume it without --key-uri"
    elif force and not journal.get("force", False):
        conflict = "it was planned without force: resume it without --force"
    if conflict:
        raise ConfigurationError(
            f"reencrypt: run {run_id} of {str(dataset)!r} cannot be resumed by this request: {conflict}, "
            f"or give it up with --abandon {run_id} (abandon={run_id!r}) and start a new run"
        )


def _requested_target(dataset: Path, key_uri: str | None) -> str | None:
    """The target key URI a new run would have; None when the default cannot be computed (the
    dataset's DEKs are under several keys -- e.g. because a pending run moved some files)."""
    if key_uri:
        return key_uri
    try:
        return _target_uri(Dataset.open(dataset, job="reencrypt"), None)
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


def _pending_run_error(dataset: Path, journal: Mapping[str, Any], why: str) -> ConfigurationError:
    run_id = journal["run_id"]
    who = (journal.get("requested_by") or {}).get("principal", "an unrecorded principal")
    done = sum(1 for state in journal["files"].values() if state == "done")
    return ConfigurationError(
        f"reencrypt: dataset {str(dataset)!r} has a pending re-encrypt run {run_id!r} "
        f"(target {journal['target_key_uri']}, started {journal.get('started_at', 'at an unrecorded time')} "
        f"by {who}, {done} of {len(journal['files'])} files done) that this request does not match: {why}. "
        f"A pending run is resumed only by a request for the same target key and options. "
        f"Resume it explicitly with --run-id {run_id} (run_id={run_id!r}), or give it up with "
        f"--abandon {run_id} (abandon={run_id!r}): its journal is kept for audit, and files it finished "
        "stay under its target key"
    )


def _load_journal(path: Path) -> dict[str, Any]:
    try:
        journal = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(
            f"reencrypt: journal {str(path)!r} is unreadable ({type(exc).__name__}); "
            "it is written atomically, so it was edited by hand: restore or remove it"
        ) from None
    if (not isinstance(journal, dict) or not isinstance(journal.get("files"), dict) or "run_id" not in journal
            or "target_key_uri" not in journal):
        raise JobError(f"reencrypt: journal {str(path)!r} is not a re-encrypt journal")
    return journal


def _requester(kms: KmsConfig, key_uri: str) -> dict[str, str]:
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


def _secret_strings(kms: KmsConfig) -> list[str]:
    # KmsConfig.secret_values decodes bytes as UTF-8, which raw key bytes are not: those cannot
    # appear in a JSON record as text anyway, so masking does without them.
    try:
        return kms.secret_values()
    except UnicodeDecodeError:
        return [v for opts in kms.options().values() for v in opts.values() if isinstance(v, str) and v]


def _set_status(dataset: Path, journal: dict[str, Any], status: str, **facts: Any) -> None:
    journal.update(status=status, **facts)
    atomic_write_json(journal_path(dataset, journal["run_id"]), journal)


def _abandon(dataset: Path, run_id: str, kms: KmsConfig) -> RunSummary:
    path = journal_path(dataset, run_id)
    if not path.exists():
        pending = [j["run_id"] for j in pending_runs(dataset)]
        raise ConfigurationError(
            f"reencrypt: dataset {str(dataset)!r} has no re-encrypt run {run_id!r} to abandon; "
            f"pending runs: {pending or 'none'}"
        )
    journal = _load_journal(path)
    if journal.get("status") != "running":
        raise ConfigurationError(
            f"reencrypt: run {run_id} of {str(dataset)!r} is {journal.get('status')}, not pending: nothing to abandon"
        )
    by = _requester(kms, journal["target_key_uri"])
    now = utc_now().isoformat()
    _set_status(dataset, journal, "abandoned", abandoned_at=now, abandoned_by=by)
    _remove_stale_temps(dataset)
    done = sum(1 for state in journal["files"].values() if state == "done")
    record = runs_dir(dataset) / f"{run_id}.json"
    try:
        summary = RunSummary.from_dict(json.loads(record.read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        summary = RunSummary(job="reencrypt", run_id=run_id, dataset=str(dataset),
                             started_at=str(journal.get("started_at", "")))
    summary.status = "abandoned"
    summary.details.update({
        "target_key_uri": journal["target_key_uri"],
        "abandoned_at": now,
        "abandoned_by": by,
        "files_planned": len(journal["files"]),
        "files_done_before": done,
    })
    atomic_write_json(record, summary.to_dict())
    logger.warning("re-encrypt run %s of %s abandoned by %s: %d of %d files had been moved to %s and stay there",
                   run_id, dataset, by["principal"], done, len(journal["files"]), journal["target_key_uri"])
    return summary


def _finished_summary(dataset: Path, run_id: str) -> RunSummary:
    path = runs_dir(dataset) / f"{run_id}.json"
    try:
        return RunSummary.from_dict(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError):
        # The journal says done but the summary is gone: report a summary of nothing done now.
        return RunSummary(job="reencrypt", run_id=run_id, dataset=str(dataset), status="succeeded",
                          details={"note": "run already finished; its summary file is missing"})


# --------------------------------------------------------------------------- the job


def _target_uri(keys: Dataset, key_uri: str | None) -> str:
    if key_uri:
        return key_uri
    uris = sorted({e.key_uri for e in keys.effective_deks().values()})
    if len(uris) != 1:
        raise ConfigurationError(
            f"reencrypt: the DEKs of {str(keys.root)!r} are wrapped by {len(uris)} keys {uris}; "
            "name the target key with key_uri= (--key-uri)"
        )
    return uris[0]


def _spec_of(table: KeyTable) -> EncryptionSpec:
    return EncryptionSpec.from_key_table(table)


def _context(entries: Mapping[str, DekEntry], algorithm: str, run_id: str) -> dict[str, str]:
    # Keep what the dataset's writer put in the context (dataset name, columns...), with this run's id.
    old = next((e.encryption_context for e in entries.values() if e.algorithm == algorithm), {})
    return {**{k: v for k, v in old.items() if k != RUN_ID_CONTEXT_KEY}, RUN_ID_CONTEXT_KEY: run_id}


def _done_by_footer(table: KeyTable, run_id: str) -> bool:
    return bool(table.deks) and all(
        e.encryption_context.get(RUN_ID_CONTEXT_KEY) == run_id for e in table.deks.values()
    )


def _run(
    dataset: Path,
    recorder: RunRecorder,
    journal: dict[str, Any] | None,
    superseded: Sequence[dict[str, Any]],
    key_uri: str | None,
    kms: KmsConfig,
    force: bool,
    progress: Progress | None,
    rotate_join_domain: bool = False,
    join_domain_store: str | None = None,
) -> None:
    summary = recorder.summary
    run_id = recorder.run_id
    _remove_stale_temps(dataset)
    keys = Dataset.open(dataset, job="reencrypt", kms_options=kms)
    summary.key_versions_before = key_versions_of(
        (e.key_id, e.key_version) for e in keys.effective_deks().values()
    )
    if journal is None:
        journal = _plan(keys, kms, run_id, key_uri, force, rotate_join_domain, join_domain_store)
        if journal["files"]:
            atomic_write_json(journal_path(dataset, run_id), journal)
    else:
        summary.details["resumed"] = True
        journal.setdefault("resumed_by", []).append(
            {**_requester(kms, journal["target_key_uri"]), "at": utc_now().isoformat()}
        )
        atomic_write_json(journal_path(dataset, run_id), journal)
    for old in superseded:
        # Same target, key and options: the old run's finished files are already where this run goes.
        _set_status(dataset, old, "superseded", superseded_by=run_id, superseded_at=utc_now().isoformat())
        logger.info("re-encrypt run %s of %s superseded by run %s", old["run_id"], dataset, run_id)
    summary.details["requested_by"] = journal.get("requested_by")
    target = kms.provider(journal["target_key_uri"])
    det_entry = DekEntry.from_dict(journal["deterministic_entry"]) if journal.get("deterministic_entry") else None

    todo = [rel for rel, state in sorted(journal["files"].items()) if state != "done"]
    summary.details.update({
        "target_key_uri": journal["target_key_uri"],
        "files_total": len(keys.files),
        "files_planned": len(journal["files"]),
        "files_done_before": len(journal["files"]) - len(todo),
    })
    rows = deks = files = 0
    for n, rel in enumerate(todo, start=1):
        file = str(dataset / rel)
        if not os.path.exists(file):
            raise JobError(f"reencrypt: file {rel!r} of run {run_id} disappeared from {str(dataset)!r}")
        footer = keys.footers.get(file)
        if footer is None or not _done_by_footer(footer, run_id):
            file_rows, file_deks = _reencrypt_file(file, keys, target, det_entry, run_id, kms)
            logger.info("re-encrypted %s: %d rows under %d new data keys", rel, file_rows, file_deks)
            rows += file_rows
            deks += file_deks
            files += 1
        journal["files"][rel] = "done"
        atomic_write_json(journal_path(dataset, run_id), journal)
        if progress is not None:
            progress(rel, n, len(todo))

    # Every file now holds only its own new keys: drop manifest entries no footer uses.
    final = Dataset.open(dataset, job="reencrypt", kms_options=kms)
    used = final.footer_deks()
    kept = {d: e for d, e in final.manifest.items() if d in used}
    summary.details["manifest_entries_pruned"] = len(final.manifest) - len(kept)
    if len(kept) != len(final.manifest):
        final.write_manifest(kept, kms_options=kms)
    summary.rows, summary.deks, summary.files = rows, deks, files
    summary.key_versions = key_versions_of(
        (e.key_id, e.key_version) for e in {d: kept.get(d, e) for d, e in used.items()}.values()
    )
    if journal["files"]:
        journal["status"] = "succeeded"
        journal["finished_at"] = utc_now().isoformat()
        atomic_write_json(journal_path(dataset, run_id), journal)


def _join_domain_key(
    keys: Dataset, kms: KmsConfig, target_uri: str, rotate: bool, store: str | None
) -> DekEntry:
    """The key of the join domain the dataset's deterministic columns belong to (named in the
    domain key's encryption context; data written before join domains: the dataset's own)."""
    names = {e.encryption_context.get(DOMAIN_CONTEXT_KEY) for e in keys.footer_deks().values()
             if e.algorithm == AES_256_SIV} - {None}
    if len(names) > 1:
        raise ConfigurationError(
            f"reencrypt: the deterministic columns of {str(keys.root)!r} use keys of several join domains "
            f"{sorted(names)}; a dataset belongs to one join domain"
        )
    name = names.pop() if names else None
    recorded = read_join_keys(keys.root).get(name or DEFAULT_DOMAIN)
    if recorded is not None:
        recorded = keys.manifest.get(recorded.dek_id, recorded)  # rewrapped with the dataset
        if not rotate and recorded.key_uri == target_uri:
            return recorded  # keep the domain's key: its unwrap happens when files are rewritten
        if recorded.key_uri != target_uri and (name or DEFAULT_DOMAIN) == DEFAULT_DOMAIN:
            rotate = True  # the dataset moves to another key: its own join domain moves with it
    return domain_key(keys.root, key_uri=target_uri, kms_options=kms, domain=name, store=store, rotate=rotate)


def _plan(
    keys: Dataset, kms: KmsConfig, run_id: str, key_uri: str | None, force: bool,
    rotate_join_domain: bool = False, join_domain_store: str | None = None,
) -> dict[str, Any]:
    target_uri = _target_uri(keys, key_uri)
    description = kms.describe(target_uri)

    def current(e: DekEntry) -> bool:
        return e.key_id == description.key_id and e.key_version == description.primary_version

    spec_needs_det = any(_spec_of(t).needs_deterministic_key for t in keys.footers.values() if t.columns)
    det_entry = None
    if spec_needs_det:
        # Deterministic columns keep their join domain's key (equal values stay equal across this
        # dataset and every dataset of its domain) unless the domain key itself is rotated.
        det_entry = _join_domain_key(keys, kms, target_uri, rotate_join_domain, join_domain_store)

    def file_behind(f: str) -> bool:
        deks = keys.footers[f].deks.values()
        if force or not all(current(e) for e in deks if e.algorithm != AES_256_SIV):
            return True
        siv = {e.dek_id for e in deks if e.algorithm == AES_256_SIV}
        return det_entry is not None and bool(siv) and siv != {det_entry.dek_id}

    behind = [f for f in keys.files if file_behind(f)]
    return {
        "job": "reencrypt",
        "run_id": run_id,
        "status": "running",
        "started_at": utc_now().isoformat(),
        "target_key_uri": target_uri,
        "target_key_id": description.key_id,
        "target_key_version": description.primary_version,
        "target_options": target_options(kms, target_uri),
        "force": bool(force),
        "requested_by": _requester(kms, target_uri),
        "deterministic_entry": det_entry.to_dict() if det_entry else None,
        "rotate_join_domain": bool(rotate_join_domain),
        "files": {keys.relpath(f): "pending" for f in behind},
    }


def _reencrypt_file(
    file: str,
    keys: Dataset,
    target: KmsProvider,
    det_entry: DekEntry | None,
    run_id: str,
    kms: KmsConfig,
) -> tuple[int, int]:
    """Rewrite one file with new DEKs, atomically under the same name. Returns (rows, new DEKs)."""
    footer = keys.footers[file]
    table = keys.effective_table(file)
    spec = _spec_of(footer)
    index_columns = [n for n, s in footer.columns.items() if s.algorithm == HMAC_SHA256_BIDX]
    decryptor = BatchDecryptor(table, kms_options=kms)
    parquet = pq.ParquetFile(file)
    stored = parquet.schema_arrow
    keep = [n for n in stored.names if n not in index_columns]
    plain_schema = decryptor.plaintext_schema(stored.remove_metadata(), keep)
    plain_schema = pa.schema([plain_schema.field(n) for n in keep])
    # Footer metadata the writer added besides the key table (e.g. a job id) travels along.
    extra = {
        k.decode(): v.decode()
        for k, v in (parquet.metadata.metadata or {}).items()
        if k not in (KEY_TABLE_METADATA_KEY.encode(), b"ARROW:schema")
    }
    temp = sibling_temp_path(file, _TEMP_TAG)
    try:
        with EncryptedParquetWriter(
            temp, plain_schema, spec, target,
            encryption_context=_context(footer.deks, AES_256_GCM, run_id),
            deterministic_entry=det_entry,
            kms_options=kms,
            write_empty=True,
            metadata=extra,
        ) as writer:
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=keep):
                writer.write_batch(decryptor.decrypt_batch(batch, where=f"file {file}"))
        new_deks = sum(1 for e in writer.key_table.deks.values() if e.algorithm == AES_256_GCM)
        replace_atomically(temp, file)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        parquet.close()
    return writer.rows, new_deks


def _remove_stale_temps(dataset: Path) -> None:
    # Left by a killed run (we hold the dataset lock: no live run owns them). Hidden, so readers never saw them.
    for temp in dataset.rglob(f".*.{_TEMP_TAG}"):
        temp.unlink(missing_ok=True)
