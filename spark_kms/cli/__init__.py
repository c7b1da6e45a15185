"""The ``spark-kms`` command line. Each command group lives in its own module.

Errors are mapped to exit codes in one place, :mod:`spark_kms.cli._errors`: the root group runs
every verb of every group inside :func:`~spark_kms.cli._errors.cli_errors`, so a new verb cannot
forget it. ``--verbose`` shows the ``spark_kms`` loggers on stderr; without it the library stays silent.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from spark_kms.cli._errors import ExitCode, cli_errors, exit_codes_help

__all__ = ["ExitCode", "cli", "main"]

# name -> "module:attribute" of a click command or group, imported lazily so
# `spark-kms keys ...` does not pay for importing pyspark.
_COMMANDS: dict[str, str] = {
    "keys": "spark_kms.cli.keys:keys",
    "demo": "spark_kms.cli.demo:demo",
    "doctor": "spark_kms.cli.doctor:doctor",
    "encrypt": "spark_kms.cli.jobs:encrypt",
    "decrypt": "spark_kms.cli.jobs:decrypt",
    "rewrap": "spark_kms.cli.jobs:rewrap",
    "reencrypt": "spark_kms.cli.jobs:reencrypt",
    "inspect": "spark_kms.cli.jobs:inspect",
    "gc": "spark_kms.cli.jobs:gc",
    "vacuum": "spark_kms.cli.jobs:vacuum",
    "erase": "spark_kms.cli.erase:erase",
}

_LIBRARY_LOGGER = "spark_kms"


@contextmanager
def _library_logs(verbosity: int) -> Iterator[None]:
    """Show the ``spark_kms`` loggers on stderr through rich for the duration of one command:
    ``-v`` INFO, ``-vv`` DEBUG. Only that logger is touched (Spark, py4j and botocore keep their own
    settings), and it is put back afterwards, so the CLI can run more than once in a process."""
    if verbosity <= 0:
        yield
        return
    from rich.console import Console
    from rich.logging import RichHandler

    library = logging.getLogger(_LIBRARY_LOGGER)
    # markup=False: log messages carry paths and key ids, which are data, not rich markup
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=True)
    level = library.level
    library.addHandler(handler)
    library.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        # Logging outside cli_errors: a spark_kms error's traceback is logged at DEBUG (-vv) on the way out.
        with _library_logs(ctx.params.get("verbose", 0)), cli_errors():
            return super().invoke(ctx)


@click.group(cls=_LazyGroup, epilog=exit_codes_help())
@click.version_option(package_name="spark-kms")
@click.option("-v", "--verbose", count=True, help="Show spark_kms logs on stderr: -v info, -vv debug.")
def cli(verbose: int) -> None:
    """Envelope encryption of PII columns for Spark and Airflow, through a KMS."""


def main() -> None:
    cli(prog_name="spark-kms")
