"""Test KMS servers and harnesses, used by the test suite, notebooks and example DAGs.

Every server here listens on 127.0.0.1 only and is spoken to by the real vendor
client over the wire (boto3 over HTTP, google-cloud-kms over gRPC, the Azure SDK
and hvac over HTTP).
"""
