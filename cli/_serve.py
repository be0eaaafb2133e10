"""``temporal-shield serve``: run the codec server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from temporal_shield.server import ServerConfig, create_app, load_server_config
from temporal_shield.server._http import ShieldRunner, install_log_redaction
from temporal_shield.server._tls import server_ssl_context

log = logging.getLogger("temporal_shield.server")

SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish after SIGTERM."""


def serve(config_path: str | None, overrides: Mapping[str, Any]) -> int:
    """Load configuration, build the app and serve it (graceful shutdown on SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_log_redaction()
    server, shield = load_server_config(config_path, overrides=overrides)
    app = create_app(server, shield)
    ssl_context = server_ssl_context(server.tls, app) if server.tls.dir else None
    asyncio.run(_run(app, server, ssl_context))
    return 0


async def _run(
    app: web.Application, config: ServerConfig, ssl_context: ssl.SSLContext | None
) -> None:
    """Serve until SIGTERM or SIGINT.

    Our own loop rather than ``web.run_app``: the runner must be
    :class:`ShieldRunner` (JSON pre-routing errors, header limits).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = ShieldRunner(app, config, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context else "http"
        log.info("codec server listening on %s://%s:%d", scheme, config.host, config.port)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
