"""Fault injection for the embedded local KMS (``local://``), seen by every process.

Throttling: :func:`set_throttle` makes a keystore answer ``failures`` of every ``period``
data-plane calls (GenerateDataKey, Encrypt, Decrypt, ReEncrypt, GenerateMac, VerifyMac,
DescribeKey) with a retryable throttling error; ``set_throttle(keystore, 0, 1)`` turns it
off. :class:`~spark_kms.kms.local.LocalKmsProvider` retries it with
:func:`spark_kms.kms.retry.call_with_retries` and raises
:class:`~spark_kms.errors.ThrottlingError` if it persists (the audit log records each
throttled call with outcome ``ThrottlingError``).

The calls that count are those of clients given :data:`LOCAL_KMS_FAULTS` as their request
interceptor -- the documented extension point of :mod:`spark_kms.kms.local.service`::

    LocalKmsProvider("local://alias/pii", keystore=ks, request_interceptor=LOCAL_KMS_FAULTS)
    LocalKms(ks, request_interceptor=LOCAL_KMS_FAULTS)

The interceptor is stateless, so it pickles with the provider to Spark executors and
other processes; the state is one file in the keystore directory, read and bumped under
the keystore lock, so every process shares one count::

    <keystore>/faults.json     test-only fault injection (throttling), absent normally
                               {"throttle": [failures, period], "count": n}

``count`` is how many data-plane calls checked the file since it was written; call ``i``
(from 0) is throttled iff ``i % period < failures``, so :func:`throttled_requests` follows
in closed form. A file that does not parse throttles nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from spark_kms.errors import ConfigurationError, ThrottlingError
from spark_kms.kms.local import KeystoreLock

__all__ = ["FAULTS_FILE", "LOCAL_KMS_FAULTS", "LocalKmsFaults", "set_throttle", "throttled_requests"]

FAULTS_FILE = "faults.json"


class _ThrottledRequest(ThrottlingError):
    """Injected throttling (test fault); the provider retries it, then raises ThrottlingError."""


@dataclass(frozen=True)
class LocalKmsFaults:
    """The request interceptor that injects the keystore's faults (see the module docstring).

    Called by :class:`~spark_kms.kms.local.LocalKms` before each data-plane call, with the
    keystore lock held.
    """

    def __call__(self, operation: str, keystore_dir: Path) -> None:
        if next_request_fails(Path(keystore_dir) / FAULTS_FILE):
            raise _ThrottledRequest("the local KMS is throttling requests (injected fault)")


def next_request_fails(path: Path) -> bool:
    """Count one request in the fault file ``path`` (``{"throttle": [failures, period], "count": n}``) and say
    whether it is one of the ``failures`` of its ``period`` to fail. No (or an unreadable) file: False. The
    caller holds whatever lock serialises the file's writers."""
    try:
        faults = json.loads(path.read_text())
        failures, period = faults["throttle"]
        count = int(faults.get("count", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    faults["count"] = count + 1
    path.write_text(json.dumps(faults))
    return count % period < failures


#: the interceptor to give every client whose calls should see the faults
LOCAL_KMS_FAULTS = LocalKmsFaults()


def _keystore(keystore_dir: str | os.PathLike[str]) -> Path:
    return Path(keystore_dir).expanduser().absolute()


def set_throttle(keystore_dir: str | os.PathLike[str], failures: int, period: int) -> None:
    """Test-only: answer ``failures`` of every ``period`` data-plane calls (all
    processes) with a retryable throttling error; ``(0, 1)`` turns it off.
    Resets :func:`throttled_requests` to 0."""
    if period < 1 or not 0 <= failures <= period:
        raise ConfigurationError("throttle takes 0 <= failures <= period, period >= 1")
    keystore = _keystore(keystore_dir)
    keystore.mkdir(parents=True, exist_ok=True)
    with KeystoreLock(keystore):
        path = keystore / FAULTS_FILE
        if failures == 0:
            path.unlink(missing_ok=True)
        else:
            path.write_text(json.dumps({"throttle": [failures, period], "count": 0}))


def throttled_requests(keystore_dir: str | os.PathLike[str]) -> int:
    """Calls the keystore throttled since the last :func:`set_throttle` (every process).

    Read under the same lock the KMS holds while it bumps the count. No file = throttling
    is off.
    """
    keystore = _keystore(keystore_dir)
    with KeystoreLock(keystore):
        try:
            faults = json.loads((keystore / FAULTS_FILE).read_text())
        except FileNotFoundError:
            return 0
    failures, period = faults["throttle"]
    count = int(faults["count"])
    return (count // period) * failures + min(count % period, failures)
