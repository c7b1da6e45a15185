"""The local harness's throttle counter, checked against an independent record: the
keystore's audit log, where every throttled call is a line with outcome ThrottlingError."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spark_kms.errors import ThrottlingError
from spark_kms.testing.local_harness import LocalKmsHarness

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers"}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalKmsHarness]:
    with LocalKmsHarness() as h:
        yield h


def _throttled_in_audit(local: LocalKmsHarness, since: int) -> int:
    return sum(e["outcome"] == "ThrottlingError" for e in local.admin.audit_events()[since:])


@pytest.mark.parametrize(("failures", "period"), [(1, 1), (2, 3), (1, 4)])
def test_throttled_requests_matches_the_audit_log(local: LocalKmsHarness, failures: int, period: int) -> None:
    kms = local.provider()
    since = len(local.admin.audit_events())
    local.throttle(failures, period)
    try:
        for _ in range(3):
            try:
                kms.decrypt_data_key(kms.generate_data_key(CTX).wrapped, CTX)
            except ThrottlingError:
                assert (failures, period) == (1, 1)  # only permanent throttling may surface
        counted = local.throttled_requests()
    finally:
        local.throttle(0, 1)
    assert counted == _throttled_in_audit(local, since)
    assert counted > 0
    assert local.throttled_requests() == 0
