"""Failing tasks through the real operators (``dag.test()``): permanent spark_kms errors fail at once
whatever ``retries`` says, transient ones are retried, run records hold one line, and a failed
decrypt leaves its destination as it was."""

from __future__ import annotations

import hashlib
import json
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_plugins.demo import seed_dataset
from spark_kms.kms.local import LocalKms

pytestmark = pytest.mark.airflow

LOGICAL_DATE = datetime(2025, 3, 4, tzinfo=timezone.utc)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _task_instance(dag_run: Any, task_id: str) -> Any:
    return next(ti for ti in dag_run.get_task_instances() if ti.task_id == task_id)


def _keystore(tmp_path: Path) -> tuple[LocalKms, dict[str, dict[str, Any]]]:
    keystore = tmp_path / "keystore"
    admin = LocalKms(keystore)
    admin.create_key(alias="alias/pii")
    return admin, {"local": {"keystore": str(keystore)}}


# -- the table ---------------------------------------------------------------------------
def test_every_error_class_is_either_permanent_or_retried() -> None:
    import inspect

    import spark_kms.errors as errors_module
    from airflow_plugins.operators._errors import is_permanent

    classes = {c.__name__: c for _, c in inspect.getmembers(errors_module, inspect.isclass)
               if issubclass(c, errors_module.SparkKmsError)}
    retried = {name for name, cls in classes.items()
               if not is_permanent(cls("x", "y") if cls is errors_module.MissingExtraError else cls("x"))}
    assert retried == {"KmsUnavailableError", "ThrottlingError", "KmsError", "JobError", "SparkKmsError"}


def test_a_permanent_error_carried_by_a_spark_exception_fails_fast_with_its_message() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from pyspark.errors import PythonException

    from airflow_plugins.operators._errors import task_errors
    from spark_kms.errors import AccessDeniedError, KmsUnavailableError
    from spark_kms.spark._errors import marked_for_driver

    def spark_exception(error: Exception) -> PythonException:
        try:
            with marked_for_driver():
                raise error
        except Exception as exc:  # noqa: BLE001
            return PythonException(message="".join(traceback.format_exception(exc)))

    carrier = spark_exception(AccessDeniedError("principal 'a' may not call Decrypt", operation="Decrypt"))
    with pytest.raises(AirflowFailException, match="^AccessDeniedError: principal 'a' may not call Decrypt$") as info, \
            task_errors():
        raise carrier
    assert isinstance(info.value.__cause__, AccessDeniedError) and info.value.__cause__.__cause__ is carrier
    with pytest.raises(KmsUnavailableError, match="down") as unavailable, task_errors():
        raise spark_exception(KmsUnavailableError("the KMS is down"))
    assert isinstance(unavailable.value.__cause__, PythonException)
    with pytest.raises(ValueError), task_errors():
        raise ValueError("not ours: Airflow decides")


