"""Notebook helpers: HTML views of key tables, cells and run summaries, masked values, charts.

Import it under its own name, so that it never shadows the ``display()`` of Jupyter and Databricks::

    from spark_kms import notebook as skn

    skn.install()                      # key tables, run summaries, inspections render as HTML
    skn.masked(df, ["ssn", "email"])   # decrypted values made safe for a shared screen

(``spark_kms.display``, its name in 0.1.0, still imports, as a deprecated alias of this module.)

What each helper shows, and what it never shows:

* :class:`KeyTableView` (``view(key_table)``) -- a footer or dataset key table as HTML: encrypted
  columns, and per data key its id, KMS key URI / id / version, algorithm, creation time and
  encryption context. The wrapped DEK is shown only as its length (it is not secret, but it is noise).
* :class:`CellView` (``view(cell_bytes)``) -- one ciphertext cell as hex, split into the fields of
  docs/FORMAT.md ("Cells"): header (version, algorithm, DEK id), then nonce / ciphertext / tag for
  AES-256-GCM, synthetic IV / ciphertext for AES-SIV, the tag for a blind index.
* :class:`RunSummaryView` (``view(run_summary)``) -- a job's :class:`~spark_kms.jobs.RunSummary`.
* :class:`~spark_kms.report.InspectionView` (``view(inspection)``) -- a
  :class:`~spark_kms.jobs.DatasetInspection`: keys, encrypted columns, files, data keys, recent runs
  (drawn by :mod:`spark_kms.report`, which the CLI's ``inspect`` shares).
* :func:`mask` / :func:`masked` -- decrypted values made safe for a shared screen. The rule: a
  value shows as a fixed run of mask characters (so its length is not revealed), followed by its
  last ``keep_last`` characters only when the value is at least ``2 * keep_last`` long (so at most
  half of it is ever shown). Nulls stay nulls.
* :func:`files_per_key_version` / :func:`plot_files_per_key_version` -- how many data files hold a
  data key wrapped by each key version: the picture of a rotation.
* :func:`install` -- registers the HTML views with IPython so key tables, DEK entries, run
  summaries and inspections render as tables without wrapping them in :func:`view` (cells are
  plain ``bytes``: those stay opt-in through :func:`view`).

Nothing here ever renders plaintext data keys; the only plaintext shown is what the caller
decrypted and passed in, and :func:`masked` exists to hide it.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spark_kms.crypto import (
    AES_256_GCM,
    AES_256_SIV,
    HEADER_BYTES,
    HMAC_SHA256_BIDX,
    DekEntry,
    KeyTable,
    parse_cell_header,
)
from spark_kms.crypto.cell import (
    BIDX_CELL_BYTES,
    GCM_NONCE_BYTES,
    GCM_OVERHEAD,
    GCM_TAG_BYTES,
    SIV_IV_BYTES,
    SIV_OVERHEAD,
)
from spark_kms.errors import ConfigurationError, MalformedCellError, MissingExtraError
from spark_kms.report import InspectionView, inspection_html

__all__ = [
    "DEFAULT_MASK_WIDTH",
    "MASK_CHAR",
    "CellFields",
    "CellView",
    "KeyTableView",
    "RunSummaryView",
    "files_per_key_version",
    "install",
    "mask",
    "masked",
    "plot_files_per_key_version",
    "view",
]

MASK_CHAR = "\u2022"  # a bullet: reads as a mask, and rarely occurs in real data
#: mask characters that replace the hidden part of every value, whatever its length
DEFAULT_MASK_WIDTH = 6


# --------------------------------------------------------------------------- masking


def _check_mask_args(keep_last: int, width: int, mask_char: str) -> None:
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ConfigurationError(f"keep_last must be a whole number >= 0, got {keep_last!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigurationError(f"the mask width must be a whole number >= 1, got {width!r}")
    if not isinstance(mask_char, str) or len(mask_char) != 1:
        raise ConfigurationError(f"mask_char must be a single character, got {mask_char!r}")


def mask(
    value: Any, keep_last: int = 4, *, width: int = DEFAULT_MASK_WIDTH, mask_char: str = MASK_CHAR
) -> str | None:
    """Mask one value for display: ``mask("123-45-6789") == "••••••6789"``.

    ``width`` mask characters, then the last ``keep_last`` characters of ``str(value)`` if it is
    at least ``2 * keep_last`` characters long (else nothing of it). ``None`` stays ``None``.
    Bytes are shown as hex before masking.
    """
    _check_mask_args(keep_last, width, mask_char)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).hex()
    else:
        text = str(value)
    shown = text[-keep_last:] if keep_last and len(text) >= 2 * keep_last else ""
    return mask_char * width + shown


def _missing_columns(wanted: Sequence[str], available: Sequence[str], what: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ConfigurationError(f"masked: {what} has no column(s) {missing}; its columns are {list(available)}")


def _column_list(columns: str | Iterable[str]) -> list[str]:
    if isinstance(columns, str):
        return [columns]
    out = list(columns)
    if not all(isinstance(c, str) for c in out):
        raise ConfigurationError(f"masked: columns must be names (str), got {out!r}")
    return out


def _mask_arrow(array: pa.Array | pa.ChunkedArray, keep_last: int, width: int, mask_char: str) -> pa.Array:
    # Same text rule as the encryptor's plaintext encoding: Arrow's cast to string.
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        values: list[Any] = array.to_pylist()
    else:
        values = pc.cast(array, pa.large_string()).to_pylist()
    return pa.array([mask(v, keep_last, width=width, mask_char=mask_char) for v in values], pa.large_string())


def _is_spark_frame(data: Any) -> bool:
    return hasattr(data, "sparkSession") and hasattr(data, "withColumn")


def _mask_spark(df: Any, columns: list[str], keep_last: int, width: int, mask_char: str) -> Any:
    from pyspark.sql import functions as F  # noqa: N812 (the idiomatic alias)

    _missing_columns(columns, df.columns, "the Spark DataFrame")
    hidden = F.lit(mask_char * width)
    for name in columns:
        text = F.col(name).cast("string")
        masked_col = F.when(text.isNull(), F.lit(None).cast("string"))
        if keep_last:
            masked_col = masked_col.when(
                F.length(text) >= 2 * keep_last, F.concat(hidden, F.substring(text, -keep_last, keep_last))
            )
        df = df.withColumn(name, masked_col.otherwise(hidden))
    return df


def masked(
    data: Any,
    columns: str | Iterable[str],
    *,
    keep_last: int = 4,
    width: int = DEFAULT_MASK_WIDTH,
    mask_char: str = MASK_CHAR,
) -> Any:
    """A copy of ``data`` with ``columns`` masked by :func:`mask`, of the same kind as ``data``.

    ``data`` is a ``pyarrow.Table`` or ``RecordBatch``, a pandas ``DataFrame`` or a Spark
    ``DataFrame`` (masked lazily in Spark SQL, no Python UDF). Masked columns become strings;
    the other columns and the row order are untouched.

    :raises ConfigurationError: a column is not in ``data`` (the message lists the columns it has),
        or ``data`` is none of the kinds above.
    """
    _check_mask_args(keep_last, width, mask_char)
    names = _column_list(columns)
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        _missing_columns(names, data.schema.names, f"the Arrow {type(data).__name__}")
        out = data
        for name in names:
            i = out.schema.get_field_index(name)
            out = out.set_column(i, pa.field(name, pa.large_string()), _mask_arrow(out.column(i), keep_last, width,
                                                                                   mask_char))
        return out
    if _is_spark_frame(data):
        return _mask_spark(data, names, keep_last, width, mask_char)
    pd = sys.modules.get("pandas")  # a pandas DataFrame can only exist if pandas is imported
    if pd is not None and isinstance(data, pd.DataFrame):
        _missing_columns(names, list(data.columns), "the pandas DataFrame")
        out = data.copy()
        for name in names:
            out[name] = [mask(None if _is_na(pd, v) else v, keep_last, width=width, mask_char=mask_char)
                         for v in data[name].tolist()]
        return out
    raise ConfigurationError(
        f"masked takes a pyarrow Table or RecordBatch, a pandas DataFrame or a Spark DataFrame, "
        f"got {type(data).__name__}"
    )


def _is_na(pd: Any, value: Any) -> bool:
    # pandas keeps nulls as None, NaN, NaT or pd.NA depending on the dtype; all stay null when masked.
    if value is None:
        return True
    import numpy as np  # pandas depends on numpy; pyarrow alone does not

    result = pd.isna(value)
    return isinstance(result, (bool, np.bool_)) and bool(result)  # arrays in a cell are values, not nulls


# --------------------------------------------------------------------------- HTML views


def _cell(value: Any) -> str:
    return "" if value is None else html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    caption = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _context_text(context: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(context.items()))


def _dek_row(entry: DekEntry) -> list[Any]:
    return [
        entry.dek_id, entry.key_uri, entry.key_id, entry.key_version, entry.algorithm, entry.created_at,
        _context_text(entry.encryption_context), f"{len(entry.wrapped_dek)} bytes",
    ]


_DEK_HEADERS = ["DEK id", "key URI", "key id", "key version", "algorithm", "created", "encryption context",
                "wrapped DEK"]


@dataclass(frozen=True)
class KeyTableView:
    """HTML (``_repr_html_``) and text views of a :class:`~spark_kms.crypto.KeyTable`."""

    key_table: KeyTable
    title: str = "spark_kms key table"

    def __repr__(self) -> str:
        kt = self.key_table
        lines = [f"{self.title}: format {kt.format_version}, written by {kt.writer}",
                 f"  encrypted columns ({len(kt.columns)}):"]
        lines += [f"    {c.name}: {c.algorithm} ({c.arrow_type}{', indexes ' + c.source if c.source else ''})"
                  for c in sorted(kt.columns.values(), key=lambda c: c.name)]
        lines.append(f"  data keys ({len(kt.deks)}):")
        lines += [f"    {e.dek_id}: {e.key_uri} key {e.key_id} v{e.key_version}, {e.algorithm}, {e.created_at}"
                  for e in sorted(kt.deks.values(), key=lambda e: e.dek_id)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        kt = self.key_table
        head = (f"<div><b>{html.escape(self.title)}</b>: format {kt.format_version}, "
                f"written by <code>{html.escape(kt.writer)}</code>, {len(kt.columns)} encrypted column(s), "
                f"{len(kt.deks)} data key(s)</div>")
        columns = _table(
            ["column", "algorithm", "original type", "indexes"],
            [[c.name, c.algorithm, c.arrow_type, c.source] for c in sorted(kt.columns.values(),
                                                                           key=lambda c: c.name)],
            "Encrypted columns",
        )
        deks = _table(_DEK_HEADERS, [_dek_row(e) for e in sorted(kt.deks.values(), key=lambda e: e.dek_id)],
                      "Data keys")
        return head + columns + deks


@dataclass(frozen=True)
class CellFields:
    """The parts of one cell, in order, as ``(field name, bytes)``; see :class:`CellView`."""

    version: int
    algorithm: str
    dek_id: str
    parts: tuple[tuple[str, bytes], ...]


# algorithm -> (minimum cell length, exact length or None): a shorter cell has no room for its fields
_CELL_LENGTHS = {AES_256_GCM: (GCM_OVERHEAD, None), AES_256_SIV: (SIV_OVERHEAD, None),
                 HMAC_SHA256_BIDX: (BIDX_CELL_BYTES, BIDX_CELL_BYTES)}


def _cell_fields(cell: bytes, where: str) -> CellFields:
    header = parse_cell_header(cell, where=where)
    minimum, exact = _CELL_LENGTHS.get(header.algorithm, (HEADER_BYTES, None))
    if len(cell) < minimum or (exact is not None and len(cell) != exact):
        rule = f"exactly {exact}" if exact is not None else f"at least {minimum}"
        raise MalformedCellError(
            f"{header.algorithm} cell of {len(cell)} bytes, the format needs {rule}{f' ({where})' if where else ''}"
        )
    body = bytes(cell[HEADER_BYTES:])
    if header.algorithm == AES_256_GCM:
        parts = [("nonce", body[:GCM_NONCE_BYTES]), ("ciphertext", body[GCM_NONCE_BYTES:-GCM_TAG_BYTES]),
                 ("tag", body[-GCM_TAG_BYTES:])]
    elif header.algorithm == AES_256_SIV:
        parts = [("synthetic IV", body[:SIV_IV_BYTES]), ("ciphertext", body[SIV_IV_BYTES:])]
    elif header.algorithm == HMAC_SHA256_BIDX:
        parts = [("index tag", body)]
    else:  # parse_cell_header only returns the algorithms above; a new one must be laid out here
        parts = [("body", body)]
    return CellFields(
        version=header.version, algorithm=header.algorithm, dek_id=header.dek_id_hex,
        parts=(("header", bytes(cell[:HEADER_BYTES])), *parts),
    )


class CellView:
    """One ciphertext cell as hex, split into its fields (docs/FORMAT.md, "Cells").

    :param cell: the stored bytes of one encrypted cell.
    :param where: where the cell came from (file, column), named in a MalformedCellError.
    :raises MalformedCellError: the cell is too short for its algorithm's fields (a blind index: not
        exactly ``BIDX_CELL_BYTES``), or names an unknown algorithm.
    """

    def __init__(self, cell: bytes | bytearray | memoryview, *, where: str = "") -> None:
        self.cell = bytes(cell)
        self.fields = _cell_fields(self.cell, where)

    @property
    def version(self) -> int:
        return self.fields.version

    @property
    def algorithm(self) -> str:
        return self.fields.algorithm

    @property
    def dek_id(self) -> str:
        return self.fields.dek_id

    @property
    def hex(self) -> str:
        return self.cell.hex()

    def __repr__(self) -> str:
        parts = " | ".join(f"{name}={data.hex()}" for name, data in self.fields.parts)
        return (f"CellView(version={self.version}, algorithm={self.algorithm!r}, dek_id={self.dek_id!r}, "
                f"{len(self.cell)} bytes: {parts})")

    def _repr_html_(self) -> str:
        summary = _table(
            ["format version", "algorithm", "DEK id", "size"],
            [[self.version, self.algorithm, self.dek_id, f"{len(self.cell)} bytes"]],
            "Cell header",
        )
        layout = _table(
            ["field", "bytes", "hex"],
            [[name, len(data), data.hex()] for name, data in self.fields.parts],
            "Cell layout",
        )
        return summary + layout


class RunSummaryView:
    """HTML and text views of a :class:`~spark_kms.jobs.RunSummary` (or its ``to_dict()``)."""

    def __init__(self, summary: Any) -> None:
        self.data: dict[str, Any] = dict(summary.to_dict() if hasattr(summary, "to_dict") else summary)

    def __repr__(self) -> str:
        d = self.data
        return (f"{d.get('job')} run {d.get('run_id')}: {d.get('status')}, rows={d.get('rows')}, "
                f"files={d.get('files')}, deks={d.get('deks')}, kms_calls={d.get('kms_calls')}")

    def _repr_html_(self) -> str:
        d = self.data

        def versions(v: Mapping[str, Sequence[str]] | None) -> str:
            return "; ".join(f"{k} v{','.join(vs)}" for k, vs in (v or {}).items())

        rows = [
            ["job", d.get("job")], ["run id", d.get("run_id")], ["dataset", d.get("dataset")],
            ["status", d.get("status")], ["rows", d.get("rows")], ["files", d.get("files")],
            ["data keys", d.get("deks")],
            ["KMS calls", ", ".join(f"{k}: {n}" for k, n in (d.get("kms_calls") or {}).items())],
            ["key versions before", versions(d.get("key_versions_before"))],
            ["key versions after", versions(d.get("key_versions"))],
            ["duration (s)", d.get("duration_s")],
        ]
        if d.get("error"):
            rows.append(["error", d["error"]])
        return _table(["", ""], rows, "spark_kms run")


def _is_inspection(obj: Any) -> bool:
    jobs = sys.modules.get("spark_kms.jobs.inspect")  # an inspection can only exist if its module is imported
    return jobs is not None and isinstance(obj, jobs.DatasetInspection)


def view(obj: Any, **kwargs: Any) -> Any:
    """The notebook view of a key table, a DEK entry, a cell (bytes), a run summary or a dataset inspection."""
    if isinstance(obj, KeyTable):
        return KeyTableView(obj, **kwargs)
    if isinstance(obj, DekEntry):
        return KeyTableView(KeyTable(deks={obj.dek_id: obj}, columns={}), **kwargs)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return CellView(obj, **kwargs)
    if hasattr(obj, "to_dict") and hasattr(obj, "run_id") and hasattr(obj, "job"):
        return RunSummaryView(obj)
    if _is_inspection(obj):
        return InspectionView(obj)
    raise ConfigurationError(
        f"view takes a KeyTable, a DekEntry, a cell (bytes), a RunSummary or a DatasetInspection, "
        f"got {type(obj).__name__}"
    )


def install(formatter: Any = None) -> None:
    """Render key tables, DEK entries, run summaries and dataset inspections as HTML in IPython
    without calling :func:`view`.

    :param formatter: an IPython ``DisplayFormatter``; default the running shell's. Outside IPython
        (no shell, no formatter) this does nothing.
    """
    if formatter is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is None:
            return
        formatter = shell.display_formatter
    html_formatter = formatter.formatters["text/html"]
    html_formatter.for_type(KeyTable, lambda kt: KeyTableView(kt)._repr_html_())
    html_formatter.for_type(DekEntry, lambda e: view(e)._repr_html_())
    try:
        from spark_kms.jobs import DatasetInspection, RunSummary
    except ImportError:  # the jobs layer is optional for viewing key tables
        return
    if not hasattr(RunSummary, "_repr_html_"):
        html_formatter.for_type(RunSummary, lambda s: RunSummaryView(s)._repr_html_())
    html_formatter.for_type(DatasetInspection, inspection_html)


# --------------------------------------------------------------------------- rotation charts


def _version_order(label: tuple[str, str]) -> tuple[str, int, int | str]:
    key_id, version = label
    return (key_id, 0, int(version)) if version.isdigit() else (key_id, 1, version)


def _version_counts(inspection: Any) -> list[tuple[str, str, int]]:
    counts: dict[tuple[str, str], int] = {}
    for file in inspection.files:
        for key_id, versions in file.key_versions.items():
            for version in versions:
                counts[(key_id, version)] = counts.get((key_id, version), 0) + 1
    return [(k, v, n) for (k, v), n in sorted(counts.items(), key=lambda kv: _version_order(kv[0]))]


def _labels(counts: list[tuple[str, str, int]]) -> list[str]:
    one_key = len({k for k, _, _ in counts}) <= 1
    return [f"v{version}" if one_key else f"{key_id[:8]} v{version}" for key_id, version, _ in counts]


def files_per_key_version(inspection: Any) -> dict[str, int]:
    """``{"v1": 3, "v2": 1}``: data files holding a DEK wrapped by each key version.

    ``inspection`` is a :class:`~spark_kms.jobs.DatasetInspection`. A file whose DEKs span two
    versions counts for both. Labels are ``v<version>`` when one KMS key wraps the dataset, else
    ``<first 8 characters of the key id> v<version>``. Ordered by key, then version.
    """
    counts = _version_counts(inspection)
    return dict(zip(_labels(counts), (n for _, _, n in counts), strict=True))


_PRIMARY_COLOR = "#4c72b0"
_BEHIND_COLOR = "#dd8452"
_UNKNOWN_COLOR = "#8c8c8c"
_COLOR_NAMES = {_PRIMARY_COLOR: "primary version", _BEHIND_COLOR: "older version", _UNKNOWN_COLOR: "key not described"}


def plot_files_per_key_version(inspection: Any, ax: Any = None, *, title: str | None = None) -> Any:
    """A bar chart of :func:`files_per_key_version`; returns the matplotlib ``Axes``.

    Bars of a key's primary version are blue, older versions (files a rotation would move) orange,
    versions of a key that could not be described grey.

    :param ax: draw into this Axes (e.g. one of two side-by-side before/after panels); default a new figure.
    :raises MissingExtraError: matplotlib is not installed (the ``notebook`` extra).
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise MissingExtraError("plotting key versions", "notebook") from exc
    counts = _version_counts(inspection)
    primary = {k.key_id: k.primary_version for k in inspection.keys if k.key_id is not None}
    colors = [
        _UNKNOWN_COLOR if primary.get(key_id) is None
        else _PRIMARY_COLOR if primary[key_id] == version else _BEHIND_COLOR
        for key_id, version, _ in counts
    ]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3))
    values = [n for _, _, n in counts]
    bars = ax.bar(_labels(counts), values, color=colors)
    ax.bar_label(bars)
    ax.set_xlabel("key version")
    ax.set_ylabel("data files")
    ax.set_title(title or "Files per key version")
    ax.set_ylim(0, max(values, default=1) * 1.25)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if colors:
        ax.legend(handles=[Patch(color=c, label=_COLOR_NAMES[c]) for c in dict.fromkeys(colors)],
                  loc="upper right", fontsize="small")
    return ax
