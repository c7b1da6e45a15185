"""Plaintext encoding of Arrow columns, the rule of docs/FORMAT.md section 6.

* ``string`` / ``large_string`` -> the UTF-8 bytes (a zero-copy cast to binary);
* ``binary`` / ``large_binary`` -> the bytes as they are;
* every other supported type -> its string form, then UTF-8: Arrow's cast to ``string`` wherever
  that cast reads back exactly, an exact form elsewhere (plaintext encoding version 2, below).

Decryption casts back to the column's original type, recorded as ``str(pa_type)`` in the key
table's :class:`~spark_kms.crypto.ColumnSpec`. Nulls stay nulls and are never encrypted.

Encoding versions (``encoding_version=``): version 1 is Arrow's cast to ``string`` for every
non-text type, which is what spark_kms wrote first. It is not exact everywhere, so version 2
(:data:`PLAINTEXT_ENCODING_VERSION`, the default) changes the string of exactly those values
whose version-1 string does not cast back to the same bits, and no other:

* a zoned timestamp whose UTC offset has seconds (local mean time: Europe/Amsterdam before
  1937, America/New_York before 1883), or whose local wall time falls outside years
  0000..9999 or the unit's range, is written as its UTC instant (``...Z``) -- Arrow prints the
  offset in whole minutes, so version 1 moved such instants by up to a minute;
* a NaN other than Arrow's own (sign clear, only the quiet bit set) keeps its sign and payload
  (``-nan``, ``nan(0x7a2)``) -- version 1 wrote ``nan`` for every NaN;
* a decimal whose scale Arrow cannot format (beyond +-38 digits for decimal128, +-76 for
  decimal256) is written in the same notation Arrow uses for the others -- version 1 wrote
  Arrow's "<scale out of range ...>" placeholder;
* dates and timestamps outside years 0000..9999 (``ns``: before 1677-09-21 00:12:44), whose
  string form Arrow cannot parse back, are refused at encryption instead of written unreadable.

So equal values that version 1 encoded exactly give equal plaintexts under both versions (the
deterministic and blind-index cells written before stay comparable), and decoding needs no
version: one decoder reads both, giving version-1 strings the values it always gave them (and
reading the decimals beyond 38 / 76 integer digits that Arrow's cast refuses).

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
    "PLAINTEXT_ENCODING_VERSION",
    "array_from_buffers",
    "binary_buffers",
    "check_supported",
    "decode_array",
    "decode_values",
    "encode_binary",
    "encode_values",
    "parse_arrow_type",
]

PLAINTEXT_ENCODING_VERSION = 2
"""The plaintext encoding version :func:`encode_binary` writes unless told otherwise (module docstring)."""

_ENCODING_VERSIONS = (1, 2)

_TIMESTAMP_RE = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]$")
_DECIMAL_RE = re.compile(r"^decimal(128|256)\((\d+), (-?\d+)\)$")

_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Arrow parses the years 0000..9999 back from strings, no others: 0000-01-01T00:00:00Z and
# 10000-01-01T00:00:00Z in seconds and in days since the epoch.
_FIRST_SECOND, _END_SECOND = -62_167_219_200, 253_402_300_800
_FIRST_DAY, _END_DAY = -719_528, 2_932_897
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _tick_range(unit: str) -> tuple[int, int]:
    """[first, end) of the timestamps of ``unit`` whose string form Arrow parses back. Arrow's
    parser multiplies whole seconds out before adding the fraction, so the ``ns`` range starts at
    the first whole second above the int64 minimum (1677-09-21 00:12:44 UTC), not at the minimum."""
    per_second = _TICKS_PER_SECOND[unit]
    first_whole_second = -(-_INT64_MIN // per_second) * per_second
    return max(_FIRST_SECOND * per_second, first_whole_second), _END_SECOND * per_second


# bit width -> (integer view, fraction bits, Arrow's NaN, the same NaN with the sign bit set);
# the NaN bit patterns as signed integers of the view.
_FLOAT_LAYOUT = {
    64: (pa.int64(), 52, 0x7FF8_0000_0000_0000, -0x0008_0000_0000_0000),
    32: (pa.int32(), 23, 0x7FC0_0000, -0x0040_0000),
}
_NAN_PAYLOAD_RE = r"^-?nan\(0x[0-9a-f]+\)$"
_DECIMAL_TEXT_RE = re.compile(r"^(-?)([0-9]+)(?:\.([0-9]+))?(?:E([+-][0-9]+))?$")
# Beyond these scales (either sign) Arrow's cast to string prints a placeholder, not the value.
_ARROW_DECIMAL_DIGITS = {16: 38, 32: 76}


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


def encode_binary(
    array: pa.Array | pa.ChunkedArray, *, encoding_version: int = PLAINTEXT_ENCODING_VERSION
) -> pa.Array:
    """The column's plaintext bytes as one ``binary`` / ``large_binary`` array, following the module rule.

    Zero-copy for string and binary columns (a cast of string to binary only relabels the buffers).

    :param encoding_version: 1 reproduces what spark_kms wrote first (Arrow's cast to string,
        inexact for some values), for computing blind-index or deterministic cells that must match
        cells written then; 2 (the default) is exact.
    :raises ConfigurationError: under version 2, a date or timestamp outside the years 0000..9999.
    """
    if encoding_version not in _ENCODING_VERSIONS:
        raise ConfigurationError(
            f"plaintext encoding_version must be one of {list(_ENCODING_VERSIONS)}, got {encoding_version!r}"
        )
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
    text = pc.cast(array, pa.string()) if encoding_version == 1 else _exact_text(array)
    return pc.cast(text, pa.binary())


def encode_values(
    array: pa.Array | pa.ChunkedArray, *, encoding_version: int = PLAINTEXT_ENCODING_VERSION
) -> list[bytes | None]:
    """The column's cells as plaintext bytes (None for nulls), following the module rule."""
    return encode_binary(array, encoding_version=encoding_version).to_pylist()


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
    """A ``binary`` array of plaintexts back to an Arrow array of ``arrow_type`` (inverse of :func:`encode_binary`).

    Reads every plaintext encoding version: Arrow's cast from string reads the version-1 strings and
    all but two kinds of version-2 strings, which are read here (NaN payloads, and decimals Arrow
    cannot parse: see :func:`_decimal_from_text`).
    """
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
        if pa.types.is_decimal(arrow_type):
            return _decimal_from_text(text, arrow_type)
        values = pc.cast(text, arrow_type)
        if pa.types.is_float32(arrow_type) or pa.types.is_float64(arrow_type):
            values = _restore_nan_payloads(text, values)
        return values
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
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


