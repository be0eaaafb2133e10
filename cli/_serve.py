"""``temporal-shield serve``: run the codec server until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from temporal_shield.server import create_app, load_server_config
from temporal_shield.server._tls import server_ssl_context

log = logging.getLogger("temporal_shield.server")


def serve(config_path: str | None, overrides: Mapping[str, Any]) -> int:
    """Load configuration, build the app and serve it (graceful shutdown on SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server, shield = load_server_config(config_path, overrides=overrides)
    app = create_app(server, shield)
    ssl_context = server_ssl_context(server.tls, app) if server.tls.dir else None
    scheme = "https" if ssl_context else "http"
    log.info("codec server listening on %s://%s:%d", scheme, server.host, server.port)
    web.run_app(
        app,
        host=server.host,
        port=server.port,
        ssl_context=ssl_context,
        print=None,
        shutdown_timeout=10.0,
        access_log=None,
    )
    return 0
