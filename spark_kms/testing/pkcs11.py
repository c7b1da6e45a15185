"""Provider contract harness for PKCS#11 (``pkcs11://``), on a fresh SoftHSM2 token.

:meth:`Pkcs11Harness.start` writes a ``softhsm2.conf`` whose ``directories.tokendir`` is a temporary
directory, points ``SOFTHSM2_CONF`` at it (in this process's environment, so subprocesses and the
executors of a local Spark cluster started from it see the same token), initialises a token with
``softhsm2-util --init-token --free`` and creates master key version 1 (sensitive, non-extractable)
through python-pkcs11. The crypto-user PIN is in a 0600 file (``pin_file``), so the providers the
harness builds carry no PIN in their options or pickles; :meth:`provider_denied` uses a wrong PIN.

A PKCS#11 token does not throttle the way a cloud KMS does; a busy module answers
``CKR_DEVICE_MEMORY`` / ``CKR_SESSION_COUNT``. The harness injects that through the provider's
``request_interceptor`` option (:class:`Pkcs11Faults`), which reads a fault file in the harness
directory under a file lock, so every process using the harness shares one count (the same closed
form as :mod:`spark_kms.testing.faults`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11.exceptions as pkcs11_errors
from filelock import FileLock

from spark_kms.errors import ConfigurationError
from spark_kms.kms.base import KmsProvider
from spark_kms.kms.pkcs11 import Pkcs11Provider, _load_library, create_key_version, open_token_session
from spark_kms.testing.faults import next_request_fails
from spark_kms.testing.harness import ProviderHarness

__all__ = ["Pkcs11Faults", "Pkcs11Harness", "find_softhsm2_module"]

_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
FAULTS_FILE = "faults.json"


def find_softhsm2_module() -> str:
    """The path of SoftHSM2's PKCS#11 library (``$SOFTHSM2_MODULE`` first)."""
    for path in (os.environ.get("SOFTHSM2_MODULE", ""), *_MODULE_CANDIDATES):
        if path and Path(path).is_file():
            return path
    raise ConfigurationError("SoftHSM2 is not installed (no libsofthsm2.so): apt-get install softhsm2 "
                             "(make test installs it)")


@dataclass(frozen=True)
class Pkcs11Faults:
    """Request interceptor: answers ``failures`` of every ``period`` token requests with
    CKR_DEVICE_MEMORY (a busy module), as the fault file in ``directory`` says."""

    directory: str

    def __call__(self, operation: str) -> None:
        import pkcs11.exceptions

        path = Path(self.directory) / FAULTS_FILE
        with FileLock(str(path) + ".lock"):
            fails = next_request_fails(path)
        if fails:
            raise pkcs11.exceptions.DeviceMemory()


class Pkcs11Harness(ProviderHarness):
    """A throw-away SoftHSM2 token with one master key; see the module docstring."""

    name = "pkcs11"
    token_label = "spark-kms-contract"
    object_label = "contract"
    user_pin = "2468-user"  # noqa: S105 - a throw-away test token's PIN
    so_pin = "1357-so"  # noqa: S105

    def __init__(self, directory: str | Path | None = None) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory) if directory is not None else None
        self.module = ""
        self._saved_conf: str | None = None
        self._admin: Any = None

    @property
    def pin_file(self) -> Path:
        assert self.directory is not None, "call start() first"
        return self.directory / "user.pin"

    @property
    def conf_path(self) -> Path:
        assert self.directory is not None, "call start() first"
        return self.directory / "softhsm2.conf"

    @property
    def key_uri(self) -> str:
        return f"pkcs11://token={self.token_label};object={self.object_label}"

    def start(self) -> None:
        self.module = find_softhsm2_module()
        if shutil.which("softhsm2-util") is None:
            raise ConfigurationError("softhsm2-util is not installed: apt-get install softhsm2")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="spark_kms_softhsm_"))
        tokens = self.directory / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                                  "log.level = ERROR\nslots.removable = false\n")
        self._saved_conf = os.environ.get("SOFTHSM2_CONF")
        os.environ["SOFTHSM2_CONF"] = str(self.conf_path)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", self.token_label,
                        "--pin", self.user_pin, "--so-pin", self.so_pin],
                       check=True, capture_output=True, timeout=60, env={**os.environ})
        fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.user_pin + "\n")
        # A library this process loaded before read another SOFTHSM2_CONF: re-read it.
        _load_library(self.module, reinitialize=True)
        create_key_version(self._admin_session(), self.object_label)

    def _admin_session(self) -> Any:
        lib = _load_library(self.module)
        token = lib.get_token(token_label=self.token_label)
        # Kept open: closing a logged-in session logs the whole process out of the token.
        self._admin = open_token_session(self.module, token, self.user_pin, rw=True)
        return self._admin

    def stop(self) -> None:
        self._admin = None
        if self._saved_conf is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = self._saved_conf
        if self._own_dir and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _options(self, **extra: Any) -> dict[str, Any]:
        assert self.directory is not None, "call start() first"
        return {"module": self.module, "pin_file": str(self.pin_file),
                "request_interceptor": Pkcs11Faults(str(self.directory)),
                "retry_max_attempts": 5, "retry_base_delay": 0.001, "retry_deadline": 5.0, **extra}

    def provider(self) -> KmsProvider:
        return Pkcs11Provider(self.key_uri, **self._options())

    def provider_for_missing_key(self) -> KmsProvider:
        return Pkcs11Provider(f"pkcs11://token={self.token_label};object=does-not-exist", **self._options())

    def provider_denied(self) -> KmsProvider:
        options = self._options(pin="0000-wrong")
        del options["pin_file"]
        return Pkcs11Provider(self.key_uri, **options)

    def rotate(self) -> None:
        try:
            create_key_version(self._admin, self.object_label)
        except pkcs11_errors.PKCS11Error:  # the admin session was closed or logged out under it: reopen
            create_key_version(self._admin_session(), self.object_label)

    def new_key_provider(self) -> KmsProvider:
        """A provider bound to a new master key (label ``extra-<hex>``, version 1) in the token."""
        label = f"extra-{uuid.uuid4().hex[:8]}"
        try:
            create_key_version(self._admin, label)
        except pkcs11_errors.PKCS11Error:  # the admin session was closed or logged out under it: reopen
            create_key_version(self._admin_session(), label)
        return Pkcs11Provider(f"pkcs11://token={self.token_label};object={label}", **self._options())

    def throttle(self, failures: int, period: int) -> None:
        if period < 1 or not 0 <= failures <= period:
            raise ConfigurationError("throttle takes 0 <= failures <= period, period >= 1")
        assert self.directory is not None, "call start() first"
        path = self.directory / FAULTS_FILE
        with FileLock(str(path) + ".lock"):
            if failures == 0:
                path.unlink(missing_ok=True)
            else:
                path.write_text(json.dumps({"throttle": [failures, period], "count": 0}))

    def throttled_requests(self) -> int:
        assert self.directory is not None, "call start() first"
        path = self.directory / FAULTS_FILE
        with FileLock(str(path) + ".lock"):
            try:
                faults = json.loads(path.read_text())
            except FileNotFoundError:
                return 0
        failures, period = faults["throttle"]
        count = int(faults["count"])
        return (count // period) * failures + min(count % period, failures)

    def max_throttled_requests(self) -> int:
        """5: ``retry_max_attempts`` of :meth:`provider` (the 5 s deadline is never reached)."""
        return 5

    def provider_options(self) -> dict[str, Any]:
        return self._options()
