"""Run summaries: what a dataset job did, written next to the data it touched.

Every job writes ``<dataset>/_spark_kms_runs/<run_id>.json`` (atomically: temp + rename on a local
disk, one PUT on an object store) and returns the same record as a :class:`RunSummary`. The
directory starts with ``_`` so Spark, pyarrow and :func:`spark_kms.parquet.list_data_files` skip it.

Layout of the JSON record (``RunSummary.to_dict()``)::

    {"job": "rewrap", "run_id": "20250101T000000Z-rewrap-1a2b3c", "dataset": "/abs/path" | "s3://b/k",
     "status": "succeeded" | "failed" | "running" | "abandoned",
     "rows": 1000, "files": 4, "deks": 4,
     "kms_calls": {"local:ReEncrypt": 4, "local:DescribeKey": 1},
     "key_versions_before": {"<key id>": ["1"]}, "key_versions": {"<key id>": ["2"]},
     "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "...", "duration_s": 0.42,
     "details": {...job specific...}, "error": null}

It holds key ids, versions and counts; never key bytes, wrapped keys, cell values or secret
KMS or storage options: a job hands :class:`RunRecorder` its config's secret values
(:meth:`~spark_kms.kms.KmsConfig.secret_values`) -- the dataset's secret storage options are added
by the recorder itself -- and the record is masked before it is written, should an error message
ever carry one.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from spark_kms.errors import ConfigurationError
from spark_kms.kms.base import kms_call_counts
from spark_kms.parquet.dataset import dataset_location
from spark_kms.spark._errors import error_line
from spark_kms.storage import SECRET_OPTIONS, Location, StoragePath, resolve

__all__ = [
    "RUNS_DIR_NAME",
    "RUN_ID_CONTEXT_KEY",
    "RunSummary",
    "new_run_id",
    "runs_dir",
    "validate_run_id",
]

logger = logging.getLogger(__name__)

#: hidden (``_``) directory of a dataset that holds run summaries and journals
RUNS_DIR_NAME = "_spark_kms_runs"
#: encryption-context key that carries the run id of the job that made a DEK
RUN_ID_CONTEXT_KEY = "spark_kms.job_id"  # the same key the Spark writer uses

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(job: str) -> str:
    """``<UTC time>-<job>-<6 hex>``: sortable by start time, unique enough per dataset."""
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{job}-{secrets.token_hex(3)}"


def validate_run_id(run_id: str) -> str:
    """A run id names files: letters, digits, ``.``, ``_``, ``-``; at most 128 characters."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ConfigurationError(
            f"a run id is 1-128 characters of letters, digits, '.', '_' or '-' "
            f"and starts with a letter or digit, got {run_id!r}"
        )
    return run_id


def runs_dir(dataset: StoragePath) -> Location:
    """``<dataset>/_spark_kms_runs`` (a :class:`~spark_kms.storage.Location`: pass one to keep its options)."""
    return resolve(dataset).join(RUNS_DIR_NAME)


def read_json(location: Location) -> Any:
    """The JSON document at ``location``; None when it is absent.

    :raises ValueError: it is not JSON.
    """
    raw = location.read_bytes_or_none()
    return None if raw is None else json.loads(raw)


