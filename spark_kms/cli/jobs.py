"""``spark-kms encrypt | decrypt | rewrap | reencrypt | inspect``: the dataset jobs on the command line.

Every command takes ``--keystore DIR`` (the local KMS keystore, i.e. ``--kms-option
local.keystore=DIR``) and ``--kms-option scheme.key=value`` (repeatable; values that parse
as JSON numbers or booleans are passed as such), e.g.
``--kms-option aws-kms.endpoint_url=http://127.0.0.1:5000 --kms-option aws-kms.region=us-east-1``.

Errors exit with a message that says what to do and the codes of ``spark-kms --help``
(:mod:`spark_kms.cli._errors`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["decrypt", "encrypt", "gc", "inspect", "reencrypt", "rewrap"]

F = TypeVar("F", bound=Callable[..., Any])


def _parse_kms_options(keystore: str | None, pairs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    if keystore:
        options.setdefault("local", {})["keystore"] = keystore
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        scheme, dot, key = name.partition(".")
        if not sep or not dot or not scheme or not key:
            raise click.BadParameter(f"expected scheme.key=value (e.g. local.principal=etl), got {pair!r}",
                                     param_hint="--kms-option")
        try:
            value: Any = json.loads(raw)
            if not isinstance(value, (int, float, bool)):
                value = raw
        except ValueError:
            value = raw
        options.setdefault(scheme, {})[key] = value
    return options


def _job_command(fn: F) -> F:
    """Add --keystore / --kms-option and turn them into ``kms_options``."""

    @click.option("--kms-option", "kms_option", multiple=True, metavar="SCHEME.KEY=VALUE",
                  help="a KMS provider option, e.g. aws-kms.region=us-east-1 (repeatable)")
    @click.option("--keystore", type=click.Path(file_okay=False), envvar="SPARK_KMS_KEYSTORE",
                  help="local KMS keystore directory (env SPARK_KMS_KEYSTORE)")
    @functools.wraps(fn)
    def wrapper(keystore: str | None, kms_option: tuple[str, ...], **kwargs: Any) -> Any:
        return fn(kms_options=_parse_kms_options(keystore, kms_option), **kwargs)

    return wrapper  # type: ignore[return-value]


def _spark() -> Any:
    """The local SparkSession of ``encrypt`` / ``decrypt``. Spark's own log stays off unless
    ``-v``: for a failed task it prints the worker's whole Python traceback (several times), while
    the verb reports the error once, short, with its exit code."""
    from spark_kms.spark.session import local_session

    spark = local_session()
    ctx = click.get_current_context(silent=True)
    verbose = ctx.find_root().params.get("verbose", 0) if ctx is not None else 0
    spark.sparkContext.setLogLevel("ERROR" if verbose else "OFF")
    return spark


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _blind_index(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        for item in _csv(v):
            src, sep, idx = item.partition(":")
            if not sep or not src or not idx:
                raise click.BadParameter(f"expected source:index_column, got {item!r}", param_hint="--blind-index")
            out[src] = idx
    return out


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
        return
    calls = ", ".join(f"{k}={n}" for k, n in summary.kms_calls.items()) or "none"
    click.echo(
        f"{summary.job} {summary.status}: run {summary.run_id}, {summary.files} files, {summary.deks} data keys, "
        f"{summary.rows} rows; KMS calls: {calls}\n"
        f"key versions: {_versions(summary.key_versions_before)} -> {_versions(summary.key_versions)}\n"
        f"summary: {summary.path}"
    )


def _versions(kv: dict[str, list[str]]) -> str:
    return "; ".join(f"{k} v{','.join(v)}" for k, v in kv.items()) or "-"


class _ProgressBar:
    """Rich progress on stderr, driven by a job's ``progress(item, done, total)`` callback."""

    def __init__(self, what: str) -> None:
        self._progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=Console(stderr=True), transient=True)
        self._task: Any = None

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, item: str, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task("", total=total)
        self._progress.update(self._task, completed=done, total=total)


_json_option = click.option("--json", "as_json", is_flag=True, help="print the run summary as JSON")
_run_id_option = click.option("--run-id", help="run id (default: new; reencrypt: resumes an unfinished run)")


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--key-uri", required=True, help="KMS key for the data keys, e.g. local://alias/pii")
@click.option("--columns", default="", help="comma-separated columns to encrypt (AES-256-GCM)")
@click.option("--deterministic", default="", help="comma-separated columns to encrypt deterministically (AES-SIV)")
@click.option("--blind-index", multiple=True, metavar="COL:INDEX", help="add an HMAC blind index of COL named INDEX")
@click.option("--partition-by", default="", help="comma-separated hive partition columns")
@click.option("--format", "source_format", type=click.Choice(["parquet", "csv", "json"]), default="parquet",
              show_default=True, help="format of SOURCE")
@click.option("--mode", type=click.Choice(["overwrite", "append"]), default="overwrite", show_default=True)
@click.option("--join-domain", default=None,
              help="join domain of the deterministic / blind-index columns (default: the dataset's own)")
@click.option("--join-domain-store", default=None, metavar="DIRECTORY",
              help="where a named join domain's key lives (env SPARK_KMS_JOIN_DOMAIN_STORE)")
