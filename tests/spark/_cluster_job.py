"""Run by test_cluster.py as the driver of an app on a local standalone cluster:

    python _cluster_job.py MASTER_URL WORKDIR

Encrypts a few thousand rows with the data source, decrypts them with read_encrypted, and
writes WORKDIR/report.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pyspark.sql import functions as F

from spark_kms.kms.local import LocalKms
from spark_kms.spark import read_encrypted, write_encrypted
from spark_kms.spark.session import local_session


def main(master: str, workdir: Path) -> None:
    ks = workdir / "keystore"
    LocalKms(ks).create_key(alias="alias/pii")
    opts = {"local": {"keystore": str(ks)}}
    spark = local_session(master, "spark_kms-cluster", conf={
        "spark.executor.memory": "512m", "spark.cores.max": "2", "spark.executor.cores": "1",
    })
    df = spark.range(0, 3000, numPartitions=4).selectExpr(
        "id", "concat('user', id, '@example.org') as email", "format_string('%09d', id) as ssn")
    result = write_encrypted(df, str(workdir / "out"), key_uri="local://alias/pii", columns=["email", "ssn"],
                             kms_options=opts)
    back = read_encrypted(spark, str(workdir / "out"), kms_options=opts)
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    report = {
        "result": result.to_dict(),
        "diff": back.exceptAll(df).count() + df.exceptAll(back).count(),
        "count": back.count(),
        "executor_hosts": executors,
        "decrypted_sample": back.filter(F.col("id") == 42).first().asDict(),
    }
    spark.stop()
    (workdir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
