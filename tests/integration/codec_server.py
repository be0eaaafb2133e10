"""Run a codec server on a real 127.0.0.1 port inside a test's event loop."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def running(
    app: web.Application, ssl_context: ssl.SSLContext | None = None, *, port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (``port`` 0 = any); yields its base URL; stops it on exit."""
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "https" if ssl_context else "http"
        yield f"{scheme}://127.0.0.1:{bound}"
    finally:
        await runner.cleanup()
