"""AWS KMS key provider (``aws-kms://<key id, ARN or alias>``) through boto3."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._errors import ConfigError, DecryptionError, KeyProviderError
from ._provider import GeneratedDataKey, KeyProvider

if TYPE_CHECKING:
    from botocore.config import Config
    from types_boto3_kms import KMSClient

AWS_EXTRA = "pip install 'temporal-shield[aws]'"
"""How to install what :func:`require_aws` looks for."""


def require_aws(feature: str) -> None:
    """Check that the AWS SDK is installed before ``feature`` uses it.

    The default install leaves boto3 out (a worker with a local keyring never
    needs it), so every AWS feature calls this first, the way tink-py's
    ``awskms`` integration names its extra.

    Args:
        feature: What needs the SDK, for the message (e.g. ``"S3 offload"``).

    Raises:
        ImportError: boto3 is missing; the message names the extra to install
            and ``name`` is ``"boto3"``.
    """
    try:
        importlib.import_module("boto3")
    except ImportError:
        raise ImportError(f"{feature} needs the AWS SDK: {AWS_EXTRA}", name="boto3") from None


# Defaults for every AWS client we create (KMS and S3). botocore's own defaults
# (60 s connect, 60 s read, legacy retries: 5 attempts) hold a caller for about
# three minutes when an endpoint accepts connections and never answers.
DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds: an in-region or VPC endpoint connects in milliseconds; 2 s still
covers one lost SYN (Linux retransmits it after 1 s)."""
DEFAULT_READ_TIMEOUT = 5.0
"""Seconds between bytes of an answer: KMS answers in tens of milliseconds and
S3 streams continuously, so 5 s is two orders of magnitude of headroom."""
DEFAULT_MAX_ATTEMPTS = 3
"""Attempts per call, first one included: the standard retry mode rides out a
single throttle or dropped connection without multiplying a real outage."""


@dataclass(frozen=True, kw_only=True)
class AwsSettings:
    """How to reach an AWS service; unset fields fall back to the usual AWS configuration.

    One call takes at most about ``max_attempts * (connect_timeout +
    read_timeout)`` plus the standard mode's jittered back-off between attempts
    (under 1 s, then under 2 s, ...): about 24 s with the defaults against an
    endpoint that accepts connections and never answers, 9 s against an
    address that never accepts one.
    """

    region: str | None = None
    """AWS region (else ``AWS_REGION`` / profile)."""
    endpoint_url: str | None = None
    """Endpoint URL, e.g. a VPC endpoint or a local emulator."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    """Seconds to establish a connection."""
    read_timeout: float = DEFAULT_READ_TIMEOUT
    """Seconds to wait for (more of) an answer on an open connection."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Attempts per call including the first (botocore ``standard`` retry mode)."""

    def __post_init__(self) -> None:
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise ConfigError("AWS connect and read timeouts must be positive seconds")
        if self.max_attempts < 1:
            raise ConfigError("AWS max_attempts must be at least 1")
        if self.endpoint_url is not None and not _is_endpoint_url(self.endpoint_url):
            # botocore only says "Invalid endpoint" when the first client is made.
            raise ConfigError(
                "AWS endpoint URL must be an absolute http:// or https:// URL with a host"
            )


