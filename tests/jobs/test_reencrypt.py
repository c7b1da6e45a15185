"""Re-encrypt on the embedded KMS: new DEKs and cells, equal data, idempotence, pruning, retirement."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, DATASET_MANIFEST_NAME, parse_cell_header
from spark_kms.errors import ConfigurationError, KeyStateError
from spark_kms.jobs import RUN_ID_CONTEXT_KEY, reencrypt_dataset, rewrap_dataset
from spark_kms.jobs.reencrypt import journal_path
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_dataset_key_table, read_key_table


def _dek_ids(ds) -> set[str]:
    return set(read_dataset_key_table(ds.root).deks)


def test_reencrypt_changes_every_dek_and_cell_and_the_data_decrypts_equal(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    deks_before, cells_before = _dek_ids(dataset), dataset.cell_bytes()
    files_before = dataset.files()

    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="re-1")

    assert dataset.files() == files_before  # same names, replaced in place
    assert not _dek_ids(dataset) & deks_before
    after = dataset.cell_bytes()
    for key, cells in cells_before.items():
        non_null = [(a, b) for a, b in zip(cells, after[key]) if a is not None]
        assert non_null and all(a != b for a, b in non_null), key
        assert [c is None for c in cells] == [c is None for c in after[key]]  # nulls stay nulls
    assert dataset.decrypted().equals(dataset.expected)
    assert summary.files == 4 and summary.rows == dataset.expected.num_rows and summary.deks == 4
    assert summary.kms_calls["local:GenerateDataKey"] == 5  # 4 files + one new dataset-level SIV key
    (key_id,) = summary.key_versions
    assert summary.key_versions == {key_id: ["2"]}
    for f in dataset.files():
        table = read_key_table(f)
        assert {e.key_version for e in table.deks.values()} == {"2"}
        assert {e.encryption_context[RUN_ID_CONTEXT_KEY] for e in table.deks.values()} == {"re-1"}
        assert {e.encryption_context["dataset"] for e in table.deks.values()} == {"customers"}
    siv = {e.dek_id for e in read_dataset_key_table(dataset.root).deks.values() if e.algorithm == AES_256_SIV}
    assert len(siv) == 1  # one deterministic key for the whole dataset: equal values stay joinable
    journal = json.loads(journal_path(dataset.root, "re-1").read_text())
    assert journal["status"] == "succeeded" and set(journal["files"].values()) == {"done"}
    assert not list(dataset.root.rglob(".*.reencrypt"))


def test_deterministic_and_blind_index_cells_share_one_new_key_across_files(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    old_siv = {e.dek_id for e in read_dataset_key_table(dataset.root).deks.values() if e.algorithm == AES_256_SIV}
    reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)
    headers = set()
    for f in dataset.files():
        for cell in pq.read_table(f, columns=["ssn"]).column("ssn").to_pylist():
            header = parse_cell_header(cell)
            assert header.algorithm == AES_256_SIV
            headers.add(header.dek_id_hex)
    assert len(headers) == 1 and not headers & old_siv  # equal values stay equal (joinable) across files
    decrypted = dataset.decrypted()
    assert decrypted.column("ssn").equals(dataset.expected.column("ssn"))


def test_reencrypt_rerun_is_idempotent(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    first = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="re-1")
    digests = dataset.file_digests()
    reset_kms_call_counts()

    same = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="re-1")
    assert kms_call_counts() == {}  # a finished run: nothing to do, no KMS call at all
    assert same.to_dict() == first.to_dict()

    fresh = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)
    assert kms_call_counts() == {"local:DescribeKey": 1}  # a new run finds every file current
    assert fresh.files == 0 and dataset.file_digests() == digests


def test_reencrypt_after_rewrap_prunes_the_manifest_and_survives_destroying_old_versions(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    kms.disable_key_version("alias/pii", 1)  # the old wraps in the footers are now dead

    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)

    assert summary.files == 4  # footers were still behind: rewrap does not touch them
    assert summary.details["manifest_entries_pruned"] == 5
    assert not (dataset.root / DATASET_MANIFEST_NAME).exists()
    kms.destroy_key_version("alias/pii", 1)
    assert dataset.decrypted().equals(dataset.expected)


def test_reencrypt_to_another_key_then_the_old_key_can_be_disabled(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    new_key = kms.create_key(alias="alias/pii-2026")
    summary = reencrypt_dataset(dataset.root, key_uri="local://alias/pii-2026", kms_options=dataset.kms_options)
    assert list(summary.key_versions) == [new_key]
    kms.disable_key("alias/pii")
    assert dataset.decrypted().equals(dataset.expected)
    assert {e.key_uri for e in read_dataset_key_table(dataset.root).deks.values()} == {"local://alias/pii-2026"}


def test_force_reencrypts_current_files(dataset):
    deks_before = _dek_ids(dataset)
    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, force=True)
    assert summary.files == 4 and not _dek_ids(dataset) & deks_before
    assert dataset.decrypted().equals(dataset.expected)


def test_reencrypt_failure_leaves_every_file_readable_and_records_the_error(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    kms.disable_key_version("alias/pii", 1)  # no rewrap first: the old DEKs cannot be unwrapped
    with pytest.raises(KeyStateError) as err:
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="bad")
    assert "data key" in str(err.value)
    record = json.loads((dataset.root / "_spark_kms_runs" / "bad.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("KeyStateError")
    kms.enable_key_version("alias/pii", 1)
    assert dataset.decrypted().equals(dataset.expected)
    assert not list(dataset.root.rglob(".*.reencrypt"))


def test_reencrypt_refuses_a_resume_with_another_target(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    kms.create_key(alias="alias/other")
    journal_path(dataset.root, "r").parent.mkdir(exist_ok=True)
    journal_path(dataset.root, "r").write_text(json.dumps({
        "job": "reencrypt", "run_id": "r", "status": "running", "target_key_uri": "local://alias/pii",
        "deterministic_entry": None, "files": {}}))
    with pytest.raises(ConfigurationError, match="finish it first"):
        reencrypt_dataset(dataset.root, key_uri="local://alias/other", kms_options=dataset.kms_options)


def test_gcm_only_dataset_reencrypts_only_the_files_behind(tmp_path, local_kms):
    from spark_kms.kms import provider_from_uri
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

    provider = provider_from_uri(local_kms.key_uri, **local_kms.kms_options["local"])
    kms = LocalKms(local_kms.keystore_dir)
    root = tmp_path / "ds"
    root.mkdir()
    import pyarrow as pa

    for i in range(3):
        if i == 2:
            kms.rotate_key("alias/pii")  # the last file is written under version 2 already
        t = pa.table({"id": [i], "email": [f"e{i}"]})
        with EncryptedParquetWriter(root / f"part-{i}.parquet", t.schema, EncryptionSpec(columns=["email"]),
                                    provider) as w:
            w.write_batch(t)
    current = read_key_table(root / "part-2.parquet").deks
    summary = reencrypt_dataset(root, kms_options=local_kms.kms_options)
    assert summary.files == 2 and summary.details["files_planned"] == 2
    assert read_key_table(root / "part-2.parquet").deks == current
    assert {e.algorithm for e in read_dataset_key_table(root).deks.values()} == {AES_256_GCM}
