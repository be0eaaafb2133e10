"""The codec service: per-payload authorisation and decryption, independent of HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from temporalio.api.common.v1 import Payload

from temporal_shield.codec import DecryptionError, parse
from temporal_shield.converter import PayloadLike, ShieldCodec, ShieldConfig, is_encrypted

from ._identity import Identity
from ._policy import Policy


class Forbidden(Exception):
    """The caller may not perform this operation at all (HTTP 403)."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(slots=True)
class Outcome:
    """What happened to one request's payloads (feeds the audit record and metrics)."""

    decoded: int = 0
    denied: int = 0
    passed_through: int = 0
    failed: int = 0
    encoded: int = 0
    key_ids: set[str] = field(default_factory=set)
    classifications: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)

    @property
    def decision(self) -> str:
        """``allow`` (all permitted), ``partial`` or ``deny`` (nothing revealed)."""
        if self.denied == 0 and self.failed == 0:
            return "allow"
        return "partial" if self.decoded or self.encoded else "deny"


class CodecService:
    """Decides per payload who may read what, and decrypts what is allowed.

    Contract: :meth:`decode` returns exactly one payload per input, in order;
    payloads the caller may not or cannot read are returned unchanged.
    """

    def __init__(self, codec: ShieldCodec, config: ShieldConfig, policy: Policy | None) -> None:
        """Create the service. ``policy=None`` allows everything (insecure dev only)."""
        self._codec = codec
        self._config = config
        self._policy = policy

    def _allowed(
        self, identity: Identity, namespace: str, operation: str, label: str, outcome: Outcome
    ) -> bool:
        if self._policy is None:
            return True
        decision = self._policy.decide(identity, namespace, operation, label)
        if decision.allowed:
            outcome.roles.add(decision.role)
        return decision.allowed

    async def decode(
        self, identity: Identity, namespace: str | None, payloads: Sequence[PayloadLike]
    ) -> tuple[list[PayloadLike], Outcome]:
        """Decode what ``identity`` may read; everything else comes back unchanged.

        Unchanged payloads are the input objects themselves; decoded ones are
        :class:`Payload` messages.

        Raises:
            KeyProviderError: the KMS failed (the whole request fails, 503).
        """
        outcome = Outcome()
        out: list[PayloadLike] = []
        allowed = self._allowed
        open_payload = self._codec.open
        for payload in payloads:
            if not is_encrypted(payload):
                outcome.passed_through += 1
                out.append(payload)
                continue
            try:
                parsed = parse(payload.data)
            except DecryptionError:
                outcome.failed += 1
                outcome.reasons.add("malformed ciphertext")
                out.append(payload)
                continue
            header = parsed[0]
            outcome.classifications.add(header.classification or "unclassified")
            if not namespace or header.namespace != namespace:
                # Never even try to decrypt a payload bound to another namespace.
                outcome.denied += 1
                outcome.reasons.add("namespace mismatch" if namespace else "namespace unknown")
                out.append(payload)
                continue
            if not allowed(identity, namespace, "decode", header.classification, outcome):
                outcome.denied += 1
                outcome.reasons.add(
                    f"classification {header.classification or 'unclassified'} not permitted"
                )
                out.append(payload)
                continue
            try:
                decoded = await open_payload(payload, namespace=namespace, parsed=parsed)
            except DecryptionError:
                outcome.failed += 1
                outcome.reasons.add("ciphertext failed authentication")
                out.append(payload)
                continue
            outcome.decoded += 1
            outcome.key_ids.add(
                payload.metadata.get("encryption-key-id", b"").decode(errors="replace")
            )
            out.append(decoded)
        return out, outcome

    async def encode(
        self, identity: Identity, namespace: str | None, payloads: Sequence[PayloadLike]
    ) -> tuple[list[PayloadLike], Outcome]:
        """Encrypt payloads for ``namespace`` (e.g. a signal sent from the Web UI).

        Raises:
            Forbidden: no namespace, or the caller may not encode there.
            KeyProviderError: the KMS failed.
        """
        outcome = Outcome()
        if not namespace:
            outcome.denied = len(payloads)
            outcome.reasons.add("namespace unknown")
            raise Forbidden(
                "encode needs a namespace (X-Namespace header or /{namespace}/encode)", outcome
            )
        label = self._config.classification.label_for(namespace)
        outcome.classifications.add(label or "unclassified")
        if not self._allowed(identity, namespace, "encode", label, outcome):
            outcome.denied = len(payloads)
            outcome.reasons.add("encode not permitted")
            raise Forbidden(f"not permitted to encode in namespace {namespace}", outcome)
        messages = [
            p if isinstance(p, Payload) else Payload(metadata=p.metadata, data=p.data)
            for p in payloads
        ]
        encoded: list[PayloadLike] = list(
            await self._codec.with_namespace(namespace).encode(messages)
        )
        outcome.encoded = len(encoded)
        outcome.key_ids.update(p.metadata["encryption-key-id"].decode() for p in encoded)
        return encoded, outcome
