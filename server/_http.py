"""The HTTP layer under the application: what aiohttp answers before any handler.

aiohttp refuses some requests before a route runs (a malformed header line, a
header over the size limit, bad chunking). Its default answer is plain text
without CORS, and it logs the parser's exception, whose message quotes the
offending header line verbatim: an ``Authorization: Bearer …`` value included.
:class:`ShieldRunner` replaces that one method (``RequestHandler.handle_error``)
with a JSON answer in the same shape as every other error, CORS where the
framework allows it, and a log line that names only the error type; and it
raises the header limits to what real identity-provider tokens need.

aiohttp has no hook for this short of subclassing its protocol class, so the
subclass stays as small as possible: one overridden method, everything else
inherited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from ._config import ServerConfig

log = logging.getLogger("temporal_shield.server")


LINGER = 2.0
"""Seconds a refused connection keeps reading (and discarding) before it closes."""
HEAD_SLACK = 32 * 1024
"""What a whole request head may hold beyond its largest field (the other headers)."""


def runner_kwargs(config: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for :class:`ShieldRunner` (and aiohttp's request handler)."""
    return {
        "max_line_size": config.max_header_bytes,
        "max_field_size": config.max_header_bytes,
        "max_headers": 64,  # browsers and the CLI send ~15; proxies add a few
        # Idle keep-alive connections are closed after 75 s by default (nginx's),
        # not aiohttp's hour: each one counts against max_connections.
        "keepalive_timeout": config.keepalive_timeout,
        "access_log": None,  # every decision is in the audit log; no URLs with tokens
        # A client that goes away must not cancel its handler: the handler still
        # writes the request's audit record (a 400 for a body cut short).
        "handler_cancellation": False,
        # Never inflate a request body: a few MB of gzip expand to gigabytes
        # inside aiohttp's parser, on the event loop, before any handler (or
        # any size limit) runs. No codec client compresses its requests; a
        # body that declares a content coding is refused (415) unread.
        "auto_decompress": False,
    }


@dataclass(frozen=True)
class _Edge:
    """What :class:`_Handler` enforces before aiohttp hands over a request."""

    cors_origin: str | None
    """The one configured CORS origin, if exactly one."""
    max_connections: int
    header_timeout: float
    max_head_bytes: int


