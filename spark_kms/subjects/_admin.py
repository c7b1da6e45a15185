"""The admin half of :class:`~spark_kms.subjects.SubjectKeyStore`: permissions, the audit log, KEK rotation.

Every operation runs as one transaction of :meth:`SubjectKeyStore._run`; grant, revoke and rotate_kek need
``admin``, and a refusal is written to the audit log (committed) before AccessDeniedError is raised.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_kms.crypto import DekEntry, utc_now_iso
from spark_kms.errors import AccessDeniedError, ConfigurationError, SparkKmsError
from spark_kms.subjects._backends import Backend, chunks

__all__: list[str] = []

logger = logging.getLogger(__name__)

PERMISSIONS = ("read", "write", "erase", "admin")
_CHUNK = 500
_NONCE = 12


def subject_aad(store_id: str, subject_id: str) -> bytes:
    """The AAD of a wrapped subject key: ``b"spark_kms subject key v1" || store_id (ASCII) ||
    u32(len(subject_id)) || subject_id (UTF-8)``."""
    sid = subject_id.encode("utf-8")
    return b"spark_kms subject key v1" + store_id.encode("ascii") + len(sid).to_bytes(4, "big") + sid


class _StoreAdmin:
    """Permissions, the audit log and KEK rotation of :class:`SubjectKeyStore` (mixed into it)."""

    if TYPE_CHECKING:  # provided by SubjectKeyStore
        principal: str
        _backend: Backend
        _store_id: str | None
        _key_uri: str | None
        _keks: dict[str, DekEntry]
        _aead: dict[str, AESGCM]
        _lock: Any

        @property
        def url(self) -> str: ...

        @property
        def store_id(self) -> str: ...

        @property
        def key_uri(self) -> str: ...

        def _ensure(self, *, create: bool = False) -> None: ...

        def _exec(self, cursor: Any, sql: str, params: Iterable[Any] = ()) -> None: ...

        def _audit(self, cursor: Any, action: str, outcome: str, detail: Mapping[str, Any]) -> int: ...

        def _require(self, cursor: Any, permissions: Iterable[str], action: str) -> None: ...

        def _run(self, what: str, write: bool, body: Callable[[Any], Any], *,
                 commit_on: tuple[type[BaseException], ...] = ()) -> Any: ...

        def _current_kek(self, cur: Any) -> str: ...

        def _lock_store(self, cur: Any, *, exclusive: bool) -> None: ...

        def _unwrap(self, kek_id: str, wrapped: bytes, subject_id: str) -> bytes: ...

        def _new_kek(self, key_uri: str, store_id: str) -> tuple[DekEntry, AESGCM]: ...

    def _audit_failure(self, action: str, detail: Mapping[str, Any]) -> None:
        """Best effort: an ``outcome='error'`` audit row for an operation that failed (the database may be
        what failed)."""
        try:
            self._run("writing the audit log", True, lambda cur: self._audit(cur, action, "error", detail))
        except SparkKmsError:
            logger.warning("subject key store %s: could not audit a failed %s", self.url, action)

    # -- permissions and the audit log --------------------------------------------------------------------
    def grant(self, principal: str, *permissions: str) -> None:
        """Give ``principal`` (or ``"*"``) permissions (needs ``admin``)."""
        self._change_grants("grant", principal, permissions)

    def revoke(self, principal: str, *permissions: str) -> None:
        """Take permissions from ``principal`` (needs ``admin``)."""
        self._change_grants("revoke", principal, permissions)

    def _change_grants(self, action: str, principal: str, permissions: tuple[str, ...]) -> None:
        bad = [p for p in permissions if p not in PERMISSIONS]
        if not isinstance(principal, str) or not principal or bad or not permissions:
            raise ConfigurationError(f"{action} takes a principal (or '*') and permissions from {list(PERMISSIONS)};"
                                     f" got {principal!r}: {list(permissions)!r}")
        self._ensure()

        def body(cur: Any) -> None:
            self._require(cur, ("admin",), action)
            for permission in dict.fromkeys(permissions):
                if action == "grant":
                    self._exec(cur, "INSERT INTO grants (principal, permission) VALUES (?, ?) "
                                    "ON CONFLICT DO NOTHING", (principal, permission))
                else:
                    self._exec(cur, "DELETE FROM grants WHERE principal = ? AND permission = ?",
                               (principal, permission))
            self._audit(cur, action, "ok", {"store_id": self._store_id, "principal": principal,
                                            "permissions": list(dict.fromkeys(permissions))})

        self._run(f"{action}ing permissions", True, body, commit_on=(AccessDeniedError,))
        logger.info("%s %s for %r in subject key store %s", action, list(permissions), principal, self.url)

    def grants(self) -> dict[str, list[str]]:
        """Principal -> its permissions."""
        self._ensure()

        def body(cur: Any) -> dict[str, list[str]]:
            self._exec(cur, "SELECT principal, permission FROM grants ORDER BY principal, permission")
            out: dict[str, list[str]] = {}
            for principal, permission in cur.fetchall():
                out.setdefault(str(principal), []).append(str(permission))
            return out

        return self._run("reading grants", False, body)  # type: ignore[no-any-return]

    def record(self, action: str, outcome: str, detail: Mapping[str, Any]) -> int:
        """Append an audit row (any principal; e.g. a tenant erasure receipt); returns its id."""
        if outcome not in ("ok", "denied", "error") or not isinstance(action, str) or not action:
            raise ConfigurationError(f"an audit row has an action and an outcome 'ok', 'denied' or 'error'; got "
                                     f"{action!r}, {outcome!r}")
        self._ensure(create=self._autocreate)
        return self._run("writing the audit log", True,  # type: ignore[no-any-return]
                         lambda cur: self._audit(cur, action, outcome, detail))

    def audit_events(self, action: str | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first (``action`` filters); each row ``{id, at, principal, action, outcome,
        detail}``."""
        self._ensure()

        def body(cur: Any) -> list[dict[str, Any]]:
            where, params = ("WHERE action = ? ", (action,)) if action else ("", ())
            self._exec(cur, f"SELECT id, at, principal, action, outcome, detail FROM audit {where}ORDER BY id",  # noqa: S608
                       params)
            return [{"id": int(r[0]), "at": r[1], "principal": r[2], "action": r[3], "outcome": r[4],
                     "detail": json.loads(r[5])} for r in cur.fetchall()]

        return self._run("reading the audit log", False, body)  # type: ignore[no-any-return]

    # -- KEK rotation -------------------------------------------------------------------------------------
    def rotate_kek(self, key_uri: str | None = None) -> int:
        """A new KEK (one GenerateDataKey under ``key_uri``, default the store's key URI); every subject key
        rewrapped under it in one transaction; the old KEK no longer current. Needs ``admin``. Returns the number
        of subject keys rewrapped."""
        self._ensure()
        target = key_uri or self.key_uri

        def check(cur: Any) -> None:
            self._require(cur, ("admin",), "rotate_kek")

        self._run("checking permissions", False, check, commit_on=(AccessDeniedError,))
        entry, new_aead = self._new_kek(target, self.store_id)

        def body(cur: Any) -> int:
            self._require(cur, ("admin",), "rotate_kek")
            self._lock_store(cur, exclusive=True)
            old = self._current_kek(cur)
            now = utc_now_iso()
            self._exec(cur, 'INSERT INTO keks (kek_id, entry_json, "current", created_at) VALUES (?, ?, 0, ?)',
                       (entry.dek_id, json.dumps(entry.to_dict(), sort_keys=True), now))
            self._exec(cur, "SELECT subject_id, kek_id, wrapped FROM subject_keys")
            rows = cur.fetchall()
            for part in chunks(rows, _CHUNK):
                for sid, kek_id, wrapped in part:
                    plain = bytearray(self._unwrap(str(kek_id), self._backend.to_bytes(wrapped), str(sid)))
                    nonce = secrets.token_bytes(_NONCE)
                    self._exec(cur, "UPDATE subject_keys SET kek_id = ?, wrapped = ? WHERE subject_id = ?",
                               (entry.dek_id, nonce + new_aead.encrypt(nonce, bytes(plain),
                                                                       subject_aad(self._store_id or "", str(sid))),
                                sid))
                    plain[:] = bytes(len(plain))
            self._exec(cur, 'UPDATE keks SET "current" = 0 WHERE kek_id <> ?', (entry.dek_id,))
            self._exec(cur, 'UPDATE keks SET "current" = 1 WHERE kek_id = ?', (entry.dek_id,))
            self._exec(cur, "UPDATE meta SET key_uri = ?", (target,))
            self._audit(cur, "rotate_kek", "ok", {"store_id": self._store_id, "old_kek_id": old,
                                                  "kek_id": entry.dek_id, "key_uri": target, "rewrapped": len(rows)})
            return len(rows)

        count: int = self._run("rotating the KEK", True, body, commit_on=(AccessDeniedError,))
        with self._lock:
            self._keks[entry.dek_id] = entry
            self._aead[entry.dek_id] = new_aead
            self._key_uri = target
        logger.info("rotated the KEK of subject key store %s to %s under %s: %d subject keys rewrapped", self.url,
                    entry.dek_id, target, count)
        return count

    def kek_entries(self) -> list[dict[str, Any]]:
        """The KEKs as stored: ``{kek_id, current, created_at, key_uri, key_id, key_version}`` (no key bytes)."""
        self._ensure()

        def body(cur: Any) -> list[dict[str, Any]]:
            self._exec(cur, 'SELECT kek_id, entry_json, "current", created_at FROM keks ORDER BY created_at, kek_id')
            out = []
            for kek_id, entry_json, current, created_at in cur.fetchall():
                entry = json.loads(entry_json)
                out.append({"kek_id": kek_id, "current": bool(current), "created_at": created_at,
                            "key_uri": entry["key_uri"], "key_id": entry["key_id"],
                            "key_version": entry["key_version"]})
            return out

        return self._run("reading the KEKs", False, body)  # type: ignore[no-any-return]
