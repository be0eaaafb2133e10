"""The codec protocol's body: ``{"payloads": [{"metadata": {k: b64}, "data": b64}]}``.

This is the protobuf-JSON form of ``temporal.api.common.v1.Payloads`` that the
Web UI and the ``temporal`` CLI send and expect back. msgspec decodes and
encodes it against a typed schema, in C: base64 is checked strictly (standard
alphabet, padding required), a wrong type is an error naming its JSON path, and
unknown fields (``externalPayloads`` and future ones) are ignored, like the
protobuf parser's ``DiscardUnknown``. On this path the standard library's json
and base64 modules cost more than the decryption.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from temporal_shield.codec import ShieldError
from temporal_shield.converter import PayloadLike


class BadRequest(ShieldError):
    """The request is malformed (HTTP 400)."""


class TooLarge(ShieldError):
    """The request exceeds a size limit (HTTP 413)."""


class WirePayload(msgspec.Struct):
    """One payload as protobuf JSON; ``bytes`` fields travel as base64."""

    metadata: dict[str, bytes] = {}
    data: bytes = b""


class WireBody(msgspec.Struct):
    """A request or response body."""

    payloads: list[WirePayload] = []


_DECODER = msgspec.json.Decoder(WireBody)
_ENCODER = msgspec.json.Encoder()


def read_payloads(body: bytes, *, max_payloads: int, max_payload_bytes: int) -> list[WirePayload]:
    """Parse a request body into payloads, enforcing the per-request limits.

    The payloads stay in their wire form (a dict and bytes): building protobuf
    messages for them costs more than the rest of a pass-through.

    The body's own size is bounded before this is called (aiohttp's
    ``client_max_size``), so decoding first and counting afterwards is bounded too.

    Raises:
        BadRequest: not UTF-8, not JSON, nested too deeply, not the payloads
            shape, bad base64, too many payloads.
        TooLarge: a payload's data is over ``max_payload_bytes``.
    """
    try:
        # JSON is UTF-8 (RFC 8259), in fields msgspec skips as well; the check
        # runs at memory speed for the ASCII bodies real clients send.
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    try:
        doc = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f'body must be {{"payloads": [...]}} with base64 fields: {exc}') from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    if len(doc.payloads) > max_payloads:
        raise BadRequest(f"more than {max_payloads} payloads in one request")
    for item in doc.payloads:
        if len(item.data) > max_payload_bytes:
            raise TooLarge(f"a payload is over {max_payload_bytes} bytes")
    return doc.payloads


def write_payloads(payloads: Sequence[PayloadLike]) -> bytes:
    """Serialise payloads (wire form or :class:`Payload` messages) as a response body."""
    return _ENCODER.encode(WireBody([_wire(p) for p in payloads]))


def _wire(payload: PayloadLike) -> WirePayload:
    if isinstance(payload, WirePayload):
        return payload
    metadata = payload.metadata
    # A comprehension over the protobuf map: dict(map) goes through the slow
    # generic Mapping code.
    return WirePayload({k: metadata[k] for k in metadata}, payload.data)
