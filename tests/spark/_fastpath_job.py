"""Run by test_fastpath_secrets.py as the driver of an app (local[2] or a standalone cluster):

    python _fastpath_job.py MASTER_URL WORKDIR

Starts its session with spark_session() (which adds the fast path's plugin and jar) and an event log in
WORKDIR/events, logs spark_kms and py4j at DEBUG to stderr, writes a dataset, reads it with the fast path
(checking it was used and equals the Python path), forgets its keys (the same DataFrame must then fail, a new
read work) and writes WORKDIR/report.json and WORKDIR/explain.txt.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from spark_kms.errors import ConfigurationError
from spark_kms.kms.local import LocalKms
from spark_kms.spark import errors_translated, fastpath, read_encrypted, write_encrypted
from spark_kms.spark.session import spark_session


def job_session(master: str, workdir: Path, app: str) -> tuple[Any, dict[str, Any]]:
    """DEBUG logs to stderr, a local KMS key alias/pii under WORKDIR/keystore, and a session of ``app`` (through
    spark_session(): the fast path's plugin, extension and jar) with its event log in WORKDIR/events; returns the
    session and the KMS options. Shared with _fastpath_write_job.py."""
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    ks = workdir / "keystore"
    LocalKms(ks).create_key(alias="alias/pii")
    (workdir / "events").mkdir()
    conf = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(workdir / "events"),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false",
            "spark.executor.memory": "512m", "spark.cores.max": "2", "spark.executor.cores": "1"}
    spark = spark_session(master, app, conf=conf)
    spark.sparkContext.setLogLevel("INFO")
    return spark, {"local": {"keystore": str(ks)}}


def main(master: str, workdir: Path) -> None:
    spark, opts = job_session(master, workdir, "spark_kms-fastpath")
    df = spark.range(0, 2000, numPartitions=4).selectExpr(
        "id", "concat('user', id, '@example.org') as email", "encode(cast(id * 3 as string), 'utf-8') as blob")
    out = str(workdir / "out")
    write_encrypted(df, out, key_uri="local://alias/pii", columns=["email", "blob"], kms_options=opts)
    fast = read_encrypted(spark, out, kms_options=opts, fast_path=True)
    slow = read_encrypted(spark, out, kms_options=opts, fast_path=False)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        fast.explain(mode="extended")
    (workdir / "explain.txt").write_text(text.getvalue())
    with errors_translated():
        fast_rows = sorted(tuple(r) for r in fast.collect())
        slow_rows = sorted(tuple(r) for r in slow.collect())
        sample = fast.filter("id = 42").first().asDict()
    plugin = spark.sparkContext._jvm.io.sparkkms.fastpath.FastPathPlugin
    held_after = plugin.executorKeySetsHeld()  # this JVM's (local mode: the executor's) keys, once the tasks ended
    forgotten = fastpath.forget(spark)
    try:  # the same DataFrame, once the driver dropped its keys: no executor may decrypt it any more
        with errors_translated():
            fast.collect()
        after_forget = "no error"
    except ConfigurationError as exc:
        after_forget = str(exc)
    again = read_encrypted(spark, out, kms_options=opts, fast_path=True)
    with errors_translated():
        again_rows = sorted(tuple(r) for r in again.collect())
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    report = {
        "fast_used": fastpath.UDF_STRING in text.getvalue() and fastpath.UDF_BINARY in text.getvalue(),
        "columnar_used": "SparkKmsDecryptColumnar" in text.getvalue(),
        "plugins": spark.sparkContext.getConf().get("spark.plugins", ""),
        "equal": fast_rows == slow_rows,
        "count": len(fast_rows),
        "sample": {"id": sample["id"], "email": sample["email"]},
        "executor_hosts": executors,
        "app_id": spark.sparkContext.applicationId,
        "held_after": held_after,
        "forgotten": forgotten,
        "after_forget": after_forget,
        "again_equal": again_rows == slow_rows,
    }
    spark.stop()
    (workdir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
