"""How a dataset inspection is shown: rich tables for terminals, HTML tables for notebooks.

:func:`spark_kms.jobs.inspect_dataset` computes a :class:`~spark_kms.jobs.DatasetInspection` (data
only); this module, one layer above jobs/, draws it:

* :func:`render_inspection` -- a rich renderable, what ``spark-kms inspect`` prints;
* :func:`inspection_html` -- HTML tables, what a notebook shows once :func:`spark_kms.notebook.install`
  registered it with IPython (or through ``notebook.view(inspection)``, an :class:`InspectionView`).

Paths, key URIs and KMS error messages are data: HTML-escaped, and never read as rich markup.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spark_kms.jobs.inspect import DatasetInspection

__all__ = ["InspectionView", "inspection_html", "render_inspection"]


def _versions_text(versions: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"{key_id} v{','.join(vs)}" for key_id, vs in versions.items())


def _protection_text(row: Any) -> str | None:
    """``hsm (Managed HSM)``: a key's (or a data key's) protection level and the vendor's words."""
    level = getattr(row, "protection_level", None)
    if not level:
        return None
    detail = getattr(row, "protection_detail", None)
    return f"{level} ({detail})" if detail and detail != level else str(level)


def _html_table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{'' if v is None else e(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<details open><summary>{e(title)} ({len(rows)})</summary><table><tr>{head}</tr>{body}</table></details>"


def inspection_html(inspection: DatasetInspection) -> str:
    """The inspection as HTML: a status line, then tables of keys, encrypted columns, files, data keys
    and recent runs (each collapsible)."""
    e = html.escape
    status = {True: "up to date", False: f"{len(inspection.behind_files)} file(s) behind", None: "unknown"}[
        inspection.up_to_date
    ]
    parts = [
        f"<div><b>spark_kms dataset</b> <code>{e(inspection.path)}</code>: {inspection.rows} rows, "
        f"{len(inspection.files)} files, {len(inspection.deks)} data keys, rotation status: <b>{e(status)}</b></div>",
        _html_table(
            "Keys",
            ["key URI", "key id", "primary version", "state", "protection", "DEKs", "DEKs behind", "error"],
            [[k.key_uri, k.key_id, k.primary_version, k.state, _protection_text(k), k.deks, k.deks_behind, k.error]
             for k in inspection.keys],
        ),
        _html_table(
            "Encrypted columns",
            ["column", "algorithm", "type", "indexes"],
            [[c.name, c.algorithm, c.arrow_type, c.source] for c in inspection.columns],
        ),
        _html_table(
            "Files",
            ["file", "rows", "bytes", "DEKs", "key versions", "behind"],
            [[f.path, f.rows, f.size, len(f.dek_ids), _versions_text(f.key_versions), f.behind]
             for f in inspection.files],
        ),
        _html_table(
            "Data keys",
            ["DEK id", "key version", "protection", "algorithm", "created", "from", "files", "behind"],
            [[d.dek_id, d.key_version, _protection_text(d), d.algorithm, d.created_at, d.source, d.files, d.behind]
             for d in inspection.deks],
        ),
    ]
    if inspection.runs:
        parts.append(_html_table(
            "Recent runs", ["run id", "job", "status", "finished"],
            [[r.get("run_id"), r.get("job"), r.get("status"), r.get("finished_at")] for r in inspection.runs],
        ))
    return "\n".join(parts)


def render_inspection(inspection: DatasetInspection) -> Any:
    """A rich renderable (tables) of an inspection, for the CLI. Paths, key URIs and error
    messages are shown as plain text, never read as rich markup."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    def row(*values: Any) -> list[Text]:
        return [Text(str(v)) for v in values]

    status = {True: "[green]up to date[/]", False: f"[yellow]{len(inspection.behind_files)} file(s) behind[/]",
              None: "[red]unknown (a key could not be described)[/]"}[inspection.up_to_date]
    head = Text.from_markup(
        f"[bold]{escape(inspection.path)}[/]: {inspection.rows} rows, {len(inspection.files)} files, "
        f"{len(inspection.deks)} data keys, {inspection.manifest_entries} manifest entries; rotation: {status}"
    )
    keys = Table(title="Keys")
    for h in ("key URI", "key id", "primary", "state", "protection", "DEKs", "behind"):
        keys.add_column(h)
    for k in inspection.keys:
        keys.add_row(*row(k.key_uri, k.key_id or "-", k.primary_version or "-", k.state or (k.error or "-"),
                          _protection_text(k) or "?", k.deks, "?" if k.deks_behind is None else k.deks_behind))
    columns = Table(title="Encrypted columns")
    for h in ("column", "algorithm", "type", "indexes"):
        columns.add_column(h)
    for c in inspection.columns:
        columns.add_row(*row(c.name, c.algorithm, c.arrow_type, c.source or ""))
    files = Table(title="Files")
    for h in ("file", "rows", "bytes", "DEKs", "key versions", "behind"):
        files.add_column(h)
    for f in inspection.files:
        files.add_row(*row(f.path, f.rows, f.size, len(f.dek_ids), _versions_text(f.key_versions)),
                      {True: "[yellow]yes[/]", False: "no", None: "?"}[f.behind])
    return Group(head, keys, columns, files)


class InspectionView:
    """An inspection that draws itself: HTML in notebooks (``_repr_html_``), tables in rich (``__rich__``)."""

    def __init__(self, inspection: DatasetInspection) -> None:
        self.inspection = inspection

    def __repr__(self) -> str:
        i = self.inspection
        return f"InspectionView({i.path!r}: {i.rows} rows, {len(i.files)} files, {len(i.deks)} data keys)"

    def _repr_html_(self) -> str:
        return inspection_html(self.inspection)

    def __rich__(self) -> Any:
        return render_inspection(self.inspection)
