"""Seal and open payload bytes: compress, then AES-256-GCM under a cached data key."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from ._compression import Compression, CompressionConfig, compress, decompress
from ._datakeys import DataKey, DataKeyManager
from ._errors import ConfigError, DecryptionError, PayloadTooLargeError
from ._format import (
    FIXED_SIZE,
    NONCE_SIZE,
    V1_PREFIXES,
    Header,
    HeaderCache,
    origin_field,
    pack_fixed,
    parse,
)

_VIEW_FROM = 32 * 1024
_NONE = Compression.NONE  # an enum member lookup costs as much as a header field
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
            compression: Compression settings (default: zstd level 1 from 1 KiB).
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
        self._headers = HeaderCache()

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
        self._check_size(plaintext)
        key = await self.keys.encryption_key(namespace, len(plaintext))
        data = self._seal(key, plaintext, workflow_id, classification, origin)
        return Sealed(key.key_id, classification, data)

    def seal_cached(
        self,
        plaintext: bytes,
        *,
        namespace: str,
        workflow_id: str = "",
        classification: str = "",
    ) -> Sealed | None:
        """:meth:`seal` without a coroutine, when the namespace's data key is cached.

        Returns:
            What :meth:`seal` returns, or ``None`` when a new data key is needed
            (then call :meth:`seal`).

        Raises:
            PayloadTooLargeError: ``plaintext`` is over ``max_plaintext``.
        """
        found = self.seal_known(plaintext, namespace, workflow_id, classification)
        return None if found is None else Sealed(found[0].key_id, classification, found[1])

    def seal_known(
        self, plaintext: bytes, namespace: str, workflow_id: str, classification: str, /
    ) -> tuple[DataKey, bytes] | None:
        """:meth:`seal_cached` for the per-payload hot path (positional, a plain tuple).

        Returns:
            The data key used (its ``key_id`` goes to the metadata) and the
            sealed bytes, or ``None`` when a new data key is needed (then call
            :meth:`seal`).

        Raises:
            PayloadTooLargeError: ``plaintext`` is over ``max_plaintext``.
        """
        size = len(plaintext)
        if size > self.max_plaintext:
            self._check_size(plaintext)
        key = self.keys.cached_encryption_key(namespace, size)
        if key is None:
            return None
        return key, self._seal(key, plaintext, workflow_id, classification, b"")

    def _check_size(self, plaintext: bytes) -> None:
        if len(plaintext) > self.max_plaintext:
            raise PayloadTooLargeError(
                f"payload of {len(plaintext)} bytes exceeds the limit of {self.max_plaintext}"
            )

    def _seal(
        self, key: DataKey, plaintext: bytes, workflow_id: str, classification: str, origin: bytes
    ) -> bytes:
        # Once per payload: the header is joined from prebuilt parts in one go.
        size = len(plaintext)
        config = self.compression
        if config.enabled and size >= config.threshold:
            algorithm, body = compress(plaintext, config)
        else:
            algorithm, body = _NONE, plaintext
        nonce = self._random(NONCE_SIZE)
        if origin:
            fixed = pack_fixed(algorithm, size, origin=True)
            middle = key.header_middle(workflow_id, classification) + origin_field(origin)
        else:
            fixed = V1_PREFIXES[algorithm] + size.to_bytes(4, "big")
            middle = key.header_middle(workflow_id, classification)
        header = b"".join((fixed, middle, nonce))
        ciphertext = key.aead.encrypt(nonce, body, header + key.aad_suffix)
        return header + ciphertext

    async def open(
        self,
        data: bytes,
        *,
        key_id: str,
        namespace: str | None,
        workflow_id: str | None = None,
        classification: str | None = None,
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
            classification: The label the caller was told outside the envelope
                (the payload metadata's copy), if any: refused unless it is the
                authenticated one.
            parsed: Exactly ``parse(data)``, when the caller already parsed the
                header to inspect it. Its fields are used as given (the header
                bytes themselves are authenticated as AAD), so it must never come
                from anything but ``data``.

        Raises:
            DecryptionError: any authentication or format failure, a namespace,
                workflow or label mismatch, or an unknown/disallowed key id.
            KeyProviderError: the key provider failed.
        """
        header, offset = parsed or parse(data)
        self._check_binding(
            header.namespace,
            header.workflow_id,
            header.classification,
            header.original_length,
            namespace,
            workflow_id,
            classification,
        )
        key = self.keys.cached_decryption_key(
            key_id, header.wrapped_dek, header.namespace
        ) or await self.keys.decryption_key(key_id, header.wrapped_dek, header.namespace)
        if not hmac.compare_digest(key.commitment, header.commitment):
            raise DecryptionError()
        plaintext = self._decrypt(key, data, offset, header.compression, header.original_length)
        entry = self.keys.cache_entry(key_id, header.wrapped_dek, header.namespace)
        if entry is not None:
            self._headers.remember(header, data, offset, key_id.encode(), entry)
        return Opened(header, plaintext)

    def open_cached(
        self,
        data: bytes,
        *,
        key_id: str,
        namespace: str | None,
        workflow_id: str | None = None,
        classification: str | None = None,
    ) -> bytes | None:
        """:meth:`open` without a coroutine or a header parse, for the per-payload hot path.

        :meth:`open_known` with the key id and label as text.

        Returns:
            The plaintext, or ``None`` when the shortcut does not apply (then
            call :meth:`open`, which also reports malformed input).

        Raises:
            DecryptionError: as :meth:`open`.
        """
        # Sealed labels are ASCII: any other text must fail the comparison (as in
        # open()), never turn into a matching byte string.
        label = None if classification is None else classification.encode("utf-8", "surrogatepass")
        return self.open_known(data, key_id.encode(), label, namespace, workflow_id)

    def open_known(
        self,
        data: bytes,
        key_id: bytes,
        label: bytes | None,
        namespace: str | None,
        workflow_id: str | None,
        /,
    ) -> bytes | None:
        """:meth:`open` for a payload whose header middle opened here before.

        Applies when a payload with the same header middle (data key, namespace,
        workflow id, label) and the same key id opened here before and its data
        key is still cached. The checks are those of :meth:`open`: the binding
        checks run on every call, the key commitment was checked for this exact
        middle and data key when it was remembered, and every header byte is
        still authenticated as associated data. Arguments are the metadata's raw
        bytes (``label``: the classification metadata, ``None`` to not check it)
        and positional: this runs once per payload.

        Returns:
            The plaintext, or ``None`` when the shortcut does not apply (then
            call :meth:`open`, which also reports malformed input).

        Raises:
            DecryptionError: as :meth:`open`.
        """
        found = self._headers.known(data)
        if found is None:
            return None
        middle, entry = found
        keys = self.keys
        if key_id != middle.key_id or entry.expires <= keys.clock():
            return None
        original_length = int.from_bytes(data[5:FIXED_SIZE])
        if (
            (namespace is not None and middle.namespace != namespace)
            or (workflow_id is not None and middle.workflow_id not in ("", workflow_id))
            or (label is not None and middle.label != label)
            or original_length > self.max_plaintext
        ):
            raise DecryptionError()
        keys.hit(entry)
        return self._decrypt(entry.key, data, middle.offset, data[4], original_length)

    def parse(self, data: bytes) -> tuple[Header, int]:
        """:func:`~._format.parse`, from the header cache when it can (same result).

        Raises:
            DecryptionError: as :func:`~._format.parse`.
        """
        return self._headers.parse(data) or parse(data)

    def _check_binding(
        self,
        sealed_namespace: str,
        sealed_workflow_id: str,
        sealed_classification: str,
        original_length: int,
        namespace: str | None,
        workflow_id: str | None,
        classification: str | None,
    ) -> None:
        if (
            (namespace is not None and sealed_namespace != namespace)
            or (workflow_id is not None and sealed_workflow_id not in ("", workflow_id))
            or (classification is not None and sealed_classification != classification)
            or original_length > self.max_plaintext
        ):
            raise DecryptionError()

    @staticmethod
    def _decrypt(
        key: DataKey, data: bytes, offset: int, compression: int, original_length: int
    ) -> bytes:
        """Authenticate and decrypt ``data[offset:]`` (the commitment was checked)."""
        # A view instead of a copy of large ciphertexts: copying costs more than the
        # view's setup from tens of KiB, and at 1 MiB (with glibc's default malloc
        # thresholds) more than the decryption itself.
        ciphertext = data[offset:] if len(data) < _VIEW_FROM else memoryview(data)[offset:]
        try:
            body = key.aead.decrypt(
                data[offset - NONCE_SIZE : offset], ciphertext, data[:offset] + key.aad_suffix
            )
        except InvalidTag as exc:
            raise DecryptionError() from exc
        return decompress(compression, body, original_length)
