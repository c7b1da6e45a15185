"""spark_kms Airflow operators."""
