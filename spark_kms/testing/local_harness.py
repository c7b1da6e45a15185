"""Provider contract harness for the embedded local KMS (``local://``).

There is no server: the harness owns a keystore directory with an injected root key,
one symmetric key (``alias/contract``) whose policy grants principal ``tester`` every
role and principal ``intruder`` none, and throttling injected through the keystore's
fault file (seen by every process using that keystore; see :mod:`spark_kms.testing.faults`).
Every client the harness builds -- its admin, its providers, :meth:`LocalKmsHarness.provider_options`
-- carries the faults' request interceptor. The fault file also counts the data-plane calls
since it was written, which is what :meth:`LocalKmsHarness.throttled_requests` reads back.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from spark_kms.kms.base import KmsProvider
from spark_kms.kms.local import LocalKms, LocalKmsProvider
from spark_kms.kms.retry import RetryPolicy
from spark_kms.testing import faults
from spark_kms.testing.harness import ProviderHarness

__all__ = ["LocalKmsHarness"]

# Short enough that throttle(1, 1) surfaces ThrottlingError in well under a second.
_FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01, deadline=5.0)


class LocalKmsHarness(ProviderHarness):
    """A throw-away local keystore with one key; see the module docstring."""

    name = "local"
    alias = "alias/contract"

    def __init__(self, keystore_dir: str | Path | None = None) -> None:
        self._own_dir = keystore_dir is None
        self.keystore_dir = Path(keystore_dir) if keystore_dir is not None else None
        self.root_key = b""
        self.key_id = ""
        self._admin: LocalKms | None = None

    def start(self) -> None:
        if self.keystore_dir is None:
            self.keystore_dir = Path(tempfile.mkdtemp(prefix="spark_kms_local_harness_"))
        self.root_key = secrets.token_bytes(32)
        self._admin = LocalKms(self.keystore_dir, principal="harness-admin", root_key=self.root_key,
                               request_interceptor=faults.LOCAL_KMS_FAULTS)
        self.key_id = self._admin.create_key(alias=self.alias, description="provider contract tests")
        self._admin.put_key_policy(
            self.key_id, {"harness-admin": ["admin"], "tester": ["encrypt", "decrypt", "admin"]}
        )

    def stop(self) -> None:
        if self._own_dir and self.keystore_dir is not None:
            shutil.rmtree(self.keystore_dir, ignore_errors=True)
            self.keystore_dir = None

    @property
    def admin(self) -> LocalKms:
        assert self._admin is not None, "call start() first"
        return self._admin

    def _options(self, principal: str) -> dict[str, Any]:
        return {"keystore": str(self.keystore_dir), "principal": principal, "root_key": self.root_key,
                "request_interceptor": faults.LOCAL_KMS_FAULTS, "_retry": _FAST_RETRY}

    def provider(self) -> KmsProvider:
        return LocalKmsProvider(f"local://{self.alias}", **self._options("tester"))

    def provider_for_missing_key(self) -> KmsProvider:
        return LocalKmsProvider("local://alias/does-not-exist", **self._options("tester"))

    def provider_denied(self) -> KmsProvider:
        return LocalKmsProvider(f"local://{self.alias}", **self._options("intruder"))

    def rotate(self) -> None:
        self.admin.rotate_key(self.key_id)

    def new_key(self, policy: dict[str, list[str]] | None = None) -> str:
        """A new key (alias ``alias/extra-<hex>``) with ``policy`` (default: ``tester`` every role but
        ``erase``, which admin includes); its alias."""
        alias = f"alias/extra-{secrets.token_hex(6)}"
        kid = self.admin.create_key(alias=alias, description="provider tests (extra key)")
        self.admin.put_key_policy(kid, policy or {"harness-admin": ["admin"],
                                                  "tester": ["encrypt", "decrypt", "admin"]})
        return alias

    def provider_for(self, alias: str, principal: str = "tester") -> LocalKmsProvider:
        return LocalKmsProvider(f"local://{alias}", **self._options(principal))

    def new_key_provider(self) -> KmsProvider:
        return self.provider_for(self.new_key())

    def disable_key(self, provider: KmsProvider) -> None:
        assert isinstance(provider, LocalKmsProvider)
        self.admin.disable_key(provider.key_ref)

    def throttle(self, failures: int, period: int) -> None:
        faults.set_throttle(self.admin.keystore_dir, failures, period)

    def throttled_requests(self) -> int:
        """Calls the keystore throttled since the last :meth:`throttle`.

        The fault file ``{"throttle": [failures, period], "count": n}`` holds how many
        data-plane calls checked it (every process, counted under the keystore lock);
        call ``i`` (from 0) was throttled iff ``i % period < failures``, so the throttled
        ones among the first ``n`` follow in closed form. No file = throttling is off.
        """
        return faults.throttled_requests(self.admin.keystore_dir)

    def max_throttled_requests(self) -> int:
        """``_FAST_RETRY.max_attempts`` (5): the provider retries in spark_kms.kms.retry,
        which counts attempts (its 5 s deadline is never reached with 10 ms backoffs)."""
        return _FAST_RETRY.max_attempts

    def provider_options(self) -> dict[str, Any]:
        return self._options("tester")
