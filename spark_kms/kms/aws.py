"""AWS KMS provider (``aws-kms://...`` key URIs), over boto3.

Key URIs::

    aws-kms://arn:aws:kms:<region>:<account>:key/<key-id>
    aws-kms://arn:aws:kms:<region>:<account>:alias/<name>
    aws-kms://alias/<name>
    aws-kms://<key-id>

Options (all plain values, so the provider pickles; the boto3 client is built
lazily in each process and never pickled):

``region``
    AWS region. Taken from the ARN when the URI is an ARN; an option that
    disagrees with the ARN is an error.
``endpoint_url``
    KMS endpoint (a VPC endpoint, or a test server on 127.0.0.1).
``profile``
    A named profile of the shared AWS config files.
``role_arn`` / ``role_session_name`` / ``sts_endpoint_url``
    Assume this IAM role through STS; the temporary credentials refresh
    themselves before they expire.
``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token``
    Static credentials. Secret: never in ``repr`` nor in equality.
``max_attempts`` / ``retry_mode``
    botocore's retry configuration (``Config(retries={"mode": ..., "max_attempts": ...})``);
    throttled calls are retried by botocore itself, then raise :class:`ThrottlingError`.
``connect_timeout`` / ``read_timeout``
    Socket timeouts in seconds.

**Key version.** AWS KMS identifies the key material of a symmetric key by a
``KeyMaterialId`` (64 hex digits): a new one per automatic or on-demand rotation.
GenerateDataKey, Decrypt and ReEncrypt (``DestinationKeyMaterialId``) return it,
DescribeKey returns ``CurrentKeyMaterialId`` and ListKeyRotations lists them all.
``WrappedKey.key_version`` records that id. Encrypt does not return it, so after
an Encrypt the provider reads ``CurrentKeyMaterialId`` with DescribeKey (a
rotation landing between the two calls would be misattributed; Encrypt is only
used for small payloads and cross-provider re-wraps). Endpoints that return no
key material ids at all (older API versions, emulators) get ``"rotations:<n>"``,
``n`` being the number of rotations ListKeyRotations reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

from spark_kms.errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidCiphertextError,
    KeyErasedError,
    KeyNotFoundError,
    KeyStateError,
    KmsError,
    KmsUnavailableError,
    MissingExtraError,
    ThrottlingError,
)
from spark_kms.kms.base import DataKey, KeyDeletion, KeyDescription, KmsProvider, WrappedKey
from spark_kms.kms.registry import parse_key_uri

try:
    import boto3
    import botocore.credentials
    import botocore.exceptions
    import botocore.session
    from botocore.config import Config
except ImportError as _exc:  # pragma: no cover - exercised by a subprocess test
    raise MissingExtraError("the AWS KMS provider", "aws") from _exc

__all__ = ["AwsKmsProvider", "parse_aws_key_uri"]

T = TypeVar("T")

_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"(?P<kind>key|alias)/(?P<name>[A-Za-z0-9/_+=,.@-]+)$"
)
_KEY_ID_RE = re.compile(r"^(mrk-[0-9a-f]{32}|[0-9a-fA-F-]{36})$")
_ALIAS_RE = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")

# AWS error codes -> our errors. Anything else becomes a plain KmsError.
_NOT_FOUND = {"NotFoundException", "InvalidArnException"}
_DENIED = {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
           "IncompleteSignature", "ExpiredTokenException", "InvalidClientTokenId"}
_STATE = {"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"}
_BAD_CIPHERTEXT = {"InvalidCiphertextException", "IncorrectKeyException"}
_THROTTLED = {"ThrottlingException", "LimitExceededException", "RequestLimitExceeded",
              "TooManyRequestsException", "Throttling"}
_UNAVAILABLE = {"DependencyTimeoutException", "KMSInternalException", "ServiceUnavailable",
                "InternalFailure"}


def parse_aws_key_uri(key_uri: str) -> tuple[str, str | None]:
    """``aws-kms://...`` -> (the KeyId to send to KMS, the region named by an ARN or None).

    The KeyId is an ARN, ``alias/<name>`` or a key id, exactly as AWS accepts it.
    """
    ref = parse_key_uri(key_uri)[1] if "://" in key_uri else key_uri
    if ref.startswith("arn:"):
        m = _ARN_RE.match(ref)
        if not m:
            raise ConfigurationError(
                f"not an AWS KMS key ARN: {ref!r}; expected arn:aws:kms:<region>:<12-digit account>:key/<id> "
                "or ...:alias/<name>"
            )
        return ref, m.group("region")
    if ref.startswith("alias/"):
        if not _ALIAS_RE.match(ref) or ref.startswith("alias/aws/"):
            raise ConfigurationError(
                f"not a usable AWS KMS alias: {ref!r}; expected alias/<name> with letters, digits, / _ - "
                "(AWS managed aliases alias/aws/* cannot wrap data keys of your own)"
            )
        return ref, None
    if _KEY_ID_RE.match(ref):
        return ref, None
    raise ConfigurationError(
        f"an AWS KMS key URI is aws-kms://<key ARN>, aws-kms://alias/<name> or aws-kms://<key id>, got {key_uri!r}"
    )


class AwsKmsProvider(KmsProvider):
    """Envelope keys from AWS KMS: GenerateDataKey (AES_256) wraps each data key
    under the CMK with the encryption context; Decrypt and ReEncrypt pass it back.
    See the module docstring for URIs, options and what ``key_version`` holds."""

    scheme = "aws-kms"
    extra = "aws"
    secret_options = frozenset({"aws_secret_access_key", "aws_session_token"})

    def __init__(self, key_uri: str, **options: Any) -> None:
        super().__init__(key_uri, **options)
        self.key_ref, arn_region = parse_aws_key_uri(key_uri)
        region = options.get("region")
        if arn_region and region and region != arn_region:
            raise ConfigurationError(
                f"{key_uri}: the ARN names region {arn_region!r} but the 'region' option is {region!r}; "
                "drop the option or make them agree"
            )
        self.region: str | None = arn_region or region
        max_attempts = int(options.get("max_attempts", 5))
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {max_attempts}")
        mode = options.get("retry_mode", "standard")
        if mode not in ("standard", "adaptive"):
            raise ConfigurationError(f"retry_mode is 'standard' or 'adaptive', got {mode!r}")

    # -- client ----------------------------------------------------------------
    def _make_client(self) -> Any:
        opts = self.options
        session = boto3.session.Session(
            profile_name=opts.get("profile"),
            aws_access_key_id=opts.get("aws_access_key_id"),
            aws_secret_access_key=opts.get("aws_secret_access_key"),
            aws_session_token=opts.get("aws_session_token"),
            region_name=self.region,
        )
        if opts.get("role_arn"):
            session = self._assume_role_session(session)
        config = Config(
            retries={"mode": opts.get("retry_mode", "standard"), "total_max_attempts": int(opts.get("max_attempts", 5))},
            connect_timeout=float(opts.get("connect_timeout", 10)),
            read_timeout=float(opts.get("read_timeout", 30)),
        )
        try:
            return session.client("kms", endpoint_url=opts.get("endpoint_url"), config=config)
        except botocore.exceptions.NoRegionError as exc:
            raise ConfigurationError(
                f"{self.key_uri}: no AWS region; use an ARN key URI or the 'region' option"
            ) from exc

    def _assume_role_session(self, source: Any) -> Any:
        """A session whose credentials come from sts:AssumeRole and refresh before expiry."""
        opts = self.options
        sts = source.client("sts", endpoint_url=opts.get("sts_endpoint_url"), region_name=self.region)
        role_arn = str(opts["role_arn"])
        session_name = str(opts.get("role_session_name", "spark-kms"))

        def fetch() -> dict[str, Any]:
            try:
                creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)["Credentials"]
            except botocore.exceptions.ClientError as exc:
                raise AccessDeniedError(
                    f"could not assume role {role_arn} for AWS KMS key {self.key_ref} "
                    f"({exc.response.get('Error', {}).get('Code', 'error')})",
                    key_id=self.key_ref,
                    operation="AssumeRole",
                ) from exc
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
            metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
        )
        core = botocore.session.Session()
        # botocore has no public setter for refreshable credentials; this is the
        # documented-by-usage seam boto3 users rely on.
        core._credentials = credentials
        return boto3.session.Session(botocore_session=core, region_name=self.region)

    # -- error edge --------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[], T], key_id: str | None = None) -> T:
        key_id = key_id or self.key_ref
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            raise _translate(exc, operation, key_id) from exc
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as exc:
            raise KmsUnavailableError(
                f"AWS KMS could not be reached for {operation} on key {key_id} ({type(exc).__name__})",
                key_id=key_id, operation=operation,
            ) from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise AccessDeniedError(
                f"no AWS credentials found for {operation} on key {key_id}", key_id=key_id, operation=operation
            ) from exc
        except (botocore.exceptions.ProfileNotFound, botocore.exceptions.PartialCredentialsError) as exc:
            # Raised while the client is built (lazily, inside fn): the options, not the KMS, are wrong.
            raise ConfigurationError(
                f"{self.key_uri}: the AWS credential options are unusable ({type(exc).__name__}): name an "
                "existing profile, or give aws_access_key_id and aws_secret_access_key together"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            # Every other botocore failure still surfaces as a spark_kms error, never a vendor one.
            raise KmsError(
                f"AWS KMS {operation} on key {key_id} failed ({type(exc).__name__})", key_id=key_id, operation=operation
            ) from exc

    # -- key version ---------------------------------------------------------------
    def _current_version(self, key_id: str) -> str:
        """The current key material id, for responses that do not carry one."""
        meta = self._call("DescribeKey", lambda: self.client.describe_key(KeyId=key_id), key_id)["KeyMetadata"]
        if meta.get("CurrentKeyMaterialId"):
            return str(meta["CurrentKeyMaterialId"])
        return f"rotations:{len(self._rotations(key_id))}"

    def _rotations(self, key_id: str, include_all: bool = False) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"KeyId": key_id}
        if include_all:
            kwargs["IncludeKeyMaterial"] = "ALL_KEY_MATERIAL"
        out: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_key_rotations")
        for page in self._call("ListKeyRotations", lambda: list(paginator.paginate(**kwargs)), key_id):
            out.extend(page.get("Rotations", []))
        return out

    def _version_of(self, response: dict[str, Any], field: str, key_id: str) -> str:
        return str(response.get(field) or self._current_version(key_id))

    # -- the protocol ----------------------------------------------------------------
    def _generate_data_key(self, encryption_context: dict[str, str]) -> DataKey:
        resp = self._call(
            "GenerateDataKey",
            lambda: self.client.generate_data_key(
                KeyId=self.key_ref, KeySpec="AES_256", EncryptionContext=encryption_context
            ),
        )
        key_id = resp["KeyId"]
        wrapped = WrappedKey(bytes(resp["CiphertextBlob"]), key_id, self._version_of(resp, "KeyMaterialId", key_id))
        return DataKey(bytearray(resp["Plaintext"]), wrapped)

    def _encrypt(self, plaintext: bytes, encryption_context: dict[str, str]) -> WrappedKey:
        resp = self._call(
            "Encrypt",
            lambda: self.client.encrypt(KeyId=self.key_ref, Plaintext=plaintext, EncryptionContext=encryption_context),
        )
        key_id = resp["KeyId"]
        # Encrypt responses carry no KeyMaterialId (see the module docstring).
        return WrappedKey(bytes(resp["CiphertextBlob"]), key_id, self._current_version(key_id))

    def _decrypt(self, wrapped: WrappedKey, encryption_context: dict[str, str]) -> bytes | bytearray:
        key_id = wrapped.key_id or self.key_ref
        resp = self._call(
            "Decrypt",
            lambda: self.client.decrypt(
                CiphertextBlob=wrapped.ciphertext, KeyId=key_id, EncryptionContext=encryption_context
            ),
            key_id,
        )
        return bytearray(resp["Plaintext"])

    def _reencrypt(
        self,
        wrapped: WrappedKey,
        encryption_context: dict[str, str],
        destination: KmsProvider,
        destination_context: dict[str, str],
    ) -> WrappedKey:
        if not self._same_service(destination):
            return super()._reencrypt(wrapped, encryption_context, destination, destination_context)
        assert isinstance(destination, AwsKmsProvider)
        source_id = wrapped.key_id or self.key_ref
        # Server-side: the plaintext data key never leaves AWS KMS.
        resp = self._call(
            "ReEncrypt",
            lambda: self.client.re_encrypt(
                CiphertextBlob=wrapped.ciphertext,
                SourceKeyId=source_id,
                SourceEncryptionContext=encryption_context,
                DestinationKeyId=destination.key_ref,
                DestinationEncryptionContext=destination_context,
            ),
            source_id,
        )
        key_id = resp["KeyId"]
        return WrappedKey(
            bytes(resp["CiphertextBlob"]), key_id, self._version_of(resp, "DestinationKeyMaterialId", key_id)
        )

    def _same_service(self, other: KmsProvider) -> bool:
        """Whether this provider's client can ReEncrypt to ``other``'s key server-side."""
        return (
            isinstance(other, AwsKmsProvider)
            and other.options.get("endpoint_url") == self.options.get("endpoint_url")
            and (other.region or self.region) == (self.region or other.region)
        )

    def _describe_key(self) -> KeyDescription:
        meta = self._call("DescribeKey", lambda: self.client.describe_key(KeyId=self.key_ref))["KeyMetadata"]
        key_id = meta["Arn"]
        enabled = bool(meta.get("Enabled"))
        state = str(meta.get("KeyState", "Enabled"))
        try:
            rotations = self._rotations(key_id, include_all=True)
        except AccessDeniedError:
            rotations = []  # kms:ListKeyRotations is a separate permission
        primary = meta.get("CurrentKeyMaterialId") or f"rotations:{sum(1 for r in rotations if r.get('RotationDate'))}"
        version_state = "enabled" if enabled else _lower_state(state)
        versions = {str(r["KeyMaterialId"]): version_state for r in rotations if r.get("KeyMaterialId")}
        versions.setdefault(str(primary), version_state)
        level, detail = _protection(meta)
        return KeyDescription(
            key_id=key_id,
            primary_version=str(primary),
            enabled=enabled,
            state=_lower_state(state),
            versions=versions,
            extra={
                "key_spec": meta.get("KeySpec"),
                "key_manager": meta.get("KeyManager"),
                "origin": meta.get("Origin"),
                "custom_key_store_id": meta.get("CustomKeyStoreId"),
                "rotations": len([r for r in rotations if r.get("RotationDate")]),
                "deletion_date": _iso(meta.get("DeletionDate")),
            },
            protection_level=level,
            protection_detail=detail,
        )

    def _schedule_key_deletion(self, pending_days: int) -> KeyDeletion:
        """ScheduleKeyDeletion with PendingWindowInDays (7-30; needs kms:ScheduleKeyDeletion). The key is
        PendingDeletion until then (CancelKeyDeletion undoes it), then deleted for good."""
        if not 7 <= pending_days <= 30:
            raise ConfigurationError(f"{self.key_uri}: AWS KMS deletion waiting periods are 7 to 30 days, "
                                     f"got {pending_days}")
        try:
            resp = self._call("ScheduleKeyDeletion", lambda: self.client.schedule_key_deletion(
                KeyId=self.key_ref, PendingWindowInDays=pending_days))
        except KeyErasedError:  # already PendingDeletion: AWS refuses to schedule it again
            meta = self._call("DescribeKey", lambda: self.client.describe_key(KeyId=self.key_ref))["KeyMetadata"]
            return KeyDeletion(str(meta["Arn"]), _lower_state(str(meta.get("KeyState", "PendingDeletion"))),
                               _iso(meta.get("DeletionDate")), already=True)
        return KeyDeletion(str(resp["KeyId"]), _lower_state(str(resp.get("KeyState") or "PendingDeletion")),
                           _iso(resp.get("DeletionDate")))


def _iso(when: Any) -> str | None:
    """A boto3 timestamp (datetime, or epoch seconds) as ISO 8601 UTC, or None."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(float(when), timezone.utc)
    return when.astimezone(timezone.utc).isoformat()


