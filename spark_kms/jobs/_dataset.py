"""A snapshot of an encrypted dataset's key material, read from footers and the manifest only.

Reading it makes no KMS call: footers hold wrapped DEKs, the manifest too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spark_kms._atomic import atomic_write_bytes
from spark_kms.crypto import (
    DATASET_MANIFEST_NAME,
    ColumnSpec,
    DekEntry,
    KeyTable,
    decode_manifest,
    encode_manifest,
)
from spark_kms.errors import JobError
from spark_kms.parquet import list_data_files, read_key_table

__all__ = ["DatasetKeys", "load_manifest", "manifest_path", "write_manifest"]


def manifest_path(dataset: str | Path) -> Path:
    return Path(dataset) / DATASET_MANIFEST_NAME


def load_manifest(dataset: str | Path) -> dict[str, DekEntry]:
    """The dataset manifest's DEK entries (empty if there is no manifest)."""
    path = manifest_path(dataset)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return decode_manifest(data, where=str(path))


def write_manifest(dataset: str | Path, entries: Mapping[str, DekEntry]) -> None:
    """Replace the manifest atomically (temp + fsync + os.replace), or remove it when empty."""
    path = manifest_path(dataset)
    if not entries:
        path.unlink(missing_ok=True)
        return
    atomic_write_bytes(path, encode_manifest(dict(sorted(entries.items()))))


@dataclass
class DatasetKeys:
    """Data files of a dataset, each file's footer key table, and the manifest entries.

    :param dataset: the dataset directory (absolute).
    :param files: data files, sorted, as absolute paths.
    :param footers: footer key table of each file.
    :param manifest: manifest DEK entries (take precedence over footer entries with the same dek_id).
    """

    dataset: Path
    files: list[str]
    footers: dict[str, KeyTable]
    manifest: dict[str, DekEntry] = field(default_factory=dict)

    @classmethod
    def read(cls, dataset: str | Path, *, job: str) -> DatasetKeys:
        root = Path(dataset)
        files = sorted(str(Path(f).resolve()) for f in list_data_files(str(root)))
        if not files:
            raise JobError(f"{job}: dataset {str(root)!r} holds no data files")
        footers = {f: read_key_table(f) for f in files}
        return cls(dataset=root, files=files, footers=footers, manifest=load_manifest(root))

    def relpath(self, file: str) -> str:
        return str(Path(file).relative_to(self.dataset))

    def footer_deks(self) -> dict[str, DekEntry]:
        """Every DEK entry of every footer, by dek_id (first footer wins; they are equal by construction)."""
        out: dict[str, DekEntry] = {}
        for table in self.footers.values():
            for dek_id, entry in table.deks.items():
                out.setdefault(dek_id, entry)
        return out

    def effective_deks(self) -> dict[str, DekEntry]:
        """The entries a reader uses: footer entries, replaced by manifest entries with the same dek_id.

        Manifest entries for DEKs no footer references are left out (they open nothing).
        """
        return {dek_id: self.manifest.get(dek_id, entry) for dek_id, entry in self.footer_deks().items()}

    def effective_table(self, file: str) -> KeyTable:
        """The key table a reader uses for ``file``: its footer with the manifest applied."""
        table = self.footers[file]
        overrides = {d: e for d, e in self.manifest.items() if d in table.deks}
        return table.with_overrides(overrides) if overrides else table

    def columns(self) -> dict[str, ColumnSpec]:
        out: dict[str, ColumnSpec] = {}
        for table in self.footers.values():
            for name, spec in table.columns.items():
                out.setdefault(name, spec)
        return out

    def files_of(self, dek_ids: Iterable[str]) -> list[str]:
        wanted = set(dek_ids)
        return [f for f in self.files if wanted & set(self.footers[f].deks)]