# -- through the operators ---------------------------------------------------------------
def test_a_disabled_key_fails_the_decrypt_task_without_retrying_and_keeps_the_destination(
    run_dag, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import DecryptDatasetOperator

    admin, options = _keystore(tmp_path)
    dataset = seed_dataset(tmp_path / "customers", options)
    destination = tmp_path / "plain"
    destination.mkdir()
    (destination / "part-0.csv").write_text("customer_id,email\n1,kept@example.org\n")
    before = _digests(destination)
    admin.disable_key("alias/pii")

    with DAG("disabled_decrypt", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        DecryptDatasetOperator(task_id="decrypt", source=str(dataset), destination=str(destination),
                               kms_options=options, retries=2, retry_delay=timedelta(0))
    dag_run, states = run_dag(dag, logical_date=LOGICAL_DATE)
    assert states == {"decrypt": "failed"} and dag_run.state == "failed"
    assert _task_instance(dag_run, "decrypt").try_number == 1  # failed for good at the first try
    out = capfd.readouterr()
    assert "KeyStateError: cannot unwrap data key" in caplog.text + out.out + out.err
    record = json.loads(next((dataset / "_spark_kms_runs").glob("af-disabled_decrypt-decrypt-*.json")).read_text())
    assert record["status"] == "failed" and record["error"].startswith("KeyStateError: cannot unwrap data key")
    assert "\n" not in record["error"] and "Traceback" not in record["error"]
    assert _digests(destination) == before


def test_a_denied_principal_fails_the_encrypt_task_without_retrying(
    run_dag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import EncryptDatasetOperator

    admin, options = _keystore(tmp_path)
    admin.put_key_policy("alias/pii", {admin.principal: ["admin", "encrypt", "decrypt"], "reader": ["decrypt"]})
    src = tmp_path / "land"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "email": ["a@x.org", "b@x.org"]}), src / "part-0.parquet")
    monkeypatch.setenv("AIRFLOW_CONN_KMS_READER", json.dumps(
        {"conn_type": "spark_kms_local", "login": "reader",
         "extra": {"keystore": options["local"]["keystore"], "key_uri": "local://alias/pii"}}))
    with DAG("denied_encrypt", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        EncryptDatasetOperator(task_id="encrypt", source=str(src), destination=str(tmp_path / "enc"),
                               columns=["email"], kms_conn_id="kms_reader", retries=2, retry_delay=timedelta(0))
    dag_run, states = run_dag(dag, logical_date=LOGICAL_DATE)
    assert states == {"encrypt": "failed"} and _task_instance(dag_run, "encrypt").try_number == 1
    record = json.loads(next((tmp_path / "enc" / "_spark_kms_runs").glob("af-denied_encrypt-*.json")).read_text())
    assert record["error"].startswith("AccessDeniedError: principal 'reader' may not call GenerateDataKey")


def test_a_throttling_kms_is_retried(run_dag, tmp_path: Path) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import ReencryptDatasetOperator
    from spark_kms.kms.retry import RetryPolicy
    from spark_kms.testing.faults import LOCAL_KMS_FAULTS, set_throttle, throttled_requests

    admin, options = _keystore(tmp_path)
    dataset = seed_dataset(tmp_path / "customers", options)
    admin.rotate_key("alias/pii")
    # The provider tries each call twice; the first two data-plane calls are throttled: the first
    # try of the task fails with ThrottlingError, the retry gets through.
    set_throttle(options["local"]["keystore"], 2, 1_000_000)
    faulty = {"local": {**options["local"], "request_interceptor": LOCAL_KMS_FAULTS,
                        "_retry": RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.01, deadline=5.0)}}
    with DAG("throttled_rewrap", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ReencryptDatasetOperator(task_id="rewrap", path=str(dataset), mode="rewrap", kms_options=faulty,
                                 retries=2, retry_delay=timedelta(0))
    dag_run, states = run_dag(dag, logical_date=LOGICAL_DATE)
    assert throttled_requests(options["local"]["keystore"]) == 2
    assert states == {"rewrap": "success"}, states
    assert _task_instance(dag_run, "rewrap").try_number == 2  # up for retry once, then through


def test_a_keystore_gone_mid_job_is_retried_and_the_retry_succeeds(run_dag, tmp_path: Path) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import DecryptDatasetOperator

    _admin, options = _keystore(tmp_path)
    dataset = seed_dataset(tmp_path / "customers", options)
    keystore = Path(options["local"]["keystore"])
    away = tmp_path / "unmounted"
    keystore.rename(away)
    errors: list[str] = []

    def remount(context: Any) -> None:  # the volume comes back before the retry
        errors.append(str(context.get("exception")))
        away.rename(keystore)

    with DAG("keystore_gone", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        DecryptDatasetOperator(task_id="decrypt", source=str(dataset), destination=str(tmp_path / "plain"),
                               kms_options=options, retries=1, retry_delay=timedelta(0), on_retry_callback=remount)
    dag_run, states = run_dag(dag, logical_date=LOGICAL_DATE)
    assert states == {"decrypt": "success"}, states
    assert _task_instance(dag_run, "decrypt").try_number == 2
    assert len(errors) == 1 and "is missing" in errors[0] and "create a key first" not in errors[0]
    runs = [json.loads(p.read_text()) for p in (dataset / "_spark_kms_runs").glob("*.json")]
    assert [r["status"] for r in runs] == ["succeeded"]  # the retry reused the run id: one record
    assert (tmp_path / "plain").is_dir()


def test_the_sensor_fails_fast_on_a_key_that_does_not_exist(airflow_db: object, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

    _admin, options = _keystore(tmp_path)
    dataset = seed_dataset(tmp_path / "customers", options)
    sensor = DatasetRotationSensor(task_id="sen", path=str(dataset),
                                   kms_options={"local": {"keystore": str(tmp_path / "never-created")}})
    with pytest.raises(AirflowFailException, match="^KeyNotFoundError: keystore .* does not exist"):
        sensor.poke({})
