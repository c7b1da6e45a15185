"""Cells under several AAD rules (docs/FORMAT.md section 3): alternatives, per-row contexts, both GCM paths."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_kms import errors
from spark_kms.crypto import (
    AES_256_GCM,
    CellDecryptor,
    CellEncryptor,
    ColumnSpec,
    DeterministicEncryptor,
    _native,
    column_binding,
    row_context,
)
from spark_kms.crypto import _fastgcm as fastgcm
from spark_kms.parquet._types import array_from_buffers, binary_buffers

KEYS = {bytes.fromhex("a1a2a3a4a5a6a7a8"): bytes(range(32)), bytes.fromhex("b1b2b3b4b5b6b7b8"): bytes(range(1, 33))}
A, B = list(KEYS)
V2 = column_binding(ColumnSpec("email", AES_256_GCM, "string"))


def _lookup(dek_id: bytes) -> bytes:
    return KEYS[dek_id]


@pytest.fixture(params=["native", "pure"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(_native, "_BACKEND", fastgcm if request.param == "native" else _native._PureBackend)
    monkeypatch.setattr(_native, "_native", fastgcm if request.param == "native" else None)
    return request.param


def _buffers(cells: list[bytes | None]):
    return binary_buffers(pa.array(cells, pa.binary()))


def _decrypt_buffers(cells: list[bytes | None], context: bytes, alternatives=()) -> list[bytes | None]:
    out = CellDecryptor(_lookup).decrypt_buffers(_buffers(cells), "email", context, alternatives=alternatives,
                                                 where="file f.parquet")
    return array_from_buffers(out).to_pylist()


def test_an_array_of_one_rule_decrypts_under_that_rule_on_both_paths(backend):
    values = [b"a", None, b"", b"ccc"]
    v2 = CellEncryptor(KEYS[A], A).encrypt_many(values, "email", V2)
    v1 = CellEncryptor(KEYS[B], B).encrypt_many(values, "email")
    assert _decrypt_buffers(v2, V2) == values
    assert _decrypt_buffers(v2, V2, [b""]) == values
    assert _decrypt_buffers(v1, V2, [b""]) == values
    with pytest.raises(errors.DecryptionError, match="row 0"):
        _decrypt_buffers(v1, V2)  # a reader that accepts version 2 only
    with pytest.raises(errors.DecryptionError, match="row 0"):
        _decrypt_buffers(v2, b"")  # the version-1 rule only


def test_an_array_mixing_both_rules_decrypts_cell_by_cell_and_names_the_failing_row(backend):
    v2 = CellEncryptor(KEYS[A], A).encrypt_many([b"x", b"y"], "email", V2)
    v1 = CellEncryptor(KEYS[B], B).encrypt_many([b"z", b"w"], "email")
    mixed = [v2[0], v1[0], None, v2[1], v1[1]]
    assert _decrypt_buffers(mixed, V2, [b""]) == [b"x", b"z", None, b"y", b"w"]
    assert CellDecryptor(_lookup).decrypt_many(mixed, "email", V2, alternatives=[b""]) == [b"x", b"z", None, b"y",
                                                                                          b"w"]
    broken = list(mixed)
    broken[3] = broken[3][:-1] + bytes([broken[3][-1] ^ 1])
    for run in (lambda: _decrypt_buffers(broken, V2, [b""]),
                lambda: CellDecryptor(_lookup).decrypt_many(broken, "email", V2, alternatives=[b""], where="f")):
        with pytest.raises(errors.DecryptionError, match="row 3"):
            run()


def test_siv_cells_take_the_alternatives_too():
    det = DeterministicEncryptor(KEYS[A], A)
    v2, v1 = det.encrypt(b"same", "email", V2), det.encrypt(b"same", "email")
    assert v2 != v1  # the context is part of the synthetic IV: equal values are equal per rule
    assert CellDecryptor(_lookup).decrypt_many([v2, v1], "email", V2, alternatives=[b""]) == [b"same", b"same"]
    with pytest.raises(errors.DecryptionError):
        CellDecryptor(_lookup).decrypt(v1, "email", V2)
    assert CellDecryptor(_lookup).decrypt(v1, "email", V2, alternatives=[b""]) == b"same"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=1, max_size=30),
       st.lists(st.one_of(st.none(), st.binary(max_size=12)), min_size=30, max_size=30))
def test_row_contexts_round_trip_and_bind_each_cell_to_its_row(values, keys):
    binding = column_binding(ColumnSpec("ssn", AES_256_GCM, "string", row_binding="id"))
    contexts = [row_context(binding, k) for k in keys[: len(values)]]
    enc = CellEncryptor(KEYS[A], A)
    cells = enc.encrypt_rows(values, "ssn", contexts)
    assert enc.cells_used == sum(v is not None for v in values)
    decryptor = CellDecryptor(_lookup)
    assert decryptor.decrypt_rows(cells, "ssn", contexts) == values
    # The same cells under other rows' keys: each one whose key differs fails.
    for row, cell in enumerate(cells):
        if cell is None:
            continue
        other = row_context(binding, b"\xffother" if keys[row] != b"\xffother" else b"x")
        with pytest.raises(errors.DecryptionError, match=f"row {row}"):
            decryptor.decrypt_rows(cells[: row + 1], "ssn", [*contexts[:row], other], where="f")


def test_row_context_arguments_are_checked():
    enc = CellEncryptor(KEYS[A], A)
    with pytest.raises(errors.ConfigurationError, match="one per row"):
        enc.encrypt_rows([b"a", b"b"], "ssn", [b""])
    with pytest.raises(errors.ConfigurationError, match="one per row"):
        CellDecryptor(_lookup).decrypt_rows([b"a"], "ssn", [])
    with pytest.raises(errors.ConfigurationError, match="bytes"):
        enc.encrypt_rows([b"a"], "ssn", ["text"])
    assert enc.cells_used == 0  # refused before any counter was reserved
