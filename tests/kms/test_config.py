"""KmsConfig: the one way every layer turns a key URI into a provider."""

from __future__ import annotations

import json
import pickle

import pytest

from spark_kms.errors import ConfigurationError, MissingExtraError
from spark_kms.kms import KmsConfig, KmsProvider, parse_key_uri, register_provider, secret_option_names
from spark_kms.kms.local import LocalKmsProvider


def test_parse_key_uri_splits_and_lowercases_the_scheme() -> None:
    assert parse_key_uri("LOCAL://alias/pii") == ("local", "alias/pii")
    assert parse_key_uri("aws-kms://arn:aws:kms:eu-west-1:111122223333:key/k") == (
        "aws-kms", "arn:aws:kms:eu-west-1:111122223333:key/k")


@pytest.mark.parametrize("bad", ["alias/pii", "", "://alias/pii", "local:/alias/pii"])
def test_a_uri_without_a_scheme_is_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"a key URI looks like '<scheme>://<key>' with scheme one of"):
        parse_key_uri(bad)
    with pytest.raises(ConfigurationError) as via_config:
        KmsConfig().provider(bad)
    with pytest.raises(ConfigurationError) as direct:
        parse_key_uri(bad)
    assert str(via_config.value) == str(direct.value)


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown KMS scheme 'nope': expected one of \[.*'local'"):
        KmsConfig().provider("nope://k")


def test_options_are_per_scheme_and_providers_are_built_once(local_kms) -> None:
    kms = KmsConfig(local_kms.kms_options)
    provider = kms.provider(local_kms.key_uri)
    assert isinstance(provider, LocalKmsProvider)
    assert provider.options == {"keystore": str(local_kms.keystore_dir)}
    assert kms.provider(local_kms.key_uri) is provider
    assert kms.describe(local_kms.key_uri) is kms.describe(local_kms.key_uri)
    assert kms.options_for("local://alias/other") == {"keystore": str(local_kms.keystore_dir)}
    assert kms.options_for("vault://127.0.0.1:8200/transit/keys/k") == {}


@pytest.mark.parametrize("value", [
    None, {"local": {"keystore": "/ks"}}, '{"local": {"keystore": "/ks"}}', KmsConfig({"local": {"keystore": "/ks"}}),
])
def test_of_accepts_every_form_a_user_holds(value: object) -> None:
    kms = KmsConfig.of(value)  # type: ignore[arg-type]
    assert kms.options() == ({} if value is None else {"local": {"keystore": "/ks"}})
    if isinstance(value, KmsConfig):
        assert kms is value


@pytest.mark.parametrize("bad, rule", [
    ("[1]", "must be a JSON object, got list"),
    ("{not json", "must be a JSON object: Expecting"),
    ({"local": "keystore=/ks"}, "options for scheme 'local' must be a mapping"),
    (["local"], "map a key-URI scheme to its options"),
])
def test_malformed_options_state_the_rule(bad: object, rule: str) -> None:
    with pytest.raises(ConfigurationError, match=rule):
        KmsConfig.of(bad)  # type: ignore[arg-type]


def test_pickles_as_options_only(local_kms) -> None:
    kms = KmsConfig(local_kms.kms_options)
    kms.provider(local_kms.key_uri).describe_key()
    back = pickle.loads(pickle.dumps(kms))
    assert back == kms and back.options() == kms.options()
    assert back._providers == {}  # each process builds its own providers and clients
    assert KmsConfig.from_json(kms.to_json()) == kms


def test_secrets_are_what_each_provider_class_declares() -> None:
    assert secret_option_names("local") == frozenset({"root_key"})
    assert secret_option_names("aws-kms") == frozenset({"aws_secret_access_key", "aws_session_token"})
    assert secret_option_names("vault") == frozenset({"token", "secret_id"})
    assert secret_option_names("azure-kv") == frozenset({"client_secret", "credential"})
    assert secret_option_names("gcp-kms") == frozenset({"access_token"})
    assert secret_option_names("no-such-scheme") is None


def test_repr_and_public_options_never_show_a_secret() -> None:
    root = "c2VjcmV0LXJvb3Qta2V5LWJ5dGVz"
    kms = KmsConfig({"local": {"keystore": "/ks", "root_key": root},
                     "vault": {"token": "hvs.TOPSECRET", "timeout": 5},
                     "weird": {"anything": "maybe-secret"}})
    text = repr(kms)
    assert root not in text and "hvs.TOPSECRET" not in text and "maybe-secret" not in text
    assert "/ks" in text and "'timeout': 5" in text
    assert kms.public_options() == {"local": {"keystore": "/ks"}, "vault": {"timeout": 5}, "weird": {}}
    assert sorted(kms.secret_values()) == sorted([root, "hvs.TOPSECRET", "maybe-secret"])


def test_with_request_tag_fills_in_without_overriding() -> None:
    kms = KmsConfig({"local": {"keystore": "/ks"}})
    assert kms.with_request_tag("run-1").options() == {"local": {"keystore": "/ks", "request_tag": "run-1"}}
    tagged = KmsConfig({"local": {"request_tag": "mine"}}).with_request_tag("run-1")
    assert tagged.options()["local"]["request_tag"] == "mine"
    assert kms.options() == {"local": {"keystore": "/ks"}}  # configs are values: the original is unchanged


def test_for_provider_serves_that_provider_and_its_options(local_kms) -> None:
    provider = LocalKmsProvider(local_kms.key_uri, keystore=str(local_kms.keystore_dir))
    kms = KmsConfig.for_provider(provider)
    assert kms.provider(local_kms.key_uri) is provider
    assert kms.options_for("local://alias/other") == {"keystore": str(local_kms.keystore_dir)}


def test_a_custom_scheme_declares_its_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from spark_kms.kms import registry

    monkeypatch.setattr(registry, "_CUSTOM", dict(registry._CUSTOM))  # registered for this test only

    @register_provider
    class EchoProvider(KmsProvider):
        scheme = "echo-test"
        secret_options = frozenset({"password"})

        def _generate_data_key(self, encryption_context):  # pragma: no cover - not called
            raise NotImplementedError

        _encrypt = _decrypt = _describe_key = _generate_data_key

    kms = KmsConfig({"echo-test": {"password": "pw-123", "host": "h"}})
    assert isinstance(kms.provider("echo-test://k"), EchoProvider)
    assert "pw-123" not in repr(kms)
    assert json.loads(kms.to_json())["echo-test"]["password"] == "pw-123"  # the job itself still needs it


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_hvac(name: str, *args: object, **kwargs: object) -> object:
        if name == "hvac" or name.startswith("hvac."):
            raise ImportError("No module named 'hvac'")
        return real_import(name, *args, **kwargs)

    import sys

    monkeypatch.delitem(sys.modules, "spark_kms.kms.vault", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_hvac)
    with pytest.raises(MissingExtraError, match=r"spark-kms\[vault\]"):
        KmsConfig().provider("vault://127.0.0.1:8200/transit/keys/k")


def test_raw_secret_bytes_are_masked_in_every_printed_form() -> None:
    import base64

    raw = bytes(range(200, 232))
    kms = KmsConfig({"local": {"keystore": "/ks", "root_key": raw}})
    values = kms.secret_values()
    assert base64.b64encode(raw).decode() in values and raw.hex() in values and repr(raw) in values
