"""encrypt_dataset / decrypt_dataset through Spark (session fixture), their refusals, and their failures:
the error that comes back, and the destination a failed job leaves as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    DecryptionError,
    JobError,
    KeyNotFoundError,
    KeyStateError,
    KmsUnavailableError,
)
from spark_kms.jobs import RUN_ID_CONTEXT_KEY, decrypt_dataset, encrypt_dataset, inspect_dataset
from spark_kms.parquet import read_dataset_key_table


def test_decrypt_refuses_to_write_over_or_inside_its_source(dataset, tmp_path):
    for destination in (dataset.root, dataset.root / "plain", dataset.root.parent):
        with pytest.raises(ConfigurationError, match="different directory"):
            decrypt_dataset(dataset.root, destination, kms_options=dataset.kms_options)
    with pytest.raises(ConfigurationError, match="output_format"):
        decrypt_dataset(dataset.root, tmp_path / "out", output_format="xml")


def test_encrypt_rejects_bad_arguments_before_starting_spark(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ConfigurationError, match="source_format"):
        encrypt_dataset(src, tmp_path / "dst", key_uri="local://alias/pii", columns=["a"], source_format="avro")
    with pytest.raises(ConfigurationError, match="at least one column"):
        encrypt_dataset(src, tmp_path / "dst", key_uri="local://alias/pii", columns=[])
    with pytest.raises(ConfigurationError, match="different directory"):
        encrypt_dataset(src, src / "enc", key_uri="local://alias/pii", columns=["a"])


@pytest.mark.spark
def test_encrypt_csv_then_decrypt_round_trips(spark, local_kms, tmp_path):
    src = tmp_path / "people.csv"
    # SSNs with leading zeros and no dashes look like numbers to CSV schema inference.
    rows = [(i, f"user{i}@example.com", f"{i:09d}", "2024-01-0" + str(1 + i % 2)) for i in range(30)]
    src.write_text("id,email,ssn,date\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows))
    enc, plain = tmp_path / "enc", tmp_path / "plain"

    summary = encrypt_dataset(
        src, enc, key_uri=local_kms.key_uri, columns=["email"], deterministic_columns=["ssn"],
        blind_index={"email": "email_bidx"}, partition_by=["date"], source_format="csv",
        kms_options=local_kms.kms_options, spark=spark, run_id="enc-1",
    )
    assert summary.status == "succeeded" and summary.rows == 30 and summary.files >= 2
    assert summary.kms_calls.get("local:GenerateDataKey", 0) >= 2
    assert json.loads((enc / "_spark_kms_runs" / "enc-1.json").read_text())["rows"] == 30
    deks = [e for e in read_dataset_key_table(enc).deks.values() if e.algorithm != "AES_256_SIV"]
    assert {e.encryption_context[RUN_ID_CONTEXT_KEY] for e in deks} == {"enc-1"}  # the run id reaches the KMS
    assert {c.name for c in inspect_dataset(enc, kms_options=local_kms.kms_options).columns} >= {"email", "ssn"}
    stored = pq.read_table(next(enc.rglob("*.parquet")), columns=["email"]).column("email")
    assert not any(b"@example.com" in v for v in stored.to_pylist())

    out = decrypt_dataset(enc, plain, columns=["id", "email", "ssn"], kms_options=local_kms.kms_options,
                          spark=spark, run_id="dec-1")
    assert out.rows == 30 and (enc / "_spark_kms_runs" / "dec-1.json").exists()
    back = sorted(spark.read.parquet(str(plain)).select("id", "email", "ssn").collect())
    assert [tuple(r) for r in back] == [(a, b, c) for a, b, c, _ in rows]


# --------------------------------------------------------------------------- failures: types and destinations
#
# A failing job raises the spark_kms error itself (not Spark's PythonException around it), records
# one line in its run record, and leaves the destination as it was: every file byte-identical, no
# staging left beside it or in it.

def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden and ``_`` files included), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _beside(destination: Path) -> list[str]:
    """What a job left next to the destination, its lock file aside."""
    prefix = f".{destination.name}.spark_kms-"
    return sorted(p.name for p in destination.parent.iterdir()
                  if p.name.startswith(prefix) and p.name != f"{prefix}lock")


def _known_destination(path: Path) -> Path:
    """A destination that already holds data: a Parquet file, a CSV file, Spark's markers."""
    path.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2, 3], "note": ["keep", "these", "bytes"]}), path / "part-0.parquet")
    (path / "extra.csv").write_text("id,note\n1,keep\n")
    (path / "_SUCCESS").write_text("")
    (path / ".part-0.parquet.crc").write_bytes(b"\x00\x01")
    return path


