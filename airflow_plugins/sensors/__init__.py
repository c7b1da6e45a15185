"""spark_kms Airflow sensors."""