def _is_endpoint_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    clean = not any(ch.isspace() for ch in url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and clean


def aws_client_config(settings: AwsSettings) -> Config:
    """The botocore ``Config`` every AWS client of ours is created with.

    Pass it as ``boto3.client(service, config=aws_client_config(settings), ...)``
    so that a hung or unreachable endpoint fails within the bound that
    :class:`AwsSettings` documents instead of botocore's minutes.

    Raises:
        ImportError: boto3 (and so botocore) is not installed.
    """
    require_aws("an AWS client")
    from botocore.config import Config

    return Config(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
    )


def aws_client(service: str, settings: AwsSettings, *, feature: str) -> Any:
    """A boto3 client for ``service`` made with :func:`aws_client_config`.

    The one place our code creates AWS clients, so each gets the bounded
    timeouts and retries, and a missing ``[aws]`` extra is one clear error.

    Args:
        service: ``"kms"`` or ``"s3"``.
        settings: Region, endpoint and the time bounds.
        feature: What needs AWS, for the missing-extra message.

    Raises:
        ImportError: boto3 is not installed (the message names the extra).
        ConfigError: botocore cannot make the client from this configuration
            (no region anywhere, an unknown profile, an invalid region name).
    """
    require_aws(feature)
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.client(  # type: ignore[call-overload]
            service,
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            config=aws_client_config(settings),
        )
    except BotoCoreError as exc:
        # Nothing is sent while a client is made: this is the configuration
        # (botocore's messages name the setting, never a credential).
        raise ConfigError(f"AWS {service} client for {feature}: {exc}") from None


CONTEXT_NAMESPACE = "temporal-shield:namespace"
"""Encryption-context key carrying the namespace; KMS refuses to unwrap for another."""
CONTEXT_FORMAT = "temporal-shield:format"
_FORMAT = "1"

# KMS answers that mean "this wrapped key is not valid for this key/context":
# indistinguishable from tampering, hence the opaque DecryptionError.
_INVALID = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


MAX_CIPHERTEXT_BLOB = 6144
"""The largest ``CiphertextBlob`` KMS ``Decrypt`` accepts (AWS KMS API reference)."""


def _context(namespace: str) -> dict[str, str]:
    return {CONTEXT_NAMESPACE: namespace, CONTEXT_FORMAT: _FORMAT}


class AwsKmsKeyProvider(KeyProvider):
    """:class:`KeyProvider` backed by AWS KMS (GenerateDataKey / Decrypt).

    The encryption context carries the namespace, so KMS itself enforces the
    namespace binding and records it in CloudTrail. The primary key may be named by
    alias; aliases are resolved to key ARNs at construction (which also proves the
    credentials and endpoint work), and every ARN that the primary alias hands out
    later (after the alias is re-pointed for rotation) is allowed for decryption.
    """

    def __init__(
        self,
        primary: str | None,
        *,
        client: KMSClient,
        decrypt_keys: Iterable[str] = (),
    ) -> None:
        """Resolve the configured keys.

        Args:
            primary: Key id, ARN or ``alias/...`` that wraps new data keys; ``None``
                for a decrypt-only provider.
            client: A boto3 KMS client (its region, credentials and endpoint URL
                come from the usual AWS configuration or the caller).
            decrypt_keys: Further key ids/ARNs/aliases allowed to decrypt.

        Raises:
            ConfigError: a key cannot be resolved.
        """
        self._client = client
        self._primary = primary
        allowed = set()
        for key in [*([primary] if primary else []), *decrypt_keys]:
            allowed.add(self._resolve(key))
        self._allowed = allowed

    def _resolve(self, key: str) -> str:
        try:
            meta = self._client.describe_key(KeyId=key)["KeyMetadata"]
        except Exception as exc:
            raise ConfigError(f"cannot resolve KMS key {key!r}: {_code(exc)}") from None
        return meta["Arn"]

    @property
    def primary_key_id(self) -> str | None:
        """See base class; payloads record the resolved ARN, not this name."""
        return self._primary

    def can_decrypt(self, key_id: str) -> bool:
        """See base class."""
        return key_id in self._allowed

    async def generate_data_key(self, namespace: str) -> GeneratedDataKey:
        """See base class."""
        if self._primary is None:
            raise ConfigError("this KMS provider is decrypt-only")
        resp = await self._call(
            "generate_data_key",
            KeyId=self._primary,
            KeySpec="AES_256",
            EncryptionContext=_context(namespace),
        )
        arn = str(resp["KeyId"])
        # Alias re-pointing (rotation) hands out a new ARN: it is ours to decrypt.
        self._allowed.add(arn)
        return GeneratedDataKey(
            key_id=arn, wrapped=bytes(resp["CiphertextBlob"]), plaintext=bytes(resp["Plaintext"])
        )

    async def decrypt_data_key(self, key_id: str, wrapped: bytes, namespace: str) -> bytes:
        """See base class."""
        if not 0 < len(wrapped) <= MAX_CIPHERTEXT_BLOB:
            # KMS would answer ValidationException, which reads like an outage
            # (503 for the whole request); this is simply not a wrapped key.
            raise DecryptionError()
        resp = await self._call(
            "decrypt",
            KeyId=key_id,
            CiphertextBlob=wrapped,
            EncryptionContext=_context(namespace),
        )
        plaintext = bytes(resp["Plaintext"])
        if len(plaintext) != 32:
            raise DecryptionError()
        return plaintext

    async def check(self) -> None:
        """See base class: DescribeKey on the primary (no key material moves)."""
        if self._primary is not None:
            await self._call("describe_key", KeyId=self._primary)

    async def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await asyncio.to_thread(getattr(self._client, op), **kwargs)
        except Exception as exc:
            code = _code(exc)
            if code in _INVALID:
                raise DecryptionError() from None
            raise KeyProviderError(f"KMS {op} failed: {code}") from None
        return result


def _code(exc: Exception) -> str:
    """A log-safe description of a boto3 error: its error code or class name only."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__
