"""Hooks: an Airflow Connection -> a spark_kms KMS provider and ``kms_options``.

One hook class per connection type (Airflow maps each connection type to exactly one
hook class), all sharing :class:`SparkKmsHook`'s logic, which dispatches on the
*connection's* type, so ``SparkKmsHook("my_aws_kms")`` works for any spark_kms
connection. The field layout of each type is in :mod:`airflow_plugins.provider_info`.

Rules:

* The key URI is the operator's ``key_uri`` if given, else the connection's ``key_uri``
  extra, else (local connections only) ``local://alias/pii``. Its scheme must match the
  connection type: a ``spark_kms_aws`` connection cannot serve a ``vault://`` key.
* Secrets (root key, AWS secret key and session token, GCP access token, Azure client
  secret, Vault token and AppRole secret id) come from the Connection's password or
  extra; they are registered with Airflow's secrets masker and never logged here.
* ``extra["options"]`` (a JSON object) passes further provider options through as is
  (e.g. ``{"timeout": 5}``); the named fields take precedence.
* An ``aws_conn_id`` / ``gcp_conn_id`` extra reuses an Airflow ``aws`` /
  ``google_cloud_platform`` connection, read in its documented shape (login = access key
  id, password = secret key, extra ``region_name``, ``endpoint_url``, ``aws_session_token``,
  ``role_arn``, ``profile_name``; GCP extra ``key_path``). The official provider packages
  are not needed for that.

The KMS logic itself lives in :mod:`spark_kms` and does not import Airflow.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from airflow.sdk import BaseHook, Connection

from spark_kms.errors import ConfigurationError
from spark_kms.kms import KmsConfig, parse_key_uri
from spark_kms.kms.base import KmsProvider

__all__ = [
    "CONN_TYPE_SCHEMES",
    "SparkKmsAwsHook",
    "SparkKmsAzureHook",
    "SparkKmsGcpHook",
    "SparkKmsHook",
    "SparkKmsVaultHook",
    "mask_mapping_secrets",
    "mask_option_secrets",
]

#: connection type -> the key-URI scheme it serves
CONN_TYPE_SCHEMES: dict[str, str] = {
    "spark_kms_local": "local",
    "spark_kms_aws": "aws-kms",
    "spark_kms_gcp": "gcp-kms",
    "spark_kms_azure": "azure-kv",
    "spark_kms_vault": "vault",
}
DEFAULT_LOCAL_KEY_URI = "local://alias/pii"


def mask_option_secrets(kms_options: Mapping[str, Any] | KmsConfig | None) -> None:
    """Register the secret values of ``{scheme: options}`` with Airflow's secrets masker.

    Which options are secret is what each provider class declares (``secret_options``; see
    :meth:`spark_kms.kms.KmsConfig.secret_values`). Operators call it on their rendered
    ``kms_options``: Airflow redacts rendered template fields (stored in its database, shown in
    the UI) and logs by key name, and a name such as ``root_key`` is not one it knows; a
    registered value is masked wherever it appears.
    """
    from airflow.sdk.log import mask_secret

    if not isinstance(kms_options, KmsConfig):
        # Rendered templates may hold anything: keep what has the {scheme: {options}} shape.
        kms_options = {s: o for s, o in (kms_options or {}).items() if isinstance(o, Mapping)}
    for value in KmsConfig.of(kms_options).secret_values():
        mask_secret(value)


#: option names whose values are secrets in storage options, Iceberg catalog properties and table-library
#: options (``s3.secret_key``, ``s3.secret-access-key``, ``AWS_SECRET_ACCESS_KEY``, ``adls.account-key``,
#: ``AZURE_STORAGE_SAS_KEY``, ``gcs.oauth2.token``, ``credential``, ``token``, ``password``...)
_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|account[-_.]?key|sas[-_.]?(key|token)|"
                          r"private[-_.]?key", re.IGNORECASE)


def mask_mapping_secrets(*mappings: Mapping[str, Any] | None) -> None:
    """Register the secret values of option mappings (storage options, catalog properties, table options)
    with Airflow's secrets masker: Airflow redacts rendered fields by key name, and names such as
    ``adls.account-key`` are not ones it knows. A value is secret by its option's name (:data:`_SECRET_NAME`)."""
    from airflow.sdk.log import mask_secret

    for mapping in mappings:
        if not isinstance(mapping, Mapping):
            continue
        for name, value in mapping.items():
            if value not in (None, "") and _SECRET_NAME.search(str(name)):
                mask_secret(str(value))


def _extra(conn: Connection, name: str) -> Any:
    """An extra field by its plain name, or by the ``extra__<type>__<name>`` form older UIs stored."""
    extra = conn.extra_dejson
    value = extra.get(name)
    if value in (None, ""):
        value = extra.get(f"extra__{conn.conn_type}__{name}")
    return None if value == "" else value


def _as_bool(value: Any, what: str, conn_id: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"connection {conn_id!r}: {what} must be true or false, got {value!r}")


def _set(options: dict[str, Any], name: str, value: Any) -> None:
    if value is not None and value != "":
        options[name] = value


