"""Provider metadata for Airflow's provider discovery (entry point ``apache_airflow_provider``).

Airflow calls :func:`get_provider_info` while it loads its *configuration*, before any
DAG is parsed, so this module imports nothing (not Airflow, not spark_kms): a failing
import here would break every Airflow command on the machine.

Connection types, one per KMS backend; each field below is stored in the Connection's
``extra`` JSON under its plain name (``{"key_uri": "local://alias/pii", ...}``), and the
built-in fields (login, password, host...) are relabelled or hidden per backend:

========================  =========================  ==========================================
connection type           login / password           extra fields
========================  =========================  ==========================================
``spark_kms_local``       principal / root key (b64) key_uri, keystore
``spark_kms_aws``         access key id / secret key key_uri, region, endpoint_url, role_arn,
                                                     profile, aws_session_token, aws_conn_id
``spark_kms_gcp``         - / access token           key_uri, endpoint, credentials_file,
                                                     gcp_conn_id
``spark_kms_azure``       client id / client secret  key_uri, vault_url, tenant_id, algorithm
``spark_kms_vault``       - / token                  key_uri, auth_method, role_id, secret_id,
                                                     namespace, tls, verify, derived
========================  =========================  ==========================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONNECTION_TYPES", "get_provider_info"]

_HOOKS = "airflow_plugins.hooks.spark_kms"
_INTEGRATION = "spark_kms"


def _str(label: str, description: str, *, default: str | None = None, secret: bool = False,
         enum: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if default is not None:
        schema["default"] = default
    if secret:
        schema["format"] = "password"
    if enum:
        schema["enum"] = enum
    return {"label": label, "schema": schema, "description": description}


def _bool(label: str, description: str, default: bool) -> dict[str, Any]:
    return {"label": label, "schema": {"type": ["boolean", "null"], "default": default}, "description": description}


_KEY_URI_HELP = "The KMS key data keys are generated under (operators may override it)."

#: connection type -> (hook class, UI name, conn-fields, ui-field-behaviour)
CONNECTION_TYPES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "spark_kms_local": (
        "SparkKmsHook",
        "spark_kms embedded local KMS",
        {
            "key_uri": _str("Key URI", _KEY_URI_HELP, default="local://alias/pii"),
            "keystore": _str("Keystore directory", "Directory of the embedded keystore "
                             "(default $SPARK_KMS_KEYSTORE, else ~/.spark_kms/keystore)."),
        },
        {
            "hidden-fields": ["host", "port", "schema", "extra"],
            "relabeling": {"login": "Principal", "password": "Root key (base64, optional)"},
            "placeholders": {"login": "etl-writer", "keystore": "/var/lib/spark_kms/keystore"},
        },
    ),
    "spark_kms_aws": (
        "SparkKmsAwsHook",
        "spark_kms AWS KMS",
        {
            "key_uri": _str("Key URI", _KEY_URI_HELP),
            "region": _str("Region", "AWS region (taken from the ARN when the key URI is an ARN)."),
            "endpoint_url": _str("Endpoint URL", "A VPC endpoint or a KMS-compatible test server."),
            "role_arn": _str("Role ARN", "Assume this IAM role through STS."),
            "profile": _str("Profile", "A named profile of the shared AWS config files."),
            "aws_session_token": _str("Session token", "Temporary credentials' session token.", secret=True),
            "aws_conn_id": _str("Reuse AWS connection", "Take credentials, region and endpoint from this "
                                "Airflow 'aws' connection instead."),
        },
        {
            "hidden-fields": ["host", "port", "schema", "extra"],
            "relabeling": {"login": "AWS access key id", "password": "AWS secret access key"},
            "placeholders": {"key_uri": "aws-kms://arn:aws:kms:eu-west-1:111122223333:alias/pii"},
        },
    ),
    "spark_kms_gcp": (
        "SparkKmsGcpHook",
        "spark_kms Google Cloud KMS",
        {
            "key_uri": _str("Key URI", _KEY_URI_HELP),
            "endpoint": _str("Endpoint", "host:port of a Cloud KMS-compatible server on the loopback interface "
                             "(tests only)."),
            "credentials_file": _str("Credentials file", "Service-account JSON file (default: Application "
                                     "Default Credentials)."),
            "gcp_conn_id": _str("Reuse Google Cloud connection", "Take the key file from this Airflow "
                                "'google_cloud_platform' connection instead."),
        },
        {
            "hidden-fields": ["host", "port", "schema", "login", "extra"],
            "relabeling": {"password": "OAuth2 access token (optional)"},
            "placeholders": {"key_uri": "gcp-kms://projects/p/locations/global/keyRings/r/cryptoKeys/pii"},
        },
    ),
    "spark_kms_azure": (
        "SparkKmsAzureHook",
        "spark_kms Azure Key Vault",
        {
            "key_uri": _str("Key URI", _KEY_URI_HELP),
            "vault_url": _str("Vault URL", "Endpoint to talk to (default https://<host of the key URI>)."),
            "tenant_id": _str("Tenant id", "Entra ID tenant of the service principal."),
            "algorithm": _str("Key-wrap algorithm", "RSA-OAEP-256 (RSA keys) or A256KW (Managed HSM AES keys).",
                              default="RSA-OAEP-256", enum=["RSA-OAEP-256", "A256KW"]),
        },
        {
            "hidden-fields": ["host", "port", "schema", "extra"],
            "relabeling": {"login": "Client id", "password": "Client secret"},
            "placeholders": {"key_uri": "azure-kv://myvault.vault.azure.net/keys/pii"},
        },
    ),
    "spark_kms_vault": (
        "SparkKmsVaultHook",
        "spark_kms HashiCorp Vault Transit",
        {
            "key_uri": _str("Key URI", _KEY_URI_HELP),
            "auth_method": _str("Auth method", "token, approle or kubernetes.", default="token",
                                enum=["token", "approle", "kubernetes"]),
            "role_id": _str("AppRole role id", "For auth_method=approle."),
            "secret_id": _str("AppRole secret id", "For auth_method=approle.", secret=True),
            "namespace": _str("Namespace", "Vault Enterprise / OpenBao namespace."),
            "tls": _bool("Use TLS", "https (default) or http.", True),
            "verify": _str("CA bundle", "Path of a CA bundle to verify the server with."),
            "derived": _bool("Derived key", "The Transit key was created with derived=true.", False),
        },
        {
            "hidden-fields": ["host", "port", "schema", "login", "extra"],
            "relabeling": {"password": "Vault token"},
            "placeholders": {"key_uri": "vault://vault.internal:8200/transit/keys/pii"},
        },
    ),
}


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow validates against its ``provider_info.schema.json``."""
    return {
        "package-name": "spark-kms",
        "name": "spark_kms",
        "description": "Envelope encryption of PII columns in Spark datasets through a KMS: encrypt, decrypt, "
                       "rewrap, re-encrypt and erase operators, a key-rotation sensor, and KMS connections.",
        "versions": ["0.1.0"],
        "integrations": [{"integration-name": _INTEGRATION, "tags": ["software"]}],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": [_HOOKS]}],
        "operators": [{"integration-name": _INTEGRATION, "python-modules": ["airflow_plugins.operators.spark_kms",
                                                                             "airflow_plugins.operators.erasure"]}],
        "sensors": [{"integration-name": _INTEGRATION, "python-modules": ["airflow_plugins.sensors.spark_kms"]}],
        "connection-types": [
            {
                "hook-class-name": f"{_HOOKS}.{hook}",
                "hook-name": name,
                "connection-type": conn_type,
                "conn-fields": fields,
                "ui-field-behaviour": behaviour,
            }
            for conn_type, (hook, name, fields, behaviour) in CONNECTION_TYPES.items()
        ],
    }