def _admin(kms_dir: Path) -> Any:
    from spark_kms.kms.local import LocalKms

    return LocalKms(kms_dir)


def _break(how: str, dataset: Any, tmp_path: Path) -> tuple[dict[str, dict[str, Any]], type[Exception]]:
    """Make a decrypt of ``dataset`` fail; return the KMS options to use and the error expected."""
    options = {k: dict(v) for k, v in dataset.kms_options.items()}
    keystore = Path(options["local"]["keystore"])
    admin = _admin(keystore)
    if how == "disabled key":
        admin.disable_key("alias/pii")
        return options, KeyStateError
    if how == "denied principal":
        admin.put_key_policy("alias/pii", {admin.principal: ["admin", "encrypt", "decrypt"], "auditor": ["encrypt"]})
        options["local"]["principal"] = "auditor"
        return options, AccessDeniedError
    if how == "tampered cell":
        victim = Path(dataset.files()[2])
        table = pq.read_table(victim)
        meta = pq.read_metadata(victim).metadata
        cells = table.column("email").to_pylist()
        i = next(n for n, c in enumerate(cells) if c is not None)
        cells[i] = cells[i][:-1] + bytes([cells[i][-1] ^ 1])
        table = table.set_column(table.schema.get_field_index("email"), "email", pa.array(cells, pa.binary()))
        pq.write_table(table.replace_schema_metadata(meta), victim)
        return options, DecryptionError
    if how == "keystore gone":
        keystore.rename(tmp_path / "keystore-elsewhere")  # unmounted, moved away...
        return options, KmsUnavailableError
    raise AssertionError(how)


def _failed_record(dataset_dir: Path, run_id: str) -> dict[str, Any]:
    record = json.loads((dataset_dir / "_spark_kms_runs" / f"{run_id}.json").read_text())
    assert record["status"] == "failed"
    assert "\n" not in record["error"] and "Traceback" not in record["error"], record["error"]
    return record


@pytest.mark.spark
@pytest.mark.parametrize("how", ["disabled key", "denied principal", "tampered cell", "keystore gone"])
def test_a_failed_decrypt_raises_its_error_and_leaves_the_destination_byte_identical(spark, dataset, tmp_path, how):
    destination = _known_destination(tmp_path / "plain")
    before = _digests(destination)
    options, expected = _break(how, dataset, tmp_path)
    with pytest.raises(expected) as info:
        decrypt_dataset(dataset.root, destination, kms_options=options, spark=spark, run_id="dec-fails")
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert type(info.value.__cause__).__module__.startswith("pyspark.")  # Spark's exception, chained
    assert _digests(destination) == before
    assert _beside(destination) == []
    record = _failed_record(dataset.root, "dec-fails")
    assert record["error"] == f"{expected.__name__}: {info.value}"


@pytest.mark.spark
@pytest.mark.parametrize("output_format", ["csv", "json"])
def test_a_failed_export_leaves_the_destination_byte_identical(spark, dataset, tmp_path, output_format):
    destination = _known_destination(tmp_path / f"export-{output_format}")
    before = _digests(destination)
    options, expected = _break("disabled key", dataset, tmp_path)
    with pytest.raises(expected):
        decrypt_dataset(dataset.root, destination, output_format=output_format, kms_options=options, spark=spark)
    assert _digests(destination) == before and _beside(destination) == []


