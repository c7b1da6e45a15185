"""The provider as Airflow sees it (registration, connection forms), the hooks turning
Connections into providers without leaking secrets, the operators' templating, and a
failing task that leaves the data intact."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from airflow_plugins.demo import seed_dataset
from airflow_plugins.provider_info import CONNECTION_TYPES, get_provider_info
from spark_kms.errors import ConfigurationError
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import list_data_files, read_decrypted_table

from .conftest import airflow_env

pytestmark = pytest.mark.airflow


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


# -- registration ------------------------------------------------------------------------
def test_airflow_providers_list_shows_the_provider() -> None:
    out = subprocess.run([sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
                         env=airflow_env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    listed = {p["package_name"]: p for p in json.loads(out.stdout[out.stdout.index("["):])}
    assert "spark-kms" in listed
    assert listed["spark-kms"]["version"] == "0.1.0"


def test_connection_types_and_form_fields_are_registered(airflow_db: object) -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()  # the UI side: connection forms
    runtime = ProvidersManagerTaskRuntime()  # the task side: conn type -> hook class
    assert "spark-kms" in manager.providers
    for conn_type, (hook_class, hook_name, fields, behaviour) in CONNECTION_TYPES.items():
        hook = runtime.hooks[conn_type]
        assert hook is not None, conn_type
        assert hook.hook_class_name == f"airflow_plugins.hooks.spark_kms.{hook_class}"
        assert hook.connection_type == conn_type and hook.hook_name == hook_name
        for name in fields:
            assert f"extra__{conn_type}__{name}" in manager.connection_form_widgets
        assert manager.field_behaviours[conn_type]["hidden_fields"] == behaviour["hidden-fields"]
    widgets = manager.connection_form_widgets
    assert widgets["extra__spark_kms_vault__secret_id"].is_sensitive
    assert widgets["extra__spark_kms_aws__aws_session_token"].is_sensitive
    assert not widgets["extra__spark_kms_aws__region"].is_sensitive
    assert get_provider_info()["package-name"] == "spark-kms"


# -- hooks -------------------------------------------------------------------------------
def test_local_hook_builds_a_working_provider_and_never_logs_secrets(
    airflow_db: object, local_kms, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow_plugins.hooks.spark_kms import SparkKmsHook

    root_key = bytes(range(32))
    root_b64 = base64.b64encode(root_key).decode()
    keystore = local_kms.keystore_dir.parent / "ks2"
    LocalKms(keystore, root_key=root_key).create_key(alias="alias/pii")
    _conn(monkeypatch, "kms_local", conn_type="spark_kms_local", login="etl", password=root_b64,
          extra={"keystore": str(keystore), "key_uri": "local://alias/pii"})
    caplog.set_level(logging.DEBUG)
    hook = SparkKmsHook("kms_local")
    provider = hook.get_conn()
    data_key = provider.generate_data_key({"dataset": "t"})
    assert provider.decrypt_data_key(data_key.wrapped, {"dataset": "t"}) == data_key.plaintext
    assert hook.get_kms_options() == {"local": {"keystore": str(keystore), "principal": "etl", "root_key": root_b64}}
    assert hook.get_key_uri() == "local://alias/pii"
    assert hook.test_connection()[0] is True
    assert LocalKms(keystore, root_key=root_key).audit_events()[-1]["principal"] == "etl"
    out = capfd.readouterr()
    logged = caplog.text + out.out + out.err  # Airflow's structlog writes to the streams
    text = logged + repr(hook) + repr(provider)
    assert "spark_kms connection 'kms_local'" in logged  # the hook did log
    assert root_b64 not in text and root_key.hex() not in text


def test_aws_hook_reuses_an_aws_connection_without_logging_secrets(
    airflow_db: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow_plugins.hooks.spark_kms import SparkKmsHook
    from spark_kms.kms.aws import AwsKmsProvider

    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    _conn(monkeypatch, "aws_default_test", conn_type="aws", login="AKIDEXAMPLE", password=secret,
          extra={"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:5999",
                 "aws_session_token": "sess-token-value"})
    _conn(monkeypatch, "kms_aws", conn_type="spark_kms_aws",
          extra={"key_uri": "aws-kms://alias/pii", "aws_conn_id": "aws_default_test"})
    caplog.set_level(logging.DEBUG)
    hook = SparkKmsHook("kms_aws")
    assert hook.get_kms_options() == {"aws-kms": {
        "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": secret, "aws_session_token": "sess-token-value",
        "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5999"}}
    provider = hook.get_conn()
    assert isinstance(provider, AwsKmsProvider) and provider.region == "eu-west-1"
    out = capfd.readouterr()
    text = caplog.text + out.out + out.err + repr(hook) + repr(provider)
    assert "spark_kms connection 'kms_aws'" in text
    assert secret not in text and "sess-token-value" not in text


def test_gcp_hook_reuses_a_google_connection_and_talks_to_cloud_kms(
    airflow_db: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow_plugins.hooks.spark_kms import SparkKmsHook
    from spark_kms.testing.gcp import ALLOWED_TOKEN, GcpKmsHarness

    key_file = tmp_path / "sa.json"
    _conn(monkeypatch, "google_test", conn_type="google_cloud_platform", extra={"key_path": str(key_file)})
    _conn(monkeypatch, "kms_gcp_reuse", conn_type="spark_kms_gcp",
          extra={"key_uri": "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k", "gcp_conn_id": "google_test"})
    assert SparkKmsHook("kms_gcp_reuse").get_kms_options() == {"gcp-kms": {"credentials_file": str(key_file)}}
    _conn(monkeypatch, "google_dict", conn_type="google_cloud_platform", extra={"keyfile_dict": "{}"})
    _conn(monkeypatch, "kms_gcp_dict", conn_type="spark_kms_gcp",
          extra={"key_uri": "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k", "gcp_conn_id": "google_dict"})
    with pytest.raises(ConfigurationError, match="key_path"):
        SparkKmsHook("kms_gcp_dict").get_kms_options()

    # A connection with an endpoint and a token drives the real client over gRPC to the test server.
    caplog.set_level(logging.DEBUG)
    with GcpKmsHarness() as harness:
        _conn(monkeypatch, "kms_gcp", conn_type="spark_kms_gcp", password=ALLOWED_TOKEN,
              extra={"key_uri": f"gcp-kms://{harness.key_name}", "endpoint": harness.endpoint})
        provider = SparkKmsHook("kms_gcp").get_conn()
        with provider.generate_data_key({"dataset": "customers"}) as dek:
            assert provider.decrypt_data_key(dek.wrapped, {"dataset": "customers"}) == dek.plaintext
            assert dek.wrapped.key_version == "1"
    assert ALLOWED_TOKEN not in caplog.text + repr(provider)


def test_vault_hook_options_and_a_key_of_the_wrong_backend(airflow_db: object, monkeypatch) -> None:
    from airflow_plugins.hooks.spark_kms import SparkKmsHook

    _conn(monkeypatch, "kms_vault", conn_type="spark_kms_vault", password="hvs.token",
          extra={"key_uri": "vault://127.0.0.1:8200/transit/keys/pii", "tls": "false", "derived": True})
    assert SparkKmsHook("kms_vault").get_kms_options() == {
        "vault": {"tls": False, "derived": True, "token": "hvs.token"}}
    with pytest.raises(ConfigurationError, match=r"kms_vault.*spark_kms_vault.*'vault://\.\.\.'.*aws-kms://alias/x"):
        SparkKmsHook("kms_vault", key_uri="aws-kms://alias/x").get_key_uri()
    _conn(monkeypatch, "not_kms", conn_type="http", host="127.0.0.1")
    with pytest.raises(ConfigurationError, match=r"'not_kms' has type 'http'"):
        SparkKmsHook("not_kms").get_kms_options()
    # A key URI without a scheme: the same error as every other entry point (tests/test_key_uri_everywhere.py).
    from spark_kms.kms import parse_key_uri

    with pytest.raises(ConfigurationError) as expected:
        parse_key_uri("alias/pii")
    _conn(monkeypatch, "kms_noscheme", conn_type="spark_kms_local", extra={"key_uri": "alias/pii"})
    with pytest.raises(ConfigurationError) as got:
        SparkKmsHook("kms_noscheme").get_key_uri()
    assert str(got.value) == str(expected.value)
    _conn(monkeypatch, "bad_root", conn_type="spark_kms_local", password="not-base64-secret")
    with pytest.raises(ConfigurationError, match="root key") as info:
        SparkKmsHook("bad_root").get_kms_options()
    assert "not-base64-secret" not in str(info.value)


# -- operators ---------------------------------------------------------------------------
def test_template_fields_are_set_and_render(airflow_db: object) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import (
        DecryptDatasetOperator,
        EncryptDatasetOperator,
        ReencryptDatasetOperator,
    )
    from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

    with DAG("templating", schedule=None, start_date=datetime(2025, 1, 1)):
        ops = [
            EncryptDatasetOperator(task_id="enc", source="/land/{{ ds }}", destination="/enc/{{ ds_nodash }}",
                                   columns=["{{ params.col }}"], key_uri="local://alias/{{ params.key }}",
                                   encryption_context={"day": "{{ ds }}"}, kms_options={"local": {"keystore": "/k/{{ ds }}"}},
                                   job_run_id="run-{{ ds_nodash }}", params={"col": "ssn", "key": "pii"},
                                   join_domain="people-{{ ds_nodash }}", join_domain_store="/domains/{{ ds }}"),
            DecryptDatasetOperator(task_id="dec", source="/enc/{{ ds }}", destination="/out/{{ ds }}",
                                   columns=["id"]),
            ReencryptDatasetOperator(task_id="rew", path="/enc/{{ ds }}", mode="reencrypt"),
            DatasetRotationSensor(task_id="sen", path=["/a/{{ ds }}", "/b"], min_version="{{ params.v }}",
                                  params={"v": 3}),
        ]
    context = {"ds": "2025-03-04", "ds_nodash": "20250304"}
    for op in ops:
        for name in op.template_fields:
            assert hasattr(op, name), f"{type(op).__name__}.{name} is not set"
        op.render_template_fields({**context, "params": op.params})
    enc, dec, rew, sen = ops
    assert (enc.source, enc.destination, enc.columns, enc.key_uri) == (
        "/land/2025-03-04", "/enc/20250304", ["ssn"], "local://alias/pii")
    assert enc.encryption_context == {"day": "2025-03-04"} and enc.kms_options == {"local": {"keystore": "/k/2025-03-04"}}
    assert enc.job_run_id == "run-20250304"
    assert (enc.join_domain, enc.join_domain_store) == ("people-20250304", "/domains/2025-03-04")
    assert (dec.source, dec.destination, rew.path, sen.path, sen.min_version) == (
        "/enc/2025-03-04", "/out/2025-03-04", "/enc/2025-03-04", ["/a/2025-03-04", "/b"], "3")
    # A static destination is the operator's outlet Asset; a templated one has none unless aliased.
    static = DecryptDatasetOperator(task_id="s", source="/enc", destination="/data/plain")
    assert [a.uri for a in static.outlets] == ["file:///data/plain"]
    assert dec.outlets == []
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        ReencryptDatasetOperator(task_id="x", path="/p", mode="rotate")


def test_rendered_kms_options_never_store_a_root_key(airflow_db: object) -> None:
    # Airflow redacts rendered template fields (kept in its database, shown in the UI) by key
    # name, and 'root_key' is not a name it knows: the operators register the value instead.
    from airflow.sdk import DAG
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_plugins.operators.spark_kms import ReencryptDatasetOperator
    from airflow_plugins.sensors.spark_kms import DatasetRotationSensor

    root_b64 = base64.b64encode(hashlib.sha256(b"rendered-root-key").digest()).decode()
    sensor_root = base64.b64encode(hashlib.sha256(b"sensor-root-key").digest()).decode()
    with DAG("masking", schedule=None, start_date=datetime(2025, 1, 1)):
        op = ReencryptDatasetOperator(task_id="rew", path="/enc",
                                      kms_options={"local": {"root_key": "{{ params.root }}", "keystore": "/k"}},
                                      params={"root": root_b64})
        sen = DatasetRotationSensor(task_id="sen", path="/enc", kms_options={"local": {"root_key": sensor_root}})
    for task, secret in ((op, root_b64), (sen, sensor_root)):
        task.render_template_fields({"params": task.params})
        assert task.kms_options["local"]["root_key"] == secret  # the job still gets it
        stored = json.dumps(redact(task.kms_options, "kms_options"))
        assert secret not in stored and "***" in stored
    assert "/k" in json.dumps(redact(op.kms_options, "kms_options"))  # only secrets are masked


def test_spark_master_and_run_ids() -> None:
    from airflow.sdk import Connection

    from airflow_plugins.operators.spark_kms import job_run_id_for, spark_master_from_connection

    assert spark_master_from_connection(Connection(conn_id="s", conn_type="spark", host="spark://127.0.0.1",
                                                   port=7077)) == "spark://127.0.0.1:7077"
    assert spark_master_from_connection(Connection(conn_id="s", conn_type="spark", host="127.0.0.1")) == \
        "spark://127.0.0.1:7077"
    assert spark_master_from_connection(Connection(conn_id="s", conn_type="spark", host="local[2]")) == "local[2]"
    with pytest.raises(ConfigurationError, match="no host"):
        spark_master_from_connection(Connection(conn_id="s", conn_type="spark"))
    run_id = job_run_id_for("dag", "task", "manual__2025-03-04T00:00:00+00:00", 3)
    assert run_id == "af-dag-task-3-manual__2025-03-04T00_00_00_00_00"
    long_id = job_run_id_for("d" * 200, "t", "r")
    assert len(long_id) == 128 and long_id == job_run_id_for("d" * 200, "t", "r")


def test_denied_principal_fails_the_task_and_leaves_data_intact(
    run_dag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.spark_kms import ReencryptDatasetOperator

    keystore = tmp_path / "keystore"
    admin = LocalKms(keystore, principal="etl")
    admin.create_key(alias="alias/pii")
    etl_options = {"local": {"keystore": str(keystore), "principal": "etl"}}
    dataset = seed_dataset(tmp_path / "customers", etl_options)
    admin.put_key_policy("alias/pii", {"etl": ["admin", "encrypt", "decrypt"], "auditor": ["encrypt"]})
    admin.rotate_key("alias/pii")
    before = {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in list_data_files(str(dataset))}
    _conn(monkeypatch, "kms_auditor", conn_type="spark_kms_local", login="auditor",
          extra={"keystore": str(keystore)})

    with DAG("denied_rewrap", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        ReencryptDatasetOperator(task_id="rewrap", path=str(dataset), mode="rewrap", kms_conn_id="kms_auditor",
                                 retries=0)
    caplog.set_level(logging.INFO)
    dag_run, states = run_dag(dag, logical_date=datetime(2025, 3, 4, tzinfo=timezone.utc))
    assert states == {"rewrap": "failed"} and dag_run.state == "failed"
    out = capfd.readouterr()
    task_log = caplog.text + out.out + out.err
    assert "AccessDeniedError: principal 'auditor' may not call ReEncrypt" in task_log
    record = json.loads(next((dataset / "_spark_kms_runs").glob("af-denied_rewrap-rewrap-*.json")).read_text())
    assert record["status"] == "failed" and record["error"].startswith("AccessDeniedError")
    assert "auditor" in record["error"]
    # Nothing changed: same files, no manifest, and the data still decrypts for a permitted principal.
    assert {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in list_data_files(str(dataset))} == before
    assert not (dataset / "_spark_kms_keys.json").exists()
    assert read_decrypted_table(str(dataset), kms_options=etl_options).num_rows == 40



def test_secrets_in_a_connections_raw_options_are_masked(airflow_db: object, monkeypatch: pytest.MonkeyPatch) -> None:
    # The 'options' extra passes provider options through as they are; a secret among them whose
    # name Airflow does not know as sensitive ('root_key') must be registered with the masker too.
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_plugins.hooks.spark_kms import SparkKmsHook

    root_b64 = base64.b64encode(hashlib.sha256(b"raw-options-root").digest()).decode()
    _conn(monkeypatch, "kms_raw", conn_type="spark_kms_local",
          extra={"key_uri": "local://alias/pii", "options": {"root_key": root_b64}})
    assert SparkKmsHook("kms_raw").get_kms_options()["local"]["root_key"] == root_b64
    assert root_b64 not in json.dumps(redact(f"logged: {root_b64}"))


def test_an_hsm_pin_in_kms_options_is_masked_in_rendered_fields(airflow_db: object) -> None:
    # The PKCS#11 provider declares its PIN secret (secret_options): a templated kms_options carrying it is
    # registered with Airflow's masker when the fields are rendered, before Airflow stores or logs them.
    from airflow.sdk import DAG
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_plugins.operators.spark_kms import EncryptDatasetOperator

    pin = "8642-hsm-user-pin"
    with DAG("hsm_pin", schedule=None, start_date=datetime(2025, 1, 1)):
        op = EncryptDatasetOperator(
            task_id="enc", source="/land", destination="/enc", columns=["ssn"],
            key_uri="pkcs11://token=spark-kms;object=pii",
            kms_options={"pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "pin": "{{ params.pin }}"}},
            params={"pin": pin},
        )
    op.render_template_fields({"params": op.params})
    assert op.kms_options["pkcs11"]["pin"] == pin  # rendered: the task can log in
    rendered = json.dumps(redact(op.kms_options))
    assert pin not in rendered and "/usr/lib/softhsm/libsofthsm2.so" in rendered
    assert pin not in json.dumps(redact(f"task log line mentioning {pin}"))
