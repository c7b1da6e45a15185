"""What the Spark Connect tests share: principals, directories, the keystore, the source rows, checks."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path
from typing import Any, NamedTuple

#: the principal of every KMS call made by the server side (its JVM and Python workers)
SERVER_PRINCIPAL = "connect-server"
#: the principal of this process (the client): no key grants it anything
CLIENT_PRINCIPAL = "connect-client"
#: the principal that manages the tests' keys
ADMIN_PRINCIPAL = "key-admin"


class Dirs(NamedTuple):
    """``data``: the server's data directory (a private tmpfs in its mount namespace; empty here);
    ``keystore``: the embedded KMS's keystore (seen by both processes); ``base``: their parent."""

    base: Path
    data: Path
    keystore: Path


class Kms(NamedTuple):
    """The shared keystore: ``kms_options`` for jobs, ``admin`` (a LocalKms as ``key-admin``)."""

    keystore: Path
    kms_options: dict[str, dict[str, Any]]

    @property
    def admin(self) -> Any:
        from spark_kms.kms.local import LocalKms

        return LocalKms(self.keystore, principal=ADMIN_PRINCIPAL)

    def new_key(self, name: str = "pii") -> str:
        """A fresh key usable by the server side only; returns its key URI."""
        alias = f"alias/{name}-{uuid.uuid4().hex[:8]}"
        admin = self.admin
        key_id = admin.create_key(alias=alias)
        admin.put_key_policy(key_id, {ADMIN_PRINCIPAL: ["admin"], SERVER_PRINCIPAL: ["encrypt", "decrypt"]})
        return f"local://{alias}"

SCHEMA = "id long, name string, ssn string, email string, amount double, born date"
NAMES = ["Ada", "Alan", "Grace", "Zoë Ångström", "Edsger"]
ROWS = [
    (
        i,
        NAMES[i % len(NAMES)],
        None if i % 9 == 0 else f"{i % 1000:03d}-{i % 100:02d}-{i:04d}",
        f"user{i}@example.org",
        round(i * 1.25, 2),
        dt.date(1950 + i % 50, 1 + i % 12, 1 + i % 28),
    )
    for i in range(60)
]
COLUMNS = ["id", "name", "ssn", "email", "amount", "born"]


def source_df(spark: Any, rows: list[tuple[Any, ...]] = ROWS) -> Any:
    """The source rows in 3 partitions (3 tasks, so 3 data keys for randomised columns)."""
    return spark.createDataFrame(rows, SCHEMA).repartition(3)


def rows_of(df: Any, columns: list[str] = COLUMNS) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in df.select(*columns).collect())


def assert_client_sees_nothing(data: Path) -> None:
    """The client's view of the server's data directory: empty, whatever the server wrote there."""
    assert os.listdir(data) == []


def server_side_calls(kms: Kms, key_uri: str) -> list[dict[str, Any]]:
    """The audit lines of ``key_uri``'s key, after checking that every data-plane call on it was made
    by the server side (none by the client) and went through."""
    alias = key_uri[len("local://"):]
    events = kms.admin.audit_events(alias)
    data_plane = [e for e in events if e["principal"] != ADMIN_PRINCIPAL]
    assert data_plane, f"no KMS call was made with {key_uri}"
    assert {e["principal"] for e in data_plane} == {SERVER_PRINCIPAL}, data_plane
    assert {e["outcome"] for e in data_plane} == {"ok"}, data_plane
    return data_plane