# --------------------------------------------------------------------------- version 2, exact


def _exact_text(array: pa.Array) -> pa.Array:
    """The version-2 string form of a non-text column: Arrow's cast to string where it is exact."""
    t = array.type
    if pa.types.is_timestamp(t):
        return _timestamp_text(array)
    if pa.types.is_date32(t):
        _check_years(array.view(pa.int32()), _FIRST_DAY, _END_DAY, t)
    elif pa.types.is_float32(t) or pa.types.is_float64(t):
        return _float_text(array)
    elif pa.types.is_decimal(t) and abs(t.scale) > _ARROW_DECIMAL_DIGITS[t.byte_width]:
        return _decimal_text(array)
    return pc.cast(array, pa.string())


def _check_years(ticks: pa.Array, first: int, end: int, t: pa.DataType) -> tuple[int, int] | None:
    """The (min, max) of ``ticks`` (None if all null); ConfigurationError if any is outside [first, end)."""
    bounds = pc.min_max(ticks).as_py()
    if bounds["min"] is None:
        return None
    if bounds["min"] >= first and bounds["max"] < end:
        return bounds["min"], bounds["max"]
    inside = pc.greater_equal(ticks, first)
    if end <= _INT64_MAX:
        inside = pc.and_(inside, pc.less(ticks, end))
    outside = len(ticks) - ticks.null_count - pc.sum(inside).as_py()
    ns = " and, for ns, not before 1677-09-21 00:12:44 UTC" if getattr(t, "unit", None) == "ns" else ""
    # No value in the message: it is the plaintext of an encrypted column.
    raise ConfigurationError(
        f"{t} values must lie in the years 0000 to 9999{ns} (the values whose string form Arrow "
        f"parses back); {outside} values of the column do not"
    )


