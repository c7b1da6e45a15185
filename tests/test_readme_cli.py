"""The README's "Command line" block, followed literally where it can run on one machine with no cloud.

Every line of the block is taken from README.md (not copied here): lines that need something this machine
does not have (an ``s3://`` bucket, a Spark Connect server at ``spark.internal``, an Iceberg catalog, a
Delta/Iceberg table, a re-encrypt run to abandon) are listed in ``NEEDS_ELSEWHERE`` by a pattern and skipped,
and the test fails if the block gains a line it neither runs nor names there. The others run in order with
``bash`` in a fresh directory and ``HOME`` (the default keystore is ``~/.spark_kms/keystore``), with
``/data/customers`` moved under that directory and a ``landing.csv`` of three people written first.
The encrypted dataset is then read back through the Python API to check what the commands did.

Time: about 1-2 min (three JVM starts: encrypt twice, plus the Spark conf line).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: lines of the block that need a server, a bucket, a table or a run this test does not have
NEEDS_ELSEWHERE = [
    r"sc://",  # a Spark Connect server at spark.internal
    r"s3://",  # a bucket and its credentials
    r"iceberg://|--table-format|/lake/",  # Delta / Iceberg tables (tests/tables runs these verbs)
    r"--abandon RUN",  # needs a pending re-encrypt run named RUN
]


def _command_lines() -> list[str]:
    text = README.read_text()
    section = text.split("### Command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "README: no bash block under 'Command line'"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_command_block_is_accounted_for() -> None:
    lines = _command_lines()
    assert any(line.startswith("spark-kms encrypt") for line in lines)
    for line in lines:
        assert line.startswith("spark-kms "), f"README command line not understood by this test: {line}"


@pytest.mark.spark
@pytest.mark.slow
def test_readme_command_line_walkthrough(tmp_path: Path) -> None:
    from spark_kms.parquet import read_decrypted_table

    work = tmp_path / "work"
    work.mkdir()
    rows = [
        {"id": "1", "name": "Ada", "ssn": "078-05-1120", "email": "ada@example.org"},
        {"id": "2", "name": "Grace", "ssn": "219-09-9999", "email": "grace@example.org"},
        {"id": "3", "name": "Linus", "ssn": "457-55-5462", "email": "linus@example.org"},
    ]
    with open(work / "landing.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dataset = work / "data" / "customers"

    env = dict(os.environ)
    env.update(HOME=str(tmp_path / "home"), SPARK_KMS_PROGRESS="never")
    env.pop("SPARK_KMS_KEYSTORE", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYSPARK_PYTHON"] = sys.executable

    ran = []
    for line in _command_lines():
        if any(re.search(p, line) for p in NEEDS_ELSEWHERE):
            continue
        command = line.replace("/data/customers", str(dataset))
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, f"README line failed: {line}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        ran.append(line.split()[1] if not line.startswith("spark-kms -v") else "-v rewrap")
    assert {"keys", "encrypt", "inspect", "rewrap", "gc", "doctor"} <= set(ran), ran

    # the last encrypt line (--columns ssn, default --mode overwrite, on local[4]) replaced the dataset
    keystore = tmp_path / "home" / ".spark_kms" / "keystore"
    table = read_decrypted_table(str(dataset), kms_options={"local": {"keystore": str(keystore)}})
    got = sorted(table.to_pylist(), key=lambda r: (str(r["id"]), r["ssn"]))
    assert {r["ssn"] for r in got} == {r["ssn"] for r in rows}
    assert {r["email"] for r in got} == {r["email"] for r in rows}
    # the files store the encrypted columns as ciphertext, not the values
    blob = b"".join(p.read_bytes() for p in dataset.rglob("*.parquet"))
    assert b"078-05-1120" not in blob and b"219-09-9999" not in blob
