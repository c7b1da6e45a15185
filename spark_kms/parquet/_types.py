"""Plaintext encoding of Arrow columns, the rule of docs/FORMAT.md.

* ``string`` / ``large_string`` -> the UTF-8 bytes (a zero-copy cast to binary);
* ``binary`` / ``large_binary`` -> the bytes as they are;
* every other supported type -> Arrow's cast to ``string``, then UTF-8.

Decryption casts back to the column's original type, recorded as ``str(pa_type)``
in the key table's :class:`~spark_kms.crypto.ColumnSpec`. Arrow's string casts are
exact for the supported types (floats print their shortest round-trip form,
timestamps keep their unit and zone offset, decimals their scale), which the
test suite checks type by type. Nulls stay nulls and are never encrypted.

The hot path works on whole arrays: :func:`encode_binary` / :func:`binary_buffers` hand the encoded
column to the batched cell functions as raw Arrow buffers and :func:`array_from_buffers` wraps their
output without creating a Python object per cell; :func:`encode_values` / :func:`decode_values` are the
per-value forms (Python lists) used by the other cell algorithms and the pure-Python fallback.

Types whose string form loses information (``date64`` drops the milliseconds),
or that have no string form (lists, structs, maps), are refused.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import BinaryBuffers
from spark_kms.errors import ConfigurationError, FormatError

__all__ = [
    "array_from_buffers",
    "binary_buffers",
    "check_supported",
    "decode_array",
    "decode_values",
    "encode_binary",
    "encode_values",
    "parse_arrow_type",
]

_TIMESTAMP_RE = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]$")
_DECIMAL_RE = re.compile(r"^decimal(128|256)\((\d+), (-?\d+)\)$")


def _is_supported(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_integer(t)
        or pa.types.is_float32(t)
        or pa.types.is_float64(t)
        or pa.types.is_boolean(t)
        or pa.types.is_date32(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_decimal128(t)
        or pa.types.is_decimal256(t)
    )


def _value_type(t: pa.DataType) -> pa.DataType:
    # Dictionary-encoded columns (Parquet readers produce them) encrypt their values.
    return t.value_type if pa.types.is_dictionary(t) else t


def check_supported(column: str, t: pa.DataType) -> pa.DataType:
    """The plaintext type of ``column`` if it can be encrypted, else ConfigurationError."""
    vt = _value_type(t)
    if not _is_supported(vt):
        raise ConfigurationError(
            f"column {column!r} has Arrow type {t} which spark_kms cannot encrypt: supported are "
            "string, large_string, binary, large_binary, int8..int64, uint8..uint64, float, double, bool, "
            "date32, timestamp, decimal128 and decimal256"
        )
    return vt


def encode_binary(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column's plaintext bytes as one ``binary`` / ``large_binary`` array, following the module rule.

    Zero-copy for string and binary columns (a cast of string to binary only relabels the buffers).
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    t = array.type
    if pa.types.is_dictionary(t):
        array = array.dictionary_decode()
        t = array.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return array
    if pa.types.is_string(t):
        return pc.cast(array, pa.binary())
    if pa.types.is_large_string(t):
        return pc.cast(array, pa.large_binary())
    return pc.cast(pc.cast(array, pa.string()), pa.binary())


def encode_values(array: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    """The column's cells as plaintext bytes (None for nulls), following the module rule."""
    return encode_binary(array).to_pylist()


def binary_buffers(array: pa.Array) -> BinaryBuffers:
    """The raw buffers of a ``binary`` / ``large_binary`` array (no copy), for the batched cell functions."""
    t = array.type
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise ConfigurationError(f"expected a binary array, got {t}")
    width = 8 if pa.types.is_large_binary(t) else 4
    validity, offsets, data = array.buffers()
    if offsets is None:  # Arrow may omit the buffers of an empty array
        offsets = bytes(width * (array.offset + len(array) + 1))
    return BinaryBuffers(
        len(array), validity if array.null_count else None, offsets, b"" if data is None else data, array.offset, width
    )


def array_from_buffers(buffers: BinaryBuffers) -> pa.Array:
    """Wrap the output of a batched cell function as a ``binary`` / ``large_binary`` array (no copy)."""
    t = pa.large_binary() if buffers.width == 8 else pa.binary()
    validity = None if buffers.validity is None else pa.py_buffer(buffers.validity)
    return pa.Array.from_buffers(
        t, buffers.length, [validity, pa.py_buffer(buffers.offsets), pa.py_buffer(buffers.data)], offset=buffers.offset
    )


def decode_values(values: list[bytes | None], arrow_type: pa.DataType, *, column: str, where: str = "") -> pa.Array:
    """Plaintext bytes back to an Arrow array of ``arrow_type`` (the inverse of :func:`encode_values`)."""
    return decode_array(pa.array(values, pa.binary()), arrow_type, column=column, where=where)


def decode_array(binary: pa.Array, arrow_type: pa.DataType, *, column: str, where: str = "") -> pa.Array:
    """A ``binary`` array of plaintexts back to an Arrow array of ``arrow_type`` (inverse of :func:`encode_binary`)."""
    if pa.types.is_large_binary(binary.type):
        binary = binary.cast(pa.binary())
    if pa.types.is_binary(arrow_type):
        return binary
    if pa.types.is_large_binary(arrow_type):
        return binary.cast(pa.large_binary())
    try:
        text = binary.cast(pa.string())
        if pa.types.is_string(arrow_type):
            return text
        return pc.cast(text, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # The cell authenticated, so its bytes are what the writer encrypted: the
        # recorded type disagrees with them. Arrow's message may quote the value.
        raise FormatError(
            f"{_where(where)}column {column!r}: decrypted cells do not convert back to {arrow_type} "
            "(the key table's column type does not match the data)"
        ) from None


def parse_arrow_type(name: str, *, column: str = "", where: str = "") -> pa.DataType:
    """The Arrow type whose ``str()`` is ``name`` (``"int64"``, ``"timestamp[us, tz=UTC]"``, ``"decimal128(10, 2)"``)."""
    m = _TIMESTAMP_RE.match(name)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    m = _DECIMAL_RE.match(name)
    if m:
        make = pa.decimal128 if m.group(1) == "128" else pa.decimal256
        return make(int(m.group(2)), int(m.group(3)))
    try:
        t = pa.type_for_alias(name)
    except (ValueError, KeyError):
        t = None
    if t is None or not _is_supported(t):
        raise FormatError(f"{_where(where)}column {column!r}: unknown or unsupported arrow_type {name!r} in the key table")
    return t


def _where(where: str) -> str:
    return f"{where}: " if where else ""
