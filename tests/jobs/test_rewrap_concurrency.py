"""Rewrap with many KMS requests in flight (``kms_concurrency``): same result as one at a time, one
KMS call per data key, throttling retried, a hard failure keeps the manifest whole, the limit holds
(measured on the server side)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from spark_kms.crypto import DATASET_MANIFEST_NAME, decode_manifest
from spark_kms.errors import ConfigurationError, KeyStateError
from spark_kms.jobs import inspect_dataset, reencrypt_dataset, rewrap_dataset
from spark_kms.kms import KmsConfig, WrappedKey, process_dek_cache
from spark_kms.kms.local import AUDIT_FILE, LocalKms
from spark_kms.kms.local._audit import read_events
from spark_kms.kms.retry import RetryPolicy
from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table
from spark_kms.testing.faults import LOCAL_KMS_FAULTS, set_throttle, throttled_requests

SPEC = EncryptionSpec(columns=["email"])
N_FILES = 24


def _table(i: int) -> pa.Table:
    return pa.table({"id": pa.array([2 * i, 2 * i + 1], pa.int64()),
                     "email": pa.array([f"user{2 * i}@example.com", None], pa.string())})


def many_files(root: Path, key_uris: list[str], kms_options: dict[str, Any], n: int = N_FILES) -> pa.Table:
    """``n`` one-DEK files, file ``i`` under ``key_uris[i % len(key_uris)]``; the plaintext, sorted by id."""
    kms = KmsConfig.of(kms_options)
    for i in range(n):
        path = root / f"part-{i:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with EncryptedParquetWriter(path, _table(i).schema, SPEC, kms.provider(key_uris[i % len(key_uris)]),
                                    encryption_context={"dataset": "many", "file": str(i)},
                                    kms_options=kms_options) as w:
            w.write_batch(_table(i))
    return pa.concat_tables([_table(i) for i in range(n)]).sort_by("id")


def read_back(root: Path, kms_options: dict[str, Any]) -> pa.Table:
    process_dek_cache().clear()
    return read_decrypted_table(str(root), kms_options=kms_options).select(["id", "email"]).sort_by("id")


def manifest_of(root: Path) -> dict[str, Any]:
    return decode_manifest((root / DATASET_MANIFEST_NAME).read_bytes())


@pytest.fixture
def two_copies(tmp_path: Path, local_kms: Any) -> tuple[Path, Path, pa.Table]:
    a = tmp_path / "a"
    expected = many_files(a, [local_kms.key_uri], local_kms.kms_options)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    return a, b, expected


def test_concurrent_rewrap_writes_the_same_manifest_entries_as_sequential(two_copies, local_kms):
    a, b, expected = two_copies
    seq = rewrap_dataset(a, kms_options=local_kms.kms_options, kms_concurrency=1)
    par = rewrap_dataset(b, kms_options=local_kms.kms_options, kms_concurrency=8)

    assert (seq.deks, seq.files, seq.rows) == (par.deks, par.files, par.rows) == (N_FILES, N_FILES, 2 * N_FILES)
    assert seq.key_versions == par.key_versions == {next(iter(seq.key_versions)): ["2"]}
    ma, mb = manifest_of(a), manifest_of(b)
    assert list(ma) == list(mb) and len(ma) == N_FILES
    provider = KmsConfig.of(local_kms.kms_options).provider(local_kms.key_uri)
    for dek_id in ma:
        ea, eb = ma[dek_id], mb[dek_id]
        # Everything but the wrapped bytes (the KMS's random nonce) is equal, entry by entry ...
        assert {**ea.to_dict(), "wrapped_dek": ""} == {**eb.to_dict(), "wrapped_dek": ""}
        # ... and the two wraps hold the same data key.
        assert provider.decrypt_data_key(WrappedKey(ea.wrapped_dek, ea.key_id, ea.key_version),
                                         ea.encryption_context) == \
            provider.decrypt_data_key(WrappedKey(eb.wrapped_dek, eb.key_id, eb.key_version), eb.encryption_context)
    assert read_back(a, local_kms.kms_options).equals(expected)
    assert read_back(b, local_kms.kms_options).equals(expected)


def test_concurrent_rewrap_makes_one_reencrypt_per_data_key_in_the_kms_audit_log(two_copies, local_kms):
    _, b, _ = two_copies
    summary = rewrap_dataset(b, kms_options=local_kms.kms_options, kms_concurrency=8, run_id="conc-1")

    events = [e for e in read_events(local_kms.keystore_dir / AUDIT_FILE) if e.get("request_tag") == "conc-1"]
    reencrypts = [e for e in events if e["operation"] == "ReEncrypt"]
    assert len(reencrypts) == N_FILES and all(e["outcome"] == "ok" for e in reencrypts)
    assert summary.kms_calls == {"local:DescribeKey": 1, "local:ReEncrypt": N_FILES}
    # A second run finds nothing to do: no ReEncrypt at all.
    again = rewrap_dataset(b, kms_options=local_kms.kms_options, kms_concurrency=8)
    assert again.deks == 0 and "local:ReEncrypt" not in again.kms_calls


def test_throttled_local_kms_is_retried_and_the_concurrent_rewrap_succeeds(two_copies, local_kms):
    _, b, expected = two_copies
    keystore = local_kms.keystore_dir
    set_throttle(keystore, 1, 3)  # every third data-plane call of every thread is throttled
    faulty = {"local": {**local_kms.kms_options["local"], "request_interceptor": LOCAL_KMS_FAULTS,
                        "_retry": RetryPolicy(max_attempts=6, base_delay=0.001, max_delay=0.01, deadline=10.0)}}
    try:
        summary = rewrap_dataset(b, kms_options=faulty, kms_concurrency=8, run_id="throttled")
        throttled = throttled_requests(keystore)
    finally:
        set_throttle(keystore, 0, 1)

    assert summary.ok and summary.deks == N_FILES and throttled >= N_FILES // 3
    events = [e for e in read_events(keystore / AUDIT_FILE) if e.get("request_tag") == "throttled"]
    ok = [e for e in events if e["operation"] == "ReEncrypt" and e["outcome"] == "ok"]
    assert len(ok) == N_FILES  # still one successful ReEncrypt per data key
    assert sum(1 for e in events if e["outcome"] != "ok") == throttled
    assert inspect_dataset(b, kms_options=local_kms.kms_options).behind_files == []
    assert read_back(b, local_kms.kms_options).equals(expected)


def test_hard_failure_midway_keeps_the_manifest_whole_and_names_the_key(tmp_path, local_kms):
    admin = LocalKms(local_kms.keystore_dir)
    admin.create_key(alias="alias/other")
    root = tmp_path / "mixed"
    uris = [local_kms.key_uri] * 3 + ["local://alias/other"]  # every 4th file under the other key
    expected = many_files(root, uris, local_kms.kms_options)
    admin.rotate_key("alias/pii")
    admin.rotate_key("alias/other")
    rewrap_dataset(root, kms_options=local_kms.kms_options, kms_concurrency=4)  # a previous manifest
    previous = manifest_of(root)
    assert len(previous) == N_FILES
    admin.rotate_key("alias/pii")
    admin.rotate_key("alias/other")
    admin.disable_key("alias/other")
    plaintexts = _plaintext_deks(previous, local_kms.kms_options, skip_key="alias/other")

    with pytest.raises(KeyStateError) as info:
        rewrap_dataset(root, kms_options=local_kms.kms_options, kms_concurrency=4, run_id="hard")

    message = str(info.value)
    other_id = admin.describe_key("alias/other").key_id
    assert other_id in message or "alias/other" in message
    for entry in previous.values():
        assert base64.b64encode(entry.wrapped_dek).decode() not in message
    for dek in plaintexts:
        assert dek.hex() not in message and base64.b64encode(dek).decode() not in message
    record = json.loads((root / "_spark_kms_runs" / "hard.json").read_text())
    assert record["status"] == "failed" and "KeyStateError" in record["error"]
    after = manifest_of(root)  # parses: written whole
    assert set(after) == set(previous)
    moved = [d for d in after if after[d].key_version != previous[d].key_version]
    assert all(after[d].key_uri == local_kms.key_uri for d in moved)  # only DEKs of the working key moved
    admin.enable_key("alias/other")
    assert read_back(root, local_kms.kms_options).equals(expected)
    rest = rewrap_dataset(root, kms_options=local_kms.kms_options, kms_concurrency=4)
    assert rest.deks == N_FILES - len(moved)


def _plaintext_deks(manifest: dict[str, Any], kms_options: dict[str, Any], skip_key: str) -> list[bytes]:
    kms = KmsConfig.of(kms_options)
    return [bytes(kms.provider(e.key_uri).decrypt_data_key(WrappedKey(e.wrapped_dek, e.key_id, e.key_version),
                                                           e.encryption_context))
            for e in manifest.values() if not e.key_uri.endswith(skip_key)]


@pytest.mark.parametrize("bad", [0, -1, 1000, "many", 2.5, True])
def test_kms_concurrency_must_be_a_sensible_integer(dataset, bad):
    with pytest.raises(ConfigurationError, match="kms_concurrency"):
        rewrap_dataset(dataset.root, kms_options=dataset.kms_options, kms_concurrency=bad)


def test_reencrypt_unwraps_ahead_concurrently_one_decrypt_per_old_key(two_copies, local_kms):
    _, b, expected = two_copies
    summary = reencrypt_dataset(b, kms_options=local_kms.kms_options, kms_concurrency=8, run_id="re-conc")

    assert summary.files == N_FILES
    assert summary.kms_calls["local:Decrypt"] == N_FILES  # each old data key once (the prefetch fed the cache)
    assert summary.kms_calls["local:GenerateDataKey"] == N_FILES
    assert read_back(b, local_kms.kms_options).equals(expected)


def test_cli_rewrap_takes_kms_concurrency(two_copies, local_kms):
    from click.testing import CliRunner

    from spark_kms.cli import cli

    _, b, expected = two_copies
    ks = str(local_kms.keystore_dir)
    result = CliRunner().invoke(cli, ["rewrap", str(b), "--keystore", ks, "--json", "--kms-concurrency", "4"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kms_calls"]["local:ReEncrypt"] == N_FILES
    bad = CliRunner().invoke(cli, ["rewrap", str(b), "--keystore", ks, "--kms-concurrency", "0"])
    assert bad.exit_code == 2 and "--kms-concurrency" in bad.output
    assert read_back(b, local_kms.kms_options).equals(expected)


# -- AWS over HTTP: the limit, seen by the server -----------------------------------------------------

@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    from spark_kms.testing.aws import AwsKmsHarness

    h = AwsKmsHarness(max_attempts=8)
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.mark.parametrize("limit", [1, 3, 8])
def test_requests_in_flight_at_the_kms_never_exceed_the_limit(tmp_path, aws, limit):
    options = {"aws-kms": aws._options()}
    root = tmp_path / "aws"
    expected = many_files(root, [f"aws-kms://{aws.key_arn}"], options)
    aws.rotate()
    state = aws.proxy.state
    with state.lock:
        state.max_in_flight = 0
        reencrypts = state.requests_by_operation["ReEncrypt"]

    summary = rewrap_dataset(root, kms_options=options, kms_concurrency=limit)

    with state.lock:
        peak = state.max_in_flight
        calls = state.requests_by_operation["ReEncrypt"] - reencrypts
    assert summary.deks == N_FILES and calls == N_FILES  # one ReEncrypt request per data key
    assert peak <= limit
    if limit > 1:
        assert peak >= 2  # and the requests really did overlap
    assert read_back(root, options).equals(expected)


def test_throttled_aws_kms_is_retried_by_botocore_and_the_rewrap_succeeds(tmp_path, aws):
    options = {"aws-kms": aws._options()}
    root = tmp_path / "aws-throttled"
    expected = many_files(root, [f"aws-kms://{aws.key_arn}"], options)
    aws.rotate()
    aws.throttle(1, 4)
    try:
        summary = rewrap_dataset(root, kms_options=options, kms_concurrency=8)
        throttled = aws.throttled_requests()
    finally:
        aws.throttle(0, 1)
    assert summary.ok and summary.deks == N_FILES and throttled >= N_FILES // 4
    assert inspect_dataset(root, kms_options=options).behind_files == []
    assert read_back(root, options).equals(expected)
