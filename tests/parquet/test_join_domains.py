"""Join-domain keys: made once, reused by every later writer and by every dataset of a named domain."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from spark_kms.crypto import AES_256_SIV
from spark_kms.errors import AccessDeniedError, ConfigurationError
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.kms.local import LocalKms, resolve_principal
from spark_kms.parquet.join_domains import (
    DOMAIN_CONTEXT_KEY,
    DOMAIN_STORE_ENV,
    JOIN_KEYS_NAME,
    domain_key,
    read_join_keys,
)


def test_the_dataset_domain_key_is_made_once_and_reused(tmp_path: Path, local_kms) -> None:
    root = tmp_path / "customers"
    reset_kms_call_counts()
    first = domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options)
    assert first.algorithm == AES_256_SIV
    assert first.encryption_context == {DOMAIN_CONTEXT_KEY: "dataset"}
    assert kms_call_counts() == {"local:GenerateDataKey": 1, "local:Decrypt": 1}
    again = domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options)
    assert again == first
    assert kms_call_counts()["local:GenerateDataKey"] == 1  # reused: no new key
    assert read_join_keys(root) == {"dataset": first}
    assert (root / JOIN_KEYS_NAME).exists()


def test_a_named_domain_is_shared_through_its_store(tmp_path: Path, local_kms, monkeypatch) -> None:
    store = tmp_path / "domains"
    a = domain_key(tmp_path / "orders", key_uri=local_kms.key_uri, kms_options=local_kms.kms_options,
                   domain="customers", store=store)
    b = domain_key(tmp_path / "customers", key_uri=local_kms.key_uri, kms_options=local_kms.kms_options,
                   domain="customers", store=store)
    assert a == b and a.encryption_context == {DOMAIN_CONTEXT_KEY: "customers"}
    assert (store / "customers.json").exists()
    assert read_join_keys(tmp_path / "orders") == {"customers": a}  # each dataset records its domains
    monkeypatch.setenv(DOMAIN_STORE_ENV, str(store))
    assert domain_key(tmp_path / "third", key_uri=local_kms.key_uri, kms_options=local_kms.kms_options,
                      domain="customers") == a
    with pytest.raises(ConfigurationError, match="join domain name"):
        domain_key(tmp_path / "x", key_uri=local_kms.key_uri, kms_options=local_kms.kms_options, domain="../etc")


def test_a_named_domain_without_a_store_is_refused(tmp_path: Path, local_kms, monkeypatch) -> None:
    monkeypatch.delenv(DOMAIN_STORE_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=r"join_domain_store=<directory>"):
        domain_key(tmp_path / "d", key_uri=local_kms.key_uri, kms_options=local_kms.kms_options, domain="shared")


def test_racing_first_writers_agree_on_one_key(tmp_path: Path, local_kms) -> None:
    root = tmp_path / "race"
    results: list[object] = []

    def write() -> None:
        results.append(domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options))

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({e.dek_id for e in results}) == 1  # type: ignore[attr-defined]


def test_rotation_makes_a_new_current_key_and_keeps_the_old_one(tmp_path: Path, local_kms) -> None:
    root = tmp_path / "customers"
    old = domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options)
    new = domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options, rotate=True)
    assert new.dek_id != old.dek_id
    assert domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options) == new
    import json

    history = json.loads((root / JOIN_KEYS_NAME).read_text())["domains"]["dataset"]["history"]
    assert [h["dek_id"] for h in history] == [old.dek_id]


def test_a_writer_that_cannot_unwrap_the_domain_key_gets_a_clear_error(tmp_path: Path, local_kms) -> None:
    root = tmp_path / "customers"
    entry = domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options)
    kms = LocalKms(local_kms.keystore_dir)
    kms.put_key_policy("alias/pii", {"etl-writer": ["encrypt"], resolve_principal(): ["admin", "encrypt", "decrypt"]})
    writer = {"local": {"keystore": str(local_kms.keystore_dir), "principal": "etl-writer"}}
    from spark_kms.kms import process_dek_cache

    process_dek_cache().clear()
    with pytest.raises(AccessDeniedError) as exc:
        domain_key(root, key_uri=local_kms.key_uri, kms_options=writer)
    text = str(exc.value)
    assert "join domain 'dataset'" in text and "needs Decrypt" in text and entry.key_id in text


def test_a_domain_key_planted_under_another_key_is_not_adopted(tmp_path: Path, local_kms) -> None:
    # Someone who can write to storage and holds a key of their own plants the dataset's domain key.
    LocalKms(local_kms.keystore_dir).create_key(alias="alias/mallory")
    root = tmp_path / "customers"
    domain_key(root, key_uri="local://alias/mallory", kms_options=local_kms.kms_options)
    with pytest.raises(ConfigurationError, match=r"wrapped under local://alias/mallory, not under this writer's key"):
        domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options)
    moved = domain_key(root, key_uri=local_kms.key_uri, kms_options=local_kms.kms_options, rotate=True)
    assert moved.key_uri == local_kms.key_uri
