"""Erasing a tenant's KMS key (issue #17, crypto-shredding): ``KmsProvider.schedule_key_deletion``
in every provider, against the session's provider test servers (tests/providers/conftest.py), with
the real clients over the wire.

Each test makes keys of its own (``harness.new_key_provider()``), so the harness's shared key the
contract suite uses is never deleted or disabled.

Where the KMS keeps a deleted key around for a waiting period (local, AWS, GCP, Azure), unwrapping
under it afterwards raises :class:`KeyErasedError`; where deletion is immediate and leaves nothing
(Vault Transit, PKCS#11), the KMS cannot tell an erased key from a missing one and the error stays
:class:`KeyNotFoundError`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    KeyErasedError,
    KeyNotFoundError,
    KeyStateError,
)
from spark_kms.kms.base import KeyDeletion, KeyDescription, KmsProvider, kms_call_counts
from spark_kms.testing.harness import ProviderHarness
from spark_kms.testing.local_harness import LocalKmsHarness

CONTEXT = {"dataset": "orders", "spark_kms.tenant": "acme"}
#: providers whose KMS keeps a deleted key (pending deletion / soft-deleted / destroy scheduled)
WAITING = {"local", "aws", "gcp", "azure"}


def _wrap(provider: KmsProvider) -> tuple[bytes, object]:
    with provider.generate_data_key(CONTEXT) as dek:
        return bytes(dek.plaintext), dek.wrapped


def _no_secret(exc: BaseException, secret: bytes) -> None:
    text = str(exc) + repr(exc)
    assert secret.hex() not in text and secret.hex().upper() not in text and repr(secret) not in text


def test_scheduled_deletion_erases_what_the_key_wrapped(harness: ProviderHarness) -> None:
    provider = harness.new_key_provider()
    secret, wrapped = _wrap(provider)
    assert bytes(provider.decrypt_data_key(wrapped, CONTEXT)) == secret
    assert provider.describe_key().erased is False
    before = kms_call_counts().get(f"{provider.scheme}:ScheduleKeyDeletion", 0)

    deletion = provider.schedule_key_deletion(7)

    assert isinstance(deletion, KeyDeletion) and deletion.already is False
    assert kms_call_counts()[f"{provider.scheme}:ScheduleKeyDeletion"] == before + 1
    expected = KeyErasedError if harness.name in WAITING else KeyNotFoundError
    for call, operation in (
        (lambda: provider.decrypt_data_key(wrapped, CONTEXT), "Decrypt"),
        (lambda: provider.reencrypt(wrapped, CONTEXT), None),
        (lambda: provider.generate_data_key(CONTEXT), None),
    ):
        with pytest.raises(expected) as info:
            call()
        if expected is KeyNotFoundError:
            assert not isinstance(info.value, KeyErasedError)
        assert info.value.key_id and info.value.key_id in str(info.value), str(info.value)
        if operation:
            assert info.value.operation == operation
        _no_secret(info.value, secret)

    if harness.name in WAITING:
        assert deletion.state == "pending_deletion"
        assert deletion.deletion_date is not None
        when = datetime.fromisoformat(deletion.deletion_date)
        assert when.tzinfo is not None and when > datetime.now(timezone.utc) + timedelta(hours=23)
        assert provider.describe_key().erased is True
    else:  # Vault Transit, PKCS#11: deleted at once, nothing left to describe
        assert (deletion.state, deletion.deletion_date) == ("destroyed", None)
        with pytest.raises(KeyNotFoundError):
            provider.describe_key()


def test_a_second_deletion_is_idempotent(harness: ProviderHarness) -> None:
    provider = harness.new_key_provider()
    first = provider.schedule_key_deletion(7)
    again = provider.schedule_key_deletion(7)
    assert again.already is True and first.already is False
    assert (again.key_id, again.state) == (first.key_id, first.state)
    if harness.name in ("local", "aws", "azure"):
        # the date set by the first call, not a new one
        assert again.deletion_date == first.deletion_date
    elif harness.name == "gcp":
        assert again.deletion_date is not None


def test_a_disabled_key_is_not_an_erased_one(harness: ProviderHarness) -> None:
    provider = harness.new_key_provider()
    secret, wrapped = _wrap(provider)
    if harness.name == "pkcs11":  # a token key has no disabled state
        with pytest.raises(NotImplementedError):
            harness.disable_key(provider)
        return
    harness.disable_key(provider)
    with pytest.raises(KeyStateError) as info:
        provider.decrypt_data_key(wrapped, CONTEXT)
    assert not isinstance(info.value, KeyErasedError), str(info.value)
    _no_secret(info.value, secret)
    if harness.name != "vault":  # Vault's "disabled" is a retired version: the key itself is fine
        assert provider.describe_key().erased is False


def _undo_deletion(harness: ProviderHarness, provider: KmsProvider) -> None:
    """The KMS's own way back within the waiting period (what docs/PROVIDERS.md promises)."""
    if harness.name == "local":
        harness.admin.cancel_key_deletion(provider.key_ref)  # type: ignore[attr-defined]
    elif harness.name == "aws":  # CancelKeyDeletion through the proxy, then EnableKey: AWS leaves it Disabled
        provider.client.cancel_key_deletion(KeyId=provider.key_ref)  # type: ignore[attr-defined]
        with pytest.raises(KeyStateError) as info:
            provider.generate_data_key(CONTEXT)
        assert not isinstance(info.value, KeyErasedError)
        provider.client.enable_key(KeyId=provider.key_ref)  # type: ignore[attr-defined]
    elif harness.name == "gcp":  # RestoreCryptoKeyVersion gives DISABLED versions back
        admin, meta = harness._admin_client(), harness._admin_metadata()  # type: ignore[attr-defined]
        for v in admin.list_crypto_key_versions(request={"parent": provider.key_name},  # type: ignore[attr-defined]
                                                metadata=meta, retry=None):
            admin.restore_crypto_key_version(request={"name": v.name}, metadata=meta, retry=None)
            admin.update_crypto_key_version(request={"crypto_key_version": {"name": v.name, "state": 1},
                                                     "update_mask": {"paths": ["state"]}}, metadata=meta, retry=None)
    elif harness.name == "azure":  # recover the soft-deleted key
        provider.client.key_client.begin_recover_deleted_key(provider.name).result()  # type: ignore[attr-defined]
    else:
        raise AssertionError(f"{harness.name}: deletion is immediate, nothing to undo")


