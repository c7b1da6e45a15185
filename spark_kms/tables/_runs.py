"""Run records, journals and the rotation lock of table jobs, in the table's own directory.

Layout (below the table root; the leading ``_`` keeps every table engine, Delta's vacuum and Iceberg's
orphan-file clean-up away from them):

* ``_spark_kms_runs/<run_id>.json`` -- the run record, a :class:`spark_kms.jobs.RunSummary` (``dataset`` is the
  table's URI), written when the job ends;
* ``_spark_kms_runs/<run_id>.state.json`` -- a re-encrypt run's journal;
* ``_spark_kms_runs/.lock`` -- one rotation job (rewrap, re-encrypt, vacuum) per table at a time
  (:func:`spark_kms.storage.lock`: an OS lock locally, a leased lock object on object stores).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from spark_kms.errors import JobError
from spark_kms.jobs._summary import (
    RunSummary,
    calls_delta,
    mask_secrets,
    new_run_id,
    utc_now,
    validate_run_id,
)
from spark_kms.kms import KmsConfig
from spark_kms.kms.base import kms_call_counts
from spark_kms.spark._errors import error_line
from spark_kms.storage import Location, LockTimeout, lock

__all__ = ["RUNS_DIR", "TableRunRecorder", "read_json", "secret_strings", "table_lock"]

logger = logging.getLogger(__name__)

RUNS_DIR = "_spark_kms_runs"


def secret_strings(kms: KmsConfig) -> list[str]:
    """The secret option values of ``kms`` that can appear in a JSON record (masked before it is written)."""
    try:
        return kms.secret_values()
    except UnicodeDecodeError:  # raw key bytes cannot appear in a JSON record as text anyway
        return [v for opts in kms.options().values() for v in opts.values() if isinstance(v, str) and v]


def runs_dir(root: Location) -> Location:
    return root.join(RUNS_DIR)


def read_json(loc: Location) -> dict[str, Any] | None:
    data = loc.read_bytes_or_none()
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise JobError(f"{loc.uri} is not valid JSON: it is written atomically, so it was edited by hand") from None
    if not isinstance(doc, dict):
        raise JobError(f"{loc.uri} is not a JSON object")
    return doc


@contextmanager
def table_lock(root: Location, job: str, table_uri: str) -> Iterator[None]:
    """Hold the table's rotation lock; a JobError if another rotation job holds it."""
    target = runs_dir(root).join(".lock")
    try:
        with lock(target):
            yield
    except LockTimeout as exc:
        raise JobError(
            f"{job}: another spark_kms rotation job is running on table {table_uri} ({exc}); wait for it to "
            "finish, then run again"
        ) from None


class TableRunRecorder:
    """Times a table job, counts this process's KMS calls and writes its :class:`RunSummary`."""

    def __init__(self, job: str, root: Location | None, table_uri: str, run_id: str | None, *,
                 secrets: Iterable[str] = ()) -> None:
        self.root = root
        self.summary = RunSummary(job=job, run_id=validate_run_id(run_id) if run_id else new_run_id(job),
                                  dataset=table_uri, started_at=utc_now().isoformat())
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._t0 = time.monotonic()
        self._calls0 = kms_call_counts()

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    def record_location(self) -> Location | None:
        """Where the record goes (None: nowhere yet -- a table not yet created has no directory)."""
        return None if self.root is None else runs_dir(self.root).join(f"{self.run_id}.json")

    def __enter__(self) -> TableRunRecorder:
        logger.info("%s run %s on table %s started", self.summary.job, self.run_id, self.summary.dataset)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        s = self.summary
        s.finished_at = utc_now().isoformat()
        s.duration_s = round(time.monotonic() - self._t0, 3)
        for k, n in calls_delta(self._calls0, kms_call_counts()).items():
            s.kms_calls[k] = s.kms_calls.get(k, 0) + n
        s.kms_calls = dict(sorted(s.kms_calls.items()))
        if exc is None:
            s.status = "succeeded"
            logger.info("%s run %s on table %s succeeded in %.1fs: %d rows, %d files, %d data keys, KMS calls %s",
                        s.job, s.run_id, s.dataset, s.duration_s, s.rows, s.files, s.deks, s.kms_calls)
        else:
            s.status = "failed"
            s.error = error_line(exc)
            logger.warning("%s run %s on table %s failed after %.1fs: %s", s.job, s.run_id, s.dataset,
                           s.duration_s, s.error)
        target = self.record_location()
        if target is None:
            return
        try:
            target.write_json_atomic(mask_secrets(s.to_dict(), self._secrets))
        except OSError:
            if exc is None:
                raise
