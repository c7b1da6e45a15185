"""Spark-native configuration: every spark_kms option from the session's Spark conf
(``spark.spark_kms.*``), per-call options over it.

A platform team sets the KMS once per cluster or session::

    spark.conf.set("spark.spark_kms.kms.local.keystore", "/srv/keystore")   # or spark-defaults.conf
    spark.conf.set("spark.spark_kms.keyUri", "local://alias/pii")
    spark.conf.set("spark.spark_kms.storage.s3.region", "eu-west-1")

and every entry point picks it up: the ``spark_kms`` data source (read and write),
``read_encrypted`` / ``write_encrypted``, the SQL functions, the ML transformers and the jobs given
a SparkSession. The names (docs/CONFIGURATION.md has the full table):

``spark.spark_kms.kms.<scheme>.<option>``  a KMS provider option for key URIs of ``<scheme>``
                                           (``local``, ``aws-kms``, ``gcp-kms``, ``azure-kv``, ``vault``,
                                           ``pkcs11``; ``aws``, ``gcp``, ``azure`` are accepted for the
                                           first three). Values that parse as JSON numbers or booleans
                                           are passed as such, like the CLI's ``--kms-option``
``spark.spark_kms.keystore``               shortcut for ``spark.spark_kms.kms.local.keystore``
``spark.spark_kms.storage.<name>``         a storage option (:data:`spark_kms.storage.OPTION_NAMES`,
                                           e.g. ``spark.spark_kms.storage.s3.region``)
``spark.spark_kms.<optionName>``           any option of ``format("spark_kms")`` (``key_uri``, ``columns``,
                                           ``kms_options`` as JSON, ...) and ``key_registry`` (SQL, UDFs);
                                           camelCase is accepted for each (``keyUri`` = ``key_uri``)
``spark.spark_kms.sql.autoRegister``       ``true``: register the SQL functions when spark_kms first
                                           touches the session (see :func:`spark_kms.spark.sql.register`)

Precedence, for each option: the per-call option (a keyword argument, ``.option(...)``, a Param)
> the Spark conf > the environment (``$SPARK_KMS_KEYSTORE``, ``$SPARK_KMS_STORAGE_OPTIONS``, ...) >
the default. KMS and storage options merge per option: a call's ``kms_options={"aws-kms":
{"profile": "etl"}}`` keeps the conf's ``aws-kms`` region. An option given as an empty string
counts as not given.

The conf is read once per call (:meth:`SparkKmsConf.of`, ``spark.conf.getAll``: classic and Spark
Connect alike). The ``spark_kms`` data source itself runs in Spark's Python planner workers, which
cannot see the session, so :func:`spark_kms.spark.datasource.register` hands it the conf as it is
at registration; the Python entry points register again on each call, and so pick up later changes.

Secrets (``root_key``, ``token``, ``s3.secret_key``, ...) may come from the conf; they are never
logged or put in an error (a :class:`SparkKmsConf` shows names only; KMS options travel as a
:class:`~spark_kms.kms.KmsConfig`, whose repr masks them). Spark's own UI and event logs redact conf
values whose names match ``spark.redaction.regex``: :data:`REDACTION_REGEX` covers every spark_kms
secret name, and the sessions spark_kms starts use it.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, KmsConfigLike
from spark_kms.storage import storage_options_from

__all__ = [
    "AUTO_REGISTER",
    "KNOWN_OPTIONS",
    "PREFIX",
    "REDACTION_REGEX",
    "SparkKmsConf",
    "option_name",
    "with_session_conf",
]

logger = logging.getLogger(__name__)

#: every spark_kms setting in the Spark conf starts with this
PREFIX = "spark.spark_kms."
#: ``true``: the SQL functions are registered when spark_kms first touches the session
AUTO_REGISTER = "sql.autoRegister"
#: ``spark.redaction.regex`` that covers Spark's default secret names and every spark_kms secret option
#: (``root_key``, ``pin``, ``credential``, ``azure.account_key`` are not matched by Spark's default)
REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key|root_key|credential|account_key|\.pin$"

#: the options of ``format("spark_kms")`` (write, then read) and of the SQL functions / UDFs
WRITE_OPTIONS = (
    "key_uri", "columns", "deterministic_columns", "blind_index", "encryption_context", "kms_options",
    "partition_by", "max_cells_per_dek", "run_id", "join_domain", "join_domain_store", "storage_options",
    "require_protection_level", "tenant_column", "tenant_keys", "subject_column", "subject_store",
)
READ_OPTIONS = (
    "kms_options", "batch_size", "max_partition_bytes", "filter_pushdown", "require_encrypted",
    "min_format_version", "storage_options", "subject_store", "on_erased",
)
KNOWN_OPTIONS = frozenset((*WRITE_OPTIONS, *READ_OPTIONS, "key_registry"))

_KMS = "kms."
_STORAGE = "storage."
_SQL = "sql."
_KEYSTORE = "keystore"
_SCHEME_ALIASES = {"aws": "aws-kms", "gcp": "gcp-kms", "azure": "azure-kv"}
F = TypeVar("F", bound=Callable[..., Any])
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def option_name(suffix: str) -> str:
    """The option a conf name (after :data:`PREFIX`) sets: ``keyUri`` -> ``key_uri``."""
    return _CAMEL.sub("_", suffix).lower()


def _value(raw: str) -> Any:
    """A conf value as a provider option: JSON numbers and booleans as such (as ``--kms-option`` does)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (int, float, bool)) else raw