@pytest.mark.spark
def test_a_successful_decrypt_replaces_the_whole_destination(spark, dataset, tmp_path):
    destination = _known_destination(tmp_path / "plain")
    decrypt_dataset(dataset.root, destination, columns=["id", "email"], kms_options=dataset.kms_options, spark=spark)
    assert not (destination / "extra.csv").exists() and not (destination / "part-0.parquet").exists()
    back = pq.read_table(destination).sort_by("id")
    assert back.column("email").to_pylist() == dataset.expected.column("email").to_pylist()
    assert _beside(destination) == []


def _encrypt_source(tmp_path: Path) -> Path:
    src = tmp_path / "land"
    src.mkdir()
    pq.write_table(pa.table({"id": list(range(30)), "email": [f"user{i}@example.com" for i in range(30)],
                             "ssn": [f"{i:03d}-00-{i:04d}" for i in range(30)]}), src / "part-0.parquet")
    return src


@pytest.mark.spark
@pytest.mark.parametrize("how", ["disabled key", "denied principal", "disabled key, deterministic column"])
def test_a_failed_encrypt_raises_its_error_and_keeps_every_file_of_the_destination(
    spark, local_kms, tmp_path, how
):
    src = _encrypt_source(tmp_path)
    destination = tmp_path / "enc"
    encrypt_dataset(src, destination, key_uri=local_kms.key_uri, columns=["email"], kms_options=local_kms.kms_options,
                    spark=spark, run_id="enc-ok")
    before = _digests(destination)
    options = {"local": dict(local_kms.kms_options["local"])}
    admin = _admin(local_kms.keystore_dir)
    columns, deterministic = ["email"], []
    if how.startswith("disabled key"):
        admin.disable_key("alias/pii")
        expected: type[Exception] = KeyStateError
        if how.endswith("deterministic column"):  # the one KMS call made before any task runs
            columns, deterministic = [], ["ssn"]
    else:
        admin.put_key_policy("alias/pii", {admin.principal: ["admin", "encrypt", "decrypt"], "reader": ["decrypt"]})
        options["local"]["principal"] = "reader"
        expected = AccessDeniedError
    with pytest.raises(expected) as info:
        encrypt_dataset(src, destination, key_uri=local_kms.key_uri, columns=columns,
                        deterministic_columns=deterministic, kms_options=options, spark=spark, run_id="enc-fails")
    assert info.value.operation == "GenerateDataKey" and "Traceback" not in str(info.value)
    after = _digests(destination)
    # Every file is as it was; the one addition is the failed run's record (the dataset's audit trail).
    assert {f: d for f, d in after.items() if f != "_spark_kms_runs/enc-fails.json"} == before
    assert _failed_record(destination, "enc-fails")["error"].startswith(f"{expected.__name__}: ")
    assert not (destination / "_spark_kms_staging").exists() and not (destination / "_spark_kms_trash").exists()


# --------------------------------------------------------------------------- the swap itself (no Spark)


