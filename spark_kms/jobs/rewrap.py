"""Rewrap: every data key of a dataset ends up wrapped by the target key's primary version.

No cell is touched. For each DEK not yet wrapped by the target version, the KMS
re-wraps the wrapped bytes (server-side ReEncrypt where the backend has it; the
provider falls back to Decrypt + Encrypt otherwise), so KMS work grows with the
number of DEKs, never with rows.

Where the new wraps go: Parquet files are immutable, so the footer copy is *not*
rewritten. The new entries go to the dataset manifest ``_spark_kms_keys.json``
(``spark_kms.crypto.encode_manifest``), whose entries take precedence over footer
entries with the same dek_id. The manifest is replaced atomically (temp + fsync +
``os.replace``) and merged with any manifest already there.

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
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from spark_kms.crypto import DekEntry
from spark_kms.errors import ConfigurationError
from spark_kms.jobs._common import require_dataset_dir
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._summary import RunRecorder, RunSummary, key_versions_of
from spark_kms.kms import KmsConfig, KmsConfigLike, WrappedKey
from spark_kms.parquet.dataset import Dataset

__all__ = ["rewrap_dataset"]

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_EVERY = 100


def rewrap_dataset(
    path: str | Path,
    *,
    key_uri: str | None = None,
    kms_options: KmsConfigLike = None,
    run_id: str | None = None,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    progress: Callable[[str, int, int], None] | None = None,
) -> RunSummary:
    """Rewrap every DEK of the dataset at ``path`` under the primary version of the target key.

    :param path: the dataset directory.
    :param key_uri: the target key (another key, even another provider). Default: each DEK's own
        key URI, i.e. the same key's current primary version.
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per key-URI scheme).
    :param run_id: the run id (default: a new one); names ``_spark_kms_runs/<run_id>.json``.
    :param flush_every: write the manifest after this many rewrapped DEKs (progress a kill keeps).
    :param progress: called as DEKs are processed with (next DEK id, DEKs done, DEKs in all), and once at the end.
    :returns: the run summary, also written to ``<path>/_spark_kms_runs/<run_id>.json``.
    :raises KmsError: a DEK could not be rewrapped (progress so far is kept in the manifest).
    """
    if not isinstance(flush_every, int) or flush_every < 1:
        raise ConfigurationError(f"flush_every must be a positive integer, got {flush_every!r}")
    dataset = require_dataset_dir(path, "rewrap")
    with dataset_lock(dataset, "rewrap"), RunRecorder("rewrap", dataset, run_id) as recorder:
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
        summary.rows = sum(pq.read_metadata(f).num_rows for f in touched)
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
