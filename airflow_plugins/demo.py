"""Helpers the example DAGs (``dags/``) run inside their tasks: the demo base directory,
the embedded keystore and key, sample landing data, seeded datasets, dataset discovery.

Layout under the demo base directory::

    <base>/keystore/                          embedded local KMS (key alias/pii)
    <base>/landing/<day>/customers.csv        plain landing data (sample, made if absent)
    <base>/encrypted/<dataset>/...            encrypted Parquet datasets (or Delta tables)
    <base>/exports/<day>/customers/           plaintext exports (decrypt)

``<day>`` is the run's day (:data:`RUN_DAY`): its logical date, or for a run without one (Airflow 3's
manual trigger) the day it was triggered for (``run_after``).

The base directory is the Airflow Variable ``spark_kms_demo_base``, else the environment
variable ``SPARK_KMS_DEMO_BASE``, else ``$AIRFLOW_HOME/spark_kms_demo``. Nothing here
imports pyspark (DAG files import this module at parse time).
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spark_kms.kms import KmsConfig

__all__ = [
    "BASE_ENV",
    "BASE_VARIABLE",
    "DEMO_COLUMNS",
    "DEMO_KEY_URI",
    "PII_COLUMNS",
    "RUN_DAY",
    "datasets_under_key",
    "default_base",
    "demo_settings",
    "ensure_demo_key",
    "resolve_base",
    "seed_dataset",
    "write_landing",
]

BASE_VARIABLE = "spark_kms_demo_base"
BASE_ENV = "SPARK_KMS_DEMO_BASE"
DEMO_KEY_ALIAS = "alias/pii"
DEMO_KEY_URI = f"local://{DEMO_KEY_ALIAS}"
DEMO_COLUMNS = ("customer_id", "name", "email", "ssn", "country", "amount")
PII_COLUMNS = ("name", "email", "ssn")

#: The run's day (``YYYY-MM-DD``) as a template: ``{{ ds }}`` exists only for runs with a logical date, while
#: Airflow 3 triggers manual runs without one (``ds`` is then undefined); ``dag_run.run_after`` is always set.
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Berners")
_COUNTRIES = ("DE", "FR", "GB", "NL", "PL", "SE")


def default_base() -> Path:
    """``$SPARK_KMS_DEMO_BASE``, else ``$AIRFLOW_HOME/spark_kms_demo`` (``~/airflow`` if unset)."""
    env = os.environ.get(BASE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home).expanduser().absolute() / "spark_kms_demo"


def resolve_base() -> Path:
    """The demo base directory; inside a task the Airflow Variable wins over the environment."""
    from airflow.sdk import Variable

    value = Variable.get(BASE_VARIABLE, default=None)
    return Path(value).expanduser().absolute() if value else default_base()


def demo_settings(base: Path) -> dict[str, Any]:
    """What downstream tasks template from the setup task's XCom (JSON-serialisable)."""
    keystore = base / "keystore"
    return {
        "base": str(base),
        "keystore": str(keystore),
        "key_uri": DEMO_KEY_URI,
        "kms_options": {"local": {"keystore": str(keystore)}},
        "encrypted": str(base / "encrypted"),
    }


def ensure_demo_key(keystore: str | os.PathLike[str]) -> str:
    """Create the keystore and the key ``alias/pii`` if absent; return the key URI."""
    from spark_kms.kms.local import LocalKms

    kms = LocalKms(keystore)
    if DEMO_KEY_ALIAS not in kms.list_aliases():
        kms.create_key(alias=DEMO_KEY_ALIAS)
    return DEMO_KEY_URI


def _rows(seed: str, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # deterministic per day, so a re-run lands the same file
    rows = []
    for i in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        rows.append({
            "customer_id": i + 1,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{i}@example.com",
            "ssn": f"{rng.randint(100, 899):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}",
            "country": rng.choice(_COUNTRIES),
            "amount": round(rng.uniform(1, 500), 2),
        })
    return rows


def write_landing(base: str | os.PathLike[str], ds: str, *, rows: int = 50) -> Path:
    """``<base>/landing/<ds>/customers.csv`` with a header row; left as is if it exists."""
    if not ds or ds == "None":  # a run without a logical date must not land data under landing/None
        raise ValueError(f"write_landing needs the run's day (YYYY-MM-DD), got {ds!r}")
    target = Path(base) / "landing" / ds / "customers.csv"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(DEMO_COLUMNS))
        writer.writeheader()
        writer.writerows(_rows(ds, rows))
    os.replace(tmp, target)  # readers never see a half-written landing file
    return target


def seed_dataset(
    dataset_dir: str | os.PathLike[str],
    kms_options: Mapping[str, Mapping[str, Any]] | KmsConfig,
    *,
    key_uri: str = DEMO_KEY_URI,
    rows: int = 20,
    files: int = 2,
) -> Path:
    """An encrypted dataset of ``files`` Parquet files (one data key each), written with
    pyarrow alone, if ``dataset_dir`` has none yet."""
    import pyarrow as pa

    from spark_kms.kms import KmsConfig
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, list_data_files

    target = Path(dataset_dir)
    if target.is_dir() and list_data_files(str(target)):
        return target
    target.mkdir(parents=True, exist_ok=True)
    provider = KmsConfig.of(kms_options).provider(key_uri)
    spec = EncryptionSpec(columns=list(PII_COLUMNS))
    for n in range(files):
        table = pa.Table.from_pylist(_rows(f"{target.name}-{n}", rows))
        with EncryptedParquetWriter(target / f"part-{n:05d}.parquet", table.schema, spec, provider,
                                    encryption_context={"dataset": target.name}) as writer:
            writer.write_batch(table)
    return target


def datasets_under_key(root: str | os.PathLike[str], key_uri: str) -> list[str]:
    """The encrypted datasets directly under ``root`` that have a data key wrapped by ``key_uri``; a Delta
    (or Iceberg) table among them is judged by its current snapshot's keys (docs/TABLES.md)."""
    from spark_kms import tables
    from spark_kms.parquet import read_dataset_key_table

    found = []
    base = Path(root)
    if not base.is_dir():
        return []
    for child in sorted(base.iterdir()):
        if not child.is_dir() or child.name.startswith(("_", ".")):
            continue
        if tables.detect_table(child):
            table = tables.table_scan(str(child)).key_table  # the snapshot's files only: no KMS call
        else:
            table = read_dataset_key_table(str(child))
        if any(entry.key_uri == key_uri for entry in table.deks.values()):
            found.append(str(child))
    return found
