"""Dataset jobs: encrypt, decrypt, rewrap, re-encrypt, inspect, and garbage collection of what
killed writes and jobs left behind. Plain functions used by the CLI, the Airflow operators and
notebooks; each job returns a :class:`RunSummary` and writes it to
``<dataset>/_spark_kms_runs/<run_id>.json`` (:func:`collect_garbage` returns a :class:`GcReport`).

>>> from spark_kms.jobs import rewrap_dataset, inspect_dataset
>>> opts = {"local": {"keystore": "/tmp/ks"}}
>>> rewrap_dataset("/data/customers", kms_options=opts).kms_calls  # doctest: +SKIP
{'local:DescribeKey': 1, 'local:ReEncrypt': 12}
>>> inspect_dataset("/data/customers", kms_options=opts).behind_files  # doctest: +SKIP
[]

A Delta Lake or Iceberg table given to a job (its root, or ``iceberg://CATALOG/NAMESPACE.TABLE``) is
handed to :mod:`spark_kms.tables` by the job itself: new files and commits through the table's own log,
never a file it references rewritten (docs/TABLES.md, "Jobs, CLI and Airflow"); ``collect_garbage`` refuses
a table (its clean-up is :func:`spark_kms.tables.vacuum_table`).

Rotation strategies and their trade-offs: docs/ROTATION.md. Crypto-shredding: ``encrypt_dataset`` takes
``tenant_column`` / ``tenant_keys`` and ``subject_column`` / ``subject_store``, ``decrypt_dataset`` takes
``subject_store`` / ``on_erased``; erasing a tenant or a subject is :mod:`spark_kms.erasure` (docs/ERASURE.md).
"""

from spark_kms.jobs._summary import RUN_ID_CONTEXT_KEY, RUNS_DIR_NAME, RunSummary, new_run_id
from spark_kms.jobs.gc import GcReport, collect_garbage
from spark_kms.jobs.inspect import (
    ColumnInspection,
    DatasetInspection,
    DekInspection,
    FileInspection,
    KeyInspection,
    inspect_dataset,
    needs_rotation,
)
from spark_kms.jobs.reencrypt import reencrypt_dataset
from spark_kms.jobs.rewrap import rewrap_dataset
from spark_kms.jobs.transfer import decrypt_dataset, encrypt_dataset
from spark_kms.spark.conf import with_session_conf

# Given a SparkSession (spark=...), the jobs take KMS and storage options -- and encrypt_dataset its key
# URI -- from its spark.spark_kms.* conf too, under the call's own (spark_kms.spark.conf).
encrypt_dataset = with_session_conf(encrypt_dataset, key_uri=True)
decrypt_dataset = with_session_conf(decrypt_dataset)
rewrap_dataset = with_session_conf(rewrap_dataset)
reencrypt_dataset = with_session_conf(reencrypt_dataset)
inspect_dataset = with_session_conf(inspect_dataset)
needs_rotation = with_session_conf(needs_rotation)
collect_garbage = with_session_conf(collect_garbage)

__all__ = [
    "RUNS_DIR_NAME",
    "RUN_ID_CONTEXT_KEY",
    "ColumnInspection",
    "DatasetInspection",
    "DekInspection",
    "FileInspection",
    "GcReport",
    "KeyInspection",
    "RunSummary",
    "collect_garbage",
    "decrypt_dataset",
    "encrypt_dataset",
    "inspect_dataset",
    "needs_rotation",
    "new_run_id",
    "reencrypt_dataset",
    "rewrap_dataset",
]
