"""Re-encrypt: new data keys, every cell decrypted and encrypted again, file by file.

For each data file that needs it, the job streams the file's batches through a
:class:`~spark_kms.parquet.BatchDecryptor` (old keys, manifest applied, so a
rewrapped dataset whose old key version is already disabled still works) into an
:class:`~spark_kms.parquet.EncryptedParquetWriter` (new DEK under the target key's
primary version, encryption context ``{..., "spark_kms.job_id": <run id>}``) that
writes a hidden sibling ``.<name>.<random>.reencrypt``, which then replaces the old file
under the same name (:func:`~spark_kms.jobs._common.publish_file`), so a reader sees
either the old file or the new one, never a torn, missing or duplicated file:

* **local disks**: the temp file is fsynced and ``os.replace``-d over the old file (atomic);
* **object stores** (``s3://``, ``gs://``, ``abfs[s]://``): the temp object is uploaded whole
  (an upload appears only once complete), then copied server-side over the old object's key
  (the key holds the old object until the copy completes, then the new one: never a part of
  either), then deleted. We do *not* stream the new file straight to the old key: the old
  object is still being read while the new one is written, and a failed write must never be
  able to publish a partial object under a data file's name; a hidden temp is harmless. The
  price is one server-side copy per file. A reader that opened the old object and keeps
  reading ranges of it *across* the replacement may get the new object's bytes (pyarrow does
  not pin an object's version; Spark's S3A does by default and then fails the read with
  ``RemoteFileChangedException``): re-encrypt while no long scan runs, as for any object
  replaced in place.

Which files need it: those with a footer DEK not wrapped by the target key's
primary version (after a rewrap the footers still hold the old wraps, so rewrap
then re-encrypt works), or every file with ``force=True``. Deterministic and
blind-index columns share one dataset-level DEK so equal values stay equal across
files; when a dataset has such columns every file is re-encrypted, under one new
deterministic DEK made once per run.

Resumable (:mod:`spark_kms.jobs._journal`): the journal
``<dataset>/_spark_kms_runs/<run_id>.state.json`` records the target (key URI, key id and version, the target scheme's KMS options that say
*where* the key lives -- secrets never), ``force``, who asked (``requested_by``), the
run's deterministic DEK entry (wrapped only) and each file's state, flushed atomically
(one PUT on an object store) after every file is published. After a crash (even SIGKILL)
every file is either old or new, both readable; a re-run first removes the killed run's
temp files, then skips files already done -- by the journal, or by the footer itself
(its DEKs carry this run's id in their encryption context), which covers a kill
between the publication and the journal write. A re-run after success does nothing: with
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

Per-tenant and per-subject data (crypto-shredding, docs/ERASURE.md): a dataset written with ``tenant_keys``
keeps its split -- each cell gets a new data key under the KMS key of its old one, with the same tenant in the
context (:mod:`spark_kms.jobs._tenant_lanes`; the run's target is then "each tenant's own key", ``key_uri=``
is refused, and a pending run is resumed by its ``run_id``). Per-subject columns are re-encrypted per subject
again, with the subject key store ``subject_store=``. Erased cells -- their tenant's KMS key or their subject's
key is erased -- read as null and are written as null: counted in ``details["erased_cells"]`` (per column),
never an error. The data keys of erased tenants are dropped from the files re-encrypted.

Files are processed by this process, one at a time, streaming batch by batch (memory
stays flat); ``spark`` matters only as a Spark Connect session, whose server side then runs
the whole job (:func:`spark_kms.spark.remote.run_near_data`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    HMAC_SHA256_BIDX,
    KEY_TABLE_METADATA_KEY,
    DekEntry,
    KeyTable,
)
from spark_kms.errors import ConfigurationError, JobError, KeyErasedError
from spark_kms.jobs._common import StorageOptions, dataset_root, publish_file, require_dataset, temp_sibling
from spark_kms.jobs._journal import (
    choose_run,
    journal_location,
    journal_path,
    load_journal,
    pending_runs,
    requester,
    set_status,
    target_options,
    target_uri,
    write_journal,
)
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._summary import (
    RUN_ID_CONTEXT_KEY,
    RunRecorder,
    RunSummary,
    key_versions_of,
    read_json,
    runs_dir,
    utc_now,
    validate_run_id,
)
from spark_kms.jobs._tables import (
    refuse_nested_tables,
    refuse_table_arguments_over_connect,
    table_format,
    table_kwargs,
)
from spark_kms.jobs._tenant_lanes import (
    TenantLanes,
    TenantParquetWriter,
    count_erased,
    erased_summary,
    lane_context,
    pending_tenant_run,
    plan_tenants,
    shared_store,
    tenant_key_uris,
)
from spark_kms.kms import KmsConfig, KmsConfigLike, KmsProvider
from spark_kms.kms.concurrent import bounded_map, check_kms_concurrency
from spark_kms.parquet import BatchDecryptor, EncryptedParquetWriter, EncryptionSpec
from spark_kms.parquet.dataset import Dataset
from spark_kms.parquet.join_domains import DEFAULT_DOMAIN, DOMAIN_CONTEXT_KEY, domain_key, read_join_keys
from spark_kms.parquet.keys import DekResolver
from spark_kms.storage import Location, StoragePath

__all__ = ["TEMP_SUFFIX", "journal_location", "journal_path", "pending_runs", "reencrypt_dataset", "target_options"]

logger = logging.getLogger(__name__)

_TEMP_TAG = "reencrypt"
#: suffix of the hidden temp file a re-encrypt writes next to each data file (``.<name>.<random>.reencrypt``)
TEMP_SUFFIX = f".{_TEMP_TAG}"
_TEMP_FILE = re.compile(r"^\..+\." + re.escape(_TEMP_TAG) + "$")
_BATCH_ROWS = 65_536
#: progress(file relpath, files done, files to do)
Progress = Callable[[str, int, int], None]


def reencrypt_dataset(
    path: StoragePath,
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
    storage_options: StorageOptions = None,
    batch_files: int | None = None,
    vacuum_retention_hours: float | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    kms_concurrency: int | None = None,
    subject_store: Any = None,
) -> RunSummary:
    """Re-encrypt the dataset at ``path`` with new data keys under the target key.

    A Delta or Iceberg table (its root, or ``iceberg://CATALOG/NAMESPACE.TABLE``) is re-encrypted by
    :func:`spark_kms.tables.reencrypt_table`: new files beside the old ones and one table commit per batch,
    never a file the table's log references rewritten (docs/TABLES.md). ``rotate_join_domain`` becomes its
    ``rotate_deterministic``; ``batch_files``, ``vacuum_retention_hours``, ``catalog_properties`` and
    ``table_options`` reach it. A plain directory that holds a table below it is refused.

    :param path: the dataset directory (a hive partition in it stands for its root): a local path,
        a storage URI (``s3://``, ``gs://``, ``abfs[s]://``, ``hdfs://``) or a
        :class:`~spark_kms.storage.Location`.
    :param key_uri: the target key. Default: the key the dataset's DEKs are wrapped by (all its
        DEKs must then share one key URI).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per key-URI scheme).
    :param spark: a Spark Connect session: the whole job runs on its server side, where the data is
        (in one Spark task: its KMS calls too; ``progress`` is then called once, at the end, here).
        Otherwise unused: files are rewritten by this process.
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
    :param storage_options: options of the store (:data:`spark_kms.storage.OPTION_NAMES`).
    :param batch_files: tables: commit every this many files (default one commit). A plain dataset
        replaces each file atomically on its own; there it changes nothing.
    :param vacuum_retention_hours: tables, opt-in: then vacuum / expire older snapshots with this retention
        (0: crypto-shredding after a compromise; docs/TABLES.md). A plain dataset keeps no older files
        (each is replaced in place): nothing to vacuum, the summary says so.
    :param catalog_properties: tables: the Iceberg catalog's properties.
    :param table_options: tables: the table library's own options.
    :param kms_concurrency: plain datasets: the old data keys of the next this many files are unwrapped
        concurrently (KMS Decrypt requests in flight, :mod:`spark_kms.kms.concurrent`) while files are
        rewritten one after the other; ``1``: each file's keys when it is read, as before. Default 16.
    :param subject_store: the subject key store of per-subject columns (a
        :class:`~spark_kms.subjects.SubjectKeyStore` or its URL; default ``$SPARK_KMS_SUBJECT_STORE``): their
        cells are decrypted and encrypted again with it. Cells of erased subjects (and of erased tenants) are
        written as null and counted (``details["erased_cells"]``).
    :returns: the run summary, also written to ``<path>/_spark_kms_runs/<run_id>.json``.
    :raises ConfigurationError: a pending run that this request does not match (the message names
        it and says how to resume or abandon it); a directory holding a Delta or Iceberg table below it.
    """
    refuse_table_arguments_over_connect(spark, "reencrypt", batch_files=batch_files,
                                        vacuum_retention_hours=vacuum_retention_hours,
                                        catalog_properties=catalog_properties, table_options=table_options)
    from spark_kms.spark.remote import is_connect, run_near_data

    if is_connect(spark):
        done = run_near_data(spark, reencrypt_dataset, path, key_uri=key_uri, kms_options=kms_options,
                             run_id=run_id, force=force, abandon=abandon, rotate_join_domain=rotate_join_domain,
                             join_domain_store=join_domain_store, storage_options=storage_options,
                             kms_concurrency=kms_concurrency, subject_store=subject_store)
        if progress is not None and done.files:
            progress("", done.files, done.files)
        return done
    del spark
    if table_format(path, storage_options):
        return _reencrypt_table(path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, force=force,
                                abandon=abandon, progress=progress, rotate_deterministic=rotate_join_domain,
                                join_domain_store=join_domain_store, batch_files=batch_files,
                                vacuum_retention_hours=vacuum_retention_hours, subject_store=subject_store,
                                table_kw=table_kwargs(storage_options, catalog_properties, table_options))
    concurrency = check_kms_concurrency(kms_concurrency)
    dataset = dataset_root(require_dataset(path, "reencrypt", storage_options))
    refuse_nested_tables(dataset, "reencrypt")
    base = KmsConfig.of(kms_options)
    with dataset_lock(dataset, "reencrypt"):
        if abandon is not None:
            if run_id is not None or key_uri is not None or force:
                raise ConfigurationError("reencrypt: abandon= gives up a run and starts none; "
                                         "pass it without run_id=, key_uri= or force=")
            return _abandon(dataset, validate_run_id(abandon), base)
        if run_id is None and key_uri is None:
            run_id = pending_tenant_run(dataset, force, base)
        journal, superseded = choose_run(dataset, run_id, key_uri, force, base)
        if journal is not None and journal["status"] == "succeeded":
            return _finished_summary(dataset, journal["run_id"])
        with RunRecorder("reencrypt", dataset, journal["run_id"] if journal else run_id,
                         secrets=_secret_strings(base)) as recorder:
            kms = base.with_request_tag(recorder.run_id)
            _run(dataset, recorder, journal, superseded, key_uri, kms, force, progress,
                 rotate_join_domain, join_domain_store, concurrency, subject_store)
            if vacuum_retention_hours is not None:
                recorder.summary.details["vacuum"] = (
                    "not needed: a plain dataset's re-encrypt replaced its files in place, no older copy is kept")
            return recorder.summary


def _reencrypt_table(path: Any, *, join_domain_store: str | None, table_kw: dict[str, Any],
                     **kwargs: Any) -> RunSummary:
    """:func:`reencrypt_dataset` of a Delta or Iceberg table: :func:`spark_kms.tables.reencrypt_table`."""
    from spark_kms import tables

    if join_domain_store is not None:
        raise ConfigurationError(
            f"reencrypt: {path} is a table: its deterministic columns keep the table's own key (rotate it with "
            "rotate_join_domain=True / --rotate-join-domain); join_domain_store= is for plain datasets"
        )
    summary: RunSummary = tables.reencrypt_table(path, **kwargs, **table_kw)
    return summary


def _secret_strings(kms: KmsConfig) -> list[str]:
    # KmsConfig.secret_values decodes bytes as UTF-8, which raw key bytes are not: those cannot
    # appear in a JSON record as text anyway, so masking does without them.
    try:
        return kms.secret_values()
    except UnicodeDecodeError:
        return [v for opts in kms.options().values() for v in opts.values() if isinstance(v, str) and v]


def _abandon(dataset: Location, run_id: str, kms: KmsConfig) -> RunSummary:
    journal = load_journal(journal_location(dataset, run_id))
    if journal is None:
        pending = [j["run_id"] for j in pending_runs(dataset)]
        raise ConfigurationError(
            f"reencrypt: dataset {dataset.uri!r} has no re-encrypt run {run_id!r} to abandon; "
            f"pending runs: {pending or 'none'}"
        )
    if journal.get("status") != "running":
        raise ConfigurationError(
            f"reencrypt: run {run_id} of {dataset.uri!r} is {journal.get('status')}, not pending: nothing to abandon"
        )
    by = requester(kms, journal["target_key_uri"])
    now = utc_now().isoformat()
    set_status(dataset, journal, "abandoned", abandoned_at=now, abandoned_by=by)
    _remove_stale_temps(dataset)
    done = sum(1 for state in journal["files"].values() if state == "done")
    record = runs_dir(dataset).join(f"{run_id}.json")
    try:
        summary = RunSummary.from_dict(read_json(record))
    except (OSError, ValueError, TypeError, AttributeError):
        summary = RunSummary(job="reencrypt", run_id=run_id, dataset=dataset.uri,
                             started_at=str(journal.get("started_at", "")))
    summary.status = "abandoned"
    summary.details.update({
        "target_key_uri": journal["target_key_uri"],
        "abandoned_at": now,
        "abandoned_by": by,
        "files_planned": len(journal["files"]),
        "files_done_before": done,
    })
    record.write_json_atomic(summary.to_dict())
    logger.warning("re-encrypt run %s of %s abandoned by %s: %d of %d files had been moved to %s and stay there",
                   run_id, dataset.uri, by["principal"], done, len(journal["files"]), journal["target_key_uri"])
    return summary


def _finished_summary(dataset: Location, run_id: str) -> RunSummary:
    try:
        return RunSummary.from_dict(read_json(runs_dir(dataset).join(f"{run_id}.json")))
    except (OSError, ValueError, TypeError, AttributeError):
        # The journal says done but the summary is gone: report a summary of nothing done now.
        return RunSummary(job="reencrypt", run_id=run_id, dataset=dataset.uri, status="succeeded",
                          details={"note": "run already finished; its summary file is missing"})


# --------------------------------------------------------------------------- the job


def _spec_of(table: KeyTable) -> EncryptionSpec:
    return EncryptionSpec.from_key_table(table)


def _context(entries: Mapping[str, DekEntry], algorithm: str, run_id: str) -> dict[str, str]:
    # Keep what the dataset's writer put in the context (dataset name, columns...), with this run's id.
    old = next((e.encryption_context for e in entries.values() if e.algorithm == algorithm), {})
    return {**{k: v for k, v in old.items() if k != RUN_ID_CONTEXT_KEY}, RUN_ID_CONTEXT_KEY: run_id}


def _done_by_footer(table: KeyTable, run_id: str) -> bool:
    # The file's own data keys name the run that made them. The deterministic (SIV) key is the join
    # domain's, made by no run, so it says nothing: a file with only such columns is told by the journal.
    own = [e for e in table.deks.values() if e.algorithm != AES_256_SIV]
    return bool(own) and all(e.encryption_context.get(RUN_ID_CONTEXT_KEY) == run_id for e in own)


def _run(
    dataset: Location,
    recorder: RunRecorder,
    journal: dict[str, Any] | None,
    superseded: Sequence[dict[str, Any]],
    key_uri: str | None,
    kms: KmsConfig,
    force: bool,
    progress: Progress | None,
    rotate_join_domain: bool = False,
    join_domain_store: str | None = None,
    concurrency: int = 1,
    subject_store: Any = None,
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
            write_journal(dataset, journal)
    else:
        summary.details["resumed"] = True
        journal.setdefault("resumed_by", []).append(
            {**requester(kms, journal["target_key_uri"]), "at": utc_now().isoformat()}
        )
        write_journal(dataset, journal)
    for old in superseded:
        # Same target, key and options: the old run's finished files are already where this run goes.
        set_status(dataset, old, "superseded", superseded_by=run_id, superseded_at=utc_now().isoformat())
        logger.info("re-encrypt run %s of %s superseded by run %s", old["run_id"], dataset.uri, run_id)
    summary.details["requested_by"] = journal.get("requested_by")
    tenant_uris = journal.get("tenant_keys")
    target = None if tenant_uris else kms.provider(journal["target_key_uri"])
    subject_store = shared_store(subject_store, keys.footers.values(), kms)
    det_entry = DekEntry.from_dict(journal["deterministic_entry"]) if journal.get("deterministic_entry") else None

    todo = [rel for rel, state in sorted(journal["files"].items()) if state != "done"]
    summary.details.update({
        "target_key_uri": None if tenant_uris else journal["target_key_uri"],
        **({"tenant_keys": tenant_uris, "erased_tenant_keys": journal.get("erased_tenant_keys", [])}
           if tenant_uris else {}),
        "files_total": len(keys.files),
        "files_planned": len(journal["files"]),
        "files_done_before": len(journal["files"]) - len(todo),
    })
    rows = deks = files = 0
    erased: dict[str, int] = {}
    for n, rel in enumerate(todo, start=1):
        if concurrency > 1 and (n - 1) % concurrency == 0:
            _prefetch_keys(keys, [dataset.join(r).uri for r in todo[n - 1:n - 1 + concurrency]], kms, concurrency)
        file = dataset.join(rel)
        footer = keys.footers.get(file.uri)
        if footer is None and not file.is_file():
            raise JobError(f"reencrypt: file {rel!r} of run {run_id} disappeared from {dataset.uri!r}")
        if footer is None or not _done_by_footer(footer, run_id):
            file_rows, file_deks = _reencrypt_file(file, keys, target, det_entry, run_id, kms,
                                                   tenant_uris=tenant_uris, subject_store=subject_store, erased=erased)
            logger.info("re-encrypted %s: %d rows under %d new data keys", rel, file_rows, file_deks)
            rows += file_rows
            deks += file_deks
            files += 1
        journal["files"][rel] = "done"
        write_journal(dataset, journal)
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
    summary.details.update(erased_summary(erased))
    summary.key_versions = key_versions_of(
        (e.key_id, e.key_version) for e in {d: kept.get(d, e) for d, e in used.items()}.values()
    )
    if journal["files"]:
        journal["status"] = "succeeded"
        journal["finished_at"] = utc_now().isoformat()
        write_journal(dataset, journal)


def _prefetch_keys(keys: Dataset, files: list[str], kms: KmsConfig, concurrency: int) -> None:
    """Unwrap the data keys of the next ``files`` (their effective key tables) with up to ``concurrency``
    KMS Decrypt requests in flight, into the process key cache the files' decryptors then read from: the
    same one Decrypt per data key, no longer one round trip after the other."""
    entries: dict[str, DekEntry] = {}
    for uri in files:
        if uri in keys.footers:
            entries.update(keys.effective_table(uri).deks)
    if len(entries) < 2:
        return
    resolver = DekResolver(entries, kms_options=kms, where=f"dataset {keys.location.uri if keys.location else ''}")

    def unwrap(entry: DekEntry) -> None:
        try:
            resolver.lookup(entry.dek_id_bytes)
        except KeyErasedError:  # an erased tenant's key: the file's decryptor reads its cells as null
            logger.debug("data key %s is erased (key %s): not prefetched", entry.dek_id, entry.key_uri)

    bounded_map(unwrap, list(entries.values()), concurrency=concurrency)


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
    recorded = read_join_keys(keys.location).get(name or DEFAULT_DOMAIN)
    if recorded is not None:
        recorded = keys.manifest.get(recorded.dek_id, recorded)  # rewrapped with the dataset
        if not rotate and recorded.key_uri == target_uri:
            return recorded  # keep the domain's key: its unwrap happens when files are rewritten
        if recorded.key_uri != target_uri and (name or DEFAULT_DOMAIN) == DEFAULT_DOMAIN:
            rotate = True  # the dataset moves to another key: its own join domain moves with it
    return domain_key(keys.location, key_uri=target_uri, kms_options=kms, domain=name, store=store, rotate=rotate)


def _plan(
    keys: Dataset, kms: KmsConfig, run_id: str, key_uri: str | None, force: bool,
    rotate_join_domain: bool = False, join_domain_store: str | None = None,
) -> dict[str, Any]:
    tenants = tenant_key_uris(keys.effective_deks().values(), f"dataset {keys.location.uri if keys.location else ''}")
    if tenants is not None:
        return plan_tenants(keys, kms, run_id, key_uri, force, tenants)
    target = target_uri(keys, key_uri)
    description = kms.describe(target)

    def current(e: DekEntry) -> bool:
        return e.key_id == description.key_id and e.key_version == description.primary_version

    spec_needs_det = any(_spec_of(t).needs_deterministic_key for t in keys.footers.values() if t.columns)
    det_entry = None
    if spec_needs_det:
        # Deterministic columns keep their join domain's key (equal values stay equal across this
        # dataset and every dataset of its domain) unless the domain key itself is rotated.
        det_entry = _join_domain_key(keys, kms, target, rotate_join_domain, join_domain_store)

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
        "target_key_uri": target,
        "target_key_id": description.key_id,
        "target_key_version": description.primary_version,
        "target_options": target_options(kms, target),
        "force": bool(force),
        "requested_by": requester(kms, target),
        "deterministic_entry": det_entry.to_dict() if det_entry else None,
        "rotate_join_domain": bool(rotate_join_domain),
        "files": {keys.relpath(f): "pending" for f in behind},
    }


def _reencrypt_file(
    file: Location,
    keys: Dataset,
    target: KmsProvider | None,
    det_entry: DekEntry | None,
    run_id: str,
    kms: KmsConfig,
    *,
    tenant_uris: Mapping[str, str] | None = None,
    subject_store: Any = None,
    erased: dict[str, int] | None = None,
) -> tuple[int, int]:
    """Rewrite one file with new DEKs, whole under the same name (module docstring). Returns (rows, new DEKs).

    ``tenant_uris``: per-tenant data -- each tenant's new data keys under its own key URI. Erased cells are
    written as null and added to ``erased`` (column -> cells).
    """
    footer = keys.footers[file.uri]
    table = keys.effective_table(file.uri)
    spec = _spec_of(footer)
    index_columns = [n for n, s in footer.columns.items() if s.algorithm == HMAC_SHA256_BIDX]
    decryptor = BatchDecryptor(table, kms_options=kms, subject_store=subject_store)
    lanes = TenantLanes(table, tenant_uris) if tenant_uris else None
    context = _context(footer.deks, AES_256_GCM, run_id)
    temp = temp_sibling(file, _TEMP_TAG)
    try:
        with file.open_input_file() as source:
            parquet = pq.ParquetFile(source)
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
            common: dict[str, Any] = {"encryption_context": context, "deterministic_entry": det_entry,
                                      "kms_options": kms, "write_empty": True, "metadata": extra,
                                      "subject_store": subject_store}
            if lanes is not None:
                common["encryption_context"] = lane_context(context)
                writer: EncryptedParquetWriter = TenantParquetWriter(temp, plain_schema, spec, lanes=lanes, **common)
            else:
                writer = EncryptedParquetWriter(temp, plain_schema, spec, target, **common)
            with writer:
                for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=keep):
                    plain = decryptor.decrypt_batch(batch, where=f"file {file.uri}")
                    if isinstance(writer, TenantParquetWriter):
                        writer.write_lanes(plain, lanes.tenants(batch, spec.randomized))  # type: ignore[union-attr]
                    else:
                        writer.write_batch(plain)
            if erased is not None:
                count_erased(erased, decryptor, getattr(writer._encryptor, "erased_on_write", 0),
                             spec.randomized if spec.subject_column else ())
        new_deks = sum(1 for e in writer.key_table.deks.values() if e.algorithm == AES_256_GCM)
        publish_file(temp, file)
    except BaseException:
        temp.delete_file()
        raise
    return writer.rows, new_deks


def _remove_stale_temps(dataset: Location) -> None:
    # Left by a killed run (we hold the dataset lock: no live run owns them). Hidden, so readers never saw them.
    for entry in dataset.list_files(include_hidden=True):
        if _TEMP_FILE.match(entry.location.name):
            logger.info("removing %s, the temp file of a re-encrypt that was killed", entry.location.uri)
            entry.location.delete_file()
