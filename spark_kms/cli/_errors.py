"""The exit codes of ``spark-kms``: one table for every command group.

A spark_kms error exits with the code of the first row of :data:`ERROR_TABLE` whose class it is an
instance of (most specific class first), so a class added under ``spark_kms.errors`` takes its
parent's code until it gets a row of its own. Click's own usage errors exit 2, like a
:class:`~spark_kms.errors.ConfigurationError`. A declined confirmation or Ctrl-C exits 130; an
exception that is not a spark_kms error (a failure inside Spark, an OS error, a bug) prints its
traceback and exits 70, so that 1 keeps meaning "data error" only.

A spark_kms error raised inside Spark (a Python worker, the data source's commit) reaches the
driver wrapped in a Spark exception whose message is the worker's traceback. The jobs re-raise it
as itself (:mod:`spark_kms.spark._errors`), and :func:`cli_errors` applies the same translation to
whatever else escapes a verb: such an error exits with its own code and one short message,
whichever verb ran the Spark action.

:func:`cli_errors` is the one place that applies the table: the root ``spark-kms`` group runs every
verb of every group inside it. The ``--help`` epilog is generated from the table
(:func:`exit_codes_help`), so the two cannot drift apart.
"""

from __future__ import annotations

import enum
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import click

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    DecryptionError,
    ErasedDataError,
    FormatError,
    InvalidCiphertextError,
    JobError,
    KeyErasedError,
    KeyNotFoundError,
    KeyStateError,
    KeystoreError,
    KeyUsageLimitError,
    KmsError,
    KmsUnavailableError,
    SparkKmsError,
    ThrottlingError,
    UnknownSubjectError,
)
from spark_kms.spark._errors import translate_spark_error

__all__ = [
    "ERROR_TABLE",
    "ErrorRow",
    "ExitCode",
    "SparkKmsCliError",
    "cli_errors",
    "exit_code_for",
    "exit_codes_help",
    "row_for",
]

logger = logging.getLogger(__name__)


@enum.unique
class ExitCode(enum.IntEnum):
    """Every exit code of ``spark-kms``; one number, one meaning (:attr:`meaning`)."""

    OK = 0
    DATA = 1
    USAGE = 2
    KEY_NOT_FOUND = 3
    ACCESS_DENIED = 4
    KEY_STATE = 5
    KEYSTORE = 6
    KMS_UNAVAILABLE = 7
    KMS = 8
    JOB = 9
    KEY_USAGE_LIMIT = 10
    ERROR = 11
    UNEXPECTED = 70  # sysexits.h EX_SOFTWARE
    ABORTED = 130  # 128 + SIGINT: what a shell reports after Ctrl-C

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.DATA: "data error: a file breaks the spark_kms format, or a cell or wrapped key does not authenticate",
    ExitCode.USAGE: "usage or configuration error: a bad option, argument, key URI or setting",
    ExitCode.KEY_NOT_FOUND: "no such key, alias or key version",
    ExitCode.ACCESS_DENIED: "access denied: the principal may not do this with the key",
    ExitCode.KEY_STATE: "the key or key version is disabled, pending deletion or destroyed",
    ExitCode.KEYSTORE: "the embedded keystore is corrupt, or the root key does not open it",
    ExitCode.KMS_UNAVAILABLE: "the KMS could not be reached or kept throttling: try again later",
    ExitCode.KMS: "the KMS failed the operation for another reason",
    ExitCode.JOB: "a dataset job could not complete; the previous data is intact",
    ExitCode.KEY_USAGE_LIMIT: "a data key reached its cell limit",
    ExitCode.ERROR: "another spark_kms error",
    ExitCode.UNEXPECTED: "not a spark_kms error (a failure inside Spark, an OS error, a bug): traceback printed",
    ExitCode.ABORTED: "aborted: a declined confirmation or Ctrl-C",
}

#: what exits with a code without being a spark_kms error, for the help text
_OTHER_CAUSES: dict[ExitCode, str] = {
    ExitCode.USAGE: "click usage errors",
    ExitCode.UNEXPECTED: "any other exception",
    ExitCode.ABORTED: "Abort, KeyboardInterrupt",
}


@dataclass(frozen=True)
class ErrorRow:
    """One row of the table: instances of ``error`` exit with ``code``; ``hint`` says what to do next."""

    error: type[SparkKmsError]
    code: ExitCode
    hint: str = ""

    @property
    def meaning(self) -> str:
        return self.code.meaning


