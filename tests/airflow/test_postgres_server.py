"""``spark_kms.testing.postgres.postgres_server``: a real PostgreSQL on 127.0.0.1, run by an unprivileged user,
gone with its files on exit (the Airflow deployment test's metadata database)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from spark_kms.testing.postgres import PostgresServerError, postgres_server

pytestmark = pytest.mark.airflow


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_a_throw_away_server_takes_connections_and_leaves_nothing_behind() -> None:
    import psycopg2

    with postgres_server(user="tester", database="meta") as dsn:
        assert dsn.startswith("postgresql://tester@127.0.0.1:") and dsn.endswith("/meta")
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('x'); SELECT current_user, v, "
                        "pg_backend_pid(), current_setting('data_directory') FROM t")
            user, value, backend, data_dir = cur.fetchone()
            # Read while the connection is open: its backend process exits when the connection closes.
            backend_uid = _uid_of(backend)
        conn.close()
        assert (user, value) == ("tester", "x")
        if os.geteuid() == 0:  # PostgreSQL refuses root: the server runs as an unprivileged user
            assert backend_uid != 0
        port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not Path(data_dir).exists()


def test_bad_names_are_refused_before_anything_starts() -> None:
    with pytest.raises(PostgresServerError, match="database name"), postgres_server(database="x; DROP"):
        pass
