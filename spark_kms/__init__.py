"""spark_kms: envelope encryption of PII columns for Apache Spark and Apache Airflow."""

from spark_kms.errors import SparkKmsError

__version__ = "0.1.0"
__all__ = ["SparkKmsError", "__version__"]
