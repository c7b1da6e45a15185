"""The ``spark-kms`` command line. Each command group lives in its own module."""

from __future__ import annotations

import importlib

import click

__all__ = ["cli", "main"]

# name -> "module:attribute" of a click command or group, imported lazily so
# `spark-kms keys ...` does not pay for importing pyspark.
_COMMANDS: dict[str, str] = {
    "keys": "spark_kms.cli.keys:keys",
    "demo": "spark_kms.cli.demo:demo",
    "encrypt": "spark_kms.cli.jobs:encrypt",
    "decrypt": "spark_kms.cli.jobs:decrypt",
    "rewrap": "spark_kms.cli.jobs:rewrap",
    "reencrypt": "spark_kms.cli.jobs:reencrypt",
    "inspect": "spark_kms.cli.jobs:inspect",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="spark-kms")
def cli() -> None:
    """Envelope encryption of PII columns for Spark and Airflow, through a KMS."""


def main() -> None:
    cli(prog_name="spark-kms")
