"""Rewrap on the embedded KMS: cells untouched, one ReEncrypt per DEK, manifest, resume, idempotence."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spark_kms.crypto import DATASET_MANIFEST_NAME, decode_manifest
from spark_kms.errors import KeyStateError, KmsUnavailableError
from spark_kms.jobs import inspect_dataset, rewrap_dataset
from spark_kms.kms import kms_call_counts, process_dek_cache, reset_kms_call_counts
from spark_kms.kms.local import LocalKms, LocalKmsProvider
from spark_kms.parquet import read_dataset_key_table, read_decrypted_table, read_key_table

N_DEKS = 5  # one AES-GCM DEK per file (4 files) + the dataset's AES-SIV DEK


def test_rewrap_leaves_every_cell_and_file_untouched_and_calls_reencrypt_once_per_dek(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    cells_before, files_before = dataset.cell_bytes(), dataset.file_digests()
    audit_before = len(kms.audit_events())

    summary = rewrap_dataset(dataset.root, kms_options=dataset.kms_options)

    assert dataset.cell_bytes() == cells_before
    assert dataset.file_digests() == files_before  # footers are not rewritten either
    assert summary.kms_calls == {"local:DescribeKey": 1, "local:ReEncrypt": N_DEKS}
    assert summary.deks == N_DEKS and summary.files == 4 and summary.status == "succeeded"
    new_events = kms.audit_events()[audit_before:]
    assert [e["operation"] for e in new_events].count("ReEncrypt") == N_DEKS
    assert all(e["outcome"] == "ok" for e in new_events)
    # The run id reaches the KMS audit log although a rewrap cannot change the DEKs' context.
    assert {e.get("request_tag") for e in new_events} == {summary.run_id}
    (key_id,) = summary.key_versions
    assert summary.key_versions_before == {key_id: ["1"]} and summary.key_versions == {key_id: ["2"]}

    manifest = decode_manifest((dataset.root / DATASET_MANIFEST_NAME).read_bytes())
    footer_deks = read_dataset_key_table(dataset.root).deks
    assert set(manifest) == set(footer_deks) and len(manifest) == N_DEKS
    for f in dataset.files():  # footer copies keep the old wrap
        assert {e.key_version for e in read_key_table(f).deks.values()} == {"1"}
    assert {e.key_version for e in footer_deks.values()} == {"2"}  # the manifest takes precedence
    assert dataset.decrypted().equals(dataset.expected)

    record = json.loads((dataset.root / "_spark_kms_runs" / f"{summary.run_id}.json").read_text())
    assert record == summary.to_dict()


def test_rewrap_rerun_after_success_makes_no_reencrypt_call(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    manifest_bytes = (dataset.root / DATASET_MANIFEST_NAME).read_bytes()
    reset_kms_call_counts()

    again = rewrap_dataset(dataset.root, kms_options=dataset.kms_options)

    assert kms_call_counts() == {"local:DescribeKey": 1}
    assert again.deks == 0 and again.details["deks_skipped"] == N_DEKS
    assert (dataset.root / DATASET_MANIFEST_NAME).read_bytes() == manifest_bytes


def test_rewrap_without_rotation_is_a_no_op(dataset):
    summary = rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    assert summary.kms_calls == {"local:DescribeKey": 1}
    assert not (dataset.root / DATASET_MANIFEST_NAME).exists()


@pytest.mark.parametrize("retire", ["disable", "destroy"])
def test_old_version_retired_after_rewrap_dataset_still_reads(dataset, local_kms, retire: str):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    getattr(kms, f"{retire}_key_version")("alias/pii", 1)

    assert dataset.decrypted().equals(dataset.expected)
    # The footer copies are what the retired version still wraps: without the manifest they fail.
    (dataset.root / DATASET_MANIFEST_NAME).rename(dataset.root.parent / "manifest.bak")
    with pytest.raises(KeyStateError):
        dataset.decrypted()


def test_a_partition_or_a_single_file_of_a_rewrapped_dataset_uses_the_manifest(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    kms.disable_key_version("alias/pii", 1)  # only the manifest's wrapping still opens the data keys
    process_dek_cache().clear()

    partition = dataset.root / "date=2024-01-01"
    single = partition / "part-1.parquet"
    expected = dataset.expected.filter(pc.is_in(dataset.expected["id"], pa.array(range(0, 80))))
    got = read_decrypted_table(partition, kms_options=dataset.kms_options).select(["id", "email", "ssn", "amount"])
    assert got.sort_by("id").equals(expected)
    assert read_decrypted_table(single, kms_options=dataset.kms_options).num_rows == 40
    assert {e.key_version for e in read_dataset_key_table(partition).deks.values()} == {"2"}
    assert {e.key_version for e in read_dataset_key_table(single).deks.values()} == {"2"}
    assert inspect_dataset(dataset.root, kms_options=dataset.kms_options).behind_files == []


def test_rewrap_to_another_key_then_disabling_the_old_key_keeps_the_dataset_readable(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    new_key = kms.create_key(alias="alias/pii-2026")
    summary = rewrap_dataset(dataset.root, key_uri="local://alias/pii-2026", kms_options=dataset.kms_options)
    assert summary.kms_calls["local:ReEncrypt"] == N_DEKS
    assert list(summary.key_versions) == [new_key]
    kms.disable_key("alias/pii")

    assert dataset.decrypted().equals(dataset.expected)
    table = read_dataset_key_table(dataset.root)
    assert {e.key_uri for e in table.deks.values()} == {"local://alias/pii-2026"}


def test_killed_rewrap_keeps_its_progress_and_the_rerun_finishes_the_rest(dataset, local_kms, monkeypatch):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    real = LocalKmsProvider._reencrypt
    calls = {"n": 0}

    def failing_after_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KmsUnavailableError("keystore unreachable (test)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LocalKmsProvider, "_reencrypt", failing_after_two)
    with pytest.raises(KmsUnavailableError):
        rewrap_dataset(dataset.root, kms_options=dataset.kms_options, flush_every=1, run_id="r1")
    monkeypatch.undo()

    failed = json.loads((dataset.root / "_spark_kms_runs" / "r1.json").read_text())
    assert failed["status"] == "failed" and "KmsUnavailableError" in failed["error"]
    assert len(decode_manifest((dataset.root / DATASET_MANIFEST_NAME).read_bytes())) == 2
    assert dataset.decrypted().equals(dataset.expected)  # half rewrapped is fully readable
    reset_kms_call_counts()

    rest = rewrap_dataset(dataset.root, kms_options=dataset.kms_options)

    assert kms_call_counts()["local:ReEncrypt"] == N_DEKS - 2
    assert rest.details["deks_skipped"] == 2
    assert inspect_dataset(dataset.root, kms_options=dataset.kms_options).behind_files == []


def test_rewrap_prunes_manifest_entries_of_deleted_files(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    gone = dataset.files()[0]
    gone_dek = [d for d, e in read_key_table(gone).deks.items() if e.algorithm.startswith("AES_256_GCM")]
    os.remove(gone)
    summary = rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    manifest = decode_manifest((dataset.root / DATASET_MANIFEST_NAME).read_bytes())
    assert summary.details["manifest_entries_pruned"] == 1
    assert not set(gone_dek) & set(manifest) and len(manifest) == N_DEKS - 1
    process_dek_cache().clear()
