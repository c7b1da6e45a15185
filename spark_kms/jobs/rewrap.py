"""Rewrap: every data key of a dataset ends up wrapped by the target key's primary version.

No cell is touched. For each DEK not yet wrapped by the target version, the KMS
re-wraps the wrapped bytes (server-side ReEncrypt where the backend has it; the
provider falls back to Decrypt + Encrypt otherwise), so KMS work grows with the
number of DEKs, never with rows.

Where the new wraps go: Parquet files are immutable, so the footer copy is *not*
rewritten. The new entries go to the dataset manifest ``_spark_kms_keys.json``
(``spark_kms.crypto.encode_manifest``), whose entries take precedence over footer
entries with the same dek_id. The manifest is replaced atomically (temp + fsync +
``os.replace`` on a local disk; one PUT on an object store, where a reader sees the whole old or
the whole new manifest and data objects are never written) and merged with any manifest
already there.

Concurrent: up to ``kms_concurrency`` KMS requests are in flight
(:mod:`spark_kms.kms.concurrent`; Vault Transit rewraps in ``batch_input`` batches), each retried
by its provider when throttled; the manifest entries do not depend on the order calls finish in.

Resumable and idempotent: progress is flushed to the manifest every
``flush_every`` DEKs (no more often than ten times the last write's duration, so a
manifest of 100,000 entries is not rewritten every 100), and when the job stops on an error; a DEK already
wrapped by the target version is skipped, so a re-run after a crash finishes the
rest, and a re-run after success makes no ReEncrypt call (only one DescribeKey
per distinct target key).

Erased keys (crypto-shredding, docs/ERASURE.md): a DEK whose KMS key is scheduled for deletion or
destroyed -- a tenant's key after :func:`spark_kms.erasure.erase_tenant` -- can never be rewrapped. Such
DEKs are skipped and counted (``details["deks_erased"]``, ``details["erased_key_uris"]``); the job does
not fail and the manifest keeps their old entries (nothing can unwrap them any more). A dataset whose DEKs
are under several keys (one per tenant) has each DEK rewrapped under its own key's primary version.

Trade-offs (docs/ROTATION.md): the stale footer wraps stay decryptable by the old
key version until that version is disabled or destroyed, and the manifest must
travel with the dataset (copy the directory, not only the ``*.parquet`` files).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spark_kms.crypto import DekEntry
from spark_kms.errors import ConfigurationError, KeyErasedError, KmsError
from spark_kms.jobs._common import StorageOptions, dataset_root, require_dataset
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._summary import RunRecorder, RunSummary, key_versions_of
from spark_kms.jobs._tables import (
    refuse_table_arguments_over_connect,
    reject_table_arguments,
    table_format,
    table_kwargs,
)
from spark_kms.kms import KeyDescription, KmsConfig, KmsConfigLike, WrappedKey
from spark_kms.kms.concurrent import bounded_map, check_kms_concurrency
from spark_kms.parquet.dataset import Dataset
from spark_kms.storage import StoragePath

__all__ = ["rewrap_dataset", "rewrap_group", "rewrap_plan"]

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_EVERY = 100


def rewrap_dataset(
    path: StoragePath,
    *,
    key_uri: str | None = None,
    kms_options: KmsConfigLike = None,
    run_id: str | None = None,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    progress: Callable[[str, int, int], None] | None = None,
    spark: Any = None,
    storage_options: StorageOptions = None,
    include_history: bool = False,
    catalog_properties: Mapping[str, str] | None = None,
    table_options: Mapping[str, str] | None = None,
    kms_concurrency: int | None = None,
) -> RunSummary:
    """Rewrap every DEK of the dataset at ``path`` under the primary version of the target key.

    A Delta or Iceberg table (its root, or ``iceberg://CATALOG/NAMESPACE.TABLE``) is rewrapped by
    :func:`spark_kms.tables.rewrap_table`: the new wraps go to the table key manifest, set by one
    property-only commit (docs/TABLES.md); ``flush_every`` does not apply, ``progress`` is called once at
    the end, and ``include_history``, ``catalog_properties`` and ``table_options`` reach it.

    With ``spark`` a Spark Connect session, the whole job runs on its server side, where the data
    is (in one Spark task: the ReEncrypt / Decrypt calls too); ``progress`` is then called once,
    at the end, on the caller's side.

    :param path: the dataset directory (or a hive partition in it: the DEKs of its files): a local
        path, a storage URI (``s3://``, ``gs://``, ``abfs[s]://``, ``hdfs://``) or a
        :class:`~spark_kms.storage.Location`. The lock and the run record are the dataset root's.
    :param key_uri: the target key (another key, even another provider). Default: each DEK's own
        key URI, i.e. the same key's current primary version.
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per key-URI scheme).
    :param run_id: the run id (default: a new one); names ``_spark_kms_runs/<run_id>.json``.
    :param flush_every: write the manifest after this many rewrapped DEKs (progress a kill keeps).
    :param progress: called as DEKs are processed with (next DEK id, DEKs done, DEKs in all), and once at the end.
    :param storage_options: options of the store (:data:`spark_kms.storage.OPTION_NAMES`).
    :returns: the run summary, also written to ``<path>/_spark_kms_runs/<run_id>.json``.
    :raises KmsError: a DEK could not be rewrapped (progress so far is kept in the manifest).
    :param include_history: tables only: also rewrap the data keys of files older versions still reference.
    :param kms_concurrency: KMS requests kept in flight (default
        :data:`~spark_kms.kms.concurrent.DEFAULT_KMS_CONCURRENCY`, ``1``: one at a time). Throttled
        requests are retried by the provider with backoff; the first error that persists stops the job
        (the DEKs rewrapped by then are kept in the manifest). Vault Transit rewraps in batches
        (``batch_input``), each batch one request.
    :raises JobError: another rotation job holds the dataset's lock.
    """
    refuse_table_arguments_over_connect(spark, "rewrap", include_history=include_history or None,
                                        catalog_properties=catalog_properties, table_options=table_options)
    from spark_kms.spark.remote import is_connect, run_near_data

    if is_connect(spark):
        done = run_near_data(spark, rewrap_dataset, path, key_uri=key_uri, kms_options=kms_options,
                             run_id=run_id, flush_every=flush_every, storage_options=storage_options,
                             kms_concurrency=kms_concurrency)
        total = int(done.details.get("deks_total") or 0)
        if progress is not None and total:
            progress("", total, total)
        return done
    if not isinstance(flush_every, int) or flush_every < 1:
        raise ConfigurationError(f"flush_every must be a positive integer, got {flush_every!r}")
    concurrency = check_kms_concurrency(kms_concurrency)
    if table_format(path, storage_options):
        from spark_kms import tables

        summary: RunSummary = tables.rewrap_table(
            path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, include_history=include_history,
            kms_concurrency=concurrency, **table_kwargs(storage_options, catalog_properties, table_options))
        total = int(summary.details.get("deks_total") or 0)
        if progress is not None and total:
            progress("", total, total)
        return summary
    reject_table_arguments("rewrap", path, include_history=include_history or None)
    dataset = require_dataset(path, "rewrap", storage_options)
    root = dataset_root(dataset)
    with dataset_lock(root, "rewrap"), RunRecorder("rewrap", root, run_id) as recorder:
        summary = recorder.summary
        keys = Dataset.open(dataset, job="rewrap")
        kms = KmsConfig.of(kms_options).with_request_tag(recorder.run_id)
        before = keys.effective_deks()
        summary.key_versions_before = key_versions_of((e.key_id, e.key_version) for e in before.values())
        summary.details["target_key_uri"] = key_uri
        # Start from the whole existing manifest minus entries no footer references: those open nothing.
        manifest = {d: e for d, e in keys.manifest.items() if d in before}
        pruned = len(keys.manifest) - len(manifest)
        rewrapped: list[str] = []
        erased: set[str] = set()
        # One DescribeKey per distinct target key (KmsConfig keeps it), then the DEKs behind it.
        todo = rewrap_plan(before, key_uri, kms, concurrency, erased=erased)
        skipped = len(before) - sum(len(group) for group in todo.values()) - len(erased)
        flusher = _Flusher(keys, manifest, kms, flush_every)
        try:
            for (source_uri, target_uri), group in sorted(todo.items()):

                def done(dek_id: str, entry: DekEntry, wrapped: WrappedKey, target_uri: str = target_uri) -> None:
                    manifest[dek_id] = entry.replace(key_uri=target_uri, key_id=wrapped.key_id,
                                                     key_version=wrapped.key_version, wrapped_dek=wrapped.ciphertext)
                    logger.debug("rewrapped data key %s: key %s version %s -> version %s", dek_id, entry.key_id,
                                 entry.key_version, wrapped.key_version)
                    rewrapped.append(dek_id)
                    if progress is not None:
                        progress(dek_id, skipped + len(rewrapped) + len(erased), len(before))
                    flusher.one_more()

                try:
                    erased.update(rewrap_group(kms, source_uri, target_uri, group, concurrency, done))
                except KmsError as exc:
                    index = getattr(exc, "item_index", None)
                    failed = group[index][0] if isinstance(index, int) and 0 <= index < len(group) else "-"
                    logger.warning("rewrap of %s stopped at data key %s (key %s): %s; %d data keys were "
                                   "rewrapped and are kept", root.uri, failed, source_uri, exc, len(rewrapped))
                    raise
        finally:
            # Keep the progress made even when a DEK fails: the DEKs done are done.
            if flusher.unflushed or pruned:
                keys.write_manifest(manifest, kms_options=kms)
        rewrapped.sort()
        if progress is not None and before:
            progress("", len(before), len(before))
        after = {d: manifest.get(d, e) for d, e in before.items()}
        touched = keys.files_of(rewrapped)
        summary.deks = len(rewrapped)
        summary.files = len(touched)
        summary.rows = keys.rows_of(touched)
        summary.key_versions = key_versions_of((e.key_id, e.key_version) for e in after.values())
        summary.details.update(
            {"deks_total": len(before), "deks_skipped": skipped, "manifest_entries_pruned": pruned,
             "files_total": len(keys.files), **erased_details(before, erased)}
        )
        return summary


def rewrap_plan(
    entries: Mapping[str, DekEntry], key_uri: str | None, kms: KmsConfig, concurrency: int,
    *, erased: set[str] | None = None,
) -> dict[tuple[str, str], list[tuple[str, DekEntry]]]:
    """The data keys that need a rewrap, grouped by (source key URI, target key URI), in DEK-id order.

    One DescribeKey per distinct target key (at most ``concurrency`` at a time); a DEK already wrapped by the
    target's primary version is left out, and so is a DEK whose own key the KMS describes as erased (scheduled
    for deletion or destroyed: it can never be rewrapped) when it is rewrapped under its own key (no
    ``key_uri``): its id goes to ``erased``. Shared by the dataset and the table rewrap.
    """
    target_uris = sorted({key_uri or e.key_uri for e in entries.values()})
    described = dict(zip(target_uris, bounded_map(lambda uri: _describe(kms, uri), target_uris,
                                                  concurrency=concurrency), strict=True))
    todo: dict[tuple[str, str], list[tuple[str, DekEntry]]] = {}
    for dek_id, entry in sorted(entries.items()):
        target_uri = key_uri or entry.key_uri
        target = described[target_uri]
        if target is None or target.erased:
            if key_uri is None:
                if erased is not None:
                    erased.add(dek_id)
                continue
            raise ConfigurationError(
                f"rewrap: the target key {key_uri} is scheduled for deletion or destroyed; choose another key")
        if not (entry.key_id == target.key_id and entry.key_version == target.primary_version):
            todo.setdefault((entry.key_uri, target_uri), []).append((dek_id, entry))
    for uri in sorted({u for u, d in described.items() if d is None or d.erased}):
        logger.warning("KMS key %s is erased (scheduled for deletion or destroyed): its data keys cannot be "
                       "rewrapped and are skipped", uri)
    return todo


def _describe(kms: KmsConfig, key_uri: str) -> KeyDescription | None:
    """The key's description; None when the KMS refuses to describe it because it is erased."""
    try:
        return kms.describe(key_uri)
    except KeyErasedError:
        return None


