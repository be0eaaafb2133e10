"""The aiohttp application: protocol, CORS, limits, authentication, audit.

Every route handler is wrapped by :func:`_edge`, which does the work every
response needs (a request id and start time, CORS headers on every response
including errors, one JSON error shape), and a catch-all route answers what no
other route does, so aiohttp never answers on its own. Authentication,
authorisation and audit happen in the codec handler, the only route that
reveals data; health and metrics routes reveal none.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientPayloadError, HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EofStream
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from opentelemetry.sdk.trace import SpanProcessor

from temporal_shield.codec import KeyProvider, KeyProviderError, ShieldError
from temporal_shield.converter import (
    PayloadLike,
    ShieldCodec,
    ShieldConfig,
    build_codec,
    is_encrypted,
)

from ._audit import AuditError, AuditLog
from ._auth import Authenticator, AuthError
from ._authn import identify
from ._config import ServerConfig
from ._grants import install as install_grants
from ._http import DIRECT_ROUTES
from ._identity import Identity
from ._limits import Hold
from ._placeholder import placeholder
from ._policy import Policy
from ._service import MEMORY_PER_DECODED_BYTE, CodecService, Forbidden, Outcome, RateLimited
from ._signin import IdpUnavailable, SignIn, SignInError
from ._signin import install as install_sign_in
from ._telemetry import TRACE_ID, Telemetry
from ._wire import BadRequest, TooLarge, read_payloads, write_payloads

AUDIT_TEXT_LIMIT = 256
"""Longest free-text field (from headers or token claims) an audit record keeps."""
AUDIT_LIST_LIMIT = 16
"""Most entries a list field of an audit record keeps (the rest are counted):
a record's size must not grow with what one request sends."""


class BodyUnreadable(BadRequest):
    """The request body could not be read (HTTP 400, and the connection is closed)."""


class ServerBusy(ShieldError):
    """The memory budget for requests in flight is spent (HTTP 503, retry soon)."""


class UnsupportedEncoding(ShieldError):
    """The body declares a content coding (HTTP 415): never inflated, never read."""


class BodyTimeout(ShieldError):
    """The request body did not arrive within ``body_read_timeout`` (HTTP 408)."""


log = logging.getLogger("temporal_shield.server")

ALLOW_HEADERS = "content-type, x-namespace, authorization, authorization-extras"


@dataclass
class State:
    """Everything the handlers share, stored under :data:`STATE`."""

    config: ServerConfig
    shield: ShieldConfig
    codec: ShieldCodec
    service: CodecService
    authenticator: Authenticator | None
    audit: AuditLog | None
    telemetry: Telemetry
    readiness: _Readiness
    claims: tuple[str, str] = ("groups", "permissions")
    """The policy's groups and permissions claim names (for every sign-in path)."""
    sign_in: SignIn | None = None
    """Sign-in at this server (``None``: bearer tokens only)."""
    temporal_env: Mapping[str, str] | None = None
    """Environment the grant service reads its Temporal connection from
    (``None``: the process environment)."""


STATE: web.AppKey[State] = web.AppKey("temporal_shield_state", State)
Handler = Callable[[web.Request, State], Awaitable[web.StreamResponse]]
"""A route handler: the request and the application's :class:`State`."""
REQUEST_ID = web.RequestKey("temporal_shield_request_id", str)
STARTED = web.RequestKey("temporal_shield_started", float)
DECISION = web.RequestKey("temporal_shield_decision", str)

# Request ids only need to be unique, not secret: a random per-process prefix
# and a counter (a uuid4 per request costs a getrandom() system call).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def _error(status: int, code: str, message: str, request: web.Request) -> web.Response:
    return web.json_response(
        {"error": code, "message": message, "request_id": request.get(REQUEST_ID, "")},
        status=status,
    )


@dataclass(frozen=True)
class _Refusal:
    """How one kind of refusal is answered (and audited: 5xx as errors, 4xx as denials)."""

    status: int
    code: str
    close: bool = False
    """The body was not (fully) read: the connection cannot go on."""


