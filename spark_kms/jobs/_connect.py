"""The dataset jobs that run Spark -- encrypt and decrypt -- over Spark Connect.

:func:`~spark_kms.jobs.encrypt_dataset` and :func:`~spark_kms.jobs.decrypt_dataset` hand a Spark
Connect session to this module. The client drives Spark (the source read and the ``spark_kms``
write; the decrypting read and the plaintext write); every step that touches the datasets' files
runs on the server side, where they are (:func:`spark_kms.spark.remote.run_near_data`):

* the checks of source and destination (they exist, are directories, neither contains the other);
* decrypt's footers (rows, files, data keys: no KMS call) and the replacement of its destination:
  Spark writes the plaintext into a hidden staging directory beside the destination
  (``.<name>.spark_kms-connect-<token>``), which is moved into the staging of
  :func:`spark_kms.jobs._replace.staged_replacement` (under its lock) and swapped in only once
  complete -- renames on a local disk, object copies on an object store; a failed write removes
  it and leaves the destination as it was;
* the run record in ``<dataset>/_spark_kms_runs/``: the summary is made here by a
  :class:`~spark_kms.jobs._summary.RunRecorder` (its record first written to a temporary directory of
  this process: counts, ids and the error line, never key material or values) and stored there.

One difference from a classic session: decrypt holds the destination's lock for the swap only,
not during the Spark write (no process on the server side lives that long). Another Spark Connect
decrypt into the same destination that swaps meanwhile removes this one's output directory as a
killed job's leftover; this one then fails at its swap, with its destination untouched. (Every
swap removes those leftovers: a killed job's plaintext does not stay beside the destination.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spark_kms.errors import ConfigurationError, JobError
from spark_kms.jobs._common import StorageOptions, locate, require_dataset
from spark_kms.jobs._replace import staged_replacement
from spark_kms.jobs._summary import RunRecorder, RunSummary, key_versions_of
from spark_kms.jobs.transfer import _read_source, _separate
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.parquet.dataset import Dataset
from spark_kms.spark.remote import run_near_data
from spark_kms.storage import Location, resolve

__all__ = ["decrypt_over_connect", "encrypt_over_connect"]

logger = logging.getLogger(__name__)


# -- on the server side ----------------------------------------------------------------------


def _encrypt_paths(source: Any, destination: Any, storage_options: StorageOptions) -> tuple[str, str]:
    src = locate(source, "encrypt", storage_options)
    if not src.is_dir() and not src.is_file():
        raise ConfigurationError(f"encrypt: source {str(source)!r} does not exist")
    dst = locate(destination, "encrypt", storage_options)
    _separate(src, dst, "encrypt")
    _refuse_tables("encrypt", src, dst, storage_options)
    return src.uri, dst.uri


def _refuse_tables(job: str, src: Location, dst: Location, storage_options: StorageOptions) -> None:
    """Over Spark Connect the table jobs do not run (docs/TABLES.md): a Delta / Iceberg source or destination,
    or a plain directory holding one, is refused before anything is written."""
    from spark_kms.jobs._tables import refuse_nested_tables, table_format

    for where in (src, dst):
        found = table_format(where, storage_options)
        if found:
            raise ConfigurationError(
                f"{job}: {where.uri} is (inside) a {found} table; over Spark Connect spark_kms does not write or "
                "read tables in this job: run it with a classic session or from the CLI without sc:// "
                "(docs/TABLES.md)"
            )
    if dst.is_dir():
        refuse_nested_tables(dst, job)


def _decrypt_paths(source: Any, destination: Any, storage_options: StorageOptions) -> tuple[str, str, str]:
    """``(source, destination, staging directory for the output)``, checked and resolved."""
    src = require_dataset(source, "decrypt", storage_options)
    dst = locate(destination, "decrypt", storage_options)
    _separate(src, dst, "decrypt")
    _refuse_tables("decrypt", src, dst, storage_options)
    staging = dst.parent.join(f"{_connect_prefix(dst)}{secrets.token_hex(6)}")
    return src.uri, dst.uri, staging.uri


def _connect_prefix(destination: Location) -> str:
    """The name prefix of the directories Spark writes decrypt's output to, beside ``destination``."""
    return f".{destination.name}.spark_kms-connect-"