def _protection(meta: Mapping[str, Any]) -> tuple[str, str]:
    """DescribeKey's ``Origin`` (and ``CustomKeyStoreId``) -> (protection level, AWS's words).

    AWS KMS has no software protection level: AWS states that the key material of every KMS key
    in its standard key store is generated and used only inside FIPS 140-3 validated HSMs
    (multi-tenant, run by AWS), imported material (``EXTERNAL``) included once imported. So
    ``AWS_KMS`` and ``EXTERNAL`` are ``hsm``; a CloudHSM custom key store (``AWS_CLOUDHSM``, the
    dedicated single-tenant cluster) is ``hsm`` too, told apart by the detail; an external key store
    (``EXTERNAL_KEY_STORE``, key material in a key manager outside AWS) is ``external``.
    """
    origin = str(meta.get("Origin") or "AWS_KMS")
    store = meta.get("CustomKeyStoreId")
    if origin == "EXTERNAL_KEY_STORE":
        return "external", "EXTERNAL_KEY_STORE" + (f" ({store})" if store else "")
    if origin == "AWS_CLOUDHSM":
        return "hsm", "AWS_CLOUDHSM" + (f" ({store})" if store else "")
    if origin == "EXTERNAL":
        return "hsm", "EXTERNAL (imported key material, FIPS 140-3 validated AWS KMS HSMs)"
    return "hsm", f"{origin} (FIPS 140-3 validated AWS KMS HSMs)"


