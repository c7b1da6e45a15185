"""Operators that run the spark_kms dataset jobs: encrypt, decrypt, rewrap / re-encrypt.

Each operator only renders its templated fields, turns a Connection into ``kms_options``
(:class:`~airflow_plugins.hooks.spark_kms.SparkKmsHook`), picks a SparkSession where
the job needs one, and calls :mod:`spark_kms.jobs`. ``execute()`` returns the job's
``RunSummary.to_dict()`` (rows, files, DEKs, KMS calls, key versions), which Airflow
pushes to XCom. A failed job fails the task with the spark_kms error's own class and message
(what and where, never key bytes or cell values; also when Spark raised it in a worker). Errors
a retry cannot fix (access denied, key state, no such key, a damaged or tampered file, a bad
setting) fail the task at once, whatever ``retries`` says (``AirflowFailException``); an
unreachable or throttling KMS, or a job that could not finish, is retried as usual
(:mod:`airflow_plugins.operators._errors` is the table).

Shared rules:

* KMS configuration: ``kms_conn_id`` (a ``spark_kms_*`` connection) and/or ``kms_options``
  (``{scheme: options}``, templated); ``kms_options`` entries are laid over the
  connection's. The key URI of new data keys is ``key_uri`` if given, else the
  connection's.
* Spark (encrypt, decrypt): in-process ``local[2]`` by default; with ``spark_conn_id``
  the master comes from that Airflow connection (type ``spark``: host
  ``spark://127.0.0.1`` and port ``7077``, or the whole master URL in host; host
  ``sc://...`` is a Spark Connect server). The session is built by
  :func:`spark_kms.spark.session.spark_session`. A JVM holds one SparkContext: if one is
  already running in the process it is reused (and a differing master is logged). A Spark
  Connect session is the task's own, released on the server when the job succeeds.
* Rewrap / re-encrypt and the sensor run in the task's process without Spark, unless given
  ``spark_conn_id``: then through that session, i.e. on a Spark Connect server's side, where
  the data is.
* Run ids: ``job_run_id`` if given, else ``af-<dag_id>-<task_id>[-<map index>]-<Airflow run id>``
  made file-name safe. A retry of the same Airflow run reuses it, which is what lets a
  re-encrypt resume its journal, and it lands in the KMS audit log through the
  encryption context of new data keys.
* Lineage: the dataset an operator writes is its outlet Asset (``file://<abs path>``, or the
  ``iceberg://`` URI of an Iceberg table) when the path is known when the DAG is parsed; for a
  templated path pass ``asset_alias=`` and the rendered path is attached to that AssetAlias at run time.
* Tables (docs/TABLES.md): a path that is a Delta table, an ``iceberg://<catalog>/<namespace>.<table>``
  URI or an Iceberg table's directory is handed to :mod:`spark_kms.tables` by the jobs themselves (no
  Spark session is started for it). Every operator takes ``storage_options`` (spark_kms's storage options),
  ``catalog_properties`` (the Iceberg catalog's) and ``table_options`` (the table library's own), all
  templated; their secret values are registered with Airflow's masker.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import Asset, AssetAlias, BaseHook, BaseOperator

from airflow_plugins.operators._errors import task_errors
from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig
from spark_kms.spark.session import DEFAULT_MASTER

if TYPE_CHECKING:  # pragma: no cover
    from airflow.sdk import Connection, Context

__all__ = [
    "DecryptDatasetOperator",
    "EncryptDatasetOperator",
    "ReencryptDatasetOperator",
    "SparkKmsBaseOperator",
    "job_run_id_for",
    "jvm_stderr_to_stdout",
    "spark_master_from_connection",
    "spark_session_from_connection",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_RUN_ID = 128


def job_run_id_for(dag_id: str, task_id: str, airflow_run_id: str, map_index: int = -1) -> str:
    """A spark_kms run id (``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``) naming one Airflow task run.

    Deterministic, so a retry reuses it; long ids keep a prefix and a hash of the whole.
    """
    parts = ["af", dag_id, task_id] + ([str(map_index)] if map_index >= 0 else []) + [airflow_run_id]
    text = _UNSAFE.sub("_", "-".join(parts))
    if len(text) > _MAX_RUN_ID:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        text = f"{text[: _MAX_RUN_ID - 13]}-{digest}"
    return text


def spark_master_from_connection(conn: Connection) -> str:
    """The Spark master URL an Airflow ``spark`` connection describes.

    ``host`` may hold a whole master (``spark://h:7077``, ``local[2]``, ``yarn``, ``k8s://...``, or
    ``sc://h:15002`` for a Spark Connect server); a bare host name means a standalone master, on
    ``port`` (default 7077). ``port`` completes a ``spark://`` or ``sc://`` host without one. For
    ``sc://``, the connection's password, if any, is the server's bearer token (``;token=``: the
    client then talks TLS); the result holds it, so log it only through
    :func:`~spark_kms.spark.session.redact_master`.
    """
    from spark_kms.spark.session import MASTER_FORMS, check_master, redact_master

    host = (conn.host or "").strip()
    if not host:
        raise ConfigurationError(f"Spark connection {conn.conn_id!r} has no host: set it to the master URL, "
                                 "e.g. spark://127.0.0.1 with port 7077, sc://127.0.0.1 with port 15002, or local[2]")
    if host in ("local", "yarn") or host.startswith(("local[", "local-cluster[", "k8s://")):
        master = host
    elif host.startswith(("spark://", "sc://")):
        parts = urlsplit(host)  # a master URL, not a key URI
        authority = parts.netloc
        if conn.port and ":" not in authority:
            authority = f"{authority}:{conn.port}"
        master = f"{parts.scheme}://{authority}{parts.path}"
        if parts.scheme == "sc" and conn.password and "token=" not in parts.path:
            master = f"{master}{'' if parts.path else '/'};token={quote(conn.password, safe='')}"
    elif "://" in host:
        raise ConfigurationError(f"Spark connection {conn.conn_id!r}: unsupported master {redact_master(host)!r}; "
                                 f"expected {MASTER_FORMS}")
    else:
        master = f"spark://{host}:{conn.port or 7077}"
    try:
        return check_master(master)
    except ConfigurationError as exc:
        raise ConfigurationError(f"Spark connection {conn.conn_id!r}: {exc}") from None


def spark_session_from_connection(spark_conn_id: str | None, app_name: str,
                                  conf: Mapping[str, Any] | None = None) -> Any:
    """The SparkSession for an Airflow ``spark`` connection (None: in-process ``local[2]``)."""
    from spark_kms.spark.session import is_connect_master, spark_session

    master = DEFAULT_MASTER
    if spark_conn_id:
        master = spark_master_from_connection(BaseHook.get_connection(spark_conn_id))
    if is_connect_master(master):
        return spark_session(master, app_name, conf=conf)
    with jvm_stderr_to_stdout():
        return spark_session(master, app_name, conf=conf)


@contextmanager
def jvm_stderr_to_stdout() -> Iterator[None]:
    """While this block starts Spark's JVM in this process, the JVM gets this process's stdout as its stderr.

    Airflow's task supervisor logs a task's stderr at ERROR level and its stdout at INFO; the JVM writes its
    start-up banners (log4j's profile and level notes, ``NativeCodeLoader``, JDK incubator warnings) and its
    log4j console output to stderr, so without this a healthy task's log opens with error lines. Only the
    launch is redirected (the JVM keeps the descriptor it was started with; this process gets its own
    stderr back); nothing happens when the JVM is already running."""
    from pyspark import SparkContext

    if getattr(SparkContext, "_gateway", None) is not None:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    try:
        os.dup2(1, 2)
        yield
    finally:
        with suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def job_session(spark_conn_id: str | None, app_name: str, conf: Mapping[str, Any] | None = None,
                *, required: bool = True) -> Iterator[Any]:
    """The session a job runs on (None when ``required`` is false and there is no ``spark_conn_id``).

    A Spark Connect session is released on the server once the job succeeded; after a failure the
    server may be unreachable (releasing would retry for minutes) and drops the idle session itself."""
    from spark_kms.spark.remote import is_connect

    spark = spark_session_from_connection(spark_conn_id, app_name, conf) if (required or spark_conn_id) else None
    yield spark
    if is_connect(spark):
        spark.stop()


def _is_templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _asset_of(path: str) -> Asset:
    """The lineage Asset of a dataset path, its URI written as users write it: ``iceberg://``, ``s3://``, ...
    URIs as they are; a local path as ``file://<absolute path>``, unescaped (``Path.as_uri()`` would write
    ``event_date%3D2026-11-29``, which an Asset a consumer declares as ``.../event_date=2026-11-29`` does not
    match; Airflow keeps ``=`` in an Asset URI as it is)."""
    text = str(path)
    if "://" in text:  # a catalog table or an object store: its URI names it
        return Asset(uri=text)
    return Asset(uri="file://" + str(Path(text).absolute()))


#: the template variables Airflow 3 sets only for a run with a logical date
_DATE_VARIABLES = ("ds", "ds_nodash", "ts", "ts_nodash", "ts_nodash_with_tz", "logical_date",
                   "data_interval_start", "data_interval_end")


def _undefined_date_hint(exc: Exception, context: Context) -> Exception:
    """``exc`` unless it is Jinja's "'ds' is undefined" in a run without a logical date: then an error
    that says why and what to template instead."""
    if context.get("logical_date") is not None:
        return exc
    match = re.search(r"'(\w+)' is undefined", str(exc))
    if not match or match.group(1) not in _DATE_VARIABLES:
        return exc
    return ConfigurationError(
        f"{exc}: this DAG run has no logical date (Airflow 3 triggers manual runs without one), so "
        f"{{{{ {match.group(1)} }}}} is not set; template the day as "
        "{{ (dag_run.logical_date or dag_run.run_after) | ds }} (airflow_plugins.demo.RUN_DAY), or trigger "
        "the run with a logical date")


def _optional_float(value: Any, what: str) -> float | None:
    """A number from a rendered template field: ``None``, ``""`` and ``"None"`` mean "not set"."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number, got {value!r}") from None


