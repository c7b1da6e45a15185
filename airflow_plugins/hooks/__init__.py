"""spark_kms Airflow hooks."""
