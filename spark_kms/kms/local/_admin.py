"""Key management of the embedded local KMS: the admin half of :class:`~spark_kms.kms.local.LocalKms`.

CreateKey, RotateKey, enable/disable of keys and versions, DestroyKeyVersion, scheduled
deletion (7-30 days) and its cancelling, aliases, key policies, and reading the audit log.
Every operation but CreateKey needs the ``admin`` role on its key (see ``_policy``); each
runs as one audited call of :meth:`LocalKms._call` under the keystore lock.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from spark_kms.errors import ConfigurationError, KeyNotFoundError, KeyStateError
from spark_kms.kms.local import _audit, _keys, _policy
from spark_kms.kms.local._keys import DESTROYED, DISABLED, ENABLED, KEY_SPECS, PENDING_DELETION
from spark_kms.kms.local._store import KeystoreLock, KeystoreView

__all__: list[str] = []

T = TypeVar("T")


class _AdminOperations:
    """The admin operations of :class:`~spark_kms.kms.local.LocalKms` (mixed into it)."""

    if TYPE_CHECKING:  # provided by LocalKms
        keystore_dir: Path
        principal: str

        @property
        def keystore_file(self) -> Path: ...

        @property
        def audit_file(self) -> Path: ...

        def _now(self) -> datetime: ...

        def _locked(self) -> KeystoreLock: ...

        def _load(self, *, create: bool) -> KeystoreView: ...

        def _call(
            self,
            operation: str,
            key_ref: str | None,
            fn: Callable[[KeystoreView, dict[str, Any]], T],
            *,
            context: Mapping[str, str] | None = None,
            create: bool = False,
            data_plane: bool = False,
        ) -> T: ...

    def create_key(
        self,
        *,
        alias: str | None = None,
        spec: str = "SYMMETRIC_DEFAULT",
        description: str = "",
        tags: Mapping[str, str] | None = None,
        rotation_period_days: int | None = None,
    ) -> str:
        """CreateKey: a new key (version 1, Enabled); returns its id (a UUID4 string)."""
        if spec not in KEY_SPECS:
            raise ConfigurationError(f"key spec must be one of {list(KEY_SPECS)}, got {spec!r}")
        if alias is not None:
            _keys.check_alias_name(alias)
        _keys.check_rotation_period(rotation_period_days)
        tag_map = {str(k): str(v) for k, v in (tags or {}).items()}

        def op(store: KeystoreView, rec: dict[str, Any]) -> str:
            if alias is not None and alias in store.aliases:
                raise ConfigurationError(
                    f"alias {alias!r} already names key {store.aliases[alias]} in keystore {self.keystore_dir}; "
                    "use update-alias to move it"
                )
            kid = str(uuid.uuid4())
            rec["key_id"] = kid
            rec["key_version"] = 1
            now = _keys.iso(self._now())
            data = store.edit()
            data["keys"][kid] = {
                "key_id": kid,
                "spec": spec,
                "description": description,
                "tags": tag_map,
                "created_at": now,
                "state": ENABLED,
                "state_before_deletion": None,
                "deletion_date": None,
                "rotation_period_days": rotation_period_days,
                "last_rotated_at": now,
                "policy": None,
                "versions": {},
            }
            _keys.add_version(store, kid, now)
            if alias is not None:
                data["aliases"][alias] = kid
            return kid

        return self._call("CreateKey", alias, op, create=True)

    def rotate_key(self, key: str) -> int:
        """RotateKey: add a version, which becomes primary; returns its number."""

        def op(store: KeystoreView, rec: dict[str, Any]) -> int:
            kid, k = self._admin_key(store, key, rec, "RotateKey")
            if k["state"] in (PENDING_DELETION, DESTROYED):
                raise _keys.state_error(k, kid, "RotateKey")
            version = _keys.add_version(store, kid, _keys.iso(self._now()))
            store.keys[kid]["last_rotated_at"] = _keys.iso(self._now())
            rec["key_version"] = version
            return version

        return self._call("RotateKey", key, op)

    def set_rotation_period(self, key: str, days: int | None) -> None:
        """Rotate automatically every ``days`` days (None: only on demand)."""
        _keys.check_rotation_period(days)

        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            kid, _ = self._admin_key(store, key, rec, "SetRotationPeriod")
            store.edit()["keys"][kid]["rotation_period_days"] = days

        self._call("SetRotationPeriod", key, op)

    def enable_key(self, key: str) -> None:
        self._set_key_state(key, ENABLED, "EnableKey")

    def disable_key(self, key: str) -> None:
        self._set_key_state(key, DISABLED, "DisableKey")

    def enable_key_version(self, key: str, version: int) -> None:
        self._set_version_state(key, version, ENABLED, "EnableKeyVersion")

    def disable_key_version(self, key: str, version: int) -> None:
        self._set_version_state(key, version, DISABLED, "DisableKeyVersion")

    def destroy_key_version(self, key: str, version: int) -> None:
        """Erase one version's material; what it wrapped can never be decrypted again."""
        self._set_version_state(key, version, DESTROYED, "DestroyKeyVersion")

    def schedule_key_deletion(self, key: str, pending_window_days: int = 30) -> datetime:
        """ScheduleKeyDeletion: state PendingDeletion; the key is destroyed once
        ``pending_window_days`` (7-30) have passed. Returns the deletion date."""
        _keys.check_deletion_window(pending_window_days)

        def op(store: KeystoreView, rec: dict[str, Any]) -> datetime:
            kid, k = self._admin_key(store, key, rec, "ScheduleKeyDeletion")
            if k["state"] in (PENDING_DELETION, DESTROYED):
                raise _keys.state_error(k, kid, "ScheduleKeyDeletion")
            when = self._now() + timedelta(days=pending_window_days)
            k = store.edit()["keys"][kid]
            k["state_before_deletion"] = k["state"]
            k["state"] = PENDING_DELETION
            k["deletion_date"] = _keys.iso(when)
            return when

        return self._call("ScheduleKeyDeletion", key, op)

    def cancel_key_deletion(self, key: str) -> None:
        """CancelKeyDeletion: the key returns to the state it had before scheduling."""

        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            kid, k = self._admin_key(store, key, rec, "CancelKeyDeletion")
            if k["state"] != PENDING_DELETION:
                raise KeyStateError(
                    f"key {kid} is {k['state']}, not PendingDeletion; there is no deletion to cancel",
                    key_id=kid,
                    operation="CancelKeyDeletion",
                )
            k = store.edit()["keys"][kid]
            k["state"] = k.get("state_before_deletion") or ENABLED
            k["state_before_deletion"] = None
            k["deletion_date"] = None

        self._call("CancelKeyDeletion", key, op)

    def create_alias(self, alias: str, key: str) -> None:
        _keys.check_alias_name(alias)

        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            if alias in store.aliases:
                raise ConfigurationError(
                    f"alias {alias!r} already exists in keystore {self.keystore_dir} "
                    f"(key {store.aliases[alias]}); use update-alias to move it"
                )
            kid, _ = self._admin_key(store, key, rec, "CreateAlias")
            store.edit()["aliases"][alias] = kid

        self._call("CreateAlias", key, op)

    def update_alias(self, alias: str, key: str) -> None:
        """Point an existing alias at another key."""

        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            if alias not in store.aliases:
                raise KeyNotFoundError(
                    f"alias {alias!r} does not exist in keystore {self.keystore_dir}", key_id=alias
                )
            self._admin_key(store, alias, {}, "UpdateAlias")  # admin on the key losing it
            kid, _ = self._admin_key(store, key, rec, "UpdateAlias")
            store.edit()["aliases"][alias] = kid

        self._call("UpdateAlias", key, op)

    def delete_alias(self, alias: str) -> None:
        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            self._admin_key(store, alias, rec, "DeleteAlias")
            del store.edit()["aliases"][alias]

        self._call("DeleteAlias", alias, op)

    def put_key_policy(self, key: str, policy: Mapping[str, Sequence[str]] | None) -> None:
        """Replace the key policy: ``{principal or "*": [roles]}``; None removes it (then every
        principal may do everything). Needs the admin role under the current policy."""
        checked = _policy.check_policy(policy)

        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            kid, _ = self._admin_key(store, key, rec, "PutKeyPolicy")
            store.edit()["keys"][kid]["policy"] = checked

        self._call("PutKeyPolicy", key, op)

    def get_key_policy(self, key: str) -> dict[str, list[str]] | None:
        def op(store: KeystoreView, rec: dict[str, Any]) -> dict[str, list[str]] | None:
            kid, k = self._admin_key(store, key, rec, "GetKeyPolicy")
            return copy.deepcopy(k["policy"])

        return self._call("GetKeyPolicy", key, op)

    def audit_events(self, key: str | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first; only lines about ``key`` (id or alias) if given.
        Reading the log is not itself audited."""
        events = _audit.read_events(self.audit_file)
        if key is None:
            return events
        wanted = {key}
        if key.startswith("alias/") and self.keystore_file.exists():
            with self._locked():
                kid = self._load(create=False).aliases.get(key)
            if kid is not None:
                wanted.add(kid)
        return _audit.events_about(events, wanted)

    # ---------------------------------------------------------------- helpers
    def _admin_key(self, store: KeystoreView, key: str, rec: dict[str, Any], operation: str) -> tuple[str, Any]:
        kid = _keys.resolve_key(store, key, self.keystore_dir)
        rec["key_id"] = kid
        k = store.keys[kid]
        _policy.authorize(k, kid, self.principal, _policy.ADMIN_OPERATION_ROLES.get(operation, "admin"), operation)
        return kid, k

    def _set_key_state(self, key: str, state: str, operation: str) -> None:
        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            kid, k = self._admin_key(store, key, rec, operation)
            if k["state"] in (PENDING_DELETION, DESTROYED):
                raise _keys.state_error(k, kid, operation)
            store.edit()["keys"][kid]["state"] = state

        self._call(operation, key, op)

    def _set_version_state(self, key: str, version: int, state: str, operation: str) -> None:
        def op(store: KeystoreView, rec: dict[str, Any]) -> None:
            kid, k = self._admin_key(store, key, rec, operation)
            rec["key_version"] = version
            if k["state"] == DESTROYED:
                raise _keys.state_error(k, kid, operation)
            v = k["versions"].get(str(version))
            if v is None:
                raise KeyNotFoundError(f"key {kid} has no version {version}", key_id=kid, operation=operation)
            if v["state"] == DESTROYED:
                raise KeyStateError(
                    f"version {version} of key {kid} is Destroyed; it cannot change state",
                    key_id=kid,
                    operation=operation,
                )
            v = store.edit()["keys"][kid]["versions"][str(version)]
            v["state"] = state
            if state == DESTROYED:
                v["material"] = None
                v["destroyed_at"] = _keys.iso(self._now())

        self._call(operation, key, op)
