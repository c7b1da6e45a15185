"""The interface every provider test harness follows, so one contract test suite
runs unchanged over all providers (local, AWS, GCP, Azure, Vault).

A harness owns a running test server (or keystore), one symmetric key in it, and
the admin powers a test needs: rotate the key, deny a principal, inject throttling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from spark_kms.kms.base import KmsProvider

__all__ = ["ProviderHarness"]


class ProviderHarness(ABC):
    #: short name used as the pytest id: "local", "aws", "gcp", "azure", "vault"
    name: str = ""
    #: True when the provider's retries are counted (a permanently throttled call then
    #: sends exactly :meth:`max_throttled_requests` requests); False when they are bounded
    #: by a deadline instead and :meth:`max_throttled_requests` is a documented ceiling.
    throttle_bound_is_exact: bool = True

    @abstractmethod
    def start(self) -> None:
        """Start the server (on 127.0.0.1, an ephemeral port) and create the test key."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server and free its port."""

    @abstractmethod
    def provider(self) -> KmsProvider:
        """A provider bound to the test key, with credentials allowed to do everything."""

    @abstractmethod
    def provider_for_missing_key(self) -> KmsProvider:
        """A provider bound to a key that does not exist on the server."""

    @abstractmethod
    def provider_denied(self) -> KmsProvider:
        """A provider bound to the test key whose credentials may not use it at all."""

    @abstractmethod
    def rotate(self) -> None:
        """Rotate the test key: new wraps use a new version, old versions still unwrap."""

    @abstractmethod
    def throttle(self, failures: int, period: int) -> None:
        """From now on, answer ``failures`` of every ``period`` KMS calls with the
        vendor's throttling error (``throttle(2, 3)``; ``throttle(1, 1)`` = always;
        ``throttle(0, 1)`` = off). Resets :meth:`throttled_requests` to 0."""

    @abstractmethod
    def throttled_requests(self) -> int:
        """How many requests the server answered with its throttling error since the
        last :meth:`throttle` call (every client, every process using the server)."""

    @abstractmethod
    def max_throttled_requests(self) -> int:
        """The most requests one provider call sends before it raises ThrottlingError
        when every request is throttled, from the retry settings this harness gives
        :meth:`provider`. Exactly this many when :attr:`throttle_bound_is_exact`."""

    def new_key_provider(self) -> KmsProvider:
        """A provider bound to a new key of its own on the server, with credentials allowed to use it
        and to schedule its deletion (erasure tests delete it without touching :meth:`provider`'s key)."""
        raise NotImplementedError(f"the {self.name} harness makes no extra keys")

    def disable_key(self, provider: KmsProvider) -> None:
        """Disable (not delete) the key of a provider from :meth:`new_key_provider`, so that using it
        fails with a plain KeyStateError; NotImplementedError where the KMS has no disabled keys."""
        raise NotImplementedError(f"the {self.name} harness cannot disable a key")

    def provider_options(self) -> dict[str, Any]:
        """Options that, with the key URI, rebuild :meth:`provider` in another process."""
        return dict(self.provider().options)

    def __enter__(self) -> ProviderHarness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
