"""The Arrow/Parquet file layer: encrypt record batches, write and read encrypted Parquet.

pyarrow only (no Spark): the Spark data source, the UDFs, the jobs and the notebooks
all build on these names.

>>> spec = EncryptionSpec(columns=["ssn"], deterministic=["email"], blind_index={"email": "email_bidx"})
>>> with EncryptedParquetWriter("part-0.parquet", table.schema, spec, provider) as w:  # doctest: +SKIP
...     w.write_batch(table)
>>> read_decrypted_table("part-0.parquet", kms_options={"local": {"keystore": ks}})  # doctest: +SKIP

Integrity (format version 2): column specs are authenticated by every cell; a dataset can
declare its encrypted columns in an authenticated manifest (:func:`declare_encryption`), and
readers can require encryption themselves (``require_encrypted=``, :func:`check_required_encryption`).

Layout and rules: docs/FORMAT.md (cells, key table, manifest) and the docstrings of
:mod:`spark_kms.parquet.encryptor` (batch layout, keys), :mod:`spark_kms.parquet.writer`
(footer, empty input) and :mod:`spark_kms.parquet.dataset` (files, dataset root, manifest precedence).
"""

from spark_kms.parquet._types import check_supported, decode_values, encode_values, parse_arrow_type
from spark_kms.parquet.dataset import (
    Dataset,
    check_required_encryption,
    dataset_root_of,
    declare_encryption,
    list_data_files,
    read_dataset_key_table,
    read_key_table,
    read_manifest,
    write_manifest,
)
from spark_kms.parquet.decryptor import BatchDecryptor
from spark_kms.parquet.encryptor import BatchEncryptor, EncryptionSpec
from spark_kms.parquet.index import blind_index_values
from spark_kms.parquet.keys import DekResolver, new_deterministic_entry
from spark_kms.parquet.reader import erased_counts, iter_decrypted_batches, read_decrypted_table
from spark_kms.parquet.tenants import TenantKeys
from spark_kms.parquet.writer import EncryptedParquetWriter

__all__ = [
    "BatchDecryptor",
    "BatchEncryptor",
    "Dataset",
    "DekResolver",
    "EncryptedParquetWriter",
    "EncryptionSpec",
    "TenantKeys",
    "blind_index_values",
    "check_required_encryption",
    "check_supported",
    "declare_encryption",
    "decode_values",
    "encode_values",
    "erased_counts",
    "parse_arrow_type",
    "dataset_root_of",
    "iter_decrypted_batches",
    "list_data_files",
    "new_deterministic_entry",
    "read_dataset_key_table",
    "read_decrypted_table",
    "read_key_table",
    "read_manifest",
    "write_manifest",
]
