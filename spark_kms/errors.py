"""The one error hierarchy of spark_kms.

Every error raised on purpose by spark_kms derives from :class:`SparkKmsError`.
Vendor errors (botocore, google.api_core, azure.core, hvac) are translated at the
provider edge with ``raise ... from exc`` so callers only ever catch these.

::

    SparkKmsError
    ├── ConfigurationError            bad option, bad URI, unsupported type; states the rule
    │   └── MissingExtraError         (also ImportError) an optional extra is not installed
    ├── FormatError                   bytes on disk do not follow docs/FORMAT.md
    │   ├── UnknownFormatVersionError a cell or key table of a version this release cannot read
    │   ├── MissingKeyTableError      a Parquet file without the spark_kms key table
    │   └── MalformedCellError        truncated / oversized cell, unknown algorithm
    ├── DecryptionError               authentication failed: wrong key, tampered cell, wrong column
    │   ├── UnknownDataKeyError       a cell names a data key that no key table in reach holds
    │   ├── ErasedDataError           cells whose tenant key or subject key was erased (on_erased="raise")
    │   └── UnknownSubjectError       a subject key store holds no key for a subject the cells name
    ├── KeyUsageLimitError            a data key reached its cell limit; roll to a new one
    ├── KmsError                      a KMS operation failed
    │   ├── KeyNotFoundError          no such key, alias or version
    │   ├── AccessDeniedError         the principal may not do this operation on this key
    │   ├── KeyStateError             key or version disabled, pending deletion or destroyed
    │   │   └── KeyErasedError        the key is scheduled for deletion or destroyed: what it wrapped is erased
    │   ├── InvalidCiphertextError    a wrapped key that does not unwrap (tampered, wrong context)
    │   ├── ThrottlingError           the KMS kept throttling after bounded retries
    │   ├── KmsUnavailableError       the KMS could not be reached
    │   └── KeystoreError             the embedded keystore is corrupt or the root key is wrong
    └── JobError                      a dataset job could not complete; the previous data is intact

Messages say *what* and *where* (key id, dataset, file, column) and never carry
plaintext, key bytes or cell values.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "ConfigurationError",
    "DecryptionError",
    "ErasedDataError",
    "FormatError",
    "InvalidCiphertextError",
    "JobError",
    "KeyNotFoundError",
    "KeyErasedError",
    "KeyStateError",
    "KeyUsageLimitError",
    "KeystoreError",
    "KmsError",
    "KmsUnavailableError",
    "MalformedCellError",
    "MissingExtraError",
    "MissingKeyTableError",
    "SparkKmsError",
    "ThrottlingError",
    "UnknownDataKeyError",
    "UnknownFormatVersionError",
    "UnknownSubjectError",
]


class SparkKmsError(Exception):
    """Root of every error spark_kms raises on purpose."""


class ConfigurationError(SparkKmsError, ValueError):
    """An option, URI or argument breaks a rule; the message states the rule."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'spark-kms[{extra}]'")
        self.extra = extra


class FormatError(SparkKmsError):
    """Bytes on disk do not follow docs/FORMAT.md."""


class UnknownFormatVersionError(FormatError):
    """A cell or key table written by a format version this release cannot read."""


class MissingKeyTableError(FormatError):
    """A Parquet file has no spark_kms key table in its footer metadata."""


class MalformedCellError(FormatError):
    """A cell is truncated, oversized or names an unknown algorithm."""


class DecryptionError(SparkKmsError):
    """Authenticated decryption failed.

    Deliberately flat: a wrong key, a tampered cell and a cell moved to another
    column all look the same. The message says where (file, column, DEK id),
    never what the cell held.
    """


class UnknownDataKeyError(DecryptionError):
    """A cell names a data key (DEK id) that is in no key table the reader has: the footer,
    the dataset manifest or a key registry is missing, or the cell came from elsewhere."""


class ErasedDataError(DecryptionError):
    """Cells were read whose data was erased (crypto-shredding: their tenant's KMS key is scheduled for
    deletion or destroyed, or their subject's key was deleted from the subject key store), and the reader
    asked to be told (``on_erased="raise"``) instead of getting nulls. The message names where and how many."""


class UnknownSubjectError(DecryptionError):
    """The subject key store holds neither a key nor an erasure record for a subject the cells name: the
    wrong store, or a store restored from a backup older than the data."""


class KeyUsageLimitError(SparkKmsError):
    """A data key has encrypted as many cells as it may; a new data key is needed."""


class KmsError(SparkKmsError):
    """A KMS operation failed.

    :param key_id: the key (id, ARN, alias, resource name) the operation was about, if known.
    :param operation: the KMS operation (``GenerateDataKey``, ``Decrypt``, ...), if known.
    """

    def __init__(self, message: str, *, key_id: str | None = None, operation: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.operation = operation


class KeyNotFoundError(KmsError):
    """No such key, alias or key version."""


class AccessDeniedError(KmsError):
    """The principal is not allowed to perform the operation on the key."""


class KeyStateError(KmsError):
    """The key or key version is disabled, pending deletion or destroyed."""


class KeyErasedError(KeyStateError):
    """The key is scheduled for deletion or destroyed, so everything it wrapped is erased (crypto-shredding).
    A *disabled* key is a plain :class:`KeyStateError`: it can come back."""


class InvalidCiphertextError(KmsError):
    """A wrapped key does not unwrap: tampered, truncated, or a different encryption context."""


class ThrottlingError(KmsError):
    """The KMS kept throttling requests after bounded retries."""


class KmsUnavailableError(KmsError):
    """The KMS could not be reached."""


class KeystoreError(KmsError):
    """The embedded keystore is corrupt, or the root key does not open it."""


class JobError(SparkKmsError):
    """A dataset job could not complete; the previous data is left intact."""
