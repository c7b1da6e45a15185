"""``python -m spark_kms ...``: the ``spark-kms`` command line (for when the script is not on ``PATH``)."""

from spark_kms.cli import cli

if __name__ == "__main__":
    cli(prog_name="spark-kms")