class SparkKmsHook(BaseHook):
    """A spark_kms KMS connection (any of the ``spark_kms_*`` types).

    :param spark_kms_conn_id: the Airflow connection id (default: the class's ``default_conn_name``,
        ``spark_kms_default`` here).
    :param key_uri: a key URI that overrides the connection's ``key_uri`` extra.

    ``get_conn()`` returns the :class:`~spark_kms.kms.base.KmsProvider` (built on first use,
    then cached); ``get_kms_options()`` the ``{scheme: options}`` mapping the
    :mod:`spark_kms.jobs` functions take; ``get_key_uri()`` the key URI.
    """

    conn_name_attr = "spark_kms_conn_id"
    default_conn_name = "spark_kms_default"
    conn_type = "spark_kms_local"
    hook_name = "spark_kms embedded local KMS"

    def __init__(self, spark_kms_conn_id: str | None = None, *, key_uri: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spark_kms_conn_id = spark_kms_conn_id or self.default_conn_name
        self._key_uri_override = key_uri or None
        self._conn: Connection | None = None
        self._resolved: tuple[str, dict[str, Any]] | None = None  # (scheme, options)
        self._provider: KmsProvider | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spark_kms_conn_id={self.spark_kms_conn_id!r})"

    # -- public API -----------------------------------------------------------
    def get_conn(self) -> KmsProvider:
        """The KMS provider for the key URI (built once per hook)."""
        if self._provider is None:
            self._provider = self.get_kms_config().provider(self.get_key_uri())
            # The provider's repr is its key URI only: no option values, so no secrets.
            self.log.info("spark_kms connection %r -> %r", self.spark_kms_conn_id, self._provider)
        return self._provider

    def get_key_uri(self) -> str:
        """The key URI new data keys are generated under (see the module docstring)."""
        scheme, _ = self._resolve()
        conn = self._connection()
        key_uri = self._key_uri_override or _extra(conn, "key_uri")
        if not key_uri and scheme == "local":
            key_uri = DEFAULT_LOCAL_KEY_URI
        if not key_uri:
            raise ConfigurationError(
                f"connection {self.spark_kms_conn_id!r} ({conn.conn_type}) names no key: set its 'key_uri' "
                f"extra or pass key_uri= to the operator"
            )
        if parse_key_uri(str(key_uri))[0] != scheme:
            raise ConfigurationError(
                f"connection {self.spark_kms_conn_id!r} is a {conn.conn_type} connection and serves "
                f"'{scheme}://...' keys, but the key URI is {key_uri!r}"
            )
        return str(key_uri)

    def get_kms_options(self) -> dict[str, dict[str, Any]]:
        """``{scheme: provider options}`` for the jobs API (a fresh copy each call). Needs no key URI:
        readers find the key URIs in the dataset's footers."""
        scheme, options = self._resolve()
        return {scheme: dict(options)}

    def get_kms_config(self) -> KmsConfig:
        """The connection as a :class:`~spark_kms.kms.KmsConfig` (its options for its scheme)."""
        return KmsConfig(self.get_kms_options())

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: one DescribeKey on the key."""
        try:
            description = self.get_conn().describe_key()
        except Exception as exc:  # noqa: BLE001 -- the UI wants a message, not a traceback
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"key {description.key_id}: primary version {description.primary_version}, {description.state}"

    # -- resolution -----------------------------------------------------------
    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.get_connection(self.spark_kms_conn_id)
        return self._conn

    def _resolve(self) -> tuple[str, dict[str, Any]]:
        if self._resolved is None:
            conn = self._connection()
            conn_type = conn.conn_type or ""
            scheme = CONN_TYPE_SCHEMES.get(conn_type)
            if scheme is None:
                raise ConfigurationError(
                    f"connection {self.spark_kms_conn_id!r} has type {conn_type!r}; a spark_kms connection has "
                    f"one of the types {sorted(CONN_TYPE_SCHEMES)}"
                )
            passthrough = _extra(conn, "options") or {}
            if not isinstance(passthrough, Mapping):
                raise ConfigurationError(
                    f"connection {self.spark_kms_conn_id!r}: the 'options' extra must be a JSON object"
                )
            options = dict(passthrough)
            mask_option_secrets({scheme: options})  # secrets given as raw provider options, too
            options.update(_BUILDERS[conn_type](self, conn))
            self._resolved = (scheme, options)
        return self._resolved

    def _secret(self, value: Any) -> Any:
        """Register a secret with Airflow's masker so task logs show ``***`` instead."""
        if value:
            from airflow.sdk.log import mask_secret

            mask_secret(value if isinstance(value, str) else repr(value))
        return value

    # -- one builder per connection type ---------------------------------------
    def _local_options(self, conn: Connection) -> dict[str, Any]:
        options: dict[str, Any] = {}
        _set(options, "keystore", _extra(conn, "keystore"))
        _set(options, "principal", conn.login)
        if conn.password:
            self._secret(conn.password)
            try:
                root_key = base64.b64decode(conn.password, validate=True)
            except (binascii.Error, ValueError):
                root_key = b""
            if len(root_key) != 32:
                # Never echo the value: it is meant to be a root key.
                raise ConfigurationError(
                    f"connection {self.spark_kms_conn_id!r}: the password is the keystore root key, "
                    "32 bytes in base64 (44 characters); the value given is not"
                )
            # Passed on as base64 so the options stay JSON-able for Spark jobs' workers.
            options["root_key"] = conn.password
        return options

    def _aws_options(self, conn: Connection) -> dict[str, Any]:
        options: dict[str, Any] = {}
        reuse = _extra(conn, "aws_conn_id")
        if reuse:
            options.update(self._from_aws_connection(str(reuse)))
        _set(options, "aws_access_key_id", conn.login)
        _set(options, "aws_secret_access_key", self._secret(conn.password))
        _set(options, "aws_session_token", self._secret(_extra(conn, "aws_session_token")))
        for name in ("region", "endpoint_url", "role_arn", "profile"):
            _set(options, name, _extra(conn, name))
        return options

    def _from_aws_connection(self, conn_id: str) -> dict[str, Any]:
        aws = self.get_connection(conn_id)
        extra = aws.extra_dejson
        options: dict[str, Any] = {}
        _set(options, "aws_access_key_id", aws.login or extra.get("aws_access_key_id"))
        _set(options, "aws_secret_access_key", self._secret(aws.password or extra.get("aws_secret_access_key")))
        _set(options, "aws_session_token", self._secret(extra.get("aws_session_token")))
        _set(options, "region", extra.get("region_name"))
        service_config = extra.get("service_config") or {}
        kms_endpoint = service_config.get("kms", {}).get("endpoint_url") if isinstance(service_config, dict) else None
        _set(options, "endpoint_url", kms_endpoint or extra.get("endpoint_url"))
        _set(options, "role_arn", extra.get("role_arn"))
        _set(options, "profile", extra.get("profile_name"))
        return options

    def _gcp_options(self, conn: Connection) -> dict[str, Any]:
        options: dict[str, Any] = {}
        reuse = _extra(conn, "gcp_conn_id")
        if reuse:
            gcp = self.get_connection(str(reuse))
            if _extra(gcp, "keyfile_dict"):
                raise ConfigurationError(
                    f"connection {reuse!r}: spark_kms reads Google credentials from a key file; set 'key_path' "
                    "instead of 'keyfile_dict' (executors must be able to read the same file)"
                )
            _set(options, "credentials_file", _extra(gcp, "key_path"))
        _set(options, "endpoint", _extra(conn, "endpoint"))
        _set(options, "credentials_file", _extra(conn, "credentials_file"))
        _set(options, "access_token", self._secret(conn.password))
        return options

    def _azure_options(self, conn: Connection) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name in ("vault_url", "tenant_id", "algorithm"):
            _set(options, name, _extra(conn, name))
        _set(options, "client_id", conn.login)
        _set(options, "client_secret", self._secret(conn.password))
        return options

    def _vault_options(self, conn: Connection) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name in ("auth_method", "role_id", "namespace", "verify"):
            _set(options, name, _extra(conn, name))
        _set(options, "secret_id", self._secret(_extra(conn, "secret_id")))
        for name in ("tls", "derived"):
            _set(options, name, _as_bool(_extra(conn, name), name, self.spark_kms_conn_id))
        _set(options, "token", self._secret(conn.password))
        return options


