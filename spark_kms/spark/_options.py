"""Option parsing and small helpers shared by the Spark adapters (the ``spark_kms`` data
source's writer and reader, :mod:`spark_kms.spark.io`, :mod:`spark_kms.spark.ml`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, overload

from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig
from spark_kms.storage import Location, resolve, storage_options_from

#: the column spark_kms.spark.ml adds: per row, the key table (JSON) of that row's cells
KEYS_COLUMN = "_spark_kms_keys"
#: write_encrypted -> SparkKmsWriter.commit: where commit leaves the WriteResult (JSON)
RESULT_OPTION = "_spark_kms_result_file"


# -- option parsing -------------------------------------------------------------


def split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_blind_index(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in split_list(value):
        source, sep, target = item.partition(":")
        if not sep or not source.strip() or not target.strip():
            raise ConfigurationError(
                f"option blind_index takes 'source:index_column' pairs separated by commas, got item {item!r}"
            )
        out[source.strip()] = target.strip()
    return out


def parse_json_object(name: str, value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"option {name} must be a JSON object: {exc.msg} at char {exc.pos}") from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(f"option {name} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def kms_config_option(opts: Mapping[str, str]) -> KmsConfig:
    """The ``kms_options`` option (a JSON object of provider options per key-URI scheme), parsed
    once on the driver; the KmsConfig then travels to the tasks (it pickles as options only)."""
    try:
        return KmsConfig.of(opts.get("kms_options"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"option kms_options: {exc}") from None


def storage_location_option(opts: Mapping[str, str], what: str) -> Location:
    """The ``path`` option as a :class:`~spark_kms.storage.Location`, with the ``storage_options``
    option (a JSON object of :data:`spark_kms.storage.OPTION_NAMES`) merged over the environment's
    (``$SPARK_KMS_STORAGE_OPTIONS``). The Location travels to the tasks (it pickles as URI and
    options); errors name options, never their values."""
    if not opts.get("path"):
        raise ConfigurationError(f"{what} needs a path: .save(path) / .load(path)")
    storage = storage_options_from(opts.get("storage_options"), what="option storage_options")
    try:
        return resolve(opts["path"], storage)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None


@overload
def positive_int(opts: Mapping[str, str], name: str, default: int) -> int: ...
@overload
def positive_int(opts: Mapping[str, str], name: str, default: None) -> int | None: ...
def positive_int(opts: Mapping[str, str], name: str, default: int | None) -> int | None:
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


def tenant_keys_option(opts: Mapping[str, str]) -> Any:
    """The ``tenant_column`` + ``tenant_keys`` options as a :class:`~spark_kms.parquet.tenants.TenantKeys`
    (``tenant_keys``: a key-URI template with ``{tenant}``, or a JSON object tenant -> key URI), or None;
    checked here, on the driver (one without the other is refused)."""
    from spark_kms.parquet.tenants import TenantKeys

    column = (opts.get("tenant_column") or "").strip() or None
    keys = opts.get("tenant_keys") or None
    if keys is None and column is None:
        return None
    try:
        return TenantKeys.of(keys, column=column)
    except ConfigurationError as exc:
        raise ConfigurationError(f"options tenant_column / tenant_keys: {exc}") from None


def on_erased_option(opts: Mapping[str, str]) -> str:
    """The ``on_erased`` option: ``"null"`` (default) or ``"raise"``."""
    from spark_kms.parquet.decryptor import check_on_erased

    try:
        return check_on_erased(opts.get("on_erased") or None)
    except ConfigurationError as exc:
        raise ConfigurationError(f"option {exc}") from None


def subject_store_url(value: Any) -> str | None:
    """A ``subject_store`` argument as the URL (or path) the Spark options and the workers carry: a URL, a
    path, or None (the default store, ``$SPARK_KMS_SUBJECT_STORE``)."""
    import os

    if value is None or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise ConfigurationError(
        f"subject_store must be the store's URL or path (workers reopen it), got {type(value).__name__}"
    )


# -- KMS call counts ------------------------------------------------------------


def counts_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def add_counts(total: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
