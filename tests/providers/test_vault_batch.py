"""Vault Transit batch rewrap (``batch_input``) over the wire: hvac -> the project's Vault test server."""

from __future__ import annotations

from collections.abc import Iterator

import hvac
import pytest

from spark_kms.errors import InvalidCiphertextError, KmsError
from spark_kms.kms import WrappedKey, kms_call_counts, reset_kms_call_counts
from spark_kms.kms.vault import VaultTransitProvider
from spark_kms.testing.vault import VaultTransitHarness


@pytest.fixture(scope="module", params=[False, True], ids=["tagged", "derived"])
def harness(request: pytest.FixtureRequest) -> Iterator[VaultTransitHarness]:
    h = VaultTransitHarness(key_name=f"batch-{request.param}", derived=request.param)
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _provider(h: VaultTransitHarness, **options: object) -> VaultTransitProvider:
    p = h.provider()
    assert isinstance(p, VaultTransitProvider)
    return VaultTransitProvider(p.key_uri, **{**p.options, **options})


def _rewrap_requests(h: VaultTransitHarness) -> int:
    return sum(1 for method, path in h.server.requests if path.startswith("/v1/transit/rewrap/"))


def test_batch_rewrap_keeps_order_and_contexts_in_few_requests(harness: VaultTransitHarness) -> None:
    provider = _provider(harness, batch_size=4)
    contexts = [{"dataset": "customers", "n": str(i)} for i in range(10)]
    keys = [provider.generate_data_key(ctx) for ctx in contexts]
    harness.rotate()
    latest = provider.describe_key().primary_version
    before = _rewrap_requests(harness)
    reset_kms_call_counts()
    seen: list[int] = []

    rewrapped = provider.reencrypt_many([(k.wrapped, ctx) for k, ctx in zip(keys, contexts, strict=True)],
                                        concurrency=2, on_result=lambda i, _w: seen.append(i))

    assert _rewrap_requests(harness) - before == 3  # 10 items in batches of 4
    assert kms_call_counts()["vault:ReEncrypt"] == 10  # still counted per data key
    assert sorted(seen) == list(range(10))
    assert {w.key_version for w in rewrapped} == {latest}
    for key, ctx, new in zip(keys, contexts, rewrapped, strict=True):
        assert new.ciphertext != key.wrapped.ciphertext
        assert provider.decrypt_data_key(new, ctx) == key.plaintext  # item i is item i's key
    # A wrap moved to another context does not open: the binding survived the batch.
    with pytest.raises(InvalidCiphertextError):
        provider.decrypt_data_key(rewrapped[0], contexts[1])


def test_batch_rewrap_item_error_is_raised_after_the_items_before_it(harness: VaultTransitHarness) -> None:
    provider = _provider(harness, batch_size=8)
    ctx = {"dataset": "customers"}
    keys = [provider.generate_data_key(ctx) for _ in range(5)]
    items = [(k.wrapped, ctx) for k in keys]
    # Item 3: a ciphertext Vault cannot open (its body altered), the rest fine.
    bad = bytearray(keys[3].wrapped.ciphertext)
    prefix = bad.index(b":", len(b"vault:v")) + 1
    bad[prefix + 5] = ord("A") if bad[prefix + 5] != ord("A") else ord("B")
    items[3] = (WrappedKey(bytes(bad), keys[3].wrapped.key_id, keys[3].wrapped.key_version), ctx)
    delivered: list[int] = []

    with pytest.raises(KmsError) as info:
        provider.reencrypt_many(items, concurrency=1, on_result=lambda i, _w: delivered.append(i))

    assert "item 3 of a batch rewrap" in str(info.value)
    assert info.value.key_id == provider.key_id and info.value.operation == "ReEncrypt"
    assert delivered == [0, 1, 2]
    for secret in (k.plaintext for k in keys):
        assert bytes(secret).hex() not in str(info.value)


def test_server_answers_batch_items_as_vault_does(harness: VaultTransitHarness) -> None:
    """The wire format itself, through hvac: ``data.batch_results`` in input order, a per-item
    ``error`` and HTTP 400 when an item failed; ``partial_failure_response_code`` overrides it."""
    client = hvac.Client(url=f"http://{harness.server.address}", token=harness.server.root_token)
    transit = client.secrets.transit
    name = harness.key_name
    context = "Y3R4" if harness.derived else None  # base64 of "ctx"
    sealed = [transit.encrypt_data(name=name, plaintext="aGVsbG8=", context=context)["data"]["ciphertext"]
              for _ in range(2)]
    items = [{"ciphertext": c, **({"context": context} if context else {}), "reference": f"r{i}"}
             for i, c in enumerate(sealed)]
    ok = transit.decrypt_data(name=name, batch_input=items)["data"]["batch_results"]
    assert [r["plaintext"] for r in ok] == ["aGVsbG8=", "aGVsbG8="]
    assert [r["reference"] for r in ok] == ["r0", "r1"]

    with pytest.raises(hvac.exceptions.InvalidRequest) as info:
        transit.rewrap_data(name=name, ciphertext=None, batch_input=[items[0], {"ciphertext": "vault:v1:AAAA"}])
    results = info.value.json["data"]["batch_results"]
    assert results[0]["ciphertext"].startswith("vault:v") and "error" not in results[0]
    assert "invalid ciphertext" in results[1]["error"]

    status, body = harness.server.handle(
        "POST", f"/v1/transit/rewrap/{name}", {"X-Vault-Token": harness.server.root_token},
        {"batch_input": [items[0], {"ciphertext": "nope"}], "partial_failure_response_code": 207})
    assert status == 207 and "error" in body["data"]["batch_results"][1]


def test_batch_rewrap_retries_429(harness: VaultTransitHarness) -> None:
    provider = _provider(harness, batch_size=3)
    ctx = {"dataset": "customers"}
    keys = [provider.generate_data_key(ctx) for _ in range(6)]
    harness.throttle(1, 2)
    try:
        rewrapped = provider.reencrypt_many([(k.wrapped, ctx) for k in keys], concurrency=2)
        assert harness.throttled_requests() >= 1
    finally:
        harness.throttle(0, 1)
    assert [provider.decrypt_data_key(w, ctx) for w in rewrapped] == [k.plaintext for k in keys]


def test_rewrap_dataset_on_vault_sends_batches(tmp_path, harness: VaultTransitHarness) -> None:
    import pyarrow as pa

    from spark_kms.jobs import rewrap_dataset
    from spark_kms.kms import process_dek_cache
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table

    provider = _provider(harness)
    options = {"vault": {**provider.options, "batch_size": 5}}
    root = tmp_path / "vault-ds"
    root.mkdir()
    n_files = 12
    for i in range(n_files):
        t = pa.table({"id": [i], "email": [f"u{i}@example.com"]})
        with EncryptedParquetWriter(root / f"part-{i:02d}.parquet", t.schema, EncryptionSpec(columns=["email"]),
                                    provider, encryption_context={"file": str(i)}) as w:
            w.write_batch(t)
    harness.rotate()
    latest = provider.describe_key().primary_version
    before = _rewrap_requests(harness)

    summary = rewrap_dataset(root, kms_options=options, kms_concurrency=2)

    assert summary.deks == n_files and summary.kms_calls["vault:ReEncrypt"] == n_files
    assert _rewrap_requests(harness) - before == 3  # 12 data keys, batches of 5: one request each
    assert summary.key_versions == {provider.key_id: [latest]}
    process_dek_cache().clear()
    back = read_decrypted_table(str(root), kms_options=options).sort_by("id")
    assert back.column("email").to_pylist() == [f"u{i}@example.com" for i in range(n_files)]
