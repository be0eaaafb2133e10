"""Readable denials: a ``json/plain`` payload in place of one the caller may not read.

The Web UI renders a ``json/plain`` payload as JSON and anything else as a
base64 string, which a person cannot tell from corrupt data. A placeholder
says, in the UI's own rendering, that a payload is withheld, why, and what
would allow it::

    {"temporal-shield": "withheld",
     "reason": "classification pci not permitted",
     "namespace": "prod-payments",
     "classification": "pci",
     "how to get access": ["Ask for one of these roles: finance"]}

It names only what the caller could already see (the namespace they asked
for, the classification label that travels in clear in the envelope header)
and what the policy would accept; never a key id, a size, another
namespace's name or any decrypted byte.

A placeholder is marked in its metadata (:data:`PLACEHOLDER_METADATA`) so that
it can never be mistaken for data: ``/encode`` refuses it (see
:func:`is_placeholder`), or a UI that sends a displayed payload back (a
signal, "start a workflow like this one") would store the notice in place of
the real value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from temporal_shield.converter import PayloadLike

from ._wire import WirePayload

PLACEHOLDER_METADATA = "temporal-shield-placeholder"
"""Metadata key that marks a placeholder (value ``b"withheld"``)."""
PLACEHOLDER_VALUE = b"withheld"
PLACEHOLDER_TAG = "temporal-shield"
"""The JSON key every placeholder starts with (value ``"withheld"``)."""
PLACEHOLDER_TEXT_LIMIT = 512
"""Longest text field a placeholder carries (a namespace comes from a request header)."""
PLACEHOLDER_REMEDY_LIMIT = 8
"""Most remedies a placeholder lists."""
_SCAN_LIMIT = 64 * 1024
"""Largest data :func:`is_placeholder` parses as JSON: far above any placeholder,
even re-indented by a UI, and a bound on what a hostile ``/encode`` costs."""
_ENCODING = b"json/plain"


def placeholder(
    *,
    namespace: str,
    reason: str,
    classification: str | None,
    remedies: Sequence[str],
) -> WirePayload:
    """A readable stand-in for a payload the caller may not read.

    Args:
        namespace: The namespace the caller asked about (empty: left out).
        reason: Why the payload is withheld, e.g. ``"step-up required: amr mfa"``.
        classification: The payload's classification label (``None``: left out,
            e.g. for a payload bound to another namespace).
        remedies: What would allow it, one sentence each (roles, a sign-in URL,
            the grant request command); at most :data:`PLACEHOLDER_REMEDY_LIMIT`.

    Returns:
        A ``json/plain`` payload marked with :data:`PLACEHOLDER_METADATA`.
    """
    doc: dict[str, object] = {PLACEHOLDER_TAG: "withheld", "reason": _cut(reason)}
    if namespace:
        doc["namespace"] = _cut(namespace)
    if classification is not None:
        doc["classification"] = _cut(classification or "unclassified")
    doc["how to get access"] = [_cut(r) for r in remedies[:PLACEHOLDER_REMEDY_LIMIT]]
    # ASCII-only JSON: a namespace header's undecodable bytes arrive as lone
    # surrogates, which must become escapes rather than invalid UTF-8.
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
    return WirePayload({"encoding": _ENCODING, PLACEHOLDER_METADATA: PLACEHOLDER_VALUE}, data)


def is_placeholder(payload: PayloadLike) -> bool:
    """Whether ``payload`` is (or was) a placeholder and must never be encoded.

    Recognised by its marker, whatever the key's case (metadata keys are exact
    protobuf map keys, but a look-alike key has no business on a payload to
    encode either), and by its content: a UI that displays a placeholder and
    sends the text back (``json/plain``, marker gone) sends a JSON object whose
    ``"temporal-shield"`` member is ``"withheld"``.
    """
    metadata = payload.metadata
    if PLACEHOLDER_METADATA in metadata:
        return True
    for key in metadata:
        if key.strip().lower() == PLACEHOLDER_METADATA:
            return True
    return _marked(payload.data)


def _marked(data: bytes) -> bool:
    if len(data) > _SCAN_LIMIT or not data:
        return False  # far larger than any placeholder
    try:
        # Any bytes: json.loads also reads a BOM, UTF-16 and UTF-32, and stops
        # at the first byte that is not JSON.
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return False
    # The notice itself, or the notice as the single value of a list (a UI's
    # input field holds a workflow's arguments as one JSON array).
    items = doc if isinstance(doc, list) else [doc]
    return any(isinstance(item, dict) and item.get(PLACEHOLDER_TAG) == "withheld" for item in items)


def _cut(text: str) -> str:
    if len(text) <= PLACEHOLDER_TEXT_LIMIT:
        return text
    return text[:PLACEHOLDER_TEXT_LIMIT] + "...[truncated]"
