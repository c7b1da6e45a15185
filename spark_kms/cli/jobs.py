"""``spark-kms encrypt | decrypt | rewrap | reencrypt | inspect | gc | vacuum``: the dataset jobs on the command line.

Every command but ``gc`` and ``vacuum`` (no KMS call) takes ``--keystore DIR`` (the local KMS keystore,
i.e. ``--kms-option local.keystore=DIR``), ``--principal P`` (``--kms-option local.principal=P``) and
``--kms-option scheme.key=value`` (repeatable; values that parse as JSON numbers or booleans are passed
as such), e.g.
``--kms-option aws-kms.endpoint_url=http://127.0.0.1:5000 --kms-option aws-kms.region=us-east-1``.

Every command takes ``--master URL`` and ``--conf KEY=VALUE`` (:mod:`spark_kms.cli._spark`):
``encrypt`` and ``decrypt`` always run Spark (default ``local[2]``); ``inspect``, ``rewrap``,
``reencrypt`` and ``gc`` run in this process unless a master is given, and then through that
Spark session (over Spark Connect, where the data is).

Crypto-shredding (docs/ERASURE.md): ``encrypt`` takes ``--tenant-column`` / ``--tenant-keys`` (per-tenant KMS
keys) and ``--subject-column`` / ``--subject-store`` (per-subject keys); ``decrypt`` takes ``--subject-store`` and
``--on-erased null|raise``; the verb ``erase`` (:mod:`spark_kms.cli.erase`) erases a tenant or a subject.

Every command that takes a dataset path takes ``--storage-option KEY=VALUE`` (repeatable; the names
of :data:`spark_kms.storage.OPTION_NAMES`, e.g. ``s3.endpoint_override=http://127.0.0.1:9000``).

**Tables** (docs/TABLES.md): a PATH that is a Delta table (its root), an Iceberg table
(``iceberg://<catalog>/<namespace>.<table>``) or an Iceberg table's directory (read-only) is handed to
:mod:`spark_kms.tables` by the jobs themselves; the verbs only pass the options:
``--catalog-property KEY=VALUE`` (the Iceberg catalog's properties, repeatable), ``--table-option
KEY=VALUE`` (the table library's own options, repeatable), ``--version`` (inspect, decrypt: time travel),
``--batch-files`` and ``--vacuum-retention-hours`` (reencrypt), ``--table-format`` and ``--replace-where``
(encrypt into a table, read with pyarrow: no Spark), and the table-only verb ``vacuum``.

The long verbs (``encrypt``, ``decrypt``, ``rewrap``, ``reencrypt``, ``inspect``) draw a progress bar on
stderr (:mod:`spark_kms.cli._progress`): not with ``-q/--quiet``, ``--json``, or when stderr is not a terminal.

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

from spark_kms.cli._progress import JobProgress, progress_wanted
from spark_kms.cli._spark import parse_conf, spark_options
from spark_kms.errors import ConfigurationError
from spark_kms.kms.concurrent import DEFAULT_KMS_CONCURRENCY, MAX_KMS_CONCURRENCY

__all__ = ["decrypt", "encrypt", "gc", "inspect", "reencrypt", "rewrap", "vacuum"]

F = TypeVar("F", bound=Callable[..., Any])


def _parse_kms_options(keystore: str | None, pairs: tuple[str, ...],
                       principal: str | None = None) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    if keystore:
        options.setdefault("local", {})["keystore"] = keystore
    if principal:
        options.setdefault("local", {})["principal"] = principal
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
    """Add --keystore / --principal / --kms-option and turn them into ``kms_options``."""

    @click.option("--kms-option", "kms_option", multiple=True, metavar="SCHEME.KEY=VALUE",
                  help="a KMS provider option, e.g. aws-kms.region=us-east-1 (repeatable)")
    @click.option("--principal", default=None,
                  help="local KMS: act as this principal, i.e. --kms-option local.principal=P "
                       "(env SPARK_KMS_PRINCIPAL, default the OS user)")
    @click.option("--keystore", type=click.Path(file_okay=False), envvar="SPARK_KMS_KEYSTORE",
                  help="local KMS keystore directory (env SPARK_KMS_KEYSTORE)")
    @functools.wraps(fn)
    def wrapper(keystore: str | None, principal: str | None, kms_option: tuple[str, ...], **kwargs: Any) -> Any:
        return fn(kms_options=_parse_kms_options(keystore, kms_option, principal), **kwargs)

    return wrapper  # type: ignore[return-value]


def _storage_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str] | None:
    from spark_kms.storage import storage_options_from

    options = parse_conf(value, param_hint="--storage-option", example="s3.region=eu-west-1")
    try:
        return storage_options_from(options, what="--storage-option") or None
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _pairs_callback(hint: str, example: str) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], Any]:
    def parse(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str] | None:
        return parse_conf(value, param_hint=hint, example=example) or None

    return parse


_storage_option = click.option(
    "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", callback=_storage_callback,
    help="a storage option of the dataset's store, e.g. s3.endpoint_override=http://127.0.0.1:9000 (repeatable)")


def _table_options(fn: F) -> F:
    """Add --catalog-property and --table-option (tables: docs/TABLES.md)."""
    fn = click.option("--table-option", "table_options", multiple=True, metavar="KEY=VALUE",
                      callback=_pairs_callback("--table-option", "aws_conditional_put=etag"),
                      help="tables: an option of the table's library (delta-rs storage option, pyiceberg "
                           "FileIO property), over those mapped from --storage-option (repeatable)")(fn)
    fn = click.option("--catalog-property", "catalog_properties", multiple=True, metavar="KEY=VALUE",
                      callback=_pairs_callback("--catalog-property", "uri=sqlite:////var/lib/cat.db"),
                      help="Iceberg tables (iceberg://CATALOG/NS.TABLE): a property of the catalog, e.g. "
                           "type=sql (repeatable)")(fn)
    return fn


def _table_version(value: str | None) -> int | str | None:
    """``--version``: a Delta version or Iceberg snapshot id (a whole number), else a timestamp (ISO-8601)."""
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.isdigit() else text


_version_option = click.option(
    "--version", "version", default=None, metavar="VERSION",
    help="tables: time travel to a Delta version, an Iceberg snapshot id or an ISO-8601 timestamp")


def _replace_where(values: tuple[str, ...]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in values:
        column, sep, value = item.partition("=")
        column = column.strip()
        if not sep or not column:
            raise click.BadParameter(f"expected COLUMN=VALUE (e.g. day=2024-01-01), got {item!r}",
                                     param_hint="--replace-where")
        if column in out:  # a repeated column: any of its values
            previous = out[column]
            out[column] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            out[column] = value
    return out or None


def _through(spark: Any) -> dict[str, Any]:
    """``spark=`` for a job that runs in this process unless given a session (only when a master was given)."""
    return {} if spark is None else {"spark": spark}


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
        click.echo(json.dumps(summary.to_dict(), indent=2, sort_keys=True, default=str))
        return
    calls = ", ".join(f"{k}={n}" for k, n in summary.kms_calls.items()) or "none"
    table = ""
    if summary.details.get("table_format"):
        versions = summary.details.get("table_versions")
        if versions is None:
            versions = summary.details.get("table_version")
        table = f"{summary.details['table_format']} table {summary.dataset}; commits: {versions}\n"
    click.echo(
        f"{summary.job} {summary.status}: run {summary.run_id}, {summary.files} files, {summary.deks} data keys, "
        f"{summary.rows} rows; KMS calls: {calls}\n{table}"
        f"key versions: {_versions(summary.key_versions_before)} -> {_versions(summary.key_versions)}\n"
        f"summary: {_record_of(summary)}"
    )


def _record_of(summary: Any) -> str:
    """Where the run record is: ``<dataset>/_spark_kms_runs/<run>.json`` (an Iceberg table's is in its location)."""
    try:
        return str(summary.path)
    except ConfigurationError:  # iceberg://...: the catalog knows the table's location
        return f"_spark_kms_runs/{summary.run_id}.json in the location of {summary.dataset}"


def _versions(kv: dict[str, list[str]]) -> str:
    return "; ".join(f"{k} v{','.join(v)}" for k, v in kv.items()) or "-"


_json_option = click.option("--json", "as_json", is_flag=True, help="print the run summary as JSON")
_subject_store_option = click.option(
    "--subject-store", default=None, metavar="URL",
    help="the subject key store of per-subject columns: sqlite:///path.db, a path, or postgresql://... "
         "(default $SPARK_KMS_SUBJECT_STORE, else ~/.spark_kms/subjects.db)")
_run_id_option = click.option("--run-id", help="run id (default: new; reencrypt: resumes an unfinished run)")
_quiet_option = click.option("-q", "--quiet", is_flag=True,
                             help="no progress bar (there is none either with --json or when stderr is not a terminal)")


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--key-uri", default=None,
              help="KMS key for the data keys, e.g. local://alias/pii (required unless --tenant-keys)")
