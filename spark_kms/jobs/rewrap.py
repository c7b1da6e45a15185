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

Resumable and idempotent: progress is flushed to the manifest every
``flush_every`` DEKs (and when the job stops on an error), and a DEK already
wrapped by the target version is skipped, so a re-run after a crash finishes the
rest, and a re-run after success makes no ReEncrypt call (only one DescribeKey
per distinct target key).

Trade-offs (docs/ROTATION.md): the stale footer wraps stay decryptable by the old
key version until that version is disabled or destroyed, and the manifest must
travel with the dataset (copy the directory, not only the ``*.parquet`` files).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from spark_kms.crypto import DekEntry
from spark_kms.errors import ConfigurationError
from spark_kms.jobs._common import StorageOptions, dataset_root, file_rows, require_dataset
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._summary import RunRecorder, RunSummary, key_versions_of
from spark_kms.jobs._tables import (
    refuse_table_arguments_over_connect,
    reject_table_arguments,
    table_format,
    table_kwargs,
)
from spark_kms.kms import KmsConfig, KmsConfigLike, WrappedKey
from spark_kms.parquet.dataset import Dataset
from spark_kms.storage import StoragePath

__all__ = ["rewrap_dataset"]

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
    :raises JobError: another rotation job holds the dataset's lock.
    """
    refuse_table_arguments_over_connect(spark, "rewrap", include_history=include_history or None,
                                        catalog_properties=catalog_properties, table_options=table_options)
    from spark_kms.spark.remote import is_connect, run_near_data

    if is_connect(spark):
        done = run_near_data(spark, rewrap_dataset, path, key_uri=key_uri, kms_options=kms_options,
                             run_id=run_id, flush_every=flush_every, storage_options=storage_options)
        total = int(done.details.get("deks_total") or 0)
        if progress is not None and total:
            progress("", total, total)
        return done
    if not isinstance(flush_every, int) or flush_every < 1:
        raise ConfigurationError(f"flush_every must be a positive integer, got {flush_every!r}")
    if table_format(path, storage_options):
        from spark_kms import tables

        summary: RunSummary = tables.rewrap_table(
            path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, include_history=include_history,
            **table_kwargs(storage_options, catalog_properties, table_options))
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
        skipped = 0
        unflushed = 0
        try:
            for n, (dek_id, entry) in enumerate(sorted(before.items()), start=1):
                if progress is not None and n > 1:
                    progress(dek_id, n - 1, len(before))
                target_uri = key_uri or entry.key_uri
                target = kms.describe(target_uri)
                if entry.key_id == target.key_id and entry.key_version == target.primary_version:
                    skipped += 1
                    continue
                manifest[dek_id] = _rewrap_one(entry, target_uri, kms)
                logger.debug("rewrapped data key %s: key %s version %s -> version %s", dek_id, entry.key_id,
                             entry.key_version, manifest[dek_id].key_version)
                rewrapped.append(dek_id)
                unflushed += 1
                if unflushed >= flush_every:
                    keys.write_manifest(manifest, kms_options=kms)
                    unflushed = 0
        finally:
            # Keep the progress made even when a DEK fails: its predecessors are done.
            if unflushed or pruned:
                keys.write_manifest(manifest, kms_options=kms)
        if progress is not None and before:
            progress("", len(before), len(before))
        after = {d: manifest.get(d, e) for d, e in before.items()}
        touched = keys.files_of(rewrapped)
        summary.deks = len(rewrapped)
        summary.files = len(touched)
        summary.rows = sum(file_rows(keys.file_location(f)) for f in touched)
        summary.key_versions = key_versions_of((e.key_id, e.key_version) for e in after.values())
        summary.details.update(
            {"deks_total": len(before), "deks_skipped": skipped, "manifest_entries_pruned": pruned,
             "files_total": len(keys.files)}
        )
        return summary


def _rewrap_one(entry: DekEntry, target_uri: str, kms: KmsConfig) -> DekEntry:
    source = kms.provider(entry.key_uri)
    destination = kms.provider(target_uri)
    wrapped = source.reencrypt(
        WrappedKey(entry.wrapped_dek, entry.key_id, entry.key_version),
        entry.encryption_context,
        # The context is part of the DEK's identity: readers send it on Decrypt, so it must not change.
        destination=None if destination is source else destination,
        destination_context=entry.encryption_context,
    )
    return entry.replace(
        key_uri=target_uri, key_id=wrapped.key_id, key_version=wrapped.key_version, wrapped_dek=wrapped.ciphertext
    )
