"""A sensor that waits until encrypted datasets fall behind their KMS key.

:class:`DatasetRotationSensor` pokes :func:`spark_kms.jobs.needs_rotation` for each path
(one DescribeKey per distinct key per poke, no Decrypt) and succeeds when at least one
dataset needs rotating: a data key wrapped by a version other than its key's primary
version, older than ``max_age``, or wrapped by a version below ``min_version``. The
paths that need it go to XCom, ready for ``ReencryptDatasetOperator.partial(...).expand(path=...)``.
With ``spark_conn_id`` (an Airflow ``spark`` connection, e.g. host ``sc://host:15002``) each poke
inspects through that Spark session: over Spark Connect, on the server's side, where the data is.

A path may be a Delta or Iceberg table (its root, or ``iceberg://<catalog>/<namespace>.<table>`` with
``catalog_properties``): its current snapshot is inspected through :func:`spark_kms.tables.inspect_table`
(key manifest applied), from the files' footers or ``_spark_kms_keys`` column (docs/TABLES.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_plugins.operators._errors import task_errors

if TYPE_CHECKING:  # pragma: no cover
    from airflow.sdk import Context

__all__ = ["DatasetRotationSensor"]


class DatasetRotationSensor(BaseSensorOperator):
    """Wait until a dataset (or any of several) needs key rotation.

    :param path: an encrypted dataset directory, or a list of them (templated).
    :param min_version: also "behind" when a data key is wrapped by a key version below this (templated).
    :param max_age: also "behind" when a data key is older than this (a timedelta or days; templated).
    :param kms_conn_id: a ``spark_kms_*`` connection giving the KMS options.
    :param kms_options: ``{scheme: options}`` laid over the connection's (templated).
    :param spark_conn_id: an Airflow ``spark`` connection (default: no Spark, files read in this process).
    :param spark_conf: extra Spark settings for the session of each poke.
    :param storage_options: spark_kms storage options of the paths' store (templated).
    :param catalog_properties: Iceberg tables: the catalog's properties (templated).
    :param table_options: tables: the table library's own options (templated).

    Returns (XCom) the list of paths that need rotation.
    """

    template_fields: Sequence[str] = ("path", "min_version", "max_age", "kms_options", "storage_options",
                                      "catalog_properties", "table_options")
    ui_color = "#f0e4d8"

    def __init__(
        self,
        *,
        path: str | Sequence[str],
        min_version: str | int | None = None,
        max_age: timedelta | float | None = None,
        kms_conn_id: str | None = None,
        kms_options: Mapping[str, Mapping[str, Any]] | None = None,
        spark_conn_id: str | None = None,
        spark_conf: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, str] | None = None,
        catalog_properties: Mapping[str, str] | None = None,
        table_options: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage_options = storage_options
        self.catalog_properties = catalog_properties
        self.table_options = table_options
        self.path = path
        self.min_version = min_version
        self.max_age = max_age
        self.kms_conn_id = kms_conn_id
        self.kms_options = kms_options
        self.spark_conn_id = spark_conn_id
        self.spark_conf = dict(spark_conf or {})

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        from airflow_plugins.hooks.spark_kms import mask_mapping_secrets, mask_option_secrets

        mask_option_secrets(self.kms_options)  # before Airflow stores the rendered fields
        mask_mapping_secrets(self.storage_options, self.catalog_properties, self.table_options)

    def _kms_options(self) -> dict[str, dict[str, Any]]:
        options: dict[str, dict[str, Any]] = {}
        if self.kms_conn_id:
            from airflow_plugins.hooks.spark_kms import SparkKmsHook

            options = SparkKmsHook(self.kms_conn_id).get_kms_options()
        for scheme, extra in (self.kms_options or {}).items():
            options.setdefault(scheme, {}).update(extra)
        return options

    def _paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else [str(p) for p in self.path]

    @task_errors()  # a denied or missing key fails the sensor at once; an unreachable KMS is retried
    def poke(self, context: Context) -> PokeReturnValue:
        from airflow_plugins.operators.spark_kms import job_session
        from spark_kms.jobs import needs_rotation

        options = self._kms_options()
        # Rendered templates are strings: "" and "None" mean "not set".
        min_version = None if self.min_version in (None, "", "None") else self.min_version
        max_age: Any = self.max_age
        if isinstance(max_age, str):
            max_age = None if max_age in ("", "None") else float(max_age)
        location = {name: dict(value) for name in ("storage_options", "catalog_properties", "table_options")
                    if (value := getattr(self, name))}
        with job_session(self.spark_conn_id, f"spark_kms-{self.task_id}", self.spark_conf, required=False) as spark:
            behind = [
                p for p in self._paths()
                if needs_rotation(p, max_age=max_age, min_version=min_version, kms_options=options, spark=spark,
                                  **location)
            ]
        if behind:
            self.log.info("needs rotation: %s", behind)
        else:
            self.log.info("all %d dataset(s) are on their keys' primary versions", len(self._paths()))
        return PokeReturnValue(is_done=bool(behind), xcom_value=behind)
