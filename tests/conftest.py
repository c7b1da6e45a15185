"""Shared fixtures for the whole suite.

* ``spark``: the ONE session-scoped SparkSession (``local[2]``, 4 shuffle partitions,
  no UI, ``PYSPARK_PYTHON`` = this interpreter, the ``spark_kms`` data source registered).
  Tests that need another master (``local[2,3]`` for task retries, a standalone cluster)
  start it in a subprocess: one SparkContext per JVM.
* ``local_kms``: a fresh embedded keystore with the key ``alias/pii``, as
  ``LocalKmsFixture(keystore_dir, key_uri, kms_options)``; unpacks as a 3-tuple.
* ``s3``: ONE session-scoped moto S3 server on 127.0.0.1 (:class:`spark_kms.testing.s3.S3Server`, bucket
  ``spark-kms-test``; ``.options`` reach it); ``s3_prefix``: a fresh key prefix per test.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# py4j logs "Closing down clientserver connection" from __del__ at interpreter exit, after
# pytest has closed the captured streams; that INFO line only turns into a "Logging error".
logging.getLogger("py4j").setLevel(logging.WARNING)


class LocalKmsFixture(NamedTuple):
    keystore_dir: Path
    key_uri: str
    kms_options: dict[str, dict[str, Any]]


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from spark_kms.spark import fastpath
    from spark_kms.spark.session import local_session

    # The JVM fast path's plugin is loaded when its jar is built (`make jar`) but switched off, so the suite
    # tests the Python UDFs; tests/spark/test_fastpath*.py switch it on (spark.spark_kms.sql.fastPath).
    conf = {**fastpath.session_conf({}), fastpath.CONF_SWITCH: "false"}
    session = local_session("local[2]", "spark_kms-tests", conf=conf)
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def local_kms(tmp_path: Path) -> LocalKmsFixture:
    from spark_kms.kms.local import LocalKms

    keystore = tmp_path / "keystore"
    kms = LocalKms(keystore)
    kms.create_key(alias="alias/pii")
    return LocalKmsFixture(keystore, "local://alias/pii", {"local": {"keystore": str(keystore)}})


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    from spark_kms.testing.s3 import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60].strip("-")
    return f"t/{name}-{uuid.uuid4().hex[:8]}"
