"""Build a local SparkSession with the settings spark_kms relies on.

Why each setting:

* ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON`` = ``sys.executable``: Python
  workers (UDFs, data source writers, planner workers) must run the interpreter
  spark_kms is installed in, or they import another environment.
* ``spark.ui.enabled=false``: no HTTP port, nothing listening beyond what Spark needs.
* ``spark.sql.shuffle.partitions`` small: tests and demos move little data, and the
  machine has two cores.
* ``spark.sql.execution.arrow.pyspark.enabled``: Arrow transfers for ``toPandas``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["DEFAULT_CONF", "local_session", "set_python_env"]

DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.session.timeZone": "UTC",
}


def set_python_env() -> None:
    """Point Spark's Python workers at this interpreter (must happen before the JVM starts)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # Bind to loopback: the JVM otherwise resolves the host name and may pick another interface.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def local_session(
    master: str = "local[2]",
    app_name: str = "spark_kms",
    *,
    conf: Mapping[str, Any] | None = None,
    register: bool = True,
) -> SparkSession:
    """A SparkSession on ``master`` with :data:`DEFAULT_CONF` (overridden by ``conf``).

    ``register=True`` also registers the ``spark_kms`` data source.
    Reuses an active session with the same master if there is one (Spark allows
    one SparkContext per JVM).
    """
    from pyspark.sql import SparkSession

    set_python_env()
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**DEFAULT_CONF, **dict(conf or {})}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if register:
        from spark_kms.spark.datasource import register as _register

        _register(spark)
    return spark
