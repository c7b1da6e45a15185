"""spark_kms errors across Spark (spark_kms.spark._errors): a worker's error comes back as itself.

The first half builds Spark exceptions from real worker tracebacks (no JVM); the second half runs
Spark and checks the library's own actions and ``errors_translated`` around a user's action.
"""

from __future__ import annotations

import inspect
import json
import traceback
from contextlib import nullcontext
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.errors import AnalysisException, PythonException

import spark_kms.errors as errors_module
from spark_kms.crypto import KEY_TABLE_METADATA_KEY
from spark_kms.errors import (
    ConfigurationError,
    DecryptionError,
    KeyStateError,
    KmsError,
    MissingExtraError,
    MissingKeyTableError,
    SparkKmsError,
    ThrottlingError,
)
from spark_kms.spark import errors_translated, read_encrypted, translate_spark_error, write_encrypted
from spark_kms.spark._errors import MARKER, error_line, marked_for_driver

from ._helpers import data_files, files_under

ERROR_CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors_module, inspect.isclass) if issubclass(c, SparkKmsError)),
    key=lambda c: c.__name__,
)


def _instance(cls: type[SparkKmsError]) -> SparkKmsError:
    if cls is MissingExtraError:
        return cls("reading from S3", "aws")
    if issubclass(cls, KmsError):
        return cls(f"{cls.__name__} from a worker", key_id="key-1234", operation="GenerateDataKey")
    return cls(f"{cls.__name__} from a worker")


def _worker_text(exc: BaseException, *, marked: bool = True) -> str:
    """What Spark puts in a PythonException: the worker's formatted traceback, then a SQLSTATE."""
    try:
        with marked_for_driver() if marked else nullcontext():
            raise exc
    except BaseException as raised:  # noqa: BLE001
        tb = "".join(traceback.format_exception(raised))
    return f"An exception was thrown from the Python worker:\n{tb}\n SQLSTATE: 38000"


def _python_exception(exc: BaseException, *, marked: bool = True) -> PythonException:
    return PythonException(message=_worker_text(exc, marked=marked))


class _PrivateThrottle(ThrottlingError):
    """A subclass outside spark_kms.errors (like spark_kms.testing's injected throttling)."""


