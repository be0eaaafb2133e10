"""Who is asking: one place that turns a request into an :class:`Identity`.

Every route that acts for a person (the codec routes, the grant API) calls
:func:`identify`, so that each accepts exactly the same credentials: a bearer
token (``Authorization``), or the session cookie of a sign-in at this server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ._auth import AuthError
from ._identity import DEV_IDENTITY, Identity

if TYPE_CHECKING:
    from ._app import State


async def identify(request: web.Request, state: State) -> Identity:
    """The request's authenticated identity.

    Raises:
        AuthError: no credential, or none that passes every check.
    """
    if state.config.insecure_dev:
        return DEV_IDENTITY
    authenticator = state.authenticator
    if authenticator is None:
        raise AuthError("missing bearer token")
    return authenticator.recall(request.headers) or await authenticator.authenticate(
        request.headers
    )
