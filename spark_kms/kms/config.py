"""How every layer reaches a KMS: one :class:`KmsConfig`.

A key URI names *which* key (``local://alias/pii``, ``aws-kms://arn:...``); a
:class:`KmsConfig` says *how* to reach each kind of KMS: the provider options per key-URI
scheme (``{"local": {"keystore": "/tmp/ks"}, "aws-kms": {"region": "eu-west-1"}}``).
Readers need no key URI of their own (they find them in the dataset's key table), so a
config is shared by writers, readers, jobs, Spark tasks and the Airflow hook alike.

It is the only place that turns a key URI into a provider (through
:func:`spark_kms.kms.registry.provider_from_uri`, which parses the URI with
:func:`spark_kms.kms.registry.parse_key_uri`), and it keeps one provider per key URI for its
lifetime (one DescribeKey per key, one vendor client per process). It pickles as its options
only: each process builds its own providers and clients.

Secret options (root keys, tokens, client secrets) are the ones each provider class declares
in ``secret_options``; :meth:`KmsConfig.public_options` drops them and ``repr`` masks them.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any, Union

from spark_kms.errors import ConfigurationError, MissingExtraError
from spark_kms.kms.base import KeyDescription, KmsProvider
from spark_kms.kms.registry import parse_key_uri, provider_class, provider_from_uri

__all__ = ["KmsConfig", "KmsConfigLike", "secret_option_names"]

logger = logging.getLogger(__name__)

def secret_option_names(scheme: str) -> frozenset[str] | None:
    """The option names whose values are secrets for ``scheme``, as its provider class declares
    them; ``None`` when the class cannot be loaded (unknown scheme, extra not installed), in which
    case callers must treat every option value as secret."""
    try:
        cls = provider_class(f"{scheme}://")
    except (ConfigurationError, MissingExtraError):
        return None
    return frozenset(cls.secret_options)


def _copy(options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(scheme).lower(): dict(opts) for scheme, opts in options.items()}


class KmsConfig:
    """Provider options per key-URI scheme, and the providers built from them.

    :param options: ``{scheme: {option: value}}``; schemes as in key URIs (``local``,
        ``aws-kms``, ``gcp-kms``, ``azure-kv``, ``vault``, or a registered custom one).

    >>> kms = KmsConfig({"local": {"keystore": "/tmp/ks"}})
    >>> kms.provider("local://alias/pii")  # doctest: +SKIP
    LocalKmsProvider('local://alias/pii')
    """

    __slots__ = ("_descriptions", "_options", "_providers")

    def __init__(self, options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if options is not None and not isinstance(options, Mapping):
            raise ConfigurationError(
                f"KMS options map a key-URI scheme to its options, e.g. "
                f'{{"local": {{"keystore": "/path"}}}}; got {type(options).__name__}'
            )
        for scheme, opts in (options or {}).items():
            if not isinstance(opts, Mapping):
                raise ConfigurationError(
                    f"KMS options for scheme {scheme!r} must be a mapping of option names to values, "
                    f"got {type(opts).__name__}"
                )
        self._options = _copy(options or {})
        self._providers: dict[str, KmsProvider] = {}
        self._descriptions: dict[str, KeyDescription] = {}

    # -- building ---------------------------------------------------------------
    @classmethod
    def of(cls, value: KmsConfig | Mapping[str, Mapping[str, Any]] | str | None) -> KmsConfig:
        """The config for ``value``: a KmsConfig (returned as is), a mapping of options per
        scheme, a JSON object of the same (as Spark options and Airflow templates carry it),
        or ``None`` (no options: every provider from its defaults and the environment)."""
        if isinstance(value, KmsConfig):
            return value
        if isinstance(value, str):
            return cls.from_json(value)
        return cls(value)

    @classmethod
    def from_json(cls, text: str) -> KmsConfig:
        if not text.strip():
            return cls()
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"KMS options must be a JSON object: {exc.msg} at char {exc.pos}") from None
        if not isinstance(parsed, dict):
            raise ConfigurationError(f"KMS options must be a JSON object, got {type(parsed).__name__}")
        return cls(parsed)

    @classmethod
    def for_provider(cls, provider: KmsProvider, base: KmsConfig | None = None) -> KmsConfig:
        """A config that serves ``provider`` itself for its key URI and its options for its scheme
        (``base``'s options for every other scheme, and for its scheme where it sets any)."""
        options = base.options() if base is not None else {}
        if not options.get(provider.scheme):
            options[provider.scheme] = dict(provider.options)
        config = cls(options)
        config._providers[provider.key_uri] = provider
        return config

    def to_json(self) -> str:
        """The options as JSON, secrets included (for Spark options, which stay in the job)."""
        return json.dumps(self._options, sort_keys=True)

    def with_options(self, scheme: str, **options: Any) -> KmsConfig:
        """A new config with ``options`` set for ``scheme`` (other schemes unchanged)."""
        merged = _copy(self._options)
        merged.setdefault(scheme.lower(), {}).update(options)
        return KmsConfig(merged)

    def with_defaults(self, scheme: str, **options: Any) -> KmsConfig:
        """A new config where ``options`` fill in what ``scheme`` does not set already."""
        merged = _copy(self._options)
        target = merged.setdefault(scheme.lower(), {})
        for name, value in options.items():
            target.setdefault(name, value)
        return KmsConfig(merged)

    def with_request_tag(self, run_id: str) -> KmsConfig:
        """This config with the job's run id as the embedded KMS's ``request_tag``, so every audit
        line of the job names it -- also for calls whose encryption context is fixed (Decrypt and
        ReEncrypt of existing data keys). Other KMSs record the encryption context only."""
        return self.with_defaults("local", request_tag=run_id)

    # -- reading ----------------------------------------------------------------
    @property
    def schemes(self) -> list[str]:
        return sorted(self._options)

    def options(self) -> dict[str, dict[str, Any]]:
        """A copy of all options, secrets included."""
        return _copy(self._options)

    def options_for(self, key_uri: str) -> dict[str, Any]:
        """The options of ``key_uri``'s scheme (a copy). Raises ConfigurationError for a URI that
        is not ``<scheme>://<key>`` -- the same error every entry point gives."""
        scheme, _ = parse_key_uri(key_uri)
        return dict(self._options.get(scheme, {}))

    def public_options(self) -> dict[str, dict[str, Any]]:
        """The options without secret values (safe to persist, log or show): secret options are
        dropped; for a scheme whose provider cannot be loaded, every option is dropped."""
        out: dict[str, dict[str, Any]] = {}
        for scheme, opts in self._options.items():
            secret = secret_option_names(scheme)
            out[scheme] = {} if secret is None else {k: v for k, v in opts.items() if k not in secret}
        return out

    def secret_values(self) -> list[str]:
        """Every secret option value as a string (for log maskers such as Airflow's)."""
        values: list[str] = []
        for scheme, opts in self._options.items():
            secret = secret_option_names(scheme)
            for name, value in opts.items():
                if not value or (secret is not None and name not in secret):
                    continue
                if isinstance(value, str):
                    values.append(value)
                elif isinstance(value, (bytes, bytearray)):
                    # Raw key bytes: every form they could be printed in.
                    raw = bytes(value)
                    values.extend([base64.b64encode(raw).decode(), raw.hex(), repr(raw)])
                    try:
                        values.append(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        pass
        return values

    # -- providers --------------------------------------------------------------
    def provider(self, key_uri: str) -> KmsProvider:
        """The provider of ``key_uri``, built once per config from its scheme's options."""
        provider = self._providers.get(key_uri)
        if provider is None:
            provider = provider_from_uri(key_uri, **self.options_for(key_uri))
            self._providers[key_uri] = provider
            logger.debug("KMS provider for %s: %r", key_uri, provider)
        return provider

    def describe(self, key_uri: str) -> KeyDescription:
        """DescribeKey of ``key_uri``, once per config (not per file, not per data key)."""
        description = self._descriptions.get(key_uri)
        if description is None:
            description = self.provider(key_uri).describe_key()
            self._descriptions[key_uri] = description
        return description

    # -- plumbing ---------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        # Options only: providers (and the vendor clients they hold) are rebuilt per process.
        return (KmsConfig, (self._options,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KmsConfig) and other._options == self._options

    def __hash__(self) -> int:
        return hash(json.dumps(self._options, sort_keys=True, default=repr))

    def __bool__(self) -> bool:
        return bool(self._options)

    def __repr__(self) -> str:
        shown: dict[str, dict[str, Any]] = {}
        for scheme, opts in self._options.items():
            secret = secret_option_names(scheme)
            shown[scheme] = {k: ("***" if secret is None or k in secret else v) for k, v in opts.items()}
        return f"KmsConfig({shown!r})"


#: what every public entry point accepts where a KMS configuration is expected (see :meth:`KmsConfig.of`)
KmsConfigLike = Union[KmsConfig, Mapping[str, Mapping[str, Any]], str, None]  # noqa: UP007 -- a runtime alias
