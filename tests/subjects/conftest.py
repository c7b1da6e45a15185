"""Fixtures of the subject key store tests: a store URL on each backend (SQLite in tmp_path, a fresh database
on one real PostgreSQL server per module), clean KMS counters and caches."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spark_kms.kms import process_dek_cache, reset_kms_call_counts
from spark_kms.subjects._cache import CACHE_TTL_ENV, subject_key_cache
from spark_kms.subjects.store import DEFAULT_STORE_ENV, PAUSE_ERASE_ENV


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    from spark_kms.testing.postgres import postgres_server

    with postgres_server(user="spark_kms", database="spark_kms") as dsn:
        yield dsn


def fresh_database(dsn: str) -> str:
    """A new, empty database on the server of ``dsn``; its URL."""
    import psycopg2

    name = f"subjects_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def new_postgres_database(postgres_dsn: str) -> Callable[[], str]:
    """Makes a fresh database on the module's PostgreSQL server; returns its URL."""
    return lambda: fresh_database(postgres_dsn)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL where no store exists yet, on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'subjects.db'}"
    return fresh_database(request.getfixturevalue("postgres_dsn"))


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (CACHE_TTL_ENV, DEFAULT_STORE_ENV, PAUSE_ERASE_ENV, "SPARK_KMS_PRINCIPAL"):
        monkeypatch.delenv(name, raising=False)
    subject_key_cache().clear()
    process_dek_cache().clear()
    reset_kms_call_counts()
    yield
    monkeypatch.delenv(CACHE_TTL_ENV, raising=False)
    subject_key_cache().clear()
    process_dek_cache().clear()
