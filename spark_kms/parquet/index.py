"""Blind-index look-ups: the index cells to search for, given plaintext values.

A blind-index column holds ``HMAC_SHA256_128`` cells of its source column's plaintext
(encoded like the source's cells, docs/FORMAT.md) under the dataset-level key of the
job that wrote it. To find rows whose source equals a value, compute that value's
index cell under every dataset-level key in the key table (there is one per writing
job) and test membership: ``pc.is_in(table["email_bidx"], pa.array(cells, pa.binary()))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from spark_kms.crypto import AES_256_SIV, HMAC_SHA256_BIDX, BlindIndexer, KeyTable, dek_id_from_hex
from spark_kms.errors import ConfigurationError
from spark_kms.kms import DataKeyCache, KmsConfigLike
from spark_kms.parquet._types import encode_values, parse_arrow_type
from spark_kms.parquet.keys import DekResolver

__all__ = ["blind_index_values"]


def blind_index_values(
    key_table: KeyTable,
    index_column: str,
    values: Sequence[Any],
    *,
    kms_options: KmsConfigLike = None,
    cache: DataKeyCache | None = None,
) -> list[bytes]:
    """The index cells of ``values`` for ``index_column``, under each dataset-level key of
    ``key_table`` (nulls have no index and are skipped). Unwraps those keys (cached)."""
    spec = key_table.columns.get(index_column)
    if spec is None or spec.algorithm != HMAC_SHA256_BIDX or spec.source is None:
        indexes = [n for n, s in key_table.columns.items() if s.algorithm == HMAC_SHA256_BIDX]
        raise ConfigurationError(f"{index_column!r} is not a blind-index column; blind-index columns: {indexes}")
    source_type = parse_arrow_type(spec.arrow_type, column=index_column)
    try:
        plain = encode_values(pa.array(list(values), type=source_type))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        raise ConfigurationError(
            f"look-up values for {index_column!r} must be of its source column's type {source_type}"
        ) from None
    resolver = DekResolver(key_table.deks, kms_options=kms_options, cache=cache, where=f"blind index {index_column!r}")
    cells: list[bytes] = []
    for entry in key_table.deks.values():
        if entry.algorithm != AES_256_SIV:
            continue
        dek_id = dek_id_from_hex(entry.dek_id)
        indexer = BlindIndexer(resolver.lookup(dek_id), dek_id)
        try:
            cells.extend(c for c in indexer.index_many(plain, spec.source) if c is not None)
        finally:
            indexer.wipe()
    return cells
