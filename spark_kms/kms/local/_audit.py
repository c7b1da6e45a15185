"""The audit log of the embedded local KMS: ``<keystore>/audit.log``.

Append-only JSON lines, one per call -- allowed, denied or failed -- plus one per lazy
transition (a due rotation or deletion, principal ``system``). A line never carries key
bytes, plaintext or the root key::

    {"encryption_context": {...}, "key_id": "<uuid or alias>", "key_version": "2",
     "operation": "Decrypt", "outcome": "ok", "principal": "etl", "request_id": "<hex>",
     "time": "<ISO 8601 UTC>"}

with ``request_tag`` when the caller set one, and ``destination_key_id``,
``destination_key_version``, ``result`` or ``detail`` when the call has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

__all__ = ["EXTRA_FIELDS", "append_event", "events_about", "make_event", "outcome_name", "read_events"]

#: optional fields an operation may record, written only when set
EXTRA_FIELDS = ("destination_key_id", "destination_key_version", "result", "detail")


def make_event(
    *,
    time: str,
    principal: str,
    operation: str,
    rec: Mapping[str, Any],
    context: Mapping[str, str],
    outcome: str,
    request_id: str,
    request_tag: str | None,
) -> dict[str, Any]:
    """One audit line's fields; ``rec`` is what the call learnt (key id, version, extras)."""
    event: dict[str, Any] = {
        "time": time,
        "principal": principal,
        "operation": operation,
        "key_id": rec.get("key_id"),
        "key_version": None if rec.get("key_version") is None else str(rec["key_version"]),
        "encryption_context": dict(context),
        "outcome": outcome,
        "request_id": request_id,
    }
    if request_tag:
        event["request_tag"] = request_tag
    for extra in EXTRA_FIELDS:
        if rec.get(extra) is not None:
            event[extra] = str(rec[extra])
    return event


def append_event(audit_file: Path, event: Mapping[str, Any]) -> None:
    """Append one line (call under the keystore lock)."""
    line = (json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n").encode()
    # O_APPEND + one write() under the lock: lines never interleave across processes.
    fd = os.open(audit_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(audit_file: Path) -> list[dict[str, Any]]:
    """Every line, oldest first; no log yet = no events."""
    try:
        raw = audit_file.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def events_about(events: list[dict[str, Any]], key_ids: Collection[str]) -> list[dict[str, Any]]:
    """The events whose key or destination key is one of ``key_ids``."""
    return [e for e in events if e.get("key_id") in key_ids or e.get("destination_key_id") in key_ids]


def outcome_name(exc: BaseException) -> str:
    """The ``outcome`` of a failed call: the exception's class name."""
    # Private subclasses report as their public parent, so the log reads in public names.
    for cls in type(exc).__mro__:
        if not cls.__name__.startswith("_"):
            return cls.__name__
    return type(exc).__name__
