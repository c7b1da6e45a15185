"""Every public entry point turns a key URI into a provider through the same function.

A key URI without a scheme (``alias/pii`` instead of ``local://alias/pii``) is the most common
slip. Each entry point below must give exactly the error :func:`spark_kms.kms.parse_key_uri`
gives (the Airflow hook's turn is in tests/airflow/test_provider.py). A second, structural test
keeps key URIs from being parsed anywhere else in the package.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spark_kms.errors import ConfigurationError
from spark_kms.kms import parse_key_uri

BAD_URI = "alias/pii"
REPO = Path(__file__).resolve().parents[1]


def _expected() -> str:
    with pytest.raises(ConfigurationError) as exc:
        parse_key_uri(BAD_URI)
    return str(exc.value)


def _message(call: Any) -> str:
    with pytest.raises(Exception) as exc:
        call()
    err: BaseException | None = exc.value
    # Spark wraps errors raised on its Python side; the spark_kms error is in the chain or the text.
    while err is not None and not isinstance(err, ConfigurationError):
        err = err.__cause__ or err.__context__
    return str(err) if err is not None else str(exc.value)


def test_file_layer_gives_the_parser_error(tmp_path: Path, local_kms) -> None:
    from spark_kms.parquet import BatchEncryptor, EncryptedParquetWriter, EncryptionSpec

    schema = pa.schema([("ssn", pa.string())])
    spec = EncryptionSpec(columns=["ssn"])
    expected = _expected()
    assert _message(lambda: BatchEncryptor(spec, BAD_URI, kms_options=local_kms.kms_options)) == expected
    assert _message(lambda: EncryptedParquetWriter(tmp_path / "a.parquet", schema, spec, BAD_URI,
                                                   kms_options=local_kms.kms_options)) == expected


def test_jobs_give_the_parser_error(tmp_path: Path, local_kms) -> None:
    from spark_kms.jobs import reencrypt_dataset, rewrap_dataset
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

    root = tmp_path / "customers"
    root.mkdir()
    table = pa.table({"id": [1, 2], "ssn": ["1", "2"]})
    with EncryptedParquetWriter(root / "part-0.parquet", table.schema, EncryptionSpec(columns=["ssn"]),
                                local_kms.key_uri, kms_options=local_kms.kms_options) as writer:
        writer.write_batch(table)
    expected = _expected()
    assert _message(lambda: rewrap_dataset(root, key_uri=BAD_URI, kms_options=local_kms.kms_options)) == expected
    assert _message(lambda: reencrypt_dataset(root, key_uri=BAD_URI, kms_options=local_kms.kms_options)) == expected


def test_cli_gives_the_parser_error(tmp_path: Path, local_kms) -> None:
    source = tmp_path / "plain.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1], "ssn": ["123"]}), source)
    out = subprocess.run(
        [sys.executable, "-m", "spark_kms.cli", "encrypt", str(source), str(tmp_path / "enc"), "--key-uri", BAD_URI,
         "--columns", "ssn", "--keystore", str(local_kms.keystore_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert _expected() in out.stderr
    assert "Traceback" not in out.stderr


def test_spark_writer_sql_and_ml_give_the_parser_error(spark: Any, tmp_path: Path, local_kms) -> None:
    from spark_kms.spark import ColumnEncryptor, register_functions

    expected = _expected()
    df = spark.createDataFrame([(1, "123-45-6789")], "id int, ssn string")
    write = (df.write.format("spark_kms").mode("overwrite").option("key_uri", BAD_URI).option("columns", "ssn")
             .option("kms_options", json.dumps(local_kms.kms_options)))
    assert expected in _message(lambda: write.save(str(tmp_path / "out")))
    assert expected in _message(lambda: register_functions(spark, key_uri=BAD_URI, key_registry=str(tmp_path / "reg"),
                                                           kms_options=local_kms.kms_options))
    encryptor = ColumnEncryptor(inputCols=["ssn"], keyUri=BAD_URI, kmsOptions=local_kms.kms_options)
    assert expected in _message(lambda: encryptor.transform(df).collect())


def _string_constants_with_scheme_separator(path: Path) -> list[int]:
    """Lines of ``path`` that split or partition a string on ``"://"``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("split", "partition", "rsplit", "rpartition")
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "://"):
            lines.append(node.lineno)
    return lines


def test_no_module_but_the_registry_parses_key_uris() -> None:
    offenders = {}
    for root in ("spark_kms", "airflow_plugins", "dags"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "spark_kms/kms/registry.py" or rel.startswith("spark_kms/testing/"):
                continue
            found = _string_constants_with_scheme_separator(path)
            if found:
                offenders[rel] = found
    assert offenders == {}, f"key URIs parsed outside spark_kms/kms/registry.py: {offenders}"
