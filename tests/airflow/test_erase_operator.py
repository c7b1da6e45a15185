"""``EraseDataOperator`` in a real Airflow 3 (``dag.test()`` on SQLite): a tenant and a subject erased by two
tasks of one DAG run, the receipts in XCom and in the erasure log; a refused erasure fails its task at once,
without retries; the templated fields render. The embedded KMS and a real SQLite subject key store; no Spark."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spark_kms.erasure import erasure_log
from spark_kms.errors import ConfigurationError
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec
from spark_kms.parquet.tenants import TenantKeys
from spark_kms.subjects import SubjectKeyStore
from spark_kms.subjects._cache import subject_key_cache

from .conftest import sync_dag, task_states, xcom

pytestmark = pytest.mark.airflow

TEMPLATE = "local://alias/tenant-{tenant}"


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def _world(root: Path) -> tuple[LocalKms, SubjectKeyStore, Path]:
    keystore = root / "keystore"
    kms = LocalKms(keystore, principal="admin")
    for alias in ("alias/tenant-acme", "alias/tenant-globex", "alias/subjects"):
        kms.create_key(alias=alias)
    options = {"local": {"keystore": str(keystore), "principal": "admin"}}
    store = SubjectKeyStore.open(f"sqlite://{root / 'subjects.db'}", options, key_uri="local://alias/subjects",
                                 principal="admin", create=True)
    orders = root / "orders"
    orders.mkdir()
    rows = pa.table({"id": pa.array(range(6), pa.int64()), "tenant": ["acme", "globex"] * 3,
                     "user_id": [f"u{i % 2}" for i in range(6)], "email": [f"p{i}@example.com" for i in range(6)]})
    with EncryptedParquetWriter(orders / "part-0.parquet", rows.schema,
                                EncryptionSpec(columns=["email"], subject_column="user_id"), None, kms_options=options,
                                tenant_keys=TenantKeys("tenant", TEMPLATE), subject_store=store) as writer:
        writer.write_batch(rows)
    return kms, store, orders


def _run(dag: Any) -> tuple[Any, dict[str, str]]:
    sync_dag(dag)
    dag_run = dag.test(logical_date=datetime(2025, 3, 4, tzinfo=timezone.utc))
    return dag_run, task_states(dag_run)


def test_erase_a_tenant_and_a_subject_in_a_dag_run(airflow_db: object, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.erasure import EraseDataOperator

    subject_key_cache().clear()
    kms, store, orders = _world(tmp_path)
    _conn(monkeypatch, "kms_dpo", conn_type="spark_kms_local", login="admin",
          extra={"keystore": str(kms.keystore_dir)})
    with DAG("erase_tenant_and_subject", schedule=None, start_date=datetime(2025, 1, 1),
             params={"tenant": "acme", "subject": "u1"}) as dag:
        tenant = EraseDataOperator(task_id="erase_tenant", tenant="{{ params.tenant }}", tenant_keys=TEMPLATE,
                                       subject_store=store.url, datasets=[str(orders)], pending_days="{{ 10 }}",
                                       reason="ticket {{ ds }}", kms_conn_id="kms_dpo", retries=2)
        subject = EraseDataOperator(task_id="erase_subject", subject="{{ params.subject }}",
                                        subject_store=store.url, datasets=[str(orders)], kms_conn_id="kms_dpo")
        tenant >> subject
    dag_run, states = _run(dag)
    assert states == {"erase_tenant": "success", "erase_subject": "success"}

    receipt = xcom(dag_run, "erase_tenant")
    assert (receipt["kind"], receipt["target"], receipt["key_uri"], receipt["principal"]) == (
        "tenant", "acme", "local://alias/tenant-acme", "admin")
    assert receipt["datasets"] == {str(orders): 1} and receipt["reason"] == "ticket 2025-03-04"
    assert kms.describe_key("alias/tenant-acme").state == "PendingDeletion"
    assert kms.describe_key("alias/tenant-globex").state == "Enabled"
    deletion = datetime.fromisoformat(receipt["deletion_date"])
    assert 9 <= (deletion - datetime.fromisoformat(receipt["at"].replace("Z", "+00:00"))).days <= 10

    erased = xcom(dag_run, "erase_subject")
    assert (erased["kind"], erased["target"], erased["datasets"]) == ("subject", "u1", {str(orders): ["email"]})
    subject_key_cache().clear()
    assert store.keys_for(["u1"]) == {"u1": None}
    assert [(r["kind"], r["outcome"], r["id"]) for r in erasure_log(store)] == [
        ("tenant", "ok", receipt["receipt_id"]), ("subject", "ok", erased["receipt_id"])]


def test_a_refused_erasure_fails_the_task_without_retries(airflow_db: object, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    from airflow.sdk import DAG

    from airflow_plugins.operators.erasure import EraseDataOperator

    kms, store, orders = _world(tmp_path)
    kms.put_key_policy("alias/tenant-globex", {"admin": ["admin"], "reader": ["decrypt"]})
    _conn(monkeypatch, "kms_reader", conn_type="spark_kms_local", login="reader",
          extra={"keystore": str(kms.keystore_dir)})
    with DAG("erase_denied", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        EraseDataOperator(task_id="erase", tenant="globex", tenant_keys=TEMPLATE, subject_store=store.url,
                              datasets=[str(orders)], kms_conn_id="kms_reader", retries=3)
    dag_run, states = _run(dag)
    # AirflowFailException: failed at once, not up_for_retry despite retries=3.
    assert states == {"erase": "failed"} and dag_run.state == "failed"
    out = capfd.readouterr()
    assert "AccessDeniedError" in out.out + out.err
    assert kms.describe_key("alias/tenant-globex").state == "Enabled"
    rows = erasure_log(store)
    assert [(r["kind"], r["outcome"], r["principal"]) for r in rows] == [("tenant", "denied", "reader")]
    denied = [e for e in kms.audit_events("alias/tenant-globex") if e["operation"] == "ScheduleKeyDeletion"]
    assert [(e["principal"], e["outcome"]) for e in denied] == [("reader", "AccessDeniedError")]


def test_erase_operator_fields_render_and_arguments_are_checked(airflow_db: object) -> None:
    from airflow.sdk import DAG
    from airflow.sdk._shared.secrets_masker import redact

    from airflow_plugins.operators.erasure import EraseDataOperator
    from airflow_plugins.operators.spark_kms import DecryptDatasetOperator, EncryptDatasetOperator
    from airflow_plugins.provider_info import get_provider_info

    with DAG("erase_templating", schedule=None, start_date=datetime(2025, 1, 1)):
        op = EraseDataOperator(task_id="erase", tenant="{{ params.t }}", tenant_keys="{{ params.tk }}",
                                   subject_store="postgresql://dpo:{{ params.pw }}@127.0.0.1:5432/subjects",
                                   datasets=["/data/{{ ds }}"], reason="{{ ds }}", principal="{{ params.who }}",
                                   params={"t": "acme", "tk": TEMPLATE, "pw": "s3cret-pw", "who": "dpo"})
        enc = EncryptDatasetOperator(task_id="enc", source="/land", destination="/enc", columns=["email"],
                                     tenant_column="{{ params.col }}", tenant_keys=TEMPLATE, subject_column="user_id",
                                     subject_store="/stores/{{ ds }}.db", params={"col": "tenant"})
        dec = DecryptDatasetOperator(task_id="dec", source="/enc", destination="/out",
                                     subject_store="/stores/{{ ds }}.db", on_erased="{{ params.mode }}",
                                     params={"mode": "raise"})
    for task in (op, enc, dec):
        for name in task.template_fields:
            assert hasattr(task, name), f"{type(task).__name__}.{name} is not set"
        task.render_template_fields({"ds": "2025-03-04", "params": task.params})
    assert (op.tenant, op.tenant_keys, op.datasets, op.reason, op.principal) == (
        "acme", TEMPLATE, ["/data/2025-03-04"], "2025-03-04", "dpo")
    assert "s3cret-pw" not in json.dumps(redact(op.subject_store, "subject_store"))
    assert (enc.tenant_column, enc.subject_column, enc.subject_store) == ("tenant", "user_id", "/stores/2025-03-04.db")
    assert (dec.subject_store, dec.on_erased) == ("/stores/2025-03-04.db", "raise")
    assert op.outlets == []  # an erasure writes no dataset

    with pytest.raises(ConfigurationError, match="not both"):
        EraseDataOperator(task_id="x", tenant="a", tenant_keys=TEMPLATE, subject="u")
    with pytest.raises(ConfigurationError, match="needs tenant_keys"):
        EraseDataOperator(task_id="y", tenant="a")
    with pytest.raises(ConfigurationError, match="needs tenant="):
        EraseDataOperator(task_id="z")
    modules = get_provider_info()["operators"][0]["python-modules"]
    assert "airflow_plugins.operators.erasure" in modules


def test_encrypt_erase_decrypt_a_delta_table_in_one_dag(airflow_db: object, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A table destination is written and read with pyarrow: the whole DAG runs without Spark.
    import pyarrow.parquet as pq
    from airflow.sdk import DAG

    from airflow_plugins.operators.erasure import EraseDataOperator
    from airflow_plugins.operators.spark_kms import DecryptDatasetOperator, EncryptDatasetOperator

    subject_key_cache().clear()
    kms, store, _ = _world(tmp_path)
    landing = tmp_path / "landing"
    landing.mkdir()
    rows = pa.table({"id": pa.array(range(10), pa.int64()), "tenant": ["acme", "globex"] * 5,
                     "user_id": [f"v{i % 5}" for i in range(10)], "email": [f"m{i}@example.com" for i in range(10)]})
    pq.write_table(rows, landing / "part-0.parquet")
    _conn(monkeypatch, "kms_etl", conn_type="spark_kms_local", login="admin",
          extra={"keystore": str(kms.keystore_dir)})
    table, plain = tmp_path / "orders_delta", tmp_path / "plain"
    with DAG("encrypt_erase_decrypt", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        enc = EncryptDatasetOperator(task_id="encrypt", source=str(landing), destination=str(table),
                                     table_format="delta", columns=["email"], tenant_column="tenant",
                                     tenant_keys=TEMPLATE, subject_column="user_id", subject_store=store.url,
                                     kms_conn_id="kms_etl")
        erase = EraseDataOperator(task_id="erase", tenant="globex", tenant_keys=TEMPLATE,
                                      subject_store=store.url, datasets=[str(table)], kms_conn_id="kms_etl")
        dec = DecryptDatasetOperator(task_id="decrypt", source=str(table), destination=str(plain),
                                     subject_store=store.url, on_erased="null", kms_conn_id="kms_etl")
        enc >> erase >> dec
    dag_run, states = _run(dag)
    assert states == {"encrypt": "success", "erase": "success", "decrypt": "success"}
    assert xcom(dag_run, "erase")["datasets"] == {str(table): 1}
    got = pq.read_table(plain).sort_by("id")
    expected = rows.column("email").to_pylist()
    for i, (tenant, email) in enumerate(zip(got.column("tenant").to_pylist(), got.column("email").to_pylist(),
                                            strict=True)):
        assert email == (None if tenant == "globex" else expected[i])
