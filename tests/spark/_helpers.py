"""Helpers shared by the Spark tests of the data source and reader."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any


def kms_ops(keystore: Path | str) -> Counter[str]:
    """Successful KMS operations in the local keystore's audit log (all processes append to it)."""
    from spark_kms.kms.local import LocalKms

    return Counter(e["operation"] for e in LocalKms(keystore).audit_events() if e.get("outcome") == "ok")


def files_under(root: Path | str) -> list[str]:
    """Every file under ``root``, relative, sorted (hidden and ``_`` files included)."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(dirpath, f), root) for f in files)
    return sorted(out)


def data_files(root: Path | str) -> list[str]:
    return [f for f in files_under(root) if not any(p.startswith(("_", ".")) for p in f.split(os.sep))]


def sorted_rows(df: Any) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in df.collect()), key=repr)


def allowed_and_denied(keystore: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A local KMS at ``keystore`` with key alias/pii whose policy lets principal ``etl`` encrypt and decrypt and
    principal ``intruder`` do nothing: the KMS options of each, (allowed, denied)."""
    from spark_kms.kms.local import LocalKms

    admin = LocalKms(keystore, principal="admin")
    key_id = admin.create_key(alias="alias/pii")
    admin.put_key_policy(key_id, {"admin": ["admin"], "etl": ["encrypt", "decrypt"], "intruder": []})
    return ({"local": {"keystore": str(keystore), "principal": "etl"}},
            {"local": {"keystore": str(keystore), "principal": "intruder"}})
