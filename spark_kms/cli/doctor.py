"""``spark-kms doctor``: is this installation ready to run spark_kms? One line per item, OK / WARN / FAIL.

Items, in order: Python, spark_kms itself, the native AES-GCM loop, Java (version, ``JAVA_HOME``), Spark
(pyspark's version; with ``--spark`` also a local session started and one job run), one line per optional
extra (an import check: ``aws``, ``gcp``, ``azure``, ``vault``, ``hsm``, ``s3``, ``airflow``, ``delta``,
``iceberg``, ``notebook``), the local keystore (``--keystore`` / ``SPARK_KMS_KEYSTORE``: does it open, how
many keys) and each ``--key-uri`` (DescribeKey through the provider its scheme names, with ``--kms-option``).

Missing optional extras and the pure-Python crypto path are WARN (spark_kms works without them). FAIL is
an item that cannot work: no Java for an installed pyspark, a keystore that does not open, a key that does
not exist or is not usable. The verb exits 0 without a FAIL, else with the exit code of the first failed item's
error (``spark-kms --help``: 3 no such key, 6 keystore, 7 KMS unreachable...; 11 for a FAIL that is no
spark_kms error, e.g. no Java). ``--json`` prints the items as JSON. Nothing here prints a secret: KMS
options are never echoed, only the key URI and what DescribeKey answers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from spark_kms.cli._errors import ExitCode, exit_code_for
from spark_kms.errors import SparkKmsError

__all__ = ["Check", "doctor", "run_checks"]

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
_MIN_JAVA = 17  # Spark 4

#: extra -> (module to find, distribution whose version is shown)
EXTRAS: dict[str, tuple[str, str]] = {
    "aws": ("boto3", "boto3"),
    "gcp": ("google.cloud.kms", "google-cloud-kms"),
    "azure": ("azure.keyvault.keys", "azure-keyvault-keys"),
    "vault": ("hvac", "hvac"),
    "hsm": ("pkcs11", "python-pkcs11"),
    "s3": ("boto3", "boto3"),
    "airflow": ("airflow", "apache-airflow"),
    "delta": ("deltalake", "deltalake"),
    "iceberg": ("pyiceberg", "pyiceberg"),
    "notebook": ("nbclient", "nbclient"),
}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    item: str
    status: str
    detail: str
    exit_code: int = 0  # for a FAIL: what the verb exits with if it is the first one


def _fail(item: str, detail: str, exc: BaseException | None = None) -> Check:
    code = exit_code_for(exc) if isinstance(exc, SparkKmsError) else ExitCode.ERROR
    return Check(item, FAIL, detail, int(code))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------- items


def check_python() -> Check:
    v = sys.version_info
    detail = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    return Check("python", OK, detail) if v >= (3, 10) else _fail("python", f"{detail}: spark_kms needs >= 3.10")


def check_spark_kms() -> Check:
    import spark_kms

    return Check("spark_kms", OK, f"{spark_kms.__version__} ({Path(spark_kms.__file__).parent})")


def check_native() -> Check:
    from spark_kms.crypto import native_available, native_status

    return Check("native crypto", OK if native_available() else WARN, native_status())


def _java_binary() -> tuple[str | None, str]:
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        return (str(candidate) if candidate.is_file() else None), f"JAVA_HOME={home}"
    return shutil.which("java"), "JAVA_HOME not set, java from PATH"


def check_java(spark_installed: bool) -> Check:
    java, where = _java_binary()
    if java is None:
        detail = f"no java found ({where}); Spark needs a JDK {_MIN_JAVA}+ (e.g. apt-get install openjdk-17-jre-headless)"
        return _fail("java", detail) if spark_installed else Check("java", WARN, detail + "; pyspark is not installed")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _fail("java", f"{java} -version failed: {exc}")
    banner = (done.stderr or done.stdout).strip()
    match = re.search(r'version "([^"]+)"', banner)
    if done.returncode != 0 or match is None:
        return _fail("java", f"{java} -version exited {done.returncode}: {banner[:200]}")
    version = match.group(1)
    major = int(version.split(".")[1] if version.startswith("1.") else re.split(r"[.+-]", version)[0])
    detail = f"{version} ({java}; {where})"
    if major < _MIN_JAVA:
        return _fail("java", f"{detail}: Spark 4 needs Java {_MIN_JAVA} or newer")
    return Check("java", OK, detail)


def check_spark(start: bool, master: str) -> Check:
    if importlib.util.find_spec("pyspark") is None:
        return Check("spark", WARN, "pyspark is not installed: pip install 'spark-kms[spark]' (the jobs without "
                                    "--master, keys, inspect and the pyarrow readers work without it)")
    version = _version("pyspark")
    if not start:
        return Check("spark", OK, f"pyspark {version} (a session was not started: --spark starts one)")
    try:
        from spark_kms.spark.session import spark_session

        spark = spark_session(master, "spark-kms doctor")
        try:
            rows = spark.range(10).selectExpr("sum(id) AS s").collect()[0]["s"]
            started = spark.version
        finally:
            spark.stop()
    except Exception as exc:  # noqa: BLE001 (whatever stops Spark from starting is the finding)
        return _fail("spark", f"pyspark {version}: a {master} session did not start or run: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", exc)
    if rows != 45:
        return _fail("spark", f"pyspark {version}: a test job on {master} gave {rows}, expected 45")
    return Check("spark", OK, f"pyspark {version}: a {master} session (Spark {started}) started and ran a job")


def check_extra(name: str) -> Check:
    module, dist = EXTRAS[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is there but broken
        found = False
    if not found:
        return Check(f"extra {name}", WARN, f"not installed ({module}): pip install 'spark-kms[{name}]'")
    return Check(f"extra {name}", OK, f"{dist} {_version(dist)}")


def check_keystore(keystore: str | None, principal: str | None) -> Check:
    if not keystore:
        return Check("keystore", SKIP, "none given (--keystore DIR or SPARK_KMS_KEYSTORE)")
    path = Path(keystore).expanduser()
    if not path.is_dir():
        return _fail("keystore", f"{path}: no such directory (create a key: spark-kms keys create --keystore {path})")
    from spark_kms.kms.local import LocalKms

    try:
        kms = LocalKms(path, principal=principal)
        if not kms.keystore_file.exists():
            return Check("keystore", WARN, f"{path}: no keystore file yet, no keys (spark-kms keys create)")
        keys = kms.list_keys()
    except SparkKmsError as exc:
        return _fail("keystore", f"{path} does not open: {type(exc).__name__}: {exc}", exc)
    except OSError as exc:
        return _fail("keystore", f"{path} cannot be read: {exc.strerror or exc}")
    enabled = sum(1 for k in keys if k.enabled)
    return Check("keystore", OK, f"{path}: {len(keys)} key(s), {enabled} enabled, as principal {kms.principal!r}")


def check_key(key_uri: str, kms_options: dict[str, dict[str, Any]]) -> Check:
    from spark_kms.kms import KmsConfig

    item = f"kms {key_uri}"
    try:
        desc = KmsConfig.of(kms_options).describe(key_uri)
    except SparkKmsError as exc:
        return _fail(item, f"{type(exc).__name__}: {exc}", exc)
    detail = (f"key {desc.key_id}, state {desc.state}, primary version {desc.primary_version}, "
              f"protection {desc.protection_level or '?'}")
    if not desc.enabled:
        from spark_kms.errors import KeyStateError

        return _fail(item, f"{detail}: the key is not enabled (it can neither wrap nor unwrap)",
                     KeyStateError("key not enabled"))
    return Check(item, OK, detail)


def run_checks(*, keystore: str | None = None, principal: str | None = None, key_uris: tuple[str, ...] = (),
               kms_options: dict[str, dict[str, Any]] | None = None, start_spark: bool = False,
               master: str = "local[1]") -> list[Check]:
    """Every item of the report, in order (see the module docstring)."""
    spark_installed = importlib.util.find_spec("pyspark") is not None
    checks = [check_python(), check_spark_kms(), check_native(), check_java(spark_installed),
              check_spark(start_spark, master)]
    checks += [check_extra(name) for name in EXTRAS]
    checks.append(check_keystore(keystore, principal))
    checks += [check_key(uri, kms_options or {}) for uri in key_uris]
    return checks


# --------------------------------------------------------------------------- the verb

_STYLES = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


@click.command()
@click.option("--keystore", type=click.Path(file_okay=False), envvar="SPARK_KMS_KEYSTORE",
              help="local KMS keystore directory to open (env SPARK_KMS_KEYSTORE)")
@click.option("--principal", default=None,
              help="local KMS: act as this principal (env SPARK_KMS_PRINCIPAL, default the OS user)")
@click.option("--key-uri", "key_uris", multiple=True, metavar="URI",
              help="describe this key through its provider (repeatable), e.g. local://alias/pii")
@click.option("--kms-option", "kms_option", multiple=True, metavar="SCHEME.KEY=VALUE",
              help="a KMS provider option for --key-uri, e.g. aws-kms.region=us-east-1 (repeatable)")
@click.option("--spark", "start_spark", is_flag=True,
              help="also start a local Spark session and run one small job (a few seconds)")
@click.option("--master", default="local[1]", show_default=True, metavar="URL",
              help="the master --spark starts")
@click.option("--json", "as_json", is_flag=True, help="print the items as JSON")
def doctor(keystore: str | None, principal: str | None, key_uris: tuple[str, ...], kms_option: tuple[str, ...],
           start_spark: bool, master: str, as_json: bool) -> None:
    """Check this installation: Python, Java, Spark, native crypto, extras, keystore, KMS keys.

    One line per item: OK, WARN (works, but see the note) or FAIL; exits non-zero when an item FAILs."""
    from spark_kms.cli.jobs import _parse_kms_options

    kms_options = _parse_kms_options(keystore, kms_option, principal)
    checks = run_checks(keystore=keystore, principal=principal, key_uris=key_uris, kms_options=kms_options,
                        start_spark=start_spark, master=master)
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        from rich.console import Console
        from rich.text import Text

        console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
        width = max(len(c.item) for c in checks)
        for c in checks:  # details are data (paths, KMS messages): Text, never read as markup
            console.print(Text.assemble((f"{c.status:<4}", _STYLES[c.status]), "  ", (c.item.ljust(width), "bold"),
                                        "  ", c.detail))
        summary = f"{len(failed)} item(s) FAIL" if failed else "ready: no item failed"
        console.print(Text(summary, style="bold red" if failed else "green"))
    if failed:
        raise click.exceptions.Exit(failed[0].exit_code or int(ExitCode.ERROR))