def _lower_state(aws_state: str) -> str:
    return {
        "Enabled": "enabled",
        "Disabled": "disabled",
        "PendingDeletion": "pending_deletion",
        "PendingReplicaDeletion": "pending_deletion",
        "Unavailable": "unavailable",
        "PendingImport": "pending_import",
        "Creating": "creating",
        "Updating": "updating",
    }.get(aws_state, aws_state.lower())


def _translate(exc: Any, operation: str, key_id: str) -> KmsError:
    """A botocore ClientError -> the spark_kms error for it. AWS messages name
    keys and principals, never key material, so the code is enough context."""
    code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
    where = f"AWS KMS {operation} on key {key_id}"
    kwargs: dict[str, Any] = {"key_id": key_id, "operation": operation}
    if code in _NOT_FOUND:
        return KeyNotFoundError(f"AWS KMS key {key_id} not found ({code} in {operation})", **kwargs)
    if code in _DENIED:
        return AccessDeniedError(f"{where}: access denied ({code})", **kwargs)
    message = str(exc.response.get("Error", {}).get("Message", ""))
    if code == "KMSInvalidStateException" and "pending deletion" in message.lower():
        # AWS: "<key ARN> is pending deletion." -- scheduled for deletion, so what it wrapped is erased
        return KeyErasedError(f"{where}: the key is pending deletion; what it wrapped is erased "
                              f"(CancelKeyDeletion within the waiting period brings it back) ({code})", **kwargs)
    if code in _STATE:
        return KeyStateError(f"{where}: the key is not usable in its current state ({code})", **kwargs)
    if code in _BAD_CIPHERTEXT:
        return InvalidCiphertextError(
            f"{where}: the wrapped key does not unwrap (tampered, wrong key or wrong encryption context; {code})",
            **kwargs,
        )
    if code in _THROTTLED:
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        return ThrottlingError(
            f"{where}: still throttled after {int(attempts) + 1} attempts ({code}); lower the job's parallelism "
            "or raise the KMS request quota",
            **kwargs,
        )
    if code in _UNAVAILABLE:
        return KmsUnavailableError(f"{where}: the service is unavailable ({code})", **kwargs)
    return KmsError(f"{where} failed ({code})", **kwargs)