def _raw_error(status: int, code: str, text: str, cors_origin: str | None) -> bytes:
    """A complete HTTP/1.1 JSON error response, for answers written on the transport."""
    body = json.dumps({"error": code, "message": text, "request_id": ""}).encode()
    cors = f"Access-Control-Allow-Origin: {cors_origin}\r\nVary: Origin\r\n" if cors_origin else ""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{cors}Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Handler(RequestHandler):
    """aiohttp's protocol handler, bounded and answering in our JSON shape.

    Adds what aiohttp lacks: a cap on open connections, and a deadline and a
    size cap on a request head while it arrives (aiohttp buffers a partial head
    without either, so a client trickling headers holds memory for as long as
    it likes); and replaces ``handle_error`` (see the module docstring).
    """

    edge: _Edge | None = None
    """Set by :class:`_Server` on every handler it makes."""
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _head_count = 0
    _refused = False

    @property
    def cors_origin(self) -> str | None:
        """The one configured CORS origin, if exactly one."""
        return self.edge.cors_origin if self.edge else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept the connection, unless the process holds ``max_connections`` already."""
        super().connection_made(transport)
        manager = self._manager
        if (
            self.edge
            and manager is not None
            and len(manager.connections) > self.edge.max_connections
        ):
            log.warning("connection refused: %d open connections", len(manager.connections) - 1)
            self.force_close()

    def data_received(self, data: bytes) -> None:
        """Feed aiohttp's parser; time and size a request head while it is incomplete."""
        if self._refused:
            return  # discarded while the refusal lingers (see _refuse)
        super().data_received(data)
        if self._messages:  # the common case: a whole request arrived
            if self._head_timer is not None:
                self._cancel_head_timer()
            return
        edge = self.edge
        if edge is None or self._force_close or self._close:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Between requests with part of a head buffered: a head in progress.
            if self._head_timer is None or self._head_count != self._request_count:
                self._cancel_head_timer()
                self._head_count = self._request_count
                self._head_bytes = 0
                self._head_timer = self._loop.call_later(edge.header_timeout, self._head_late)
            self._head_bytes += len(data)
            if self._head_bytes > edge.max_head_bytes:
                self._refuse(431, "headers_too_large", "request head too large")
        elif self._head_timer is not None:
            self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        waiter = self._waiter
        if (
            self._head_count == self._request_count
            and waiter is not None
            and not waiter.done()
            and not self._messages
        ):
            self._refuse(408, "request_timeout", "request head not received in time")

    def _refuse(self, status: int, code: str, text: str) -> None:
        self._cancel_head_timer()
        log.warning("refused a request head: HTTP %d (%s)", status, code)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(_raw_error(status, code, text, self.cors_origin))
        # Lingering close: send the answer and FIN, then read and discard what
        # the client still sends for a moment. Closing with unread input would
        # make the kernel send a reset, which can destroy the answer in flight.
        self._refused = True
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, self.force_close)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Drop the head timer with the connection."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp refused before any route: JSON, no secret logged.

        The parser's message is neither logged nor returned: it can quote the
        header line that failed, bearer token and all.
        """
        if isinstance(exc, LineTooLong):
            status, code, text = 431, "headers_too_large", "request line or header too large"
        elif status == 500:
            code, text = "internal", "internal error"
        else:
            code = "bad_request"
            text = f"malformed HTTP request ({type(exc).__name__ if exc else 'unknown'})"
        log.warning(
            "refused a request before routing: HTTP %d, %s",
            status,
            type(exc).__name__ if exc else "no exception",
        )
        if request.writer.output_size > 0:
            # Part of a response is out already: the connection can only be dropped.
            raise ConnectionError("response already started")
        body = {"error": code, "message": text, "request_id": ""}
        response = web.Response(
            status=status,
            reason=HTTPStatus(status).phrase,
            body=json.dumps(body).encode(),
            content_type="application/json",
        )
        if self.cors_origin is not None:
            # The request's own headers are unknown here (they failed to parse),
            # but with a single allowed origin that origin is the only one a
            # browser could be calling from.
            response.headers["Access-Control-Allow-Origin"] = self.cors_origin
            response.headers["Vary"] = "Origin"
        response.force_close()
        return response


class _Server(web.Server):
    edge: _Edge | None = None

    def __call__(self) -> RequestHandler:
        handler = _Handler(self, loop=self._loop, **self._kwargs)
        handler.edge = self.edge
        return handler


RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DIRECT_ROUTES: web.AppKey[Mapping[str, RouteHandler]] = web.AppKey(
    "temporal_shield_direct_routes", Mapping
)
"""Static ``POST`` paths whose handler :class:`ShieldRunner` calls without the router."""


def _origin_form_only(
    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    cors_origin: str | None,
    direct: Mapping[str, RouteHandler],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """Answer request targets that are not a path (``OPTIONS *``, ``CONNECT host:port``).

    The router only matches paths, so aiohttp would answer these itself, in
    plain text; the catch-all route never sees them.

    ``POST`` to a path in ``direct`` (``/decode``, ``/encode``: what the Web UI
    and the CLI call) goes straight to the handler the router would pick for
    it: resolving, building and freezing the match info, and a coroutine for
    each step cost about 3 µs per request. Not with an ``Expect`` header,
    whose handler only the application's own path runs. Such requests have
    no match info (``request.app``): the handlers get what they need bound.
    """

    async def not_found() -> web.StreamResponse:
        response = web.Response(
            status=404,
            body=json.dumps(
                {"error": "not_found", "message": "Not Found", "request_id": ""}
            ).encode(),
            content_type="application/json",
        )
        if cors_origin is not None:
            response.headers["Access-Control-Allow-Origin"] = cors_origin
            response.headers["Vary"] = "Origin"
        return response

    def route(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # Returns the awaitable instead of awaiting it: no extra coroutine
        # frame on every request for a check that almost never matches.
        method = request.method
        if method == "POST":
            handler = direct.get(request.path)
            if handler is not None and not request.headers.get(hdrs.EXPECT):
                assert isinstance(request, web.Request)  # the application's request factory
                return handler(request)
        if method == "CONNECT" or not request.path.startswith("/"):
            return not_found()
        return handle(request)

    return route


class ShieldRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose pre-routing errors are ours (see module)."""

    def __init__(self, app: web.Application, config: ServerConfig, **kwargs: Any) -> None:
        """Run ``app`` with the header limits and error handling of ``config``."""
        super().__init__(app, **{**kwargs, **runner_kwargs(config)})
        self._edge = _Edge(
            cors_origin=config.cors_origins[0] if len(config.cors_origins) == 1 else None,
            max_connections=config.max_connections,
            header_timeout=config.header_timeout,
            max_head_bytes=config.max_header_bytes + HEAD_SLACK,
        )

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        server = _Server(
            _origin_form_only(
                base.request_handler, self._edge.cors_origin, self._app.get(DIRECT_ROUTES, {})
            ),
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        server.edge = self._edge
        return server


# Bearer credentials and anything shaped like a JWT (three base64url segments,
# the first a JSON header starting "eyJ").
_SECRET = re.compile(
    r"(?i)(bearer\s+)[^\s,;\"']+|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"
)


def _redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class RedactSecrets(logging.Filter):
    """Defence in depth: scrub bearer tokens and JWTs from every log record.

    Our own code never logs a token; this catches a library that does (aiohttp's
    parser errors quote header lines, for example) before any handler formats it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and exception text) without secrets."""
        message = record.getMessage()
        cleaned = _redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            # Render the traceback now, scrubbed, and drop the live exception.
            formatter = logging.Formatter()
            record.exc_text = _redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactSecrets` to every handler of the root logger."""
    redact = RedactSecrets()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
