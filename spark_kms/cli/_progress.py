"""Progress bars of the long verbs (``encrypt``, ``decrypt``, ``rewrap``, ``reencrypt``, ``inspect``), on stderr.

One :class:`JobProgress` per verb run, drawn by ``rich.progress``, fed by three sources, none of which
changes what a job does:

* the job's own ``progress(item, done, total)`` callback (``rewrap``: data keys, ``reencrypt`` and
  ``inspect``: files) -- the bar's counts;
* the job's INFO log records (``spark_kms`` logger: "write ... committed: 4 files, ...", "rewrap run ...
  started"), shown as the bar's phase text -- what the job reports anyway, never a key or a value;
* for a verb that runs a classic Spark session, Spark's own status tracker, polled in a thread: tasks
  done / tasks of the stages the job ran (reading, encrypting and writing, committing show up as stages).

Off with ``--quiet``, with ``--json`` (a machine reads the output), and when stderr is not a terminal
(CI logs, pipes); ``SPARK_KMS_PROGRESS=always`` / ``never`` overrides that last rule.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["PROGRESS_ENV", "JobProgress", "progress_wanted"]

#: ``always`` draws the bars even when stderr is not a terminal, ``never`` never draws them.
PROGRESS_ENV = "SPARK_KMS_PROGRESS"

_POLL_S = 0.5
_PHASE_WIDTH = 90


def progress_wanted(*, quiet: bool = False, as_json: bool = False) -> bool:
    """Whether a verb draws its progress: not with ``--quiet`` or ``--json``, only on a terminal (or
    ``SPARK_KMS_PROGRESS=always``)."""
    if quiet or as_json or os.environ.get(PROGRESS_ENV, "").strip().lower() == "never":
        return False
    if _forced():
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _forced() -> bool:
    return os.environ.get(PROGRESS_ENV, "").strip().lower() == "always"


class _PhaseHandler(logging.Handler):
    """The job's INFO records become the bar's phase text (one line, cut to a width)."""

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(logging.INFO)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # noqa: BLE001 (a bad log call must not break the verb)
            return
        if len(text) > _PHASE_WIDTH:
            text = text[: _PHASE_WIDTH - 1] + "\u2026"
        self._progress.phase(text)


class JobProgress:
    """A progress display for one verb; a no-op when ``enabled`` is False.

    :param what: the main bar's label, e.g. "rewrapping data keys".
    :param unit: what the main bar counts ("data keys", "files").
    :param spark: a classic session, or the CLI's lazy session factory: its tasks are shown as they run.
    """

    def __init__(self, what: str, *, unit: str = "", enabled: bool = True, spark: Any = None) -> None:
        self.enabled = enabled
        self.what, self.unit = what, unit
        self._spark = spark
        self._progress: Progress | None = None
        self._main: Any = None
        self._tasks: Any = None
        self._handler: _PhaseHandler | None = None
        self._level: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stages: dict[int, tuple[int, int]] = {}

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> JobProgress:
        if not self.enabled:
            return self
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[phase]}", markup=True),
            console=Console(stderr=True, force_terminal=_forced() or None), transient=True, refresh_per_second=4,
        )
        self._progress.start()
        self._main = self._progress.add_task(self.what, total=None, unit=self.unit, phase="")
        library = logging.getLogger("spark_kms")
        self._handler = _PhaseHandler(self)
        library.addHandler(self._handler)
        if library.getEffectiveLevel() > logging.INFO:
            self._level = library.level
            library.setLevel(logging.INFO)  # only our handler and -v's see INFO; root has none in the CLI
        if self._spark is not None:
            self._thread = threading.Thread(target=self._watch_spark, name="spark-kms-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled or self._progress is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        library = logging.getLogger("spark_kms")
        if self._handler is not None:
            library.removeHandler(self._handler)
        if self._level is not None:
            library.setLevel(self._level)
        self._progress.stop()

    # ------------------------------------------------------------------ sources

    def __call__(self, item: str, done: int, total: int) -> None:
        """The jobs' ``progress(item, done, total)`` callback."""
        if self._progress is not None:
            self._progress.update(self._main, completed=done, total=total)

    def phase(self, text: str) -> None:
        """What the job is doing now, after the bar (plain text, never read as markup)."""
        if self._progress is not None:
            from rich.markup import escape

            self._progress.update(self._main, phase=escape(text))

    def _session(self) -> Any:
        from spark_kms.spark.remote import is_connect

        spark = self._spark
        session = getattr(spark, "session", spark) if callable(spark) else spark  # the CLI's lazy factory
        if session is None or is_connect(session) or not hasattr(session, "sparkContext"):
            return None
        return session

    def _watch_spark(self) -> None:
        while not self._stop.wait(_POLL_S):
            session = self._session()
            if session is None:
                continue
            try:
                tracker = session.sparkContext.statusTracker()
                for stage_id in tracker.getActiveStageIds():
                    self._stages.setdefault(stage_id, (0, 0))
                for stage_id in list(self._stages):
                    info = tracker.getStageInfo(stage_id)
                    if info is not None:
                        self._stages[stage_id] = (info.numCompletedTasks, info.numTasks)
            except Exception:  # noqa: BLE001 (the session stopping under us ends the display, not the verb)
                return
            done = sum(d for d, _ in self._stages.values())
            total = sum(t for _, t in self._stages.values())
            if self._progress is not None and total:
                if self._tasks is None:
                    self._tasks = self._progress.add_task("Spark tasks", total=total, unit="", phase="")
                self._progress.update(self._tasks, completed=done, total=total,
                                      phase=f"{len(self._stages)} stage(s)")
