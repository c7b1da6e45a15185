"""Bounded retries with full-jitter exponential backoff, for throttled KMS calls.

Backends whose SDK has its own retry machinery use that instead (botocore's
``Config(retries=...)``, google.api_core's ``Retry``); this serves the others.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spark_kms.errors import ThrottlingError

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all, sleeping ``uniform(0, min(max_delay, base_delay * 2**n))``
    between them, and never longer than ``deadline`` seconds overall."""

    max_attempts: int = 6
    base_delay: float = 0.05
    max_delay: float = 2.0
    deadline: float = 20.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))


def call_with_retries(
    fn: Callable[[], T],
    *,
    is_throttle: Callable[[BaseException], bool],
    policy: RetryPolicy = RetryPolicy(),
    what: str = "KMS call",
    key_id: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry while it raises an exception ``is_throttle`` accepts.

    After the last attempt (or past the deadline) raise :class:`ThrottlingError`
    from the last vendor exception.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_throttle(exc):
                raise
            attempt += 1
            elapsed = time.monotonic() - start
            if attempt >= policy.max_attempts or elapsed >= policy.deadline:
                raise ThrottlingError(
                    f"{what} was throttled {attempt} times in {elapsed:.1f}s; giving up "
                    "(lower the job's parallelism or raise the KMS request quota)",
                    key_id=key_id,
                    operation=what,
                ) from exc
            sleep(min(policy.backoff(attempt), max(0.0, policy.deadline - elapsed)))