# --------------------------------------------------------------------------- translation, no JVM


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_comes_back_as_itself_with_its_arguments(cls):
    original = _instance(cls)
    back = translate_spark_error(_python_exception(original))
    assert type(back) is cls and str(back) == str(original)
    if isinstance(original, KmsError):
        assert (back.key_id, back.operation) == ("key-1234", "GenerateDataKey")
    if isinstance(original, MissingExtraError):
        assert back.extra == "aws" and isinstance(back, ImportError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_without_the_marker_the_tracebacks_last_line_gives_class_and_message(cls):
    original = _instance(cls)
    back = translate_spark_error(_python_exception(original, marked=False))
    assert type(back) is cls and str(back) == str(original)
    if isinstance(back, KmsError):
        assert back.key_id is None  # only the marker carries the constructor's extra arguments


def test_the_marker_keeps_multi_line_messages_and_maps_private_classes_to_their_public_base():
    multi = translate_spark_error(_python_exception(KeyStateError("first line\nsecond line", key_id="k")))
    assert type(multi) is KeyStateError and str(multi) == "first line\nsecond line" and multi.key_id == "k"
    private = translate_spark_error(_python_exception(_PrivateThrottle("throttled", operation="Decrypt")))
    assert type(private) is ThrottlingError and private.operation == "Decrypt"
    # Unmarked, a class outside spark_kms.errors is not rebuilt at all.
    assert translate_spark_error(_python_exception(_PrivateThrottle("throttled"), marked=False)) is None


def test_only_the_final_exception_of_the_last_traceback_counts():
    def chained() -> None:
        try:
            raise KeyStateError("inner", key_id="k1")
        except KeyStateError as inner:
            raise DecryptionError("cannot unwrap data key 00ff for column 'ssn'") from inner

    try:
        with marked_for_driver():
            chained()
    except DecryptionError as exc:
        text = "".join(traceback.format_exception(exc))
    assert text.count("Traceback (most recent call last):") == 2
    back = translate_spark_error(PythonException(message=text))
    assert type(back) is DecryptionError and "'ssn'" in str(back)

    def replaced() -> None:
        try:
            raise KeyStateError("swallowed")
        except KeyStateError:
            raise RuntimeError("a bug while handling it") from None

    try:
        replaced()
    except RuntimeError as exc:
        text = "".join(traceback.format_exception(exc))
    assert translate_spark_error(PythonException(message=text)) is None  # not resurrected


def test_only_spark_exceptions_and_only_spark_kms_error_classes_are_read():
    text = _worker_text(KeyStateError("disabled"))
    assert translate_spark_error(ValueError(text)) is None  # user code: not read
    assert type(translate_spark_error(AnalysisException(message=text))) is KeyStateError
    for line in ("spark_kms.errors.os: x", "spark_kms.errors.__class__: x", "spark_kms.errors.KmsConfig: x",
                 "spark_kms.errorsXKeyStateError: x", "builtins.ValueError: x"):
        fake = f"Traceback (most recent call last):\n  File \"w.py\", line 1, in f\n{line}"
        assert translate_spark_error(PythonException(message=fake)) is None, line
    for fields in ({"class": "os", "message": "x"}, {"class": "KeyStateError"}, {"class": 3, "message": "x"}):
        fake = (f"Traceback (most recent call last):\n  File \"w.py\", line 1, in f\nValueError: x\n"
                f"{MARKER}{json.dumps(fields)}")
        assert translate_spark_error(PythonException(message=fake)) is None, fields
    assert translate_spark_error(PythonException(message="[PATH_NOT_FOUND] Path does not exist: /x")) is None
    # A marker inside another exception's message is only text.
    spoof = MARKER + json.dumps({"class": "AccessDeniedError", "message": "x", "raised": "spark_kms.errors.AccessDeniedError"})
    assert translate_spark_error(_python_exception(ValueError(f"x\n{spoof}"), marked=False)) is None


def test_errors_translated_re_raises_the_error_with_the_spark_exception_chained():
    spark_exc = _python_exception(KeyStateError("key k is Disabled", key_id="k", operation="Decrypt"))
    with pytest.raises(KeyStateError, match="^key k is Disabled$") as info, errors_translated():
        raise spark_exc
    assert info.value.__cause__ is spark_exc and info.value.operation == "Decrypt"
    own = ConfigurationError("mine")
    with pytest.raises(ConfigurationError) as info, errors_translated():
        raise own
    assert info.value is own and info.value.__cause__ is None  # a spark_kms error passes untouched
    other = PythonException(message="Traceback (most recent call last):\nValueError: boom")
    with pytest.raises(PythonException) as info, errors_translated():
        raise other
    assert info.value is other

    @errors_translated()
    def action() -> None:
        raise spark_exc

    with pytest.raises(KeyStateError):
        action()


def test_error_line_is_one_line():
    carried = _python_exception(KeyStateError("key k is Disabled"))
    assert error_line(carried) == "KeyStateError: key k is Disabled"
    other = PythonException(message=_worker_text(ValueError("boom")))
    assert error_line(other) == "PythonException: ValueError: boom"
    assert error_line(OSError("first\nsecond")) == "OSError: first"
    assert error_line(KeyStateError("x" * 5000)).endswith("...") and len(error_line(KeyStateError("x" * 5000))) == 1000


# --------------------------------------------------------------------------- through Spark


def _rewrite_cells(path: Path, column: str, fn) -> None:
    table = pq.read_table(path)
    meta = pq.read_metadata(path).metadata
    cells = fn(table.column(column).to_pylist())
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(cells, pa.binary()))
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.fixture
def written(spark, local_kms, tmp_path):
    df = spark.range(0, 40, numPartitions=2).selectExpr("id", "concat('pii-', id, '@example.org') as email")
    out = tmp_path / "ds"
    write_encrypted(df, str(out), key_uri=local_kms.key_uri, columns=["email"], kms_options=local_kms.kms_options)
    return df, out


