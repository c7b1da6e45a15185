"""Fixtures for the object-store tests: moto's S3 server over HTTP on 127.0.0.1.

* ``s3``: ONE session-scoped, started :class:`spark_kms.testing.s3.S3Server` (bucket
  ``spark-kms-test``); ``s3.options`` are the storage options that reach it, ``s3.uri(key)``
  an ``s3://`` URI, ``s3.keys(prefix)`` the object keys, ``s3.client()`` a boto3 client.
* ``s3_prefix``: a fresh key prefix per test (``t/<test name>-<random>``), so tests sharing
  the server never see each other's objects.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    pytest.importorskip("moto")
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