def _classic_all(spark: Any) -> dict[str, str] | None:
    """A classic session's whole runtime conf as one JSON string over py4j (Jackson, on every Spark class path):
    ``RuntimeConfig.getAll`` walks the Java map one py4j call per entry and ends the walk with a Java exception
    (~60 ms per read on a 2-core machine). None when this is not a classic session."""
    jconf = getattr(spark.conf, "_jconf", None)
    if jconf is None:
        return None
    try:
        mapper = spark.sparkContext._jvm.com.fasterxml.jackson.databind.ObjectMapper()
        everything = json.loads(mapper.writeValueAsString(jconf.getAllAsJava()))
    except Exception:  # noqa: BLE001 - py4j or Jackson: fall back to RuntimeConfig.getAll
        return None
    return everything if isinstance(everything, dict) else None


def _read_all(spark: Any) -> dict[str, str]:
    """Every ``spark.spark_kms.*`` entry of ``spark``'s conf (classic or Connect), in one call."""
    if spark is None:
        return {}
    everything = _classic_all(spark)
    if everything is None:
        try:
            everything = spark.conf.getAll  # a property in pyspark >= 4.0, classic and Connect
        except AttributeError:  # pragma: no cover - an older pyspark
            return {}
        if callable(everything):  # pragma: no cover - defensive: a method in some builds
            everything = everything()
    return {str(k)[len(PREFIX):]: str(v) for k, v in dict(everything).items() if str(k).startswith(PREFIX)}


