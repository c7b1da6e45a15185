"""spark_kms.notebook: masking rules, HTML views of real key tables / cells / runs, key-version charts;
and spark_kms.display, its deprecated 0.1.0 name.

Key tables, cells and datasets come from the real file layer over the embedded local KMS
(the ``local_kms`` fixture); nothing here is mocked.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the charts are drawn, not shown

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from IPython.core.formatters import DisplayFormatter

from spark_kms import notebook as skn
from spark_kms.crypto import AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX, DekEntry, KeyTable, parse_cell_header
from spark_kms.crypto.cell import HEADER_BYTES, SIV_IV_BYTES, SIV_OVERHEAD
from spark_kms.errors import ConfigurationError, MalformedCellError
from spark_kms.jobs import RunSummary, inspect_dataset
from spark_kms.kms import provider_from_uri
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_key_table

B = skn.MASK_CHAR


# --------------------------------------------------------------------------- mask


@pytest.mark.parametrize(
    ("value", "keep_last", "expected"),
    [
        ("123-45-6789", 4, B * 6 + "6789"),
        ("alice@example.com", 4, B * 6 + ".com"),
        ("abcdefgh", 4, B * 6 + "efgh"),  # exactly 2 * keep_last: the last 4 may show
        ("abcdefg", 4, B * 6),  # shorter: showing 4 would reveal more than half
        ("abc", 4, B * 6),
        ("", 4, B * 6),
        ("123-45-6789", 0, B * 6),
        (12345678, 2, B * 6 + "78"),
        (b"\x00\x01\x02\x03\xfe\xff", 4, B * 6 + "feff"),  # bytes show as hex
    ],
)
def test_mask_rule(value: object, keep_last: int, expected: str) -> None:
    assert skn.mask(value, keep_last) == expected


def test_mask_keeps_null_and_hides_length() -> None:
    assert skn.mask(None) is None
    assert skn.mask("9" * 40 + "6789") == skn.mask("000-00-6789")
    assert skn.mask("123-45-6789", width=3, mask_char="*") == "***6789"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"keep_last": -1}, "keep_last"), ({"keep_last": True}, "keep_last"), ({"width": 0}, "width"),
     ({"mask_char": "**"}, "mask_char")],
)
def test_mask_rejects_bad_arguments(kwargs: dict, word: str) -> None:
    with pytest.raises(ConfigurationError, match=word):
        skn.mask("secret-value", **kwargs)


# --------------------------------------------------------------------------- masked


def _people() -> pa.Table:
    return pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "ssn": pa.array(["123-45-6789", None, "987-65-4321"], pa.string()),
        "pin": pa.array([1234, 56, None], pa.int32()),
    })


def test_masked_arrow_table_masks_only_the_named_columns() -> None:
    table = _people()
    out = skn.masked(table, ["ssn", "pin"])
    assert out.column_names == table.column_names
    assert out.column("id").equals(table.column("id"))
    assert out.schema.field("ssn").type == pa.large_string()
    assert out.column("ssn").to_pylist() == [B * 6 + "6789", None, B * 6 + "4321"]
    assert out.column("pin").to_pylist() == [B * 6, B * 6, None]  # 4 digits < 2 * keep_last: nothing shown
    assert table.column("ssn").to_pylist()[0] == "123-45-6789", "the input is not modified"


def test_masked_record_batch_and_single_column_name() -> None:
    batch = _people().to_batches()[0]
    out = skn.masked(batch, "ssn", keep_last=2)
    assert isinstance(out, pa.RecordBatch)
    assert out.column(1).to_pylist() == [B * 6 + "89", None, B * 6 + "21"]


def test_masked_pandas_keeps_nulls_of_every_kind() -> None:
    df = pd.DataFrame({
        "email": ["alice@example.com", None, "bo@x.io"],
        "score": [1.5, float("nan"), 12345678.0],
        "n": pd.array([1, pd.NA, 3], dtype="Int64"),
    })
    out = skn.masked(df, ["email", "score", "n"])
    assert out["email"].tolist()[0] == B * 6 + ".com"
    assert out["email"].isna().tolist() == [False, True, False]
    assert out["score"].isna().tolist() == [False, True, False]
    assert out["score"].tolist()[2] == B * 6 + "78.0"
    assert out["n"].isna().tolist() == [False, True, False]
    assert df["email"].tolist()[0] == "alice@example.com", "the input is not modified"


def test_masked_unknown_column_names_it_and_lists_the_columns() -> None:
    with pytest.raises(ConfigurationError) as info:
        skn.masked(_people(), ["ssn", "passport"])
    message = str(info.value)
    assert "'passport'" in message and "'id'" in message and "'ssn'" in message
    assert "123-45-6789" not in message


def test_masked_rejects_other_objects() -> None:
    with pytest.raises(ConfigurationError, match="list"):
        skn.masked([{"ssn": "123-45-6789"}], ["ssn"])


@pytest.mark.spark
def test_masked_spark_dataframe_matches_the_python_rule(spark) -> None:
    rows = [("123-45-6789", 1), (None, 2), ("abc", 3), ("abcdefgh", 4), ("\u00e9l\u00e8ve@\u00e9cole.fr", 5)]
    df = spark.createDataFrame(rows, "value string, id int")
    out = skn.masked(df, ["value", "id"], keep_last=4)
    assert out.columns == ["value", "id"]
    collected = sorted(out.collect(), key=lambda r: str(r["id"]))
    expected = sorted(
        [(skn.mask(v, 4), skn.mask(i, 4)) for v, i in rows], key=lambda t: str(t[1])
    )
    assert [(r["value"], r["id"]) for r in collected] == expected
    with pytest.raises(ConfigurationError, match="nope"):
        skn.masked(df, ["nope"])


# --------------------------------------------------------------------------- real encrypted data


@pytest.fixture
def encrypted_file(tmp_path: Path, local_kms) -> tuple[Path, dict]:
    _, key_uri, kms_options = local_kms
    provider = provider_from_uri(key_uri, **kms_options["local"])
    table = pa.table({
        "id": list(range(20)),
        "ssn": [f"123-45-{i:04d}" for i in range(20)],
        "email": [f"u{i % 5}@example.com" for i in range(20)],
    })
    spec = EncryptionSpec(columns=["ssn"], deterministic=["email"], blind_index={"ssn": "ssn_bidx"})
    path = tmp_path / "people.parquet"
    with EncryptedParquetWriter(path, table.schema, spec, provider,
                                encryption_context={"dataset": "<people & co>"}) as writer:
        writer.write_batch(table)
    return path, kms_options


def test_key_table_view_shows_keys_and_columns_but_not_wrapped_bytes(encrypted_file) -> None:
    path, _ = encrypted_file
    key_table = read_key_table(path)
    html = skn.view(key_table)._repr_html_()
    for dek_id, entry in key_table.deks.items():
        assert dek_id in html and entry.key_id in html
        assert entry.wrapped_dek.hex() not in html
        assert base64.b64encode(entry.wrapped_dek).decode() not in html
        assert f"{len(entry.wrapped_dek)} bytes" in html
    for name in ("ssn", "email", "ssn_bidx", AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX):
        assert name in html
    assert "dataset=&lt;people &amp; co&gt;" in html, "context values are HTML-escaped"
    assert "<people" not in html
    text = repr(skn.view(key_table))
    assert all(dek_id in text for dek_id in key_table.deks)
    assert "ssn_bidx: HMAC_SHA256_128" in text


def test_cell_view_splits_real_cells_per_format(encrypted_file) -> None:
    path, _ = encrypted_file
    stored = pq.read_table(path)
    expected_parts = {
        "ssn": (AES_256_GCM, ["header", "nonce", "ciphertext", "tag"], [9, 12, None, 16]),
        "email": (AES_256_SIV, ["header", "synthetic IV", "ciphertext"], [9, 16, None]),
        "ssn_bidx": (HMAC_SHA256_BIDX, ["header", "index tag"], [9, 16]),
    }
    for column, (algorithm, names, sizes) in expected_parts.items():
        cell = stored.column(column)[3].as_py()
        cv = skn.view(cell)
        header = parse_cell_header(cell)
        assert (cv.version, cv.algorithm, cv.dek_id) == (header.version, algorithm, header.dek_id_hex)
        assert [n for n, _ in cv.fields.parts] == names
        assert b"".join(d for _, d in cv.fields.parts) == cell
        assert [len(d) if s is not None else None for (_, d), s in zip(cv.fields.parts, sizes)] == sizes
        assert cv.hex == cell.hex()
        html = cv._repr_html_()
        assert header.dek_id_hex in html and algorithm in html
    gcm = skn.CellView(stored.column("ssn")[0].as_py())
    assert len(gcm.fields.parts[2][1]) == len("123-45-0000")  # GCM ciphertext is as long as the plaintext
    siv = skn.CellView(stored.column("email")[3].as_py())
    assert len(siv.fields.parts[2][1]) == len("u3@example.com")  # so is SIV's, after the synthetic IV


def test_cell_view_takes_the_siv_layout_from_the_crypto_core() -> None:
    # One definition of the layout: the helpers used to carry its own copy of the IV length.
    assert SIV_IV_BYTES == 16 and SIV_OVERHEAD == HEADER_BYTES + SIV_IV_BYTES
    assert not hasattr(skn, "_SIV_IV_BYTES")


def test_cell_view_of_a_malformed_cell_says_where() -> None:
    with pytest.raises(MalformedCellError, match="people.parquet, column ssn"):
        skn.CellView(b"\x11\x00", where="people.parquet, column ssn")
    with pytest.raises(MalformedCellError):
        skn.view(b"\x1f" + bytes(20))  # unknown algorithm id


@pytest.mark.parametrize(
    ("cell", "rule"),
    [
        (b"\x11" + bytes(8) + bytes(27), "at least 37"),  # GCM: no room for nonce + tag
        (b"\x12" + bytes(8) + bytes(15), "at least 25"),  # SIV: no room for the synthetic IV
        (b"\x13" + bytes(8) + bytes(15), "exactly 25"),  # blind index: a truncated tag
        (b"\x13" + bytes(8) + bytes(17), "exactly 25"),  # blind index: trailing bytes
    ],
)
def test_cell_view_refuses_a_cell_too_short_for_its_fields(cell: bytes, rule: str) -> None:
    # Sliced without a length check, a short GCM cell showed a 12-byte "tag" overlapping its
    # "nonce", i.e. a layout the cell does not have.
    with pytest.raises(MalformedCellError, match=f"{len(cell)} bytes, the format needs {rule} \\(f.parquet\\)"):
        skn.CellView(cell, where="f.parquet")


def test_view_rejects_what_it_cannot_show() -> None:
    with pytest.raises(ConfigurationError, match="KeyTable"):
        skn.view(42)


def test_run_summary_view() -> None:
    summary = RunSummary(
        job="rewrap", run_id="r-1", dataset="/data/<x>", status="succeeded", files=2, deks=3,
        kms_calls={"local:ReEncrypt": 3, "local:DescribeKey": 1},
        key_versions={"k1": ["2"]}, key_versions_before={"k1": ["1", "2"]},
    )
    html = skn.view(summary)._repr_html_()
    assert "local:ReEncrypt: 3" in html and "k1 v1,2" in html and "k1 v2" in html
    assert "/data/&lt;x&gt;" in html
    assert "rewrap run r-1: succeeded" in repr(skn.view(summary))
    failed = skn.RunSummaryView({**summary.to_dict(), "status": "failed", "error": "JobError: boom"})
    assert "JobError: boom" in failed._repr_html_()


def test_install_registers_html_for_key_tables(encrypted_file) -> None:
    path, _ = encrypted_file
    key_table = read_key_table(path)
    formatter = DisplayFormatter()
    assert "text/html" not in formatter.format(key_table)[0]
    skn.install(formatter)
    data, _ = formatter.format(key_table)
    assert "Data keys" in data["text/html"]
    entry = next(iter(key_table.deks.values()))
    assert entry.dek_id in formatter.format(entry)[0]["text/html"]
    skn.install()  # outside IPython: a no-op, not an error


def test_inspection_renders_as_html_through_display(tmp_path: Path, local_kms) -> None:
    # DatasetInspection holds data only; spark_kms.report draws it, spark_kms.notebook shows it in notebooks.
    _, key_uri, kms_options = local_kms
    dataset = tmp_path / "ds<&>"
    dataset.mkdir()
    _write(dataset, "a.parquet", key_uri, kms_options)
    inspection = inspect_dataset(dataset, kms_options=kms_options)
    html = skn.view(inspection)._repr_html_()
    assert "a.parquet" in html and "<table>" in html and "up to date" in html and "local://alias/pii" in html
    assert "ds&lt;&amp;&gt;" in html and "ds<&>" not in html, "paths are HTML-escaped"
    assert repr(skn.view(inspection)).endswith(": 3 rows, 1 files, 1 data keys)")

    formatter = DisplayFormatter()
    assert "text/html" not in formatter.format(inspection)[0]
    skn.install(formatter)
    assert formatter.format(inspection)[0]["text/html"] == html


# --------------------------------------------------------------------------- charts


def _write(dataset: Path, name: str, key_uri: str, kms_options: dict) -> None:
    provider = provider_from_uri(key_uri, **kms_options["local"])
    table = pa.table({"id": [1, 2, 3], "ssn": ["123-45-6789", "111-22-3333", "999-88-7777"]})
    with EncryptedParquetWriter(dataset / name, table.schema, EncryptionSpec(columns=["ssn"]), provider) as w:
        w.write_batch(table)


def test_files_per_key_version_and_chart(tmp_path: Path, local_kms) -> None:
    keystore, key_uri, kms_options = local_kms
    dataset = tmp_path / "ds"
    dataset.mkdir()
    _write(dataset, "a.parquet", key_uri, kms_options)
    _write(dataset, "b.parquet", key_uri, kms_options)
    LocalKms(keystore).rotate_key("alias/pii")
    _write(dataset, "c.parquet", key_uri, kms_options)

    inspection = inspect_dataset(dataset, kms_options=kms_options)
    assert skn.files_per_key_version(inspection) == {"v1": 2, "v2": 1}

    ax = skn.plot_files_per_key_version(inspection, title="before")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["v1", "v2"]
    assert [p.get_height() for p in ax.patches] == [2, 1]
    colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches]
    assert colors[0] != colors[1], "the older version stands out from the primary one"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["older version", "primary version"]
    assert ax.get_title() == "before"
    ax.figure.savefig(tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 0

    # A second KMS key: labels name the key as well as the version.
    other = LocalKms(keystore).create_key(alias="alias/other")
    _write(dataset, "d.parquet", "local://alias/other", kms_options)
    counts = skn.files_per_key_version(inspect_dataset(dataset, kms_options=kms_options))
    assert counts[f"{other[:8]} v1"] == 1
    assert sum(counts.values()) == 4 and len(counts) == 3
    assert not any(re.fullmatch(r"v\d+", label) for label in counts)


def test_chart_of_an_empty_inspection(tmp_path: Path) -> None:
    class _Empty:
        files: list = []
        keys: list = []

    assert skn.files_per_key_version(_Empty()) == {}
    ax = skn.plot_files_per_key_version(_Empty())
    assert len(ax.patches) == 0
    assert ax.get_legend() is None


def test_key_table_view_of_a_hand_made_entry() -> None:
    entry = DekEntry(
        dek_id="00112233aabbccdd", key_uri="local://alias/pii", key_id="k-1", key_version="7",
        wrapped_dek=b"\x01" * 40, encryption_context={"dataset": "d"}, algorithm=AES_256_GCM,
        created_at="2025-01-01T00:00:00Z",
    )
    html = skn.KeyTableView(KeyTable(deks={entry.dek_id: entry}, columns={}), title="t")._repr_html_()
    assert "00112233aabbccdd" in html and ">7<" in html and "40 bytes" in html and "01" * 40 not in html


# --------------------------------------------------------------------------- the 0.1.0 name


def test_display_module_is_a_deprecated_alias_of_notebook() -> None:
    # A fresh interpreter: in this process the alias may already be imported (and warned once).
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from spark_kms import display\n"
        "from spark_kms import notebook\n"
        "deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]\n"
        "assert len(deprecations) == 1, [str(w.message) for w in caught]\n"
        "assert 'spark_kms import notebook' in str(deprecations[0].message)\n"
        "assert display.__all__ == notebook.__all__\n"
        "assert all(getattr(display, n) is getattr(notebook, n) for n in notebook.__all__)\n"
        "assert display._table is notebook._table\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_notebooks_use_the_new_name() -> None:
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    for path in notebooks.glob("*.ipynb"):
        text = path.read_text()
        assert "from spark_kms import display" not in text, path.name
        assert "from spark_kms import notebook as skn" in text, path.name