def _timestamp_text(array: pa.Array) -> pa.Array:
    """Arrow's string form (local time and offset), or the UTC instant where that form is inexact.

    Arrow prints the zone offset in whole minutes, truncating the seconds of local mean time
    offsets (``+0019`` for Amsterdam's +00:19:32), and prints local times it cannot parse back
    (year 10000, or a wall time beyond the int64 range of ``ns``). Those values, and only those,
    are written as their UTC instant instead, which Arrow parses back into the zoned type exactly.

    The strings are assembled from the naive (zone-free) cast and the few distinct offsets, which
    is several times faster than Arrow's cast of a zoned array (it looks the zone up value by
    value); they are Arrow's zoned strings byte for byte wherever those are exact (the tests
    compare them in every zone).
    """
    t = array.type
    per_second = _TICKS_PER_SECOND[t.unit]
    first, end = _tick_range(t.unit)
    ticks = array.view(pa.int64())
    bounds = _check_years(ticks, first, end, t)
    if t.tz is None:
        return pc.cast(array, pa.string())
    if t.tz == "UTC":  # the one zone Arrow prints as `...Z`
        return _utc_text(array)
    naive = pa.timestamp(t.unit)
    local = pc.local_timestamp(array).view(pa.int64())
    offset = pc.subtract(local, ticks)  # wraps back to the true offset where `local` wrapped
    offsets = pc.unique(offset)  # a zone has had a handful of offsets: format each once
    per_minute = 60 * per_second
    suffixes = [None if o is None or o % per_minute else _offset_suffix(o // per_minute) for o in offsets.to_pylist()]
    inexact_offsets = [o for o, s in zip(offsets.to_pylist(), suffixes, strict=True) if o is not None and s is None]
    inexact = pc.is_in(offset, value_set=pa.array(inexact_offsets, pa.int64())) if inexact_offsets else None
    margin = 2 * 86_400 * per_second  # more than any offset: local time stays within it of UTC
    if bounds is not None and not (bounds[0] - margin >= first and bounds[1] + margin < min(end, _INT64_MAX + 1)):
        # Near the ends of the range: local times Arrow cannot parse back, or beyond int64 (ns).
        wrapped = pc.or_(
            pc.and_(pc.greater(offset, 0), pc.less(local, ticks)),
            pc.and_(pc.less(offset, 0), pc.greater(local, ticks)),
        )
        edge = pc.or_(wrapped, pc.less(local, first))
        if end <= _INT64_MAX:
            edge = pc.or_(edge, pc.greater_equal(local, end))
        inexact = edge if inexact is None else pc.or_(inexact, edge)
    if len(offsets) == 1 and suffixes[0] is not None:
        suffix: pa.Array | pa.Scalar = pa.scalar(suffixes[0])
    else:
        suffix = pc.take(pa.array(suffixes, pa.string()), pc.index_in(offset, value_set=offsets))
    local_text = pc.binary_join_element_wise(pc.cast(local.view(naive), pa.string()), suffix, "")
    if inexact is None or not pc.any(inexact).as_py():
        return local_text
    return pc.if_else(inexact, _utc_text(array), local_text)


def _utc_text(array: pa.Array) -> pa.Array:
    """Arrow's string form of the instants in UTC: the naive form and ``Z``."""
    return pc.binary_join_element_wise(pc.cast(array.view(pa.timestamp(array.type.unit)), pa.string()), "Z", "")


def _offset_suffix(minutes: int) -> str:
    """Arrow's offset suffix, ``+HHMM`` / ``-HHMM``."""
    hours, rest = divmod(abs(minutes), 60)
    return f"{'-' if minutes < 0 else '+'}{hours:02d}{rest:02d}"


def _float_text(array: pa.Array) -> pa.Array:
    """Arrow's shortest round-trip form; NaNs other than Arrow's own keep their sign and payload."""
    text = pc.cast(array, pa.string())
    nan = pc.is_nan(array)
    if not pc.any(nan).as_py():
        return text
    view, fraction_bits, arrow_nan, negated_nan = _FLOAT_LAYOUT[array.type.bit_width]
    bits = array.view(view)
    negated = pc.equal(bits, negated_nan)
    text = pc.if_else(negated, "-nan", text)  # what x86 arithmetic makes (inf - inf): one kernel, no loop
    payload = pc.and_(nan, pc.and_(pc.not_equal(bits, arrow_nan), pc.invert(negated)))
    if not pc.any(payload).as_py():
        return text
    fraction = (1 << fraction_bits) - 1
    forms = [f"{'-' if b < 0 else ''}nan(0x{b & fraction:x})" for b in pc.filter(bits, payload).to_pylist()]
    return pc.replace_with_mask(text, payload, pa.array(forms, pa.string()))


def _restore_nan_payloads(text: pa.Array, values: pa.Array) -> pa.Array:
    """Put back the payload of ``nan(0x...)`` strings: Arrow's cast reads them as its own NaN (sign kept)."""
    if not pc.any(pc.is_nan(values)).as_py():
        return values
    payload = pc.match_substring_regex(text, _NAN_PAYLOAD_RE)
    if not pc.any(payload).as_py():
        return values
    view, fraction_bits, _, _ = _FLOAT_LAYOUT[values.type.bit_width]
    bits = values.view(view)
    restored = []
    for s, b in zip(pc.filter(text, payload).to_pylist(), pc.filter(bits, payload).to_pylist(), strict=True):
        fraction = int(s[s.index("(") + 3 : -1], 16)
        if not 0 < fraction < 1 << fraction_bits:  # no NaN has it: not written by spark_kms
            raise ValueError("NaN payload out of range")
        restored.append((b & ~((1 << fraction_bits) - 1)) | fraction)  # sign and exponent from Arrow's parse
    return pc.replace_with_mask(bits, payload, pa.array(restored, view)).view(values.type)


def _decimal_string(unscaled: int, scale: int) -> str:
    """``unscaled * 10**-scale`` in the General Decimal Arithmetic to-scientific-string notation
    (Python's ``str(Decimal)``, Java's ``BigDecimal.toString``): how Arrow prints the decimals it can."""
    digits = str(abs(unscaled))
    sign = "-" if unscaled < 0 else ""
    exponent = -scale
    adjusted = exponent + len(digits) - 1
    if exponent <= 0 and adjusted >= -6:
        point = len(digits) + exponent
        if exponent == 0:
            return sign + digits
        if point > 0:
            return f"{sign}{digits[:point]}.{digits[point:]}"
        return f"{sign}0.{'0' * -point}{digits}"
    mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    return f"{sign}{mantissa}E{adjusted:+d}"


def _decimal_text(array: pa.Array) -> pa.Array:
    # Only for scales Arrow cannot format (rare types), so one Python string per value is fine.
    t = array.type
    width = t.byte_width
    data = memoryview(array.buffers()[1])[array.offset * width : (array.offset + len(array)) * width]
    valid = array.is_valid().to_pylist()
    return pa.array(
        [
            _decimal_string(int.from_bytes(data[i * width : (i + 1) * width], "little", signed=True), t.scale)
            if ok
            else None
            for i, ok in enumerate(valid)
        ],
        pa.string(),
    )


def _decimal_from_text(text: pa.Array, t: pa.DataType) -> pa.Array:
    """Arrow's cast, or an exact parse of each string where Arrow refuses the column.

    Arrow cannot parse a value of more than 38 (decimal128) / 76 (decimal256) integer digits, which
    a negative scale allows (``decimal128(38, -3)``), nor some scales it cannot print. The exact
    parse accepts only the notation of :func:`_decimal_string` and values the type holds exactly.
    """
    try:
        return pc.cast(text, t)
    except pa.ArrowInvalid:
        pass
    width = t.byte_width
    strings = text.to_pylist()
    data = bytearray(width * len(strings))
    for i, s in enumerate(strings):
        if s is not None:
            data[i * width : (i + 1) * width] = _unscaled(s, t.precision, t.scale).to_bytes(width, "little", signed=True)
    validity = None if text.null_count == 0 else pa.array([s is not None for s in strings]).buffers()[1]
    return pa.Array.from_buffers(t, len(strings), [validity, pa.py_buffer(bytes(data))])


def _unscaled(s: str, precision: int, scale: int) -> int:
    m = _DECIMAL_TEXT_RE.match(s)
    if m is None:
        raise ValueError("not a decimal")
    sign, whole, fraction, exponent = m.groups()
    digits = (whole + (fraction or "")).lstrip("0")
    if not digits:
        return 0
    shift = int(exponent or 0) - len(fraction or "") + scale  # unscaled = int(digits) * 10**shift
    if shift < 0:
        if -shift >= len(digits) or digits[shift:].strip("0"):
            raise ValueError("more fractional digits than the scale")
        digits, shift = digits[:shift], 0
    if len(digits) + shift > precision:
        raise ValueError("more digits than the precision")
    unscaled = int(digits) * 10**shift
    return -unscaled if sign else unscaled
