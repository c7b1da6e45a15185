"""The JVM fast path of :func:`spark_kms.spark.read_encrypted`: AES-256-GCM cells decrypted inside the
executors' JVMs, where Spark's Parquet scan already has the bytes, instead of in Python workers.

What it is
    A small jar (``spark_kms/jvm/spark-kms-fastpath.jar``, built from ``jvm/`` by ``make jar``) with two
    functions, ``spark_kms_decrypt_string`` and ``spark_kms_decrypt_binary`` (``f(cell, config)``), AES-GCM
    through OpenSSL over JNI (JCE where the native library cannot load), and a Spark plugin
    (``io.sparkkms.fastpath.FastPathPlugin``) that hands the data keys of a read to the executors. With the SQL
    extension (``io.sparkkms.fastpath.SparkKmsExtensions``) the functions are Catalyst expressions, and a columnar
    rule decrypts the columns a columnar scan (Parquet's vectorized reader) feeds them batch by batch, one JNI call
    per column and batch (``SparkKmsDecryptColumnar`` in the plan; :data:`COLUMNAR_SWITCH` turns it off); other
    plans decrypt row by row. With the plugin alone they are Java UDFs, row by row. The session must start with
    them: :func:`spark_conf` gives the settings, which :func:`spark_kms.spark.session.spark_session` adds by
    itself when the jar is built.

Keys (docs/ARCHITECTURE.md, "Secrets" / "JVM fast path")
    ``read_encrypted`` unwraps, on the driver, the AES-GCM data keys of the dataset through the same
    :class:`~spark_kms.kms.KmsConfig`, providers, encryption contexts and process key cache as the Python path
    (so the same principal is checked, the KMS audit log sees the same requests, and a denied principal gets the
    same ``AccessDeniedError`` / ``KeyStateError`` -- at ``read_encrypted`` time instead of at the action; at
    most one KMS Decrypt per data key per driver process, none on executors). It puts them into the driver JVM's
    in-memory registry under a random handle; each executor fetches a handle's keys once over Spark's RPC (the
    plugin) and caches them. The plan holds only the handle, the column name and the AAD contexts (a binary
    literal): never key bytes. The registries keep at most 256 handles each (least recently used dropped and
    zeroed); :func:`forget` drops them sooner.

When it is used (``read_encrypted(..., fast_path=...)``)
    ``"auto"`` (default): when the session's JVM has the plugin, the session is classic (never over Spark
    Connect), and neither ``SPARK_KMS_FAST_PATH=0`` (environment) nor ``spark.spark_kms.sql.fastPath=false``
    (session conf) turns it off; column by column, for AES-GCM columns of the types of :data:`CAST_TYPES` or
    string / binary. Other columns (SIV, floats, dates, decimals...) use the Python UDF. ``True``: the same,
    but a :class:`~spark_kms.errors.ConfigurationError` saying why when the fast path is unavailable.
    ``False``: never.

Errors come back as the Python path's classes through :func:`spark_kms.spark.errors_translated`: a tampered
cell is a ``DecryptionError`` naming the column and the file, an unknown DEK an ``UnknownDataKeyError``
naming the DEK id and the column.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spark_kms.crypto import AES_256_GCM, KeyTable, column_binding
from spark_kms.errors import ConfigurationError, KeyErasedError
from spark_kms.kms import KmsConfig
from spark_kms.parquet.keys import DekResolver
from spark_kms.spark.remote import is_connect

__all__ = [
    "COLUMNAR_SWITCH",
    "CONF_SWITCH",
    "ENV_SWITCH",
    "EXTENSIONS_CLASS",
    "JAR",
    "PLUGIN_CLASS",
    "UDF_BINARY",
    "UDF_STRING",
    "decrypt_columns",
    "extension_active",
    "forget",
    "jar_path",
    "session_conf",
    "spark_conf",
    "unavailable_reason",
]

logger = logging.getLogger(__name__)

#: where ``make jar`` puts the jar
JAR = Path(__file__).resolve().parent.parent / "jvm" / "spark-kms-fastpath.jar"
PLUGIN_CLASS = "io.sparkkms.fastpath.FastPathPlugin"
#: the SQL extension: the decrypt functions as Catalyst expressions, decrypted batch by batch over a columnar scan
EXTENSIONS_CLASS = "io.sparkkms.fastpath.SparkKmsExtensions"
_EXPRESSION_CLASS = "io.sparkkms.fastpath.DecryptCell"
UDF_STRING = "spark_kms_decrypt_string"
UDF_BINARY = "spark_kms_decrypt_binary"
_JAVA_CLASSES = {UDF_STRING: "io.sparkkms.fastpath.DecryptString", UDF_BINARY: "io.sparkkms.fastpath.DecryptBinary"}
#: ``SPARK_KMS_FAST_PATH=0`` (or ``false``, ``off``, ``no``) turns the fast path off in this process
ENV_SWITCH = "SPARK_KMS_FAST_PATH"
#: ``spark.spark_kms.sql.fastPath=false`` turns it off in a session (a runtime setting)
CONF_SWITCH = "spark.spark_kms.sql.fastPath"
#: ``spark.spark_kms.sql.fastPath.columnar=false`` keeps the extension's expressions row by row (a runtime setting)
COLUMNAR_SWITCH = "spark.spark_kms.sql.fastPath.columnar"
_OFF = ("0", "false", "off", "no")
_CONFIG_MAGIC = b"SKF1"

#: Arrow types decrypted as UTF-8 text, then cast by Spark to the column's type: for these, Spark's cast of
#: the plaintext encoding (docs/FORMAT.md section 6: decimal digits, ``true``/``false``) equals the Python
#: path's decoding for every value a writer can write.
CAST_TYPES = frozenset({"int8", "int16", "int32", "int64", "bool"})
_STRING_TYPES = frozenset({"string", "large_string"})
_BINARY_TYPES = frozenset({"binary", "large_binary"})


def jar_path() -> Path | None:
    """The built jar, or None when ``make jar`` has not run."""
    return JAR if JAR.is_file() else None


def spark_conf() -> dict[str, str]:
    """The settings a session needs at start for the fast path: the plugin, the SQL extension and the jar (on
    the driver's class path and shipped to executors). Pass them to ``SparkSession.builder.config`` or
    ``spark-submit --conf``. A session with the plugin but not the extension still uses the fast path, through
    Java UDFs, row by row.

    :raises ConfigurationError: the jar is not built (``make jar``).
    """
    jar = jar_path()
    if jar is None:
        raise ConfigurationError(f"the spark_kms fast-path jar {JAR} is not built: run `make jar` (JDK 17 javac)")
    return {"spark.plugins": PLUGIN_CLASS, "spark.sql.extensions": EXTENSIONS_CLASS, "spark.jars": str(jar),
            "spark.driver.extraClassPath": str(jar)}


def session_conf(conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """``conf`` plus :func:`spark_conf` merged into it (comma lists joined) when the jar is built and the
    fast path is not switched off by ``SPARK_KMS_FAST_PATH``; ``conf`` unchanged otherwise."""
    out = dict(conf or {})
    if jar_path() is None or _env_off():
        return out
    for key, value in spark_conf().items():
        have = str(out.get(key, "") or "")
        sep = ":" if key.endswith("ClassPath") else ","
        if value not in have.split(sep):
            out[key] = f"{have}{sep}{value}" if have else value
    return out


def _env_off() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF


def extension_active(spark: Any) -> bool:
    """Whether ``spark`` started with the SQL extension (:data:`EXTENSIONS_CLASS` in ``spark.sql.extensions``, and
    its functions registered: Spark only warns when it cannot load an extension's class): the decrypt functions
    are then Catalyst expressions, decrypted batch by batch over columnar scans."""
    try:
        value = str(spark.conf.get("spark.sql.extensions", "") or "")
        if EXTENSIONS_CLASS not in [v.strip() for v in value.split(",")]:
            return False
        return str(spark.catalog.getFunction(UDF_STRING).className) == _EXPRESSION_CLASS
    except Exception:  # noqa: BLE001 - py4j / Connect / no such function: no extension to use
        return False


def unavailable_reason(spark: Any) -> str | None:
    """Why ``spark`` cannot use the fast path now, or None when it can."""
    if _env_off():
        return f"it is switched off ({ENV_SWITCH}={os.environ.get(ENV_SWITCH)})"
    if is_connect(spark):
        return "this is a Spark Connect session (the fast path needs the classic driver's JVM)"
    try:
        if str(spark.conf.get(CONF_SWITCH, "true")).strip().lower() in _OFF:
            return f"it is switched off in the session ({CONF_SWITCH}=false)"
        active = spark.sparkContext._jvm.io.sparkkms.fastpath.FastPathPlugin.driverActive()
    except Exception:  # noqa: BLE001 - py4j: the class is not on the driver's class path
        active = False
    if not active:
        return (f"the session did not start with the fast-path plugin (spark.plugins={PLUGIN_CLASS} and the jar "
                "in spark.jars / spark.driver.extraClassPath: spark_kms.spark.fastpath.spark_conf())")
    return None


def _fast_kind(arrow_type: str) -> str | None:
    if arrow_type in _STRING_TYPES or arrow_type in CAST_TYPES:
        return UDF_STRING
    if arrow_type in _BINARY_TYPES:
        return UDF_BINARY
    return None


def _field(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "big") + raw


def _config(handle: str, column: str, label: str, contexts: Sequence[bytes]) -> bytes:
    """The UDF's config literal: handle, column, label and the AAD tails to try (FORMAT.md section 3)."""
    name = column.encode("utf-8")
    tails = [len(name).to_bytes(2, "big") + name + context for context in contexts]
    return _CONFIG_MAGIC + b"".join(_field(f) for f in (handle.encode(), name, label.encode("utf-8"), *tails))


@contextlib.contextmanager
def _py4j_quiet() -> Iterator[None]:
    """py4j logs each command it sends at DEBUG, arguments included: never while keys cross."""
    loggers = [logging.getLogger(name) for name in ("py4j", "py4j.clientserver", "py4j.java_gateway")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


def _register_keys(spark: Any, table: KeyTable, kms: KmsConfig, where: str) -> tuple[str | None, int, list[str]]:
    """Unwrap the table's AES-GCM data keys (driver, same resolver and cache as the Python path) into the
    driver JVM's registry under a fresh handle; ``(handle, number of keys, erased data keys)``. When a data key is
    erased (its KMS key is scheduled for deletion or destroyed: KeyErasedError) the others are still tried, to
    count them, and nothing is registered: ``(None, 0, erased ids)``."""
    resolver = DekResolver(table.deks, kms_options=kms, where=where)
    ids = sorted(dek_id for dek_id, entry in table.deks.items() if entry.algorithm == AES_256_GCM)
    keys = bytearray()
    erased: list[str] = []
    try:
        for dek_id in ids:
            try:
                key = resolver.lookup(bytes.fromhex(dek_id))
            except KeyErasedError:
                erased.append(dek_id)
                continue
            if not erased:
                keys += key
        if erased:
            return None, 0, erased
        handle = secrets.token_hex(16)
        with _py4j_quiet():
            spark.sparkContext._jvm.io.sparkkms.fastpath.KeyRegistry.register(handle, ",".join(ids), keys)
    finally:
        keys[:] = bytes(len(keys))
    logger.info("fast path: %d data keys of %s registered in the driver JVM (%d KMS calls)", len(ids), where,
                resolver.kms_calls)
    return handle, len(ids), []


def decrypt_columns(
    spark: Any,
    df: Any,
    table: KeyTable,
    names: Sequence[str],
    kms: KmsConfig,
    *,
    fast_path: bool | str = "auto",
    where: str = "",
    min_format_version: int = 1,
    on_erased: str = "null",
) -> dict[str, Any]:
    """The fast path's decrypting Column of each of ``names`` it can decrypt (the others are not in the result
    and take the Python UDF). Unwraps the data keys now, on the driver, when at least one column qualifies.

    Per-subject columns are never chosen (their cells need the subject key store: Python UDFs). When a data key
    of the dataset is erased, no column is: a WARNING names the erased data keys and their KMS keys, and every
    column takes the Python UDFs, which return erased cells as null (or raise, ``on_erased="raise"``).

    :raises ConfigurationError: ``fast_path=True`` and the fast path is unavailable (the reason is named), or
        ``fast_path`` is not ``"auto"``, True or False.
    """
    if fast_path not in ("auto", True, False):
        raise ConfigurationError(f"fast_path must be 'auto', True or False, got {fast_path!r}")
    if fast_path is False:
        return {}
    reason = unavailable_reason(spark)
    if reason is not None:
        if fast_path is True:
            raise ConfigurationError(f"read_encrypted(fast_path=True): the JVM fast path cannot be used: {reason}")
        logger.debug("fast path not used: %s", reason)
        return {}
    if any(getattr(table.columns.get(n), "row_binding", None) for n in names):
        return {}  # read_encrypted refuses row-bound columns before any key is unwrapped
    chosen = {}
    for name in names:
        spec = table.columns.get(name)
        if spec is None or spec.algorithm != AES_256_GCM or spec.row_binding is not None:
            continue
        kind = _fast_kind(spec.arrow_type)
        if kind is None:
            logger.info("fast path: column %r (%s) uses the Python UDF: its type is not decrypted in the JVM", name,
                        spec.arrow_type)
            continue
        chosen[name] = (spec, kind)
    if not chosen:
        return {}
    from pyspark.sql import functions as F  # noqa: N812 - pyspark's convention
    from pyspark.sql.types import BinaryType, StringType

    from spark_kms.spark.udfs import spark_type_of

    if not extension_active(spark):  # the plugin alone: Java UDFs (the extension's functions are built in)
        for udf_name, java_class in _JAVA_CLASSES.items():
            spark.udf.registerJavaFunction(udf_name, java_class,
                                           StringType() if udf_name == UDF_STRING else BinaryType())
    handle, _, erased = _register_keys(spark, table, kms, where)
    if handle is None:
        uris = sorted({table.deks[d].key_uri for d in erased})
        logger.warning("%s: %d of the data keys are erased (KMS keys %s are scheduled for deletion or destroyed): "
                       "their cells read as %s", where or "read_encrypted", len(erased), uris,
                       "null" if on_erased == "null" else "an ErasedDataError (on_erased='raise')")
        logger.info("fast path not used for %s: it has erased data keys (%s); the Python UDFs decrypt it", where,
                    ", ".join(erased[:5]) + (" ..." if len(erased) > 5 else ""))
        return {}
    out = {}
    for name, (spec, kind) in chosen.items():
        binding = column_binding(spec)
        contexts = [binding] if table.aad_versions(name, min_format_version=min_format_version) == (2,) \
            else [binding, b""]
        column = F.call_function(kind, df[name], F.lit(bytearray(_config(handle, name, where, contexts))))
        if spec.arrow_type in CAST_TYPES:
            column = column.cast(spark_type_of(spec.arrow_type, column=name))
        out[name] = column
    logger.info("fast path: columns %s decrypted in the JVM (key handle %s…)", sorted(out), handle[:8])
    return out


def forget(spark: Any, handle: str | None = None) -> int:
    """Drop (and zero) the data keys the driver JVM holds for the fast path: those of ``handle``, or all. A
    DataFrame whose keys were dropped fails its next action with a ConfigurationError (read it again), in local
    mode and on a cluster: executors hold a read's keys only while a task of it runs (fetched from the driver once
    per task, zeroed when it ends), so no task started after this call can decrypt with them. Returns how many
    handles were dropped."""
    if is_connect(spark):
        return 0
    try:
        registry = spark.sparkContext._jvm.io.sparkkms.fastpath.KeyRegistry
        return int(registry.forgetAll()) if handle is None else int(bool(registry.forget(handle)))
    except Exception:  # noqa: BLE001 - the jar is not loaded: nothing to forget
        return 0
