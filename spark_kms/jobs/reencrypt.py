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
the target, the run's deterministic DEK entry (wrapped only) and each file's state,
flushed atomically after every file. After a crash (even SIGKILL) every file is
either old or new, both readable; a re-run (same ``run_id``, or none: the latest
unfinished journal is resumed) skips files already done -- by the journal, or by
the footer itself (its DEKs carry this run's id in their encryption context),
which covers a kill between the rename and the journal write. A re-run after
success does nothing: with the same run id, no KMS call at all; with a new run
id, one DescribeKey and no other KMS call. Manifest entries of DEKs no file uses
any more are pruned at the end.

``spark`` is accepted for API symmetry; files are processed by this process, one
at a time, streaming batch by batch (memory stays flat).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
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
from spark_kms.errors import ConfigurationError, JobError
from spark_kms.jobs._common import require_dataset_dir
from spark_kms.jobs._lock import dataset_lock
from spark_kms.jobs._summary import (
    RUN_ID_CONTEXT_KEY,
    RunRecorder,
    RunSummary,
    key_versions_of,
    runs_dir,
    utc_now,
)
from spark_kms.kms import KmsConfig, KmsConfigLike, KmsProvider
from spark_kms.parquet import BatchDecryptor, EncryptedParquetWriter, EncryptionSpec, new_deterministic_entry
from spark_kms.parquet.dataset import Dataset

__all__ = ["journal_path", "reencrypt_dataset"]

logger = logging.getLogger(__name__)

_TEMP_TAG = "reencrypt"
_BATCH_ROWS = 65_536
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
    progress: Progress | None = None,
) -> RunSummary:
    """Re-encrypt the dataset at ``path`` with new data keys under the target key.

    :param path: the dataset directory.
    :param key_uri: the target key. Default: the key the dataset's DEKs are wrapped by (all its
        DEKs must then share one key URI).
    :param kms_options: how to reach each KMS (a :class:`~spark_kms.kms.KmsConfig`, or options per key-URI scheme).
    :param spark: accepted for API symmetry; unused (files are rewritten by this process).
    :param run_id: resume this run if its journal exists (a finished run: returns its summary,
        no KMS call); default: resume the latest unfinished re-encrypt run, else start a new one.
    :param force: re-encrypt every file even if its DEKs are already wrapped by the target's primary
        version (e.g. a data key is suspected exposed).
    :param progress: called after each file with (file, files done, files to do).
    :returns: the run summary, also written to ``<path>/_spark_kms_runs/<run_id>.json``.
    """
    del spark
    dataset = require_dataset_dir(path, "reencrypt")
    with dataset_lock(dataset, "reencrypt"):
        journal = _find_journal(dataset, run_id)
        if journal is not None and journal["status"] == "succeeded":
            return _finished_summary(dataset, journal["run_id"])
        with RunRecorder("reencrypt", dataset, journal["run_id"] if journal else run_id) as recorder:
            kms = KmsConfig.of(kms_options).with_request_tag(recorder.run_id)
            _run(dataset, recorder, journal, key_uri, kms, force, progress)
            return recorder.summary


# --------------------------------------------------------------------------- journal


def _find_journal(dataset: Path, run_id: str | None) -> dict[str, Any] | None:
    if run_id is not None:
        path = journal_path(dataset, run_id)
        return _load_journal(path) if path.exists() else None
    for path in sorted(runs_dir(dataset).glob("*.state.json"), reverse=True):
        journal = _load_journal(path)
        if journal.get("job") == "reencrypt" and journal.get("status") == "running":
            return journal
    return None


def _load_journal(path: Path) -> dict[str, Any]:
    try:
        journal = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(
            f"reencrypt: journal {str(path)!r} is unreadable ({type(exc).__name__}); "
            "it is written atomically, so it was edited by hand: restore or remove it"
        ) from None
    if not isinstance(journal, dict) or not isinstance(journal.get("files"), dict) or "run_id" not in journal:
        raise JobError(f"reencrypt: journal {str(path)!r} is not a re-encrypt journal")
    return journal


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
    columns, deterministic, blind = [], [], {}
    for name, spec in table.columns.items():
        if spec.algorithm == AES_256_GCM:
            columns.append(name)
        elif spec.algorithm == AES_256_SIV:
            deterministic.append(name)
        elif spec.algorithm == HMAC_SHA256_BIDX and spec.source is not None:
            blind[spec.source] = name
    return EncryptionSpec(columns=columns, deterministic=deterministic, blind_index=blind)


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
    key_uri: str | None,
    kms: KmsConfig,
    force: bool,
    progress: Progress | None,
) -> None:
    summary = recorder.summary
    run_id = recorder.run_id
    _remove_stale_temps(dataset)
    keys = Dataset.open(dataset, job="reencrypt")
    summary.key_versions_before = key_versions_of(
        (e.key_id, e.key_version) for e in keys.effective_deks().values()
    )
    if journal is None:
        journal = _plan(keys, kms, run_id, key_uri, force)
        if journal["files"]:
            atomic_write_json(journal_path(dataset, run_id), journal)
    else:
        summary.details["resumed"] = True
        if key_uri and key_uri != journal["target_key_uri"]:
            raise ConfigurationError(
                f"reencrypt: run {run_id} targets {journal['target_key_uri']}, not {key_uri}; "
                "finish it first (run again without --key-uri), then start a new run"
            )
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
    final = Dataset.open(dataset, job="reencrypt")
    used = final.footer_deks()
    kept = {d: e for d, e in final.manifest.items() if d in used}
    summary.details["manifest_entries_pruned"] = len(final.manifest) - len(kept)
    if len(kept) != len(final.manifest):
        final.write_manifest(kept)
    summary.rows, summary.deks, summary.files = rows, deks, files
    summary.key_versions = key_versions_of(
        (e.key_id, e.key_version) for e in {d: kept.get(d, e) for d, e in used.items()}.values()
    )
    if journal["files"]:
        journal["status"] = "succeeded"
        journal["finished_at"] = utc_now().isoformat()
        atomic_write_json(journal_path(dataset, run_id), journal)


def _plan(keys: Dataset, kms: KmsConfig, run_id: str, key_uri: str | None, force: bool) -> dict[str, Any]:
    target_uri = _target_uri(keys, key_uri)
    description = kms.describe(target_uri)

    def current(e: DekEntry) -> bool:
        return e.key_id == description.key_id and e.key_version == description.primary_version

    behind = [f for f in keys.files if force or not all(current(e) for e in keys.footers[f].deks.values())]
    spec_needs_det = any(_spec_of(t).needs_deterministic_key for t in keys.footers.values() if t.columns)
    if behind and spec_needs_det:
        behind = list(keys.files)  # one shared deterministic DEK per dataset: all files or none
    det_entry = None
    if behind and spec_needs_det:
        det_entry = new_deterministic_entry(
            kms.provider(target_uri), _context(keys.footer_deks(), AES_256_SIV, run_id)
        )
    return {
        "job": "reencrypt",
        "run_id": run_id,
        "status": "running",
        "started_at": utc_now().isoformat(),
        "target_key_uri": target_uri,
        "target_key_id": description.key_id,
        "target_key_version": description.primary_version,
        "deterministic_entry": det_entry.to_dict() if det_entry else None,
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
