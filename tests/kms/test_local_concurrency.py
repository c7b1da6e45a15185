"""Several processes share one keystore: 4 x 200 GenerateDataKey while another process
rotates the key 20 times. Nothing is lost, torn or unreadable afterwards."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter

from spark_kms.kms.local import LocalKms, LocalKmsProvider

WORKERS = 4
CALLS = 200
ROTATIONS = 20
CTX = {"dataset": "concurrency"}


def _generate(keystore: str, root_key: bytes, worker: int, out: str, barrier) -> None:
    provider = LocalKmsProvider("local://alias/pii", keystore=keystore, root_key=root_key,
                                principal=f"worker-{worker}")
    barrier.wait()
    with open(out, "w") as fh:
        for _ in range(CALLS):
            dk = provider.generate_data_key(CTX)
            # test-only temp file: the parent checks each plaintext against the KMS's unwrap
            fh.write(json.dumps([dk.plaintext.hex(), dk.wrapped.ciphertext.hex(), dk.wrapped.key_version]) + "\n")


def _rotate(keystore: str, root_key: bytes, barrier) -> None:
    import time

    kms = LocalKms(keystore, principal="rotator", root_key=root_key)
    barrier.wait()
    for _ in range(ROTATIONS):
        kms.rotate_key("alias/pii")
        time.sleep(0.01)  # spread rotations over the generating window


def test_concurrent_generate_and_rotate(tmp_path, root_key):
    keystore = tmp_path / "ks"
    kms = LocalKms(keystore, principal="admin", root_key=root_key)
    key_id = kms.create_key(alias="alias/pii")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WORKERS + 1)
    outs = [str(tmp_path / f"worker-{i}.jsonl") for i in range(WORKERS)]
    procs = [ctx.Process(target=_generate, args=(str(keystore), root_key, i, outs[i], barrier))
             for i in range(WORKERS)]
    procs.append(ctx.Process(target=_rotate, args=(str(keystore), root_key, barrier)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0

    # the keystore loads and holds versions 1..21
    desc = LocalKms(keystore, principal="admin", root_key=root_key).describe_key(key_id)
    assert list(desc.versions) == [str(v) for v in range(1, ROTATIONS + 2)]
    assert desc.primary_version == str(ROTATIONS + 1)

    # exactly one audit line per call made, none torn
    events = kms.audit_events()
    ops = Counter(e["operation"] for e in events)
    assert ops["GenerateDataKey"] == WORKERS * CALLS
    assert ops["RotateKey"] == ROTATIONS
    assert ops["CreateKey"] == 1
    assert all(e["outcome"] == "ok" for e in events)
    assert Counter(e["principal"] for e in events if e["operation"] == "GenerateDataKey") == {
        f"worker-{i}": CALLS for i in range(WORKERS)}

    # every wrapped DEK unwraps to its plaintext; a process never goes back to an older version
    seen = 0
    used: set[int] = set()
    for out in outs:
        rows = [json.loads(line) for line in open(out)]
        assert len(rows) == CALLS
        versions = [int(v) for _, _, v in rows]
        assert versions == sorted(versions) and set(versions) <= set(range(1, ROTATIONS + 2))
        used |= set(versions)
        for plaintext_hex, blob_hex, _ in rows:
            assert kms.decrypt(bytes.fromhex(blob_hex), CTX).hex() == plaintext_hex
            seen += 1
    assert seen == WORKERS * CALLS
    assert len(used) > 1  # the rotations really raced the generators
    assert Counter(e["operation"] for e in kms.audit_events())["Decrypt"] == WORKERS * CALLS
