"""Inspect an encrypted dataset: files, data keys, key versions, encrypted columns, recent runs.

Reads footers and the manifest (no KMS call for those) and makes exactly one
DescribeKey per distinct key URI -- never one per file or per DEK -- to learn each
key's primary version and tell which DEKs and files are *behind* it (wrapped by
an older version: a rewrap or re-encrypt would move them).

If a key cannot be described (no access, KMS unreachable), inspection still
succeeds: that key's entry carries the error and its files' ``behind`` is ``None``
(unknown). :func:`needs_rotation` instead raises, since it cannot answer.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from spark_kms.crypto import DekEntry
from spark_kms.errors import ConfigurationError, KmsError
from spark_kms.jobs._common import KmsOptions, Providers, require_dataset_dir
from spark_kms.jobs._dataset import DatasetKeys
from spark_kms.jobs._summary import runs_dir

__all__ = [
    "ColumnInspection",
    "DatasetInspection",
    "DekInspection",
    "FileInspection",
    "KeyInspection",
    "inspect_dataset",
    "needs_rotation",
    "render_inspection",
]

_RECENT_RUNS = 10


@dataclass
class FileInspection:
    """One data file. ``behind``: some DEK of it is not wrapped by its key's primary version
    (``None`` when the key could not be described)."""

    path: str
    rows: int
    size: int
    dek_ids: list[str]
    key_versions: dict[str, list[str]]
    behind: bool | None


@dataclass
class DekInspection:
    """One data key as a reader sees it (``source``: ``manifest`` if a rewrap re-wrapped it, else ``footer``)."""

    dek_id: str
    key_uri: str
    key_id: str
    key_version: str
    algorithm: str
    created_at: str
    source: str
    files: int
    behind: bool | None


@dataclass
class ColumnInspection:
    name: str
    algorithm: str
    arrow_type: str
    source: str | None


@dataclass
class KeyInspection:
    """A KMS key the dataset's DEKs are wrapped by, as DescribeKey reported it."""

    key_uri: str
    key_id: str | None
    primary_version: str | None
    state: str | None
    deks: int
    deks_behind: int | None
    error: str | None = None


@dataclass
class DatasetInspection:
    """What :func:`inspect_dataset` found. ``to_dict()`` is JSON-serialisable;
    ``_repr_html_()`` renders it in notebooks; :func:`render_inspection` for terminals."""

    path: str
    rows: int
    files: list[FileInspection]
    deks: list[DekInspection]
    columns: list[ColumnInspection]
    keys: list[KeyInspection]
    manifest_entries: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def behind_files(self) -> list[str]:
        """Files with a DEK wrapped by a version other than its key's primary version."""
        return [f.path for f in self.files if f.behind]

    @property
    def up_to_date(self) -> bool | None:
        """Every DEK wrapped by its key's primary version (``None``: a key could not be described)."""
        if any(f.behind is None for f in self.files):
            return None
        return not self.behind_files

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["behind_files"] = self.behind_files
        out["up_to_date"] = self.up_to_date
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def _repr_html_(self) -> str:
        e = html.escape
        status = {True: "up to date", False: f"{len(self.behind_files)} file(s) behind", None: "unknown"}[
            self.up_to_date
        ]
        parts = [
            f"<div><b>spark_kms dataset</b> <code>{e(self.path)}</code>: {self.rows} rows, "
            f"{len(self.files)} files, {len(self.deks)} data keys, rotation status: <b>{e(status)}</b></div>",
            _html_table(
                "Keys",
                ["key URI", "key id", "primary version", "state", "DEKs", "DEKs behind", "error"],
                [[k.key_uri, k.key_id, k.primary_version, k.state, k.deks, k.deks_behind, k.error] for k in self.keys],
            ),
            _html_table(
                "Encrypted columns",
                ["column", "algorithm", "type", "indexes"],
                [[c.name, c.algorithm, c.arrow_type, c.source] for c in self.columns],
            ),
            _html_table(
                "Files",
                ["file", "rows", "bytes", "DEKs", "key versions", "behind"],
                [[f.path, f.rows, f.size, len(f.dek_ids), _versions_text(f.key_versions), f.behind]
                 for f in self.files],
            ),
            _html_table(
                "Data keys",
                ["DEK id", "key version", "algorithm", "created", "from", "files", "behind"],
                [[d.dek_id, d.key_version, d.algorithm, d.created_at, d.source, d.files, d.behind]
                 for d in self.deks],
            ),
        ]
        if self.runs:
            parts.append(_html_table(
                "Recent runs", ["run id", "job", "status", "finished"],
                [[r.get("run_id"), r.get("job"), r.get("status"), r.get("finished_at")] for r in self.runs],
            ))
        return "\n".join(parts)


def _versions_text(versions: Mapping[str, list[str]]) -> str:
    return ", ".join(f"{key_id} v{','.join(vs)}" for key_id, vs in versions.items())


