"""Run by test_fastpath_write.py as the driver of an app (local[2] or a standalone cluster):

    python _fastpath_write_job.py MASTER_URL WORKDIR

Starts its session with spark_session() (the fast path's plugin and jar) and an event log in WORKDIR/events, logs
spark_kms and py4j at DEBUG to stderr, writes a dataset on the JVM write path (executors take their data keys
over the plugin's RPC on a cluster), reads it back on the Python path and writes WORKDIR/report.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _fastpath_job import job_session  # this script's directory is on sys.path when run as a script

from spark_kms.spark import errors_translated, read_encrypted, write_encrypted


def main(master: str, workdir: Path) -> None:
    spark, opts = job_session(master, workdir, "spark_kms-fastpath-write")
    df = spark.range(0, 2000, numPartitions=4).selectExpr(
        "id", "concat('user', id, '@example.org') as email", "encode(cast(id * 3 as string), 'utf-8') as blob",
        "cast(id % 7 as int) as n", "id % 2 = 0 as flag")
    out = str(workdir / "out")
    with errors_translated():
        result = write_encrypted(df, out, key_uri="local://alias/pii", columns=["email", "blob", "n", "flag"],
                                 kms_options=opts, fast_path=True)
        back = sorted(tuple(r) for r in read_encrypted(spark, out, kms_options=opts, fast_path=False).collect())
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    report = {
        "engine": getattr(result, "engine", "python"),
        "files": len(result.files),
        "deks": len(result.deks),
        "equal": back == sorted(tuple(r) for r in df.collect()),
        "count": len(back),
        "executor_hosts": executors,
        "app_id": spark.sparkContext.applicationId,
    }
    spark.stop()
    (workdir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
