"""The JVM write path of write_encrypted (spark_kms.spark.fastpath_write) against the Python data source, on the
shared session (its fast-path plugin switched on by the ``fast`` fixture)."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import KEY_TABLE_METADATA_KEY, CellDecryptor, KeyTable, column_binding
from spark_kms.crypto import _fastgcm as fastgcm
from spark_kms.errors import AccessDeniedError, ConfigurationError, JobError
from spark_kms.kms import kms_call_counts
from spark_kms.parquet._types import encode_values
from spark_kms.parquet.keys import DekResolver
from spark_kms.parquet.reader import read_decrypted_table
from spark_kms.spark import errors_translated, fastpath, fastpath_write
from spark_kms.spark.io import read_encrypted, write_encrypted
from tests.spark._helpers import allowed_and_denied, data_files, files_under, sorted_rows
from tests.spark.test_cluster import cluster  # noqa: F401 - the module-scoped standalone cluster fixture

pytestmark = [pytest.mark.spark]

SCHEMA = ("id long, s string, b binary, t tinyint, sm smallint, i int, n long, f boolean, plain string")
ENCRYPTED = ["s", "b", "t", "sm", "i", "n", "f"]
BIG = "ü" * 3000 + "x" * 2000  # > 4 KiB of UTF-8
ROWS = [
    (1, "a@b.c", b"\x00\x01", 1, 300, 70000, 2**40, True, "p1"),
    (2, None, None, None, None, None, None, None, None),
    (3, "", b"", 0, 0, 0, 0, False, ""),
    (4, "名前 – ünïcödé 😀", bytes(range(256)), -128, -32768, -(2**31), -(2**63), True, "p4"),
    (5, BIG, BIG.encode() * 2, 127, 32767, 2**31 - 1, 2**63 - 1, False, "p5"),
] + [(i, f"user{i}@example.org", i.to_bytes(4, "big"), i % 100, i, -i, i * 1000003, i % 3 == 0, f"p{i}")
     for i in range(6, 60)]


def _frame(spark: Any, partitions: int = 3) -> Any:
    return spark.createDataFrame(ROWS, SCHEMA).repartition(partitions)


def _footer_tables(root: Path) -> dict[str, KeyTable]:
    out = {}
    for rel in data_files(root):
        meta = pq.read_metadata(root / rel).metadata
        out[rel] = KeyTable.from_json(meta[KEY_TABLE_METADATA_KEY.encode()].decode(), where=rel)
    return out


def _keys(root: Path, kms: Any) -> dict[bytes, bytes]:
    """Every data key of the dataset's footers, unwrapped (test only)."""
    out = {}
    for table in _footer_tables(root).values():
        resolver = DekResolver(table.deks, kms_options=kms)
        for dek_id in table.deks:
            out[bytes.fromhex(dek_id)] = bytes(resolver.lookup(bytes.fromhex(dek_id)))
    return out


def _read(spark: Any, root: Path, kms: Any) -> Any:
    """The Python path's read (the read fast path is tested in test_fastpath.py)."""
    return read_encrypted(spark, str(root), kms_options=kms, fast_path=False)


def _engine(result: Any) -> str:
    return getattr(result, "engine", "python")


