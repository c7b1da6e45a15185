"""KMS providers behind one narrow protocol, chosen by key URI through one :class:`KmsConfig`.

>>> from spark_kms.kms import KmsConfig
>>> kms = KmsConfig({"local": {"keystore": "/tmp/ks"}}).provider("local://alias/pii")  # doctest: +SKIP
>>> with kms.generate_data_key({"dataset": "customers"}) as dek: ...  # doctest: +SKIP
"""

from spark_kms.kms.base import (
    DataKey,
    KeyDescription,
    KmsProvider,
    WrappedKey,
    kms_call_counts,
    reset_kms_call_counts,
)
from spark_kms.kms.cache import DataKeyCache, process_dek_cache
from spark_kms.kms.config import KmsConfig, KmsConfigLike, secret_option_names
from spark_kms.kms.registry import parse_key_uri, provider_from_uri, register_provider, registered_schemes
from spark_kms.kms.retry import RetryPolicy, call_with_retries

__all__ = [
    "DataKey",
    "DataKeyCache",
    "KeyDescription",
    "KmsConfig",
    "KmsConfigLike",
    "KmsProvider",
    "RetryPolicy",
    "WrappedKey",
    "call_with_retries",
    "kms_call_counts",
    "parse_key_uri",
    "process_dek_cache",
    "provider_from_uri",
    "register_provider",
    "registered_schemes",
    "reset_kms_call_counts",
    "secret_option_names",
]
