"""Seal and open payload bytes: compress, then AES-256-GCM under a cached data key."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from ._compression import CompressionConfig, compress, decompress
from ._datakeys import DataKeyManager
from ._errors import ConfigError, DecryptionError, PayloadTooLargeError
from ._format import NONCE_SIZE, Header, origin_field, pack_fixed, parse

_CLASSIFICATION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def validate_classification(label: str) -> str:
    """Check a classification label: 0-64 chars of ``[a-z0-9._-]``.

    Raises:
        ConfigError: the label is not valid.
    """
    if len(label) > 64 or not set(label) <= _CLASSIFICATION_CHARS:
        raise ConfigError(f"invalid classification label {label!r}: use [a-z0-9._-], max 64")
    return label


class Sealed(NamedTuple):
    """The result of :meth:`Envelope.seal`: what goes into the outer payload."""

    key_id: str
    """Goes to the ``encryption-key-id`` metadata (authenticated)."""
    classification: str
    """Goes to the classification metadata when non-empty (authenticated)."""
    data: bytes
    """Header followed by ciphertext and tag."""


class Opened(NamedTuple):
    """The result of :meth:`Envelope.open`."""

    header: Header
    """The authenticated header."""
    plaintext: bytes
    """The inner bytes given to :meth:`Envelope.seal`."""


class Envelope:
    """Envelope encryption of byte strings (see ``docs/format.md``).

    Contract: :meth:`seal` never returns plaintext and raises instead when no key
    is available; :meth:`open` returns the exact bytes sealed, or raises the
    opaque :class:`DecryptionError` (or :class:`KeyProviderError` on an outage).
    """

    def __init__(
        self,
        keys: DataKeyManager,
        *,
        compression: CompressionConfig | None = None,
        max_plaintext: int = 64 * 1024 * 1024,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """Create an envelope.

        Args:
            keys: Data-key source.
            compression: Compression settings (default: zstd above 512 bytes).
            max_plaintext: Largest inner payload accepted on either side; also the
                ceiling for decompression.
            random: Nonce source (injectable for test vectors only).
        """
        if max_plaintext <= 0 or max_plaintext > 0xFFFFFFFF:
            raise ConfigError("max_plaintext must be in 1..2**32-1")
        self.keys = keys
        self.compression = compression or CompressionConfig()
        self.max_plaintext = max_plaintext
        self._random = random

    async def seal(
        self,
        plaintext: bytes,
        *,
        namespace: str,
        workflow_id: str = "",
        classification: str = "",
        origin: bytes = b"",
    ) -> Sealed:
        """Compress and encrypt ``plaintext``, bound to the namespace (and workflow id).

        ``origin`` (format version 2) records, authenticated, the SHA-256 of a
        stored object this payload replaces: see ``keys rewrap``.

        Raises:
            PayloadTooLargeError: ``plaintext`` is over ``max_plaintext``.
            KeyProviderError: no data key could be obtained.
        """
        if len(plaintext) > self.max_plaintext:
            raise PayloadTooLargeError(
                f"payload of {len(plaintext)} bytes exceeds the limit of {self.max_plaintext}"
            )
        algorithm, body = compress(plaintext, self.compression)
        key = await self.keys.encryption_key(namespace, len(plaintext))
        nonce = self._random(NONCE_SIZE)
        header = (
            pack_fixed(algorithm, len(plaintext), origin=bool(origin))
            + key.header_middle(workflow_id, classification)
            + origin_field(origin)
            + nonce
        )
        ciphertext = key.aead.encrypt(nonce, body, header + key.aad_suffix)
        return Sealed(key.key_id, classification, header + ciphertext)

    async def open(
        self,
        data: bytes,
        *,
        key_id: str,
        namespace: str | None,
        workflow_id: str | None = None,
        parsed: tuple[Header, int] | None = None,
    ) -> Opened:
        """Authenticate and decrypt ``data`` sealed under KEK ``key_id``.

        Args:
            data: Header and ciphertext, as produced by :meth:`seal`.
            key_id: The ``encryption-key-id`` metadata value.
            namespace: The namespace the caller is in. ``None`` only where the
                caller cannot know it; the header's own (authenticated) namespace
                is then used to unwrap the data key.
            workflow_id: The workflow the caller is acting for, if known. A payload
                strictly bound to another workflow is refused.
            parsed: Exactly ``parse(data)``, when the caller already parsed the
                header to inspect it. Its fields are used as given (the header
                bytes themselves are authenticated as AAD), so it must never come
                from anything but ``data``.

        Raises:
            DecryptionError: any authentication or format failure, a namespace or
                workflow mismatch, or an unknown/disallowed key id.
            KeyProviderError: the key provider failed.
        """
        header, offset = parsed or parse(data)
        if namespace is not None and header.namespace != namespace:
            raise DecryptionError()
        if header.workflow_id and workflow_id is not None and header.workflow_id != workflow_id:
            raise DecryptionError()
        if header.original_length > self.max_plaintext:
            raise DecryptionError()
        key = self.keys.cached_decryption_key(
            key_id, header.wrapped_dek, header.namespace
        ) or await self.keys.decryption_key(key_id, header.wrapped_dek, header.namespace)
        if not hmac.compare_digest(key.commitment, header.commitment):
            raise DecryptionError()
        try:
            body = key.aead.decrypt(header.nonce, data[offset:], data[:offset] + key.aad_suffix)
        except InvalidTag as exc:
            raise DecryptionError() from exc
        return Opened(header, decompress(header.compression, body, header.original_length))
