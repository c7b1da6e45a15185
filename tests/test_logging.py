"""Library logging: silent by default, informative when asked, never a secret or a value."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from spark_kms.jobs import inspect_dataset, rewrap_dataset
from spark_kms.kms import KmsConfig
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table

SSNS = ["123-45-6789", "987-65-4321"]


def _dataset(tmp_path: Path) -> tuple[Path, KmsConfig, bytes]:
    root_key = bytes(range(100, 132))
    keystore = tmp_path / "keystore"
    LocalKms(keystore, root_key=root_key).create_key(alias="alias/pii")
    kms = KmsConfig({"local": {"keystore": str(keystore), "root_key": base64.b64encode(root_key).decode()}})
    root = tmp_path / "customers"
    (root / "day=1").mkdir(parents=True)
    table = pa.table({"id": [1, 2], "ssn": SSNS})
    with EncryptedParquetWriter(root / "day=1" / "part-0.parquet", table.schema, EncryptionSpec(columns=["ssn"]),
                                "local://alias/pii", kms_options=kms) as writer:
        writer.write_batch(table)
    return root, kms, root_key


def test_the_library_prints_nothing_by_default(tmp_path: Path) -> None:
    script = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from test_logging import _dataset
from spark_kms.jobs import rewrap_dataset
root, kms, _ = _dataset(Path({str(tmp_path)!r}))
rewrap_dataset(root, kms_options=kms)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "" and out.stderr == ""


def test_debug_logs_tell_what_happened_and_nothing_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, kms, root_key = _dataset(tmp_path)
    caplog.set_level(logging.DEBUG, logger="spark_kms")
    LocalKms(tmp_path / "keystore", root_key=root_key).rotate_key("alias/pii")
    rewrap_dataset(root, kms_options=kms)
    read_decrypted_table(root / "day=1", kms_options=kms)
    inspect_dataset(root, kms_options=kms)
    text = caplog.text
    assert "rewrap run" in text and "succeeded" in text  # what the job did
    assert "KMS ReEncrypt on local://alias/pii" in text  # which KMS call, on which key
    assert "KMS Decrypt on local://alias/pii" in text
    assert "wrote the manifest of" in text
    secrets = [base64.b64encode(root_key).decode(), root_key.hex(), *SSNS]
    assert not [s for s in secrets if s in text]
    assert "root_key" not in text or "'root_key': '***'" in text
