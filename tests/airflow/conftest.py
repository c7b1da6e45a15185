"""Real Airflow 3 on a fresh SQLite database, for the provider and DAG tests.

Airflow reads its configuration when ``airflow`` is first imported, so the environment
is set *here, at conftest import time* (pytest imports conftests before any test module):
a temporary ``AIRFLOW_HOME`` with its own SQLite file, the repository's ``dags/`` as DAGs
folder, no example DAGs, and a default demo base directory. Other test areas do not
import Airflow, so this is the first import in the process.

Fixtures:

* ``airflow_db`` (session): ``resetdb()`` once, bundles synced, every DAG of ``dags/``
  parsed with a real ``DagBag`` and serialized to the DB (``dag.test()`` needs it).
* ``run_dag``: runs a DAG with ``dag.test()`` (tasks execute in this process, so they reuse
  the session's SparkSession) and returns ``(dag_run, {task_id or task_id[i]: state})``.
* ``demo_base``: a fresh demo base directory for one test, given to the DAGs through the
  Airflow Variable ``spark_kms_demo_base`` (as ``AIRFLOW_VAR_SPARK_KMS_DEMO_BASE``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="spark_kms_airflow_"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, True)

_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    "SPARK_KMS_DEMO_BASE": str(AIRFLOW_HOME / "spark_kms_demo"),
}
if "airflow" not in sys.modules:
    os.environ.update(_ENV)


def airflow_env() -> dict[str, str]:
    """The environment for an Airflow subprocess using the same temporary home."""
    env = dict(os.environ)
    env.update(_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="session")
def airflow_db() -> dict[str, Any]:
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(AIRFLOW_HOME):
        pytest.fail("airflow was imported before tests/airflow/conftest.py could configure it")
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils import db

    db.resetdb()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    return dict(bag.dags)


def sync_dag(dag: Any) -> None:
    """Serialize a DAG defined in a test (outside the DAGs folder) so dag.test() can run it."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def task_states(dag_run: Any) -> dict[str, str]:
    out = {}
    for ti in dag_run.get_task_instances():
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        out[name] = str(ti.state)
    return out


def xcom(dag_run: Any, task_id: str, *, key: str = "return_value", map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key,
                                   map_indexes=map_index)
        row = session.scalars(query).first()
        assert row is not None, f"no XCom {key!r} from {task_id}"
        return XComModel.deserialize_value(row)


@pytest.fixture
def run_dag(airflow_db: dict[str, Any], spark: Any) -> Callable[..., tuple[Any, dict[str, str]]]:
    """``run_dag(dag_or_id, logical_date=None, **run_conf)``; the ``spark`` fixture makes the
    operators' getOrCreate reuse the one session of the test process."""
    del spark

    def run(dag: Any, logical_date: Any = None, run_conf: dict[str, Any] | None = None) -> tuple[Any, dict[str, str]]:
        if isinstance(dag, str):
            dag = airflow_db[dag]
        else:
            sync_dag(dag)
        kwargs: dict[str, Any] = {"run_conf": run_conf}
        if logical_date is not None:
            kwargs["logical_date"] = logical_date
        dag_run = dag.test(**kwargs)
        return dag_run, task_states(dag_run)

    return run


@pytest.fixture
def demo_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = tmp_path / "demo"
    monkeypatch.setenv("AIRFLOW_VAR_SPARK_KMS_DEMO_BASE", str(base))
    yield base