def key_versions_of(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``{(key_id, version), ...}`` -> ``{key_id: [versions sorted]}``."""
    out: dict[str, set[str]] = {}
    for key_id, version in pairs:
        out.setdefault(key_id, set()).add(version)
    return {k: sorted(v, key=_version_sort_key) for k, v in sorted(out.items())}


def _version_sort_key(version: str) -> tuple[int, int | str]:
    # Numeric versions (local, AWS-style, GCP) sort numerically; opaque ids (Azure) as text.
    return (0, int(version)) if version.isdigit() else (1, version)


def calls_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """KMS calls made between two :func:`kms_call_counts` snapshots (zero entries dropped)."""
    out = {k: n - before.get(k, 0) for k, n in after.items()}
    return {k: n for k, n in sorted(out.items()) if n}


def mask_secrets(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like: dicts, lists, strings...) with every occurrence of a secret in a string
    (keys included) replaced by ``***``."""
    secrets = [s for s in secrets if s]
    if not secrets:
        return value

    def mask(v: Any) -> Any:
        if isinstance(v, str):
            for secret in secrets:
                v = v.replace(secret, "***")
            return v
        if isinstance(v, Mapping):
            return {mask(k): mask(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [mask(x) for x in v]
        return v

    return mask(value)


@dataclass
class RunSummary:
    """What one dataset job did. JSON-serialisable through :meth:`to_dict`.

    :param job: ``encrypt``, ``decrypt``, ``rewrap`` or ``reencrypt``.
    :param run_id: the run id (also in the encryption context of DEKs the run made).
    :param dataset: the dataset the run is recorded in: an absolute local path or a storage URI.
    :param status: ``running``, ``succeeded`` or ``failed``; ``abandoned`` for a re-encrypt run
        given up with ``abandon=``.
    :param rows: rows the job read or wrote; for rewrap, the rows of the files whose keys it
        rewrapped (from the Parquet footers: it reads no row).
    :param files: data files the job wrote or rewrote (for rewrap: files whose DEKs it rewrapped).
    :param deks: data keys the job created (encrypt, re-encrypt) or rewrapped (rewrap) or used (decrypt).
    :param kms_calls: KMS operations this process made for the job, ``{"<scheme>:<Operation>": n}``.
    :param key_versions: ``{key_id: [versions]}`` wrapping the dataset's DEKs after the job.
    :param key_versions_before: the same before the job.
    :param details: job-specific facts (skipped DEKs, resumed files, destination...).
    :param error: the error class and message, on one line, when ``status == "failed"`` (a spark_kms
        error inside a Spark exception as itself; never a traceback).
    """

    job: str
    run_id: str
    dataset: str
    status: str = "running"
    rows: int = 0
    files: int = 0
    deks: int = 0
    kms_calls: dict[str, int] = field(default_factory=dict)
    key_versions: dict[str, list[str]] = field(default_factory=dict)
    key_versions_before: dict[str, list[str]] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str | None = None
    duration_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def path(self) -> str:
        """Where this summary is (or will be) written: a local path or a storage URI."""
        return runs_dir(self.dataset).join(f"{self.run_id}.json").uri

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


class RunRecorder:
    """Times a job, snapshots this process's KMS call counters, and writes the summary.

    Use as a context manager: on exit the summary is finished (``succeeded``, or
    ``failed`` with the error's class and message) and written; the exception, if
    any, propagates. ``secrets`` (secret option values) and the dataset's secret storage options
    are replaced by ``***`` wherever they would appear in the written record.

    :param dataset: the dataset (a :class:`~spark_kms.storage.Location` keeps its storage options).
    """

    def __init__(self, job: str, dataset: StoragePath, run_id: str | None, *,
                 record_dir: StoragePath | None = None, secrets: Iterable[str] = ()):
        location = dataset_location(dataset)
        self.summary = RunSummary(
            job=job,
            run_id=validate_run_id(run_id) if run_id is not None else new_run_id(job),
            dataset=location.uri,
            started_at=utc_now().isoformat(),
        )
        self._record_dir = resolve(record_dir) if record_dir is not None else location.join(RUNS_DIR_NAME)
        stored = [v for k, v in location.options.items() if k in SECRET_OPTIONS and v]
        self._secrets = sorted({v for v in [*secrets, *stored] if v}, key=len, reverse=True)
        self._t0 = time.monotonic()
        self._calls0 = kms_call_counts()
        #: add this process's KMS call delta on exit (off when the job reports its own total, e.g. Spark)
        self.count_local_calls = True

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    def kms_calls(self) -> dict[str, int]:
        return calls_delta(self._calls0, kms_call_counts())

    def __enter__(self) -> RunRecorder:
        logger.info("%s run %s on %s started", self.summary.job, self.run_id, self.summary.dataset)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        s = self.summary
        s.finished_at = utc_now().isoformat()
        s.duration_s = round(time.monotonic() - self._t0, 3)
        # Merge rather than overwrite: Spark jobs add their executors' counts to details first.
        if self.count_local_calls:
            for k, n in self.kms_calls().items():
                s.kms_calls[k] = s.kms_calls.get(k, 0) + n
        s.kms_calls = dict(sorted(s.kms_calls.items()))
        if exc is None:
            s.status = "succeeded"
            logger.info("%s run %s succeeded in %.1fs: %d rows, %d files, %d data keys, KMS calls %s",
                        s.job, s.run_id, s.duration_s, s.rows, s.files, s.deks, s.kms_calls)
        else:
            s.status = "failed"
            s.error = error_line(exc)  # one line, never a traceback (Spark's messages hold the worker's)
            logger.warning("%s run %s failed after %.1fs: %s", s.job, s.run_id, s.duration_s,
                           mask_secrets(s.error, self._secrets))
        try:
            self._record_dir.join(f"{s.run_id}.json").write_json_atomic(mask_secrets(s.to_dict(), self._secrets))
        except OSError:
            if exc is None:
                raise
            # Do not mask the job's own error with a failure to record it.
