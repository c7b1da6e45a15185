"""What to encrypt: :class:`EncryptionSpec` (re-exported by :mod:`spark_kms.parquet.encryptor` and
:mod:`spark_kms.parquet`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spark_kms.crypto import AES_256_GCM, AES_256_GCM_SUBJECT, AES_256_SIV, KeyTable
from spark_kms.errors import ConfigurationError

__all__ = ["EncryptionSpec"]


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise ConfigurationError(f"{what} must be a sequence of column names, not a single string: {value!r}")
    names = tuple(value)
    for n in names:
        if not isinstance(n, str) or not n:
            raise ConfigurationError(f"{what} must hold non-empty column names, got {n!r}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{what} lists a column twice: {list(names)}")
    return names


@dataclass(frozen=True)
class EncryptionSpec:
    """Which columns to encrypt and how.

    :param columns: columns encrypted with AES-256-GCM (randomised: equal values give
        different cells). A column also listed in ``deterministic`` is deterministic.
    :param deterministic: columns encrypted with AES-SIV (equal values give equal cells
        under the same dataset key: joins and group-bys on ciphertext work; it reveals
        which cells are equal).
    :param blind_index: source column -> name of a new binary column holding an HMAC
        blind index of the source's plaintext (equality look-ups without decryption).
    :param row_binding: a plain column (e.g. the primary key) whose value, row by row, goes into
        the associated data of every AES-256-GCM cell, so a cell moved to another row fails to
        decrypt. Readers then need that column too. Deterministic columns are not bound (equal
        values must give equal cells across rows), nor are blind indexes.
    :param subject_column: a plain column holding each row's data subject id (string or integer): every
        randomised column is then encrypted per subject (``AES_256_GCM_SUBJECT``, docs/FORMAT.md section 15)
        under a key derived from that person's key in a subject key store, so deleting one person's key erases
        their cells everywhere. Readers need that column and the store.
    """

    columns: Sequence[str] = ()
    deterministic: Sequence[str] = ()
    blind_index: Mapping[str, str] = field(default_factory=dict)
    row_binding: str | None = None
    subject_column: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", _names(self.columns, "columns"))
        object.__setattr__(self, "deterministic", _names(self.deterministic, "deterministic columns"))
        if not isinstance(self.blind_index, Mapping):
            raise ConfigurationError("blind_index must map a source column to the name of its index column")
        bidx = dict(self.blind_index)
        _names(list(bidx.values()), "blind index column names")
        _names(list(bidx), "blind index source columns")
        clash = sorted(set(bidx.values()) & (set(self.columns) | set(self.deterministic) | set(bidx)))
        if clash:
            raise ConfigurationError(f"blind index column names must be new columns, but {clash} are also sources")
        # A plain dict (a private copy): specs are pickled to Spark executors.
        object.__setattr__(self, "blind_index", bidx)
        if not (self.columns or self.deterministic or bidx):
            raise ConfigurationError("an EncryptionSpec needs at least one column to encrypt or index")
        bound = self.row_binding
        if bound is not None:
            if not isinstance(bound, str) or not bound:
                raise ConfigurationError(f"row_binding must name a plain column, got {bound!r}")
            if bound in set(self.columns) | set(self.deterministic) | set(bidx.values()):
                raise ConfigurationError(
                    f"row_binding column {bound!r} must be a plain column, not an encrypted or index column"
                )
        subject = self.subject_column
        if subject is not None:
            if not isinstance(subject, str) or not subject:
                raise ConfigurationError(f"subject_column must name a plain column, got {subject!r}")
            if subject in set(self.columns) | set(self.deterministic) | set(bidx.values()):
                raise ConfigurationError(
                    f"subject_column {subject!r} must be a plain column, not an encrypted or index column"
                )
            if bound is not None:
                raise ConfigurationError(
                    "subject_column and row_binding do not combine: per-subject cells are bound to their subject"
                )
            if self.deterministic or bidx:
                raise ConfigurationError(
                    "deterministic and blind-index columns use the join domain's key, which erasing a subject "
                    "does not reach (their equal-value tokens would survive): write them without "
                    "subject_column (docs/ERASURE.md)"
                )

    def __hash__(self) -> int:
        return hash((self.columns, self.deterministic, tuple(sorted(self.blind_index.items())), self.row_binding,
                     self.subject_column))

    @classmethod
    def from_key_table(cls, table: KeyTable) -> EncryptionSpec:
        """The spec that writes columns as ``table`` describes them (re-encryption keeps a dataset's layout)."""
        columns, deterministic, blind, bound, subjects = [], [], {}, set(), set()
        for name, spec in table.columns.items():
            if spec.algorithm == AES_256_GCM:
                columns.append(name)
            elif spec.algorithm == AES_256_GCM_SUBJECT:
                columns.append(name)
                subjects.add(spec.subject)
            elif spec.algorithm == AES_256_SIV:
                deterministic.append(name)
            elif spec.source is not None:
                blind[spec.source] = name
            if spec.row_binding is not None:
                if spec.algorithm != AES_256_GCM:
                    raise ConfigurationError(
                        f"column {name!r} is {spec.algorithm} bound to rows by {spec.row_binding!r}: "
                        "this writer binds only AES-256-GCM columns"
                    )
                bound.add(spec.row_binding)
        if len(bound) > 1 or (bound and any(table.columns[c].row_binding is None for c in columns)):
            raise ConfigurationError(f"the columns of the key table are bound to rows differently ({sorted(bound)})")
        if len(subjects) > 1 or (subjects and any(table.columns[c].subject is None for c in columns)):
            raise ConfigurationError(
                f"the columns of the key table are per-subject differently ({sorted(map(str, subjects))})"
            )
        return cls(columns=columns, deterministic=deterministic, blind_index=blind,
                   row_binding=bound.pop() if bound else None, subject_column=subjects.pop() if subjects else None)

    @property
    def randomized(self) -> tuple[str, ...]:
        """The AES-256-GCM columns (``columns`` minus the deterministic ones)."""
        det = set(self.deterministic)
        return tuple(c for c in self.columns if c not in det)  # type: ignore[attr-defined]

    @property
    def needs_deterministic_key(self) -> bool:
        return bool(self.deterministic or self.blind_index)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "columns": list(self.columns),
            "deterministic": list(self.deterministic),
            "blind_index": dict(self.blind_index),
        }
        if self.row_binding is not None:
            out["row_binding"] = self.row_binding
        if self.subject_column is not None:
            out["subject_column"] = self.subject_column
        return out
