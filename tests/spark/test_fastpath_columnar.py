"""The JVM fast path's SQL extension (io.sparkkms.fastpath.SparkKmsExtensions): the decrypt functions as Catalyst
expressions, and the columnar rule that decrypts whole Parquet batches (``SparkKmsDecryptColumnar`` in the plan)
-- against the Python path, the plaintext, and the extension's own row-wise fallback (the rule switched off, the
vectorized reader off, and a session with the plugin but not the extension)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F  # noqa: N812 - pyspark's convention

from spark_kms.crypto import _fastgcm as fastgcm
from spark_kms.crypto import _native
from spark_kms.errors import DecryptionError, UnknownDataKeyError
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec
from spark_kms.parquet.dataset import Dataset
from spark_kms.spark import errors_translated, fastpath
from spark_kms.spark.io import read_encrypted
from tests.spark._helpers import sorted_rows

pytestmark = [pytest.mark.spark]

EXEC = "SparkKmsDecryptColumnar"
SCHEMA = pa.schema([("id", pa.int64()), ("s", pa.string()), ("b", pa.binary()), ("i", pa.int32()),
                    ("f", pa.bool_())])
ENCRYPTED = ["s", "b", "i", "f"]


class _Conf:
    """Runtime settings set for a block and put back."""

    def __init__(self, spark: Any, **settings: str) -> None:
        self.spark, self.settings, self.before = spark, settings, {}

    def __enter__(self) -> None:
        for key, value in self.settings.items():
            self.before[key] = self.spark.conf.get(key, None)
            self.spark.conf.set(key, value)

    def __exit__(self, *exc: object) -> None:
        for key, value in self.before.items():
            if value is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, value)


def _row(i: int) -> tuple:
    """Nulls, empty strings, unicode, long values (> 4 KiB), binary, ints and bools."""
    text = [None, "", "ünïcödé ✓ 漢字 🙂", "x" * 5000 + str(i), f"user{i}@example.org"][i % 5]
    blob = None if i % 7 == 3 else (b"" if i % 7 == 4 else bytes([i % 256]) * (i % 50) + b"\x00\xff")
    return (i, text, blob, None if i % 6 == 5 else i * (-1) ** i, None if i % 4 == 3 else i % 2 == 0)


def _write(path: Path, rows: list[tuple], local_kms: Any, **kw: Any) -> None:
    table = pa.Table.from_pylist([dict(zip(SCHEMA.names, r, strict=True)) for r in rows], schema=SCHEMA)
    with EncryptedParquetWriter(path, SCHEMA, EncryptionSpec(columns=ENCRYPTED), local_kms.key_uri,
                                kms_options=local_kms.kms_options, **kw) as w:
        w.write_batch(table)


@pytest.fixture
def dataset(tmp_path: Path, local_kms: Any) -> tuple[Path, list[tuple]]:
    """Three files (a data key each, the second rolling over to more data keys every 50 cells) of 1,000, 57 and
    3 rows."""
    root = tmp_path / "ds"
    root.mkdir()
    rows = [_row(i) for i in range(1060)]
    _write(root / "part-0.parquet", rows[:1000], local_kms)
    _write(root / "part-1.parquet", rows[1000:1057], local_kms, max_cells_per_dek=50)
    _write(root / "part-2.parquet", rows[1057:], local_kms)
    assert len(Dataset.open(str(root)).key_table().deks) >= 4
    return root, rows


def _executed(df: Any) -> tuple[list[tuple], str]:
    """The rows of ``df`` and its executed (final adaptive) plan."""
    rows = sorted((tuple(r) for r in df.collect()), key=repr)
    return rows, df._jdf.queryExecution().executedPlan().toString()


def _read(spark: Any, root: Path, kms: Any, fast_path: bool = True, **kw: Any) -> Any:
    return read_encrypted(spark, str(root), kms_options=kms, fast_path=fast_path, **kw)


def _checksum(df: Any) -> Any:
    return df.agg(F.count("*"), F.sum(F.xxhash64("s", "b", "i", "f").cast("decimal(38,0)")))


@pytest.mark.parametrize("batch", ["4096", "7", "1000"])
def test_columnar_equals_python_path_and_plaintext(fast: Any, local_kms: Any, dataset: tuple, batch: str) -> None:
    """Full read and aggregate go through the columnar exec, with batches larger than a file, smaller and not
    dividing the row counts, or exactly one file; both equal the Python path and the plaintext."""
    root, rows = dataset
    # the batches go through libsodium's AES-GCM, as this process's writer did (make install puts it there)
    cipher = fast.sparkContext._jvm.io.sparkkms.fastpath.FastPathPlugin.cipherImplementation()
    assert cipher == fastgcm.GCM_BACKEND and cipher.startswith("libsodium "), cipher
    with _Conf(fast, **{"spark.sql.parquet.columnarReaderBatchSize": batch}):
        got, plan = _executed(_read(fast, root, local_kms.kms_options))
        assert EXEC in plan and "ColumnarToRow" in plan, plan
        assert got == sorted(rows, key=repr)
        slow = _read(fast, root, local_kms.kms_options, fast_path=False)
        assert got == sorted_rows(slow)
        agg, agg_plan = _executed(_checksum(_read(fast, root, local_kms.kms_options)))
        assert EXEC in agg_plan, agg_plan
        assert agg == sorted_rows(_checksum(slow))


def test_select_filter_and_casts(fast: Any, local_kms: Any, dataset: tuple) -> None:
    """A projection of some columns, a filter on a plain column and one on a decrypted column."""
    root, rows = dataset
    df = _read(fast, root, local_kms.kms_options)
    got, plan = _executed(df.select("id", "i", "f"))
    assert EXEC in plan and got == sorted(((r[0], r[3], r[4]) for r in rows), key=repr)
    got, _ = _executed(df.where("id % 3 = 0").select("id", "s"))
    assert got == sorted(((r[0], r[1]) for r in rows if r[0] % 3 == 0), key=repr)
    got, plan = _executed(df.where(F.col("s").startswith("user")).select("id", "b"))
    assert EXEC in plan
    assert got == sorted(((r[0], r[2]) for r in rows if r[1] and r[1].startswith("user")), key=repr)
    assert df.schema == _read(fast, root, local_kms.kms_options, fast_path=False).schema


def test_grouping_and_string_aggregates(fast: Any, local_kms: Any, dataset: tuple) -> None:
    """Values of the reused decrypted vectors kept across batches (a string max, grouping keys) stay right."""
    root, _ = dataset
    with _Conf(fast, **{"spark.sql.parquet.columnarReaderBatchSize": "64"}):
        def query(df: Any) -> Any:
            return df.groupBy("f", F.length("s").alias("n")).agg(F.max("s"), F.min("b"), F.count("i"))

        got, plan = _executed(query(_read(fast, root, local_kms.kms_options)))
        assert EXEC in plan, plan
        assert got == sorted_rows(query(_read(fast, root, local_kms.kms_options, fast_path=False)))


def test_session_conf_adds_the_extension() -> None:
    assert fastpath.spark_conf()["spark.sql.extensions"] == fastpath.EXTENSIONS_CLASS
    merged = fastpath.session_conf({"spark.sql.extensions": "com.example.Ext"})
    assert merged["spark.sql.extensions"] == f"com.example.Ext,{fastpath.EXTENSIONS_CLASS}"
    assert fastpath.session_conf(merged) == merged


def test_dictionary_encoded_cells(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    """A file whose GCM columns are dictionary-encoded (older writers) decrypts cell by cell from the
    dictionary, and the same as the Python path."""
    root = tmp_path / "dict"
    root.mkdir()
    rows = [_row(i) for i in range(300)]
    _write(root / "part-0.parquet", rows, local_kms, parquet_options={"use_dictionary": True})
    encodings = pq.ParquetFile(root / "part-0.parquet").metadata.row_group(0).column(1).encodings
    assert any("DICTIONARY" in e for e in encodings), encodings
    got, plan = _executed(_read(fast, root, local_kms.kms_options))
    assert EXEC in plan and got == sorted(rows, key=repr)
    assert got == sorted_rows(_read(fast, root, local_kms.kms_options, fast_path=False))


def test_off_heap_vectors(fast: Any, local_kms: Any, dataset: tuple) -> None:
    root, rows = dataset
    with _Conf(fast, **{"spark.sql.columnVector.offheap.enabled": "true"}):
        got, plan = _executed(_read(fast, root, local_kms.kms_options))
        assert EXEC in plan and got == sorted(rows, key=repr)


def test_row_wise_fallback_in_the_extension(fast: Any, local_kms: Any, dataset: tuple) -> None:
    """The rule switched off, or a row-based scan (vectorized reader off): the Catalyst expressions decrypt row by
    row, with the same results."""
    root, rows = dataset
    for settings in ({fastpath.COLUMNAR_SWITCH: "false"}, {"spark.sql.parquet.enableVectorizedReader": "false"}):
        with _Conf(fast, **settings):
            got, plan = _executed(_read(fast, root, local_kms.kms_options))
            assert EXEC not in plan and f"{fastpath.UDF_STRING}(s#" in plan, plan
            assert got == sorted(rows, key=repr)
            agg, _ = _executed(_checksum(_read(fast, root, local_kms.kms_options)))
            assert agg == sorted_rows(_checksum(_read(fast, root, local_kms.kms_options, fast_path=False)))


def test_plan_strings_show_the_handle_prefix_only(fast: Any, local_kms: Any, dataset: tuple, capsys: Any) -> None:
    root, _ = dataset
    df = _read(fast, root, local_kms.kms_options)
    _, plan = _executed(df)
    lines = [line for line in plan.splitlines() if EXEC in line]
    assert len(lines) == 1 and re.search(r"\(handle [0-9a-f]{8}\)$", lines[0]), lines
    config_hex = re.compile(r"534B4631|534b4631|[0-9a-fA-F]{17,}")  # the config's magic "SKF1", a whole handle
    for mode in ("extended", "formatted"):
        df.explain(mode=mode)
        out = capsys.readouterr().out
        for line in out.splitlines():
            if "Parsed Logical Plan" in line:
                break  # the parsed plan is pyspark's unresolved call_function, as typed
            assert not config_hex.search(line), line


# -- errors: the columnar exec raises what the row path raises ------------------------------------------------


def _one_file(tmp_path: Path, local_kms: Any) -> Path:
    root = tmp_path / "one"
    root.mkdir()
    table = pa.table({"id": pa.array(range(20), pa.int64()), "email": [f"u{i}@x.org" for i in range(20)],
                      "name": [f"n{i}" for i in range(20)]})
    with EncryptedParquetWriter(root / "part-0.parquet", table.schema, EncryptionSpec(columns=["email", "name"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as w:
        w.write_batch(table)
    return root / "part-0.parquet"


def _edit(path: Path, edit: Any) -> None:
    meta = {k: v for k, v in pq.read_metadata(path).metadata.items() if k != b"ARROW:schema"}
    table = pq.read_table(path)
    cols = {n: table.column(n).to_pylist() for n in ("email", "name")}
    edit(cols)
    for n, cells in cols.items():
        table = table.set_column(table.schema.get_field_index(n), n, pa.array(cells, pa.binary()))
    pq.write_table(table.replace_schema_metadata(meta), path, use_dictionary=False)


def _failures(spark: Any, path: Path, kms: Any) -> dict[str, Exception]:
    """The error of a full read: columnar, row-wise in the extension, and the Python path."""
    out = {}
    for how, settings, fast_path in (("columnar", {}, True), ("row", {fastpath.COLUMNAR_SWITCH: "false"}, True),
                                     ("python", {}, False)):
        with _Conf(spark, **settings):
            df = read_encrypted(spark, str(path.parent), kms_options=kms, fast_path=fast_path)
            with pytest.raises(Exception) as info, errors_translated():
                df.collect()
            plan = df._jdf.queryExecution().executedPlan().toString()
        assert (EXEC in plan) == (how == "columnar"), (how, plan)
        out[how] = info.value
    return out


def _same(errors: dict[str, Exception], cls: type) -> None:
    for how, err in errors.items():
        assert type(err) is cls, (how, repr(err))
    assert str(errors["columnar"]) == str(errors["row"])
    assert "column 'email'" in str(errors["columnar"]) and "part-0.parquet" in str(errors["columnar"])


def test_tampered_cell(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    path = _one_file(tmp_path, local_kms)
    cell = pq.read_table(path).column("email")[12].as_py()

    def tamper(cols: dict) -> None:
        c = cols["email"][12]
        cols["email"][12] = c[:-1] + bytes([c[-1] ^ 1])

    _edit(path, tamper)
    errors = _failures(fast, path, local_kms.kms_options)
    _same(errors, DecryptionError)
    assert "authentication failed" in str(errors["columnar"]) and cell.hex() not in str(errors["columnar"])


def test_unknown_dek(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    path = _one_file(tmp_path, local_kms)
    ghost = bytes.fromhex("0badc0ffee0badc0")

    def retag(cols: dict) -> None:
        c = cols["email"][9]
        cols["email"][9] = c[:1] + ghost + c[9:]

    _edit(path, retag)
    errors = _failures(fast, path, local_kms.kms_options)
    _same(errors, UnknownDataKeyError)
    assert ghost.hex() in str(errors["columnar"])


def test_cell_moved_to_another_column(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    path = _one_file(tmp_path, local_kms)

    def move(cols: dict) -> None:
        cols["email"][5] = cols["name"][5]

    _edit(path, move)
    _same(_failures(fast, path, local_kms.kms_options), DecryptionError)


# -- other sessions: the plugin without the extension (Java UDFs), JCE or OpenSSL instead of libsodium ------------

_JOB = """
import json, sys
from spark_kms.spark import fastpath, read_encrypted, errors_translated
from spark_kms.spark.session import local_session
root, keystore, mode = sys.argv[1:4]
conf = fastpath.spark_conf()
if mode == "plugin-only":
    del conf["spark.sql.extensions"]
