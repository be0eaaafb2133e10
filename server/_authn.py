"""Who is asking: one place that turns a request into an :class:`Identity`.

Every route that acts for a person (the codec routes, the grant API) calls
:func:`identify`, so that each accepts exactly the same credentials: a bearer
token (``Authorization``), or the session cookie of a sign-in at this server
(only from an allowed origin: see ``SignIn.session``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ._auth import AuthError
from ._identity import DEV_IDENTITY, Identity
from ._signin import SESSION_COOKIE

if TYPE_CHECKING:
    from ._app import State


async def identify(request: web.Request, state: State) -> Identity:
    """The request's authenticated identity.

    Raises:
        AuthError: no credential, or none that passes every check.
        IdpUnavailable: with sign-in, before discovery has confirmed that the
            bearer-token keys are the identity provider's.
    """
    if state.config.insecure_dev:
        return DEV_IDENTITY
    authenticator = state.authenticator
    sign_in = state.sign_in
    headers = request.headers
    # A bearer token, when one is sent, decides alone: a bad token is never
    # rescued by a cookie that happens to ride along.
    if authenticator is not None and (
        "Authorization" in headers or sign_in is None or SESSION_COOKIE not in request.cookies
    ):
        identity = authenticator.recall(headers)
        if identity is not None:
            return identity
        if sign_in is not None:
            await sign_in.confirm_bearer_keys()  # the JWKS is the sign-in IdP's
        return await authenticator.authenticate(headers)
    if sign_in is not None:
        identity = sign_in.session(request)
        if identity is not None:
            return identity
        raise AuthError("not signed in: sign in at " + sign_in.login_url)
    raise AuthError("missing bearer token")
