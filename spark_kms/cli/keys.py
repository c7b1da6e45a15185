"""``spark-kms keys``: manage the keys of the embedded local KMS.

Every command works on one keystore: ``--keystore DIR`` (env ``SPARK_KMS_KEYSTORE``,
default ``~/.spark_kms/keystore``), acting as ``--principal`` (env
``SPARK_KMS_PRINCIPAL``, default the OS user). Both go after the sub-command, where every other verb
takes them (``spark-kms keys list --keystore DIR``, like ``spark-kms rewrap PATH --keystore DIR``); the
0.1.0 position before it (``spark-kms keys --keystore DIR list``) still works. ``keys policy set`` is the
one exception for ``--principal``: there it names the principal whose roles are set, so the acting
principal goes before the sub-command or in ``SPARK_KMS_PRINCIPAL``. The root key comes from
``SPARK_KMS_ROOT_KEY`` or ``<keystore>/root.key``. Human output is rich tables;
``--json`` prints machine-readable JSON. Errors exit with a message that says what
to do and the codes of ``spark-kms --help`` (:mod:`spark_kms.cli._errors`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from spark_kms.kms.base import KeyDescription
from spark_kms.kms.local import (
    KEY_SPECS,
    MAX_DELETION_DAYS,
    MIN_DELETION_DAYS,
    ROLES,
    LocalKms,
    default_keystore_dir,
)

__all__ = ["keys"]

F = TypeVar("F", bound=Callable[..., Any])


class _KeystoreChoice:
    """The keystore and principal of a ``keys`` verb: the sub-command's options, else the group's (or env)."""

    def __init__(self, keystore: str | None, principal: str | None) -> None:
        self.keystore, self.principal = keystore, principal
        self._kms: LocalKms | None = None

    def kms(self) -> LocalKms:
        if self._kms is None:
            self._kms = LocalKms(self.keystore or default_keystore_dir(), principal=self.principal)
        return self._kms


def _kms(ctx: click.Context) -> LocalKms:
    return ctx.find_object(_KeystoreChoice).kms()  # type: ignore[union-attr]


def _override(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A sub-command's ``--keystore`` / ``--principal``: replaces the group's value; both given and
    different is a usage error (which one was meant?)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None:
            return
        choice = ctx.find_object(_KeystoreChoice)
        owner = next((c for c in _contexts(ctx) if c.command is keys), None)
        given_before = (owner is not None and owner.get_parameter_source(name) is ParameterSource.COMMANDLINE
                        and getattr(choice, name) not in (None, value))
        if given_before:
            raise click.UsageError(f"--{name} given twice, before and after the sub-command, with different values")
        setattr(choice, name, value)

    return callback


def _contexts(ctx: click.Context | None) -> list[click.Context]:
    out = []
    while ctx is not None:
        out.append(ctx)
        ctx = ctx.parent
    return out


def _keystore_option(fn: F) -> F:
    return click.option("--keystore", type=click.Path(file_okay=False), default=None, expose_value=False,
                        callback=_override("keystore"),
                        help="Keystore directory [env SPARK_KMS_KEYSTORE; default ~/.spark_kms/keystore].")(fn)  # type: ignore[return-value]


def _principal_option(fn: F) -> F:
    return click.option("--principal", default=None, expose_value=False,
                        callback=_override("principal"),
                        help="Act as this principal [env SPARK_KMS_PRINCIPAL; default the OS user].")(fn)  # type: ignore[return-value]


def _where(fn: F) -> F:
    """``--keystore`` and ``--principal`` in the sub-command position."""
    return _keystore_option(_principal_option(fn))


def _console() -> Any:
    from rich.console import Console

    # Not a terminal (pipes, CliRunner): wide enough that UUIDs are never folded.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _row(*values: Any, style: str | None = None) -> list[Any]:
    """Table cells as plain text: descriptions, principals and contexts are user data, and rich
    would read ``[...]`` in them as markup (hiding text, or failing on an unmatched ``[/...]``)."""
    from rich.text import Text

    return [Text(str(v), style=style or "") for v in values]


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _desc_dict(d: KeyDescription) -> dict[str, Any]:
    return dataclasses.asdict(d) | {"versions": dict(d.versions), "extra": dict(d.extra)}


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)  # type: ignore[return-value]


@click.group()
@click.option(
    "--keystore",
    envvar="SPARK_KMS_KEYSTORE",
    type=click.Path(file_okay=False),
    default=None,
    help="Keystore directory [env SPARK_KMS_KEYSTORE; default ~/.spark_kms/keystore]. Prefer giving it after "
         "the sub-command (keys list --keystore DIR); this position is kept for 0.1.0 scripts.",
)
@click.option("--principal", envvar="SPARK_KMS_PRINCIPAL", default=None,
              help="Act as this principal [env SPARK_KMS_PRINCIPAL; default the OS user]. Prefer giving it after "
                   "the sub-command; this position is kept for 0.1.0 scripts.")
@click.pass_context
def keys(ctx: click.Context, keystore: str | None, principal: str | None) -> None:
    """Manage keys of the embedded local KMS (a software keystore, not an HSM)."""
    ctx.obj = _KeystoreChoice(keystore, principal)


@keys.command()
@_where
@click.option("--alias", default=None, help="Alias for the new key, e.g. alias/pii.")
@click.option("--spec", type=click.Choice(KEY_SPECS), default="SYMMETRIC_DEFAULT", show_default=True)
@click.option("--description", default="", help="Free text.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Tag, repeatable.")
@click.option("--rotation-period-days", type=int, default=None, help="Rotate automatically every N days.")
@_json_option
@click.pass_context
def create(ctx: click.Context, alias: str | None, spec: str, description: str, tags: tuple[str, ...],
           rotation_period_days: int | None, as_json: bool) -> None:
    """Create a key (version 1); prints its id."""
    tag_map: dict[str, str] = {}
    for t in tags:
        if "=" not in t:
            raise click.BadParameter(f"tags look like KEY=VALUE, got {t!r}", param_hint="--tag")
        k, v = t.split("=", 1)
        tag_map[k] = v
    kms = _kms(ctx)
    key_id = kms.create_key(alias=alias, spec=spec, description=description, tags=tag_map,
                            rotation_period_days=rotation_period_days)
    if as_json:
        _echo_json({"key_id": key_id, "alias": alias, "spec": spec, "keystore": str(kms.keystore_dir)})
    else:
        click.echo(key_id)


@keys.command("list")
@_where
@_json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the keys of the keystore."""
    descs = _kms(ctx).list_keys()
    if as_json:
        _echo_json([_desc_dict(d) for d in descs])
        return
    from rich.table import Table

    table = Table(title=f"Keys in {_kms(ctx).keystore_dir} (software keystore, not an HSM)")
    for col in ("Key id", "Aliases", "Spec", "State", "Primary", "Versions", "Rotation", "Description"):
        table.add_column(col, no_wrap=col == "Key id")
    for d in descs:
        period = d.extra.get("rotation_period_days")
        table.add_row(*_row(
            d.key_id,
            ", ".join(d.extra.get("aliases", [])),
            d.extra.get("spec"),
            d.state,
            d.primary_version or "-",
            " ".join(f"{v}:{s}" for v, s in d.versions.items()),
            f"every {period}d" if period else "on demand",
            d.extra.get("description", ""),
        ))
    _console().print(table)


