"""HTTPS from cert-manager Secret-shaped folders, with reload on rotation.

cert-manager (and the kubelet) update a mounted Secret by swapping a symlink, so
the files change all at once. A background task polls the files' modification
times and reloads the certificate chain (and CA) into the *same* SSL context:
new handshakes get the new certificate, established connections are untouched,
and nothing restarts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from temporal_shield.codec import ConfigError

from ._config import TlsConfig

log = logging.getLogger("temporal_shield.server")


def _files(config: TlsConfig) -> tuple[Path, Path, Path]:
    folder = Path(config.dir)
    return folder / "tls.crt", folder / "tls.key", folder / "ca.crt"


def _load(context: ssl.SSLContext, config: TlsConfig) -> None:
    cert, key, ca = _files(config)
    try:
        context.load_cert_chain(cert, key)
        if config.client_auth != "none":
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files from {config.dir}: {exc}") from None


def _stamp(config: TlsConfig) -> tuple[float, ...]:
    stamps = []
    for path in _files(config):
        try:
            stamps.append(path.stat().st_mtime)
        except FileNotFoundError:
            stamps.append(0.0)
    return tuple(stamps)


def server_ssl_context(config: TlsConfig, app: web.Application | None = None) -> ssl.SSLContext:
    """An SSL context for the server; with ``app``, reloaded when the files change.

    Raises:
        ConfigError: the certificate, key or CA cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "require": ssl.CERT_REQUIRED,
    }[config.client_auth]
    _load(context, config)
    if app is not None:

        async def watch(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(_reload_loop(context, config))
            yield
            task.cancel()

        app.cleanup_ctx.append(watch)
    return context


async def _reload_loop(context: ssl.SSLContext, config: TlsConfig) -> None:
    seen = _stamp(config)
    while True:
        await asyncio.sleep(config.reload_interval)
        current = _stamp(config)
        if current == seen:
            continue
        try:
            _load(context, config)
        except ConfigError as exc:
            # Half-written files: keep serving the old certificate, retry next tick.
            log.warning("TLS reload failed, keeping the current certificate: %s", exc)
            continue
        seen = current
        log.info("TLS certificate reloaded from %s", config.dir)
