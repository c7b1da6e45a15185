"""``spark-kms erase``: crypto-shredding on the command line (:mod:`spark_kms.erasure`).

* ``spark-kms erase --tenant T --tenant-keys TEMPLATE|JSON [--dataset PATH ...] [--pending-days 7]``: schedule
  the tenant's KMS key for deletion (the KMS's waiting period; cancellable in the KMS until then).
* ``spark-kms erase --subject S [--dataset PATH ...]``: delete the subject's key from the subject key store
  (final).
* ``spark-kms erase --log [--kind tenant|subject]``: the erasure log (refusals included).

Every form takes ``--subject-store URL`` (the store whose audit log is the erasure log; env
``SPARK_KMS_SUBJECT_STORE``, default ``~/.spark_kms/subjects.db``), ``--reason``, ``--json``, and the KMS options
of the other verbs (``--keystore``, ``--principal``, ``--kms-option``): ``--principal`` is who erases, in the
local KMS and in the store. ``--dataset`` (repeatable) names datasets to report on: the receipt lists those
holding the erased data. A refusal exits 4 (access denied), like every verb (:mod:`spark_kms.cli._errors`).
"""

from __future__ import annotations

import json
from typing import Any

import click

from spark_kms.cli.jobs import _job_command, _storage_option

__all__ = ["erase"]


def _principal_of(kms_options: dict[str, dict[str, Any]]) -> str | None:
    principal = kms_options.get("local", {}).get("principal")
    return str(principal) if principal else None


def _print_receipt(receipt: Any, as_json: bool) -> None:
    data = receipt.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    state = "already erased" if receipt.already_erased else "erased"
    table = Table(title=f"{receipt.kind} {state} (erasure log row {receipt.receipt_id})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name in ("kind", "target", "key_uri", "key_id", "state", "deletion_date", "store_id", "principal", "at",
                 "already_erased", "reason", "receipt_id"):
        value = data.get(name)
        if value not in (None, ""):
            table.add_row(name, Text(str(value)))  # Text: user data, never rich markup
    for path, found in sorted(data["datasets"].items()):
        what = f"{found} data keys" if isinstance(found, int) else "per-subject columns " + ", ".join(found)
        table.add_row("dataset", Text(f"{path}: {what}"))
    if not data["datasets"]:
        table.add_row("datasets", Text("none of those given (--dataset) hold the erased data"))
    Console(width=200, highlight=False).print(table)


def _print_log(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Erasure log")
    for col in ("Id", "Time", "Principal", "Kind", "Target", "Outcome", "Key / store", "Datasets", "Reason"):
        table.add_column(col)
    for row in rows:
        detail = row["detail"]
        target = detail.get("tenant") or detail.get("subject_id") or ""
        where = detail.get("key_uri") or detail.get("store_id") or ""
        datasets = detail.get("datasets") or []
        outcome = row["outcome"]
        table.add_row(*(Text(str(v)) for v in (row["id"], row["at"], row["principal"], row["kind"], target)),
                      Text(outcome, style="" if outcome == "ok" else "red"),
                      *(Text(str(v)) for v in (where, len(datasets), detail.get("reason") or "")))
    Console(width=200, highlight=False).print(table)


@click.command()
@click.option("--tenant", default=None, help="erase this tenant: schedule its KMS key for deletion")
@click.option("--tenant-keys", default=None, metavar="TEMPLATE|JSON",
              help="the writers' tenant keys: a key-URI template with {tenant} (e.g. aws-kms://alias/tenant-{tenant}) "
                   "or a JSON mapping tenant -> key URI ('*': template for the others)")
@click.option("--subject", default=None, help="erase this data subject: delete its key from the subject key store")
@click.option("--log", "show_log", is_flag=True, help="list the erasures recorded (refusals included); erase nothing")
@click.option("--kind", type=click.Choice(["tenant", "subject"]), default=None, help="with --log: only this kind")
@click.option("--dataset", "datasets", multiple=True, metavar="PATH",
              help="a dataset or table to report on: the receipt says whether it holds the erased data (repeatable)")
@click.option("--pending-days", type=click.IntRange(min=1), default=7, show_default=True,
              help="tenant: the KMS's waiting period before it destroys the key (AWS and the local KMS: 7-30)")
@click.option("--reason", default="", help="recorded with the receipt (e.g. a ticket reference)")
@click.option("--subject-store", default=None, envvar="SPARK_KMS_SUBJECT_STORE", metavar="URL",
              help="the subject key store: sqlite:///path.db, a path, or postgresql://... (env "
                   "SPARK_KMS_SUBJECT_STORE; default ~/.spark_kms/subjects.db); its audit log is the erasure log")
@click.option("--json", "as_json", is_flag=True, help="print the receipt (or the log) as JSON")
@_storage_option
@_job_command
def erase(tenant: str | None, tenant_keys: str | None, subject: str | None, show_log: bool, kind: str | None,
          datasets: tuple[str, ...], pending_days: int, reason: str, subject_store: str | None, as_json: bool,
          storage_options: dict[str, str] | None, kms_options: dict[str, dict[str, Any]]) -> None:
    """Erase a tenant (--tenant: its KMS key scheduled for deletion) or a data subject (--subject: its key
    deleted from the subject key store), so that every copy of their encrypted data reads as null; print the
    receipt. --log lists the erasures recorded."""
    from spark_kms.erasure import erase_subject, erase_tenant, erasure_log

    chosen = [name for name, given in (("--tenant", tenant), ("--subject", subject), ("--log", show_log)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --tenant, --subject or --log"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    if kind and not show_log:
        raise click.UsageError("--kind goes with --log")
    if tenant_keys and not tenant:
        raise click.UsageError("--tenant-keys goes with --tenant")
    principal = _principal_of(kms_options)
    if show_log:
        _print_log(erasure_log(subject_store, kind=kind), as_json)
        return
    if tenant:
        if not tenant_keys:
            raise click.UsageError("--tenant needs --tenant-keys (the key-URI template or mapping the data was "
                                   "written with)")
        receipt = erase_tenant(tenant, tenant_keys=tenant_keys, kms_options=kms_options, datasets=datasets,
                               subject_store=subject_store, pending_days=pending_days, principal=principal,
                               reason=reason, storage_options=storage_options)
    else:
        assert subject is not None
        receipt = erase_subject(subject, subject_store=subject_store, kms_options=kms_options, datasets=datasets,
                                principal=principal, reason=reason, storage_options=storage_options)
    _print_receipt(receipt, as_json)
