"""AWS KMS key provider (``aws-kms://<key id, ARN or alias>``) through boto3."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError, DecryptionError, KeyProviderError
from ._provider import GeneratedDataKey, KeyProvider

if TYPE_CHECKING:
    from types_boto3_kms import KMSClient

CONTEXT_NAMESPACE = "temporal-shield:namespace"
"""Encryption-context key carrying the namespace; KMS refuses to unwrap for another."""
CONTEXT_FORMAT = "temporal-shield:format"
_FORMAT = "1"

# KMS answers that mean "this wrapped key is not valid for this key/context":
# indistinguishable from tampering, hence the opaque DecryptionError.
_INVALID = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


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
