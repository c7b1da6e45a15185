"""An S3 service on 127.0.0.1 for tests: moto's S3 server, reached over HTTP by pyarrow's S3 client and boto3.

    with S3Server() as s3:
        url = s3.uri("data/customers")          # s3://spark-kms-test/data/customers
        write_encrypted(df, url, ..., storage_options=s3.options)

:attr:`S3Server.options` are the storage options (:mod:`spark_kms.storage`) that point a client at the
server; :meth:`S3Server.environment` gives the same as the standard AWS environment variables, for
processes that should find the service through AWS's own chain.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["S3Server"]

logger = logging.getLogger(__name__)

_ACCESS_KEY = "testing-access-key"
_SECRET_KEY = "testing-secret-key"  # moto accepts any; a distinctive value lets tests grep logs for it


class S3Server:
    """moto's S3 server in a thread of this process, with one bucket."""

    def __init__(self, bucket: str = "spark-kms-test", region: str = "us-east-1") -> None:
        self.bucket = bucket
        self.region = region
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=self.bucket)
        logger.info("S3 test server on %s, bucket %s", self.endpoint, self.bucket)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def options(self) -> dict[str, str]:
        """Storage options that reach this server."""
        return {
            "s3.endpoint_override": self.endpoint,
            "s3.region": self.region,
            "s3.access_key": _ACCESS_KEY,
            "s3.secret_key": _SECRET_KEY,
        }

    @property
    def secret(self) -> str:
        return _SECRET_KEY

    def environment(self) -> dict[str, str]:
        """The standard AWS environment variables that reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": _ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": _SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def uri(self, key: str, scheme: str = "s3") -> str:
        return f"{scheme}://{self.bucket}/{key.strip('/')}"

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=_ACCESS_KEY, aws_secret_access_key=_SECRET_KEY)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (all pages)."""
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)
