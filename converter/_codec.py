"""The Temporal :class:`PayloadCodec` that compresses and envelope-encrypts payloads."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
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
    SampleKeys,
    ShieldError,
    is_envelope,
)
from temporal_shield.codec._format import MAGIC

from ._config import ShieldConfig

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
    """Whether ``payload`` carries the ``binary/encrypted`` label (ours or another codec's).

    The label is no proof: :func:`temporal_shield.codec.is_envelope` tells our
    envelopes apart by their bytes.
    """
    return payload.metadata.get("encoding") == ENCODING


class PlaintextRefusedError(ShieldError):
    """A payload that is not a temporal-shield envelope, where encryption is required.

    Raised on decode in namespaces matched by ``require_encryption``. It fails the
    workflow task (the SDK retries it and shows the failure), so a planted payload
    never reaches workflow code. The message names the namespace and the payload's
    ``encoding`` label, never its data.
    """

    def __init__(self, namespace: str, encoding: str) -> None:
        """Describe the refusal (``encoding`` is shown cut and escaped)."""
        super().__init__(
            f"refused a payload that is not a temporal-shield envelope "
            f"(encoding {encoding!r}) in namespace {namespace!r}, where encryption is "
            "required (require_encryption)"
        )
        self.namespace = namespace
        self.encoding = encoding


class ShieldCodec(PayloadCodec, WithSerializationContext):
    """Compress-then-encrypt codec bound to the namespace (and optionally workflow id).

    Contract:
        * :meth:`encode` returns exactly one encrypted payload per input, in order,
          or raises (``KeyProviderError``, ``PayloadTooLargeError``): it never
          returns a plaintext payload — except a codec made with
          ``read_only=True`` (roll-out stage 1), whose encode returns its inputs.
        * :meth:`decode` returns exactly one payload per input, in order. What is
          ours is told by the bytes (the envelope's magic), not by the label: our
          envelopes that fail to authenticate raise :class:`DecryptionError`.
          Everything else (plaintext written before encryption was switched on,
          other codecs' ``binary/encrypted`` payloads) passes through unchanged,
          except that Temporal's sample codec payloads are decrypted when
          ``sample_keys`` has their key id, and that in namespaces matched by
          ``require_encryption`` every non-envelope payload (sample ones
          included) raises :class:`PlaintextRefusedError`.
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
        require_encryption: Sequence[str] = (),
        sample_keys: SampleKeys | None = None,
        read_only: bool = False,
    ) -> None:
        """Create a codec.

        Args:
            envelope: The encryption engine (keys, compression, limits).
            namespace: Namespace used when there is no serialization context.
            classifier: Chooses the classification label per namespace.
            strict_workflow_binding: Also bind payloads to their workflow id.
            require_encryption: Namespace globs where decoding refuses every
                payload that is not a temporal-shield envelope.
            sample_keys: Reader of Temporal's sample codec payloads (migration;
                decrypt only).
            read_only: Roll-out stage 1: decode as usual, encode nothing (see
                ``ShieldConfig.read_only``).
        """
        self.envelope = envelope
        self._templates: dict[tuple[str, str], Payload] = {}
        """Shared by the copies :meth:`with_context` makes."""
        self._classifier = classifier
        self._strict = strict_workflow_binding
        self._require = tuple(require_encryption)
        self._sample_keys = sample_keys
        self.read_only = read_only
        self._bind(namespace)

    def _bind(self, namespace: str, workflow_id: str | None = None) -> None:
        self._namespace = namespace
        self._workflow_id = workflow_id
        # Resolved once per binding, not once per payload.
        self._label = self._classifier(namespace, workflow_id) if self._classifier else ""
        self._refuse = any(fnmatch.fnmatchcase(namespace, glob) for glob in self._require)

    @property
    def requires_encryption(self) -> bool:
        """Whether decoding in the current namespace refuses non-envelope payloads."""
        return self._refuse

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
        if self.read_only:
            return list(payloads)
        namespace = self._namespace
        label = self._label
        workflow_id = (self._workflow_id or "") if self._strict else ""
        seal_known = self.envelope.seal_known
        out = []
        for payload in payloads:
            plaintext = payload.SerializeToString()
            found = seal_known(plaintext, namespace, workflow_id, label)
            if found is None:
                sealed = await self.envelope.seal(
                    plaintext, namespace=namespace, workflow_id=workflow_id, classification=label
                )
                key_id, data = sealed.key_id, sealed.data
            else:
                key_id, data = found[0].key_id, found[1]
            # Copying a prebuilt message is a third of the cost of building its
            # metadata map anew for every payload.
            encoded = Payload()
            encoded.CopyFrom(self._template(key_id, label))
            encoded.data = data
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
        # Whether anything but our envelopes needs a look (else: as it is).
        inspect = self._refuse or self._sample_keys is not None
        open_known = self.envelope.open_known
        namespace = self._namespace
        workflow_id = self._workflow_id
        for payload in payloads:
            # Read once: every access to a protobuf field builds a new wrapper.
            metadata = payload.metadata
            if metadata.get("encoding") != ENCODING:
                out.append(self._not_ours(payload, metadata) if inspect else payload)
                continue
            data = payload.data
            key_id = metadata.get(KEY_ID_METADATA)
            plaintext = (
                None
                if key_id is None
                else open_known(
                    data,
                    key_id,
                    metadata.get(CLASSIFICATION_METADATA, b""),
                    namespace,
                    workflow_id,
                )
            )
            if plaintext is None:
                # Ours by the bytes (the label is shared with other codecs). Asked
                # only here: a payload that opened by the shortcut is ours, its
                # magic and its remembered header middle authenticated.
                if data[:2] != MAGIC or (
                    self._sample_keys is not None and self._sample_ciphertext(metadata, data)
                ):
                    out.append(self._not_ours(payload, metadata, data))
                else:
                    out.append(
                        await self.open(payload, namespace=namespace, workflow_id=workflow_id)
                    )
                continue
            out.append(_inner(plaintext))
        return out

    async def decode_one(self, payload: Payload) -> Payload:
        """Decode a single payload (the rules of :meth:`decode`)."""
        return (await self.decode([payload]))[0]

    def _sample_ciphertext(self, metadata: Mapping[str, bytes], data: bytes) -> bool:
        """Whether a payload that starts with our magic is in fact the sample codec's.

        One sample nonce in 65,536 starts with the two magic bytes: such a payload
        under a sample key id that is not a well-formed envelope is the sample's.
        """
        assert self._sample_keys is not None
        key_id = metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        return key_id in self._sample_keys and not is_envelope(data)

    def _not_ours(
        self, payload: Payload, metadata: Mapping[str, bytes], data: bytes | None = None
    ) -> Payload:
        """A payload that is not our envelope: refused, read by the sample reader, or as is.

        Raises:
            PlaintextRefusedError: encryption is required in this namespace.
            DecryptionError: a sample codec payload under a configured key id
                did not authenticate, or holds no payload.
        """
        encoding = metadata.get("encoding", b"")
        if self._refuse:
            # Sample payloads too: a static key binds them to no namespace or
            # workflow, so they could be copied anywhere (docs/operations.md).
            shown = encoding[:64].decode("ascii", "backslashreplace")
            raise PlaintextRefusedError(self._namespace, shown)
        sample_keys = self._sample_keys
        if sample_keys is not None and encoding == ENCODING:
            key_id = metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
            if key_id in sample_keys:
                return _inner(sample_keys.open(key_id, payload.data if data is None else data))
        return payload

    def open_known(self, payload: PayloadLike, namespace: str, /) -> Payload | None:
        """:meth:`open` without a coroutine, by :meth:`Envelope.open_known`, or ``None``.

        ``None`` where that shortcut does not apply: then call :meth:`open`.

        Raises:
            DecryptionError: as :meth:`open`.
        """
        metadata = payload.metadata
        key_id = metadata.get(KEY_ID_METADATA)
        if key_id is None:
            return None
        plaintext = self.envelope.open_known(
            payload.data, key_id, metadata.get(CLASSIFICATION_METADATA, b""), namespace, None
        )
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


def sample_keys(config: ShieldConfig) -> SampleKeys | None:
    """The sample codec reader ``keys.sample_keys_file`` names, if any.

    Raises:
        ConfigError: the file is missing, not 0600, or malformed.
    """
    path = config.keys.sample_keys_file
    return SampleKeys.load(Path(path).expanduser()) if path else None


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
