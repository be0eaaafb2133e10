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

import json
import logging
import re
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from ._config import ServerConfig

log = logging.getLogger("temporal_shield.server")


def runner_kwargs(config: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for :class:`ShieldRunner` (and aiohttp's request handler)."""
    return {
        "max_line_size": config.max_header_bytes,
        "max_field_size": config.max_header_bytes,
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


class _Handler(RequestHandler):
    """aiohttp's protocol handler with a JSON, CORS-aware, token-free ``handle_error``."""

    cors_origin: str | None = None
    """The one configured CORS origin, if exactly one (set by :class:`_Server`)."""

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
    def __call__(self) -> RequestHandler:
        handler = _Handler(self, loop=self._loop, **self._kwargs)
        handler.cors_origin = self.cors_origin
        return handler

    cors_origin: str | None = None


class ShieldRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose pre-routing errors are ours (see module)."""

    def __init__(self, app: web.Application, config: ServerConfig, **kwargs: Any) -> None:
        """Run ``app`` with the header limits and error handling of ``config``."""
        super().__init__(app, **{**kwargs, **runner_kwargs(config)})
        self._cors_origin = config.cors_origins[0] if len(config.cors_origins) == 1 else None

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        server = _Server(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        server.cors_origin = self._cors_origin
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
