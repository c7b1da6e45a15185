"""Run as a subprocess by test_datasource_retries.py: a ``local[2,3]`` session (task retries on).

    python _retry_job.py WORKDIR

Writes ``WORKDIR/report.json`` with what happened; the test asserts on it. Sample PII values
all start with ``PIISECRET`` so the test can grep for leaks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import functions as F

from spark_kms.kms.local import LocalKms
from spark_kms.spark import read_encrypted, write_encrypted
from spark_kms.spark.session import local_session


def _hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _failing(partitions: set[int], every_attempt: bool):
    def fn(batches):
        tc = TaskContext.get()
        doomed = tc.partitionId() in partitions and (every_attempt or tc.attemptNumber() == 0)
        for i, batch in enumerate(batches):
            if doomed and i == 2:  # after two batches reached the writer: a half-written staged file
                raise RuntimeError(f"injected failure: partition {tc.partitionId()} attempt {tc.attemptNumber()}")
            yield batch
        if doomed:
            raise RuntimeError(f"injected failure: partition {tc.partitionId()} attempt {tc.attemptNumber()}")

    return fn


def main(workdir: Path) -> None:
    ks = workdir / "keystore"
    LocalKms(ks).create_key(alias="alias/pii")
    opts = {"local": {"keystore": str(ks)}}
    key_uri = "local://alias/pii"
    spark = local_session(
        "local[2,3]", "spark_kms-retries",
        conf={"spark.local.dir": str(workdir / "spark-local"), "spark.sql.execution.arrow.maxRecordsPerBatch": "50"},
    )
    df = spark.range(0, 2000, numPartitions=4).selectExpr(
        "id", "concat('PIISECRET-', id, '@example.org') as email", "concat('PIISECRET-ssn-', id) as ssn"
    )
    checksum = F.sum(F.xxhash64("id", "email", "ssn").cast("decimal(38,0)")).cast("string").alias("h")
    expected = df.agg(F.count("*").alias("n"), checksum).first()
    out = workdir / "out"
    report: dict = {}

    first = write_encrypted(df.limit(100), str(out), key_uri=key_uri, columns=["email", "ssn"], kms_options=opts)
    report["v1_files"] = first.files
    report["v1_hashes"] = _hashes(out)

    doomed = df.mapInArrow(_failing({1}, every_attempt=True), df.schema)
    try:
        write_encrypted(doomed, str(out), key_uri=key_uri, columns=["email", "ssn"], kms_options=opts)
        report["failed_job_error"] = None
    except Exception as exc:
        report["failed_job_error"] = f"{type(exc).__name__}: {exc}"
    report["after_failure_hashes"] = _hashes(out)

    flaky = df.mapInArrow(_failing({1, 2}, every_attempt=False), df.schema)
    result = write_encrypted(flaky, str(out), key_uri=key_uri, columns=["email", "ssn"], kms_options=opts)
    report["retry_result"] = result.to_dict()
    report["after_retry_files"] = sorted(_hashes(out))
    back = read_encrypted(spark, str(out), kms_options=opts)
    got = back.agg(F.count("*").alias("n"), checksum).first()
    report["expected"] = [expected["n"], expected["h"]]
    report["got"] = [got["n"], got["h"]]
    report["distinct_ids"] = back.select("id").distinct().count()
    spark.stop()
    (workdir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    pa.set_cpu_count(1)
    main(Path(sys.argv[1]))