@click.option("--columns", default="", help="comma-separated columns to encrypt (AES-256-GCM)")
@click.option("--deterministic", default="", help="comma-separated columns to encrypt deterministically (AES-SIV)")
@click.option("--blind-index", multiple=True, metavar="COL:INDEX", help="add an HMAC blind index of COL named INDEX")
@click.option("--partition-by", default="", help="comma-separated hive partition columns")
@click.option("--format", "source_format", type=click.Choice(["parquet", "csv", "json"]), default="parquet",
              show_default=True, help="format of SOURCE")
@click.option("--mode", type=click.Choice(["overwrite", "append", "overwrite_partitions", "error"]),
              default="overwrite", show_default=True, help="overwrite_partitions and error: into a table only")
@click.option("--table-format", type=click.Choice(["delta", "iceberg"]), default=None,
              help="DESTINATION is a table of this format, created if absent (default: detected; an existing "
                   "table or iceberg://CATALOG/NS.TABLE is written into as a table)")
@click.option("--replace-where", multiple=True, metavar="COLUMN=VALUE",
              help="tables, with --mode overwrite: replace only the files of this partition (repeatable)")
@click.option("--join-domain", default=None,
              help="join domain of the deterministic / blind-index columns (default: the dataset's own)")
@click.option("--join-domain-store", default=None, metavar="DIRECTORY",
              help="where a named join domain's key lives (env SPARK_KMS_JOIN_DOMAIN_STORE)")