def _source_erased(kms: KmsConfig, source_uri: str) -> bool:
    """Whether the KMS says the key ``source_uri`` is erased now (a fresh DescribeKey: not the cached one)."""
    try:
        return kms.provider(source_uri).describe_key().erased
    except KeyErasedError:
        return True
    except KmsError:
        return False


def rewrap_group(
    kms: KmsConfig,
    source_uri: str,
    target_uri: str,
    group: Sequence[tuple[str, DekEntry]],
    concurrency: int,
    done: Callable[[str, DekEntry, WrappedKey], None],
) -> list[str]:
    """Rewrap the data keys ``group`` (all under ``source_uri``) under ``target_uri``'s primary version,
    calling ``done(dek_id, entry, new wrap)`` in this thread as each one is rewrapped.

    :returns: the DEK ids left as they were because their source key turned out erased (KeyErasedError on
        ReEncrypt, the source key described as erased): they can never be rewrapped.
    :raises KmsError: any other failure, and an erased *target* key.
    """
    source, destination = kms.provider(source_uri), kms.provider(target_uri)
    finished: set[int] = set()

    def on_result(i: int, wrapped: WrappedKey) -> None:
        finished.add(i)
        dek_id, entry = group[i]
        done(dek_id, entry, wrapped)

    try:
        # The context is part of the DEK's identity: readers send it on Decrypt, so it stays.
        source.reencrypt_many(
            [(WrappedKey(e.wrapped_dek, e.key_id, e.key_version), e.encryption_context) for _, e in group],
            destination=None if destination is source else destination,
            concurrency=concurrency, on_result=on_result,
        )
    except KeyErasedError:
        if source_uri != target_uri and not _source_erased(kms, source_uri):
            raise  # the target key is the erased one: nothing can be rewrapped under it
        left = [group[i][0] for i in range(len(group)) if i not in finished]
        logger.warning("KMS key %s is erased (scheduled for deletion or destroyed): %d of its data keys cannot "
                       "be rewrapped and are skipped", source_uri, len(left))
        return left
    return []


def erased_details(entries: Mapping[str, DekEntry], erased: set[str]) -> dict[str, Any]:
    """The run summary's account of the DEKs skipped because their key is erased."""
    return {"deks_erased": len(erased),
            "erased_key_uris": sorted({entries[d].key_uri for d in erased if d in entries})}


class _Flusher:
    """Writes the manifest every ``flush_every`` rewrapped DEKs -- but never more often than ten times
    what the last write took after it, so rewriting a manifest that grows with the dataset (a
    100,000-DEK manifest is tens of MB, and an authenticated one costs a GenerateDataKey per write)
    stays a small share of the job."""

    def __init__(self, keys: Dataset, manifest: dict[str, DekEntry], kms: KmsConfig, flush_every: int) -> None:
        self.keys, self.manifest, self.kms, self.flush_every = keys, manifest, kms, flush_every
        self.unflushed = 0
        self._next_at = 0.0

    def one_more(self) -> None:
        self.unflushed += 1
        if self.unflushed >= self.flush_every and time.monotonic() >= self._next_at:
            started = time.monotonic()
            self.keys.write_manifest(self.manifest, kms_options=self.kms)
            ended = time.monotonic()
            self.unflushed = 0
            self._next_at = ended + 10 * (ended - started)
