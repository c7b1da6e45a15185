"""spark_kms storage options -> the options of each table library, in one place.

spark_kms names storage options ``<store>.<name>`` (:data:`spark_kms.storage.OPTION_NAMES`) and
resolves them, with ``$SPARK_KMS_STORAGE_OPTIONS`` and the stores' standard environment, into a
:class:`~spark_kms.storage.Location`. The table libraries take their own:

* delta-rs (``deltalake``) takes object_store keys in ``storage_options``: ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_ALLOW_HTTP``, ``AZURE_STORAGE_ACCOUNT_KEY``, ...;
* pyiceberg takes FileIO properties: ``s3.endpoint``, ``s3.access-key-id``, ``adls.account-key``, ...

:func:`delta_storage_options` and :func:`iceberg_io_properties` translate a Location's options (the
one mapping, tested); anything a library needs that spark_kms has no option for (delta-rs's S3
commit coordination -- ``aws_conditional_put`` or ``AWS_S3_LOCKING_PROVIDER`` --, a pyiceberg
``py-io-impl``) is passed as the table functions' ``table_options=``, which win over the mapping.
Credentials among them are never logged (:func:`masked`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from spark_kms.errors import ConfigurationError
from spark_kms.storage import Location

__all__ = ["SECRET_TABLE_OPTIONS", "delta_storage_options", "iceberg_io_properties", "masked"]

#: option names (of either library) that hold credentials
SECRET_TABLE_OPTIONS = frozenset({
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_CLIENT_SECRET", "GOOGLE_SERVICE_ACCOUNT_KEY", "s3.secret-access-key", "s3.session-token",
    "adls.account-key", "adls.sas-token", "adls.client-secret", "gcs.oauth2.token", "hdfs.kerberos_ticket",
    "password", "token", "credential",
})


def masked(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` with the values of credentials replaced by ``***`` (for logs and errors)."""
    return {k: ("***" if k in SECRET_TABLE_OPTIONS or "secret" in k.lower() or "password" in k.lower() else v)
            for k, v in options.items()}


def _endpoint(o: Mapping[str, str], env: tuple[str, ...]) -> str | None:
    value = o.get("s3.endpoint_override") or next((os.environ[e] for e in env if os.environ.get(e)), None)
    if value and "://" not in value:
        value = f"https://{value}"
    return value


