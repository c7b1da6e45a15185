"""spark_kms errors across Spark: raised in a Python worker, re-raised on the driver as themselves.

An error spark_kms raises inside Spark -- in a task's Python worker (the data source's writer,
a decrypt UDF), in Spark's planner worker (the data source's writer or reader being set up) or in
the process that commits a write -- reaches the driver as a Spark exception (``PythonException``,
``AnalysisException``, ``Py4JJavaError``, ``SparkRuntimeException``...) whose message is the
worker's Python traceback, tens to hundreds of lines long. :func:`translate_spark_error` is the one
place that finds the spark_kms error inside such an exception and rebuilds it: the same class
from :mod:`spark_kms.errors`, its message, and its ``key_id`` / ``operation`` (``KmsError``) or
``extra`` (``MissingExtraError``). :func:`errors_translated` applies it around a block::

    with errors_translated():
        df.collect()          # raises KeyStateError(...) from the PythonException

The library runs every Spark action of its own inside it (``write_encrypted``, the key-table job of
``read_encrypted``, the dataset jobs). ``read_encrypted`` returns a lazy DataFrame, so its
decryption errors surface at *your* action: wrap it the same way (``spark_kms.spark.errors_translated``).

How an error travels, from the most to the least exact:

1. **A marker line.** Code that runs in a worker under :func:`marked_for_driver` adds a note to a
   spark_kms error on its way out; Python prints notes after the message, so the traceback text
   ends with one line ``spark_kms error: {"class": ..., "message": ..., "key_id": ..., ...}``
   (JSON). It names the nearest public class (a private subclass becomes its public base) and
   keeps multi-line messages and the constructor's extra arguments exactly; it counts only
   under the exception line of the class that carried it (``"raised"``).
2. **The JVM fast path's exception** (:mod:`spark_kms.spark.fastpath`): a Java
   ``io.sparkkms.fastpath.FastPathException`` whose one-line message is :data:`MARKER` and JSON
   (``class``, ``message``), anywhere in the Spark exception's text (the task failure it caused
   quotes it); the last one counts.
3. **The traceback's last line.** Otherwise the final exception line of the worker's traceback,
   ``spark_kms.errors.KeyStateError: <message>``, gives the class and (first line of the) message.

Only the *final* exception of the last traceback in the text counts (a spark_kms error that some
other error replaced is not resurrected), only Spark's own exception types (modules ``pyspark.*``,
``py4j.*``) are read, and only classes listed in ``spark_kms.errors.__all__`` are built -- by name
look-up, nothing is evaluated or unpickled. Messages never hold plaintext (:mod:`spark_kms.errors`).

This module imports no pyspark: the Airflow provider and the CLI import it at parse time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import spark_kms.errors as _errors_module
from spark_kms.errors import KmsError, MissingExtraError, SparkKmsError

__all__ = ["MARKER", "error_line", "errors_translated", "marked_for_driver", "translate_spark_error"]

logger = logging.getLogger(__name__)

#: the prefix of the note a worker adds to a spark_kms error (one line of JSON follows)
MARKER = "spark_kms error: "

_TRACEBACK = "Traceback (most recent call last):"
_STANDARD_LINE = re.compile(r"^spark_kms\.errors\.([A-Za-z_][A-Za-z0-9_]*)(?:: (.*))?$")
_SPARK_MODULES = ("pyspark.", "py4j.")
_JVM_MARKER = re.compile(r"io\.sparkkms\.fastpath\.FastPathException: " + re.escape(MARKER) + r"(\{[^\r\n]*\})")
_MAX_CHAIN = 16
_MAX_LINE = 1000


# -- the worker side -----------------------------------------------------------------------


def _public_class(exc: SparkKmsError) -> type[SparkKmsError]:
    for cls in type(exc).__mro__:
        if cls.__module__ == _errors_module.__name__ and cls.__name__ in _errors_module.__all__:
            return cls  # type: ignore[no-any-return]
    return SparkKmsError  # unreachable: every spark_kms error derives from SparkKmsError


def _printed_name(cls: type) -> str:
    """The class name as ``traceback`` prints it on the exception line."""
    if cls.__module__ in ("__main__", "builtins"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _marker(exc: SparkKmsError) -> str:
    fields: dict[str, Any] = {
        name: value for name, value in vars(exc).items()
        if not name.startswith("_") and (value is None or isinstance(value, (str, int, float, bool)))
    }
    fields.update({"class": _public_class(exc).__name__, "message": str(exc), "raised": _printed_name(type(exc))})
    return MARKER + json.dumps(fields, sort_keys=True, ensure_ascii=True)


def mark(exc: SparkKmsError) -> SparkKmsError:
    """Add the marker note to ``exc`` (once) and return it."""
    if not any(str(note).startswith(MARKER) for note in getattr(exc, "__notes__", ())):
        exc.add_note(_marker(exc))
    return exc


@contextmanager
def marked_for_driver() -> Iterator[None]:
    """For code that runs in a Spark worker: a spark_kms error leaving the block carries its
    marker line to the driver (the same exception object is re-raised). Also a decorator."""
    try:
        yield
    except SparkKmsError as exc:
        mark(exc)
        raise


# -- the driver side -----------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_CHAIN:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def _is_spark_exception(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(_SPARK_MODULES)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - Py4JJavaError.__str__ asks the JVM, which may be gone
        return ""


def _last_exception(text: str) -> tuple[str, list[str]] | None:
    """``(exception line, lines after it)`` of the last Python traceback in ``text``."""
    start = text.rfind(_TRACEBACK)
    if start < 0:
        return None
    lines = text[start + len(_TRACEBACK):].splitlines()
    for i, line in enumerate(lines):
        # Frames ("  File ...", source lines, "^^^" markers) are indented; the exception line is not.
        if line.strip() and not line[:1].isspace():
            return line, lines[i + 1:]
    return None


def _rebuild(name: str, message: str, fields: dict[str, Any]) -> SparkKmsError | None:
    """An instance of ``spark_kms.errors.<name>`` with ``message``; None for any other name."""
    if name not in _errors_module.__all__:
        return None
    cls = getattr(_errors_module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SparkKmsError)):
        return None

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    if issubclass(cls, KmsError):
        return cls(message, key_id=text("key_id"), operation=text("operation"))
    if issubclass(cls, MissingExtraError):
        # Its constructor composes the message from (what, extra): restore the finished message.
        err = cls.__new__(cls)
        SparkKmsError.__init__(err, message)
        err.extra = text("extra") or ""
        return err
    return cls(message)


def _from_text(text: str) -> SparkKmsError | None:
    found = _last_exception(text)
    if found is None:
        return None
    line, after = found
    for note in after:
        if note.startswith(MARKER):
            try:
                fields = json.loads(note[len(MARKER):])
            except ValueError:
                break
            raised = fields.get("raised") if isinstance(fields, dict) else None
            # The marker must belong to the exception on the line above it, not to text in a message.
            if isinstance(raised, str) and (line == raised or line.startswith(f"{raised}: ")) \
                    and isinstance(fields.get("class"), str) and isinstance(fields.get("message"), str):
                return _rebuild(fields["class"], fields["message"], fields)
            break
    m = _STANDARD_LINE.match(line)
    if m is None:
        return None
    return _rebuild(m.group(1), m.group(2) or "", {})


def _from_jvm_text(text: str) -> SparkKmsError | None:
    """The error of the last fast-path exception quoted in ``text`` (a Java stack trace)."""
    found = _JVM_MARKER.findall(text)
    if not found:
        return None
    try:
        fields = json.loads(found[-1])
    except ValueError:
        return None
    if not (isinstance(fields, dict) and isinstance(fields.get("class"), str)
            and isinstance(fields.get("message"), str)):
        return None
    return _rebuild(fields["class"], fields["message"], fields)


def translate_spark_error(exc: BaseException) -> SparkKmsError | None:
    """The spark_kms error inside ``exc`` (a Spark exception), rebuilt; ``None`` if there is none.

    ``exc`` itself is returned when it already is a spark_kms error. See the module docstring for
    where the error is looked for.
    """
    if isinstance(exc, SparkKmsError):
        return exc
    # A PythonException's context is the Py4JJavaError it was converted from: same traceback text.
    for e in _chain(exc):
        if _is_spark_exception(e):
            text = _text(e)
            err = _from_jvm_text(text) or _from_text(text)
            if err is not None:
                return err
    return None


@contextmanager
def errors_translated() -> Iterator[None]:
    """Re-raise a Spark exception that carries a spark_kms error as that error (its class, its
    message; the Spark exception chained as ``__cause__``). Anything else passes unchanged.

    >>> from spark_kms.spark import errors_translated, read_encrypted
    >>> with errors_translated():                                      # doctest: +SKIP
    ...     read_encrypted(spark, "/data/customers").collect()
    Traceback (most recent call last):
    spark_kms.errors.KeyStateError: cannot unwrap data key ... key ... is Disabled: ...

    Also a decorator (``@errors_translated()``).
    """
    try:
        yield
    except SparkKmsError:
        raise
    except Exception as exc:
        err = translate_spark_error(exc)
        if err is None:
            raise
        logger.debug("%s from Spark re-raised as %s", type(exc).__name__, type(err).__name__)
        raise err from exc


def error_line(exc: BaseException) -> str:
    """``"<Class>: <message>"`` on one line, for run records and logs: a spark_kms error inside a
    Spark exception gives its own class and message; any other error whose text is a worker
    traceback gives the traceback's final exception line; else the first line of the message."""
    err = translate_spark_error(exc) if not isinstance(exc, SparkKmsError) else exc
    if err is not None:
        exc = err
    text = _text(exc).strip()
    found = _last_exception(text) if _is_spark_exception(exc) else None
    if found is not None:
        first = found[0].strip()
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."
