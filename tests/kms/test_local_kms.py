"""The embedded local KMS: operations, rotation, key states, policies, bad input, secrets."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import uuid

import pytest

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyNotFoundError,
    KeyStateError,
    KeystoreError,
    ThrottlingError,
)
from spark_kms.kms import provider_from_uri
from spark_kms.kms.base import WrappedKey
from spark_kms.kms.local import LocalKms, LocalKmsProvider
from spark_kms.testing.local_harness import LocalKmsHarness

CTX = {"dataset": "customers", "run_id": "r1"}


def provider(keystore, root_key, uri="local://alias/pii", **options):
    return provider_from_uri(uri, keystore=str(keystore), root_key=root_key, **options)


# -- round trips ---------------------------------------------------------------------------------
def test_generate_data_key_round_trip_through_provider(kms, key_id, keystore, root_key):
    p = provider(keystore, root_key)
    assert isinstance(p, LocalKmsProvider)
    dk = p.generate_data_key(CTX)
    assert len(dk.plaintext) == 32
    assert dk.wrapped.key_id == key_id and dk.wrapped.key_version == "1"
    assert p.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
    # the blob names its key: decrypt needs no hint, and a key-id URI works as well as an alias
    assert kms.decrypt(dk.wrapped.ciphertext, CTX) == dk.plaintext
    assert provider(keystore, root_key, f"local://{key_id}").decrypt_data_key(dk.wrapped, CTX) == dk.plaintext


def test_encrypt_decrypt_round_trip(kms, key_id):
    wrapped = kms.encrypt("alias/pii", b"small secret payload", CTX)
    assert bytes(kms.decrypt(wrapped.ciphertext, CTX, key="alias/pii")) == b"small secret payload"
    with pytest.raises(ConfigurationError, match="4096"):
        kms.encrypt("alias/pii", b"x" * 4097)


def test_reencrypt_to_same_and_other_key(kms, key_id, keystore, root_key):
    other = kms.create_key(alias="alias/other")
    dk = kms.generate_data_key(key_id, CTX)
    kms.rotate_key(key_id)
    same = kms.reencrypt(dk.wrapped.ciphertext, CTX)
    assert (same.key_id, same.key_version) == (key_id, "2")
    assert kms.decrypt(same.ciphertext, CTX) == dk.plaintext
    moved = kms.reencrypt(dk.wrapped.ciphertext, CTX, destination_key="alias/other",
                          destination_context={"dataset": "moved"})
    assert moved.key_id == other
    assert kms.decrypt(moved.ciphertext, {"dataset": "moved"}) == dk.plaintext
    # through the provider protocol: server-side, one ReEncrypt audit line naming both keys
    p = provider(keystore, root_key)
    out = p.reencrypt(dk.wrapped, CTX, destination=provider(keystore, root_key, "local://alias/other"))
    assert out.key_id == other
    last = kms.audit_events()[-1]
    assert (last["operation"], last["key_id"], last["destination_key_id"]) == ("ReEncrypt", key_id, other)


def test_generate_and_verify_mac(kms):
    mac_key = kms.create_key(alias="alias/mac", spec="HMAC_256")
    mac = kms.generate_mac("alias/mac", b"message")
    assert kms.verify_mac(mac_key, b"message", mac) is True
    assert kms.verify_mac(mac_key, b"messagf", mac) is False
    kms.rotate_key(mac_key)
    assert kms.verify_mac(mac_key, b"message", mac) is True  # old version still verifies
    assert kms.generate_mac(mac_key, b"message")[3:7] == (2).to_bytes(4, "big")
    with pytest.raises(ConfigurationError, match="SYMMETRIC_DEFAULT"):
        kms.generate_data_key(mac_key)


def test_describe_and_list(kms, key_id):
    kms.create_key(alias="alias/second", spec="HMAC_256", tags={"team": "data"}, rotation_period_days=90)
    d = kms.describe_key("alias/pii")
    assert d.key_id == key_id and d.primary_version == "1" and d.enabled and d.state == "Enabled"
    assert d.extra["aliases"] == ["alias/pii"] and "not an HSM" in d.extra["backing"]
    listed = kms.list_keys()
    assert [x.extra["aliases"] for x in listed] == [["alias/pii"], ["alias/second"]]
    assert listed[1].extra["tags"] == {"team": "data"} and listed[1].extra["rotation_period_days"] == 90


def test_aliases_create_update_delete(kms, key_id):
    other = kms.create_key()
    kms.create_alias("alias/extra", key_id)
    assert kms.describe_key("alias/extra").key_id == key_id
    kms.update_alias("alias/extra", other)
    assert kms.describe_key("alias/extra").key_id == other
    kms.delete_alias("alias/extra")
    with pytest.raises(KeyNotFoundError, match="alias/extra"):
        kms.describe_key("alias/extra")
    with pytest.raises(ConfigurationError, match="already"):
        kms.create_alias("alias/pii", other)
    with pytest.raises(ConfigurationError, match="alias/<name>"):
        kms.create_alias("pii", other)


# -- rotation ------------------------------------------------------------------------------------
def test_rotation_new_wraps_use_new_version_old_still_decrypt(kms, key_id):
    old = kms.generate_data_key(key_id, CTX)
    assert kms.rotate_key("alias/pii") == 2
    new = kms.generate_data_key(key_id, CTX)
    assert (old.wrapped.key_version, new.wrapped.key_version) == ("1", "2")
    assert kms.decrypt(old.wrapped.ciphertext, CTX) == old.plaintext
    assert kms.decrypt(new.wrapped.ciphertext, CTX) == new.plaintext
    assert kms.describe_key(key_id).versions == {"1": "enabled", "2": "enabled"}


def test_rotation_by_period_with_injected_clock(kms, clock):
    kid = kms.create_key(alias="alias/auto", rotation_period_days=30)
    clock.advance(days=29, hours=23)
    assert kms.generate_data_key(kid).wrapped.key_version == "1"
    clock.advance(hours=1)
    assert kms.generate_data_key(kid).wrapped.key_version == "2"  # rotated lazily at this call
    assert kms.generate_data_key(kid).wrapped.key_version == "2"
    clock.advance(days=30)
    assert kms.describe_key(kid).primary_version == "3"
    system = [e for e in kms.audit_events(kid) if e["principal"] == "system"]
    assert [(e["operation"], e["key_version"]) for e in system] == [("RotateKey", "2"), ("RotateKey", "3")]


# -- tampering and context -----------------------------------------------------------------------
def test_encryption_context_mismatch(kms, key_id):
    dk = kms.generate_data_key(key_id, CTX)
    for ctx in ({"dataset": "customers"}, {**CTX, "run_id": "r2"}, None):
        with pytest.raises(InvalidCiphertextError, match=key_id):
            kms.decrypt(dk.wrapped.ciphertext, ctx)


def test_tampered_blob(kms, key_id):
    blob = kms.generate_data_key(key_id, CTX).wrapped.ciphertext
    for i in (23, 30, 40, len(blob) - 1):  # nonce, ciphertext, tag bytes
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(InvalidCiphertextError):
            kms.decrypt(bytes(bad), CTX)
    bad = bytearray(blob)
    bad[22] ^= 0x01  # version field -> names a version that does not exist
    with pytest.raises(KeyNotFoundError, match="no version"):
        kms.decrypt(bytes(bad), CTX)
    with pytest.raises(InvalidCiphertextError, match="too short"):
        kms.decrypt(blob[:40], CTX)
    with pytest.raises(InvalidCiphertextError, match="magic"):
        kms.decrypt(b"XX" + blob[2:], CTX)
    other = kms.create_key()
    with pytest.raises(InvalidCiphertextError, match="not by key"):
        kms.decrypt(blob, CTX, key=other)
    with pytest.raises(KeyNotFoundError, match="names key"):
        kms.decrypt(blob[:3] + uuid.uuid4().bytes + blob[19:], CTX)


def test_provider_rejects_wrapped_key_naming_another_key(kms, key_id, keystore, root_key):
    dk = kms.generate_data_key(key_id, CTX)
    other = kms.create_key()
    with pytest.raises(InvalidCiphertextError):
        provider(keystore, root_key).decrypt_data_key(WrappedKey(dk.wrapped.ciphertext, other, "1"), CTX)


# -- key states ----------------------------------------------------------------------------------
def test_disabled_key(kms, key_id):
    dk = kms.generate_data_key(key_id, CTX)
    kms.disable_key("alias/pii")
    with pytest.raises(KeyStateError, match=f"{key_id} is Disabled"):
        kms.generate_data_key(key_id, CTX)
    with pytest.raises(KeyStateError, match=f"{key_id} is Disabled"):
        kms.decrypt(dk.wrapped.ciphertext, CTX)
    kms.enable_key(key_id)
    assert kms.decrypt(dk.wrapped.ciphertext, CTX) == dk.plaintext


def test_disabled_and_destroyed_versions(kms, key_id):
    v1 = kms.generate_data_key(key_id, CTX)
    kms.rotate_key(key_id)
    kms.disable_key_version(key_id, 1)
    with pytest.raises(KeyStateError, match=f"version 1 of key {key_id} is Disabled"):
        kms.decrypt(v1.wrapped.ciphertext, CTX)
    kms.enable_key_version(key_id, 1)
    assert kms.decrypt(v1.wrapped.ciphertext, CTX) == v1.plaintext
    # disabling the primary makes the newest enabled version primary again
    kms.disable_key_version(key_id, 2)
    assert kms.generate_data_key(key_id).wrapped.key_version == "1"
    kms.enable_key_version(key_id, 2)
    kms.destroy_key_version(key_id, 1)
    with pytest.raises(KeyStateError, match=f"version 1 of key {key_id} is Destroyed"):
        kms.decrypt(v1.wrapped.ciphertext, CTX)
    with pytest.raises(KeyStateError, match="Destroyed"):
        kms.enable_key_version(key_id, 1)
    stored = json.loads(kms.keystore_file.read_text())["keys"][key_id]["versions"]
    assert stored["1"]["material"] is None and stored["2"]["material"]
    with pytest.raises(KeyNotFoundError, match="no version 9"):
        kms.disable_key_version(key_id, 9)


def test_scheduled_deletion_cancel_and_expiry(kms, key_id, clock):
    dk = kms.generate_data_key(key_id, CTX)
    for days in (6, 31, 0):
        with pytest.raises(ConfigurationError, match="7 to 30 days"):
            kms.schedule_key_deletion(key_id, days)
    kms.schedule_key_deletion(key_id, 7)
    with pytest.raises(KeyStateError, match=f"{key_id} is PendingDeletion"):
        kms.generate_data_key(key_id, CTX)
    with pytest.raises(KeyStateError, match="PendingDeletion"):
        kms.decrypt(dk.wrapped.ciphertext, CTX)
    kms.cancel_key_deletion(key_id)
    assert kms.decrypt(dk.wrapped.ciphertext, CTX) == dk.plaintext  # use restored
    when = kms.schedule_key_deletion(key_id, 7)
    clock.advance(days=6, hours=23)
    assert kms.describe_key(key_id).state == "PendingDeletion"
    clock.now = when
    with pytest.raises(KeyStateError, match=f"{key_id} is Destroyed"):
        kms.decrypt(dk.wrapped.ciphertext, CTX)
    stored = json.loads(kms.keystore_file.read_text())["keys"][key_id]
    assert stored["state"] == "Destroyed"
    assert all(v["material"] is None for v in stored["versions"].values())
    with pytest.raises(KeyStateError, match="not PendingDeletion"):
        kms.cancel_key_deletion(key_id)


def test_cancel_restores_disabled_state(kms, key_id):
    kms.disable_key(key_id)
    kms.schedule_key_deletion(key_id, 10)
    kms.cancel_key_deletion(key_id)
    assert kms.describe_key(key_id).state == "Disabled"


# -- policies ------------------------------------------------------------------------------------
def test_encrypt_only_principal_cannot_decrypt_and_is_audited(kms, key_id, keystore, root_key):
    kms.put_key_policy(key_id, {"alice": ["admin"], "etl-writer": ["encrypt"], "analyst": ["decrypt"]})
    writer = provider(keystore, root_key, principal="etl-writer")
    dk = writer.generate_data_key(CTX)
    with pytest.raises(AccessDeniedError, match="'etl-writer'.*Decrypt") as err:
        writer.decrypt_data_key(dk.wrapped, CTX)
    assert err.value.key_id == key_id
    analyst = provider(keystore, root_key, principal="analyst")
    assert analyst.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
    with pytest.raises(AccessDeniedError):
        analyst.generate_data_key(CTX)
    with pytest.raises(AccessDeniedError):
        provider(keystore, root_key, principal="nobody").describe_key()
    denied = [e for e in kms.audit_events(key_id) if e["outcome"] == "AccessDeniedError"]
    assert [(e["principal"], e["operation"]) for e in denied] == [
        ("etl-writer", "Decrypt"), ("analyst", "GenerateDataKey"), ("nobody", "DescribeKey")]
    assert denied[0]["encryption_context"] == CTX
    # admin operations need the admin role; the wildcard grants to everyone
    with pytest.raises(AccessDeniedError):
        LocalKms(keystore, principal="etl-writer", root_key=root_key).rotate_key(key_id)
    kms.put_key_policy(key_id, {"alice": ["admin"], "*": ["encrypt", "decrypt"]})
    assert provider(keystore, root_key, principal="anyone").decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
    with pytest.raises(ConfigurationError, match="roles"):
        kms.put_key_policy(key_id, {"bob": ["superuser"]})


def test_principal_from_env(kms, key_id, keystore, root_key, monkeypatch):
    kms.put_key_policy(key_id, {"alice": ["admin"], "from-env": ["encrypt"]})
    monkeypatch.setenv("SPARK_KMS_PRINCIPAL", "from-env")
    provider(keystore, root_key).generate_data_key()
    assert kms.audit_events()[-1]["principal"] == "from-env"


# -- bad input -----------------------------------------------------------------------------------
def test_unknown_key_and_alias(kms, key_id, keystore, root_key):
    missing = str(uuid.uuid4())
    with pytest.raises(KeyNotFoundError, match=f"key {missing} does not exist in keystore {keystore}"):
        kms.generate_data_key(missing)
    with pytest.raises(KeyNotFoundError, match="alias 'alias/nope' does not exist"):
        provider(keystore, root_key, "local://alias/nope").generate_data_key()
    with pytest.raises(KeyNotFoundError, match="neither a key id"):
        kms.describe_key("not-a-key")
    with pytest.raises(KeyNotFoundError, match="does not exist; create a key first"):
        LocalKms(keystore.parent / "nowhere", root_key=root_key).generate_data_key("alias/pii")
    assert [e["outcome"] for e in kms.audit_events()[-3:]] == ["KeyNotFoundError"] * 3


def test_wrong_root_key(kms, key_id, keystore):
    other = LocalKms(keystore, root_key=os.urandom(32))
    with pytest.raises(KeystoreError, match=f"the root key does not open keystore {keystore}"):
        other.generate_data_key(key_id)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        LocalKms(keystore, root_key=b"short")


def test_corrupt_and_truncated_keystore(kms, key_id, keystore):
    path = kms.keystore_file
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(KeystoreError, match=f"keystore file {path} is corrupt or truncated"):
        kms.generate_data_key(key_id)
    data = json.loads(raw)
    data["keys"][key_id]["versions"]["1"]["material"] = base64.b64encode(os.urandom(60)).decode()
    path.write_text(json.dumps(data))
    with pytest.raises(KeystoreError, match=f"{path} is corrupt: the material of key {key_id} version 1"):
        kms.generate_data_key(key_id)
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(KeystoreError, match="is not a spark_kms local keystore"):
        kms.generate_data_key(key_id)


def test_provider_options_validated():
    with pytest.raises(ConfigurationError, match="unknown local KMS option"):
        LocalKmsProvider("local://alias/pii", keystor="/tmp/x")
    with pytest.raises(ConfigurationError):
        LocalKmsProvider("local://")


def test_root_key_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_KMS_ROOT_KEY", raising=False)
    ks = tmp_path / "ks"
    LocalKms(ks).create_key(alias="alias/a")
    root_file = ks / "root.key"
    assert root_file.stat().st_mode & 0o777 == 0o600
    file_key = base64.b64decode(root_file.read_bytes())
    assert LocalKms(ks, root_key=file_key).describe_key("alias/a").key_id
    ks2 = tmp_path / "ks2"
    monkeypatch.setenv("SPARK_KMS_ROOT_KEY", base64.b64encode(os.urandom(32)).decode())
    LocalKms(ks2).create_key(alias="alias/b")
    assert not (ks2 / "root.key").exists()
    monkeypatch.setenv("SPARK_KMS_ROOT_KEY", "bm90IDMyIGJ5dGVz")
    with pytest.raises(ConfigurationError, match="SPARK_KMS_ROOT_KEY"):
        LocalKms(ks2).describe_key("alias/b")


# -- secrets never leak --------------------------------------------------------------------------
def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


def test_no_secrets_in_audit_repr_or_errors(kms, key_id, keystore, root_key):
    p = provider(keystore, root_key, principal="alice")
    dk = p.generate_data_key(CTX)
    payload = b"payload-0123456789-secret"
    wrapped = p.encrypt(payload, CTX)
    errors = []
    for call in (lambda: p.decrypt_data_key(dk.wrapped, {"x": "y"}),
                 lambda: LocalKms(keystore, root_key=os.urandom(32)).decrypt(dk.wrapped.ciphertext, CTX),
                 lambda: kms.decrypt(dk.wrapped.ciphertext[:-1] + b"\x00", CTX)):
        with pytest.raises(Exception) as err:
            call()
        errors.append(f"{err.value!r} {err.value}")
    material = kms._load(create=False).material(key_id, 1)
    texts = [kms.audit_file.read_bytes(), kms.keystore_file.read_bytes(),
             repr(p).encode(), repr(kms).encode(), repr(dk).encode(), repr(wrapped).encode(),
             repr(p.describe_key()).encode(), " ".join(errors).encode()]
    for secret in (root_key, bytes(dk.plaintext), material, payload):
        for form in _forms(secret):
            for text in texts:
                assert form not in text
    assert p == provider(keystore, os.urandom(32), principal="alice")  # root key kept out of equality
    with pytest.raises(TypeError, match="LocalKmsProvider"):
        pickle.dumps(kms)


# -- pickling to another process -----------------------------------------------------------------
def test_provider_pickles_to_a_subprocess(kms, key_id, keystore, root_key):
    p = provider(keystore, root_key, principal="alice")
    p.generate_data_key()  # builds the client; it must not be pickled
    code = (
        "import pickle, sys, json\n"
        "p = pickle.loads(sys.stdin.buffer.read())\n"
        "dk = p.generate_data_key({'dataset': 'customers'})\n"
        "print(json.dumps([dk.plaintext.hex(), dk.wrapped.ciphertext.hex(), dk.wrapped.key_version]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(p), capture_output=True,
                         check=True, timeout=60)
    plaintext_hex, blob_hex, version = json.loads(out.stdout)
    assert kms.decrypt(bytes.fromhex(blob_hex), {"dataset": "customers"}).hex() == plaintext_hex
    assert version == "1"


# -- harness and throttling ----------------------------------------------------------------------
def test_local_harness_and_throttling():
    with LocalKmsHarness() as h:
        p = h.provider()
        dk = p.generate_data_key(CTX)
        h.rotate()
        assert p.describe_key().primary_version == "2"
        assert pickle.loads(pickle.dumps(p)).decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
        with pytest.raises(KeyNotFoundError):
            h.provider_for_missing_key().generate_data_key()
        with pytest.raises(AccessDeniedError):
            h.provider_denied().generate_data_key()
        h.throttle(2, 3)  # 2 of every 3 calls throttled: retries get through
        for _ in range(3):
            assert p.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
        h.throttle(1, 1)
        with pytest.raises(ThrottlingError, match="throttled"):
            p.generate_data_key(CTX)
        h.throttle(0, 1)
        assert p.generate_data_key(CTX).wrapped.key_version == "2"
        throttled = [e for e in h.admin.audit_events() if e["outcome"] == "ThrottlingError"]
        assert len(throttled) >= 2 + 5
        assert LocalKmsProvider(**{"key_uri": f"local://{h.alias}"}, **h.provider_options()) == p


# -- the keystore is private, whatever the umask (issue #14, item 7) -----------------------------------
def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def _use_keystore(keystore, root_key=None) -> None:
    kms = LocalKms(keystore, principal="alice", root_key=root_key)
    kms.create_key(alias="alias/pii")
    dk = kms.generate_data_key("alias/pii", CTX)
    kms.rotate_key("alias/pii")
    assert kms.decrypt(dk.wrapped.ciphertext, CTX) == dk.plaintext
    options = {"root_key": root_key} if root_key else {}
    p = provider_from_uri("local://alias/pii", keystore=str(keystore), **options)
    p.decrypt_data_key(p.generate_data_key(CTX).wrapped, CTX)


@pytest.mark.parametrize("umask", [0o022, 0o000])
@pytest.mark.parametrize("injected_root_key", [False, True])
def test_keystore_directory_is_0700_and_every_file_0600_whatever_the_umask(tmp_path, umask, injected_root_key):
    keystore = tmp_path / "home" / "keystore"
    root_key = os.urandom(32) if injected_root_key else None
    old = os.umask(umask)
    try:
        _use_keystore(keystore, root_key)
    finally:
        os.umask(old)
    files = {p.name: _mode(p) for p in keystore.iterdir()}
    expected = {"keystore.json", "keystore.lock", "audit.log"} | (set() if injected_root_key else {"root.key"})
    assert expected <= set(files), files
    assert files == dict.fromkeys(files, 0o600), {n: oct(m) for n, m in files.items()}
    assert _mode(keystore) == 0o700


def test_a_loose_keystore_is_made_private_by_the_next_call(kms, key_id, keystore):
    kms.generate_data_key("alias/pii", CTX)
    os.chmod(keystore, 0o755)
    for p in keystore.iterdir():
        os.chmod(p, 0o644)
    kms.describe_key("alias/pii")
    assert _mode(keystore) == 0o700
    assert {p.name: _mode(p) for p in keystore.iterdir()} == {p.name: 0o600 for p in keystore.iterdir()}