_REFUSALS: tuple[tuple[type[Exception], _Refusal], ...] = (
    (AuthError, _Refusal(401, "unauthorized")),
    (SignInError, _Refusal(400, "sign_in_failed")),
    (IdpUnavailable, _Refusal(503, "idp_unavailable")),
    (Forbidden, _Refusal(403, "forbidden")),
    (ServerBusy, _Refusal(503, "server_busy", close=True)),
    (UnsupportedEncoding, _Refusal(415, "unsupported_media_type", close=True)),
    # The rest of such a body is unusable: closing beats letting the server try
    # to drain it (which would fail the same way).
    (BodyTimeout, _Refusal(408, "request_timeout", close=True)),
    (BodyUnreadable, _Refusal(400, "bad_request", close=True)),
    (BadRequest, _Refusal(400, "bad_request")),
    (TooLarge, _Refusal(413, "too_large", close=True)),
    (RateLimited, _Refusal(429, "rate_limited")),
    (AuditError, _Refusal(503, "audit_unavailable")),
    (KeyProviderError, _Refusal(503, "kms_unavailable")),
)
"""Every refusal we raise, most specific first: one table for the answer and the record."""


def _refusal(exc: Exception) -> _Refusal | None:
    for kind, refusal in _REFUSALS:
        if isinstance(exc, kind):
            return refusal
    return None


def _map_error(exc: Exception, request: web.Request) -> web.Response:
    """One JSON shape for every failure; never a stack trace, never a secret."""
    if isinstance(exc, web.HTTPException):  # raised by aiohttp itself (404, 405, 413)
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, request)
    refusal = _refusal(exc)
    if refusal is None:
        # Type and location only: an exception message could carry payload data.
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        log.error(
            "unhandled %s at %s in request %s", type(exc).__name__, where, request.get(REQUEST_ID)
        )
        return _error(500, "internal", "internal error", request)
    message = str(exc)
    if isinstance(exc, AuditError):
        log.error("audit sink failed; refusing to return data")
        message = "audit log unavailable; no data returned"
    response = _error(refusal.status, refusal.code, message, request)
    if isinstance(exc, ServerBusy):
        response.headers["Retry-After"] = "1"
    elif isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    if refusal.close:
        response.force_close()
    return response