def test_deletion_can_be_undone_during_the_waiting_period(harness: ProviderHarness) -> None:
    provider = harness.new_key_provider()
    secret, wrapped = _wrap(provider)
    provider.schedule_key_deletion(7)
    if harness.name not in WAITING:  # Vault, PKCS#11: immediate and final
        with pytest.raises(AssertionError, match="immediate"):
            _undo_deletion(harness, provider)
        with pytest.raises(KeyNotFoundError):
            provider.decrypt_data_key(wrapped, CONTEXT)
        return
    _undo_deletion(harness, provider)
    assert bytes(provider.decrypt_data_key(wrapped, CONTEXT)) == secret
    assert provider.describe_key().erased is False


def test_denied_credentials_cannot_erase(harness: ProviderHarness) -> None:
    with pytest.raises(AccessDeniedError) as info:
        harness.provider_denied().schedule_key_deletion(7)
    assert info.value.key_id
    if harness.name == "vault":
        from spark_kms.kms.vault import VaultTransitProvider

        with pytest.raises(AccessDeniedError):  # the app token may use the key, not delete it
            harness.provider().schedule_key_deletion(7)
        root = harness._options(harness.server.root_token)  # type: ignore[attr-defined]
        no_mount = VaultTransitProvider(f"vault://{harness.server.address}/no-such-mount/keys/x",  # type: ignore[attr-defined]
                                        **root)
        with pytest.raises(KeyNotFoundError):  # a wrong mount is not an "already deleted" key
            no_mount.schedule_key_deletion(7)
    assert harness.provider().describe_key().erased is False


def test_wrong_waiting_period_is_a_configuration_error(harness: ProviderHarness) -> None:
    provider = harness.new_key_provider()
    with pytest.raises(ConfigurationError):
        provider.schedule_key_deletion(0)
    if harness.name in ("local", "aws"):  # AWS-style windows: 7 to 30 days
        with pytest.raises(ConfigurationError):
            provider.schedule_key_deletion(31)
    assert provider.describe_key().erased is False


# -- local KMS: the erase role --------------------------------------------------------------------
@pytest.fixture(scope="module")
def local() -> LocalKmsHarness:
    h = LocalKmsHarness()
    h.start()
    try:
        yield h
    finally:
        h.stop()