def _tree(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(content)
    return path


def test_staged_replacement_swaps_in_on_success_and_drops_staging_on_failure(tmp_path):
    from spark_kms.jobs._replace import staged_replacement

    destination = _tree(tmp_path / "out", "old")
    with pytest.raises(RuntimeError), staged_replacement(destination, "test") as staging:
        _tree(staging, "half written")
        raise RuntimeError("the write failed")
    assert (destination / "data.txt").read_text() == "old" and _beside(destination) == []

    with staged_replacement(destination, "test") as staging:
        _tree(staging, "new")
    assert (destination / "data.txt").read_text() == "new" and _beside(destination) == []

    with staged_replacement(tmp_path / "fresh" / "out", "test") as staging:  # no destination yet
        _tree(staging, "first")
    assert (tmp_path / "fresh" / "out" / "data.txt").read_text() == "first"


@pytest.mark.parametrize("killed_after", ["journal", "old moved aside", "new moved in"])
def test_a_swap_killed_midway_is_finished_by_the_next_job(tmp_path, killed_after):
    from spark_kms._atomic import atomic_write_json
    from spark_kms.jobs._replace import recover_replacement, staged_replacement

    destination = _tree(tmp_path / "out", "old")
    staging = _tree(tmp_path / ".out.spark_kms-staging-abc", "new")
    old = tmp_path / ".out.spark_kms-old-abc"
    atomic_write_json(tmp_path / ".out.spark_kms-replace.json",
                      {"destination": str(destination), "staging": str(staging), "old": str(old)})
    if killed_after in ("old moved aside", "new moved in"):
        destination.rename(old)
    if killed_after == "new moved in":
        staging.rename(destination)
    orphan = _tree(tmp_path / ".out.spark_kms-staging-dead", "a killed job's plaintext")

    assert recover_replacement(destination) is True
    assert (destination / "data.txt").read_text() == "new"
    assert not old.exists() and not (tmp_path / ".out.spark_kms-replace.json").exists()
    assert recover_replacement(destination) is False  # idempotent
    with staged_replacement(destination, "test") as staging:  # the next job also removes leftovers
        assert not orphan.exists()
        _tree(staging, "newer")
    assert (destination / "data.txt").read_text() == "newer" and _beside(destination) == []


def test_one_job_at_a_time_per_destination(tmp_path):
    from spark_kms.jobs._replace import staged_replacement

    destination = _tree(tmp_path / "out", "old")
    with staged_replacement(destination, "first") as staging:
        with pytest.raises(JobError, match="another job is writing"), staged_replacement(destination, "second"):
            pass
        _tree(staging, "new")
    assert (destination / "data.txt").read_text() == "new"


# --------------------------------------------------------------------------- a keystore that disappears


def test_a_keystore_that_served_this_process_and_disappears_is_unavailable_not_missing(tmp_path):
    import shutil

    from spark_kms.kms.local import LocalKms

    keystore = tmp_path / "ks"
    kms = LocalKms(keystore)
    kms.create_key(alias="alias/pii")
    wrapped = kms.generate_data_key("alias/pii").wrapped
    shutil.rmtree(keystore)
    for call in (lambda: kms.generate_data_key("alias/pii"), lambda: LocalKms(keystore).describe_key("alias/pii"),
                 lambda: kms.decrypt(wrapped.ciphertext)):
        with pytest.raises(KmsUnavailableError, match="is missing .* after serving this process"):
            call()
    # An unmounted volume: the mount point is there, the keystore file is not.
    keystore.mkdir()
    with pytest.raises(KmsUnavailableError, match="is missing"):
        kms.generate_data_key("alias/pii")


def test_a_keystore_never_seen_is_not_found_unless_a_wrapped_key_proves_it_existed(tmp_path, monkeypatch):
    import shutil

    from spark_kms.kms.local import LocalKms, service

    keystore = tmp_path / "ks"
    kms = LocalKms(keystore)
    kms.create_key(alias="alias/pii")
    wrapped = kms.generate_data_key("alias/pii").wrapped
    shutil.rmtree(keystore)
    monkeypatch.setattr(service, "_SERVED_KEYSTORES", set())  # as a fresh process (a Spark worker) sees it
    with pytest.raises(KeyNotFoundError, match="does not exist; create a key first"):
        LocalKms(keystore).generate_data_key("alias/pii")  # first use of a wrong path: the old hint
    with pytest.raises(KmsUnavailableError, match="a keystore made the wrapped key this Decrypt needs"):
        LocalKms(keystore).decrypt(wrapped.ciphertext)
