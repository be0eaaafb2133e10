"""The codec service: per-payload authorisation and decryption, independent of HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from temporalio.api.common.v1 import Payload

from temporal_shield.codec import KEY_ID_METADATA, DecryptionError
from temporal_shield.codec._format import MAGIC
from temporal_shield.converter import PayloadLike, ShieldCodec, ShieldConfig, is_encrypted

from ._config import ServerConfig
from ._grant import GrantLookup
from ._identity import Identity
from ._limits import (
    LIMIT_DATA_KEYS_PRINCIPAL,
    LIMIT_IN_FLIGHT,
    LIMIT_PAYLOAD_BYTES,
    LIMIT_REQUEST_BYTES,
    LIMIT_UNWRAPS_PRINCIPAL,
    LIMIT_UNWRAPS_REQUEST,
    Hold,
    InFlight,
    TokenBuckets,
)
from ._placeholder import STEP_UP_REASON, Notices, placeholder_in
from ._policy import UNCLASSIFIED, Policy
from ._wire import BadRequest, WirePayload

_LABEL = re.compile(r"[a-z0-9._-]{0,64}")
"""A classification label as the envelope writes it (see ``validate_classification``)."""

MEMORY_PER_DECODED_BYTE = 3
"""What one decoded byte costs in memory until its response is sent: the decoded
payload (1) and its share of the base64 JSON response body (4/3), with room
for the transient copy made while the message is parsed. Measured with
``bench/bench_soak.py`` (peak RSS against the in-flight budget)."""

YIELD_EVERY_BYTES = 1 << 20
"""Decoded bytes after which a request lets the event loop serve other callers."""


class Forbidden(Exception):
    """The caller may not perform this operation at all (HTTP 403)."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class RateLimited(Exception):
    """The caller used up a budget and the request cannot be served in part (HTTP 429)."""

    def __init__(self, message: str, *, retry_after: int, limit: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.outcome = outcome


@dataclass(slots=True)
class Outcome:
    """What happened to one request's payloads (feeds the audit record and metrics)."""

    decoded: int = 0
    denied: int = 0
    passed_through: int = 0
    """Payloads that are not temporal-shield envelopes, returned unchanged."""
    foreign: int = 0
    """Of those, other codecs' ``binary/encrypted`` payloads (e.g. Temporal's sample
    codec); the rest are plaintext."""
    failed: int = 0
    encoded: int = 0
    withheld: int = 0
    """Payloads returned unchanged because a budget (see ``_limits``) was used up."""
    placeholders: int = 0
    """Denied payloads answered with a readable placeholder (see ``_placeholder``)."""
    limits: dict[str, int] | None = None
    """Withheld payloads by budget name (``None`` when nothing was withheld)."""
    key_ids: set[str] = field(default_factory=set)
    classifications: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)
    grants: dict[str, str] | None = None
    """Grants that opened payloads: grant id -> its justification (``None``: none)."""

    @property
    def decision(self) -> str:
        """``allow`` (all permitted), ``partial`` or ``deny`` (nothing revealed)."""
        if self.denied == 0 and self.failed == 0 and self.withheld == 0:
            return "allow"
        return "partial" if self.decoded or self.encoded else "deny"

    def withhold(self, limit: str, reason: str) -> None:
        """Count one payload returned unchanged because budget ``limit`` is used up."""
        self.withheld += 1
        self.reasons.add(reason)
        if self.limits is None:
            self.limits = {}
        self.limits[limit] = self.limits.get(limit, 0) + 1