@click.option("--require-protection-level", default=None, metavar="LEVEL",
              help="refuse a KMS key guarded by less: hsm, software, external (or several, comma-separated)")
@click.option("--tenant-column", default=None, metavar="COLUMN",
              help="per-tenant keys: the plain column naming each row's tenant (with --tenant-keys; docs/ERASURE.md)")
@click.option("--tenant-keys", default=None, metavar="TEMPLATE|JSON",
              help="the tenants' KMS keys: a key-URI template with {tenant} (local://alias/tenant-{tenant}) or a "
                   "JSON mapping tenant -> key URI ('*': template for the others)")
@click.option("--subject-column", default=None, metavar="COLUMN",
              help="per-subject keys: the plain column naming each row's data subject (--columns then erasable "
                   "per subject: spark-kms erase --subject)")
@_subject_store_option
@_run_id_option
@_json_option
@_quiet_option
@_storage_option
@_table_options
@spark_options(always=True)
@_job_command
def encrypt(source: str, destination: str, key_uri: str, columns: str, deterministic: str,
            blind_index: tuple[str, ...], partition_by: str, source_format: str, mode: str, table_format: str | None,
            replace_where: tuple[str, ...], join_domain: str | None, join_domain_store: str | None,
            require_protection_level: str | None, tenant_column: str | None, tenant_keys: str | None,
            subject_column: str | None, subject_store: str | None, run_id: str | None, as_json: bool, quiet: bool,
            storage_options: dict[str, str] | None,
            catalog_properties: dict[str, str] | None, table_options: dict[str, str] | None,
            kms_options: dict[str, dict[str, Any]], spark: Any) -> None:
    """Encrypt the PII columns of SOURCE into the encrypted dataset DESTINATION (runs Spark: --master).

    Into a Delta or Iceberg table (an existing one, iceberg://CATALOG/NS.TABLE, or --table-format): the
    source is read with pyarrow, one commit through the table's library, no Spark."""
    from spark_kms.jobs import encrypt_dataset

    with JobProgress("encrypting", spark=spark, enabled=progress_wanted(quiet=quiet, as_json=as_json)):
        summary = encrypt_dataset(
            source, destination, key_uri=key_uri, columns=_csv(columns), deterministic_columns=_csv(deterministic),
            blind_index=_blind_index(blind_index), partition_by=_csv(partition_by), source_format=source_format,
            mode=mode, kms_options=kms_options, run_id=run_id, spark=spark,
            join_domain=join_domain, join_domain_store=join_domain_store, storage_options=storage_options,
            table_format=table_format, replace_where=_replace_where(replace_where),
            catalog_properties=catalog_properties, table_options=table_options,
            require_protection_level=require_protection_level, tenant_column=tenant_column,
            tenant_keys=tenant_keys, subject_column=subject_column, subject_store=subject_store,
        )
    _print_summary(summary, as_json)


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--columns", default=None, help="comma-separated columns to keep (default: all)")
@click.option("--format", "output_format", type=click.Choice(["parquet", "csv", "json"]), default="parquet",
              show_default=True, help="format of DESTINATION")
