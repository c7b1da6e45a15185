"""The ``harness`` fixture: one running provider test server per provider, for the
whole session, parametrized over every backend so the contract suite in
``test_contract.py`` runs unchanged against each.

A harness that cannot be imported or started is an error, never a skip.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from spark_kms.testing.harness import ProviderHarness

HARNESSES: dict[str, str] = {
    "local": "spark_kms.testing.local_harness:LocalKmsHarness",
    "aws": "spark_kms.testing.aws:AwsKmsHarness",
    "gcp": "spark_kms.testing.gcp:GcpKmsHarness",
    "azure": "spark_kms.testing.azure:AzureKeyVaultHarness",
    "vault": "spark_kms.testing.vault:VaultTransitHarness",
    "pkcs11": "spark_kms.testing.pkcs11:Pkcs11Harness",
}

def _load(name: str) -> type[ProviderHarness]:
    module_name, cls_name = HARNESSES[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


@pytest.fixture(scope="session")
def pkcs11_harness() -> Iterator[ProviderHarness]:
    """The one SoftHSM2 token of the session (the contract suite's and test_pkcs11.py's): PKCS#11
    libraries are process-wide, so a second token directory would mean re-initialising the module."""
    h = _load("pkcs11")()
    h.start()
    try:
        yield h
    finally:
        h.throttle(0, 1)
        h.stop()


@pytest.fixture(scope="session", params=list(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Iterator[ProviderHarness]:
    if request.param == "pkcs11":
        yield request.getfixturevalue("pkcs11_harness")
        return
    h = _load(request.param)()
    h.start()
    try:
        yield h
    finally:
        h.throttle(0, 1)
        h.stop()