def _html_table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{'' if v is None else e(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<details open><summary>{e(title)} ({len(rows)})</summary><table><tr>{head}</tr>{body}</table></details>"


def inspect_dataset(path: str | Path, *, kms_options: KmsOptions | None = None) -> DatasetInspection:
    """Inspect the encrypted dataset at ``path`` (one DescribeKey per distinct key URI)."""
    dataset = require_dataset_dir(path, "inspect")
    keys = DatasetKeys.read(dataset, job="inspect")
    return _inspect(keys, Providers(kms_options), strict=False)


def _inspect(keys: DatasetKeys, providers: Providers, *, strict: bool) -> DatasetInspection:
    effective = keys.effective_deks()
    described: dict[str, tuple[str, str, str] | str] = {}  # key_uri -> (key_id, primary, state) | error
    for key_uri in sorted({e.key_uri for e in effective.values()}):
        try:
            desc = providers.describe(key_uri)
            described[key_uri] = (desc.key_id, desc.primary_version, desc.state)
        except KmsError as exc:
            if strict:
                raise
            described[key_uri] = f"{type(exc).__name__}: {exc}"

    def behind(entry: DekEntry) -> bool | None:
        d = described[entry.key_uri]
        if isinstance(d, str):
            return None
        return not (entry.key_id == d[0] and entry.key_version == d[1])

    dek_behind = {dek_id: behind(entry) for dek_id, entry in effective.items()}
    files: list[FileInspection] = []
    uses: dict[str, int] = {}
    total_rows = 0
    for file in keys.files:
        ids = sorted(keys.footers[file].deks)
        for dek_id in ids:
            uses[dek_id] = uses.get(dek_id, 0) + 1
        flags = [dek_behind[d] for d in ids]
        rows = pq.read_metadata(file).num_rows
        total_rows += rows
        versions: dict[str, set[str]] = {}
        for d in ids:
            versions.setdefault(effective[d].key_id, set()).add(effective[d].key_version)
        files.append(FileInspection(
            path=keys.relpath(file),
            rows=rows,
            size=Path(file).stat().st_size,
            dek_ids=ids,
            key_versions={k: sorted(v) for k, v in sorted(versions.items())},
            behind=None if any(f is None for f in flags) else any(flags),
        ))
    deks = [
        DekInspection(
            dek_id=dek_id, key_uri=e.key_uri, key_id=e.key_id, key_version=e.key_version, algorithm=e.algorithm,
            created_at=e.created_at, source="manifest" if dek_id in keys.manifest else "footer",
            files=uses.get(dek_id, 0), behind=dek_behind[dek_id],
        )
        for dek_id, e in sorted(effective.items())
    ]
    key_rows = []
    for key_uri, d in described.items():
        of_key = [x for x in deks if x.key_uri == key_uri]
        if isinstance(d, str):
            key_rows.append(KeyInspection(key_uri, None, None, None, len(of_key), None, error=d))
        else:
            key_rows.append(KeyInspection(key_uri, d[0], d[1], d[2], len(of_key), sum(1 for x in of_key if x.behind)))
    columns = [ColumnInspection(s.name, s.algorithm, s.arrow_type, s.source) for _, s in sorted(keys.columns().items())]
    return DatasetInspection(
        path=str(keys.dataset), rows=total_rows, files=files, deks=deks, columns=columns, keys=key_rows,
        manifest_entries=len(keys.manifest), runs=_recent_runs(keys.dataset),
    )


def _recent_runs(dataset: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(runs_dir(dataset).glob("*.json"), reverse=True):
        if p.name.endswith(".state.json"):
            continue
        try:
            data = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError):
            continue  # a run record is informative only; a torn or foreign file must not break inspection
        out.append({k: data.get(k) for k in ("run_id", "job", "status", "started_at", "finished_at", "deks", "files")})
        if len(out) >= _RECENT_RUNS:
            break
    return out


def _parse_created(text: str) -> datetime:
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def needs_rotation(
    path: str | Path,
    *,
    max_age: timedelta | float | None = None,
    min_version: str | int | None = None,
    kms_options: KmsOptions | None = None,
) -> bool:
    """Whether the dataset at ``path`` should be rotated.

    True when any data key (as readers see it, manifest applied) is

    * wrapped by a version other than its key's primary version (rewrap fixes this), or
    * older than ``max_age`` (a ``timedelta``, or a number of days; re-encrypt fixes this), or
    * wrapped by a key version below ``min_version`` (numeric versions only).

    One DescribeKey per distinct key URI. :raises KmsError: a key cannot be described.
    """
    if max_age is not None and not isinstance(max_age, timedelta):
        if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or max_age < 0:
            raise ConfigurationError(f"max_age is a timedelta or a non-negative number of days, got {max_age!r}")
        max_age = timedelta(days=max_age)
    minimum: int | None = None
    if min_version is not None:
        if not str(min_version).isdigit():
            raise ConfigurationError(f"min_version must be a whole number (a key version), got {min_version!r}")
        minimum = int(str(min_version))
    dataset = require_dataset_dir(path, "needs_rotation")
    keys = DatasetKeys.read(dataset, job="needs_rotation")
    inspection = _inspect(keys, Providers(kms_options), strict=True)
    if inspection.behind_files:
        return True
    now = datetime.now(timezone.utc)
    for dek in inspection.deks:
        if max_age is not None and now - _parse_created(dek.created_at) > max_age:
            return True
        if minimum is not None:
            if not dek.key_version.isdigit():
                raise ConfigurationError(
                    f"min_version compares numeric key versions, but DEK {dek.dek_id} has version "
                    f"{dek.key_version!r} (key {dek.key_id})"
                )
            if int(dek.key_version) < minimum:
                return True
    return False


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
    for h in ("key URI", "key id", "primary", "state", "DEKs", "behind"):
        keys.add_column(h)
    for k in inspection.keys:
        keys.add_row(*row(k.key_uri, k.key_id or "-", k.primary_version or "-", k.state or (k.error or "-"),
                          k.deks, "?" if k.deks_behind is None else k.deks_behind))
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
