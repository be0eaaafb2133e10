"""Just-in-time grants kept as Temporal workflows: see ``docs/grants.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ._grant import GrantLookup

if TYPE_CHECKING:
    from ._app import State


def install(app: web.Application, state: State) -> GrantLookup | None:
    """Add the grant API routes and the grant registry when grants are enabled."""
    return None