class CodecService:
    """Decides per payload who may read what, and decrypts what is allowed.

    Contract: :meth:`decode` returns exactly one payload per input, in order;
    payloads that are not temporal-shield envelopes (told by their bytes),
    payloads the caller may not or cannot read, and payloads over a budget
    (decoded bytes, KMS unwraps), are returned unchanged and counted. Every check that
    needs no key (namespace, policy, classification, size) runs before any
    KMS call, so a refused payload never costs one.
    """

    def __init__(
        self,
        codec: ShieldCodec,
        config: ShieldConfig,
        policy: Policy | None,
        limits: ServerConfig,
    ) -> None:
        """Create the service. ``policy=None`` allows everything (insecure dev only).

        ``limits`` are the server settings whose budgets apply (decoded bytes,
        unwraps, in-flight memory; see ``_limits``).
        """
        self._codec = codec
        self._config = config
        self._policy = policy
        self._limits = limits
        self._keys = codec.envelope.keys
        self._unwraps = TokenBuckets(
            limits.principal_unwraps_per_minute, limits.principal_unwrap_burst
        )
        self.in_flight = InFlight(
            limits.max_decoded_bytes_in_flight, limits.max_decoded_bytes_in_flight_per_caller
        )
        self.grants: GrantLookup | None = None
        """Just-in-time grants, consulted when the policy denies (set by the app)."""

    @property
    def policy(self) -> Policy | None:
        """The policy this service enforces (``None``: insecure dev)."""
        return self._policy

    def hold(self, identity: Identity) -> Hold:
        """A new, empty reservation for one request of ``identity``."""
        return Hold(self.in_flight, identity.subject)

    def _allowed(
        self, identity: Identity, namespace: str, operation: str, label: str, outcome: Outcome
    ) -> bool:
        if self._policy is None:
            return True
        decision = self._policy.decide(identity, namespace, operation, label)
        if decision.allowed:
            outcome.roles.add(decision.role)
        return decision.allowed

    def _granted(
        self, identity: Identity, namespace: str, classification: str, now: float, outcome: Outcome
    ) -> bool:
        """Whether a just-in-time grant opens what the policy denies (recorded in ``outcome``)."""
        if self.grants is None:
            return False
        grant = self.grants.find(identity, namespace, classification, now)
        # Checked again here: whatever the registry answers, a grant only ever
        # opens its own subject's, namespace's and classification's payloads,
        # and never past its expiry.
        if grant is None or not grant.covers(identity, namespace, classification, now):
            return False
        outcome.roles.add(f"grant:{grant.id}")
        if outcome.grants is None:
            outcome.grants = {}
        outcome.grants[grant.id] = grant.justification
        return True

    @staticmethod
    def _unmet(
        policy: Policy, identity: Identity, namespace: str, classification: str, now: float
    ) -> str:
        """What ``identity`` lacks for the step-up rules covering this payload (``""``: none)."""
        rules = policy.step_up_rules(namespace, classification)
        if not rules:
            return ""
        missing = list(dict.fromkeys(need for rule in rules for need in rule.unmet(identity, now)))
        return "; ".join(missing)

    @staticmethod
    def _notice(
        notices: Notices | None,
        payload: PayloadLike,
        hold: Hold,
        outcome: Outcome,
        reason: str,
        classification: str | None = None,
    ) -> PayloadLike:
        """What a denied payload is answered with: itself, or a readable placeholder."""
        if notices is None:
            return payload
        if classification is None:
            notice = notices.namespace(reason)
        else:
            notice = notices.denied(reason, classification)
        # A placeholder can be longer than the ciphertext it stands for: its
        # share of the response is held like a decoded payload's (and when the
        # budget is spent, the payload comes back unchanged: still denied).
        if not hold.take(len(notice.data) * MEMORY_PER_DECODED_BYTE):
            return payload
        outcome.placeholders += 1
        return notice

    async def decode(
        self,
        identity: Identity,
        namespace: str | None,
        payloads: Sequence[PayloadLike],
        hold: Hold | None = None,
        *,
        placeholders: bool = False,
        sign_in_url: str = "",
    ) -> tuple[list[PayloadLike], Outcome]:
        """Decode what ``identity`` may read; everything else comes back unchanged.

        With ``placeholders``, a payload the caller is denied (policy,
        namespace, step-up) comes back as a readable placeholder instead (see
        ``_placeholder``); ``sign_in_url`` (this server's ``/auth/login``, empty
        when sign-in is off) is offered there for a step-up.

        Unchanged payloads are the input objects themselves; decoded ones are
        in wire form. The memory each decoded payload will hold (until the
        caller sends the response and releases ``hold``) is reserved in
        ``hold``; a payload that does not fit comes back unchanged.

        Raises:
            KeyProviderError: the KMS failed (the whole request fails, 503).
        """
        outcome = Outcome()
        out: list[PayloadLike] = []
        allowed = self._allowed
        open_payload = self._codec.open
        open_known = self._codec.open_known
        parse_header = self._codec.envelope.parse
        limits = self._limits
        keys = self._keys
        policy = self._policy
        # Fixed for the request: step-up ages and grant expiry are judged at
        # one moment, never remembered beyond it.
        now = time.time()
        decoded_bytes = since_yield = unwraps = 0
        if hold is None:
            hold = self.hold(identity)
        notices = (
            Notices(policy, identity, namespace or "", sign_in_url, limits.public_url)
            if placeholders
            else None
        )
        for payload in payloads:
            if not is_encrypted(payload):
                outcome.passed_through += 1
                out.append(payload)
                continue
            data = payload.data
            if not data.startswith(MAGIC):
                # Ours by the bytes, not the label (as the workers decide). The
                # sample codec's payloads are not decrypted here: bound to no
                # namespace, they would let a caller read another namespace's.
                outcome.passed_through += 1
                outcome.foreign += 1
                out.append(payload)
                continue
            try:
                parsed = parse_header(data)
                key_id = payload.metadata[KEY_ID_METADATA].decode()
            except (DecryptionError, KeyError, UnicodeDecodeError):
                outcome.failed += 1
                outcome.reasons.add("malformed ciphertext")
                out.append(payload)
                continue
            header = parsed[0]
            label = header.classification
            if not _LABEL.fullmatch(label):
                # Writers only seal valid labels (``validate_classification``):
                # anything else is forged, and never reaches a record or a decision.
                outcome.failed += 1
                outcome.reasons.add("malformed ciphertext")
                out.append(payload)
                continue
            if not namespace or header.namespace != namespace:
                # Never even try to decrypt a payload bound to another namespace.
                reason = "namespace mismatch" if namespace else "namespace unknown"
                outcome.denied += 1
                outcome.reasons.add(reason)
                out.append(self._notice(notices, payload, hold, outcome, reason))
                continue
            classification = label or UNCLASSIFIED
            outcome.classifications.add(classification)
            if not allowed(identity, namespace, "decode", label, outcome) and not self._granted(
                identity, namespace, classification, now, outcome
            ):
                reason = f"classification {classification} not permitted"
                outcome.denied += 1
                outcome.reasons.add(reason)
                out.append(self._notice(notices, payload, hold, outcome, reason, classification))
                continue
            if policy is not None and policy.step_up:
                missing = self._unmet(policy, identity, namespace, classification, now)
                if missing:
                    reason = STEP_UP_REASON + missing
                    outcome.denied += 1
                    outcome.reasons.add(reason)
                    out.append(
                        self._notice(notices, payload, hold, outcome, reason, classification)
                    )
                    continue
            # The header's original length is what decoding would produce (it
            # is authenticated: a lie fails decryption). Check it before any key.
            size = header.original_length
            if size > limits.max_decoded_payload_bytes:
                outcome.withhold(LIMIT_PAYLOAD_BYTES, "decoded payload over the limit")
                out.append(payload)
                continue
            if decoded_bytes + size > limits.max_decoded_request_bytes:
                outcome.withhold(LIMIT_REQUEST_BYTES, "decoded request over the limit")
                out.append(payload)
                continue
            if keys.needs_unwrap(key_id, header.wrapped_dek, namespace):
                if unwraps >= limits.max_unwraps_per_request:
                    outcome.withhold(LIMIT_UNWRAPS_REQUEST, "KMS unwraps per request used up")
                    out.append(payload)
                    continue
                if not self._unwraps.take(identity.subject):
                    outcome.withhold(LIMIT_UNWRAPS_PRINCIPAL, "KMS unwraps per caller used up")
                    out.append(payload)
                    continue
                unwraps += 1
            if not hold.take(size * MEMORY_PER_DECODED_BYTE):
                outcome.withhold(LIMIT_IN_FLIGHT, "server decode capacity busy")
                out.append(payload)
                continue
            try:
                decoded = open_known(payload, namespace)
                if decoded is None:
                    decoded = await open_payload(payload, namespace=namespace, parsed=parsed)
            except DecryptionError:
                outcome.failed += 1
                outcome.reasons.add("ciphertext failed authentication")
                out.append(payload)
                continue
            outcome.decoded += 1
            outcome.key_ids.add(key_id)
            # In wire form at once: the protobuf message would otherwise stay
            # alive beside the bytes copied out of it for the response.
            metadata = decoded.metadata
            out.append(WirePayload({k: metadata[k] for k in metadata}, decoded.data))
            decoded_bytes += size
            since_yield += size
            if since_yield >= YIELD_EVERY_BYTES:
                # Decryption and decompression are synchronous: let the
                # event loop serve other callers between large payloads.
                since_yield = 0
                await asyncio.sleep(0)
        return out, outcome

    async def encode(
        self, identity: Identity, namespace: str | None, payloads: Sequence[PayloadLike]
    ) -> tuple[list[PayloadLike], Outcome]:
        """Encrypt payloads for ``namespace`` (e.g. a signal sent from the Web UI).

        Raises:
            BadRequest: a payload is a placeholder (see ``_placeholder``): it
                stands for data the caller could not read and must never be
                stored in its place.
            Forbidden: no namespace, or the caller may not encode there.
            RateLimited: a new data key is needed and the caller's KMS budget is used up.
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
        # After the permission check (looking for placeholders parses small
        # JSON payloads: not for callers who may not encode at all), before
        # any KMS call.
        if placeholder_in(payloads):
            raise BadRequest("placeholder payloads cannot be encoded")
        if self._keys.needs_data_key(namespace) and not self._unwraps.take(identity.subject):
            # Each new namespace mints a data key (a KMS call): budgeted per caller
            # like unwraps. Encode cannot hand payloads back unencrypted, so 429.
            outcome.denied = len(payloads)
            outcome.reasons.add("KMS data keys per caller used up")
            outcome.limits = {LIMIT_DATA_KEYS_PRINCIPAL: len(payloads)}
            raise RateLimited(
                "too many new data keys requested; retry later",
                retry_after=self._unwraps.retry_after(),
                limit=LIMIT_DATA_KEYS_PRINCIPAL,
                outcome=outcome,
            )
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