@_subject_store_option
@click.option("--on-erased", type=click.Choice(["null", "raise"]), default=None,
              help="erased cells (tenant key deleted, subject erased): written as null (default), or fail (exit 1)")
@_version_option
@_run_id_option
@_json_option
@_quiet_option
@_storage_option
@_table_options
@spark_options(always=True)
@_job_command
def decrypt(source: str, destination: str, columns: str | None, output_format: str, subject_store: str | None,
            on_erased: str | None, version: str | None, run_id: str | None, as_json: bool, quiet: bool, storage_options: dict[str, str] | None,
            catalog_properties: dict[str, str] | None, table_options: dict[str, str] | None,
            kms_options: dict[str, dict[str, Any]], spark: Any) -> None:
    """Decrypt the encrypted dataset SOURCE into plaintext at DESTINATION (must differ from SOURCE).

    The output replaces DESTINATION only once complete: a failed run leaves it as it was. A Delta or
    Iceberg table SOURCE is decrypted with pyarrow (Parquet output, no Spark; --version: time travel)."""
    from spark_kms.jobs import decrypt_dataset

    with JobProgress("decrypting", spark=spark, enabled=progress_wanted(quiet=quiet, as_json=as_json)):
        summary = decrypt_dataset(source, destination, columns=_csv(columns) if columns is not None else None,
                                  output_format=output_format, kms_options=kms_options, run_id=run_id, spark=spark,
                                  storage_options=storage_options, version=_table_version(version),
                                  catalog_properties=catalog_properties, table_options=table_options,
                                  subject_store=subject_store, on_erased=on_erased)
    _print_summary(summary, as_json)


@click.command()
@click.argument("path")
@click.option("--key-uri", default=None, help="target key (default: each data key's own key, new primary version)")
@click.option("--include-history", is_flag=True,
              help="tables: also rewrap the data keys of files older versions still reference (time travel)")
@click.option("--kms-concurrency", type=click.IntRange(min=1, max=MAX_KMS_CONCURRENCY), default=None, metavar="N",
              help=f"KMS requests in flight (default {DEFAULT_KMS_CONCURRENCY}; 1: one at a time); throttled "
                   "requests are retried with backoff")
@_run_id_option
@_json_option
@_quiet_option
@_storage_option
@_table_options
@spark_options(always=False)
@_job_command
def rewrap(path: str, key_uri: str | None, include_history: bool, kms_concurrency: int | None, run_id: str | None,
           as_json: bool, quiet: bool, storage_options: dict[str, str] | None,
           catalog_properties: dict[str, str] | None, table_options: dict[str, str] | None,
           kms_options: dict[str, dict[str, Any]], spark: Any) -> None:
    """Rewrap every data key of the dataset PATH under the target key's primary version (no cell rewritten).

    A Delta or Iceberg table: the new wraps go to the table key manifest, in one property-only commit."""
    from spark_kms.jobs import rewrap_dataset

    with JobProgress("rewrapping", unit="data keys", spark=spark,
                     enabled=progress_wanted(quiet=quiet, as_json=as_json)) as bar:
        summary = rewrap_dataset(path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, progress=bar,
                                 storage_options=storage_options, include_history=include_history,
                                 catalog_properties=catalog_properties, table_options=table_options,
                                 kms_concurrency=kms_concurrency, **_through(spark))
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
@click.option("--batch-files", type=click.IntRange(min=1), default=None, metavar="N",
              help="tables: one commit every N files (resumable batches; default one commit)")
@click.option("--vacuum-retention-hours", type=click.FloatRange(min=0), default=None, metavar="H",
              help="tables, opt-in: then vacuum / expire what older snapshots keep (0 after a compromise: "
                   "the old data keys are then nowhere in the table)")
@_run_id_option
@_json_option
@_quiet_option
@_storage_option
@_table_options
@spark_options(always=False)
@_job_command
def reencrypt(path: str, key_uri: str | None, force: bool, abandon: str | None, rotate_join_domain: bool,
              join_domain_store: str | None, batch_files: int | None, vacuum_retention_hours: float | None,
              run_id: str | None, as_json: bool, quiet: bool, storage_options: dict[str, str] | None,
              catalog_properties: dict[str, str] | None, table_options: dict[str, str] | None,
              kms_options: dict[str, dict[str, Any]], spark: Any) -> None:
    """Re-encrypt the dataset PATH with new data keys, file by file (resumable: run again after a crash).

    A pending run is resumed only by a request for the same target key and options, or by --run-id;
    otherwise the command refuses and names it (give it up with --abandon RUN). A Delta or Iceberg
    table gets new files and one commit per batch; its older snapshots keep the old files until
    vacuumed (--vacuum-retention-hours, or `spark-kms vacuum`)."""
    from spark_kms.jobs import reencrypt_dataset

    with JobProgress("re-encrypting", unit="files", spark=spark,
                     enabled=progress_wanted(quiet=quiet, as_json=as_json)) as bar:
        summary = reencrypt_dataset(path, key_uri=key_uri, kms_options=kms_options, run_id=run_id, force=force,
                                    abandon=abandon, progress=bar, rotate_join_domain=rotate_join_domain,
                                    join_domain_store=join_domain_store, storage_options=storage_options,
                                    batch_files=batch_files, vacuum_retention_hours=vacuum_retention_hours,
                                    catalog_properties=catalog_properties, table_options=table_options,
                                    **_through(spark))
    _print_summary(summary, as_json)


