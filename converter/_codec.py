"""The Temporal :class:`PayloadCodec` that compresses and envelope-encrypts payloads."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, Self

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

from temporal_shield.codec import (
    CLASSIFICATION_METADATA,
    ENCODING,
    KEY_ID_METADATA,
    DecryptionError,
    Envelope,
    Header,
)

_MAX_TEMPLATES = 64
"""Bound on cached metadata templates: one per key id and label in use."""

Classifier = Callable[[str, str | None], str]
"""Maps (namespace, workflow id if known) to the classification label of a payload."""


class PayloadLike(Protocol):
    """What reading a payload needs: a ``Payload``, or the codec server's wire form."""

    @property
    def metadata(self) -> Mapping[str, bytes]:
        """The payload's metadata."""
        ...

    @property
    def data(self) -> bytes:
        """The payload's bytes."""
        ...


def is_encrypted(payload: PayloadLike) -> bool:
    """Whether ``payload`` carries the temporal-shield encoding."""
    return payload.metadata.get("encoding") == ENCODING


class ShieldCodec(PayloadCodec, WithSerializationContext):
    """Compress-then-encrypt codec bound to the namespace (and optionally workflow id).

    Contract:
        * :meth:`encode` returns exactly one encrypted payload per input, in order,
          or raises (``KeyProviderError``, ``PayloadTooLargeError``): it never
          returns a plaintext payload.
        * :meth:`decode` returns exactly one payload per input, in order. Payloads
          with another encoding (plaintext written before encryption was switched
          on, or by other codecs) pass through unchanged; encrypted payloads that
          fail to authenticate raise :class:`DecryptionError`.
        * Inputs are not mutated.

    The Temporal SDK calls :meth:`with_context` with the namespace and workflow id
    of each operation; payloads are bound to that namespace. Where the SDK has no
    context, the configured default namespace is used.
    """

    def __init__(
        self,
        envelope: Envelope,
        *,
        namespace: str,
        classifier: Classifier | None = None,
        strict_workflow_binding: bool = False,
    ) -> None:
        """Create a codec.

        Args:
            envelope: The encryption engine (keys, compression, limits).
            namespace: Namespace used when there is no serialization context.
            classifier: Chooses the classification label per namespace.
            strict_workflow_binding: Also bind payloads to their workflow id.
        """
        self.envelope = envelope
        self._templates: dict[tuple[str, str], Payload] = {}
        """Shared by the copies :meth:`with_context` makes."""
        self._classifier = classifier
        self._strict = strict_workflow_binding
        self._bind(namespace)

    def _bind(self, namespace: str, workflow_id: str | None = None) -> None:
        self._namespace = namespace
        self._workflow_id = workflow_id
        # Resolved once per binding, not once per payload.
        self._label = self._classifier(namespace, workflow_id) if self._classifier else ""

    @property
    def namespace(self) -> str:
        """The namespace payloads are bound to in the current context."""
        return self._namespace

    def with_context(self, context: SerializationContext) -> Self:
        """See :class:`WithSerializationContext`."""
        if isinstance(context, WorkflowSerializationContext | ActivitySerializationContext):
            bound = copy.copy(self)
            bound._bind(context.namespace or self._namespace, context.workflow_id or None)
            return bound
        return self

    def with_namespace(self, namespace: str) -> Self:
        """A copy bound to ``namespace`` (used by the plugin and the codec server)."""
        bound = copy.copy(self)
        bound._bind(namespace)
        return bound

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """See :class:`PayloadCodec`."""
        namespace = self._namespace
        label = self._label
        workflow_id = (self._workflow_id or "") if self._strict else ""
        seal_cached = self.envelope.seal_cached
        out = []
        for payload in payloads:
            plaintext = payload.SerializeToString()
            sealed = seal_cached(
                plaintext, namespace=namespace, workflow_id=workflow_id, classification=label
            ) or await self.envelope.seal(
                plaintext, namespace=namespace, workflow_id=workflow_id, classification=label
            )
            # Copying a prebuilt message is a third of the cost of building its
            # metadata map anew for every payload.
            encoded = Payload()
            encoded.CopyFrom(self._template(sealed.key_id, sealed.classification))
            encoded.data = sealed.data
            out.append(encoded)
        return out

    def _template(self, key_id: str, classification: str) -> Payload:
        """The metadata of payloads sealed under ``key_id`` with ``classification``."""
        found = self._templates.get((key_id, classification))
        if found is None:
            metadata = {"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}
            if classification:
                metadata[CLASSIFICATION_METADATA] = classification.encode()
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            found = self._templates[key_id, classification] = Payload(metadata=metadata)
        return found

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """See :class:`PayloadCodec`."""
        out = []
        for payload in payloads:
            # Read once: every access to a protobuf field builds a new wrapper.
            metadata = payload.metadata
            if metadata.get("encoding") != ENCODING:
                out.append(payload)
                continue
            decoded = self._open_cached(payload, metadata)
            if decoded is None:
                decoded = await self.open(
                    payload, namespace=self._namespace, workflow_id=self._workflow_id
                )
            out.append(decoded)
        return out

    async def decode_one(self, payload: Payload) -> Payload:
        """Decode a single payload (pass-through for foreign encodings)."""
        if not is_encrypted(payload):
            return payload
        return await self.open(payload, namespace=self._namespace, workflow_id=self._workflow_id)

    def _open_cached(self, payload: Payload, metadata: Mapping[str, bytes]) -> Payload | None:
        """:meth:`open` by :meth:`Envelope.open_cached`, or ``None`` where that does not apply."""
        key_id = metadata.get(KEY_ID_METADATA)
        if key_id is None:
            return None
        try:
            plaintext = self.envelope.open_cached(
                payload.data,
                key_id=key_id.decode(),
                namespace=self._namespace,
                workflow_id=self._workflow_id,
                classification=metadata.get(CLASSIFICATION_METADATA, b"").decode("ascii"),
            )
        except UnicodeDecodeError:
            return None  # refused by open(), with the same error as always
        return None if plaintext is None else _inner(plaintext)

    async def open(
        self,
        payload: PayloadLike,
        *,
        namespace: str,
        workflow_id: str | None = None,
        parsed: tuple[Header, int] | None = None,
    ) -> Payload:
        """Decrypt one encrypted payload bound to ``namespace``.

        For callers that decide per payload before decrypting (the codec server
        reads the classification from the header): ``parsed`` is exactly
        ``parse(payload.data)`` as they computed it, so it is not parsed twice.

        Raises:
            DecryptionError: authentication failed, wrong namespace, bad metadata.
            KeyProviderError: the key provider failed.
        """
        opened = await self.envelope.open(
            payload.data,
            key_id=_text(payload, KEY_ID_METADATA),
            namespace=namespace,
            workflow_id=workflow_id,
            # The metadata copy of the label must agree with the authenticated one.
            classification=payload.metadata.get(CLASSIFICATION_METADATA, b"").decode(
                "ascii", "replace"
            ),
            parsed=parsed,
        )
        return _inner(opened.plaintext)


def _inner(plaintext: bytes) -> Payload:
    try:
        return Payload.FromString(plaintext)
    except Exception as exc:  # protobuf's DecodeError: a buggy, not hostile, sender
        raise DecryptionError() from exc


def _text(payload: PayloadLike, key: str) -> str:
    raw = payload.metadata.get(key)
    if raw is None:
        raise DecryptionError()
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise DecryptionError() from exc
