"""Helpers shared by the dataset jobs: providers from kms_options, dataset checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spark_kms.errors import ConfigurationError
from spark_kms.kms.base import KeyDescription, KmsProvider
from spark_kms.kms.registry import provider_from_uri

__all__ = ["KmsOptions", "Providers", "require_dataset_dir", "scheme_of", "with_run_tag"]

KmsOptions = Mapping[str, Mapping[str, Any]]


def scheme_of(key_uri: str) -> str:
    if "://" not in key_uri:
        raise ConfigurationError(f"a key URI looks like '<scheme>://<key>', got {key_uri!r}")
    return key_uri.split("://", 1)[0].lower()


def with_run_tag(kms_options: KmsOptions | None, run_id: str) -> dict[str, dict[str, Any]]:
    """``kms_options`` with the job's run id as the embedded KMS's ``request_tag``, so every
    audit line of the job names it -- also for calls whose encryption context is fixed
    (Decrypt and ReEncrypt of existing data keys). Other KMSs record the context only."""
    options = {k: dict(v) for k, v in (kms_options or {}).items()}
    options.setdefault("local", {}).setdefault("request_tag", run_id)
    return options


class Providers:
    """One provider per key URI for the whole job, built from ``kms_options[scheme]``,
    and one DescribeKey per distinct key URI (not per file, not per DEK)."""

    def __init__(self, kms_options: KmsOptions | None) -> None:
        self._options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (kms_options or {}).items()}
        self._providers: dict[str, KmsProvider] = {}
        self._descriptions: dict[str, KeyDescription] = {}

    @property
    def kms_options(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._options.items()}

    def get(self, key_uri: str) -> KmsProvider:
        provider = self._providers.get(key_uri)
        if provider is None:
            provider = provider_from_uri(key_uri, **self._options.get(scheme_of(key_uri), {}))
            self._providers[key_uri] = provider
        return provider

    def describe(self, key_uri: str) -> KeyDescription:
        description = self._descriptions.get(key_uri)
        if description is None:
            description = self.get(key_uri).describe_key()
            self._descriptions[key_uri] = description
        return description


def require_dataset_dir(path: str | Path, job: str) -> Path:
    """The dataset directory as an absolute path; a clear error when it is not one."""
    dataset = Path(path)
    if not dataset.exists():
        raise ConfigurationError(f"{job}: dataset {str(dataset)!r} does not exist")
    if not dataset.is_dir():
        raise ConfigurationError(f"{job}: {str(dataset)!r} is a file; {job} works on a dataset directory")
    return dataset.resolve()