@click.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="print the inspection as JSON")
@_quiet_option
@_version_option
@_storage_option
@_table_options
@spark_options(always=False)
@_job_command
def inspect(path: str, as_json: bool, quiet: bool, version: str | None, storage_options: dict[str, str] | None,
            catalog_properties: dict[str, str] | None, table_options: dict[str, str] | None,
            kms_options: dict[str, dict[str, Any]], spark: Any) -> None:
    """Show the files, data keys, key versions and encrypted columns of the dataset PATH
    (a Delta or Iceberg table: of its current snapshot, or of --version)."""
    from spark_kms.jobs import inspect_dataset
    from spark_kms.report import render_inspection

    with JobProgress("inspecting", unit="files", spark=spark,
                     enabled=progress_wanted(quiet=quiet, as_json=as_json)) as bar:
        inspection = inspect_dataset(path, kms_options=kms_options, storage_options=storage_options,
                                     version=_table_version(version), catalog_properties=catalog_properties,
                                     table_options=table_options, progress=bar, **_through(spark))
    if as_json:
        click.echo(json.dumps(inspection.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        Console().print(render_inspection(inspection))


@click.command()
@click.argument("dataset")
@click.option("--dry-run", is_flag=True, help="remove nothing; list what would be removed")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="leave alone anything modified less than SECONDS ago (default: 21600, 6 hours)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@_storage_option
@spark_options(always=False)
def gc(dataset: str, dry_run: bool, grace_s: float | None, as_json: bool, storage_options: dict[str, str] | None,
       spark: Any) -> None:
    """Remove what killed writes and jobs left in DATASET: staging and trash directories of abandoned
    Spark writes, temp files of killed jobs. Never committed data, a write in progress or a decided commit.
    A Delta or Iceberg table is refused: its clean-up is `spark-kms vacuum`."""
    from spark_kms.jobs import collect_garbage

    report = collect_garbage(dataset, dry_run=dry_run, **({} if grace_s is None else {"grace_s": grace_s}),
                             storage_options=storage_options, **_through(spark))
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


@click.command()
@click.argument("table")
@click.option("--retention-hours", type=click.FloatRange(min=0), required=True, metavar="H",
              help="keep what is younger than H hours; 0 keeps only the current snapshot (after a compromise)")
@click.option("--dry-run", is_flag=True, help="delete nothing; report what would be deleted")
@_run_id_option
@_json_option
@_storage_option
@_table_options
def vacuum(table: str, retention_hours: float, dry_run: bool, run_id: str | None, as_json: bool,
           storage_options: dict[str, str] | None, catalog_properties: dict[str, str] | None,
           table_options: dict[str, str] | None) -> None:
    """Delete what older snapshots of the Delta or Iceberg TABLE keep (the table's own vacuum / snapshot
    expiry), then prune the table key manifest: after a re-encrypt, the old data keys are then nowhere in
    the table (crypto-shredding; docs/TABLES.md). Time travel to the deleted versions ends. No KMS call."""
    from spark_kms import tables

    summary = tables.vacuum_table(table, retention_hours=retention_hours, dry_run=dry_run, run_id=run_id,
                                  storage_options=storage_options, catalog_properties=catalog_properties,
                                  table_options=table_options)
    if as_json:
        _print_summary(summary, as_json)
        return
    deleted = summary.details.get("files_deleted") or []
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"vacuum of {summary.details.get('table_format')} table {summary.dataset} (retention "
               f"{retention_hours:g} h{', dry run' if dry_run else ''}): {verb} {len(deleted)} data files, "
               f"{summary.details.get('manifest_entries_pruned', 0)} key manifest entries pruned; run {summary.run_id}")
    for name in deleted:
        click.echo(f"  {verb:<12} {name}")