def test_jvm_write_equals_python_write(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    """Values, nulls, empty strings, unicode, > 4 KiB values, every integer width, booleans and binary: the JVM
    path's dataset reads back equal through read_encrypted, the pyarrow reader and to the Python path's write;
    its footers carry valid key tables with the Python path's column specs, one distinct data key per file."""
    df = _frame(fast)
    jvm_root, py_root = tmp_path / "jvm", tmp_path / "py"
    kw = {"key_uri": local_kms.key_uri, "columns": ENCRYPTED, "kms_options": local_kms.kms_options}
    before = kms_call_counts()
    jvm = write_encrypted(df, str(jvm_root), fast_path=True, **kw)
    generated = kms_call_counts().get("local:GenerateDataKey", 0) - before.get("local:GenerateDataKey", 0)
    py = write_encrypted(df, str(py_root), fast_path=False, **kw)
    assert _engine(jvm) == "jvm" and _engine(py) == "python"
    assert jvm.rows == py.rows == len(ROWS) and jvm.mode == "overwrite"
    assert jvm.files == sorted(data_files(jvm_root)) and not (jvm_root / "_spark_kms_staging").exists()
    assert set(files_under(jvm_root)) == set(jvm.files), "no _SUCCESS, .crc or staging left behind"
    # GenerateDataKey = the pool (tasks + spare), all made on the driver; only used keys are in the footers
    assert jvm.kms_calls == {"local:GenerateDataKey": generated}
    assert len(jvm.files) <= generated <= len(jvm.files) + 2 + 3 // 10 + 3
    tables = _footer_tables(jvm_root)
    deks = [dek for t in tables.values() for dek in t.deks]
    assert len(deks) == len(set(deks)) == len(jvm.files) and sorted(deks) == sorted(jvm.deks)
    py_tables = _footer_tables(py_root)
    assert {t.columns[c] for t in tables.values() for c in ENCRYPTED} == \
        {t.columns[c] for t in py_tables.values() for c in ENCRYPTED}
    context = next(iter(tables.values())).deks[deks[0]].encryption_context
    assert context["spark_kms.dataset"] == str(jvm_root) and context["spark_kms.columns"] == ",".join(sorted(ENCRYPTED))
    assert context["spark_kms.job_id"] == jvm.job_id

    expected = sorted_rows(df)
    assert sorted_rows(_read(fast, jvm_root, local_kms.kms_options)) == expected
    assert sorted_rows(_read(fast, py_root, local_kms.kms_options)) == expected
    table = read_decrypted_table(str(jvm_root), kms_options=local_kms.kms_options).sort_by("id")
    assert table.column("s").to_pylist() == [r[1] for r in sorted(ROWS)]
    assert table.column("b").to_pylist() == [r[2] for r in sorted(ROWS)]
    assert table.column("t").to_pylist() == [r[3] for r in sorted(ROWS)]
    assert table.column("f").to_pylist() == [r[7] for r in sorted(ROWS)]


def test_cells_nonces_and_plaintext_encoding(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    """Every cell names its file's data key, every (key, nonce) is unique, and the plaintext bytes of integers and
    booleans are exactly the encoding of docs/FORMAT.md section 6 (Spark's cast to string = the Python path's)."""
    root = tmp_path / "ds"
    write_encrypted(_frame(fast, 4), str(root), key_uri=local_kms.key_uri, columns=ENCRYPTED,
                    kms_options=local_kms.kms_options, fast_path=True)
    keys = _keys(root, local_kms.kms_options)
    decryptor = CellDecryptor(lambda dek_id: keys[dek_id])
    nonces = []
    plain: dict[str, dict[int, bytes | None]] = {c: {} for c in ENCRYPTED}
    for rel, kt in _footer_tables(root).items():
        data = pq.read_table(root / rel)
        (dek,) = kt.deks
        for column in ENCRYPTED:
            for row_id, cell in zip(data.column("id").to_pylist(), data.column(column).to_pylist(), strict=True):
                if cell is None:
                    plain[column][row_id] = None
                    continue
                assert cell[0] == 0x11 and cell[1:9].hex() == dek
                nonces.append(cell[1:21])
                plain[column][row_id] = decryptor.decrypt(cell, column, column_binding(kt.columns[column]))
        md = pq.read_metadata(root / rel)
        for i in range(md.num_columns):
            col = md.row_group(0).column(i)
            if col.path_in_schema in ENCRYPTED:
                assert not col.is_stats_set or col.statistics is None or not col.statistics.has_min_max
                assert "RLE_DICTIONARY" not in col.encodings and "PLAIN_DICTIONARY" not in col.encodings
    assert len(nonces) == len(set(nonces)) > 0
    arrow_types = {"s": pa.string(), "b": pa.binary(), "t": pa.int8(), "sm": pa.int16(), "i": pa.int32(),
                   "n": pa.int64(), "f": pa.bool_()}
    for index, column in enumerate(ENCRYPTED, start=1):
        ids = sorted(r[0] for r in ROWS)
        values = {r[0]: r[index] for r in ROWS}
        expected = encode_values(pa.array([values[i] for i in ids], arrow_types[column]))
        assert [plain[column][i] for i in ids] == expected, column


def test_auto_falls_back_and_true_refuses(fast: Any, spark: Any, local_kms: Any, tmp_path: Path) -> None:
    df = _frame(fast, 2)
    kw = {"key_uri": local_kms.key_uri, "kms_options": local_kms.kms_options}
    auto = write_encrypted(df, str(tmp_path / "a"), columns=["s"], deterministic_columns=["plain"], fast_path="auto",
                           **kw)
    assert _engine(auto) == "python"
    with pytest.raises(ConfigurationError, match="JVM write path cannot be used: .*deterministic_columns"):
        write_encrypted(df, str(tmp_path / "b"), columns=["s"], deterministic_columns=["plain"], fast_path=True, **kw)
    with pytest.raises(ConfigurationError, match="max_cells_per_dek"):
        write_encrypted(df, str(tmp_path / "c"), columns=["s"], max_cells_per_dek=1000, fast_path=True, **kw)
    dated = fast.createDataFrame([(1, "x")], "id long, s string").selectExpr("id", "current_date() as d", "s")
    assert _engine(write_encrypted(dated, str(tmp_path / "d"), columns=["d", "s"], fast_path="auto", **kw)) == "python"
    assert _engine(write_encrypted(df, str(tmp_path / "e"), columns=["s"], fast_path=False, **kw)) == "python"
    assert _engine(write_encrypted(df, str(tmp_path / "e2"), columns=["s"], **kw)) == "python", "default: Python"
    for p in "bc":
        assert not (tmp_path / p).exists() or not data_files(tmp_path / p)
    spark.conf.set(fastpath.CONF_SWITCH, "false")  # the session's switch: auto takes the Python path
    assert _engine(write_encrypted(df, str(tmp_path / "f"), columns=["s"], fast_path="auto", **kw)) == "python"
    with pytest.raises(ConfigurationError, match="fastPath=false"):
        write_encrypted(df, str(tmp_path / "g"), columns=["s"], fast_path=True, **kw)


def test_append_overwrite_and_partition_by(fast: Any, local_kms: Any, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    kw = {"key_uri": local_kms.key_uri, "columns": ["s", "n"], "kms_options": local_kms.kms_options,
          "fast_path": True}
    first = fast.createDataFrame([(1, "a", 10, "eu"), (2, "b", 20, "us")], "id long, s string, n long, region string")
    second = fast.createDataFrame([(3, "c", 30, "eu"), (4, None, None, None)], "id long, s string, n long, "
                                  "region string")
    write_encrypted(first, str(root), partition_by=["region"], **kw)
    appended = write_encrypted(second, str(root), partition_by=["region"], mode="append", **kw)
    assert appended.mode == "append" and _engine(appended) == "jvm"
    assert all(f.startswith("region=") for f in data_files(root))
    assert "region=__HIVE_DEFAULT_PARTITION__" in {f.split("/")[0] for f in data_files(root)}
    got = sorted_rows(_read(fast, root, local_kms.kms_options).select("id", "s", "n", "region"))
    assert got == [(1, "a", 10, "eu"), (2, "b", 20, "us"), (3, "c", 30, "eu"), (4, None, None, None)]
    py_root = tmp_path / "py"
    write_encrypted(first.unionByName(second), str(py_root), partition_by=["region"],
                    **{**kw, "fast_path": False})
    assert {os.path.dirname(f) for f in data_files(root)} == {os.path.dirname(f) for f in data_files(py_root)}
    write_encrypted(second.limit(1), str(root), **kw)  # overwrite: only the new rows
    assert sorted_rows(_read(fast, root, local_kms.kms_options)) == [(3, "c", 30, "eu")]


def test_failing_write_leaves_previous_data(fast: Any, tmp_path: Path) -> None:
    """A denied principal fails on the driver (GenerateDataKey of the pool), a failing task fails the job: either
    way the previous dataset is intact and no staging is left."""
    allowed, denied = allowed_and_denied(tmp_path / "ks")
    root = tmp_path / "ds"
    df = _frame(fast, 2)
    write_encrypted(df, str(root), key_uri="local://alias/pii", columns=ENCRYPTED, kms_options=allowed,
                    fast_path=True)
    before = {f: (root / f).read_bytes() for f in files_under(root)}
    with pytest.raises(AccessDeniedError):
        write_encrypted(df, str(root), key_uri="local://alias/pii", columns=ENCRYPTED, kms_options=denied,
                        fast_path=True)
    assert {f: (root / f).read_bytes() for f in files_under(root)} == before
    from pyspark.sql import functions as F  # noqa: N812

    failing = df.withColumn("s", F.when(F.col("id") == 40, F.raise_error(F.lit("boom"))).otherwise(F.col("s")))
    with pytest.raises(Exception, match="boom"):
        write_encrypted(failing, str(root), key_uri="local://alias/pii", columns=ENCRYPTED, kms_options=allowed,
                        fast_path=True)
    assert {f: (root / f).read_bytes() for f in files_under(root)} == before
    assert sorted_rows(_read(fast, root, allowed)) == sorted_rows(df)
    assert fast.sparkContext._jvm.io.sparkkms.fastpath.write.WriteKeyPool.forgetAll() == 0, "pools forgotten"


def test_exhausted_pool(fast: Any, local_kms: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More task attempts than keys: the task fails with a clear error; "auto" writes on the Python path."""
    monkeypatch.setattr(fastpath_write, "_task_count", lambda df: 0)  # a pool of 2 keys for 4 tasks
    df = _frame(fast, 4)
    kw = {"key_uri": local_kms.key_uri, "columns": ["s"], "kms_options": local_kms.kms_options}
    with pytest.raises(JobError, match="data-key pool is exhausted"), errors_translated():
        write_encrypted(df, str(tmp_path / "a"), fast_path=True, **kw)
    assert not data_files(tmp_path / "a") and not (tmp_path / "a" / "_spark_kms_staging").exists()
    result = write_encrypted(df, str(tmp_path / "b"), fast_path="auto", **kw)
    assert _engine(result) == "python" and result.rows == len(ROWS)


def test_no_key_in_plan_or_log(fast: Any, local_kms: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ds"
    with caplog.at_level(logging.DEBUG):
        result = write_encrypted(_frame(fast, 2), str(root), key_uri=local_kms.key_uri, columns=ENCRYPTED,
                                 kms_options=local_kms.kms_options, fast_path=True)
    assert _engine(result) == "jvm"
    # the read side's native library (make install builds it into the jar; libsodium where installed, as in
    # this process's extension), not the JCE fallback
    implementation = fast.sparkContext._jvm.io.sparkkms.fastpath.write.TaskEncryptor.implementation()
    assert implementation == fastgcm.GCM_BACKEND, implementation
    assert any("on the JVM path" in r.getMessage() for r in caplog.records)
    executions = fast._jsparkSession.sharedState().statusStore().executionsList()
    plans = [executions.apply(i).physicalPlanDescription() for i in range(executions.size())]
    write_plan = next(p for p in reversed(plans) if fastpath_write.UDF_ENCRYPT in p)
    text = "\n".join([write_plan, caplog.text])
    keys = _keys(root, local_kms.kms_options)
    assert keys
    for key in keys.values():
        for form in (key.hex(), key.hex().upper(), base64.b64encode(key).decode(), key.decode("latin-1")):
            assert form not in text


JOB = Path(__file__).with_name("_fastpath_write_job.py")


@pytest.mark.cluster
@pytest.mark.slow
def test_jvm_write_on_standalone_cluster_leaks_no_key(cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    """Executors in their own JVMs take their data keys over the plugin's RPC; no key in the event log, the driver
    log or the executors' logs."""
    import subprocess
    import sys

    from spark_kms.parquet.dataset import Dataset

    url, env = cluster
    proc = subprocess.run([sys.executable, str(JOB), url, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["engine"] == "jvm" and report["equal"] is True and report["count"] == 2000
    assert report["executor_hosts"] == 2 and report["deks"] == report["files"] >= 2
    work = Path(env["SPARK_WORKER_DIR"]).parent
    blobs = {"driver log": (proc.stdout + proc.stderr).encode()}
    for root in (tmp_path / "events", work):
        blobs.update({str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()
                      and (root != work or (report["app_id"] in str(p) and p.name in ("stderr", "stdout")))})
    assert len(blobs) >= 4
    table = Dataset.open(str(tmp_path / "out")).key_table()
    resolver = DekResolver(table.deks, kms_options={"local": {"keystore": str(tmp_path / "keystore")}})
    for dek_id in table.deks:
        key = bytes(resolver.lookup(bytes.fromhex(dek_id)))
        for form in (key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)):
            assert not [where for where, blob in blobs.items() if form in blob], dek_id
