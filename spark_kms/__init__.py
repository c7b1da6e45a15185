"""spark_kms: envelope encryption of PII columns for Apache Spark and Apache Airflow.

Library modules log through ``logging.getLogger(__name__)`` (what a job does, KMS calls with
key ids, versions and encryption contexts -- never key bytes, secret options or cell values).
They stay silent unless the application configures logging: the CLI's ``-v``, Airflow's task
logs, or ``logging.getLogger("spark_kms").setLevel(logging.INFO)`` with a handler in a notebook.
"""

import logging

from spark_kms.errors import SparkKmsError

__version__ = "0.1.0"
__all__ = ["SparkKmsError", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
