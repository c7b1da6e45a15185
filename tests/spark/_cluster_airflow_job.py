"""Run by test_cluster.py: an Airflow ``EncryptDatasetOperator`` whose ``spark_conn_id``
names a ``spark`` connection to the standalone master, executed as a worker would.

    python _cluster_airflow_job.py MASTER_URL WORKDIR

Writes WORKDIR/report.json with the master the job ran on, its summary and a check of the data.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path


def main(master: str, workdir: Path) -> None:
    host, port = master.removeprefix("spark://").rsplit(":", 1)
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow_home")
    os.environ["AIRFLOW_CONN_SPARK_CLUSTER"] = json.dumps(
        {"conn_type": "spark", "host": f"spark://{host}", "port": int(port)})

    from airflow_plugins.operators.spark_kms import EncryptDatasetOperator
    from spark_kms.kms.local import LocalKms
    from spark_kms.parquet import read_decrypted_table

    keystore = workdir / "keystore"
    LocalKms(keystore).create_key(alias="alias/pii")
    rows = [{"id": str(i), "email": f"user{i}@example.org", "ssn": f"{i:09d}"} for i in range(500)]
    landing = workdir / "landing.csv"
    with landing.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "email", "ssn"])
        writer.writeheader()
        writer.writerows(rows)
    kms_options = {"local": {"keystore": str(keystore)}}
    operator = EncryptDatasetOperator(
        task_id="encrypt", source=str(landing), destination=str(workdir / "out"), columns=["email", "ssn"],
        key_uri="local://alias/pii", source_format="csv", kms_options=kms_options,
        spark_conn_id="spark_cluster", job_run_id="cluster-run",
        spark_conf={"spark.executor.memory": "512m", "spark.cores.max": "2", "spark.executor.cores": "1"},
    )
    summary = operator.execute({})
    spark = operator.spark_session()  # the session the job ran on
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    decrypted = read_decrypted_table(workdir / "out", kms_options=kms_options).to_pylist()
    report = {
        "master": spark.sparkContext.master,
        "executor_hosts": executors,
        "summary": summary,
        "equal": sorted((str(r["id"]), r["email"], r["ssn"]) for r in decrypted)
        == sorted((r["id"], r["email"], r["ssn"]) for r in rows),
    }
    spark.stop()
    (workdir / "report.json").write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
