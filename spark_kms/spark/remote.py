"""Run spark_kms code where the data is: :func:`run_near_data` (and :func:`run_on_driver`), for
classic Spark and for Spark Connect alike.

With a classic SparkSession the Python process that calls spark_kms *is* Spark's driver: it sees
the dataset's files, so the library reads footers, manifests and join-domain records there. Under
**Spark Connect** (``SparkSession.builder.remote("sc://...")``) that process is a thin client; the
driver and the executors run in the Connect server's cluster, and the client's filesystem need not
hold the data at all. Every file access the library makes outside Spark's own reads and writes
therefore goes through this module:

* :func:`run_near_data(spark, fn, *args, **kwargs) <run_near_data>` -- with ``spark`` None or a
  classic session, ``fn(*args, **kwargs)`` here. With a Connect session, ``fn`` runs inside **one
  Spark task** on the server side (``spark.range(1, numPartitions=1).mapInArrow(...)``) and its
  result is pickled back to the client.
* :func:`run_on_driver` -- the same, but in the server's **driver** (the planner of a small
  Python data source): for a file that only the driver sees, e.g. the result file a
  ``spark_kms`` write's commit leaves in the driver's temporary directory.

**KMS calls that ``fn`` makes happen where ``fn`` runs**: in a Python worker of the Connect
server's cluster, under the server side's KMS identity -- never in the client. docs/SPARK_CONNECT.md
says which job needs which permission on which side.

Rules for ``fn``: a module-level function of spark_kms (pickled by reference, so the server's
Python must have the same spark_kms installed); picklable arguments and result; no callbacks into
the client. The arguments travel in the query plan, as a UDF's arguments do (a
:class:`~spark_kms.kms.KmsConfig` pickles as its options).

Errors: a :class:`~spark_kms.errors.SparkKmsError` that ``fn`` raises is raised on the client as
itself (its public class, message, ``key_id`` / ``operation`` / ``extra``); any other exception
becomes a :class:`~spark_kms.errors.JobError` naming its type and message (the server-side
traceback is logged at DEBUG). The client unpickles what its own server sends back: it trusts the
server it sends code to.

This module imports no pyspark (nor Spark Connect's dependencies) until a Connect session uses it.
"""

from __future__ import annotations

import base64
import functools
import logging
import pickle
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import spark_kms.errors as _errors_module
from spark_kms.errors import JobError, SparkKmsError

__all__ = ["active_connect_session", "is_connect", "run_near_data", "run_on_driver"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RESULT_SCHEMA = "ok boolean, payload binary"
#: the short name of the data source :func:`run_on_driver` reads through
_DRIVER_SOURCE = "spark_kms_driver_call"
_CALL_OPTION = "call"
#: Connect session ids the driver-call data source is registered with
_registered: set[str] = set()


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (``pyspark.sql.connect.session.SparkSession``).

    ``None``, a classic session, or anything else: False. Decided by the session's class, without
    importing pyspark's Connect modules (which need grpc).
    """
    return spark is not None and type(spark).__module__.startswith("pyspark.sql.connect.")


def active_connect_session() -> Any | None:
    """The active Spark Connect session of this process, or None when this process is not a Spark
    Connect client (for functions that take no session, e.g. the UDF factories)."""
    try:
        from pyspark.sql.utils import is_remote
    except ImportError:  # pragma: no cover - no pyspark: no session at all
        return None
    if not is_remote():
        return None
    from pyspark.sql.connect.session import SparkSession

    return SparkSession.getActiveSession()


# -- the server side -------------------------------------------------------------------------


def _public_error_class(exc: SparkKmsError) -> type[SparkKmsError]:
    for cls in type(exc).__mro__:
        if cls.__module__ == _errors_module.__name__ and cls.__name__ in _errors_module.__all__:
            return cls  # type: ignore[no-any-return]
    return SparkKmsError


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, bytes]:
    """Run ``fn`` and pickle what came of it: ``(True, result)`` or ``(False, error description)``."""
    from pyspark import cloudpickle

    try:
        result = fn(*args, **kwargs)
    except SparkKmsError as exc:
        fields = {k: v for k, v in vars(exc).items()
                  if not k.startswith("_") and (v is None or isinstance(v, (str, int, float, bool)))}
        error = ("spark_kms", _public_error_class(exc).__name__, str(exc), fields, traceback.format_exc())
        return False, cloudpickle.dumps(error)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the client, as a JobError
        error = ("other", f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), {}, traceback.format_exc())
        return False, cloudpickle.dumps(error)
    try:
        return True, cloudpickle.dumps(result)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result is the caller's bug: say so
        error = ("other", "pickle", f"its result ({type(result).__name__}) cannot be pickled: {exc}", {},
                 traceback.format_exc())
        return False, cloudpickle.dumps(error)


def _one_batch(ok: bool, payload: bytes) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([pa.array([ok]), pa.array([payload], pa.binary())], names=["ok", "payload"])


def _task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInArrow`` function of :func:`run_near_data`: its one task runs ``fn`` once."""

    def run_near_data_task(batches: Iterator[Any]) -> Iterator[Any]:
        for _ in batches:  # the one row of spark.range(1): nothing to read
            pass
        yield _one_batch(*_call(fn, args, kwargs))

    return run_near_data_task


@functools.lru_cache(maxsize=1)
def _driver_source() -> type:
    """The data source of :func:`run_on_driver`, built on first use (so that importing this module
    imports no pyspark). Its reader's ``partitions()`` -- which Spark calls once per query, in the
    driver -- runs the call; the one partition carries the pickled outcome to a task that returns it."""
    from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition

    class DriverCallReader(DataSourceReader):
        def __init__(self, call: str) -> None:
            self.call = call

        def partitions(self) -> list[InputPartition]:
            fn, args, kwargs = pickle.loads(base64.b64decode(self.call))  # noqa: S301 - built by this client
            return [InputPartition(_call(fn, args, kwargs))]

        def read(self, partition: InputPartition) -> Iterator[tuple[bool, bytes]]:
            ok, payload = partition.value
            yield ok, payload

    class DriverCallSource(DataSource):
        @classmethod
        def name(cls) -> str:
            return _DRIVER_SOURCE

        def schema(self) -> str:
            return _RESULT_SCHEMA

        def reader(self, schema: Any) -> DriverCallReader:
            return DriverCallReader(self.options[_CALL_OPTION])

    return DriverCallSource


# -- the client side -------------------------------------------------------------------------


def _rebuild_error(name: str, message: str, fields: dict[str, Any]) -> SparkKmsError:
    cls = getattr(_errors_module, name, None) if name in _errors_module.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, SparkKmsError)):
        cls = SparkKmsError
    # No constructor call: some take other arguments (MissingExtraError composes its message).
    err = cls.__new__(cls)
    SparkKmsError.__init__(err, message)
    err.__dict__.update(fields)
    return err


