"""Fixtures for the local KMS tests: a keystore in tmp_path, an injected root key and clock."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import pytest

from spark_kms.kms.local import LocalKms


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def root_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def keystore(tmp_path):
    return tmp_path / "keystore"


@pytest.fixture
def kms(keystore, root_key, clock) -> LocalKms:
    return LocalKms(keystore, principal="alice", root_key=root_key, clock=clock)


@pytest.fixture
def key_id(kms) -> str:
    return kms.create_key(alias="alias/pii", description="test key")