def _decrypt_facts(source: str, storage_options: StorageOptions) -> dict[str, Any]:
    """What decrypt records of its source, from the footers (no KMS call)."""
    keys = Dataset.open(locate(source, "decrypt", storage_options), job="decrypt")
    effective = keys.effective_deks()
    return {
        "rows": keys.rows_of(keys.files),
        "files": len(keys.files),
        "deks": len(effective),
        "key_versions": key_versions_of((e.key_id, e.key_version) for e in effective.values()),
    }


def _move_tree(source: Location, target: Location) -> None:
    """Move a directory: one rename on a local disk, object by object on an object store."""
    if source.is_local:
        os.makedirs(os.path.dirname(target.path), exist_ok=True)
        os.replace(source.path, target.path)
        return
    for entry in source.list_files(include_hidden=True):
        entry.location.copy_to(target.join(entry.location.relative_to(source)))
    source.delete_dir()


def _swap_in(destination: str, staging: str, storage_options: StorageOptions) -> None:
    """Replace ``destination`` with the complete output Spark wrote to ``staging``, under the
    destination's lock (:func:`~spark_kms.jobs._replace.staged_replacement`)."""
    dst, out = resolve(destination, storage_options), resolve(staging, storage_options)
    try:
        with staged_replacement(dst, "decrypt") as target:
            # Under the lock no other job writes this destination: other output directories of this
            # kind beside it are killed jobs' leftovers (plaintext), removed as staged_replacement does.
            for other in dst.parent.list_dirs():
                if other.name.startswith(_connect_prefix(dst)) and other.name != out.name:
                    logger.info("removing %s, left by a job on %s that did not finish", other.uri, dst.uri)
                    other.delete_dir()
            if not out.is_dir():
                raise JobError(f"decrypt: the output written to {out.uri!r} is gone (did another job on "
                               f"{dst.uri!r} remove it as a leftover?); the destination is as it was: run again")
            _move_tree(out, resolve(os.fspath(target), storage_options) if isinstance(target, Path) else target)
    except BaseException:
        out.delete_dir()
        raise


def _discard(staging: str, storage_options: StorageOptions) -> None:
    resolve(staging, storage_options).delete_dir()


def _store_record(record: dict[str, Any], storage_options: StorageOptions) -> None:
    """Write a run record where :attr:`RunSummary.path` says (``<dataset>/_spark_kms_runs/``)."""
    resolve(RunSummary.from_dict(record).path, storage_options).write_json_atomic(record)


# -- on the client ---------------------------------------------------------------------------


@contextlib.contextmanager
def _recorded(spark: Any, job: str, dataset: str, run_id: str | None,
              storage_options: StorageOptions) -> Iterator[RunRecorder]:
    """A :class:`RunRecorder` of a run on ``dataset`` (a path or URI as the server side resolved it)
    whose record is stored on the server side when the run ends; a failure to store it does not hide
    the run's own error."""
    with tempfile.TemporaryDirectory(prefix="spark_kms_run_") as tmp:
        # Given the dataset's options, the recorder masks its secret ones too; it touches no file of it.
        recorder = RunRecorder(job, resolve(dataset, storage_options), run_id, record_dir=tmp)
        recorder.summary.dataset = dataset
        failed = True
        try:
            with recorder:
                yield recorder
            failed = False
        finally:
            record = Path(tmp) / f"{recorder.run_id}.json"
            if record.is_file():
                try:
                    run_near_data(spark, _store_record, json.loads(record.read_text("utf-8")), storage_options)
                except Exception:
                    if not failed:
                        raise
                    logger.warning("%s run %s: its record could not be stored in %s", job, recorder.run_id,
                                   dataset, exc_info=True)


