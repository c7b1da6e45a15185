"""The embedded local KMS (``local://``): a file-backed *software* keystore.

It is the default KMS of spark_kms so everything runs without a cloud account. It
models the concepts of a real KMS -- customer master keys with versions, rotation
(on demand and by period), aliases, enable/disable of keys and versions, scheduled
deletion with a 7-30 day waiting period, per-principal key policies, an append-only
audit log -- but it is **not an HSM**: master key material lives in a file,
encrypted under a root key that this process holds in memory. See docs/LOCAL_KMS.md.

Two objects:

* :class:`LocalKms` -- the admin and data-plane API over one keystore directory.
* :class:`LocalKmsProvider` -- the :class:`~spark_kms.kms.base.KmsProvider` for key
  URIs ``local://alias/pii`` or ``local://<key uuid>``; options ``keystore=``
  (default env ``SPARK_KMS_KEYSTORE``, else ``~/.spark_kms/keystore``),
  ``principal=`` (default env ``SPARK_KMS_PRINCIPAL``, else the OS user),
  ``root_key=`` (32 bytes; default env ``SPARK_KMS_ROOT_KEY``, else
  ``<keystore>/root.key``), ``request_tag=`` (written into every audit line),
  ``request_interceptor=`` (see :mod:`spark_kms.kms.local.service`). It pickles as
  configuration only.

Rules:

* Roles: ``admin`` (key management), ``encrypt`` (GenerateDataKey, Encrypt,
  GenerateMac), ``decrypt`` (Decrypt, the source side of ReEncrypt, VerifyMac),
  ``erase`` (ScheduleKeyDeletion only). DescribeKey needs any role. A key without
  a policy allows every principal everything; ``"*"`` in a policy matches every principal.
* New wraps use the primary version (the newest enabled one); any enabled version
  still decrypts what it wrapped. Due rotations (``rotation_period_days``) and due
  deletions happen lazily at the next call that loads the keystore, by the clock.
* Every call -- allowed, denied or failed -- appends exactly one line to
  ``audit.log``; lazy transitions add a line of their own (principal ``system``).
  Audit lines never carry key bytes, plaintext or the root key.
* Every call holds a cross-process file lock for its whole duration, so Spark
  executors (separate processes) may share one keystore; the keystore file is
  replaced atomically, and its decrypted material is cached per process.

Modules, one concern each::

    service.py    LocalKms: each call (lock, load, audit, DEBUG log) and the data plane
    _admin.py     key management (create, rotate, states, deletion, aliases, policies)
    _keys.py      key records: states, specs, versions, their checks, DescribeKey
    _policy.py    principals, roles, key policies
    _audit.py     the audit log, written and read
    _store.py     the keystore directory: file format, root key, sealing, caches, lock
    provider.py   LocalKmsProvider
"""

from spark_kms.kms.local._keys import (
    BACKING,
    DESTROYED,
    DISABLED,
    ENABLED,
    KEY_SPECS,
    MAX_DELETION_DAYS,
    MIN_DELETION_DAYS,
    PENDING_DELETION,
)
from spark_kms.kms.local._policy import PRINCIPAL_ENV, ROLES, resolve_principal
from spark_kms.kms.local._store import (
    AUDIT_FILE,
    KEYSTORE_ENV,
    KEYSTORE_FILE,
    LOCK_FILE,
    ROOT_KEY_ENV,
    ROOT_KEY_FILE,
    KeystoreLock,
    default_keystore_dir,
)
from spark_kms.kms.local.provider import LocalKmsProvider
from spark_kms.kms.local.service import LocalKms, RequestInterceptor

__all__ = [
    "AUDIT_FILE",
    "BACKING",
    "DESTROYED",
    "DISABLED",
    "ENABLED",
    "KEYSTORE_ENV",
    "KEYSTORE_FILE",
    "KEY_SPECS",
    "LOCK_FILE",
    "MAX_DELETION_DAYS",
    "MIN_DELETION_DAYS",
    "PENDING_DELETION",
    "PRINCIPAL_ENV",
    "ROLES",
    "ROOT_KEY_ENV",
    "ROOT_KEY_FILE",
    "KeystoreLock",
    "LocalKms",
    "LocalKmsProvider",
    "RequestInterceptor",
    "default_keystore_dir",
    "resolve_principal",
]