def _edge(handler: Handler, state: State) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a route handler: request id and timing, CORS on every response, error mapping.

    A wrapper applied when routes are added rather than an aiohttp middleware:
    aiohttp's middleware chain costs about 5 µs of CPU per request (measured
    under load), as much as a decryption, and every route here is ours anyway.
    The application's state is bound here, once, rather than looked up per
    request (``request.app`` goes through the route's match info).
    """
    config = state.config

    async def edge(request: web.Request) -> web.StreamResponse:
        request[REQUEST_ID] = request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        request[STARTED] = time.perf_counter()
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in config.cors_origins
        response: web.StreamResponse
        if request.method == "OPTIONS":
            if not allowed:
                response = _error(403, "cors", "origin not allowed", request)
            else:
                response = web.Response(status=204)
                response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
                response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
                response.headers["Access-Control-Max-Age"] = "600"
        else:
            try:
                response = await handler(request, state)
            except Exception as exc:
                response = _map_error(exc, request)
        headers = response.headers
        headers["X-Request-Id"] = request_id
        if config.cors_origins:  # only then does a response depend on the Origin header
            headers["Vary"] = "Origin"
        if allowed:
            assert origin is not None
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = "X-Request-Id"
            if config.cors_credentials:
                headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return edge


_ENDPOINTS = frozenset(
    {"decode", "encode", "download", "healthz", "readyz", "metrics", "logout", "grants"}
)


async def fallback(request: web.Request, state: State) -> web.StreamResponse:
    """Whatever no other route takes: 405 for a known endpoint, else 404 (as JSON)."""
    if request.path.rstrip("/").rsplit("/", 1)[-1] in _ENDPOINTS:
        return _error(405, "method_not_allowed", "Method Not Allowed", request)
    return _error(404, "not_found", "Not Found", request)


def _namespace(request: web.Request) -> str | None:
    header = request.headers.get("X-Namespace", "").strip()
    if header and header != "undefined":
        return header
    parts = [p for p in request.path.split("/") if p]
    return parts[-2] if len(parts) >= 2 else None


async def _read_body(request: web.Request, config: ServerConfig, declared: int | None) -> bytes:
    """The whole body, within ``max_body_bytes`` and ``body_read_timeout``.

    Raises:
        UnsupportedEncoding: the body declares a content coding.
        TooLarge: over ``max_body_bytes``.
        BodyTimeout: the body was not complete in time (a slow or stalled sender).
        BodyUnreadable: the body could not be read: a broken ``Content-Encoding``,
            bad chunking, or a client that went away mid-body.
    """
    coding = request.headers.get("Content-Encoding")
    if coding is not None and coding.strip().lower() not in ("", "identity"):
        # aiohttp's decompression is off (see ``_http``): refusing here, before
        # reading, keeps a compressed body from being taken for JSON.
        raise UnsupportedEncoding("request bodies must not be compressed (Content-Encoding)")
    if declared is not None and declared > config.max_body_bytes:
        # Refused on the declared length, before reading (or waiting for) any of it.
        raise TooLarge(f"request body over {config.max_body_bytes} bytes")
    try:
        content = request.content
        if content.is_eof():
            # Already received in full (a small body arrives with its head):
            # taken from the buffer as one bytes object, without a timer to set
            # up and cancel, or read()'s chunk loop and copy.
            body = content.read_nowait()
            if len(body) > config.max_body_bytes:  # no declared length (chunked)
                raise TooLarge(f"request body over {config.max_body_bytes} bytes")
            return body
        async with asyncio.timeout(config.body_read_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body over {config.max_body_bytes} bytes") from None
    except TimeoutError:
        raise BodyTimeout(
            f"request body not received within {config.body_read_timeout:g} s"
        ) from None
    except (
        HttpProcessingError,
        RequestPayloadError,
        ClientPayloadError,
        ConnectionError,
        EofStream,
    ) as exc:
        # aiohttp's own parsing of the body (content coding, chunking) or the
        # peer closing: the caller's fault, never a 500.
        raise BodyUnreadable(f"request body could not be read ({type(exc).__name__})") from None


def _text(value: str) -> str:
    r"""A header- or claim-derived string that the audit record can always hold.

    Header bytes that are not UTF-8 arrive as lone surrogates, which no JSON
    encoder writes: escape them (and anything else unprintable) as ``\uXXXX``
    (``\UXXXXXXXX`` above the BMP), a backslash as ``\\`` so that an escape
    can't be faked by sending its text, and cut overlong values, so that
    every request leaves its record whatever bytes it carries.
    """
    if (
        len(value) <= AUDIT_TEXT_LIMIT
        and value.isascii()
        and value.isprintable()
        and "\\" not in value
    ):
        return value  # printable ASCII without a backslash: the common case, no copy
    # Cut by the *input's* length, never by the escaped length: two different
    # values within the limit always read differently (a cut after escaping
    # made "alice" + 42 invisible characters + "-victim" and "...-attacker"
    # the same record text). Escaping at most ten-folds a character, so a
    # field stays bounded.
    escaped = "".join(map(_escape, value[:AUDIT_TEXT_LIMIT]))
    if len(value) > AUDIT_TEXT_LIMIT:
        escaped += "...[truncated]"
    return escaped


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():  # lone surrogates are not
        return ch
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _bounded(values: set[str]) -> list[str]:
    """A set as a sorted list of at most ``AUDIT_LIST_LIMIT`` entries (then a count).

    For sets of values the server itself vouches for, never raw request text:
    key ids that opened a payload, classification labels of the writers' form,
    role names from the policy.
    """
    ordered = sorted(values)
    if len(ordered) > AUDIT_LIST_LIMIT:
        more = len(ordered) - AUDIT_LIST_LIMIT
        ordered = [*ordered[:AUDIT_LIST_LIMIT], f"...(+{more} more)"]
    return ordered


async def audit_sign_in(
    request: web.Request,
    state: State,
    operation: str,
    identity: Identity | None,
    decision: str,
    status: int,
    reason: str,
) -> None:
    """The audit record of a sign-in step (``sign-in``, ``sign-out``), in the codec records' shape.

    Raises:
        AuditError: the record could not be written (the step then fails too).
    """
    if state.audit is None:
        return
    await state.audit.commit(
        _audit_event(
            request,
            operation=operation,
            namespace=None,
            identity=identity,
            outcome=None,
            decision=decision,
            reason=reason,
            status=status,
        )
    )


def _grant_list(grants: dict[str, str] | None) -> list[dict[str, str]]:
    """The grants that opened payloads, with their justifications (bounded like any list)."""
    if not grants:
        return []
    listed = [
        {"id": _text(grant_id), "justification": _text(grants[grant_id])}
        for grant_id in sorted(grants)[:AUDIT_LIST_LIMIT]
    ]
    if len(grants) > AUDIT_LIST_LIMIT:
        listed.append({"id": f"...(+{len(grants) - AUDIT_LIST_LIMIT} more)", "justification": ""})
    return listed


@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    """ISO 8601 text of a Unix second (cached: records in one second share it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


_NO_OUTCOME = Outcome()  # read only: what a request that failed early did


def _audit_event(
    request: web.Request,
    *,
    operation: str,
    namespace: str | None,
    identity: Identity | None,
    outcome: Outcome | None,
    decision: str,
    reason: str,
    status: int,
) -> dict[str, Any]:
    done = outcome or _NO_OUTCOME
    return {
        "time": _utc_second(int(time.time())),
        "request_id": request[REQUEST_ID],
        "trace_id": request.get(TRACE_ID, ""),
        "subject": _text(identity.subject) if identity else "",
        "email": _text(identity.email) if identity else "",
        "token_id": _text(identity.token_id) if identity else "",
        "auth": identity.auth_method if identity else "",
        "client": request.remote or "",
        "origin": _text(request.headers.get("Origin", "")),
        "namespace": _text(namespace or ""),
        "operation": operation,
        "decoded": done.decoded,
        "encoded": done.encoded,
        "denied": done.denied,
        "passed_through": done.passed_through,
        "foreign_encryption": done.foreign,
        "failed": done.failed,
        "withheld": done.withheld,
        "placeholders": done.placeholders,
        "key_ids": _bounded(done.key_ids),
        "classifications": _bounded(done.classifications),
        "roles": _bounded(done.roles),
        "grants": _grant_list(done.grants),
        "decision": decision,
        "reason": _text(reason or "; ".join(sorted(done.reasons))),
        "status": status,
        # Microseconds as milliseconds with three decimals (round() is slower).
        "latency_ms": int((time.perf_counter() - request[STARTED]) * 1_000_000) / 1000,
    }


async def codec_handler(request: web.Request, state: State) -> web.StreamResponse:
    """``POST .../decode`` and ``POST .../encode`` (matched on the last path segment)."""
    operation = request.path.rstrip("/").rsplit("/", 1)[-1]
    if operation not in ("decode", "encode"):
        # Refused unread and unauthenticated, but recorded like every request
        # that reaches a handler (a fixed operation name: never the raw path).
        code, message = (
            ("not_supported", "download is not supported")
            if operation == "download"
            else ("not_found", "no such endpoint")
        )
        if state.audit is not None:
            await state.audit.commit(
                _audit_event(
                    request,
                    operation="download" if operation == "download" else "unknown",
                    namespace=_namespace(request),
                    identity=None,
                    outcome=None,
                    decision="deny",
                    reason=message,
                    status=404,
                )
            )
        return _error(404, code, message, request)
    telemetry = state.telemetry
    if not telemetry.tracing:
        # No span to build; the audit record still gets a trace id.
        request[TRACE_ID] = telemetry.trace_id(request.headers)
        return await _codec(request, state, operation)
    with telemetry.span(f"codec {operation}", request) as span:
        try:
            return await _codec(request, state, operation)
        finally:
            span.set_attribute("temporal_shield.decision", request.get(DECISION, ""))


async def _codec(request: web.Request, state: State, operation: str) -> web.Response:
    namespace = _namespace(request)
    identity: Identity | None = None
    outcome: Outcome | None = None

    async def audit(decision: str, status: int, reason: str = "") -> None:
        try:
            if state.audit is not None:
                await state.audit.commit(
                    _audit_event(
                        request,
                        operation=operation,
                        namespace=namespace,
                        identity=identity,
                        outcome=outcome,
                        decision=decision,
                        reason=reason,
                        status=status,
                    )
                )
        except AuditError:
            decision, status = "error", 503  # what the caller gets, so what is counted
            raise
        finally:
            request[DECISION] = decision
            state.telemetry.request_done(operation, decision, status, outcome, request[STARTED])

    config = state.config
    hold: Hold | None = None
    served = False
    unauthenticated = ""
    try:
        authenticator = state.authenticator
        try:
            # The hot path without a coroutine: a bearer token verified moments ago.
            identity = (
                authenticator.recall(request.headers) if authenticator is not None else None
            ) or await identify(request, state)
        except AuthError as exc:
            if operation != "decode" or not _invites_sign_in(request, state):
                raise
            unauthenticated = f"unauthenticated: {exc}"
        hold = state.service.hold(identity or _SIGNING_IN)
        # The body is held until the response is sent, and a response echoes
        # what it does not decode: count both before reading any of it (small
        # bodies are bounded by max_connections instead; see SMALL_HOLD).
        declared = request.content_length
        body_hold = 2 * (config.max_body_bytes if declared is None else declared)
        if body_hold > SMALL_HOLD and not hold.take(body_hold):
            raise ServerBusy("too many requests in flight; retry shortly")
        payloads = read_payloads(
            await _read_body(request, config, declared),
            max_payloads=config.max_payloads,
            max_payload_bytes=config.max_payload_bytes,
        )
        if unauthenticated:
            assert state.sign_in is not None
            result, outcome = _sign_in_notices(payloads, namespace, state.sign_in, request, hold)
            outcome.reasons.add(unauthenticated)
        elif operation == "decode":
            assert identity is not None
            result, outcome = await state.service.decode(
                identity,
                namespace,
                payloads,
                hold,
                placeholders=_readable(config, request),
                sign_in_url=_sign_in_url(state.sign_in, request),
            )
        else:
            assert identity is not None
            result, outcome = await state.service.encode(identity, namespace, payloads)
        served = True
    except Exception as exc:
        refusal = _refusal(exc)
        if refusal is None or isinstance(exc, AuditError):
            # Unexpected failures are decisions too: recorded, then a bare 500.
            await audit("error", 500, f"internal error: {type(exc).__name__}")
        else:
            if isinstance(exc, Forbidden | RateLimited):
                outcome = exc.outcome
            reason = f"unauthenticated: {exc}" if isinstance(exc, AuthError) else str(exc)
            await audit("error" if refusal.status >= 500 else "deny", refusal.status, reason)
        raise
    finally:
        if not served and hold is not None:
            hold.release()  # an error answer holds nothing worth counting
    assert hold is not None
    try:
        # The record is written before any plaintext leaves; a failed write is a 503.
        await audit("deny" if unauthenticated else outcome.decision, 200)
        response = web.Response(body=write_payloads(result), headers=_RESULT_HEADERS)
    except BaseException:
        hold.release()
        raise
    if hold.held <= SMALL_HOLD:
        # Fits the kernel's socket buffers: gone from the process about as soon
        # as it is written, and (with max_connections) bounded without a timer.
        hold.release()
    else:
        _release_once_sent(request, hold, config.send_timeout)
    return response


_SIGNING_IN = Identity(subject="(not signed in)", auth_method="none")
"""Whose share of the in-flight budget sign-in invitations use (all callers together)."""


def _invites_sign_in(request: web.Request, state: State) -> bool:
    """Whether an unauthenticated decode is answered with sign-in invitations, not 401.

    Only for a browser on an allowed origin (the Web UI, which shows a 401 as
    "could not connect" but renders a ``json/plain`` payload), only when this
    server offers sign-in and readable placeholders.
    """
    sign_in = state.sign_in
    origin = request.headers.get("Origin")
    return (
        sign_in is not None
        and state.config.placeholders != "never"
        and origin is not None
        and origin in state.config.cors_origins
    )


def _sign_in_url(sign_in: SignIn | None, request: web.Request) -> str:
    """This server's sign-in URL for a notice, leading back to the UI that asked."""
    if sign_in is None:
        return ""
    # The UI's page is not known here (a cross-origin fetch sends no path): its origin.
    return sign_in.login_links.get(request.headers.get("Origin", ""), sign_in.login_url)


def _sign_in_notices(
    payloads: Sequence[PayloadLike],
    namespace: str | None,
    sign_in: SignIn,
    request: web.Request,
    hold: Hold,
) -> tuple[list[PayloadLike], Outcome]:
    """One "sign in to read this" placeholder per encrypted payload; the rest unchanged.

    Nothing is decrypted, no key is touched: the placeholder names only the
    namespace the caller sent and where to sign in.
    """
    outcome = Outcome()
    notice = placeholder(
        namespace=namespace or "",
        reason="sign-in required",
        classification=None,
        remedies=[
            f"Sign in at {_sign_in_url(sign_in, request)} and come back to this page.",
            # Without it the UI never sends the cookie, and this notice stays.
            "The UI sends the sign-in only with 'Include cross-origin credentials' on"
            " in its codec settings (the codec icon in the top bar).",
        ],
    )
    out: list[PayloadLike] = []
    for payload in payloads:
        if is_encrypted(payload) and hold.take(len(notice.data) * MEMORY_PER_DECODED_BYTE):
            out.append(notice)
            outcome.denied += 1
            outcome.placeholders += 1
        else:
            out.append(payload)  # plaintext: echoed; over budget: unchanged, still unread
            outcome.passed_through += 1
    return out, outcome


def _readable(config: ServerConfig, request: web.Request) -> bool:
    """Whether denied payloads come back as readable placeholders for this request."""
    mode = config.placeholders
    return mode == "always" or (mode == "browser" and "Origin" in request.headers)


SMALL_HOLD = 64 * 1024
"""Requests holding at most this much release it when the response is handed
over, without a send timer: at most ``max_connections`` x 64 KiB in all."""

_RESULT_HEADERS = CIMultiDict({"Content-Type": "application/json", "Cache-Control": "no-store"})
"""Every codec result's headers (copied into each response): decoded payloads
must not be kept by browsers or intermediaries."""


def _release_once_sent(request: web.Request, hold: Hold, timeout: float) -> None:
    """Give the request's memory back once its response has left the process.

    Not when the handler returns: a response is then still to be written, and
    a client that does not read would hold it in the transport buffer, outside
    any bound. aiohttp runs each request (handler and response write, which
    waits for the buffer to drain) in a task of its own, so the task's end is
    the moment the bytes left the process. A client that has not taken the
    response within ``timeout`` seconds is disconnected, whatever the response
    holds (decoded payloads or payloads echoed unchanged).
    """
    task = asyncio.current_task()
    assert task is not None
    transport = request.transport

    def disconnect() -> None:
        if transport is not None and not transport.is_closing():
            transport.abort()

    timer = task.get_loop().call_later(timeout, disconnect)

    def sent(_: asyncio.Task[Any]) -> None:
        timer.cancel()
        hold.release()

    task.add_done_callback(sent)


async def _expect(request: web.Request) -> None:
    """Answer ``Expect: 100-continue``; ignore any other expectation.

    aiohttp's default answers an unknown expectation with a plain-text 417 that
    echoes the header, before any route. RFC 9110 lets a server ignore it: the
    request is then answered (and audited) like any other.
    """
    expect = request.headers.get("Expect", "").strip().lower()
    if request.version == HttpVersion11 and expect == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started


async def healthz(request: web.Request, state: State) -> web.Response:
    """Liveness: the process serves requests."""
    return web.json_response({"status": "ok"})


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the cyclic collector's youngest generation."""

READINESS_TTL = 5.0
"""Seconds a key-provider readiness answer is reused (see :class:`_Readiness`)."""


class _Readiness:
    """The key providers' readiness, checked at most once per ``READINESS_TTL``.

    ``/readyz`` needs no token; without this every probe (or anyone's request)
    would be a KMS ``DescribeKey``, sharing the thread pool and the account's
    quota with the unwraps that serve real callers. Concurrent probes share
    one check.
    """

    def __init__(self, check: Callable[[], Awaitable[None]]) -> None:
        self._check = check
        self._checked = -READINESS_TTL
        self._problem = ""
        self._running: asyncio.Future[str] | None = None

    async def problem(self) -> str:
        """Why the providers are not ready, or ``""``."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked < READINESS_TTL:
            return self._problem
        if self._running is None:
            self._running = loop.create_future()
            try:
                await self._check()
                self._problem = ""
            except ShieldError as exc:
                self._problem = str(exc)
            except Exception as exc:  # any failure is "not ready"; waiters must not hang
                self._problem = f"readiness check failed: {type(exc).__name__}"
            self._checked = loop.time()
            self._running.set_result(self._problem)
            self._running = None
            return self._problem
        return await asyncio.shield(self._running)


async def readyz(request: web.Request, state: State) -> web.Response:
    """Readiness: the audit sink works and every key provider answers."""
    if state.audit is not None and state.audit.failing:
        return _error(503, "not_ready", "audit log failing (write or checkpoint)", request)
    problem = await state.readiness.problem()
    if problem:
        return _error(503, "not_ready", problem, request)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request, state: State) -> web.Response:
    """Prometheus exposition of the OpenTelemetry metrics."""
    body, content_type = state.telemetry.prometheus()
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_app(
    config: ServerConfig,
    shield: ShieldConfig,
    *,
    providers: list[KeyProvider] | None = None,
    allow_development_idp: bool = False,
    audit_stdout: Any = None,
    span_processor: SpanProcessor | None = None,
    metric_labels: Mapping[str, str] | None = None,
    temporal_env: Mapping[str, str] | None = None,
) -> web.Application:
    """Build the codec server application.

    Args:
        config: Server settings (validated: authentication is mandatory unless
            ``insecure_dev``).
        shield: Converter settings (keys, classification, limits).
        providers: Key providers to use instead of those ``shield`` names (tests).
        allow_development_idp: Accept the demo's development identity provider
            for sign-in (only ``temporal-shield demo`` passes it).
        audit_stdout: Stream for the stdout audit sink (tests); default stdout.
        span_processor: Extra span processor (tests); OTLP comes from ``OTEL_*``.
        metric_labels: Labels on every Prometheus series (a worker's index).
        temporal_env: ``TEMPORAL_*`` settings for the grant workflows' connection
            instead of the process environment (the demo's own dev server).

    Raises:
        ConfigError: invalid configuration, unreadable policy, keys or audit log.
    """
    codec = build_codec(shield, providers=providers)
    policy = Policy.load(Path(config.policy_file)) if config.policy_file else None
    authenticator = (
        Authenticator(
            config.auth,
            groups_claim=policy.groups_claim if policy else "groups",
            permissions_claim=policy.permissions_claim if policy else "permissions",
            allow_development_idp=allow_development_idp,
        )
        if config.auth.enabled and not config.insecure_dev
        else None
    )
    telemetry = Telemetry(
        codec.envelope.keys.stats, span_processor=span_processor, labels=metric_labels
    )
    keys = codec.envelope.keys
    keys.providers = [telemetry.traced(p) for p in keys.providers]
    app = web.Application(client_max_size=config.max_body_bytes)
    app[STATE] = state = State(
        config=config,
        shield=shield,
        codec=codec,
        service=CodecService(codec, shield, policy, config),
        authenticator=authenticator,
        audit=None,  # opened last, below
        telemetry=telemetry,
        readiness=_Readiness(codec.envelope.keys.check),
        claims=(
            policy.groups_claim if policy else "groups",
            policy.permissions_claim if policy else "permissions",
        ),
        temporal_env=temporal_env,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if config.insecure_dev:
            log.warning(
                "INSECURE DEV MODE: the codec server decrypts for anyone who can reach it. "
                "Never use --insecure-dev outside local development."
            )
        # Everything loaded so far (modules, config, keys) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which would
        # otherwise walk ~100k objects (~40 ms) now and then under load.
        gc.collect()
        gc.freeze()
        # A served request leaves no reference cycles (gc.collect() finds none
        # after thousands), so collecting the youngest generation only walks
        # the requests still in flight: every 700 allocations (the default)
        # that cost about 3 µs of CPU per request under load. Ten thousand
        # bounds what cycles there are (an exception's traceback) all the same.
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
        if state.audit is not None:
            await state.audit.start()  # periodic checkpoints and sink probes
        yield
        gc.set_threshold(*thresholds)
        if state.audit is not None:
            await state.audit.aclose()  # signs the final head off the event loop
        # Exporters flush over blocking HTTP: keep the event loop free meanwhile.
        await asyncio.to_thread(telemetry.shutdown)

    app.cleanup_ctx.append(lifecycle)
    _add_health_routes(app, state)
    install_sign_in(app, state, allow_development_idp=allow_development_idp)
    state.service.grants = install_grants(app, state)
    # The common paths first: static routes are a dictionary lookup, the
    # catch-all (any prefix, /{namespace}/decode, ...) a regular expression.
    codec_route = _edge(codec_handler, state)
    app.router.add_post("/decode", codec_route, expect_handler=_expect)
    app.router.add_post("/encode", codec_route, expect_handler=_expect)
    app[DIRECT_ROUTES] = {"/decode": codec_route, "/encode": codec_route}
    app.router.add_post("/{tail:.*}", codec_route, expect_handler=_expect)
    # Preflights and everything else: answered by us, with CORS and JSON.
    app.router.add_route("*", "/{tail:.*}", _edge(fallback, state), expect_handler=_expect)
    # Last: nothing after it can fail and leave the file open (and locked).
    if config.audit.file or config.audit.stdout:
        state.audit = AuditLog(config.audit, stdout=audit_stdout)
    return app


def _add_health_routes(app: web.Application, state: State) -> None:
    app.router.add_get("/healthz", _edge(healthz, state), expect_handler=_expect)
    app.router.add_get("/readyz", _edge(readyz, state), expect_handler=_expect)
    app.router.add_get("/metrics", _edge(metrics, state), expect_handler=_expect)


def create_metrics_app(app: web.Application) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` of ``app``, and no codec route.

    For a worker's own port: with several workers on one port (SO_REUSEPORT)
    a request there lands on any of them, so each also answers for itself here.
    """
    own = web.Application(client_max_size=1024)
    own[STATE] = state = app[STATE]
    _add_health_routes(own, state)
    own.router.add_route("*", "/{tail:.*}", _edge(fallback, state), expect_handler=_expect)
    return own
