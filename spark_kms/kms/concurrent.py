"""KMS calls over a bounded thread pool: many data keys, a few requests in flight.

Rotation jobs make one KMS call per data key (ReEncrypt, Decrypt, GenerateDataKey). Over a network
each call is mostly waiting, so :func:`bounded_map` keeps up to ``concurrency`` of them in flight
(``concurrent.futures`` threads; ``1`` runs them one after the other in the calling thread, as
before). It adds no retry of its own: every call goes through its provider, which retries throttled
calls (:func:`spark_kms.kms.retry.call_with_retries`, or botocore's retries for AWS) -- so a
throttling KMS slows the pool down instead of failing it -- and the first error that survives those
retries stops the map: calls not yet started are never started, calls in flight are waited for (their
results still reach ``on_result``, so a job can keep that progress), and the error is raised as the
provider raised it.

Results come back in input order whatever order the calls finish in, so what a job writes from them
(a manifest, a key table) is the same as a sequential run's.

Threads share one provider (and one vendor client) per key: boto3 clients, hvac's ``requests``
session and the local KMS (a file lock around each call) are safe to share between threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from spark_kms.errors import ConfigurationError

__all__ = ["DEFAULT_KMS_CONCURRENCY", "MAX_KMS_CONCURRENCY", "bounded_map", "check_kms_concurrency", "chunks"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: KMS requests a rotation job keeps in flight unless told otherwise (``kms_concurrency``)
DEFAULT_KMS_CONCURRENCY = 16
#: the largest ``kms_concurrency`` accepted (threads, and a KMS's request quota, are finite)
MAX_KMS_CONCURRENCY = 256


def check_kms_concurrency(value: object, what: str = "kms_concurrency") -> int:
    """``value`` as a number of KMS requests in flight: an integer from 1 (sequential) to
    :data:`MAX_KMS_CONCURRENCY`; ``None`` means :data:`DEFAULT_KMS_CONCURRENCY`.

    :raises ConfigurationError: anything else.
    """
    if value is None:
        return DEFAULT_KMS_CONCURRENCY
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KMS_CONCURRENCY:
        raise ConfigurationError(
            f"{what} is the number of KMS requests in flight, an integer from 1 (one at a time) to "
            f"{MAX_KMS_CONCURRENCY}; got {value!r}"
        )
    return value


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def bounded_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    concurrency: int,
    on_result: Callable[[int, R], None] | None = None,
    name: str = "spark-kms-kms",
) -> list[R]:
    """``[fn(x) for x in items]`` with at most ``concurrency`` calls running at once.

    :param on_result: called in the *calling* thread as each call succeeds, with (index, result),
        in completion order (single-threaded: a job may update its state and flush it from here).
    :returns: the results in input order.
    :raises: the first exception a call raised (calls not started by then are not made), its
        ``item_index`` attribute set to the position in ``items`` of the call that raised it.
    """
    concurrency = check_kms_concurrency(concurrency)
    results: list[R | None] = [None] * len(items)
    if concurrency == 1 or len(items) <= 1:
        for i, item in enumerate(items):
            try:
                results[i] = fn(item)
            except Exception as exc:  # noqa: BLE001 - not handled: noted with its item and re-raised as itself
                _with_index(exc, i)
                raise
            if on_result is not None:
                on_result(i, results[i])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    stop = threading.Event()

    def call(i: int) -> R:
        if stop.is_set():  # submitted before the failure, started after it: do not call the KMS
            raise _Skipped()
        return fn(items[i])

    error: BaseException | None = None
    pending: dict[Future[R], int] = {}
    next_index = 0
    # Submit at most ``concurrency`` ahead, so a failure stops the rest at once and a million items
    # do not make a million futures up front.
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix=name) as pool:
        try:
            while next_index < len(items) or pending:
                while error is None and next_index < len(items) and len(pending) < concurrency:
                    pending[pool.submit(call, next_index)] = next_index
                    next_index += 1
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    exc = future.exception()
                    if exc is not None:
                        if error is None and not isinstance(exc, _Skipped):
                            error = _with_index(exc, i)
                            stop.set()
                        continue
                    results[i] = future.result()
                    if on_result is not None:
                        on_result(i, results[i])  # type: ignore[arg-type]
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            raise
    if error is not None:
        raise error
    return results  # type: ignore[return-value]


def _with_index(exc: BaseException, index: int) -> BaseException:
    """``exc`` with ``item_index`` set to the input position of the call that raised it (kept if set)."""
    if getattr(exc, "item_index", None) is None:
        try:
            exc.item_index = index  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            pass
    return exc


class _Skipped(Exception):
    """A call that was not made because an earlier one failed."""
