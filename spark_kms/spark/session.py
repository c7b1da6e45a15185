"""Build the SparkSession spark_kms runs on: a classic one (:func:`local_session`) or, for an
``sc://`` master, a Spark Connect one; :func:`spark_session` picks, and is what the CLI and the
Airflow operators call.

Why each setting of a session spark_kms *starts* (:data:`DEFAULT_CONF`; a Spark Connect server
keeps its own settings):

* ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON`` = ``sys.executable``: Python
  workers (UDFs, data source writers, planner workers) must run the interpreter
  spark_kms is installed in, or they import another environment.
* ``spark.ui.enabled=false``: no HTTP port, nothing listening beyond what Spark needs.
* ``spark.sql.shuffle.partitions`` small: tests and demos move little data, and the
  machine has two cores.
* ``spark.sql.execution.arrow.pyspark.enabled``: Arrow transfers for ``toPandas``.
* ``spark.driver.host`` / ``bindAddress`` = 127.0.0.1: a local driver; on a cluster whose
  executors run on other hosts, override them (``conf=``, ``--conf``).

Which master: the ``master`` argument, else ``$SPARK_KMS_MASTER``, else ``$SPARK_REMOTE`` (pyspark's
own variable for a Spark Connect URL), else ``local[2]`` (:func:`requested_master`). One process
holds one kind of session: pyspark turns a whole process into a Spark Connect client
(``SPARK_CONNECT_MODE_ENABLED``) once it has made a Connect session, and a classic SparkContext
cannot share the process with it, so asking for the other kind is a :class:`ConfigurationError`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spark_kms.errors import ConfigurationError, JobError
from spark_kms.spark.conf import REDACTION_REGEX

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_CONF",
    "DEFAULT_MASTER",
    "MASTER_ENV_VARS",
    "MASTER_FORMS",
    "check_master",
    "is_connect_master",
    "local_session",
    "redact_master",
    "requested_master",
    "set_python_env",
    "spark_session",
]

logger = logging.getLogger(__name__)

DEFAULT_MASTER = "local[2]"

#: where a master comes from when none is given, first set wins
MASTER_ENV_VARS = ("SPARK_KMS_MASTER", "SPARK_REMOTE")

#: the master URL forms :func:`spark_session` accepts (for messages)
MASTER_FORMS = "local[N], spark://host:port, yarn, k8s://https://host:port, or sc://host:port (Spark Connect)"

_CLASSIC_MASTER = re.compile(r"^(local(\[[^\]]+\])?|local-cluster\[[^\]]+\]|yarn|spark://\S+|k8s://\S+)$")
_TOKEN_PARAM = re.compile(r"(;\s*token\s*=)[^;]*", re.IGNORECASE)
#: how long a Spark Connect server may take to accept a TCP connection before the session is refused
CONNECT_TIMEOUT_S = 10.0

DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.session.timeZone": "UTC",
    # Spark's UI and event logs mask conf values whose names match: Spark's default names plus every
    # spark_kms secret option (spark.spark_kms.kms.local.root_key, ...; spark_kms.spark.conf).
    "spark.redaction.regex": REDACTION_REGEX,
}


def set_python_env() -> None:
    """Point Spark's Python workers at this interpreter (must happen before the JVM starts)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # Bind to loopback: the JVM otherwise resolves the host name and may pick another interface.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def local_session(
    master: str = DEFAULT_MASTER,
    app_name: str = "spark_kms",
    *,
    conf: Mapping[str, Any] | None = None,
    register: bool = True,
) -> SparkSession:
    """A SparkSession on ``master`` with :data:`DEFAULT_CONF` (overridden by ``conf``).

    ``register=True`` also registers the ``spark_kms`` data source.
    Reuses an active session with the same master if there is one (Spark allows
    one SparkContext per JVM).
    """
    from pyspark.sql import SparkSession

    set_python_env()
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**DEFAULT_CONF, **dict(conf or {})}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if register:
        from spark_kms.spark.datasource import register as _register

        _register(spark)
    return spark


# -- any master: classic or Spark Connect ----------------------------------------------------------------
def requested_master(master: str | None = None) -> str | None:
    """The master asked for: ``master``, else the first of :data:`MASTER_ENV_VARS` that is set, else None."""
    if master and master.strip():
        return master.strip()
    for name in MASTER_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def is_connect_master(master: str) -> bool:
    """Whether ``master`` names a Spark Connect server (``sc://...``)."""
    return master.strip().lower().startswith("sc://")


def redact_master(master: str) -> str:
    """``master`` fit for a log line or a message: a Spark Connect ``;token=...`` parameter masked."""
    return _TOKEN_PARAM.sub(r"\1***", master)


def check_master(master: str) -> str:
    """``master`` stripped, if it has one of the :data:`MASTER_FORMS`; a :class:`ConfigurationError` otherwise.

    A ``sc://`` URL is checked by pyspark's own parser (host, ``/;key=value`` parameters)."""
    value = master.strip()
    if is_connect_master(value):
        _connect_endpoint(value)
        return value
    if not _CLASSIC_MASTER.match(value):
        raise ConfigurationError(f"unsupported Spark master {redact_master(value)!r}: expected {MASTER_FORMS}")
    return value


