"""Re-encrypt a table: new data keys, every cell of the files that need it decrypted and encrypted again,
committed through the table's own transaction log (:func:`reencrypt_table`).

Nothing a table's log references is ever rewritten, renamed or deleted. For each file to re-encrypt the job
writes a **new** file beside it (``part-<run id>-<batch>-<n>.parquet``: same partition directory, same rows,
cells under a new data key of the target key's primary version, key table in the footer and the
``_spark_kms_keys`` column), then **one commit per batch** removes the old files and adds the new ones
(Delta: ``create_write_transaction`` with ``RemoveAction`` + ``AddAction``, ``dataChange=false``; Iceberg: an
``overwrite`` snapshot deleting and appending data files). Concurrent readers see the snapshot before the
commit or the one after, never a mix; time travel to an older version still reads the old files (with the
old data keys) until :func:`spark_kms.tables.vacuum_table` deletes them.

**Batches and resuming.** ``batch_files=N`` commits every N files (default: all in one commit). The journal
``<table>/_spark_kms_runs/<run_id>.state.json`` records the plan: the target key (URI, id, version, location
options), ``force``, who asked, the deterministic key, and per batch the old files, the new files' names and the
batch's state (``pending`` -> ``written`` -> ``committed``), rewritten atomically at each step. Each commit carries
an application id ``spark_kms.reencrypt.<run_id>`` and the batch number (Delta: an app transaction; Iceberg:
the snapshot summary), so a re-run after a kill -- even between the commit and the journal update -- knows
whether the batch was committed. An uncommitted batch's new files (never referenced by the log) are deleted
and written again. A file a concurrent writer removed meanwhile is skipped (``skipped`` in the journal).

Which run a request continues follows the dataset job (docs/ROTATION.md): ``run_id=`` resumes that run; without
it the pending run is resumed only by a request for the same target key, ``force`` and location options;
anything else is refused, naming the run and how to resume or give it up (``abandon=``).

Deterministic (AES-SIV) and blind-index columns keep the table's deterministic key (their cells are
re-encrypted under it and stay equal to the other writes'), unless ``rotate_deterministic=True`` or the
table moves to another key URI: then one new key for the run, kept (wrapped) in the journal.

Per-tenant and per-subject tables (crypto-shredding, docs/ERASURE.md) as the dataset job
(:mod:`spark_kms.jobs.reencrypt`): each cell's new data key is under its old one's KMS key with the same tenant
(``key_uri=`` is refused), per-subject columns are re-encrypted with ``subject_store=``, and erased cells are
written as null and counted (``details["erased_cells"]``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow.parquet as pq

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX, DekEntry, KeyTable
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.jobs._journal import requester as _requester
from spark_kms.jobs._summary import RUN_ID_CONTEXT_KEY, RunSummary, key_versions_of, utc_now, validate_run_id
from spark_kms.jobs._tenant_lanes import (
    TenantLanes,
    count_erased,
    current_versions,
    erased_summary,
    lane_context,
    shared_store,
    tenant_key_uris,
)
from spark_kms.jobs.reencrypt import target_options
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.encryptor import EncryptionSpec
from spark_kms.parquet.keys import new_deterministic_entry
from spark_kms.storage import Location, StoragePath, resolve
from spark_kms.tables._runs import TableRunRecorder, read_json, runs_dir, secret_strings, table_lock
from spark_kms.tables.detect import TableRef
from spark_kms.tables.files import TableFileWriter
from spark_kms.tables.jobs import require_writable, vacuum_table
from spark_kms.tables.keys import KEYS_COLUMN, TableKeys, load_table_keys
from spark_kms.tables.snapshot import NewFile, TableBackend, TableFile, check_file_columns, open_table

__all__ = ["journal_location", "pending_table_runs", "reencrypt_table"]

logger = logging.getLogger(__name__)

JOB = "reencrypt_table"
_BATCH_ROWS = 65_536
#: progress(file, files done, files to do)
Progress = Callable[[str, int, int], None]


def journal_location(root: Location, run_id: str) -> Location:
    return runs_dir(root).join(f"{run_id}.state.json")


def _load(loc: Location) -> dict[str, Any]:
    journal = read_json(loc)
    if journal is None or journal.get("job") != JOB or not isinstance(journal.get("batches"), list):
        raise JobError(f"reencrypt: {loc.uri} is not a table re-encrypt journal")
    return journal


def _save(root: Location, journal: dict[str, Any]) -> None:
    journal_location(root, journal["run_id"]).write_json_atomic(journal)


def pending_table_runs(root: Location) -> list[dict[str, Any]]:
    """The journals of unfinished table re-encrypt runs (status ``running``), oldest first."""
    found = []
    for entry in runs_dir(root).list_files(recursive=False):
        if entry.location.name.endswith(".state.json"):
            journal = read_json(entry.location) or {}
            if journal.get("job") == JOB and journal.get("status") == "running":
                found.append(journal)
    return sorted(found, key=lambda j: (str(j.get("started_at", "")), j["run_id"]))


def _target_uri(keys: TableKeys, key_uri: str | None) -> str:
    if key_uri:
        return key_uri
    uris = sorted({e.key_uri for e in keys.effective_deks().values()})
    if len(uris) != 1:
        raise ConfigurationError(
            f"reencrypt: the data keys of table {keys.snapshot.table.uri} are wrapped by {len(uris)} keys {uris}; "
            "name the target key with key_uri="
        )
    return uris[0]


def _choose(root: Location, uri: str, run_id: str | None, key_uri: str | None, force: bool, kms: KmsConfig,
            default_target: Callable[[], str | None]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if run_id is not None:
        loc = journal_location(root, validate_run_id(run_id))
        if loc.exists():
            journal = _load(loc)
            status = journal.get("status")
            if status not in ("running", "succeeded"):
                raise ConfigurationError(f"reencrypt: run {run_id} of table {uri} was {status} and cannot be resumed; "
                                         "start a new run")
            if status == "running" and key_uri and key_uri != journal["target_key_uri"]:
                raise ConfigurationError(f"reencrypt: run {run_id} of table {uri} targets {journal['target_key_uri']}, "
                                         f"not {key_uri}: resume it without key_uri=, or abandon it")
            return journal, []
    pending = pending_table_runs(root)
    if not pending:
        return None, []
    target = key_uri or default_target()
    for journal in pending:
        why = ""
        if target != journal["target_key_uri"]:
            why = f"it targets {journal['target_key_uri']}, this request {target}"
        elif bool(force) != bool(journal.get("force")):
            why = f"it was planned with force={bool(journal.get('force'))}, this request has force={bool(force)}"
        elif target_options(kms, target) != journal.get("target_options"):
            why = "it reaches its key with other location options than this request"
        if why:
            who = (journal.get("requested_by") or {}).get("principal", "an unrecorded principal")
            raise ConfigurationError(
                f"reencrypt: table {uri} has a pending re-encrypt run {journal['run_id']!r} (target "
                f"{journal['target_key_uri']}, started {journal.get('started_at')} by {who}) that this request does "
                f"not match: {why}. Resume it with run_id={journal['run_id']!r}, or give it up with "
                f"abandon={journal['run_id']!r} (its committed batches stay under its target key)"
            )
    if run_id is not None:
        return None, pending
    *older, latest = pending
    return latest, older


def _new_name(backend: TableBackend, file: TableFile, run_id: str, batch: int, n: int) -> str:
    root = backend.storage_location
    old = resolve(file.uri, root.options or None)
    name = f"part-{run_id}-{batch:04d}-{n:04d}.parquet"
    return old.parent.join(name).relative_to(root)


def _context(entries: Mapping[str, DekEntry], run_id: str) -> dict[str, str]:
    old = next((e.encryption_context for e in entries.values() if e.algorithm == AES_256_GCM), {})
    return {**{k: v for k, v in old.items() if k != RUN_ID_CONTEXT_KEY}, RUN_ID_CONTEXT_KEY: run_id}


def _plan(backend: TableBackend, keys: TableKeys, kms: KmsConfig, run_id: str, key_uri: str | None, force: bool,
          rotate_deterministic: bool, batch_files: int | None) -> dict[str, Any]:
    effective = keys.effective_deks()
    tenants = tenant_key_uris(effective.values(), f"table {keys.snapshot.table.uri}")
    if tenants is not None:
        return _plan_tenants(backend, keys, kms, run_id, key_uri, force, batch_files, tenants)
    target_uri = _target_uri(keys, key_uri)
    description = kms.describe(target_uri)
    siv = {d: e for d, e in effective.items() if e.algorithm == AES_256_SIV}
    det: DekEntry | None = None
    if siv:
        if not rotate_deterministic and len(siv) == 1 and next(iter(siv.values())).key_uri == target_uri:
            det = next(iter(siv.values()))
        elif not rotate_deterministic and len(siv) > 1:
            raise ConfigurationError(
                f"reencrypt: the deterministic columns of table {keys.snapshot.table.uri} use {len(siv)} keys; "
                "pass rotate_deterministic=True to re-encrypt them all under one new key"
            )
        else:
            context = {**next(iter(siv.values())).encryption_context, RUN_ID_CONTEXT_KEY: run_id}
            det = new_deterministic_entry(kms.provider(target_uri), context)

    def behind(f: TableFile) -> bool:
        # The file's own entries (footer or column), not the manifest's: after a rewrap the file still holds
        # the old wraps, which re-encrypt is there to get rid of.
        deks = keys.tables[f.uri].deks
        if force or any(not (e.key_id == description.key_id and e.key_version == description.primary_version)
                        for e in deks.values() if e.algorithm != AES_256_SIV):
            return True
        return det is not None and any(d != det.dek_id for d, e in deks.items() if e.algorithm == AES_256_SIV)

    todo = [f for f in keys.files if behind(f)]
    return {
        "job": JOB, "run_id": run_id, "status": "running", "started_at": utc_now().isoformat(),
        "table": keys.snapshot.table.uri, "table_format": keys.snapshot.format, "base_version": keys.snapshot.version,
        "target_key_uri": target_uri, "target_key_id": description.key_id,
        "target_key_version": description.primary_version, "target_options": target_options(kms, target_uri),
        "force": bool(force), "requested_by": _requester(kms, target_uri),
        "deterministic_entry": det.to_dict() if det else None, "app_id": f"spark_kms.reencrypt.{run_id}",
        "batches": _batches(backend, todo, run_id, batch_files),
    }


def _batches(backend: TableBackend, todo: list[TableFile], run_id: str, batch_files: int | None) -> list[Any]:
    size = batch_files or max(len(todo), 1)
    batches = []
    for b, start in enumerate(range(0, len(todo), size)):
        chunk = todo[start:start + size]
        batches.append({"state": "pending", "version": None, "files": [
            {"old": f.path, "uri": f.uri, "new": _new_name(backend, f, run_id, b, n), "state": "planned"}
            for n, f in enumerate(chunk)]})
    return batches


def _plan_tenants(backend: TableBackend, keys: TableKeys, kms: KmsConfig, run_id: str, key_uri: str | None,
                  force: bool, batch_files: int | None, tenants: dict[str, str]) -> dict[str, Any]:
    """The plan of a table written with per-tenant keys: each tenant keeps its own key."""
    if key_uri:
        raise ConfigurationError(
            f"reencrypt: the data keys of table {keys.snapshot.table.uri} are per tenant ({len(tenants)} tenants, "
            "each under its own KMS key): a re-encrypt keeps each tenant's key, so key_uri= does not apply")
    described = current_versions(kms, sorted(set(tenants.values())))

    def current(e: DekEntry) -> bool:
        d = described.get(e.key_uri)
        return d is not None and not d.erased and e.key_id == d.key_id and e.key_version == d.primary_version

    todo = [f for f in keys.files if force or not all(current(e) for e in keys.tables[f.uri].deks.values())]
    live = sorted(u for u, d in described.items() if d is not None and not d.erased) or sorted(tenants.values())
    return {
        "job": JOB, "run_id": run_id, "status": "running", "started_at": utc_now().isoformat(),
        "table": keys.snapshot.table.uri, "table_format": keys.snapshot.format, "base_version": keys.snapshot.version,
        "target_key_uri": live[0], "target_key_id": None, "target_key_version": None, "tenant_keys": tenants,
        "erased_tenant_keys": sorted(u for u, d in described.items() if d is None or d.erased),
        "target_options": target_options(kms, live[0]), "force": bool(force),
        "requested_by": _requester(kms, live[0]), "deterministic_entry": None,
        "app_id": f"spark_kms.reencrypt.{run_id}", "batches": _batches(backend, todo, run_id, batch_files),
    }


def _rewrite(backend: TableBackend, keys: TableKeys, merged: KeyTable, file: TableFile, rel: str, target_uri: str,
             det: DekEntry | None, run_id: str, kms: KmsConfig, *, tenant_uris: Mapping[str, str] | None = None,
             subject_store: Any = None, erased: dict[str, int] | None = None) -> tuple[NewFile | None, int]:
    own = keys.tables[file.uri]
    spec = EncryptionSpec.from_key_table(own)
    index_columns = {n for n, s in own.columns.items() if s.algorithm == HMAC_SHA256_BIDX}
    effective = keys.key_table_for(file.uri, merged)
    decryptor = BatchDecryptor(effective, kms_options=kms, subject_store=subject_store)
    lanes = TenantLanes(effective, tenant_uris) if tenant_uris else None
    context = _context(own.deks, run_id)
    root = backend.storage_location
    with resolve(file.uri, root.options or None).open_input_file() as fh:
        pf = pq.ParquetFile(fh)
        check_file_columns(keys.snapshot, file, pf.schema_arrow)
        keep = [n for n in pf.schema_arrow.names if n not in index_columns and n != KEYS_COLUMN]
        writer = TableFileWriter(
            backend.file_location(rel), rel, spec, target_uri, kms=kms,
            encryption_context=lane_context(context) if lanes is not None else context,
            deterministic_entry=det, field_ids=backend.field_ids() or None,
            partition_values=dict(file.partition_values), metadata={"spark_kms.job_id": run_id},
            required=backend.required_columns(), subject_store=subject_store, lanes=lanes,
        )
        try:
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=keep):
                plain = decryptor.decrypt_batch(batch, where=f"file {file.uri}")
                writer.write(plain, None if lanes is None else lanes.tenants(batch, spec.randomized))
            new = writer.close()
        except BaseException:
            writer.abort()
            raise
    if erased is not None:
        count_erased(erased, decryptor, writer.erased_on_write, spec.randomized if spec.subject_column else ())
    deks = 0 if new is None else sum(1 for e in writer.key_table().deks.values() if e.algorithm == AES_256_GCM)
    return new, deks


def _run_batch(backend: TableBackend, root: Location, journal: dict[str, Any], index: int, kms: KmsConfig,
               progress: Progress | None, counters: dict[str, Any], subject_store: Any = None) -> None:
    batch = journal["batches"][index]
    run_id = journal["run_id"]
    snap = backend.snapshot()
    current = {f.path: f for f in snap.files}
    news = [e["new"] for e in batch["files"] if e.get("state") != "skipped"]
    if backend.committed(journal["app_id"], index) or (
            news and all(any(p.endswith(n) for p in current) for n in news)):
        batch["state"] = "committed"
        _save(root, journal)
        logger.info("re-encrypt %s: batch %d was committed before the job stopped", run_id, index)
        return
    for entry in batch["files"]:  # an uncommitted attempt's files: never referenced by the log
        leftover = backend.file_location(entry["new"])
        if not any(p.endswith(entry["new"]) for p in current) and leftover.exists():
            leftover.delete_file()
    present = []
    for entry in batch["files"]:
        if entry["old"] in current:
            present.append(entry)
            entry["state"] = "planned"
        else:
            entry["state"] = "skipped"
            logger.warning("re-encrypt %s: %s is no longer in the table (a concurrent change): skipped", run_id,
                           entry["old"])
    if not present:
        batch["state"] = "committed"
        _save(root, journal)
        return
    olds = [current[e["old"]] for e in present]
    keys = load_table_keys(dataclasses.replace(snap, files=olds), job="reencrypt")
    merged = keys.key_table()
    det = DekEntry.from_dict(journal["deterministic_entry"]) if journal.get("deterministic_entry") else None
    batch["state"] = "writing"
    _save(root, journal)
    adds: list[NewFile] = []
    removes: list[TableFile] = []
    try:
        for entry, old in zip(present, olds, strict=True):
            new, deks = _rewrite(backend, keys, merged, old, entry["new"], journal["target_key_uri"], det, run_id, kms,
                                 tenant_uris=journal.get("tenant_keys"), subject_store=subject_store,
                                 erased=counters["erased"])
            if new is not None:
                adds.append(new)
            removes.append(old)
            counters["rows"] += new.rows if new is not None else 0
            counters["deks"] += deks
            counters["files"] += 1
            logger.info("re-encrypted %s -> %s (%d rows)", old.path, entry["new"], new.rows if new else 0)
            if progress is not None:
                progress(old.path, counters["files"], counters["todo"])
        batch["state"] = "written"
        _save(root, journal)
        info = {"spark_kms.run_id": run_id, "spark_kms.job": "reencrypt", "spark_kms.batch": str(index)}
        batch["version"] = backend.commit_files(adds, removes, data_change=False, info=info,
                                                app_txn=(journal["app_id"], index))
    except BaseException:
        if not backend.committed(journal["app_id"], index):
            for f in adds:
                f.location.delete_file()
        raise
    batch["state"] = "committed"
    _save(root, journal)


def _abandon(backend: TableBackend, root: Location, run_id: str, kms: KmsConfig) -> RunSummary:
    loc = journal_location(root, run_id)
    if not loc.exists():
        raise ConfigurationError(f"reencrypt: table {backend.ref.uri} has no re-encrypt run {run_id!r} to abandon")
    journal = _load(loc)
    if journal.get("status") != "running":
        raise ConfigurationError(f"reencrypt: run {run_id} is {journal.get('status')}, not pending: nothing to abandon")
    current = {f.path for f in backend.snapshot().files}
    for i, batch in enumerate(journal["batches"]):
        if batch["state"] == "committed" or backend.committed(journal["app_id"], i):
            continue
        for entry in batch["files"]:
            if not any(p.endswith(entry["new"]) for p in current):
                backend.file_location(entry["new"]).delete_file()
    journal.update(status="abandoned", abandoned_at=utc_now().isoformat(),
                   abandoned_by=_requester(kms, journal["target_key_uri"]))
    _save(root, journal)
    logger.warning("re-encrypt run %s of table %s abandoned", run_id, backend.ref.uri)
    return RunSummary(job="reencrypt", run_id=run_id, dataset=backend.ref.uri, status="abandoned",
                      details={"target_key_uri": journal["target_key_uri"]})


def reencrypt_table(
    table: StoragePath | TableRef,
    *,
    key_uri: str | None = None,
    kms_options: KmsConfigLike = None,
    run_id: str | None = None,
    force: bool = False,
    batch_files: int | None = None,
    rotate_deterministic: bool = False,
    abandon: str | None = None,
    vacuum_retention_hours: float | None = None,
    progress: Progress | None = None,
    storage_options: Mapping[str, str] | str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    subject_store: Any = None,
) -> RunSummary:
    """Re-encrypt the files of the table's current snapshot whose data keys are not under the target key's
    primary version (all of them with ``force``), committing through the table's log (module docs).

    :param key_uri: the target key; default the key of the table's data keys (they must share one).
    :param run_id: resume this run (its journal), or start a new run with this id.
    :param force: re-encrypt every file (a data key may have leaked).
    :param batch_files: commit every this many files (resumable batches); default one commit for all.
    :param rotate_deterministic: also give the deterministic / blind-index columns a new key.
    :param abandon: give up the pending run with this id (its uncommitted files are deleted) and run nothing.
    :param vacuum_retention_hours: opt-in: after success, :func:`vacuum_table` with this retention (0 deletes
        every file older snapshots kept, so the old data keys are nowhere any more): crypto-shredding.
    :returns: the run summary (``details["table_versions"]``: the commits made); with ``vacuum_retention_hours``
        ``details["vacuum"]`` holds the vacuum run's summary.
    :param subject_store: the subject key store of per-subject columns (URL or store). Erased cells (tenant or
        subject) are written as null: ``details["erased_cells"]`` counts them per column.
    """
    if batch_files is not None and (isinstance(batch_files, bool) or not isinstance(batch_files, int)
                                    or batch_files < 1):
        raise ConfigurationError(f"batch_files must be a positive integer, got {batch_files!r}")
    backend = open_table(table, storage_options=storage_options, catalog_properties=catalog_properties,
                         table_options=table_options)
    require_writable(backend, "reencrypt")
    root = backend.storage_location
    uri = backend.ref.uri
    base = KmsConfig.of(kms_options)
    with table_lock(root, "reencrypt", uri):
        if abandon is not None:
            if run_id is not None or key_uri is not None or force:
                raise ConfigurationError("reencrypt: abandon= gives up a run and starts none; pass it alone")
            return _abandon(backend, root, validate_run_id(abandon), base)

        def default_target() -> str | None:
            try:
                return _target_uri(load_table_keys(backend.snapshot(), job="reencrypt"), None)
            except ConfigurationError:
                return None

        if run_id is None and key_uri is None:  # a pending per-tenant run has no single target to match by
            run_id = next((j["run_id"] for j in reversed(pending_table_runs(root)) if j.get("tenant_keys")
                           and bool(j.get("force")) == bool(force)
                           and j.get("target_options") == target_options(base, j["target_key_uri"])), None)
        journal, superseded = _choose(root, uri, run_id, key_uri, force, base, default_target)
        if journal is not None and journal.get("status") == "succeeded":
            record = read_json(runs_dir(root).join(f"{journal['run_id']}.json"))
            return RunSummary.from_dict(record) if record else RunSummary(
                job="reencrypt", run_id=journal["run_id"], dataset=uri, status="succeeded")
        with TableRunRecorder("reencrypt", root, uri, journal["run_id"] if journal else run_id,
                              secrets=secret_strings(base)) as recorder:
            kms = base.with_request_tag(recorder.run_id)
            summary = recorder.summary
            before = load_table_keys(backend.snapshot(), job="reencrypt")
            summary.key_versions_before = key_versions_of(
                (e.key_id, e.key_version) for e in before.effective_deks().values())
            if journal is None:
                journal = _plan(backend, before, kms, recorder.run_id, key_uri, force, rotate_deterministic,
                                batch_files)
                if journal["batches"]:
                    _save(root, journal)
            else:
                summary.details["resumed"] = True
                journal.setdefault("resumed_by", []).append(
                    {**_requester(kms, journal["target_key_uri"]), "at": utc_now().isoformat()})
                _save(root, journal)
            for old in superseded:
                old.update(status="superseded", superseded_by=recorder.run_id, superseded_at=utc_now().isoformat())
                _save(root, old)
            todo = sum(len(b["files"]) for b in journal["batches"] if b["state"] != "committed")
            counters: dict[str, Any] = {"rows": 0, "deks": 0, "files": 0, "todo": todo, "erased": {}}
            subject_store = shared_store(subject_store, before.tables.values(), kms)
            for index, batch in enumerate(journal["batches"]):
                if batch["state"] != "committed":
                    _run_batch(backend, root, journal, index, kms, progress, counters, subject_store)
            if journal["batches"]:
                journal.update(status="succeeded", finished_at=utc_now().isoformat())
                _save(root, journal)
            after = load_table_keys(backend.snapshot(), job="reencrypt")
            summary.rows, summary.files, summary.deks = counters["rows"], counters["files"], counters["deks"]
            summary.key_versions = key_versions_of((e.key_id, e.key_version) for e in after.effective_deks().values())
            summary.details.update({
                "table_format": backend.format,
                "target_key_uri": None if journal.get("tenant_keys") else journal["target_key_uri"],
                **({"tenant_keys": journal["tenant_keys"], "erased_tenant_keys": journal.get("erased_tenant_keys", [])}
                   if journal.get("tenant_keys") else {}),
                **erased_summary(counters["erased"]),
                "table_versions": [b.get("version") for b in journal["batches"]],
                "batches": len(journal["batches"]),
                "files_planned": sum(len(b["files"]) for b in journal["batches"]),
                "files_skipped": sum(1 for b in journal["batches"] for e in b["files"] if e.get("state") == "skipped"),
                "requested_by": journal.get("requested_by"),
            })
    if vacuum_retention_hours is not None:
        vacuumed = vacuum_table(backend.ref, retention_hours=vacuum_retention_hours)
        summary.details["vacuum"] = vacuumed.to_dict()
    return summary
