"""A throw-away PostgreSQL server on 127.0.0.1 for tests: ``initdb`` into a temporary directory, ``postgres``
on a free port, stopped and removed on exit.

    with postgres_server() as dsn:       # postgresql://spark_kms@127.0.0.1:PORT/spark_kms
        engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://"))

The binaries are Debian's ``postgresql`` package (``make postgres`` installs it): ``initdb`` on ``PATH``, else
the newest ``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so when this process is
root the server runs as an unprivileged user (``postgres``, else ``nobody``) that owns the directory. The
server trusts every local connection (a test server: no password); fsync is off, so it is fast and loses
its data on a crash, which nobody minds here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spark_kms.errors import SparkKmsError
from spark_kms.testing.connect import free_port, kill_group

__all__ = ["PostgresServerError", "find_bin_dir", "postgres_server"]

logger = logging.getLogger(__name__)

_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresServerError(SparkKmsError):
    """The test PostgreSQL server could not be found, set up or started."""


def find_bin_dir() -> Path:
    """The directory of ``initdb``, ``postgres`` and ``createdb``: ``initdb`` on ``PATH``, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian installs them there, off ``PATH``)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted((p for p in _DEBIAN_ROOT.glob("*/bin/initdb") if p.parent.parent.name.isdigit()),
                      key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    raise PostgresServerError("PostgreSQL is not installed (no initdb on PATH nor under /usr/lib/postgresql): "
                              "run `make postgres` (apt-get install postgresql)")


def _run_as() -> tuple[int | None, int | None]:
    """``(uid, gid)`` to run the server as: None when this process is not root, else an unprivileged user."""
    if os.geteuid() != 0:
        return None, None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise PostgresServerError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


def _accepting(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGINT (PostgreSQL's fast shutdown) to the server's process group, SIGKILL to what is left after
    ``timeout``."""
    kill_group(process, timeout, first=signal.SIGINT)


@contextlib.contextmanager
def postgres_server(
    *,
    user: str = "spark_kms",
    database: str = "spark_kms",
    start_timeout: float = 60.0,
    stop_timeout: float = 15.0,
) -> Iterator[str]:
    """Start a PostgreSQL server on 127.0.0.1 and a free port, yield its DSN
    (``postgresql://<user>@127.0.0.1:<port>/<database>``), stop it and remove its files on exit.

    :param user: the superuser's name (no password: the server trusts local connections).
    :param database: a database created for the caller.
    """
    for what, name in (("user", user), ("database", database)):
        if not _NAME.match(name):
            raise PostgresServerError(f"{what} name {name!r} must match {_NAME.pattern}")
    bin_dir = find_bin_dir()
    uid, gid = _run_as()
    root = Path(tempfile.mkdtemp(prefix="spark_kms_pg_"))
    data, sockets, log_path = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    if uid is not None:
        os.chown(root, uid, gid)  # type: ignore[arg-type]
        os.chown(sockets, uid, gid)  # type: ignore[arg-type]
    as_user: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": []} if uid is not None else {}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PGTZ": "UTC"}
    process: subprocess.Popen[Any] | None = None
    try:
        init = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "--encoding=UTF8",
             "--no-sync", "--no-instructions"],
            capture_output=True, text=True, env=env, cwd=root, check=False, **as_user)
        if init.returncode != 0:
            raise PostgresServerError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-2000:]}")
        port = free_port()
        with open(log_path, "wb") as log:
            if uid is not None:
                os.fchown(log.fileno(), uid, gid)  # type: ignore[arg-type]
            process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                 "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                start_new_session=True, **as_user)
        logger.info("PostgreSQL starting on 127.0.0.1:%d (pid %d, data %s)", port, process.pid, data)
        deadline = time.monotonic() + start_timeout
        while not _accepting(port):
            if process.poll() is not None:
                raise PostgresServerError(f"postgres exited with code {process.returncode} before listening on "
                                          f"127.0.0.1:{port}; its log:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise PostgresServerError(f"postgres did not listen on 127.0.0.1:{port} within "
                                          f"{start_timeout:.0f} s; its log:\n{_tail(log_path)}")
            time.sleep(0.1)
        # The port may be open a moment before the server takes connections: createdb retries until it can.
        while True:
            created = subprocess.run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database],
                capture_output=True, text=True, env=env, check=False)
            if created.returncode == 0:
                break
            if "starting up" not in created.stderr or time.monotonic() > deadline:
                raise PostgresServerError(f"createdb {database} failed: {created.stderr.strip()[-2000:]}")
            time.sleep(0.2)
        dsn = f"postgresql://{user}@127.0.0.1:{port}/{database}"
        logger.info("PostgreSQL ready: %s", dsn)
        yield dsn
    finally:
        if process is not None:
            _stop(process, stop_timeout)
        shutil.rmtree(root, ignore_errors=True)
