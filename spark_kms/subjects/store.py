"""The subject key store: one random 32-byte key per data subject, erasable one subject at a time.

Crypto-shredding per subject (issue #17): cells of a subject are encrypted under a key derived from that
subject's key, so deleting the key row erases the subject's data everywhere it was written, backups of the
*data* included. The store keeps:

* ``meta``: the store id (32 hex), its KMS key URI, when it was made, ``format_version`` 1;
* ``keks``: the store's key-encryption keys, each a :class:`~spark_kms.crypto.DekEntry` (wrapped by the KMS
  under the encryption context ``{"purpose": "spark_kms.subject_store", "store_id": <id>}``); one is current;
* ``subject_keys``: each subject's key wrapped by a KEK with AES-256-GCM -- ``nonce(12) || ct || tag(16)``,
  AAD ``b"spark_kms subject key v1" || store_id (ASCII) || u32(len(subject_id)) || subject_id (UTF-8)``;
* ``erased_subjects``: tombstones (an erased subject is never given a key again);
* ``grants``: principal (or ``"*"``) -> ``read`` / ``write`` / ``erase`` / ``admin``;
* ``audit``: the erasure audit log (erasures, refusals, grants, KEK rotations, tenant receipts).

Unwrapped subject keys are cached per process (LRU of 100,000, TTL ``$SPARK_KMS_SUBJECT_CACHE_TTL_S``, default
300 s): an erasure in this process evicts the subject at once; other processes stop serving the key within the
TTL. Nothing here logs, shows or raises key bytes or subject ids (errors give counts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.crypto import AES_256_GCM, DekEntry, new_dek_id, utc_now_iso
from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    DecryptionError,
    KeyNotFoundError,
    SparkKmsError,
    UnknownSubjectError,
)
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.kms.local._policy import resolve_principal
from spark_kms.parquet.keys import DekResolver, entry_for
from spark_kms.subjects._admin import PERMISSIONS, _StoreAdmin, subject_aad
from spark_kms.subjects._backends import (
    Backend,
    backend_for,
    chunks,
    database_error,
    placeholders,
    transaction,
)
from spark_kms.subjects._cache import CACHE_TTL_ENV, subject_key_cache

__all__ = [
    "CACHE_TTL_ENV",
    "DEFAULT_KEY_URI",
    "DEFAULT_STORE_ENV",
    "PERMISSIONS",
    "ErasureRecord",
    "SubjectKeyStore",
    "default_store_url",
    "store_of",
]

logger = logging.getLogger(__name__)

DEFAULT_STORE_ENV = "SPARK_KMS_SUBJECT_STORE"
#: test-only: seconds to sleep inside the erase transaction, after the DELETE, before the COMMIT
PAUSE_ERASE_ENV = "SPARK_KMS_TEST_PAUSE_ERASE_S"
DEFAULT_KEY_URI = "local://alias/spark-kms-subjects"
FORMAT_VERSION = 1
STORE_PURPOSE = "spark_kms.subject_store"
_CHUNK = 500
_NONCE = 12
_KEY_BYTES = 32


def default_store_url() -> str:
    """``$SPARK_KMS_SUBJECT_STORE``, else ``~/.spark_kms/subjects.db``."""
    return os.environ.get(DEFAULT_STORE_ENV) or str(Path("~/.spark_kms/subjects.db").expanduser())


def _check_ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise ConfigurationError("subject ids are an iterable of strings, not one string")
    out = list(dict.fromkeys(ids))
    bad = sum(1 for s in out if not isinstance(s, str) or not s)
    if bad:
        raise ConfigurationError(f"subject ids must be non-empty strings; {bad} of {len(out)} are not")
    return out


@dataclass(frozen=True)
class ErasureRecord:
    """What :meth:`SubjectKeyStore.erase` did: who erased which subject of which store, when, and the id of
    the audit row that records it (``receipt_id``). ``subject`` is kept out of ``repr`` (it is personal data)."""

    subject: str = field(repr=False)
    store_id: str
    principal: str
    at: str
    already_erased: bool
    datasets: tuple[str, ...]
    receipt_id: int
    kind: str = "subject"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SubjectKeyStore(_StoreAdmin):
    """A subject key store (see the module docstring). Make one with :meth:`open` or :func:`store_of`.

    Thread-safe: one database connection per store object, used under a lock. Pickles as configuration only
    (URL, KMS config, key URI, principal); the receiving process reconnects on first use.
    """

    def __init__(self, url: str, kms_options: KmsConfigLike = None, *, key_uri: str | None = None,
                 principal: str | None = None, autocreate: bool = False) -> None:
        self._backend: Backend = backend_for(url)
        self._kms = KmsConfig.of(kms_options)
        self._key_uri_option = key_uri
        self.principal = resolve_principal(principal)
        self._autocreate = autocreate
        self._lock = threading.RLock()
        self._conn: Any = None
        self._store_id: str | None = None
        self._key_uri: str | None = None
        self._keks: dict[str, DekEntry] = {}
        self._aead: dict[str, AESGCM] = {}
        #: SQL statements this object ran (tests bound it)
        self.statements = 0

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, kms_options: KmsConfigLike = None, key_uri: str | None = None,
             principal: str | None = None, create: bool = False) -> SubjectKeyStore:
        """Open the store at ``url``; ``create=True`` makes it (schema + KEK) if it does not exist."""
        store = cls(url, kms_options, key_uri=key_uri, principal=principal)
        store._ensure(create=create)
        return store

    def _ensure(self, *, create: bool = False) -> None:
        """Connect and load the store; create it when asked (or when autocreate and a write asks)."""
        with self._lock:
            if self._store_id is not None:
                return
            try:
                if self._conn is None:
                    self._conn = self._backend.connect(create=create)
                if not self._backend.has_schema(self._conn) or not self._read_meta():
                    if not create:
                        raise ConfigurationError(
                            f"no subject key store at {self.url} (create it first: "
                            "SubjectKeyStore.open(url, create=True), or write with create=True)")
                    self._create()
                    self._read_meta()
            except self._backend.driver_errors() as exc:
                raise database_error(self._backend.url, "opening", exc) from None

    def _read_meta(self) -> bool:
        cursor = self._conn.cursor()
        try:
            self._exec(cursor, "SELECT store_id, key_uri, format_version FROM meta")
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return False
        if int(row[2]) != FORMAT_VERSION:
            raise ConfigurationError(f"subject key store {self.url} has format_version {row[2]}; this release "
                                     f"reads {FORMAT_VERSION}")
        self._store_id, self._key_uri = str(row[0]), str(row[1])
        self._load_keks()
        logger.debug("opened subject key store %s (store %s, key %s)", self.url, self._store_id, self._key_uri)
        return True

    def _create(self) -> None:
        store_id = secrets.token_hex(16)
        key_uri = self._key_uri_option or DEFAULT_KEY_URI
        entry, aead = self._new_kek(key_uri, store_id)  # the KMS call, outside the database transaction
        now = utc_now_iso()
        with transaction(self._backend, self._conn, write=True) as cur:
            self._backend.lock_schema_creation(cur)
            self._backend.create_schema(cur)
            self._exec(cur, "SELECT count(*) FROM meta")
            if cur.fetchone()[0]:
                logger.info("subject key store %s was created by another process meanwhile", self.url)
                return
            self._exec(cur, "INSERT INTO meta (store_id, key_uri, created_at, format_version) VALUES (?, ?, ?, ?)",
                       (store_id, key_uri, now, FORMAT_VERSION))
            self._exec(cur, 'INSERT INTO keks (kek_id, entry_json, "current", created_at) VALUES (?, ?, 1, ?)',
                       (entry.dek_id, json.dumps(entry.to_dict(), sort_keys=True), now))
            grants = [(self.principal, p) for p in PERMISSIONS] + [("*", "read"), ("*", "write")]
            for principal, permission in dict.fromkeys(grants):
                self._exec(cur, "INSERT INTO grants (principal, permission) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           (principal, permission))
            self._audit(cur, "create_store", "ok", {"store_id": store_id, "key_uri": key_uri,
                                                    "kek_id": entry.dek_id})
        self._aead[entry.dek_id] = aead  # the KEK we just made: no KMS Decrypt to use it
        logger.info("created subject key store %s (store %s, KEK %s under %s)", self.url, store_id, entry.dek_id,
                    key_uri)

    def _new_kek(self, key_uri: str, store_id: str) -> tuple[DekEntry, AESGCM]:
        """A new KEK: one GenerateDataKey under ``key_uri``; its entry (wrapped form) and its AEAD."""
        provider = self._kms.provider(key_uri)
        if key_uri == DEFAULT_KEY_URI:
            self._ensure_default_local_key(provider)
        context = {"purpose": STORE_PURPOSE, "store_id": store_id}
        with provider.generate_data_key(context) as data_key:
            entry = entry_for(data_key, new_dek_id(), provider, context, AES_256_GCM)
            return entry, AESGCM(bytes(data_key.plaintext))

    @staticmethod
    def _ensure_default_local_key(provider: Any) -> None:
        """Create the embedded KMS's default subject-store key on first use (as ``spark-kms demo`` does)."""
        from spark_kms.kms.local import LocalKmsProvider

        if not isinstance(provider, LocalKmsProvider):
            return
        try:
            provider.describe_key()
        except KeyNotFoundError:
            try:
                provider.kms.create_key(alias=provider.key_ref, description="spark_kms subject key store KEK")
            except ConfigurationError:  # another process created it meanwhile
                logger.debug("key %s was created meanwhile", provider.key_uri)

    def _load_keks(self) -> None:
        cursor = self._conn.cursor()
        try:
            self._exec(cursor, "SELECT kek_id, entry_json FROM keks")
            rows = cursor.fetchall()
        finally:
            cursor.close()
        self._keks = {str(k): DekEntry.from_dict(json.loads(j), where=f"subject key store {self.url}")
                      for k, j in rows}

    def _kek(self, kek_id: str) -> AESGCM:
        aead = self._aead.get(kek_id)
        if aead is None:
            if kek_id not in self._keks:
                self._load_keks()
            entry = self._keks.get(kek_id)
            if entry is None:
                raise DecryptionError(f"subject key store {self.url} names KEK {kek_id}, which its keks table "
                                      "does not hold")
            resolver = DekResolver({entry.dek_id: entry}, kms_options=self._kms,
                                   where=f"subject key store {self.url}")
            aead = AESGCM(resolver.lookup(entry.dek_id_bytes))
            self._aead[kek_id] = aead
        return aead

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The store's URL, its password (if any) masked."""
        return self._backend.shown

    @property
    def store_id(self) -> str:
        self._ensure(create=self._autocreate)
        assert self._store_id is not None
        return self._store_id

    @property
    def key_uri(self) -> str:
        self._ensure(create=self._autocreate)
        assert self._key_uri is not None
        return self._key_uri

    @property
    def kms(self) -> KmsConfig:
        return self._kms

    def __repr__(self) -> str:
        return f"SubjectKeyStore({self.url!r}, store_id={self._store_id or '?'}, principal={self.principal!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        # Configuration only: the connection, the lock and unwrapped keys stay in this process.
        return (_reopen, (self._backend.url, self._kms, self._key_uri_option, self.principal, self._autocreate))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._store_id, self._aead = None, None, {}

    # -- SQL plumbing -------------------------------------------------------------------------------------
    def _exec(self, cursor: Any, sql: str, params: Iterable[Any] = ()) -> None:
        self.statements += 1
        cursor.execute(self._backend.sql(sql), tuple(params))

    def _audit(self, cursor: Any, action: str, outcome: str, detail: Mapping[str, Any]) -> int:
        self._exec(cursor, "INSERT INTO audit (at, principal, action, outcome, detail) VALUES (?, ?, ?, ?, ?) "
                           "RETURNING id",
                   (utc_now_iso(), self.principal, action, outcome, json.dumps(dict(detail), sort_keys=True)))
        return int(cursor.fetchone()[0])

    def _granted(self, cursor: Any) -> set[str]:
        self._exec(cursor, "SELECT permission FROM grants WHERE principal IN (?, '*')", (self.principal,))
        return {str(r[0]) for r in cursor.fetchall()}

    def _require(self, cursor: Any, permissions: Iterable[str], action: str) -> None:
        """Raise AccessDeniedError unless this principal holds every permission; the refusal is audited (the
        caller commits it)."""
        granted = self._granted(cursor)
        missing = [p for p in permissions if p not in granted]
        if missing:
            self._audit(cursor, action, "denied", {"store_id": self._store_id, "missing": missing})
            raise AccessDeniedError(f"principal {self.principal!r} may not {action.replace('_', ' ')} in subject "
                                    f"key store {self.url}: it lacks the {', '.join(map(repr, missing))} "
                                    "permission", key_id=self._store_id, operation=action)

    def _run(self, what: str, write: bool, body: Any, *, commit_on: tuple[type[BaseException], ...] = ()) -> Any:
        """``body(cursor)`` in one transaction under the lock; errors in ``commit_on`` commit what the body
        wrote (an audited refusal) before they propagate; driver errors become SparkKmsError."""
        with self._lock:
            try:
                held: list[BaseException] = []
                with transaction(self._backend, self._conn, write=write) as cur:
                    try:
                        return body(cur)
                    except commit_on as exc:
                        held.append(exc)
                raise held[0]
            except self._backend.driver_errors() as exc:
                if getattr(self._conn, "closed", 0):  # a lost PostgreSQL connection: reconnect on the next call
                    self._conn, self._store_id = None, None
                raise database_error(self._backend.url, what, exc) from None

    # -- subject keys -------------------------------------------------------------------------------------
    def keys_for(self, ids: Iterable[str], *, create: bool = False) -> dict[str, bytes | None]:
        """The 32-byte key of each subject (None for an erased subject), in the order given.

        ``create=True`` (needs ``write``) gives unknown subjects a fresh random key; two writers racing end
        with one key per subject. Without it an unknown subject raises UnknownSubjectError (a count, no ids).
        """
        wanted = _check_ids(ids)
        self._ensure(create=self._autocreate and create)
        cache, scope = subject_key_cache(), (self.url, self._store_id)
        needs = ("read", "write") if create else ("read",)
        found: dict[str, bytes | None] = {}
        missing = []
        for sid in wanted:
            key = cache.peek((scope, sid))
            if key is None:
                missing.append(sid)
            else:
                found[sid] = key

        cached = [sid for sid in wanted if sid in found]

        def body(cur: Any) -> tuple[dict[str, bytes | None], int]:
            # The permission check also guards cache hits: a revoked principal is refused at once. So does the
            # tombstone check: a key cached before its subject was erased (in another process) is never served.
            self._require(cur, needs, "read_keys")
            for chunk in chunks(cached, _CHUNK):
                self._exec(cur, f"SELECT subject_id FROM erased_subjects WHERE subject_id IN "  # noqa: S608
                                f"({placeholders(len(chunk))})", chunk)
                for (sid,) in cur.fetchall():
                    found[str(sid)] = None
                    cache.discard((scope, str(sid)))
            return self._load_keys(cur, missing, create) if missing else ({}, 0)

        loaded, unknown = self._run("reading subject keys", create and bool(missing), body,
                                    commit_on=(AccessDeniedError,))
        if missing:
            if unknown:
                raise UnknownSubjectError(f"subject key store {self.url} (store {self._store_id}) holds no key "
                                          f"and no erasure record for {unknown} of {len(wanted)} subjects")
            for sid, key in loaded.items():
                if key is not None:
                    cache.put((scope, sid), key)
            found.update(loaded)
        return {sid: found[sid] for sid in wanted}

    def _load_keys(self, cur: Any, ids: list[str], create: bool) -> tuple[dict[str, bytes | None], int]:
        out: dict[str, bytes | None] = {}
        unknown = 0
        current: str | None = None
        per_insert = max(1, min(_CHUNK, self._backend.max_params(self._conn) // 4))
        if create:  # before the tombstones are read: an erasure cannot commit between that and the INSERT
            self._lock_store(cur, exclusive=False)
        for chunk in chunks(ids, _CHUNK):
            erased, rows = self._select_chunk(cur, chunk)
            out.update(dict.fromkeys(erased))
            new = [sid for sid in chunk if sid not in rows and sid not in erased]
            if new and create:
                if current is None:
                    current = self._current_kek(cur)
                aead, now = self._kek(current), utc_now_iso()
                for part in chunks(new, per_insert):
                    values: list[Any] = []
                    for sid in part:
                        fresh = bytearray(secrets.token_bytes(_KEY_BYTES))
                        nonce = secrets.token_bytes(_NONCE)
                        values += [sid, current, nonce + aead.encrypt(nonce, bytes(fresh),
                                                                       subject_aad(self._store_id or "", sid)), now]
                        fresh[:] = bytes(_KEY_BYTES)
                    rows_sql = ", ".join(["(?, ?, ?, ?)"] * len(part))  # placeholders only: values are bound
                    self._exec(cur, f"INSERT INTO subject_keys (subject_id, kek_id, wrapped, created_at) VALUES {rows_sql} "  # noqa: S608
                                    "ON CONFLICT DO NOTHING", values)
                erased_new, rows_new = self._select_chunk(cur, new)  # the keys as committed (a racing writer's)
                erased |= erased_new
                rows.update(rows_new)
                out.update(dict.fromkeys(erased_new))
            elif new:
                unknown += len(new)
            for sid, (kek_id, wrapped) in rows.items():
                if sid not in erased:
                    out[sid] = self._unwrap(kek_id, wrapped, sid)
        return out, unknown

    def _select_chunk(self, cur: Any, chunk: Any) -> tuple[set[str], dict[str, tuple[str, bytes]]]:
        marks = placeholders(len(chunk))
        self._exec(cur, f"SELECT subject_id FROM erased_subjects WHERE subject_id IN ({marks})", chunk)  # noqa: S608
        erased = {str(r[0]) for r in cur.fetchall()}
        self._exec(cur, f"SELECT subject_id, kek_id, wrapped FROM subject_keys WHERE subject_id IN ({marks})",  # noqa: S608
                   chunk)
        rows = {str(r[0]): (str(r[1]), self._backend.to_bytes(r[2])) for r in cur.fetchall()}
        return erased, rows

    def _current_kek(self, cur: Any) -> str:
        self._exec(cur, 'SELECT kek_id FROM keks WHERE "current" = 1')
        row = cur.fetchone()
        if row is None:
            raise ConfigurationError(f"subject key store {self.url} has no current KEK")
        return str(row[0])

    def _lock_store(self, cur: Any, *, exclusive: bool) -> None:
        """Writers creating keys share the store's lock; an erasure or a rotation holds it alone (see
        :meth:`Backend.lock_store`)."""
        self.statements += 1
        self._backend.lock_store(cur, int((self._store_id or "0")[:15], 16), exclusive=exclusive)

    def _unwrap(self, kek_id: str, wrapped: bytes, subject_id: str) -> bytes:
        try:
            return self._kek(kek_id).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], subject_aad(self._store_id or "",
                                                                                     subject_id))
        except (InvalidTag, ValueError):
            raise DecryptionError(f"a subject key in store {self.url} (KEK {kek_id}) does not authenticate: "
                                  "the row was altered or moved from another subject or store") from None

    def erased(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have been erased (needs ``read``)."""
        wanted = _check_ids(ids)
        self._ensure()

        def body(cur: Any) -> set[str]:
            self._require(cur, ("read",), "read_keys")
            out: set[str] = set()
            for chunk in chunks(wanted, _CHUNK):
                marks = placeholders(len(chunk))
                self._exec(cur, f"SELECT subject_id FROM erased_subjects WHERE subject_id IN ({marks})", chunk)  # noqa: S608
                out.update(str(r[0]) for r in cur.fetchall())
            return out

        return self._run("reading erasure records", False, body, commit_on=(AccessDeniedError,))

    # -- erasure ------------------------------------------------------------------------------------------
    def erase(self, subject_id: str, *, reason: str = "", datasets: Iterable[str] = ()) -> ErasureRecord:
        """Erase one subject: delete its key and write its tombstone and audit row, in one transaction
        (needs ``erase``). Idempotent: erasing again returns ``already_erased=True`` and is audited again."""
        (subject_id,) = _check_ids([subject_id])
        names = tuple(str(d) for d in datasets)
        self._ensure()

        def body(cur: Any) -> ErasureRecord:
            self._require(cur, ("erase",), "erase_subject")
            self._lock_store(cur, exclusive=True)
            self._exec(cur, "SELECT kek_id FROM subject_keys WHERE subject_id = ?", (subject_id,))
            row = cur.fetchone()
            self._exec(cur, "SELECT count(*) FROM erased_subjects WHERE subject_id = ?", (subject_id,))
            already = bool(cur.fetchone()[0])
            self._exec(cur, "DELETE FROM subject_keys WHERE subject_id = ?", (subject_id,))
            pause = float(os.environ.get(PAUSE_ERASE_ENV) or 0)  # test-only: a window to SIGKILL us in
            if pause > 0:
                time.sleep(pause)
            at = utc_now_iso()
            self._exec(cur, "INSERT INTO erased_subjects (subject_id, erased_at, principal, reason) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (subject_id, at, self.principal, reason))
            receipt = self._audit(cur, "erase_subject", "ok", {
                "subject_id": subject_id, "store_id": self._store_id, "kek_id": row[0] if row else None,
                "datasets": list(names), "reason": reason, "already_erased": already})
            return ErasureRecord(subject=subject_id, store_id=self._store_id or "", principal=self.principal,
                                 at=at, already_erased=already, datasets=names, receipt_id=receipt)

        try:
            record = self._run("erasing a subject", True, body, commit_on=(AccessDeniedError,))
        except SparkKmsError as exc:
            if not isinstance(exc, AccessDeniedError):  # a refusal is audited already, in its own transaction
                self._audit_failure("erase_subject", {"subject_id": subject_id, "store_id": self._store_id,
                                                      "error": type(exc).__name__})
            raise
        finally:
            subject_key_cache().discard(((self.url, self._store_id), subject_id))
        logger.info("erased a subject in subject key store %s (store %s, audit row %d%s)", self.url,
                    record.store_id, record.receipt_id, ", already erased" if record.already_erased else "")
        return record


#: the stores this process opened from configuration (a URL, or a pickled store): one connection each, however
#: many readers, batches and columns name the same store
_OPENED: dict[tuple[Any, ...], SubjectKeyStore] = {}
_OPENED_LOCK = threading.Lock()


def _reopen(url: str, kms: KmsConfig, key_uri: str | None, principal: str, autocreate: bool) -> SubjectKeyStore:
    key = (url, kms, key_uri, principal, autocreate)
    with _OPENED_LOCK:
        store = _OPENED.get(key)
        if store is None:
            store = _OPENED[key] = SubjectKeyStore(url, kms, key_uri=key_uri, principal=principal,
                                                   autocreate=autocreate)
        return store


def store_of(value: SubjectKeyStore | str | None, kms_options: KmsConfigLike = None,
             principal: str | None = None) -> SubjectKeyStore:
    """The store ``value`` names: a SubjectKeyStore (as is), a URL or path, or None (``$SPARK_KMS_SUBJECT_STORE``,
    else ``~/.spark_kms/subjects.db``). Opened lazily; created by the first write (``keys_for(create=True)``)
    if it does not exist yet."""
    if isinstance(value, SubjectKeyStore):
        return value
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"subject_store is a SubjectKeyStore or a URL, got {type(value).__name__}")
    return _reopen(value or default_store_url(), KmsConfig.of(kms_options), None, resolve_principal(principal), True)

