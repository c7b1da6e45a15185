"""Airflow provider for spark_kms: KMS connections and hooks, encrypt / decrypt /
rewrap / re-encrypt operators, and a key-rotation sensor. See docs/AIRFLOW.md.

Importing this package imports neither Airflow nor Spark; the submodules import Airflow.
"""

__all__: list[str] = []