#: spark_kms error class -> exit code and what to do; most specific class first, the first match wins.
ERROR_TABLE: tuple[ErrorRow, ...] = (
    ErrorRow(InvalidCiphertextError, ExitCode.DATA,
             "a wrapped data key does not unwrap: its key table may be tampered with, or the encryption "
             "context differs"),
    ErrorRow(KeyNotFoundError, ExitCode.KEY_NOT_FOUND,
             "check the key id, alias or --key-uri and the KMS options; `spark-kms keys list` shows the keys "
             "and aliases of a local keystore"),
    ErrorRow(AccessDeniedError, ExitCode.ACCESS_DENIED,
             "ask a key admin to grant the role (local KMS: `spark-kms keys policy set KEY --principal NAME "
             "--role ROLE`), or act as another principal"),
    ErrorRow(KeyErasedError, ExitCode.KEY_STATE,
             "the key is scheduled for deletion or destroyed (erased): what it wrapped cannot be read again; "
             "cancel the deletion within its waiting period if the erasure was a mistake"),
    ErrorRow(KeyStateError, ExitCode.KEY_STATE,
             "re-enable the key or version (or cancel its deletion); after a rotation, rewrap or re-encrypt the "
             "dataset before retiring the old version"),
    ErrorRow(KeystoreError, ExitCode.KEYSTORE, "check --keystore / SPARK_KMS_KEYSTORE and SPARK_KMS_ROOT_KEY"),
    ErrorRow(ThrottlingError, ExitCode.KMS_UNAVAILABLE,
             "run again later (rotation jobs resume where they stopped)"),
    ErrorRow(KmsUnavailableError, ExitCode.KMS_UNAVAILABLE,
             "check the KMS endpoint and the network, then run again (rotation jobs resume where they stopped)"),
    ErrorRow(KmsError, ExitCode.KMS,
             "run again once the KMS problem is fixed (rotation jobs resume where they stopped)"),
    ErrorRow(ConfigurationError, ExitCode.USAGE, "see --help for the options"),
    ErrorRow(FormatError, ExitCode.DATA,
             "the file is damaged, is not a spark_kms dataset, or was written by a newer spark_kms"),
    ErrorRow(ErasedDataError, ExitCode.DATA,
             "these cells were erased (their tenant or subject key is gone): read with on_erased=null to get "
             "nulls instead"),
    ErrorRow(UnknownSubjectError, ExitCode.DATA,
             "pass the subject key store the data was written with (--subject-store / subject_store=)"),
    ErrorRow(DecryptionError, ExitCode.DATA,
             "a cell or key does not authenticate: the file may be tampered with, or its key table is wrong"),
    ErrorRow(KeyUsageLimitError, ExitCode.KEY_USAGE_LIMIT, "write with a new data key (a new writer or job run)"),
    ErrorRow(JobError, ExitCode.JOB, "run the job again (rotation jobs resume where they stopped)"),
    ErrorRow(SparkKmsError, ExitCode.ERROR, ""),
)


def row_for(error: SparkKmsError) -> ErrorRow:
    """The first row of :data:`ERROR_TABLE` that ``error`` is an instance of."""
    for row in ERROR_TABLE:
        if isinstance(error, row.error):
            return row
    raise AssertionError(f"ERROR_TABLE has no row for {type(error).__name__}")  # its last row is the root


def exit_code_for(exc: BaseException) -> ExitCode:
    """The code ``spark-kms`` exits with when a verb raises ``exc``."""
    if isinstance(exc, SparkKmsError):
        return row_for(exc).code
    if isinstance(exc, (click.exceptions.Abort, KeyboardInterrupt)):
        return ExitCode.ABORTED
    if isinstance(exc, click.exceptions.UsageError):
        return ExitCode.USAGE
    return ExitCode.UNEXPECTED


class SparkKmsCliError(click.ClickException):
    """A spark_kms error as the CLI shows it on stderr: what went wrong, then what to do. No traceback."""

    def __init__(self, error: SparkKmsError) -> None:
        super().__init__(str(error))
        row = row_for(error)
        self.error = error
        self.exit_code = int(row.code)
        self.hint = row.hint

    def show(self, file: IO[Any] | None = None) -> None:
        what = click.style("error", fg="red", bold=True)
        click.echo(f"{what} ({type(self.error).__name__}): {self.format_message()}", file=file, err=file is None)
        if self.hint:
            click.echo(f"{click.style('what to do', fg='yellow')}: {self.hint}", file=file, err=file is None)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn what a verb raises into :class:`ExitCode` exits.

    A spark_kms error -- also one that a Spark exception carries -- becomes a
    :class:`SparkKmsCliError` (a short message, its code); click's own exits and usage errors, and a
    closed stdout pipe, pass through to click; Abort and Ctrl-C exit 130; any other exception prints
    its traceback and exits 70.
    """
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, BrokenPipeError):
        raise  # click shows these itself (a closed pipe, as in `spark-kms keys list | head`, quietly)
    except SparkKmsError as exc:
        logger.debug("%s raised here:", type(exc).__name__, exc_info=True)  # the traceback, with -vv
        raise SparkKmsCliError(exc) from exc
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        click.echo("Aborted!", err=True)
        raise click.exceptions.Exit(int(exit_code_for(exc))) from None
    except Exception as exc:  # noqa: BLE001 - the last resort: give it a code of its own, keep the traceback
        carried = translate_spark_error(exc)
        if carried is not None:
            logger.debug("%s carried by %s:", type(carried).__name__, type(exc).__name__, exc_info=True)
            raise SparkKmsCliError(carried) from exc
        click.echo(traceback.format_exc(), err=True, nl=False)
        click.echo(f"{click.style('unexpected error', fg='red', bold=True)} ({type(exc).__name__}): "
                   "not a spark_kms error; the traceback is above", err=True)
        raise click.exceptions.Exit(int(exit_code_for(exc))) from None


def exit_codes_help() -> str:
    """The exit-code table as the text of a click epilog (``\\b``: click keeps its line breaks)."""
    lines = ["\b", "Exit codes:"]
    for code in ExitCode:
        causes = [row.error.__name__ for row in ERROR_TABLE if row.code is code]
        if code in _OTHER_CAUSES:
            causes.append(_OTHER_CAUSES[code])
        lines.append(f"  {int(code):>3}  {code.meaning}")
        if causes:
            lines.append(f"       {', '.join(causes)}")
    return "\n".join(lines)
