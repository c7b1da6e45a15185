"""Where a subject key store lives: its URL, its database connection and its schema.

Two backends, one portable SQL dialect (``?`` placeholders, rewritten to ``%s`` for psycopg2):

* **SQLite** (stdlib ``sqlite3``): ``sqlite:///abs/path.db`` or a bare filesystem path. WAL journal,
  ``synchronous=FULL`` (a committed erasure survives a power cut), writers serialised by
  ``BEGIN IMMEDIATE``. The file is created 0600 in a 0700 directory.
* **PostgreSQL** (psycopg2, the ``postgres`` extra): ``postgresql://user[:password]@host:port/db``.
  Ordinary transactions (READ COMMITTED); the store takes row locks where two writers could race.

A URL's password never leaves this module in clear: :func:`mask_url` is what reprs, logs and errors show,
and :func:`database_error` turns a driver error into a :class:`~spark_kms.errors.SparkKmsError` with the
driver's primary message only (PostgreSQL's DETAIL lines quote row values, e.g. a subject id).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from spark_kms.errors import ConfigurationError, MissingExtraError, SparkKmsError

__all__ = ["Backend", "PostgresBackend", "SqliteBackend", "backend_for", "database_error", "mask_url"]

logger = logging.getLogger(__name__)

_POSTGRES_SCHEMES = ("postgresql", "postgres")

#: table name -> column definitions; ``{blob}`` and ``{serial}`` are each backend's types
_TABLES: tuple[tuple[str, str], ...] = (
    ("meta", "store_id TEXT NOT NULL, key_uri TEXT NOT NULL, created_at TEXT NOT NULL, "
             "format_version INTEGER NOT NULL"),
    ("keks", 'kek_id TEXT PRIMARY KEY, entry_json TEXT NOT NULL, "current" INTEGER NOT NULL, '
             "created_at TEXT NOT NULL"),
    ("subject_keys", "subject_id TEXT PRIMARY KEY, kek_id TEXT NOT NULL REFERENCES keks (kek_id), "
                     "wrapped {blob} NOT NULL, created_at TEXT NOT NULL"),
    ("erased_subjects", "subject_id TEXT PRIMARY KEY, erased_at TEXT NOT NULL, principal TEXT NOT NULL, "
                        "reason TEXT NOT NULL"),
    ("grants", "principal TEXT NOT NULL, permission TEXT NOT NULL, PRIMARY KEY (principal, permission)"),
    ("audit", "id {serial}, at TEXT NOT NULL, principal TEXT NOT NULL, action TEXT NOT NULL, "
              "outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')), detail TEXT NOT NULL"),
)
TABLE_NAMES = tuple(name for name, _ in _TABLES)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what reprs, logs and errors show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def database_error(url: str, what: str, exc: BaseException) -> SparkKmsError:
    """A store error for a driver error: the driver's first message line, the password masked, never the
    PostgreSQL DETAIL (it quotes row values)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    parsed = urlsplit(url) if "@" in url else None
    if parsed is not None and parsed.password:
        first = first.replace(parsed.password, "***")
    return SparkKmsError(f"subject key store {mask_url(url)}: {what} failed: {type(exc).__name__}: {first}")


class Backend:
    """One database: how to connect, the SQL dialect's differences, the schema."""

    name = ""
    blob_type = ""
    serial_type = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = mask_url(url)

    def exists(self) -> bool:
        """Whether there is a store here (its schema), without creating anything."""
        raise NotImplementedError

    def connect(self, *, create: bool) -> Any:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text

    def has_schema(self, conn: Any) -> bool:
        raise NotImplementedError

    def begin(self, cursor: Any, *, write: bool) -> None:
        cursor.execute("BEGIN")

    def lock_schema_creation(self, cursor: Any) -> None:
        """Serialise two processes creating the schema at once."""

    def lock_store(self, cursor: Any, lock_id: int, *, exclusive: bool) -> None:
        """The store's lock until the transaction ends: shared by writers creating subject keys, exclusive for
        an erasure or a KEK rotation. A no-op where write transactions are serialised anyway (SQLite)."""

    def create_schema(self, cursor: Any) -> None:
        for name, columns in _TABLES:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {name} ("
                           + columns.format(blob=self.blob_type, serial=self.serial_type) + ")")

    def max_params(self, conn: Any) -> int:
        return 32766

    def to_bytes(self, value: Any) -> bytes:
        return bytes(value)

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown!r})"


