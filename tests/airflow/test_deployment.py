"""The provider and the example DAGs in a real Airflow 3 deployment: PostgreSQL, ``airflow db migrate``, and in
processes of their own a scheduler with the LocalExecutor, the DAG processor and the API server; every run
is triggered and checked through the REST API (``/api/v2``, a JWT from the simple auth manager's
``POST /auth/token``), and the data on disk is checked too.

What runs (DAGs folder: the repository's ``dags/``; a second bundle holds two small DAGs of this test):

* ``pii_encrypt_daily`` triggered with a logical date, and triggered *without* one (Airflow 3's manual
  trigger: the templates fall back to ``run_after``'s day, nothing lands under ``landing/None``);
* ``spark_kms_denied_encrypt``: a connection whose principal the key policy refuses: the task fails at its
  first try although it has ``retries=2``;
* ``spark_kms_partition_consumer``: scheduled on the partition's Asset URI written as users write it
  (``.../event_date=2025-03-04``); the encrypt task's lineage event lands on that asset and queues its run;
* then ``key_rotation_rewrap``, then one day's encrypt task cleared and rerun: the partition holds the same
  rows once, now under the new key version.

No time-based runs (``use_job_schedule=False``), to keep it short: a scheduled run renders the same templates
as the run triggered with a logical date. Tasks run in supervised processes of their own (their pids, from
the API, are distinct and none is a server's). Every process the test started (servers, task processes,
JVMs: all in the servers' sessions) is ended at teardown, also after a failure.

Measured time on the 2-core machine: 234 s (fixture 29 s: PostgreSQL 3 s, ``db migrate``, the three servers;
the runs 198 s; teardown 4 s) with a load average of 3-7 from other suites; 740 s while four other suites
ran (load average about 20), when each Spark task spent 1-3 minutes starting its JVM.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_plugins.demo import DEMO_KEY_ALIAS, write_landing
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_decrypted_table
from spark_kms.testing.connect import free_port
from spark_kms.testing.postgres import postgres_server

from .conftest import REPO

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.timeout(3600)]

DAY = "2025-03-04"
LOGICAL_DATE = f"{DAY}T00:00:00+00:00"
RUN_TIMEOUT_S = 1500.0  # a bound for a stuck deployment (on a machine shared with other suites), not a speed check
AIRFLOW = str(Path(sys.executable).with_name("airflow"))

TEST_DAGS = '''
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, task

from airflow_plugins.operators.spark_kms import EncryptDatasetOperator

# Into a Delta table: the operator writes with pyarrow and starts no JVM, so the failure comes quickly.
with DAG("spark_kms_denied_encrypt", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):
    EncryptDatasetOperator(
        task_id="encrypt", source="{{ dag_run.conf['source'] }}", source_format="csv", table_format="delta",
        destination="{{ dag_run.conf['destination'] }}", columns=["email", "ssn"], kms_conn_id="kms_reader",
        retries=2, retry_delay=timedelta(seconds=1))

with DAG("spark_kms_partition_consumer", schedule=[Asset(%(partition_uri)r)], start_date=datetime(2025, 1, 1),
         catchup=False):

    @task
    def consumed(triggering_asset_events=None):
        return sorted({event.asset.uri for events in triggering_asset_events.values() for event in events})

    consumed()
'''


class Deployment:
    """The running deployment: its processes, its REST API and the demo base directory."""

    def __init__(self, home: Path, port: int, base: Path) -> None:
        self.home, self.port, self.base = home, port, base
        self.url = f"http://127.0.0.1:{port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        import httpx

        self.http = httpx.Client(base_url=self.url, timeout=60.0)

    # -- processes -------------------------------------------------------------------------------------------
    def start(self, name: str, *args: str, env: dict[str, str]) -> None:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process at teardown
        self.processes[name] = subprocess.Popen([AIRFLOW, *args], env=env, cwd=self.home, stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.home / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {process.returncode}\n{self.log_tail(name)}")

    def stop(self) -> None:
        """SIGTERM to every process group in the servers' sessions, SIGKILL to what is left after 20 s.

        Each server was started in a session of its own; the executor's workers, the task processes (which
        Airflow puts in process groups of their own) and the JVMs they started stay in that session, so a
        task still running at teardown is ended too."""
        sessions = {p.pid for p in self.processes.values()}
        for group in _groups_in_sessions(sessions):
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while _groups_in_sessions(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        for group in _groups_in_sessions(sessions) | sessions:
            _signal_group(group, signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        self.http.close()

    # -- REST API --------------------------------------------------------------------------------------------
    def api(self, method: str, path: str, *, expect: int | tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        expected = (expect,) if isinstance(expect, int) else expect
        response = self.http.request(method, f"/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"},
                                     **kwargs)
        assert response.status_code in expected, f"{method} {path}: {response.status_code} {response.text[:2000]}"
        return response.json() if response.content else None

    def wait_for(self, what: str, probe: Any, timeout: float = RUN_TIMEOUT_S, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                tails = "\n".join(self.log_tail(n) for n in self.processes)
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
            time.sleep(interval)

    def trigger(self, dag_id: str, logical_date: str | None, conf: dict[str, Any] | None = None) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf or {}})
        return str(run["dag_run_id"])

    def wait_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        run = self.wait_for(f"{dag_id} run {run_id}", finished)
        return dict(run)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {(ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"): ti
                for ti in body["task_instances"]}

    def states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {name: ti["state"] for name, ti in self.task_instances(dag_id, run_id).items()}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                         params={"map_index": map_index, "deserialize": True})
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        found = list((self.home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/"
                                               f"attempt={try_number}.log"))
        assert found, f"no log file for {dag_id}/{run_id}/{task_id} try {try_number}"
        return found[0].read_text(errors="replace")


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _groups_in_sessions(sessions: set[int]) -> set[int]:
    """The process groups of the live (not zombie) processes whose session is one of ``sessions``."""
    groups = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgid, sid = fields[0], int(fields[2]), int(fields[3])
        if sid in sessions and state != "Z":
            groups.add(pgid)
    return groups


def _airflow_env(home: Path, dsn: str, port: int, bundles: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
    env.pop("SPARK_KMS_DEMO_BASE", None)  # the base directory comes from the Variable set through the API
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",  # two cores: two tasks (two JVMs) at a time
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": dsn.replace("postgresql://", "postgresql+psycopg2://", 1),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),  # one secret: the scheduler signs, the API checks
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        # The repository's dags/ is the dags-folder bundle; this test's own DAGs are a second local bundle.
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
            {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {}},
            {"name": "spark_kms_tests", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {"path": str(bundles)}},
        ]),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        # Every run here is triggered: no time-based run (unpausing pii_encrypt_daily would schedule today's, two
        # more Spark tasks). Asset-triggered runs are switched off with it, so the consumer DAG is checked by the
        # run it has queued for the partition's asset event.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
    })
    return env


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    root = Path(tempfile.mkdtemp(prefix="spark_kms_deploy_"))
    home, bundles, base = root / "airflow", root / "bundle", root / "demo"
    for path in (home, bundles, base):
        path.mkdir()
    port = free_port()
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    partition_uri = f"file://{base}/encrypted/customers/event_date={DAY}"
    (bundles / "spark_kms_test_dags.py").write_text(TEST_DAGS % {"partition_uri": partition_uri})
    # The key exists before any run, with a policy: the DAGs' principal (this OS user) may do everything,
    # "reader" may only decrypt (the demo's setup task keeps an existing key as it is).
    kms = LocalKms(base / "keystore")
    kms.create_key(alias=DEMO_KEY_ALIAS)
    kms.put_key_policy(DEMO_KEY_ALIAS, {kms.principal: ["admin", "encrypt", "decrypt"], "reader": ["decrypt"]})
    try:
        with postgres_server(database="airflow") as dsn:
            env = _airflow_env(home, dsn, port, bundles)
            migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=home, capture_output=True, text=True,
                                     timeout=300)
            assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
            dep = Deployment(home, port, base)
            try:
                dep.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), env=env)
                dep.start("scheduler", "scheduler", env=env)
                dep.start("dag-processor", "dag-processor", env=env)
                dep.wait_for("the API server", lambda: _answers(dep), timeout=180, interval=0.5)
                token = dep.http.post("/auth/token", json={"username": "admin", "password": password})
                assert token.status_code == 201, token.text
                dep.token = token.json()["access_token"]
                yield dep
            finally:
                dep.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _answers(dep: Deployment) -> bool:
    import httpx

    try:
        return dep.http.get("/api/v2/monitor/health").status_code == 200
    except httpx.TransportError:
        return False


def _landing_rows(base: Path, day: str) -> list[tuple[int, str, str, str]]:
    with (base / "landing" / day / "customers.csv").open(newline="") as fh:
        return sorted((int(r["customer_id"]), r["name"], r["email"], r["ssn"]) for r in csv.DictReader(fh))


def _partition_rows(base: Path, day: str) -> list[tuple[int, str, str, str]]:
    partition = base / "encrypted" / "customers" / f"event_date={day}"
    table = read_decrypted_table(str(partition), kms_options={"local": {"keystore": str(base / "keystore")}})
    return sorted((r["customer_id"], r["name"], r["email"], r["ssn"]) for r in table.to_pylist())


def _no_error_lines(log: str) -> list[str]:
    """The lines of a task log (JSON lines) logged at ERROR level or above."""
    bad = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("level", "")).lower() in ("error", "critical", "exception"):
            bad.append(line)
    return bad


PII_TASKS = {"setup": "success", "encrypt_customers": "success", "audit": "success",
             "export_for_analytics": "success"}


def test_a_real_deployment_runs_the_example_dags(deployment: Deployment) -> None:
    dep, base = deployment, deployment.base
    # The DAG processor parses dags/ and the test bundle; the API then knows every DAG.
    wanted = {"pii_encrypt_daily", "key_rotation_rewrap", "reencrypt_after_compromise",
              "spark_kms_denied_encrypt", "spark_kms_partition_consumer"}

    def parsed() -> bool:
        dags = {d["dag_id"] for d in dep.api("GET", "/dags", params={"limit": 100})["dags"]}
        return wanted <= dags

    dep.wait_for("the DAGs to be parsed", parsed, timeout=240)
    errors = dep.api("GET", "/importErrors")
    assert errors["total_entries"] == 0, errors

    # Configuration through the API: the demo base directory, a connection whose principal may only decrypt,
    # and a connection test (enabled by AIRFLOW__CORE__TEST_CONNECTION; the hook calls DescribeKey).
    dep.api("POST", "/variables", json={"key": "spark_kms_demo_base", "value": str(base)}, expect=201)
    reader = {"connection_id": "kms_reader", "conn_type": "spark_kms_local", "login": "reader",
              "extra": json.dumps({"keystore": str(base / "keystore"), "key_uri": "local://alias/pii"})}
    dep.api("POST", "/connections", json=reader, expect=201)
    tested = dep.api("POST", "/connections/test", json={**reader, "connection_id": "kms_probe", "login": None})
    assert tested["status"] is True, tested

    for dag_id in sorted(wanted - {"reencrypt_after_compromise"}):
        dep.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    dated = dep.trigger("pii_encrypt_daily", LOGICAL_DATE)
    manual = dep.trigger("pii_encrypt_daily", None)  # Airflow 3's manual trigger: no logical date
    denied_src = write_landing(base / "denied", DAY)
    denied = dep.trigger("spark_kms_denied_encrypt", LOGICAL_DATE,
                         {"source": str(denied_src), "destination": str(base / "denied" / "encrypted")})

    # -- a day with a logical date ---------------------------------------------------------------------------
    assert dep.wait_run("pii_encrypt_daily", dated)["state"] == "success", dep.states("pii_encrypt_daily", dated)
    assert dep.states("pii_encrypt_daily", dated) == PII_TASKS
    assert _partition_rows(base, DAY) == _landing_rows(base, DAY) and len(_landing_rows(base, DAY)) == 50
    summary = dep.xcom("pii_encrypt_daily", dated, "encrypt_customers")
    assert summary["status"] == "succeeded" and summary["rows"] == 50
    assert summary["run_id"] == f"af-pii_encrypt_daily-encrypt_customers-{dated}".replace(":", "_").replace("+", "_")
    audit = dep.xcom("pii_encrypt_daily", dated, "audit")
    assert audit["rows"] == 50 and audit["up_to_date"] is True
    # Each task ran in a supervised process of its own, none of them a server process.
    pids = [ti["pid"] for ti in dep.task_instances("pii_encrypt_daily", dated).values()]
    servers = {p.pid for p in dep.processes.values()} | {os.getpid()}
    assert all(isinstance(p, int) for p in pids) and len(set(pids)) == len(pids) and not set(pids) & servers
    # The JVM's start-up banners are not logged as errors.
    encrypt_log = dep.task_log("pii_encrypt_daily", dated, "encrypt_customers")
    assert "encrypted 50 rows" in encrypt_log
    assert _no_error_lines(encrypt_log) == []

    # -- the manual trigger: no logical date, the day of run_after ------------------------------------------
    run = dep.wait_run("pii_encrypt_daily", manual)
    assert run["logical_date"] is None and run["state"] == "success", dep.states("pii_encrypt_daily", manual)
    today = run["run_after"][:10]
    assert dep.xcom("pii_encrypt_daily", manual, "setup", "day") == today
    assert _partition_rows(base, today) == _landing_rows(base, today)
    assert not [p for p in base.rglob("None*")], sorted(base.rglob("None*"))

    # -- lineage: the partition's Asset URI as written, the asset its consumer DAG is scheduled on ------------
    plain = f"file://{base}/encrypted/customers/event_date={DAY}"
    assets = dep.api("GET", "/assets", params={"uri_pattern": f"event_date={DAY}"})["assets"]
    assert [a["uri"] for a in assets] == [plain]
    assert [d["dag_id"] for d in assets[0]["scheduled_dags"]] == ["spark_kms_partition_consumer"]
    events = dep.api("GET", "/assets/events", params={"asset_id": assets[0]["id"]})["asset_events"]
    assert [(e["source_dag_id"], e["source_run_id"]) for e in events] == [("pii_encrypt_daily", dated)]
    queued = dep.api("GET", "/dags/spark_kms_partition_consumer/assets/queuedEvents")["queued_events"]
    assert [q["asset_id"] for q in queued] == [assets[0]["id"]]  # the consumer's run is due

    # -- a denied principal: failed at the first try, no retry ---------------------------------------------
    assert dep.wait_run("spark_kms_denied_encrypt", denied)["state"] == "failed"
    ti = dep.task_instances("spark_kms_denied_encrypt", denied)["encrypt"]
    assert ti["state"] == "failed" and ti["try_number"] == 1 and ti["max_tries"] == 2, ti
    assert "AccessDeniedError: principal 'reader' may not call GenerateDataKey" in dep.task_log(
        "spark_kms_denied_encrypt", denied, "encrypt")
    denied_dest = base / "denied" / "encrypted"
    assert not list(denied_dest.rglob("*.parquet")), sorted(denied_dest.rglob("*.parquet"))

    days = sorted(p.name.removeprefix("event_date=") for p in (base / "encrypted" / "customers").glob("event_date=*"))
    assert days == sorted({DAY, today})

    # -- key rotation and rewrap of everything under the key -------------------------------------------------
    rotation = dep.trigger("key_rotation_rewrap", None)
    assert dep.wait_run("key_rotation_rewrap", rotation)["state"] == "success", dep.states(
        "key_rotation_rewrap", rotation)
    customers = str(base / "encrypted" / "customers")
    report = dep.xcom("key_rotation_rewrap", rotation, "verify")
    assert report == {customers: {"rows": 50 * len(days), "key_versions": ["2"]}}

    # -- one day's encrypt task cleared and rerun: the same rows, once, under the new key version -------------
    before = {f.name for f in (base / "encrypted" / "customers" / f"event_date={DAY}").glob("*.parquet")}
    dep.api("POST", "/dags/pii_encrypt_daily/clearTaskInstances",
            json={"dry_run": False, "dag_run_id": dated, "task_ids": ["encrypt_customers"],
                  "only_failed": False, "reset_dag_runs": True})
    assert dep.wait_run("pii_encrypt_daily", dated)["state"] == "success", dep.states("pii_encrypt_daily", dated)
    tis = dep.task_instances("pii_encrypt_daily", dated)
    assert {n: t["state"] for n, t in tis.items()} == PII_TASKS
    assert tis["encrypt_customers"]["try_number"] == 2 and tis["setup"]["try_number"] == 1
    assert _partition_rows(base, DAY) == _landing_rows(base, DAY)
    rerun = dep.xcom("pii_encrypt_daily", dated, "encrypt_customers")
    assert rerun["rows"] == 50 and list(rerun["key_versions"].values()) == [["2"]]
    after = {f.name for f in (base / "encrypted" / "customers" / f"event_date={DAY}").glob("*.parquet")}
    assert after and len(after) == len(before)
