"""The pure crypto core of spark_kms: cell format, AES-256-GCM / AES-SIV / blind index, key table codec.

Imports only ``cryptography``, the standard library and :mod:`spark_kms.errors`. The byte layouts are
specified in docs/FORMAT.md and pinned by the vectors in tests/vectors/. The batched GCM hot loop runs in an
optional C extension when it is built (:func:`native_available`; ``SPARK_KMS_PURE_PYTHON=1`` forces the
``cryptography`` path), see :mod:`spark_kms.crypto._native`.
"""

from spark_kms.crypto._native import BinaryBuffers, native_available
from spark_kms.crypto.cell import (
    AES_256_GCM,
    AES_256_SIV,
    ALGORITHM_IDS,
    BIDX_CELL_BYTES,
    DEFAULT_MAX_CELLS_PER_DEK,
    DEK_BYTES,
    DEK_ID_BYTES,
    FORMAT_VERSION,
    GCM_OVERHEAD,
    HEADER_BYTES,
    HMAC_SHA256_BIDX,
    MAX_CELLS_PER_DEK_LIMIT,
    SIV_OVERHEAD,
    BlindIndexer,
    CellDecryptor,
    CellEncryptor,
    CellHeader,
    DeterministicEncryptor,
    dek_id_from_hex,
    dek_id_hex,
    new_dek_id,
    parse_cell_header,
)
from spark_kms.crypto.keytable import (
    COLUMN_ALGORITHMS,
    DATASET_MANIFEST_NAME,
    DEK_ALGORITHMS,
    KEY_TABLE_METADATA_KEY,
    ColumnSpec,
    DekEntry,
    KeyTable,
    decode_manifest,
    encode_manifest,
    utc_now_iso,
)
from spark_kms.errors import (
    DecryptionError,
    FormatError,
    KeyUsageLimitError,
    MalformedCellError,
    UnknownFormatVersionError,
)

__all__ = [
    "AES_256_GCM",
    "AES_256_SIV",
    "ALGORITHM_IDS",
    "BIDX_CELL_BYTES",
    "COLUMN_ALGORITHMS",
    "DATASET_MANIFEST_NAME",
    "DEFAULT_MAX_CELLS_PER_DEK",
    "DEK_ALGORITHMS",
    "DEK_BYTES",
    "DEK_ID_BYTES",
    "FORMAT_VERSION",
    "GCM_OVERHEAD",
    "HEADER_BYTES",
    "HMAC_SHA256_BIDX",
    "KEY_TABLE_METADATA_KEY",
    "MAX_CELLS_PER_DEK_LIMIT",
    "SIV_OVERHEAD",
    "BinaryBuffers",
    "BlindIndexer",
    "CellDecryptor",
    "CellEncryptor",
    "CellHeader",
    "ColumnSpec",
    "DecryptionError",
    "DekEntry",
    "DeterministicEncryptor",
    "FormatError",
    "KeyTable",
    "KeyUsageLimitError",
    "MalformedCellError",
    "UnknownFormatVersionError",
    "decode_manifest",
    "dek_id_from_hex",
    "dek_id_hex",
    "encode_manifest",
    "native_available",
    "new_dek_id",
    "parse_cell_header",
    "utc_now_iso",
]