@pytest.mark.spark
def test_write_encrypted_raises_the_tasks_error_with_key_and_operation(spark, local_kms, written):
    from spark_kms.kms.local import LocalKms

    df, out = written
    before = {f: (out / f).read_bytes() for f in files_under(out)}
    LocalKms(local_kms.keystore_dir).disable_key("alias/pii")
    with pytest.raises(KeyStateError, match="is Disabled") as info:
        write_encrypted(df, str(out), key_uri=local_kms.key_uri, columns=["email"], kms_options=local_kms.kms_options)
    err = info.value
    assert err.operation == "GenerateDataKey" and err.key_id  # the marker carried them from the task
    assert type(err.__cause__).__module__.startswith("pyspark.") and "Traceback" not in str(err)
    assert {f: (out / f).read_bytes() for f in files_under(out)} == before  # the aborted write left nothing


@pytest.mark.spark
def test_a_driver_side_kms_failure_leaves_no_staging_behind(spark, local_kms, tmp_path):
    # The job-wide deterministic key is made while Spark creates the writer (its planner): a failure
    # there is an AnalysisException, and Spark never calls abort() -- so nothing may be staged yet.
    from spark_kms.kms.local import LocalKms

    LocalKms(local_kms.keystore_dir).disable_key("alias/pii")
    df = spark.range(4).selectExpr("id", "cast(id as string) as ssn")
    out = tmp_path / "det"
    with pytest.raises(KeyStateError) as info:
        write_encrypted(df, str(out), key_uri=local_kms.key_uri, deterministic_columns=["ssn"],
                        kms_options=local_kms.kms_options)
    assert info.value.operation == "GenerateDataKey"
    assert isinstance(info.value.__cause__, AnalysisException)
    assert not out.exists() or files_under(out) == [], files_under(out)


@pytest.mark.spark
def test_the_data_sources_option_errors_come_back_as_configuration_errors(spark, local_kms, tmp_path):
    df = spark.range(3).selectExpr("id", "cast(id as string) as ssn")
    with pytest.raises(ConfigurationError, match=r"option columns names columns \['nope'\]"), errors_translated():
        (df.write.format("spark_kms").option("key_uri", local_kms.key_uri).option("columns", "nope")
         .option("kms_options", json.dumps(local_kms.kms_options)).mode("overwrite").save(str(tmp_path / "x")))


@pytest.mark.spark
def test_a_lazy_read_fails_at_the_users_action_and_errors_translated_names_the_error(spark, local_kms, written):
    from spark_kms.kms.local import LocalKms

    _df, out = written
    admin = LocalKms(local_kms.keystore_dir)
    lazy = read_encrypted(spark, str(out), kms_options=local_kms.kms_options)  # no KMS call yet: lazy
    admin.disable_key("alias/pii")  # before any worker unwrapped (and cached) this dataset's keys
    with pytest.raises(Exception) as raw:
        lazy.collect()
    assert not isinstance(raw.value, SparkKmsError)  # Spark's own wrapper, as documented
    with pytest.raises(KeyStateError, match="is Disabled"), errors_translated():
        lazy.collect()

    admin.enable_key("alias/pii")
    victim = out / data_files(out)[0]
    _rewrite_cells(victim, "email", lambda cells: [cells[0][:-1] + bytes([cells[0][-1] ^ 1]), *cells[1:]])
    with pytest.raises(DecryptionError, match="'email'") as info, errors_translated():
        read_encrypted(spark, str(victim), kms_options=local_kms.kms_options).collect()
    assert "pii-" not in str(info.value)  # no plaintext in the message


@pytest.mark.spark
def test_the_data_source_reader_errors_come_back_too(spark, local_kms, written):
    _df, out = written
    victim = out / data_files(out)[0]
    table = pq.read_table(victim)
    meta = {k: v for k, v in (pq.read_metadata(victim).metadata or {}).items()
            if k != KEY_TABLE_METADATA_KEY.encode()}
    pq.write_table(table.replace_schema_metadata(meta), victim)
    with pytest.raises(MissingKeyTableError, match=victim.name), errors_translated():
        (spark.read.format("spark_kms").option("kms_options", json.dumps(local_kms.kms_options))
         .load(str(out)).collect())