class SqliteBackend(Backend):
    name = "sqlite"
    blob_type = "BLOB"
    serial_type = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path

    def exists(self) -> bool:
        if not self.path.is_file():
            return False
        conn = self.connect(create=False)
        try:
            return self.has_schema(conn)
        finally:
            conn.close()

    def connect(self, *, create: bool) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                # Created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the same mode.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        elif not self.path.is_file():
            raise ConfigurationError(f"no subject key store at {self.shown}: the file does not exist "
                                     "(create the store first: SubjectKeyStore.open(url, create=True))")
        # Autocommit mode: this module says BEGIN / COMMIT itself. One connection per store object, shared
        # by its threads under the store's lock.
        conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def has_schema(self, conn: Any) -> bool:
        row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        return bool(row[0])

    def begin(self, cursor: Any, *, write: bool) -> None:
        # IMMEDIATE takes the write lock up front: two writers never both read, then both try to write.
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def max_params(self, conn: Any) -> int:
        try:
            return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        except AttributeError:  # Python < 3.11
            return 999

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)


class PostgresBackend(Backend):
    name = "postgresql"
    blob_type = "BYTEA"
    serial_type = "BIGSERIAL PRIMARY KEY"

    def _driver(self) -> Any:
        try:
            import psycopg2
        except ImportError as exc:
            raise MissingExtraError("a PostgreSQL subject key store needs psycopg2: "
                                    "pip install 'spark-kms[postgres]'") from exc
        return psycopg2

    def exists(self) -> bool:
        conn = self.connect(create=False)
        try:
            return self.has_schema(conn)
        finally:
            conn.close()

    def connect(self, *, create: bool) -> Any:
        psycopg2 = self._driver()
        try:
            conn = psycopg2.connect(self.url)
        except psycopg2.Error as exc:
            raise database_error(self.url, "connecting", exc) from None
        conn.autocommit = True  # this module says BEGIN / COMMIT itself, as for SQLite
        return conn

    def sql(self, text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def has_schema(self, conn: Any) -> bool:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM information_schema.tables "
                           "WHERE table_schema = current_schema() AND table_name = 'meta'")
            return bool(cursor.fetchone()[0])

    def lock_schema_creation(self, cursor: Any) -> None:
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent CREATE of the same table.
        cursor.execute("SELECT pg_advisory_xact_lock(7281937461)")

    def lock_store(self, cursor: Any, lock_id: int, *, exclusive: bool) -> None:
        # An advisory lock needs no table privilege: writers need not be able to UPDATE or DELETE anything.
        # Without it, under READ COMMITTED, a writer could give a key to a subject whose erasure commits
        # between the writer's check for a tombstone and its INSERT.
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        cursor.execute(f"SELECT {function}(%s)", (lock_id,))

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (self._driver().Error,)


def backend_for(url: str) -> Backend:
    """The backend of a store URL: ``sqlite:///abs/path.db``, a bare path, or ``postgresql://...``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("a subject key store URL is 'sqlite:///abs/path.db', a file path, or "
                                 f"'postgresql://user@host:port/db'; got {type(url).__name__} {mask_url(str(url))!r}")
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in _POSTGRES_SCHEMES:
        return PostgresBackend(url)
    if scheme == "sqlite":
        rest = url[len("sqlite://"):]
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigurationError(f"a SQLite subject key store URL names an absolute path, "
                                     f"'sqlite:///abs/path.db'; got {mask_url(url)!r}")
        return SqliteBackend(url, Path(unquote(rest)))
    if scheme:
        raise ConfigurationError(f"unsupported subject key store URL scheme {scheme!r} in {mask_url(url)!r}: "
                                 "expected sqlite:///abs/path.db, a file path, or postgresql://user@host:port/db")
    path = Path(url).expanduser().absolute()
    return SqliteBackend(f"sqlite://{path}", path)


@contextmanager
def transaction(backend: Backend, conn: Any, *, write: bool) -> Iterator[Any]:
    """A cursor inside one transaction: committed when the block ends, rolled back if it raises."""
    cursor = conn.cursor()
    try:
        backend.begin(cursor, write=write)
        try:
            yield cursor
        except BaseException:
            try:
                cursor.execute("ROLLBACK")
            except backend.driver_errors():  # the connection may be gone; the database rolls back anyway
                logger.debug("rollback failed on %s", backend.shown, exc_info=True)
            raise
        cursor.execute("COMMIT")
    finally:
        cursor.close()


def placeholders(count: int) -> str:
    return ", ".join("?" * count)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