def _outcome(ok: bool, payload: bytes, what: str) -> Any:
    value = pickle.loads(payload)  # noqa: S301 - sent by the Spark Connect server this client runs code on
    if ok:
        return value
    kind, name, message, fields, remote_traceback = value
    logger.debug("%s failed on the Spark Connect server side:\n%s", what, remote_traceback)
    if kind == "spark_kms":
        raise _rebuild_error(name, message, fields)
    raise JobError(f"{what} failed on the Spark Connect server side: {name}: {message}")


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _collect_tagged(spark: Any, df: Any, what: str) -> Any:
    """The one row of ``df``, its Spark jobs tagged ``spark_kms`` (Connect's ``addTag``: the server's UI and
    ``interruptTag`` see it)."""
    tag = "spark_kms_" + what.replace(",", "_")
    spark.addTag(tag)
    try:
        rows = df.collect()
    finally:
        spark.removeTag(tag)
    if len(rows) != 1:
        raise JobError(f"{what}: the Spark Connect server returned {len(rows)} results instead of one")
    return rows[0]


def run_near_data(spark: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` where the data is (see the module docstring).

    :param spark: a Spark Connect session (``fn`` runs in one Spark task on the server side), or a
        classic session or None (``fn`` runs here, in the driver).
    :param fn: a module-level function of spark_kms; picklable arguments and result.
    :raises SparkKmsError: the spark_kms error ``fn`` raised, as itself.
    :raises JobError: ``fn`` raised another exception on the server side (its type and message).
    """
    if not is_connect(spark):
        return fn(*args, **kwargs)
    what = _name(fn)
    logger.debug("running %s near the data: one Spark task on the Spark Connect server side", what)
    df = spark.range(1, numPartitions=1).mapInArrow(_task(fn, args, kwargs), _RESULT_SCHEMA)
    row = _collect_tagged(spark, df, what)
    return _outcome(bool(row["ok"]), bytes(row["payload"]), what)  # type: ignore[no-any-return]


def run_on_driver(spark: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in the driver process of ``spark``'s Spark Connect server (classic or
    None: here). For files that only the driver sees; everything else uses :func:`run_near_data`.

    The call travels as an option of a Python data source (visible in the query plan): never pass
    secrets to it. Same rules and errors as :func:`run_near_data`.
    """
    if not is_connect(spark):
        return fn(*args, **kwargs)
    from pyspark import cloudpickle

    what = _name(fn)
    source = _driver_source()
    if spark.session_id not in _registered:
        spark.dataSource.register(source)
        _registered.add(spark.session_id)
    logger.debug("running %s in the Spark Connect server's driver", what)
    call = base64.b64encode(cloudpickle.dumps((fn, args, kwargs))).decode("ascii")
    df = spark.read.format(_DRIVER_SOURCE).schema(_RESULT_SCHEMA).option(_CALL_OPTION, call).load()
    row = _collect_tagged(spark, df, what)
    return _outcome(bool(row["ok"]), bytes(row["payload"]), what)  # type: ignore[no-any-return]