elif mode == "jce":
    conf["spark.driver.extraJavaOptions"] = "-Dsparkkms.fastpath.cipher=jce"
spark = local_session("local[1]", mode, conf=conf)
opts = {"local": {"keystore": keystore}}
fast = read_encrypted(spark, root, kms_options=opts, fast_path=True)
with errors_translated():
    rows = sorted((tuple(r) for r in fast.collect()), key=repr)
    slow = sorted((tuple(r) for r in read_encrypted(spark, root, kms_options=opts, fast_path=False).collect()),
                  key=repr)
plan = fast._jdf.queryExecution().executedPlan().toString()
print(json.dumps({"extension": fastpath.extension_active(spark), "equal": rows == slow, "count": len(rows),
                  "udf": "spark_kms_decrypt_string(s#" in plan, "columnar": "SparkKmsDecryptColumnar" in plan,
                  "cipher": spark.sparkContext._jvm.io.sparkkms.fastpath.FastPathPlugin.cipherImplementation()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plugin-only", "jce"])
def test_plugin_only_and_jce_sessions(local_kms: Any, dataset: tuple, mode: str) -> None:
    """A session with the plugin but not the extension, kept off libsodium (SPARK_KMS_GCM_BACKEND=openssl),
    decrypts through the Java UDFs, row by row, over OpenSSL's EVP; one whose JVM may not use the native library
    (sparkkms.fastpath.cipher=jce) decrypts the batches through JCE. Both equal the Python path, over cells this
    process wrote with libsodium. (The JNI row and batch calls share one AES-GCM call, _gcm_backend.h, whose EVP
    side tests/crypto/test_gcm_backends.py covers in full.)"""
    root, rows = dataset
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop(fastpath.ENV_SWITCH, None)
    env.pop(_native.GCM_BACKEND_ENV, None)
    if mode == "plugin-only":
        env[_native.GCM_BACKEND_ENV] = "openssl"
    proc = subprocess.run([sys.executable, "-c", _JOB, str(root), str(local_kms.keystore_dir), mode],
                          capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["equal"] is True and report["count"] == len(rows), report
    if mode == "plugin-only":
        assert (report["extension"], report["udf"], report["columnar"], report["cipher"]) == (
            False, True, False, "openssl"), report
    else:
        assert (report["extension"], report["columnar"]) == (True, True), report
        assert report["cipher"].startswith("jce (disabled by sparkkms.fastpath.cipher=jce"), report