def _optional_int(value: Any, what: str) -> int | None:
    number = _optional_float(value, what)
    if number is None:
        return None
    if number != int(number):
        raise ConfigurationError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _table_version(value: Any) -> Any:
    """``version`` from a rendered template: a whole number (Delta version, Iceberg snapshot id), else the
    text (an ISO-8601 timestamp); ``""`` / ``"None"``: the current snapshot."""
    if value is None or isinstance(value, int) or not isinstance(value, str):
        return value
    text = value.strip()
    if text in ("", "None"):
        return None
    return int(text) if text.isdigit() else text


class SparkKmsBaseOperator(BaseOperator):
    """What the spark_kms operators share: KMS options, the Spark session, the run id.

    :param kms_conn_id: a ``spark_kms_*`` connection (optional when ``kms_options`` and
        ``key_uri`` say everything).
    :param kms_options: ``{scheme: provider options}`` laid over the connection's (templated).
    :param spark_conn_id: an Airflow ``spark`` connection naming the master (default: in-process ``local[2]``);
        its host may be ``sc://host:port``, a Spark Connect server.
    :param spark_conf: extra Spark settings for a session this operator starts.
    :param job_run_id: the spark_kms run id (templated; default: derived from the Airflow task run).
    :param asset_alias: name of an AssetAlias to attach a templated output path to at run time.
    :param storage_options: spark_kms storage options of the paths' store (templated; docs/STORAGE.md).
    :param catalog_properties: Iceberg tables: the catalog's properties for pyiceberg's ``load_catalog``
        (templated), e.g. ``{"type": "sql", "uri": "sqlite:////var/lib/cat.db", "warehouse": "s3://b/wh"}``.
    :param table_options: tables: the table library's own options (templated; delta-rs storage options,
        pyiceberg FileIO properties).
    """

    template_fields: Sequence[str] = ("kms_options", "job_run_id", "storage_options", "catalog_properties",
                                      "table_options")
    ui_color = "#e8f0d8"

    def __init__(
        self,
        *,
        kms_conn_id: str | None = None,
        kms_options: Mapping[str, Mapping[str, Any]] | None = None,
        spark_conn_id: str | None = None,
        spark_conf: Mapping[str, Any] | None = None,
        job_run_id: str | None = None,
        asset_alias: str | None = None,
        storage_options: Mapping[str, str] | None = None,
        catalog_properties: Mapping[str, str] | None = None,
        table_options: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._output_path_for_lineage = kwargs.pop("_output_path", None)
        if "outlets" not in kwargs:
            outlet = self._output_path_for_lineage
            if asset_alias:
                kwargs["outlets"] = [AssetAlias(name=asset_alias)]
            elif isinstance(outlet, str) and outlet and not _is_templated(outlet):
                kwargs["outlets"] = [_asset_of(outlet)]
        super().__init__(**kwargs)
        self.kms_conn_id = kms_conn_id
        self.kms_options = kms_options
        self.spark_conn_id = spark_conn_id
        self.spark_conf = dict(spark_conf or {})
        self.job_run_id = job_run_id
        self.asset_alias = asset_alias
        self.storage_options = storage_options
        self.catalog_properties = catalog_properties
        self.table_options = table_options

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        import jinja2

        try:
            super().render_template_fields(context, jinja_env)
        except jinja2.UndefinedError as exc:
            hinted = _undefined_date_hint(exc, context)
            if hinted is exc:
                raise
            raise hinted from exc
        # Before Airflow stores the rendered fields: a root key passed in kms_options is masked too,
        # and so are the secrets of storage options, catalog properties and table options.
        from airflow_plugins.hooks.spark_kms import mask_mapping_secrets, mask_option_secrets

        mask_option_secrets(self.kms_options)
        mask_mapping_secrets(self.storage_options, self.catalog_properties, self.table_options)
        _mask_url_password(getattr(self, "subject_store", None))  # postgresql://user:password@... (erasure)

    def location_kwargs(self) -> dict[str, Any]:
        """``storage_options`` / ``catalog_properties`` / ``table_options`` for a job (only those set)."""
        out: dict[str, Any] = {}
        for name in ("storage_options", "catalog_properties", "table_options"):
            value = getattr(self, name)
            if value:
                if not isinstance(value, Mapping):
                    raise ConfigurationError(f"task {self.task_id!r}: {name} is a mapping of option names to "
                                             f"values, got {type(value).__name__}")
                out[name] = {str(k): str(v) for k, v in value.items()}
        return out

    # -- shared plumbing -----------------------------------------------------------------
    def _hook(self, key_uri: str | None = None) -> Any:
        from airflow_plugins.hooks.spark_kms import SparkKmsHook

        return SparkKmsHook(self.kms_conn_id, key_uri=key_uri)

    def resolve_kms(self, key_uri: str | None = None, *, need_key: bool = False) -> tuple[str | None, KmsConfig]:
        """``(key_uri, KmsConfig)`` from the connection and the ``kms_options`` parameter laid over it."""
        kms = KmsConfig()
        if self.kms_conn_id:
            hook = self._hook(key_uri)
            kms = hook.get_kms_config()
            if need_key:
                key_uri = hook.get_key_uri()
        for scheme, extra in (self.kms_options or {}).items():
            if not isinstance(extra, Mapping):
                raise ConfigurationError(
                    f"task {self.task_id!r}: kms_options maps a key-URI scheme to an options mapping; "
                    f"{scheme!r} maps to {type(extra).__name__}"
                )
            kms = kms.with_options(scheme, **extra)
        if need_key and not key_uri:
            raise ConfigurationError(f"task {self.task_id!r} needs a key: pass key_uri= or kms_conn_id= "
                                     "(a connection with a key_uri)")
        return key_uri, kms

    def spark_session(self) -> Any:
        """The SparkSession the job runs on (see the module docstring)."""
        return spark_session_from_connection(self.spark_conn_id, f"spark_kms-{self.task_id}", self.spark_conf)

    def job_session(self, *, required: bool = True) -> Any:
        """``with self.job_session() as spark``: :func:`job_session` for this task."""
        return job_session(self.spark_conn_id, f"spark_kms-{self.task_id}", self.spark_conf, required=required)

    def run_id_for(self, context: Context) -> str:
        if self.job_run_id:
            return str(self.job_run_id)
        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        return job_run_id_for(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else int(map_index))

    def record_lineage(self, context: Context, path: str | os.PathLike[str]) -> None:
        if self.asset_alias:
            context["outlet_events"][AssetAlias(name=self.asset_alias)].add(_asset_of(str(path)))

    @staticmethod
    def report(summary: Any) -> dict[str, Any]:
        return summary.to_dict()  # type: ignore[no-any-return]


class EncryptDatasetOperator(SparkKmsBaseOperator):
    """Encrypt the PII columns of a plain dataset into encrypted Parquet
    (:func:`spark_kms.jobs.encrypt_dataset`).

    :param source: the plain dataset: a Parquet directory, a CSV file/directory with a header
        row, or JSON lines (templated).
    :param destination: the encrypted dataset directory (templated).
    :param columns: columns encrypted with AES-256-GCM (templated).
    :param key_uri: the KMS key (templated; default: the connection's).
    :param deterministic_columns: columns encrypted with AES-SIV, joinable (templated).
    :param blind_index: source column -> new HMAC index column (templated).
    :param partition_by: hive partition columns, kept plaintext (templated).
    :param source_format: ``parquet``, ``csv`` or ``json`` (templated).
    :param mode: ``overwrite`` or ``append`` (templated).
    :param encryption_context: extra context for every GenerateDataKey (templated).
    :param join_domain: join domain of the deterministic / blind-index columns; default the
        destination dataset's own (templated).
    :param join_domain_store: directory holding a named join domain's key (templated).
    :param table_format: ``delta`` or ``iceberg``: the destination is a table, created if absent (templated;
        default: an existing Delta table or an ``iceberg://`` destination is written into as a table). The
        source is then read with pyarrow and committed in one table commit: no Spark session is started.
    :param replace_where: tables, with ``mode="overwrite"``: partition column -> value (or list of values)
        whose files are replaced (templated).

    :param require_protection_level: refuse a KMS key guarded by less: ``"hsm"``, ``"software"``,
        ``"external"`` (or several, comma-separated); checked once before any data key (templated).
    :param tenant_column: per-tenant keys (docs/ERASURE.md): the plain column naming each row's tenant
        (templated); with ``tenant_keys``, ``key_uri`` and the connection's key may be omitted.
    :param tenant_keys: a key-URI template with ``{tenant}``, or a mapping tenant -> key URI (templated).
    :param subject_column: per-subject keys: the plain column naming each row's data subject (templated).
    :param subject_store: the subject key store's URL or path (templated).

    Into a table, ``mode`` also takes ``overwrite_partitions`` and ``error``; ``catalog_properties`` (an
    Iceberg catalog) and ``table_options`` come from the base operator.
    """

    template_fields: Sequence[str] = (
        "source", "destination", "columns", "key_uri", "deterministic_columns", "blind_index", "partition_by",
        "source_format", "mode", "encryption_context", "join_domain", "join_domain_store", "table_format",
        "replace_where", "require_protection_level", "tenant_column", "tenant_keys", "subject_column",
        "subject_store", *SparkKmsBaseOperator.template_fields,
    )

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        columns: Sequence[str],
        key_uri: str | None = None,
        deterministic_columns: Sequence[str] = (),
        blind_index: Mapping[str, str] | None = None,
        partition_by: Sequence[str] = (),
        source_format: str = "parquet",
        mode: str = "overwrite",
        encryption_context: Mapping[str, str] | None = None,
        join_domain: str | None = None,
        join_domain_store: str | None = None,
        table_format: str | None = None,
        replace_where: Mapping[str, Any] | None = None,
        require_protection_level: str | None = None,
        tenant_column: str | None = None,
        tenant_keys: Any = None,
        subject_column: str | None = None,
        subject_store: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(_output_path=destination, **kwargs)
        self.require_protection_level = require_protection_level
        self.tenant_column = tenant_column
        self.tenant_keys = tenant_keys
        self.subject_column = subject_column
        self.subject_store = subject_store
        self.join_domain = join_domain
        self.join_domain_store = join_domain_store
        self.table_format = table_format
        self.replace_where = dict(replace_where or {})
        self.source = source
        self.destination = destination
        self.columns = list(columns)
        self.key_uri = key_uri
        self.deterministic_columns = list(deterministic_columns)
        self.blind_index = dict(blind_index or {})
        self.partition_by = list(partition_by)
        self.source_format = source_format
        self.mode = mode
        self.encryption_context = dict(encryption_context or {})

    @task_errors()
    def execute(self, context: Context) -> dict[str, Any]:
        from spark_kms.jobs import encrypt_dataset

        shredding = {name: value for name in ("tenant_column", "tenant_keys", "subject_column", "subject_store")
                     if (value := _unset_template(getattr(self, name)))}
        key_uri, kms_options = self.resolve_kms(self.key_uri, need_key="tenant_keys" not in shredding)
        table_format = self.table_format or None
        if table_format in ("None",):  # a rendered template of an unset param
            table_format = None
        # A session only when the job needs one: a table destination is written without Spark, so the
        # factory given for a classic master is never called then (a Spark Connect session is the job's own).
        with self.job_session(required=False) as spark:
            summary = encrypt_dataset(
                self.source, self.destination, key_uri=key_uri, columns=self.columns,
                deterministic_columns=self.deterministic_columns, blind_index=self.blind_index,
                partition_by=self.partition_by, source_format=self.source_format, mode=self.mode,
                encryption_context=self.encryption_context, kms_options=kms_options,
                spark=spark if spark is not None else self.spark_session,
                run_id=self.run_id_for(context), join_domain=self.join_domain or None,
                join_domain_store=self.join_domain_store or None, table_format=table_format,
                replace_where=self.replace_where or None,
                require_protection_level=_unset_template(self.require_protection_level), **self.location_kwargs(),
                **shredding,
            )
        self.log.info("encrypted %s rows into %s files under %s (%s data keys, KMS calls %s)",
                      summary.rows, summary.files, key_uri, summary.deks, summary.kms_calls)
        self.record_lineage(context, self.destination)
        return self.report(summary)


def _mask_url_password(url: Any) -> None:
    """Register the password of a store URL (``postgresql://user:password@host/db``) with Airflow's masker."""
    if isinstance(url, str) and "://" in url:
        from airflow.sdk.log import mask_secret

        with suppress(ValueError):
            password = urlsplit(url).password
            if password:
                mask_secret(password)


def _unset_template(value: str | None) -> str | None:
    """``None`` for an unset parameter, also once a template rendered it as ``"None"`` or ``""``."""
    return None if value in (None, "", "None") else value


class DecryptDatasetOperator(SparkKmsBaseOperator):
    """Decrypt an encrypted dataset into a *plaintext* copy (:func:`spark_kms.jobs.decrypt_dataset`).

    The destination must be outside the source; it is replaced, so a retry gives the same
    result. The new output is written beside it and swapped in only once complete: a failed
    run leaves the destination as it was.

    :param source: the encrypted dataset directory (templated).
    :param destination: where the plaintext goes (templated).
    :param columns: keep only these columns (templated; default all).
    :param output_format: ``parquet``, ``csv`` or ``json`` (templated).
    :param version: a Delta or Iceberg table ``source``: time travel to this Delta version, Iceberg
        snapshot id or ISO-8601 timestamp (templated). A table is decrypted with pyarrow (Parquet output),
        without Spark.
    :param subject_store: the subject key store of per-subject columns (URL or path; templated).
    :param on_erased: ``"null"`` (default): erased cells (tenant key deleted, subject erased) are written as
        null; ``"raise"``: the task fails, without retries (templated).
    """

    template_fields: Sequence[str] = (
        "source", "destination", "columns", "output_format", "version", "subject_store", "on_erased",
        *SparkKmsBaseOperator.template_fields,
    )

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        columns: Sequence[str] | None = None,
        output_format: str = "parquet",
        version: int | str | None = None,
        subject_store: str | None = None,
        on_erased: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(_output_path=destination, **kwargs)
        self.subject_store = subject_store
        self.on_erased = on_erased
        self.source = source
        self.destination = destination
        self.columns = list(columns) if columns is not None else None
        self.output_format = output_format
        self.version = version

    @task_errors()
    def execute(self, context: Context) -> dict[str, Any]:
        from spark_kms.jobs import decrypt_dataset

        _, kms_options = self.resolve_kms()
        with self.job_session(required=False) as spark:  # a table source needs no session: made on demand
            summary = decrypt_dataset(
                self.source, self.destination, columns=self.columns, output_format=self.output_format,
                kms_options=kms_options, spark=spark if spark is not None else self.spark_session,
                run_id=self.run_id_for(context), version=_table_version(self.version), **self.location_kwargs(),
                subject_store=_unset_template(self.subject_store), on_erased=_unset_template(self.on_erased),
            )
        self.log.info("decrypted %s rows from %s into %s", summary.rows, self.source, self.destination)
        self.record_lineage(context, self.destination)
        return self.report(summary)


class ReencryptDatasetOperator(SparkKmsBaseOperator):
    """Bring an encrypted dataset onto the key's current version after a rotation.

    * ``mode="rewrap"`` (:func:`spark_kms.jobs.rewrap_dataset`): each data key is re-wrapped by
      the key's primary version; no cell is touched; KMS work grows with the number of data keys.
    * ``mode="reencrypt"`` (:func:`spark_kms.jobs.reencrypt_dataset`): new data keys, every cell
      re-encrypted, files swapped atomically; for a suspected data-key or key-version compromise.

    Both are resumable and idempotent: a retry of the same Airflow run continues the same job.

    :param path: the encrypted dataset directory (templated).
    :param mode: ``rewrap`` or ``reencrypt`` (templated).
    :param key_uri: a target key other than the one the data keys are wrapped by (templated).
    :param force: ``reencrypt`` only: rewrite files already on the target's primary version too.
    :param abandon: ``reencrypt`` only: give up the pending run with this id (the refusal of a
        mismatched pending run names it) instead of starting one (templated).
    :param batch_files: ``reencrypt`` of a Delta or Iceberg table: one table commit every this many files
        (templated; default one commit).
    :param vacuum_retention_hours: ``reencrypt`` of a table, opt-in: then vacuum / expire what older
        snapshots keep, with this retention (``0`` after a compromise: the old data keys are then nowhere in
        the table; time travel to older versions ends). A plain dataset keeps no older files (templated;
        ``"None"`` / ``""``: no vacuum).
    :param include_history: ``rewrap`` of a table: also rewrap the data keys older versions reference.
    :param kms_concurrency: ``rewrap``: KMS requests kept in flight (default 16; ``1``: one at a time);
        throttled requests are retried with backoff (docs/ROTATION.md).

    A Delta or Iceberg ``path`` goes to :mod:`spark_kms.tables` (re-encrypt: new files and one commit per
    batch, never a file the table's log references rewritten); ``catalog_properties`` and
    ``table_options`` come from the base operator.
    """

    template_fields: Sequence[str] = ("path", "mode", "key_uri", "abandon", "batch_files", "vacuum_retention_hours",
                                      *SparkKmsBaseOperator.template_fields)
    MODES = ("rewrap", "reencrypt")

    def __init__(
        self,
        *,
        path: str,
        mode: str = "rewrap",
        key_uri: str | None = None,
        force: bool = False,
        abandon: str | None = None,
        batch_files: int | str | None = None,
        vacuum_retention_hours: float | str | None = None,
        include_history: bool = False,
        kms_concurrency: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not _is_templated(mode) and mode not in self.MODES:
            raise ConfigurationError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        super().__init__(_output_path=path, **kwargs)
        self.path = path
        self.mode = mode
        self.key_uri = key_uri
        self.force = force
        self.abandon = abandon
        self.batch_files = batch_files
        self.vacuum_retention_hours = vacuum_retention_hours
        self.include_history = include_history
        self.kms_concurrency = kms_concurrency

    @task_errors()
    def execute(self, context: Context) -> dict[str, Any]:
        from spark_kms.jobs import reencrypt_dataset, rewrap_dataset

        if self.mode not in self.MODES:
            raise ConfigurationError(f"task {self.task_id!r}: mode must be one of {list(self.MODES)}, "
                                     f"got {self.mode!r}")
        _, kms_options = self.resolve_kms()
        run_id = self.run_id_for(context)
        location = self.location_kwargs()
        batch_files = _optional_int(self.batch_files, f"task {self.task_id!r}: batch_files")
        vacuum_hours = _optional_float(self.vacuum_retention_hours, f"task {self.task_id!r}: vacuum_retention_hours")
        # Both jobs work on files with pyarrow, in this process unless spark_conn_id names a master:
        # then through that session (over Spark Connect: on the server's side, where the data is).
        with self.job_session(required=False) as spark:
            if self.mode == "rewrap":
                summary = rewrap_dataset(self.path, key_uri=self.key_uri, kms_options=kms_options, run_id=run_id,
                                         spark=spark, include_history=bool(self.include_history),
                                         kms_concurrency=_optional_int(self.kms_concurrency,
                                                                       f"task {self.task_id!r}: kms_concurrency"),
                                         **location)
            elif self.abandon:
                summary = reencrypt_dataset(self.path, kms_options=kms_options, abandon=str(self.abandon),
                                            spark=spark, **location)
            else:
                summary = reencrypt_dataset(self.path, key_uri=self.key_uri, kms_options=kms_options,
                                            run_id=run_id, force=self.force, spark=spark, batch_files=batch_files,
                                            vacuum_retention_hours=vacuum_hours, **location)
        self.log.info("%s of %s: %s data keys, %s files, key versions %s -> %s", self.mode, self.path,
                      summary.deks, summary.files, summary.key_versions_before, summary.key_versions)
        self.record_lineage(context, self.path)
        return self.report(summary)