@keys.command()
@_where
@click.argument("key")
@_json_option
@click.pass_context
def describe(ctx: click.Context, key: str, as_json: bool) -> None:
    """Show a key (id or alias): state, versions, aliases, policy."""
    d = _kms(ctx).describe_key(key)
    if as_json:
        _echo_json(_desc_dict(d))
        return
    from rich.table import Table

    table = Table(title=f"Key {d.key_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row(*_row("State", d.state))
    table.add_row(*_row("Primary version", d.primary_version or "-"))
    table.add_row(*_row("Versions", " ".join(f"{v}:{s}" for v, s in d.versions.items())))
    for name, value in d.extra.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        table.add_row(*_row(name.replace("_", " ").capitalize(), "-" if value in (None, "") else value))
    _console().print(table)


@keys.command()
@_where
@click.argument("key")
@_json_option
@click.pass_context
def rotate(ctx: click.Context, key: str, as_json: bool) -> None:
    """Add a key version; new wraps use it, old versions still decrypt."""
    version = _kms(ctx).rotate_key(key)
    if as_json:
        _echo_json({"key": key, "primary_version": str(version)})
    else:
        click.echo(f"{key}: new primary version {version}")


@keys.command()
@_where
@click.argument("key")
@click.option("--version", "version", type=int, default=None, help="Enable only this version.")
@click.pass_context
def enable(ctx: click.Context, key: str, version: int | None) -> None:
    """Enable a key, or one of its versions."""
    if version is None:
        _kms(ctx).enable_key(key)
        click.echo(f"{key}: enabled")
    else:
        _kms(ctx).enable_key_version(key, version)
        click.echo(f"{key}: version {version} enabled")


@keys.command()
@_where
@click.argument("key")
@click.option("--version", "version", type=int, default=None, help="Disable only this version.")
@click.pass_context
def disable(ctx: click.Context, key: str, version: int | None) -> None:
    """Disable a key (or one version): it can neither wrap nor unwrap until enabled."""
    if version is None:
        _kms(ctx).disable_key(key)
        click.echo(f"{key}: disabled")
    else:
        _kms(ctx).disable_key_version(key, version)
        click.echo(f"{key}: version {version} disabled")


@keys.command("schedule-deletion")
@_where
@click.argument("key")
@click.option("--days", type=int, required=True,
              help=f"Waiting period, {MIN_DELETION_DAYS}-{MAX_DELETION_DAYS} days.")
@click.pass_context
def schedule_deletion(ctx: click.Context, key: str, days: int) -> None:
    """Schedule the key's destruction after a waiting period (cancellable until then)."""
    when = _kms(ctx).schedule_key_deletion(key, days)
    click.echo(f"{key}: pending deletion, destroyed on {when.isoformat()} unless cancelled "
               f"(spark-kms keys cancel-deletion {key})")


@keys.command("cancel-deletion")
@_where
@click.argument("key")
@click.pass_context
def cancel_deletion(ctx: click.Context, key: str) -> None:
    """Cancel a scheduled deletion; the key gets back the state it had."""
    _kms(ctx).cancel_key_deletion(key)
    click.echo(f"{key}: deletion cancelled")


@keys.command("destroy-version")
@_where
@click.argument("key")
@click.option("--version", "version", type=int, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def destroy_version(ctx: click.Context, key: str, version: int, yes: bool) -> None:
    """Erase one version's material: data wrapped under it becomes unrecoverable."""
    if not yes:
        click.confirm(f"Destroy version {version} of {key}? Data it wrapped can never be decrypted again",
                      abort=True)
    _kms(ctx).destroy_key_version(key, version)
    click.echo(f"{key}: version {version} destroyed")


@keys.group()
def alias() -> None:
    """Create, move and delete aliases (alias/<name>)."""


@alias.command("create")
@_where
@click.argument("alias_name", metavar="ALIAS")
@click.argument("key")
@click.pass_context
def alias_create(ctx: click.Context, alias_name: str, key: str) -> None:
    """Name KEY with ALIAS."""
    _kms(ctx).create_alias(alias_name, key)
    click.echo(f"{alias_name} -> {key}")


@alias.command("update")
@_where
@click.argument("alias_name", metavar="ALIAS")
@click.argument("key")
@click.pass_context
def alias_update(ctx: click.Context, alias_name: str, key: str) -> None:
    """Point ALIAS at another KEY."""
    _kms(ctx).update_alias(alias_name, key)
    click.echo(f"{alias_name} -> {key}")


@alias.command("delete")
@_where
@click.argument("alias_name", metavar="ALIAS")
@click.pass_context
def alias_delete(ctx: click.Context, alias_name: str) -> None:
    """Delete ALIAS (the key stays)."""
    _kms(ctx).delete_alias(alias_name)
    click.echo(f"{alias_name} deleted")


@alias.command("list")
@_where
@_json_option
@click.pass_context
def alias_list(ctx: click.Context, as_json: bool) -> None:
    """List aliases."""
    aliases = _kms(ctx).list_aliases()
    if as_json:
        _echo_json(aliases)
    else:
        for name, key_id in aliases.items():
            click.echo(f"{name} -> {key_id}")


@keys.group()
def policy() -> None:
    """Per-principal key policies (roles: admin, encrypt, decrypt)."""


@policy.command("set")
@_keystore_option
@click.argument("key")
@click.option("--principal", "principal", required=True, help="Principal name, or '*' for everyone.")
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(ROLES), help="Repeatable.")
@click.pass_context
def policy_set(ctx: click.Context, key: str, principal: str, roles: tuple[str, ...]) -> None:
    """Give PRINCIPAL exactly these roles on KEY (other principals keep theirs).

    A key without a policy allows everyone everything; the first `policy set` on it
    also grants you (the calling principal) admin, so you keep managing the key.
    """
    kms = _kms(ctx)
    current = kms.get_key_policy(key)
    new = dict(current) if current is not None else {kms.principal: ["admin"]}
    new[principal] = sorted(set(roles))
    kms.put_key_policy(key, new)
    if current is None and principal != kms.principal:
        click.echo(f"note: {key} had no policy; granted {kms.principal!r} admin so you keep control")
    click.echo(f"{key}: {principal} -> {', '.join(new[principal])}")


@policy.command("show")
@_where
@click.argument("key")
@click.pass_context
def policy_show(ctx: click.Context, key: str) -> None:
    """Print KEY's policy as JSON (null: no policy, everyone may do everything)."""
    _echo_json(_kms(ctx).get_key_policy(key))


@keys.command()
@_where
@click.option("--key", "key", default=None, help="Only events about this key (id or alias).")
@click.option("--limit", type=int, default=None, help="Only the last N events.")
@_json_option
@click.pass_context
def audit(ctx: click.Context, key: str | None, limit: int | None, as_json: bool) -> None:
    """Show the audit log (who did what with which key, and the outcome)."""
    events = _kms(ctx).audit_events(key)
    if limit is not None:
        events = events[-limit:] if limit > 0 else []
    if as_json:
        _echo_json(events)
        return
    from rich.table import Table

    table = Table(title=f"Audit log of {_kms(ctx).keystore_dir}")
    for col in ("Time", "Principal", "Operation", "Key id", "Ver", "Context", "Outcome"):
        table.add_column(col, no_wrap=col in ("Time", "Key id"))
    for e in events:
        outcome = e.get("outcome", "")
        table.add_row(
            *_row(
                e.get("time", ""),
                e.get("principal", ""),
                e.get("operation", ""),
                e.get("key_id") or "-",
                e.get("key_version") or "-",
                json.dumps(e.get("encryption_context") or {}, sort_keys=True),
            ),
            *_row(outcome, style=None if outcome == "ok" else "red"),
        )
    _console().print(table)
