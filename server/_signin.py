"""Sign-in at the codec server (OpenID Connect, session cookies): see ``docs/sign-in.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ._app import State


def install(app: web.Application, state: State) -> None:
    """Add the sign-in routes to ``app`` when ``state.config.oidc`` is enabled."""