@_run_id_option
@_json_option
@_job_command
def encrypt(source: str, destination: str, key_uri: str, columns: str, deterministic: str,
            blind_index: tuple[str, ...], partition_by: str, source_format: str, mode: str, join_domain: str | None,
            join_domain_store: str | None, run_id: str | None, as_json: bool,
            kms_options: dict[str, dict[str, Any]]) -> None:
    """Encrypt the PII columns of SOURCE into the encrypted dataset DESTINATION (runs Spark locally)."""
    from spark_kms.jobs import encrypt_dataset

    summary = encrypt_dataset(
        source, destination, key_uri=key_uri, columns=_csv(columns), deterministic_columns=_csv(deterministic),
        blind_index=_blind_index(blind_index), partition_by=_csv(partition_by), source_format=source_format,
        mode=mode, kms_options=kms_options, run_id=run_id, spark=_spark,
        join_domain=join_domain, join_domain_store=join_domain_store,
    )
    _print_summary(summary, as_json)


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--columns", default=None, help="comma-separated columns to keep (default: all)")
@click.option("--format", "output_format", type=click.Choice(["parquet", "csv", "json"]), default="parquet",
              show_default=True, help="format of DESTINATION")
@_run_id_option
@_json_option
@_job_command
def decrypt(source: str, destination: str, columns: str | None, output_format: str, run_id: str | None,
            as_json: bool, kms_options: dict[str, dict[str, Any]]) -> None:
    """Decrypt the encrypted dataset SOURCE into plaintext at DESTINATION (must differ from SOURCE).

    The output replaces DESTINATION only once complete: a failed run leaves it as it was."""
    from spark_kms.jobs import decrypt_dataset

    summary = decrypt_dataset(source, destination, columns=_csv(columns) if columns is not None else None,
                              output_format=output_format, kms_options=kms_options, run_id=run_id, spark=_spark)
    _print_summary(summary, as_json)


@click.command()
@click.argument("path")
@click.option("--key-uri", default=None, help="target key (default: each data key's own key, new primary version)")
@_run_id_option
@_json_option
@_job_command
def rewrap(path: str, key_uri: str | None, run_id: str | None, as_json: bool,
           kms_options: dict[str, dict[str, Any]]) -> None:
    """Rewrap every data key of the dataset PATH under the target key's primary version (no cell rewritten)."""
    from spark_kms.jobs import rewrap_dataset

    with _ProgressBar("rewrapping data keys") as bar:
        summary = rewrap_dataset(path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, progress=bar)
    _print_summary(summary, as_json)


@click.command()
@click.argument("path")
@click.option("--key-uri", default=None, help="target key (default: the dataset's key, new primary version)")
@click.option("--force", is_flag=True, help="re-encrypt every file, even those already under the primary version")
@click.option("--abandon", metavar="RUN", default=None,
              help="give up the pending run RUN (journal kept for audit, temp files removed); starts no run")
@click.option("--rotate-join-domain", is_flag=True,
              help="also give the dataset's join domain a new deterministic key (rewrites its joinable columns)")
@click.option("--join-domain-store", default=None, metavar="DIRECTORY",
              help="where the dataset's named join domain keeps its key (to rotate it)")
@_run_id_option
@_json_option
@_job_command
def reencrypt(path: str, key_uri: str | None, force: bool, abandon: str | None, rotate_join_domain: bool,
              join_domain_store: str | None, run_id: str | None, as_json: bool,
              kms_options: dict[str, dict[str, Any]]) -> None:
    """Re-encrypt the dataset PATH with new data keys, file by file (resumable: run again after a crash).

    A pending run is resumed only by a request for the same target key and options, or by --run-id;
    otherwise the command refuses and names it (give it up with --abandon RUN)."""
    from spark_kms.jobs import reencrypt_dataset

    with _ProgressBar("re-encrypting files") as bar:
        summary = reencrypt_dataset(path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, force=force,
                                    abandon=abandon, progress=bar, rotate_join_domain=rotate_join_domain,
                                    join_domain_store=join_domain_store)
    _print_summary(summary, as_json)


@click.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="print the inspection as JSON")
@_job_command
def inspect(path: str, as_json: bool, kms_options: dict[str, dict[str, Any]]) -> None:
    """Show the files, data keys, key versions and encrypted columns of the dataset PATH."""
    from spark_kms.jobs import inspect_dataset
    from spark_kms.report import render_inspection

    inspection = inspect_dataset(path, kms_options=kms_options)
    if as_json:
        click.echo(inspection.to_json())
    else:
        Console().print(render_inspection(inspection))


@click.command()
@click.argument("dataset")
@click.option("--dry-run", is_flag=True, help="remove nothing; list what would be removed")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="leave alone anything modified less than SECONDS ago (default: 21600, 6 hours)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def gc(dataset: str, dry_run: bool, grace_s: float | None, as_json: bool) -> None:
    """Remove what killed writes and jobs left in DATASET: staging and trash directories of abandoned
    Spark writes, temp files of killed jobs. Never committed data, a write in progress or a decided commit."""
    from spark_kms.jobs import collect_garbage

    report = collect_garbage(dataset, dry_run=dry_run, **({} if grace_s is None else {"grace_s": grace_s}))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"gc of {report.dataset} (grace {report.grace_s:.0f}s{', dry run' if dry_run else ''}): "
               f"{verb} {len(report.abandoned)}, kept {len(report.leftovers) - len(report.abandoned)}")
    for item in report.leftovers:
        action = (verb if item.removed or dry_run else "kept") if item.abandoned else "kept"
        rel = os.path.relpath(item.path, report.dataset)
        click.echo(f"  {action:<12} {item.kind:<7} {rel}  ({item.reason})")