def encrypt_over_connect(
    spark: Any,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    key_uri: str,
    columns: Sequence[str],
    deterministic_columns: Sequence[str],
    blind_index: Mapping[str, str] | None,
    partition_by: Sequence[str],
    source_format: str,
    mode: str,
    encryption_context: Mapping[str, str] | None,
    kms_options: KmsConfigLike,
    run_id: str | None,
    join_domain: str | None,
    join_domain_store: str | None,
    storage_options: StorageOptions = None,
) -> RunSummary:
    """:func:`~spark_kms.jobs.encrypt_dataset` with a Spark Connect session (its arguments checked)."""
    from spark_kms.spark import errors_translated, write_encrypted

    src, dst = run_near_data(spark, _encrypt_paths, source, destination, storage_options)
    with _recorded(spark, "encrypt", dst, run_id, storage_options) as recorder, errors_translated():
        # The Spark write reports KMS calls over driver and tasks; this process makes none.
        recorder.count_local_calls = False
        pii = [*columns, *deterministic_columns, *(blind_index or {})]
        df = _read_source(spark, source_format, src, pii)
        result = write_encrypted(
            df, dst, key_uri=key_uri, columns=list(columns), deterministic_columns=list(deterministic_columns),
            blind_index=dict(blind_index or {}), partition_by=list(partition_by), mode=mode,
            encryption_context=encryption_context,
            kms_options=KmsConfig.of(kms_options).with_request_tag(recorder.run_id),
            run_id=recorder.run_id, join_domain=join_domain, join_domain_store=join_domain_store,
            storage_options=storage_options,
        )
        s = recorder.summary
        s.rows, s.files, s.deks = result.rows, len(result.files), len(result.deks)
        s.kms_calls = dict(result.kms_calls)
        s.key_versions = {k: list(v) for k, v in result.key_versions.items()}
        s.details.update({"source": src, "source_format": source_format, "mode": mode, "key_uri": key_uri,
                          "columns": list(columns), "deterministic_columns": list(deterministic_columns),
                          "blind_index": dict(blind_index or {}), "partition_by": list(partition_by),
                          "spark_connect": True})
        return s


def decrypt_over_connect(
    spark: Any,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None,
    output_format: str,
    kms_options: KmsConfigLike,
    run_id: str | None,
    storage_options: StorageOptions = None,
) -> RunSummary:
    """:func:`~spark_kms.jobs.decrypt_dataset` with a Spark Connect session (its arguments checked)."""
    from spark_kms.spark import errors_translated, read_encrypted

    src, dst, staging = run_near_data(spark, _decrypt_paths, source, destination, storage_options)
    with _recorded(spark, "decrypt", src, run_id, storage_options) as recorder, errors_translated():
        facts = run_near_data(spark, _decrypt_facts, src, storage_options)
        df = read_encrypted(spark, src, columns=list(columns) if columns is not None else None,
                            kms_options=KmsConfig.of(kms_options).with_request_tag(recorder.run_id),
                            storage_options=storage_options)
        writer = df.write.mode("overwrite").format(output_format)
        if output_format == "csv":
            writer = writer.option("header", "true")
        try:
            writer.save(staging)
        except BaseException:
            with contextlib.suppress(Exception):
                run_near_data(spark, _discard, staging, storage_options)
            logger.info("decrypt into %s failed: staging removed, the destination is as it was", dst)
            raise
        run_near_data(spark, _swap_in, dst, staging, storage_options)
        s = recorder.summary
        s.rows, s.files, s.deks = facts["rows"], facts["files"], facts["deks"]
        s.key_versions = s.key_versions_before = facts["key_versions"]
        s.details.update({"destination": dst, "output_format": output_format,
                          "columns": list(columns) if columns is not None else None, "spark_connect": True})
        return s
