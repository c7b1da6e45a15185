"""Spark Connect tests: a real Spark Connect server in a process (and mount namespace) of its own.

The server (:func:`spark_kms.testing.connect.connect_server`: pyspark's ``SparkConnectServer`` on
``local[2]``) runs under ``unshare -m --propagation private``, which first mounts a private tmpfs
over the data directory (``dirs.data``). The server, its JVM and its Python workers read and write
the datasets there; this pytest process -- the Spark Connect client -- sees that directory as the
empty directory it is, so any file access the library makes on the client side fails ("does not
exist") instead of passing by accident.

The KMS is the embedded local KMS, its keystore in a directory both processes see (it stands for
the KMS service). Every key's policy grants the data-plane roles to the principal
``connect-server`` only (``SPARK_KMS_PRINCIPAL`` in the server's environment) and ``admin`` to
``key-admin`` (the tests' key management); this process is ``connect-client``. So a KMS call
made by the client would be denied, and the audit log's ``principal`` says where each call ran.

Run on their own, in a pytest process of their own::

    PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/python -m pytest tests/connect -q -p no:cacheprovider

A Spark Connect client switches pyspark into Connect mode for the whole process
(``SPARK_CONNECT_MODE_ENABLED``), which the classic session of the other test areas cannot share:
in a pytest run over more than this directory, its tests are not collected (``pytest_ignore_collect``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._support import CLIENT_PRINCIPAL, SERVER_PRINCIPAL, Dirs, Kms

HERE = Path(__file__).resolve().parent


def _only_this_directory(config: pytest.Config) -> bool:
    start = config.invocation_params.dir
    for arg in config.args:
        target = (start / str(arg).split("::", 1)[0]).resolve()
        if target != HERE and HERE not in target.parents:
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Collect this directory's tests only in a run of this directory (or of files in it)."""
    if collection_path.name == "conftest.py" or _only_this_directory(config):
        return None
    return True


@pytest.fixture(scope="session")
def dirs() -> Iterator[Dirs]:
    base = Path(tempfile.mkdtemp(prefix="spark_kms_connect_"))
    found = Dirs(base, base / "data", base / "kms")
    found.data.mkdir()
    found.keystore.mkdir()
    try:
        yield found
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def kms(dirs: Dirs) -> Kms:
    return Kms(dirs.keystore, {"local": {"keystore": str(dirs.keystore)}})


@pytest.fixture(scope="session")
def connect_url(dirs: Dirs) -> Iterator[str]:
    """``sc://127.0.0.1:<port>`` of a Spark Connect server whose data directory only it sees."""
    from spark_kms.testing.connect import connect_server

    # sh -c SCRIPT DATA CMD...: $0 is the data directory, "$@" the server command.
    private_data = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs -o mode=0700 spark_kms_data "$0" && exec "$@"', str(dirs.data)]
    with connect_server(command_prefix=private_data, env={"SPARK_KMS_PRINCIPAL": SERVER_PRINCIPAL},
                        log_dir=dirs.base) as server:
        yield server.url


@pytest.fixture(scope="session")
def spark(connect_url: str) -> Iterator[Any]:
    """The Spark Connect client session (overrides the classic ``spark`` of tests/conftest.py). This
    process's KMS principal is ``connect-client`` meanwhile."""
    from pyspark.sql import SparkSession

    from spark_kms.spark import register

    before = os.environ.get("SPARK_KMS_PRINCIPAL")
    os.environ["SPARK_KMS_PRINCIPAL"] = CLIENT_PRINCIPAL
    session = SparkSession.builder.remote(connect_url).getOrCreate()
    register(session)
    try:
        yield session
    finally:
        session.stop()
        if before is None:
            os.environ.pop("SPARK_KMS_PRINCIPAL", None)
        else:
            os.environ["SPARK_KMS_PRINCIPAL"] = before


@pytest.fixture
def data_dir(dirs: Dirs) -> Path:
    """A fresh dataset path under the server's data directory (nothing is created)."""
    return dirs.data / uuid.uuid4().hex[:12]
