"""Run by test_pkcs11_cluster.py as the driver of an app on a local standalone cluster:

    python _pkcs11_cluster_job.py MASTER_URL WORKDIR KEY_URI OPTIONS_JSON

Encrypts rows under a PKCS#11 (SoftHSM2) master key with the data source, decrypts them with
read_encrypted, and writes WORKDIR/report.json. ``SOFTHSM2_CONF`` reaches the executors through
``spark.executorEnv`` (the workers were started without it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pyspark.sql import functions as F

from spark_kms.spark import read_encrypted, write_encrypted
from spark_kms.spark.session import local_session


def _executor_env(_: object) -> list[str]:
    return [f"{os.getpid()}:{os.environ.get('SOFTHSM2_CONF', '')}"]


def main(master: str, workdir: Path, key_uri: str, options: dict) -> None:
    opts = {"pkcs11": options}
    spark = local_session(master, "spark_kms-pkcs11-cluster", conf={
        "spark.executor.memory": "512m", "spark.cores.max": "2", "spark.executor.cores": "1",
        "spark.executorEnv.SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"],
    })
    df = spark.range(0, 2000, numPartitions=4).selectExpr(
        "id", "concat('user', id, '@example.org') as email", "format_string('%09d', id) as ssn")
    result = write_encrypted(df, str(workdir / "out"), key_uri=key_uri, columns=["email", "ssn"], kms_options=opts)
    back = read_encrypted(spark, str(workdir / "out"), kms_options=opts)
    envs = spark.sparkContext.parallelize(range(4), 4).mapPartitions(_executor_env).collect()
    report = {
        "result": result.to_dict(),
        "diff": back.exceptAll(df).count() + df.exceptAll(back).count(),
        "count": back.count(),
        "executor_softhsm2_conf": sorted({e.split(":", 1)[1] for e in envs}),
        "decrypted_sample": back.filter(F.col("id") == 42).first().asDict(),
    }
    spark.stop()
    (workdir / "report.json").write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