_BUILDERS: dict[str, Callable[[SparkKmsHook, Connection], dict[str, Any]]] = {
    "spark_kms_local": SparkKmsHook._local_options,
    "spark_kms_aws": SparkKmsHook._aws_options,
    "spark_kms_gcp": SparkKmsHook._gcp_options,
    "spark_kms_azure": SparkKmsHook._azure_options,
    "spark_kms_vault": SparkKmsHook._vault_options,
}


class SparkKmsAwsHook(SparkKmsHook):
    """A ``spark_kms_aws`` connection (AWS KMS); see :class:`SparkKmsHook`."""

    default_conn_name = "spark_kms_aws_default"
    conn_type = "spark_kms_aws"
    hook_name = "spark_kms AWS KMS"


class SparkKmsGcpHook(SparkKmsHook):
    """A ``spark_kms_gcp`` connection (Google Cloud KMS); see :class:`SparkKmsHook`."""

    default_conn_name = "spark_kms_gcp_default"
    conn_type = "spark_kms_gcp"
    hook_name = "spark_kms Google Cloud KMS"


class SparkKmsAzureHook(SparkKmsHook):
    """A ``spark_kms_azure`` connection (Azure Key Vault); see :class:`SparkKmsHook`."""

    default_conn_name = "spark_kms_azure_default"
    conn_type = "spark_kms_azure"
    hook_name = "spark_kms Azure Key Vault"


class SparkKmsVaultHook(SparkKmsHook):
    """A ``spark_kms_vault`` connection (HashiCorp Vault Transit); see :class:`SparkKmsHook`."""

    default_conn_name = "spark_kms_vault_default"
    conn_type = "spark_kms_vault"
    hook_name = "spark_kms HashiCorp Vault Transit"
