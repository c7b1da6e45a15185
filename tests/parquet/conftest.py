"""Fixtures of the file-layer tests: a local KMS key, fresh KMS counters and DEK cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from spark_kms.kms import KmsProvider, process_dek_cache, provider_from_uri, reset_kms_call_counts
from spark_kms.kms.local import LocalKms


class Kms(NamedTuple):
    admin: LocalKms
    provider: KmsProvider
    options: dict[str, dict[str, Any]]
    keystore: Path


def make_kms(keystore: Path) -> Kms:
    admin = LocalKms(keystore)
    admin.create_key(alias="alias/pii")
    provider = provider_from_uri("local://alias/pii", keystore=str(keystore))
    return Kms(admin, provider, {"local": {"keystore": str(keystore)}}, keystore)


@pytest.fixture
def kms(tmp_path: Path) -> Kms:
    return make_kms(tmp_path / "keystore")


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    # Counts of KMS calls are per process and the DEK cache is shared: start each test clean.
    process_dek_cache().clear()
    reset_kms_call_counts()
    yield
    process_dek_cache().clear()
