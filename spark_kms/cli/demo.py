"""``spark-kms demo``: the whole story end to end on this machine, with the embedded KMS.

Steps: create a keystore and key in the workdir; generate a sample PII dataset in Spark
(deterministic seed); encrypt ``ssn``, ``email`` and ``card_number`` with the ``spark_kms``
data source; show one file's footer key table and the KMS call count; decrypt and verify
equality; rotate the key; append a second batch; show that old files still decrypt and that
new files use key version 2.

``--master`` / ``--conf`` pick the Spark session (:mod:`spark_kms.cli._spark`; default ``local[2]``).
The demo itself creates the keystore and reads the footers on this machine, so on a cluster the
workdir must be a path that this machine and the cluster's workers share.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from spark_kms.cli._spark import spark_options
from spark_kms.errors import JobError

__all__ = ["demo", "generate_customers", "run_demo"]

PII_COLUMNS = ("ssn", "email", "card_number")
KEY_ALIAS = "alias/demo-pii"


def generate_customers(spark: Any, rows: int, *, start: int = 0, seed: int = 7, partitions: int = 4) -> Any:
    """A sample PII DataFrame built from ``spark.range`` and SQL expressions (fast at 1M rows):
    id, name, email, ssn, card_number, birth_date, amount. Same seed, same rows."""
    h = f"xxhash64(id, {seed})"
    return spark.range(start, start + rows, numPartitions=partitions).selectExpr(
        "id",
        f"concat(element_at(array('Ada','Grace','Alan','Edsger','Barbara','Donald','Zoë','José'), "
        f"cast(pmod({h}, 8) + 1 as int)), ' ', element_at(array('Lovelace','Hopper','Turing','Dijkstra',"
        f"'Liskov','Knuth','Ångström','Núñez'), cast(pmod(shiftright({h}, 3), 8) + 1 as int))) as name",
        f"concat('user', id, '.', pmod({h}, 1000), '@example.org') as email",
        f"format_string('%03d-%02d-%04d', cast(pmod({h}, 899) + 100 as int), cast(pmod(shiftright({h}, 10), 99) + 1 as int), "
        f"cast(pmod(shiftright({h}, 17), 9999) + 1 as int)) as ssn",
        f"concat('4', lpad(cast(pmod({h}, 1000000000000000) as string), 15, '0')) as card_number",
        f"date_add(date'1940-01-01', cast(pmod(shiftright({h}, 5), 25000) as int)) as birth_date",
        f"cast(pmod(shiftright({h}, 7), 10000000) / 100 as decimal(12,2)) as amount",
    )


def _key_table_view(path: Path) -> Table:
    from spark_kms.parquet import read_key_table

    table = read_key_table(path)
    view = Table(title=f"Footer key table of {path.name}")
    for col in ("DEK id", "key id", "version", "encryption context", "wrapped size"):
        view.add_column(col)
    for entry in table.deks.values():
        ctx = ", ".join(f"{k}={v}" for k, v in sorted(entry.encryption_context.items()) if k != "spark_kms.dataset")
        view.add_row(entry.dek_id, entry.key_id, entry.key_version, ctx, f"{len(entry.wrapped_dek)} B")
    return view


def run_demo(rows: int, workdir: Path, console: Console, *, spark: Any = None) -> dict[str, Any]:
    """Run every step; return the facts shown (for tests). Raises SparkKmsError on a failed check.

    ``spark``: the SparkSession, or a function returning it (default: ``local[2]``)."""
    from pyspark.sql import functions as F

    from spark_kms.kms.local import LocalKms
    from spark_kms.parquet import list_data_files, read_key_table
    from spark_kms.spark import read_encrypted, write_encrypted
    from spark_kms.spark.session import spark_session

    workdir = workdir.absolute()
    keystore, dataset = workdir / "keystore", workdir / "customers"
    facts: dict[str, Any] = {}
    steps = ["keystore", "spark", "generate + encrypt", "verify", "rotate", "append batch 2", "verify all"]
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                        console=console, transient=False)
    with progress:
        job = progress.add_task("demo", total=len(steps))

        def step(name: str) -> None:
            progress.update(job, description=name)

        step("keystore")
        shutil.rmtree(keystore, ignore_errors=True)
        shutil.rmtree(dataset, ignore_errors=True)
        kms = LocalKms(keystore)
        key_id = kms.create_key(alias=KEY_ALIAS, description="spark-kms demo")
        key_uri, opts = f"local://{KEY_ALIAS}", {"local": {"keystore": str(keystore)}}
        progress.advance(job)
        console.print(f"created key {KEY_ALIAS} ({key_id}) in the embedded KMS at {keystore}")

        step("starting Spark")
        if callable(spark):
            spark = spark()
        elif spark is None:
            spark = spark_session(None, "spark-kms-demo")
        progress.advance(job)

        step(f"generating {rows:,} rows and encrypting {', '.join(PII_COLUMNS)}")
        batch1 = generate_customers(spark, rows)
        first = write_encrypted(batch1, str(dataset), key_uri=key_uri, columns=list(PII_COLUMNS), kms_options=opts,
                                encryption_context={"purpose": "demo"})
        facts["first"] = first.to_dict()
        progress.advance(job)
        console.print(_key_table_view(dataset / first.files[0]))
        console.print(f"wrote {first.rows:,} rows in {len(first.files)} files; KMS calls: {first.kms_calls}")

        step("decrypting and verifying batch 1")
        back = read_encrypted(spark, str(dataset), kms_options=opts)
        diff = back.exceptAll(batch1).count() + batch1.exceptAll(back).count()
        facts["diff_batch1"] = diff
        if diff:
            raise JobError(f"dataset {dataset}: {diff} rows differ after decryption")
        progress.advance(job)
        console.print(f"decrypted batch 1 with Spark's Parquet scan: all {first.rows:,} rows equal the source")

        step("rotating the key")
        facts["new_version"] = kms.rotate_key(KEY_ALIAS)
        progress.advance(job)
        console.print(f"rotated {KEY_ALIAS} to version {facts['new_version']}")

        step("appending batch 2 under the rotated key")
        batch2 = generate_customers(spark, max(rows // 10, 1), start=rows, seed=11)
        second = write_encrypted(batch2, str(dataset), key_uri=key_uri, columns=list(PII_COLUMNS), kms_options=opts,
                                 mode="append", encryption_context={"purpose": "demo"})
        facts["second"] = second.to_dict()
        progress.advance(job)
        console.print(f"appended {second.rows:,} rows in {len(second.files)} files; KMS calls: {second.kms_calls}")

        step("verifying old and new data")
        everything = read_encrypted(spark, str(dataset), kms_options=opts)
        expected = batch1.unionByName(batch2)
        checksum = F.sum(F.xxhash64(*PII_COLUMNS).cast("decimal(38,0)")).cast("string")
        got, want = everything.agg(F.count("*"), checksum).first(), expected.agg(F.count("*"), checksum).first()
        facts["rows_total"], facts["checksum_ok"] = got[0], tuple(got) == tuple(want)
        if not facts["checksum_ok"]:
            raise JobError(f"dataset {dataset}: decrypted checksum differs from the source after rotation")
        versions: dict[str, set[str]] = {}
        for f in list_data_files(dataset):
            for entry in read_key_table(f).deks.values():
                versions.setdefault(os.path.basename(f), set()).add(entry.key_version)
        facts["versions"] = {k: sorted(v) for k, v in versions.items()}
        progress.advance(job)

    view = Table(title="Key versions per file after rotation")
    view.add_column("file")
    view.add_column("batch")
    view.add_column("key versions")
    for name, vers in sorted(facts["versions"].items()):
        batch = "2" if any(name == os.path.basename(p) for p in second.files) else "1"
        view.add_row(name, batch, ", ".join(vers))
    console.print(view)
    console.print(
        f"[bold green]OK[/]: {facts['rows_total']:,} rows decrypt; key {key_id} now at version "
        f"{facts['new_version']}; old files stay on version 1 until a rewrap. KMS calls for batch 2: "
        f"{second.kms_calls}"
    )
    return facts


@click.command("demo")
@click.option("--rows", default=1_000_000, show_default=True, type=click.IntRange(min=1), help="rows in batch 1")
@click.option("--workdir", default=".demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="where the keystore and the dataset go (recreated)")
@spark_options(always=True, app_name="spark-kms-demo")
def demo(rows: int, workdir: Path, spark: Any) -> None:
    """Encrypt, inspect, decrypt, rotate and re-read a sample PII dataset with the embedded KMS."""
    run_demo(rows, workdir, Console(), spark=spark)
