"""Options, constants and small helpers shared by the ``spark_kms`` data source's writer
(:mod:`spark_kms.spark._write`) and reader (:mod:`spark_kms.spark._scan`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, overload

from spark_kms.errors import ConfigurationError

#: the column spark_kms.spark.ml adds: per row, the key table (JSON) of that row's cells
KEYS_COLUMN = "_spark_kms_keys"
STAGING_DIR = "_spark_kms_staging"
TRASH_DIR = "_spark_kms_trash"
JOURNAL_NAME = "_COMMITTING"
_RESULT_OPTION = "_spark_kms_result_file"
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Spark's ExternalCatalogUtils.escapePathName escapes these in partition values.
_HIVE_ESCAPE = set('"#%\'*/:=?\\\x7f{[]^') | {chr(c) for c in range(0x20)}



# -- option parsing -------------------------------------------------------------


def _split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _parse_blind_index(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _split_list(value):
        source, sep, target = item.partition(":")
        if not sep or not source.strip() or not target.strip():
            raise ConfigurationError(
                f"option blind_index takes 'source:index_column' pairs separated by commas, got item {item!r}"
            )
        out[source.strip()] = target.strip()
    return out


def _parse_json_object(name: str, value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"option {name} must be a JSON object: {exc.msg} at char {exc.pos}") from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"option {name} must be a JSON object, got {type(parsed).__name__}")
    return parsed


@overload
def _positive_int(opts: Mapping[str, str], name: str, default: int) -> int: ...
@overload
def _positive_int(opts: Mapping[str, str], name: str, default: None) -> int | None: ...
def _positive_int(opts: Mapping[str, str], name: str, default: int | None) -> int | None:
    """Option ``name`` as a positive integer, ``default`` when unset."""
    text = opts.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"option {name} must be a positive integer, got {text!r}")
    return value


def _local_path(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif path.startswith("file:"):
        path = path[len("file:") :]
    if "://" in path:
        raise ConfigurationError(
            f"the spark_kms data source writes to local/POSIX paths only, got {path!r}"
        )
    return os.path.abspath(path)


def _scheme(key_uri: str) -> str:
    return key_uri.split("://", 1)[0].lower()


def _counts_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def _add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