def spark_session(
    master: str | None = None,
    app_name: str = "spark_kms",
    *,
    conf: Mapping[str, Any] | None = None,
    register: bool = True,
) -> SparkSession:
    """The SparkSession for ``master`` (default: :func:`requested_master`, else ``local[2]``).

    * ``sc://host:port[/;param=value...]``: a new Spark Connect session to that server; ``conf`` is
      set on it (session settings only: a server refuses a static or cluster setting, which is a
      :class:`ConfigurationError` naming it). A server that does not accept a TCP connection within
      :data:`CONNECT_TIMEOUT_S` is a :class:`~spark_kms.errors.JobError` (pyspark's client would
      otherwise retry for minutes).
    * anything else (``local[N]``, ``spark://``, ``yarn``, ``k8s://``): :func:`local_session`, with
      :data:`DEFAULT_CONF` under ``conf``. A JVM holds one SparkContext: if one is already running
      in this process, it is reused whatever its master (a warning says so).

    ``register=True`` registers the ``spark_kms`` data source in the session.
    """
    target = check_master(requested_master(master) or DEFAULT_MASTER)
    if is_connect_master(target):
        return _connect_session(target, conf or {}, register)
    remote = os.environ.get("SPARK_REMOTE", "").strip()
    if remote:
        raise ConfigurationError(f"SPARK_REMOTE is set ({redact_master(remote)}), so pyspark would not start "
                                 f"a classic session on {target}: unset SPARK_REMOTE, or ask for that server")
    if os.environ.get("SPARK_CONNECT_MODE_ENABLED"):
        raise ConfigurationError(f"this process already made a Spark Connect session, so it cannot start a "
                                 f"classic one on {target}: run it in another process")
    from spark_kms.spark.fastpath import session_conf

    # The JVM fast path's plugin and jar, when built (spark_kms.spark.fastpath; SPARK_KMS_FAST_PATH=0: not).
    spark = local_session(target, app_name, conf=session_conf(conf), register=register)
    running = spark.sparkContext.master
    if running != target:
        logger.warning("reusing this process's SparkSession on %s (asked for %s)", running, target)
    logger.info("Spark session on master %s (Spark %s, app %s)", running, spark.version,
                spark.sparkContext.appName)
    return spark


def _connect_endpoint(url: str) -> tuple[str, int]:
    """``(host, port)`` of a Spark Connect URL, parsed and checked by pyspark's own channel builder."""
    try:
        from pyspark.sql.connect.client import DefaultChannelBuilder
    except ImportError as exc:
        raise ConfigurationError(f"a Spark Connect master ({redact_master(url)}) needs pyspark's Spark Connect "
                                 f"client and its dependencies: pip install 'pyspark[connect]' ({exc})") from None
    try:
        endpoint = DefaultChannelBuilder(url).endpoint
    except Exception as exc:  # noqa: BLE001 - pyspark's PySparkValueError, whatever its exact class
        detail = redact_master(str(exc))
        raise ConfigurationError(f"bad Spark Connect URL {redact_master(url)!r}: {detail}") from None
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _check_reachable(url: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise JobError(f"cannot reach the Spark Connect server at {redact_master(url)} ({host}:{port}: {reason}): "
                       "check the master URL and that the server is running") from None


def _active_classic_context() -> Any:
    try:
        from pyspark.core.context import SparkContext
    except ImportError:  # pragma: no cover - pyspark-client (Connect only) has no classic context
        return None
    return SparkContext._active_spark_context


def _connect_session(url: str, conf: Mapping[str, Any], register: bool) -> SparkSession:
    host, port = _connect_endpoint(url)
    running = _active_classic_context()
    if running is not None:
        raise ConfigurationError(f"this process already runs a classic SparkContext on {running.master}, so it "
                                 f"cannot also be a Spark Connect client of {redact_master(url)}: run it in "
                                 "another process")
    _check_reachable(url, host, port)
    from pyspark.sql import SparkSession

    # create(), not getOrCreate(): a Connect client may hold several sessions, and getOrCreate() would hand
    # back an active one whatever server it talks to.
    spark = SparkSession.builder.remote(url).create()
    for key, value in conf.items():
        try:
            spark.conf.set(str(key), str(value))
        except Exception as exc:  # noqa: BLE001 - the server's AnalysisException (e.g. CANNOT_MODIFY_CONFIG)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigurationError(f"the Spark Connect server at {redact_master(url)} does not let a client set "
                                     f"{key!r} (set static and cluster settings on the server): "
                                     f"{first_line}") from None
    if register:
        from spark_kms.spark.datasource import register as _register

        _register(spark)
    logger.info("Spark Connect session %s on %s (server Spark %s)", spark.session_id, redact_master(url),
                spark.version)
    return spark
