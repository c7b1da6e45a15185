"""Per-subject keys for crypto-shredding: the subject key store.

    from spark_kms.subjects import SubjectKeyStore, store_of

    store = SubjectKeyStore.open("sqlite:///var/lib/spark_kms/subjects.db", kms_options, create=True)
    keys = store.keys_for(["u1", "u2"], create=True)   # {"u1": 32 bytes, "u2": 32 bytes}
    store.erase("u1", reason="GDPR art. 17")            # u1's cells read as null from now on
    store.keys_for(["u1"])                              # {"u1": None}

Modules: ``store.py`` (the store: keys, erasure, permissions, audit log, cache), ``_backends.py`` (SQLite and
PostgreSQL: URLs, connections, schema). See docs/ERASURE.md, "The subject key store".
"""

from spark_kms.subjects.store import (
    CACHE_TTL_ENV,
    DEFAULT_KEY_URI,
    DEFAULT_STORE_ENV,
    PERMISSIONS,
    ErasureRecord,
    SubjectKeyStore,
    default_store_url,
    store_of,
)

__all__ = [
    "CACHE_TTL_ENV",
    "DEFAULT_KEY_URI",
    "DEFAULT_STORE_ENV",
    "PERMISSIONS",
    "ErasureRecord",
    "SubjectKeyStore",
    "default_store_url",
    "store_of",
]
