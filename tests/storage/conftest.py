"""The object-store tests share the ``s3`` and ``s3_prefix`` fixtures of tests/conftest.py (moto's S3 server
over HTTP on 127.0.0.1; a fresh key prefix per test)."""