def delta_storage_options(location: Location, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``storage_options`` delta-rs needs to reach the table at ``location`` (empty for local tables).

    :param extra: delta-rs options of your own (e.g. ``{"aws_conditional_put": "etag"}`` for an S3 store with
        conditional PUTs, or ``AWS_S3_LOCKING_PROVIDER``); they win over the mapping.
    :raises ConfigurationError: an option delta-rs cannot take (``s3.role_arn``: use AWS's chain).
    """
    o = location.options
    out: dict[str, str] = {}
    if location.scheme == "s3":
        endpoint = _endpoint(o, ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
        if endpoint:
            out["AWS_ENDPOINT_URL"] = endpoint
            if urlsplit(endpoint).scheme == "http":
                out["AWS_ALLOW_HTTP"] = "true"
        region = o.get("s3.region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            out["AWS_REGION"] = region
        for ours, theirs in (("s3.access_key", "AWS_ACCESS_KEY_ID"), ("s3.secret_key", "AWS_SECRET_ACCESS_KEY"),
                             ("s3.session_token", "AWS_SESSION_TOKEN")):
            if o.get(ours):
                out[theirs] = o[ours]
        if str(o.get("s3.anonymous", "")).lower() in {"1", "true", "yes"}:
            out["AWS_SKIP_SIGNATURE"] = "true"
        if str(o.get("s3.force_virtual_addressing", "")).lower() in {"1", "true", "yes"}:
            out["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "true"
        if o.get("s3.request_timeout"):
            out["timeout"] = f"{float(o['s3.request_timeout'])}s"
        if o.get("s3.connect_timeout"):
            out["connect_timeout"] = f"{float(o['s3.connect_timeout'])}s"
        if o.get("s3.role_arn"):
            raise ConfigurationError(
                "delta-rs cannot assume a role from the s3.role_arn storage option: give it credentials "
                "(s3.access_key/s3.secret_key/s3.session_token) or use AWS's chain (AWS_ROLE_ARN with "
                "AWS_WEB_IDENTITY_TOKEN_FILE, a profile, the instance role)"
            )
    elif location.scheme == "gs":
        if o.get("gcs.endpoint_override"):
            out["GOOGLE_BASE_URL"] = o["gcs.endpoint_override"]
        if str(o.get("gcs.anonymous", "")).lower() in {"1", "true", "yes"}:
            out["GOOGLE_SKIP_SIGNATURE"] = "true"
        if o.get("gcs.access_token"):
            raise ConfigurationError(
                "delta-rs takes no bearer token (gcs.access_token): use Google's application-default "
                "credentials or a service account key (table_options={'GOOGLE_SERVICE_ACCOUNT': <path>})"
            )
    elif location.scheme == "abfs":
        account = o.get("azure.account_name") or location.authority.partition("@")[2].split(".", 1)[0]
        if account:
            out["AZURE_STORAGE_ACCOUNT_NAME"] = account
        for ours, theirs in (("azure.account_key", "AZURE_STORAGE_ACCOUNT_KEY"),
                             ("azure.sas_token", "AZURE_STORAGE_SAS_KEY"),
                             ("azure.client_id", "AZURE_STORAGE_CLIENT_ID"),
                             ("azure.client_secret", "AZURE_STORAGE_CLIENT_SECRET"),
                             ("azure.tenant_id", "AZURE_STORAGE_TENANT_ID")):
            if o.get(ours):
                out[theirs] = o[ours]
        authority = o.get("azure.blob_storage_authority")
        if authority:
            out["AZURE_STORAGE_USE_EMULATOR"] = "true" if "127.0.0.1" in authority or "localhost" in authority \
                else "false"
    elif location.scheme == "hdfs":
        pass  # delta-rs reaches HDFS through its own hdfs-native client: Hadoop's configuration
    out.update({str(k): str(v) for k, v in (extra or {}).items()})
    return out


def iceberg_io_properties(location: Location | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The pyiceberg FileIO properties that reach the store of ``location`` with its spark_kms options.

    :param extra: FileIO or catalog properties of your own; they win over the mapping.
    """
    out: dict[str, str] = {}
    o = location.options if location is not None else {}
    scheme = location.scheme if location is not None else ""
    if scheme == "s3" or any(k.startswith("s3.") for k in o):
        endpoint = _endpoint(o, ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
        if endpoint:
            out["s3.endpoint"] = endpoint
        region = o.get("s3.region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            out["s3.region"] = region
        for ours, theirs in (("s3.access_key", "s3.access-key-id"), ("s3.secret_key", "s3.secret-access-key"),
                             ("s3.session_token", "s3.session-token"), ("s3.role_arn", "s3.role-arn"),
                             ("s3.anonymous", "s3.anonymous"),
                             ("s3.force_virtual_addressing", "s3.force-virtual-addressing"),
                             ("s3.request_timeout", "s3.request-timeout"),
                             ("s3.connect_timeout", "s3.connect-timeout")):
            if o.get(ours):
                out[theirs] = o[ours]
    if scheme == "gs" or any(k.startswith("gcs.") for k in o):
        for ours, theirs in (("gcs.access_token", "gcs.oauth2.token"), ("gcs.project_id", "gcs.project-id"),
                             ("gcs.endpoint_override", "gcs.service.host")):
            if o.get(ours):
                out[theirs] = o[ours]
    if scheme == "abfs" or any(k.startswith("azure.") for k in o):
        account = o.get("azure.account_name") or (
            location.authority.partition("@")[2].split(".", 1)[0] if scheme == "abfs" else "")
        if account:
            out["adls.account-name"] = account
        for name in ("account_key", "sas_token", "tenant_id", "client_id", "client_secret",
                     "blob_storage_authority", "dfs_storage_authority", "blob_storage_scheme", "dfs_storage_scheme"):
            if o.get(f"azure.{name}"):
                out[f"adls.{name.replace('_', '-')}"] = o[f"azure.{name}"]
    if scheme == "hdfs" and location is not None:
        host, _, port = location.authority.partition(":")
        if host:
            out["hdfs.host"] = host
        if port:
            out["hdfs.port"] = port
        if o.get("hdfs.user"):
            out["hdfs.user"] = o["hdfs.user"]
        if o.get("hdfs.kerb_ticket"):
            out["hdfs.kerberos_ticket"] = o["hdfs.kerb_ticket"]
    out.update({str(k): str(v) for k, v in (extra or {}).items()})
    return out
