"""Key URI -> provider class, by scheme. Backends import lazily so a missing extra
only matters when its scheme is used, and then the error names the extra."""

from __future__ import annotations

import importlib
from typing import Any

from spark_kms.errors import ConfigurationError, MissingExtraError
from spark_kms.kms.base import KmsProvider

__all__ = ["parse_key_uri", "provider_class", "provider_from_uri", "register_provider", "registered_schemes"]

# scheme -> ("module:Class", extra)
_BUILTIN: dict[str, tuple[str, str]] = {
    "local": ("spark_kms.kms.local:LocalKmsProvider", ""),
    "aws-kms": ("spark_kms.kms.aws:AwsKmsProvider", "aws"),
    "gcp-kms": ("spark_kms.kms.gcp:GcpKmsProvider", "gcp"),
    "azure-kv": ("spark_kms.kms.azure:AzureKeyVaultProvider", "azure"),
    "vault": ("spark_kms.kms.vault:VaultTransitProvider", "vault"),
    "pkcs11": ("spark_kms.kms.pkcs11:Pkcs11Provider", "hsm"),
}
_CUSTOM: dict[str, type[KmsProvider]] = {}


def register_provider(cls: type[KmsProvider]) -> type[KmsProvider]:
    """Register a provider class for its ``scheme`` (usable as a class decorator)."""
    if not cls.scheme:
        raise ConfigurationError(f"{cls.__name__} has no scheme")
    _CUSTOM[cls.scheme] = cls
    return cls


def registered_schemes() -> list[str]:
    return sorted(set(_BUILTIN) | set(_CUSTOM))


def parse_key_uri(key_uri: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a key URI, the scheme lower-cased. The one parser of key URIs: every
    layer (file layer, Spark, jobs, CLI, Airflow) reaches it through :class:`~spark_kms.kms.KmsConfig`,
    so a malformed URI gives the same error everywhere."""
    if not isinstance(key_uri, str) or "://" not in key_uri or not key_uri.split("://", 1)[0]:
        raise ConfigurationError(
            f"a key URI looks like '<scheme>://<key>' with scheme one of {registered_schemes()}, got {key_uri!r}"
        )
    scheme, rest = key_uri.split("://", 1)
    return scheme.lower(), rest


def provider_class(key_uri: str) -> type[KmsProvider]:
    """The provider class serving ``key_uri``'s scheme (its module imported on first use)."""
    scheme, _ = parse_key_uri(key_uri)
    if scheme in _CUSTOM:
        return _CUSTOM[scheme]
    if scheme not in _BUILTIN:
        raise ConfigurationError(f"unknown KMS scheme {scheme!r}: expected one of {registered_schemes()}")
    target, extra = _BUILTIN[scheme]
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if isinstance(exc, MissingExtraError):
            raise
        raise MissingExtraError(f"the {scheme!r} KMS provider", extra or "all") from exc
    return getattr(module, cls_name)


def provider_from_uri(key_uri: str, **options: Any) -> KmsProvider:
    """Build the provider for ``key_uri`` (``local://alias/pii``, ``aws-kms://arn:...`` ...)."""
    return provider_class(key_uri)(key_uri, **options)
