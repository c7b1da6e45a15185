"""The JVM fast path of read_encrypted (spark_kms.spark.fastpath) against the Python UDF path, on the shared
session (which starts with the fast path's plugin, switched off; the ``fast`` fixture switches it on)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_kms.errors import AccessDeniedError, ConfigurationError, DecryptionError, UnknownDataKeyError
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec
from spark_kms.spark import errors_translated, fastpath
from spark_kms.spark.io import read_encrypted, write_encrypted
from tests.spark._helpers import allowed_and_denied, data_files, kms_ops, sorted_rows

pytestmark = [pytest.mark.spark]


def _both(spark: Any, path: str, kms: Any, **kw: Any) -> tuple[Any, Any]:
    fast = read_encrypted(spark, path, kms_options=kms, fast_path=True, **kw)
    slow = read_encrypted(spark, path, kms_options=kms, fast_path=False, **kw)
    return fast, slow


def _plan(df: Any) -> str:
    return df._jdf.queryExecution().toString()


SCHEMA = pa.schema([("id", pa.int64()), ("s", pa.string()), ("b", pa.binary()), ("i", pa.int32()),
                    ("n", pa.int64()), ("f", pa.bool_()), ("d", pa.float64())])
ENCRYPTED = ["s", "b", "i", "n", "f", "d"]
text = st.one_of(st.just(""), st.text(max_size=40), st.text(min_size=300, max_size=2000))
rows = st.lists(st.tuples(
    st.none() | text,
    st.none() | st.binary(max_size=300),
    st.none() | st.integers(-(2**31), 2**31 - 1),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.booleans(),
    st.none() | st.floats(allow_nan=False),
), min_size=1, max_size=30)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=rows)
def test_fast_path_equals_python_path_property(fast: Any, local_kms: Any, tmp_path: Path, values: list) -> None:
    """Strings (empty, unicode, long), binary, ints, bools and nulls read the same on both paths; the double
    column (not decrypted in the JVM) falls back to the Python UDF in the same query."""
    root = tmp_path / f"ds-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    cols = list(zip(*values, strict=True))
    table = pa.table([pa.array(range(len(values)), pa.int64())] + [pa.array(c, t) for c, t in
                     zip(cols, [f.type for f in SCHEMA][1:], strict=True)], schema=SCHEMA)
    with EncryptedParquetWriter(root / "part-0.parquet", SCHEMA, EncryptionSpec(columns=ENCRYPTED),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as w:
        w.write_batch(table)
    f, s = _both(fast, str(root), local_kms.kms_options)
    plan = _plan(f)
    for name in ("s", "i", "n", "f"):
        assert f"{fastpath.UDF_STRING}({name}#" in plan
    assert f"{fastpath.UDF_BINARY}(b#" in plan and "kms_decrypt_cells(d#" in plan
    assert f.schema == s.schema
    assert sorted_rows(f) == sorted_rows(s)
    assert [tuple(r) for r in f.orderBy("id").collect()] == [(i, *v) for i, v in enumerate(values)]


def test_dataset_written_by_the_data_source(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    """A multi-file dataset written by Spark through the data source (several data keys): equal on both paths,
    with column pruning and a filter on a plain column; keys unwrapped once per data key on the driver."""
    df = fast.createDataFrame([(i, f"user{i}@example.com" if i % 7 else None, f"Name ünï {i}" * (i % 3))
                               for i in range(200)], "id long, email string, name string").repartition(3)
    out = str(tmp_path / "ds")
    written = write_encrypted(df, out, key_uri=local_kms.key_uri, columns=["email", "name"],
                              kms_options=local_kms.kms_options)
    assert len(written.deks) >= 2 and len(data_files(out)) >= 2
    before = kms_ops(local_kms.keystore_dir)["Decrypt"]
    f, s = _both(fast, out, local_kms.kms_options)
    assert kms_ops(local_kms.keystore_dir)["Decrypt"] - before <= len(written.deks)
    assert sorted_rows(f) == sorted_rows(s) and len(sorted_rows(f)) == 200
    assert sorted_rows(f.where("id < 20").select("email")) == sorted_rows(s.where("id < 20").select("email"))
    only = read_encrypted(fast, out, kms_options=local_kms.kms_options, columns=["id", "email"], fast_path=True)
    assert fastpath.UDF_STRING in _plan(only) and only.columns == ["id", "email"]


def _one_file(tmp_path: Path, local_kms: Any) -> Path:
    root = tmp_path / "one"
    root.mkdir()
    table = pa.table({"id": pa.array(range(5), pa.int64()), "email": [f"u{i}@x.org" for i in range(5)]})
    with EncryptedParquetWriter(root / "part-0.parquet", table.schema, EncryptionSpec(columns=["email"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as w:
        w.write_batch(table)
    return root / "part-0.parquet"


def _edit_cell(path: Path, row: int, edit: Any) -> None:
    meta = {k: v for k, v in pq.read_metadata(path).metadata.items() if k != b"ARROW:schema"}
    table = pq.read_table(path)
    cells = table.column("email").to_pylist()
    cells[row] = edit(cells[row])
    table = table.set_column(1, "email", pa.array(cells, pa.binary()))
    pq.write_table(table.replace_schema_metadata(meta), path)


def _failure(spark: Any, path: Path, kms: Any, fast_path: bool) -> Exception:
    with pytest.raises(Exception) as info, errors_translated():
        read_encrypted(spark, str(path.parent), kms_options=kms, fast_path=fast_path).collect()
    return info.value


def test_tampered_cell_fails_the_same_way(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    path = _one_file(tmp_path, local_kms)
    cell = pq.read_table(path).column("email")[2].as_py()
    _edit_cell(path, 2, lambda c: c[:-1] + bytes([c[-1] ^ 1]))
    errors = [_failure(fast, path, local_kms.kms_options, fp) for fp in (True, False)]
    for err in errors:
        assert type(err) is DecryptionError, repr(err)
        assert "authentication failed" in str(err) and "column 'email'" in str(err)
        assert cell.hex() not in str(err) and cell[21:-16].hex() not in str(err)
    assert "part-0.parquet" in str(errors[0])  # the JVM names the file


def test_unknown_dek_fails_the_same_way(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    path = _one_file(tmp_path, local_kms)
    ghost = bytes.fromhex("0badc0ffee0badc0")
    _edit_cell(path, 1, lambda c: c[:1] + ghost + c[9:])
    for fp in (True, False):
        err = _failure(fast, path, local_kms.kms_options, fp)
        assert type(err) is UnknownDataKeyError, repr(err)
        assert ghost.hex() in str(err) and "column 'email'" in str(err)


def test_denied_principal_fails_the_same_way(fast: Any, tmp_path: Path) -> None:
    allowed, denied = allowed_and_denied(tmp_path / "ks")
    out = str(tmp_path / "ds")
    write_encrypted(fast.createDataFrame([(1, "a@b.c")], "id long, email string"), out,
                    key_uri="local://alias/pii", columns=["email"], kms_options=allowed)
    for fp in (True, False):
        with pytest.raises(AccessDeniedError), errors_translated():
            read_encrypted(fast, out, kms_options=denied, fast_path=fp).collect()
    assert read_encrypted(fast, out, kms_options=allowed, fast_path=True).collect()[0]["email"] == "a@b.c"


def test_switches_and_fast_path_true_errors(spark: Any, local_kms: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _one_file(tmp_path, local_kms)
    # The shared session keeps it switched off (spark.spark_kms.sql.fastPath=false): auto uses Python, True says why.
    auto = read_encrypted(spark, str(path.parent), kms_options=local_kms.kms_options)
    assert fastpath.UDF_STRING not in _plan(auto) and "kms_decrypt_cells" in _plan(auto)
    with pytest.raises(ConfigurationError, match="spark.spark_kms.sql.fastPath=false"):
        read_encrypted(spark, str(path.parent), kms_options=local_kms.kms_options, fast_path=True)
    spark.conf.set(fastpath.CONF_SWITCH, "true")
    try:
        assert fastpath.UDF_STRING in _plan(read_encrypted(spark, str(path.parent), kms_options=local_kms.kms_options))
        monkeypatch.setenv(fastpath.ENV_SWITCH, "0")
        with pytest.raises(ConfigurationError, match="SPARK_KMS_FAST_PATH=0"):
            read_encrypted(spark, str(path.parent), kms_options=local_kms.kms_options, fast_path=True)
        assert fastpath.UDF_STRING not in _plan(read_encrypted(spark, str(path.parent),
                                                               kms_options=local_kms.kms_options))
        with pytest.raises(ConfigurationError, match="fast_path must be"):
            read_encrypted(spark, str(path.parent), kms_options=local_kms.kms_options, fast_path="yes")
    finally:
        spark.conf.set(fastpath.CONF_SWITCH, "false")


def test_forget_drops_the_keys(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    path = _one_file(tmp_path, local_kms)
    df = read_encrypted(fast, str(path.parent), kms_options=local_kms.kms_options, fast_path=True)
    assert len(df.collect()) == 5
    assert fastpath.forget(fast) >= 1
    with pytest.raises(ConfigurationError, match="no longer holds"), errors_translated():
        df.collect()
    again = read_encrypted(fast, str(path.parent), kms_options=local_kms.kms_options, fast_path=True)
    assert sorted(r["email"] for r in again.collect()) == [f"u{i}@x.org" for i in range(5)]


def test_spark_conf_and_session_conf() -> None:
    conf = fastpath.spark_conf()
    assert conf["spark.plugins"] == fastpath.PLUGIN_CLASS and conf["spark.jars"].endswith(".jar")
    merged = fastpath.session_conf({"spark.plugins": "com.example.Other", "spark.jars": "/x.jar"})
    assert merged["spark.plugins"] == f"com.example.Other,{fastpath.PLUGIN_CLASS}"
    assert merged["spark.jars"] == f"/x.jar,{conf['spark.jars']}"
    assert fastpath.session_conf(merged) == merged  # idempotent


def test_jvm_marker_translation() -> None:
    """The JVM's FastPathException line inside a Spark error's text becomes the spark_kms class it names; a
    class outside spark_kms.errors, or a marker of another Java class, is not rebuilt."""
    from py4j.protocol import Py4JError

    from spark_kms.spark._errors import translate_spark_error

    def spark_error(line: str) -> Exception:
        return Py4JError("An error occurred while calling o1.collectToPython.\n: org.apache.spark.SparkException: "
                         f"Job aborted: Task 0 failed: {line}\n\tat io.sparkkms.fastpath.DecryptBase.plain(x.java:1)")

    line = ('io.sparkkms.fastpath.FastPathException: spark_kms error: {"class": "UnknownDataKeyError", '
            '"message": "unknown DEK 0badc0ffee0badc0 (not in the key table) at column \'e\\u00e9\'"}')
    err = translate_spark_error(spark_error(line))
    assert type(err) is UnknownDataKeyError and str(err) == "unknown DEK 0badc0ffee0badc0 (not in the key table) " \
        "at column 'eé'"
    assert translate_spark_error(spark_error(line.replace("UnknownDataKeyError", "SystemExit"))) is None
    assert translate_spark_error(spark_error(line.replace("FastPathException", "OtherException"))) is None
