"""``--master`` and ``--conf``: the Spark session of a verb, built by
:func:`spark_kms.spark.session.spark_session` (the one place that knows classic from Spark Connect).

* Verbs that always run Spark (``encrypt``, ``decrypt``, ``demo``) get ``spark=``: for a classic
  master (default ``local[2]``) a function that builds the session on first call (so a bad argument
  fails before a JVM starts); for a Spark Connect master the session itself, which is what tells a
  job to touch files on the server side only.
* Verbs that run in this process without Spark (``inspect``, ``rewrap``, ``reencrypt``, ``gc``) get
  ``spark=None`` unless a master is given, and then the session itself: the job runs through it,
  next to the data when it is a Spark Connect session.

A master comes from ``--master``, else ``$SPARK_KMS_MASTER``, else ``$SPARK_REMOTE``
(:func:`~spark_kms.spark.session.requested_master`). A Spark Connect session this CLI opened is
released on the server once the verb succeeds (after a failure the server may be gone, and
releasing would retry for minutes: the server drops an idle session by itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from spark_kms.errors import ConfigurationError

__all__ = ["parse_conf", "spark_options"]

F = TypeVar("F", bound=Callable[..., Any])

_MASTER_HELP = ("Spark master: local[N], spark://HOST:PORT, yarn, k8s://..., or sc://HOST:PORT for a Spark "
                "Connect server (env SPARK_KMS_MASTER, else SPARK_REMOTE)")


def parse_conf(pairs: tuple[str, ...] | list[str], *, param_hint: str = "--conf",
               example: str = "spark.sql.shuffle.partitions=8") -> dict[str, str]:
    """``KEY=VALUE`` settings as a mapping (a later KEY wins); a usage error names a malformed one
    (and the option, ``param_hint``: other verbs' ``KEY=VALUE`` lists are parsed here too)."""
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise click.BadParameter(f"expected KEY=VALUE (e.g. {example}), got {pair!r}", param_hint=param_hint)
        conf[key] = value
    return conf


def _master_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from spark_kms.spark.session import check_master, requested_master

    master = requested_master(value)
    if master is None:
        return None
    try:
        return check_master(master)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _conf_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    return parse_conf(value)


class _Session:
    """Builds the verb's session once, quiets a classic Spark's log, releases a Connect session."""

    def __init__(self, master: str | None, conf: dict[str, str], app_name: str) -> None:
        self.master, self.conf, self.app_name = master, conf, app_name
        self.session: Any = None

    def __call__(self) -> Any:
        if self.session is None:
            from spark_kms.spark.remote import is_connect
            from spark_kms.spark.session import spark_session

            self.session = spark_session(self.master, self.app_name, conf=self.conf)
            if not is_connect(self.session):
                # Spark's own log stays off unless -v: for a failed task it prints the worker's whole
                # Python traceback (several times), while the verb reports the error once, short, with its code.
                ctx = click.get_current_context(silent=True)
                verbose = ctx.find_root().params.get("verbose", 0) if ctx is not None else 0
                self.session.sparkContext.setLogLevel("ERROR" if verbose else "OFF")
        return self.session

    def release(self) -> None:
        from spark_kms.spark.remote import is_connect

        if is_connect(self.session):
            self.session.stop()


def spark_options(*, always: bool, app_name: str = "spark-kms") -> Callable[[F], F]:
    """Add ``--master`` and ``--conf`` to a verb and pass it ``spark=`` (see the module docstring)."""

    def decorate(fn: F) -> F:
        if always:
            master_help = f"{_MASTER_HELP}; default local[2]"
            conf_help = "a Spark setting KEY=VALUE for the session (repeatable)"
        else:
            master_help = f"{_MASTER_HELP}; default: run in this process, without Spark"
            conf_help = "a Spark setting KEY=VALUE for the session (repeatable; needs a master)"

        @click.option("--master", metavar="URL", callback=_master_option, help=master_help)
        @click.option("--conf", "spark_conf", multiple=True, metavar="KEY=VALUE", callback=_conf_option,
                      help=conf_help)
        @functools.wraps(fn)
        def wrapper(master: str | None, spark_conf: dict[str, str], **kwargs: Any) -> Any:
            if not always and master is None:
                if spark_conf:
                    raise click.UsageError("--conf needs --master (or SPARK_KMS_MASTER / SPARK_REMOTE): without "
                                           "a master this verb runs without Spark")
                return fn(spark=None, **kwargs)
            from spark_kms.spark.session import is_connect_master

            session = _Session(master, spark_conf, app_name)
            lazy = always and not (master and is_connect_master(master))
            result = fn(spark=session if lazy else session(), **kwargs)
            session.release()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
