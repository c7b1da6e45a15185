"""A Spark Connect server in its own process, for tests.

::

    with connect_server() as server:            # waits until the gRPC port accepts connections
        run(["spark-kms", "encrypt", "--master", server.url, ...])
    # the server's whole process group is gone here

The server is pyspark's own ``SparkConnectServer``, started as ``sbin/start-connect-server.sh --wait``
does it (``$SPARK_HOME/bin/spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer``,
``SPARK_HOME`` = the pyspark package; ``spark-class`` would ignore ``--master`` and ``--conf``),
bound to 127.0.0.1 on a free port, with its Python workers on this interpreter
(``PYSPARK_PYTHON``), so they import the same spark_kms. It runs in a new session (its own
process group: the ``spark-class`` shell, the launcher and the JVM with its Python workers), and
leaving the ``with`` block kills that group: SIGTERM, then SIGKILL after ``stop_timeout``.

``command_prefix`` runs the server under another program, e.g. ``["unshare", "-m", "--"]`` (or a
small shell script that mounts a private tmpfs and then ``exec "$@"``), for tests whose client must
not see the server's files. Its output (stdout and stderr) goes to ``server.log_path`` (in
``log_dir``, else in a temporary directory removed on exit); a server that exits or does not listen
within ``start_timeout`` raises :class:`ConnectServerError` with the end of that log.

The pyspark daemons that run the server's Python workers put themselves in process groups of their
own; they exit when the JVM that feeds them is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SERVER_CLASS", "ConnectServer", "ConnectServerError", "connect_server", "free_port", "kill_group", "spark_home"]

logger = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

#: server settings: no UI port, loopback only, few shuffle partitions (tests move little data), UTC
_SERVER_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.session.timeZone": "UTC",
}


class ConnectServerError(RuntimeError):
    """The server exited, or did not listen in time; the message ends with its log."""


@dataclass(frozen=True)
class ConnectServer:
    """A running server: ``url`` (``sc://127.0.0.1:<port>``) is what a client's ``--master`` takes."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"sc://{self.host}:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spark_home() -> Path:
    """The pyspark package directory: pip's pyspark is a whole Spark distribution (bin/, jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may take it before the server does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def kill_group(process: subprocess.Popen[Any], timeout: float, first: signal.Signals = signal.SIGTERM) -> None:
    """``first`` (SIGTERM by default) to a server's process group; after ``timeout`` (or once the leader is
    gone), SIGKILL to whatever of the group is left (a stuck JVM, its Python workers). The server must have
    been started with ``start_new_session=True``: the group's id is then the leader's pid."""

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    signal_group(first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    signal_group(signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def connect_server(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    master: str = "local[2]",
    conf: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    command_prefix: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    start_timeout: float = 180.0,
    stop_timeout: float = 15.0,
) -> Iterator[ConnectServer]:
    """Start a Spark Connect server, wait for its port, yield it, kill its process group on exit.

    :param port: the gRPC port (default: a free one).
    :param master: the server's own Spark master.
    :param conf: more ``--conf`` settings of the server (over the defaults of this module).
    :param env: more environment variables of the server (over this process's, with
        ``SPARK_HOME``, ``PYSPARK_PYTHON`` and ``SPARK_LOCAL_IP`` set).
    :param command_prefix: a program (and its arguments) that runs the server command.
    :param log_dir: where the server log goes (default: a temporary directory, removed on exit).
    """
    port = port or free_port(host)
    home = spark_home()
    settings = {**_SERVER_CONF, **dict(conf or {}),
                "spark.connect.grpc.binding.port": str(port), "spark.connect.grpc.binding.address": host}
    # spark-submit, as sbin/start-connect-server.sh does (without its daemon wrapper): `spark-class SERVER_CLASS`
    # would run the class with no SparkConf from its arguments ("A master URL must be set").
    command = [*command_prefix, str(home / "bin" / "spark-submit"), "--class", SERVER_CLASS,
               "--name", "spark_kms test Spark Connect server", "--master", master]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    environment = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable,
                   "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": host}
    # A client setting of this process must not turn the server into a client of another server.
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "MASTER"):
        environment.pop(name, None)
    environment.update(env or {})
    own_log_dir = log_dir is None
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="spark_kms_connect_")) / f"connect-server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=environment, cwd=cwd, start_new_session=True)
    server = ConnectServer(host, port, process, log_path)
    logger.info("Spark Connect server starting on %s (pid %d, log %s)", server.url, process.pid, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while not _listening(host, port):
            if process.poll() is not None:
                raise ConnectServerError(f"the Spark Connect server exited with code {process.returncode} before "
                                         f"listening on {server.url}; its log:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ConnectServerError(f"the Spark Connect server did not listen on {server.url} within "
                                         f"{start_timeout:.0f} s; its log:\n{server.log_tail()}")
            time.sleep(0.25)
        logger.info("Spark Connect server listening on %s", server.url)
        yield server
    finally:
        kill_group(process, stop_timeout)
        logger.info("Spark Connect server on %s stopped", server.url)
        if own_log_dir:
            shutil.rmtree(log_path.parent, ignore_errors=True)
