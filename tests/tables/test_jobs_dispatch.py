"""Tables through the PUBLIC dataset jobs (``spark_kms.jobs``) and the CLI (``spark-kms ...``): the jobs hand a
Delta table (delta-rs) or an Iceberg table (pyiceberg, SQL catalog on SQLite) to ``spark_kms.tables`` themselves.

encrypt into a table (the source read with pyarrow: no Spark) -> inspect -> rotate -> rewrap -> re-encrypt ->
decrypt (and time travel) -> vacuum, the table's own reader reading it after every step; ``gc`` on a table
refuses and points at ``vacuum``; the issue's original bug -- ``reencrypt_dataset`` on a Delta table rewrote
its files in place and corrupted it -- is gone; the plain-directory code paths refuse what is (or holds) a table.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from spark_kms import tables
from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.errors import ConfigurationError
from spark_kms.jobs import (
    collect_garbage,
    decrypt_dataset,
    encrypt_dataset,
    inspect_dataset,
    needs_rotation,
    reencrypt_dataset,
    rewrap_dataset,
)
from spark_kms.kms.local import LocalKms

COLUMNS = ["id", "name", "ssn", "email", "amount", "birth", "day"]
SPARK_KMS = str(Path(sys.executable).parent / "spark-kms")


def _no_spark() -> None:
    pytest.fail("a job on a table started Spark")


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _plain(table: pa.Table) -> pa.Table:
    return table.select(COLUMNS).sort_by("id")


def _location_args(target) -> list[str]:
    """The CLI's table options for ``target`` (an Iceberg catalog's properties)."""
    props = target.kw.get("catalog_properties", {})
    return [a for k, v in props.items() for a in ("--catalog-property", f"{k}={v}")]


def _check_own_reader(target, source: pa.Table) -> None:
    own = target.own_read()  # delta-rs / pyiceberg alone: no spark_kms involved
    assert own.num_rows == source.num_rows
    cells = [c for c in own.column("ssn").to_pylist() if c is not None]
    assert cells and not any(b"078-05" in c for c in cells)


def test_jobs_and_cli_on_a_table(target, source, local_kms, tmp_path):
    kms = local_kms.kms_options
    ks = str(local_kms.keystore_dir)
    uri = target.uri
    catalog = {k: v for k, v in target.kw.items() if k == "catalog_properties"}
    land = tmp_path / "land"
    land.mkdir()
    pq.write_table(source, land / "part-0.parquet")

    # -- encrypt into a table that does not exist yet: pyarrow reads the source, one commit, no Spark
    written = encrypt_dataset(
        land, uri, key_uri=local_kms.key_uri, columns=["ssn", "amount", "birth"], deterministic_columns=["email"],
        blind_index={"email": "email_bidx"}, partition_by=["day"], kms_options=kms, spark=_no_spark,
        table_format=target.format, **catalog,
    )
    assert written.ok and written.files == 2 and written.rows == source.num_rows
    assert written.details["table_format"] == target.format and written.details["source"] == str(land)
    _check_own_reader(target, source)

    # -- inspect (job and CLI)
    seen = inspect_dataset(uri, kms_options=kms, **catalog)
    assert isinstance(seen, tables.TableInspection) and len(seen.files) == 2 and seen.up_to_date is True
    code, out = _cli("inspect", uri, "--keystore", ks, "--json", *_location_args(target))
    assert code == 0, out
    assert json.loads(out)["format"] == target.format and json.loads(out)["up_to_date"] is True

    # -- rotate the key; rewrap through the CLI: one property-only commit, no data file touched
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    assert needs_rotation(uri, kms_options=kms, **catalog) is True
    files_before = {p: p.read_bytes() for p in target.data_files()}
    code, out = _cli("rewrap", uri, "--keystore", ks, "--json", "--run-id", "cli-rewrap", *_location_args(target))
    assert code == 0, out
    assert json.loads(out)["deks"] == 3 and json.loads(out)["details"]["table_format"] == target.format
    assert {p: p.read_bytes() for p in target.data_files()} == files_before
    assert needs_rotation(uri, kms_options=kms, **catalog) is False
    _check_own_reader(target, source)

    # -- re-encrypt (job): new files, one commit per batch; the old files stay for time travel
    before = target.current_version()
    again = reencrypt_dataset(uri, kms_options=kms, force=True, batch_files=1, **catalog)
    assert again.ok and again.files == 2 and len(again.details["table_versions"]) == 2
    assert [op for op in target.operations() if op[1] == "reencrypt"] and set(files_before) <= set(
        target.data_files())
    _check_own_reader(target, source)
    assert _plain(tables.read_table_decrypted(uri, kms_options=kms, **catalog)).equals(_plain(source))

    # -- decrypt: the current snapshot (job) and, through the CLI, the one before the re-encrypt
    current = decrypt_dataset(uri, tmp_path / "plain", kms_options=kms, spark=_no_spark, **catalog)
    assert current.ok and current.rows == source.num_rows
    assert _plain(pq.read_table(tmp_path / "plain")).equals(_plain(source))
    code, out = _cli("decrypt", uri, tmp_path / "old", "--keystore", ks, "--version", before,
                     *_location_args(target))
    assert code == 0, out
    assert _plain(pq.read_table(tmp_path / "old")).equals(_plain(source))

    # -- gc refuses a table and names vacuum; vacuum through the CLI deletes what older snapshots kept
    with pytest.raises(ConfigurationError, match="vacuum"):
        collect_garbage(uri if target.format == "iceberg" else target.root)
    code, out = _cli("gc", target.root)
    assert code == ExitCode.USAGE and "spark-kms vacuum" in out and "table" in out
    code, out = _cli("vacuum", uri, "--retention-hours", "0", *_location_args(target))
    assert code == 0, out
    assert "deleted 2 data files" in out
    assert not set(files_before) & set(target.data_files())  # the old data keys' files are gone
    _check_own_reader(target, source)
    assert _plain(tables.read_table_decrypted(uri, kms_options=kms, **catalog)).equals(_plain(source))


def test_reencrypt_dataset_on_a_delta_table_no_longer_corrupts_it(tmp_path, source, local_kms):
    """The issue's bug: ``reencrypt_dataset`` on a Delta table rewrote its data files in place (the log's sizes
    no longer matched; delta-rs then failed with "Parquet magic bytes not found"). Run as a user would, from
    the command line."""
    from deltalake import DeltaTable

    root = tmp_path / "people"
    tables.encrypt_into_table(source, root, format="delta", columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=local_kms.kms_options, partition_by=["day"])
    old = {p: p.read_bytes() for p in root.glob("day=*/*.parquet")}
    assert len(old) == 2
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    out = subprocess.run([SPARK_KMS, "reencrypt", str(root), "--keystore", str(local_kms.keystore_dir), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["files"] == 2 and summary["details"]["table_format"] == "delta"

    assert {p: p.read_bytes() for p in old} == old  # no file the log referenced was rewritten
    dt = DeltaTable(str(root))
    assert dt.version() == 1 and dt.history(1)[0].get("spark_kms.job") == "reencrypt"
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    for action in actions:  # the log's recorded sizes match the files: not corrupted
        assert os.path.getsize(root / action["path"]) == action["size_bytes"]
    assert not {str(root / a["path"]) for a in actions} & {str(p) for p in old}
    assert dt.to_pyarrow_table().num_rows == source.num_rows
    assert DeltaTable(str(root), version=0).to_pyarrow_table().num_rows == source.num_rows
    assert _plain(tables.read_table_decrypted(root, kms_options=local_kms.kms_options)).equals(_plain(source))
    assert inspect_dataset(root, kms_options=local_kms.kms_options).up_to_date is True


def test_a_delta_table_with_keys_in_the_column_only(tmp_path, local_kms):
    """The issue's other failure: a Delta table whose files carry their keys only in the ``_spark_kms_keys``
    column (``ColumnEncryptor`` output written by delta-rs) -- inspect and rewrap failed with
    MissingKeyTableError. Made here with the batch encryptor ColumnEncryptor runs, without Spark."""
    from deltalake import write_deltalake

    from spark_kms.parquet import BatchEncryptor, EncryptionSpec

    kms = local_kms.kms_options
    plain = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "ssn": ["078-05-1120", None, "078-05-1122"]})
    encryptor = BatchEncryptor(EncryptionSpec(columns=["ssn"]), local_kms.key_uri, kms_options=kms)
    encrypted = pa.Table.from_batches([encryptor.encrypt_batch(plain.to_batches()[0])])
    keys = encryptor.key_table().to_json().decode()
    encrypted = encrypted.append_column(tables.KEYS_COLUMN, pa.array([keys] * plain.num_rows, pa.string()))
    root = tmp_path / "from_spark"
    write_deltalake(str(root), encrypted)

    seen = inspect_dataset(root, kms_options=kms)
    assert [f.key_source for f in seen.files] == ["column"] and seen.up_to_date is True
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    assert rewrap_dataset(root, kms_options=kms).deks == 1
    assert inspect_dataset(root, kms_options=kms).up_to_date is True
    assert tables.read_table_decrypted(root, kms_options=kms).sort_by("id").select(["id", "ssn"]).equals(plain)


def test_plain_directory_paths_refuse_tables(tmp_path, source, local_kms):
    kms = local_kms.kms_options
    holder = tmp_path / "lake"
    root = holder / "people"
    tables.encrypt_into_table(source, root, format="delta", columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=kms, partition_by=["day"])
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    partition = root / "day=2024-01-01"

    # a partition directory inside the table is the table's: the table job refuses it and names the root
    for job in (lambda: inspect_dataset(partition, kms_options=kms), lambda: rewrap_dataset(partition, kms_options=kms),
                lambda: reencrypt_dataset(partition, kms_options=kms, force=True)):
        with pytest.raises(ConfigurationError, match=r"inside the delta table .*people: address the table by its root"):
            job()
    with pytest.raises(ConfigurationError, match="is a Delta table .*vacuum"):
        collect_garbage(partition)
    # a plain directory holding a table: the plain re-encrypt would rewrite the table's files in place
    with pytest.raises(ConfigurationError, match=r"holds a Delta table at .*people"):
        reencrypt_dataset(holder, kms_options=kms, force=True)
    # a table as the source of a plain encrypt, or as the destination a decrypt replaces
    with pytest.raises(ConfigurationError, match="source .* is a Delta table"):
        encrypt_dataset(root, tmp_path / "out", key_uri=local_kms.key_uri, columns=["ssn"], kms_options=kms,
                        spark=_no_spark)
    with pytest.raises(ConfigurationError, match="destination .* is a Delta table"):
        decrypt_dataset(tmp_path / "anything", root, kms_options=kms, spark=_no_spark)
    # a plain directory with files is not turned into a table; table-only arguments on a plain dataset
    plain, land = tmp_path / "plain", tmp_path / "land"
    for d in (plain, land):
        d.mkdir()
        pq.write_table(source, d / "part-0.parquet")
    with pytest.raises(ConfigurationError, match="plain directory with files in it, not a table"):
        encrypt_dataset(land, plain, key_uri=local_kms.key_uri, columns=["ssn"], kms_options=kms,
                        table_format="delta", spark=_no_spark)
    with pytest.raises(ConfigurationError, match="version= is for Delta and Iceberg tables"):
        inspect_dataset(plain, kms_options=kms, version=3)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files  # nothing was touched


def test_cli_encrypt_csv_into_a_delta_table_and_replace_a_partition(tmp_path, local_kms):
    """A CSV source (PII read as text: leading zeros kept) into a new Delta table, then ``--mode overwrite
    --replace-where`` replaces one partition in one commit; ``--storage-option`` and ``--table-option`` pass."""
    from deltalake import DeltaTable

    def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "ssn", "day"])
            w.writeheader()
            w.writerows(rows)

    first = [{"id": str(i), "ssn": f"00{i}-05-112{i}", "day": "2024-01-01" if i < 3 else "2024-01-02"}
             for i in range(5)]
    write_csv(tmp_path / "land" / "all.csv", first)
    root = tmp_path / "people"
    ks = str(local_kms.keystore_dir)
    code, out = _cli("encrypt", tmp_path / "land", root, "--format", "csv", "--key-uri", local_kms.key_uri,
                     "--columns", "ssn", "--partition-by", "day", "--table-format", "delta", "--keystore", ks,
                     "--storage-option", "s3.region=eu-west-1", "--table-option", "timeout=60s")
    assert code == 0, out
    assert "delta table" in out
    replaced = [{"id": "9", "ssn": "009-00-0009", "day": "2024-01-02"}]
    write_csv(tmp_path / "land2" / "one.csv", replaced)
    code, out = _cli("encrypt", tmp_path / "land2", root, "--format", "csv", "--key-uri", local_kms.key_uri,
                     "--columns", "ssn", "--mode", "overwrite", "--replace-where", "day=2024-01-02", "--keystore", ks)
    assert code == 0, out
    assert DeltaTable(str(root)).version() == 1
    got = tables.read_table_decrypted(root, kms_options=local_kms.kms_options).sort_by("id").to_pylist()
    assert [(r["id"], r["ssn"], str(r["day"])) for r in got] == [  # day: a date, as pyarrow infers it
        (0, "000-05-1120", "2024-01-01"), (1, "001-05-1121", "2024-01-01"), (2, "002-05-1122", "2024-01-01"),
        (9, "009-00-0009", "2024-01-02")]
    code, out = _cli("encrypt", tmp_path / "land2", tmp_path / "plain_ds", "--key-uri", local_kms.key_uri,
                     "--columns", "ssn", "--mode", "error", "--keystore", ks)
    assert code == ExitCode.USAGE and "is for a table destination" in out