@dataclass(frozen=True)
class SparkKmsConf:
    """The ``spark.spark_kms.*`` settings of one session, read once (names after :data:`PREFIX`).

    Its repr shows setting names only, never values (some are secrets).
    """

    entries: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, spark: Any) -> SparkKmsConf:
        """The settings of ``spark`` (a classic or Spark Connect session; None: no settings)."""
        if isinstance(spark, SparkKmsConf):
            return spark
        return cls(_read_all(spark))

    def __repr__(self) -> str:
        return f"SparkKmsConf({sorted(PREFIX + k for k in self.entries)})"

    def __bool__(self) -> bool:
        return bool(self.entries)

    # -- plain options ---------------------------------------------------------------------------
    def options(self) -> dict[str, str]:
        """The plain options (``spark.spark_kms.<optionName>``), by option name; empty values dropped.

        :raises ConfigurationError: one option set under two spellings with different values.
        """
        out: dict[str, str] = {}
        seen: dict[str, str] = {}
        for suffix, value in sorted(self.entries.items()):
            if suffix.startswith((_KMS, _STORAGE, _SQL)) or suffix == _KEYSTORE or not value.strip():
                continue
            name = option_name(suffix)
            if name not in KNOWN_OPTIONS:
                logger.warning("Spark conf %s%s is not a spark_kms setting (ignored); known options: %s",
                               PREFIX, suffix, sorted(KNOWN_OPTIONS))
                continue
            if name in out and out[name] != value:
                raise ConfigurationError(
                    f"Spark conf sets option {name} twice, as {PREFIX}{seen[name]} and {PREFIX}{suffix}, "
                    "to different values: keep one"
                )
            out[name] = value
            seen[name] = suffix
        return out

    def option(self, name: str) -> str | None:
        """One plain option (by its snake_case name), or None."""
        return self.options().get(name)

    def flag(self, suffix: str) -> bool:
        """A boolean setting (``true`` / ``false``, default false)."""
        raw = self.entries.get(suffix, "").strip().lower()
        if raw in ("", "false", "0", "no"):
            return False
        if raw in ("true", "1", "yes"):
            return True
        raise ConfigurationError(f"Spark conf {PREFIX}{suffix} must be true or false")

    # -- KMS options -------------------------------------------------------------------------------
    def kms_options(self) -> dict[str, dict[str, Any]]:
        """Provider options per key-URI scheme from the conf: ``kms_options`` (JSON), then the
        ``keystore`` shortcut, then ``kms.<scheme>.<option>`` (the most specific wins)."""
        merged: dict[str, dict[str, Any]] = {}
        text = self.options().get("kms_options")
        if text:
            try:
                merged = KmsConfig.from_json(text).options()
            except ConfigurationError as exc:
                raise ConfigurationError(f"Spark conf {PREFIX}kms_options: {exc}") from None
        keystore = self.entries.get(_KEYSTORE, "").strip()
        if keystore:
            merged.setdefault("local", {})["keystore"] = keystore
        given: dict[str, dict[str, Any]] = {}
        for suffix, raw in sorted(self.entries.items()):
            if not suffix.startswith(_KMS):
                continue
            scheme, dot, name = suffix[len(_KMS):].partition(".")
            if not dot or not scheme or not name:
                raise ConfigurationError(
                    f"Spark conf {PREFIX}{suffix}: expected {PREFIX}kms.<scheme>.<option>, "
                    f"e.g. {PREFIX}kms.aws-kms.region"
                )
            full = _SCHEME_ALIASES.get(scheme.lower(), scheme.lower())
            # The full scheme name wins over its short alias when both set an option.
            if name in given.get(full, {}) and scheme.lower() in _SCHEME_ALIASES:
                continue
            given.setdefault(full, {})[name] = _value(raw)
        for scheme, opts in given.items():
            merged.setdefault(scheme, {}).update(opts)
        return merged

    def kms_config(self, per_call: KmsConfigLike = None) -> KmsConfig:
        """``per_call`` (a KmsConfig, a mapping or JSON) over the conf's KMS options, per option."""
        given = KmsConfig.of(per_call)
        base = self.kms_options()
        if not base:
            return given
        for scheme, opts in given.options().items():
            base.setdefault(scheme, {}).update(opts)
        return KmsConfig(base)

    # -- storage options ---------------------------------------------------------------------------
    def storage_options(self) -> dict[str, str]:
        """Storage options from the conf: ``storage_options`` (JSON), then ``storage.<name>``."""
        merged = storage_options_from(self.options().get("storage_options"),
                                      what=f"Spark conf {PREFIX}storage_options")
        named = {k[len(_STORAGE):]: v for k, v in self.entries.items() if k.startswith(_STORAGE)}
        merged.update(storage_options_from(named, what=f"Spark conf {PREFIX}storage.*"))
        return merged

    def merged_storage(self, per_call: Mapping[str, str] | str | None) -> dict[str, str] | None:
        """``per_call`` storage options over the conf's (None when neither sets any)."""
        merged = {**self.storage_options(), **storage_options_from(per_call)}
        return merged or None

    # -- data source options -----------------------------------------------------------------------
    def source_options(self, per_call: Mapping[str, str]) -> dict[str, str]:
        """The options of one ``format("spark_kms")`` read or write: the conf's, the call's over them
        (an empty call option counts as unset); ``kms_options`` and ``storage_options`` merged per option."""
        given = {str(k).lower(): v for k, v in per_call.items()}
        if not self.entries:
            return given
        out = self.options()
        for name, value in given.items():
            if value is not None and str(value) != "":
                out[name] = value
            else:
                out.setdefault(name, value)
        if self.kms_options():
            try:
                out["kms_options"] = self.kms_config(given.get("kms_options") or None).to_json()
            except ConfigurationError as exc:
                raise ConfigurationError(f"option kms_options: {exc}") from None
        storage = self.merged_storage(given.get("storage_options") or None)
        if storage:
            out["storage_options"] = json.dumps(storage, sort_keys=True)
        return out


def with_session_conf(fn: F, *, key_uri: bool = False) -> F:
    """``fn`` (a job taking ``spark=``, ``kms_options=``, ``storage_options=`` keywords) with the
    ``spark.spark_kms.*`` conf of the ``spark`` it is given merged under those arguments -- and, with
    ``key_uri=True``, the conf's key URI when the call gives none. Only for a SparkSession: a session
    factory is called after the job's checks, so its conf reaches the Spark layer (``write_encrypted``,
    ``read_encrypted``, the data source) only."""
    parameters = inspect.signature(fn).parameters

    @functools.wraps(fn)
    def with_conf(*args: Any, **kwargs: Any) -> Any:
        spark = kwargs.get("spark")
        if spark is not None and hasattr(spark, "conf") and hasattr(spark, "read"):
            conf = SparkKmsConf.of(spark)
            if conf:
                if "kms_options" in parameters:
                    kwargs["kms_options"] = conf.kms_config(kwargs.get("kms_options"))
                if "storage_options" in parameters:
                    kwargs["storage_options"] = conf.merged_storage(kwargs.get("storage_options"))
                if key_uri and "key_uri" in parameters and not kwargs.get("key_uri") and conf.option("key_uri"):
                    kwargs["key_uri"] = conf.option("key_uri")
        return fn(*args, **kwargs)

    return with_conf  # type: ignore[return-value]