def test_local_decrypt_role_cannot_erase_and_is_audited(local: LocalKmsHarness) -> None:
    alias = local.new_key({"harness-admin": ["admin"], "tester": ["encrypt"], "reader": ["decrypt"],
                           "eraser": ["erase"]})
    _, wrapped = _wrap(local.provider_for(alias))
    reader = local.provider_for(alias, "reader")

    with pytest.raises(AccessDeniedError) as info:
        reader.schedule_key_deletion(7)
    assert "ScheduleKeyDeletion" in str(info.value) and "erase" in str(info.value)
    denied = [e for e in local.admin.audit_events(alias)
              if e["operation"] == "ScheduleKeyDeletion" and e["outcome"] == "AccessDeniedError"]
    assert [e["principal"] for e in denied] == ["reader"]
    assert reader.describe_key().erased is False
    assert len(reader.decrypt_data_key(wrapped, CONTEXT)) == 32  # still readable

    eraser = local.provider_for(alias, "eraser")
    with pytest.raises(AccessDeniedError):  # erase is not decrypt
        eraser.decrypt_data_key(wrapped, CONTEXT)
    deletion = eraser.schedule_key_deletion(7)
    assert deletion.state == "pending_deletion" and deletion.already is False
    assert eraser.describe_key().erased is True
    done = [e for e in local.admin.audit_events(alias)
            if e["operation"] == "ScheduleKeyDeletion" and e["outcome"] == "ok"]
    assert [e["principal"] for e in done] == ["eraser"]
    with pytest.raises(KeyErasedError):
        reader.decrypt_data_key(wrapped, CONTEXT)
    with pytest.raises(AccessDeniedError):  # erase cannot undo it: CancelKeyDeletion is admin's
        local.provider_for(alias, "eraser").kms.cancel_key_deletion(alias)


def test_local_destroyed_key_is_erased(local: LocalKmsHarness) -> None:
    """Once the waiting period is over the key is Destroyed: still KeyErasedError, still idempotent."""
    from spark_kms.kms.local import LocalKms

    provider = local.new_key_provider()
    _, wrapped = _wrap(provider)
    provider.schedule_key_deletion(7)
    later = LocalKms(local.keystore_dir, principal="tester", root_key=local.root_key,
                     clock=lambda: datetime.now(timezone.utc) + timedelta(days=8))
    with pytest.raises(KeyErasedError) as info:
        later.decrypt(wrapped.ciphertext, CONTEXT)
    assert "Destroyed" in str(info.value)
    again = provider.schedule_key_deletion(7)
    assert (again.state, again.deletion_date, again.already) == ("destroyed", None, True)
    assert provider.describe_key().erased is True


# -- KeyDescription.erased and the default refusal ------------------------------------------------
@pytest.mark.parametrize(("state", "versions", "primary", "erased"), [
    ("enabled", {"1": "enabled"}, "1", False),
    ("disabled", {"1": "disabled"}, "1", False),
    ("Disabled", {"1": "disabled"}, "1", False),
    ("pending_deletion", {"1": "pending_deletion"}, "1", True),
    ("PendingDeletion", {"1": "enabled"}, "1", True),
    ("Destroyed", {"1": "destroyed"}, "", True),
    ("pending_deletion", {}, "", True),
    ("enabled", {"1": "destroyed", "2": "enabled"}, "2", False),  # an old version destroyed: not the key
    ("enabled", {"1": "enabled", "2": "destroyed"}, "2", True),  # the primary version destroyed
])
def test_key_description_erased(state: str, versions: dict[str, str], primary: str, erased: bool) -> None:
    desc = KeyDescription(key_id="k", primary_version=primary, enabled=state == "enabled", state=state,
                          versions=versions)
    assert desc.erased is erased


def test_a_provider_without_deletion_refuses_clearly() -> None:
    class NoDeletion(KmsProvider):
        scheme = "nodelete"

        def _generate_data_key(self, encryption_context):  # type: ignore[no-untyped-def]
            raise AssertionError

        def _encrypt(self, plaintext, encryption_context):  # type: ignore[no-untyped-def]
            raise AssertionError

        def _decrypt(self, wrapped, encryption_context):  # type: ignore[no-untyped-def]
            raise AssertionError

        def _describe_key(self):  # type: ignore[no-untyped-def]
            raise AssertionError

    with pytest.raises(ConfigurationError, match="nodelete keys cannot be scheduled for deletion by spark_kms"):
        NoDeletion("nodelete://k").schedule_key_deletion()
