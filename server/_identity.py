"""Who is asking: the identity a request was authenticated as."""

from __future__ import annotations

from dataclasses import dataclass

AUTH_BEARER = "bearer"
"""Authenticated by a JWT in ``Authorization: Bearer`` (the CLI, UIs that pass tokens)."""
AUTH_SESSION = "session"
"""Authenticated by the codec server's own session cookie (OIDC sign-in)."""
AUTH_INSECURE_DEV = "insecure-dev"
"""Not authenticated at all: ``--insecure-dev``."""


@dataclass(frozen=True, kw_only=True)
class Identity:
    """An authenticated caller. Holds claims, never the token or cookie itself.

    Both ways of authenticating (bearer token, session cookie) produce this one
    type, so the RBAC policy and the audit record see the same identity whatever
    the path; :attr:`auth_method` says which path it was.
    """

    subject: str
    """The ``sub`` claim."""
    email: str = ""
    """The ``email`` claim, if any."""
    email_verified: bool = False
    """Whether the token's ``email_verified`` claim is the JSON boolean ``true``.
    Email bindings in the policy need it (unless the policy opts out)."""
    groups: frozenset[str] = frozenset()
    """Values of the configured groups claim."""
    permissions: frozenset[str] = frozenset()
    """Temporal-style ``"<namespace>:<role>"`` permission claims."""
    token_id: str = ""
    """The ``jti`` claim, for correlating audit records; never the token."""
    auth_method: str = AUTH_BEARER
    """How the request was authenticated: :data:`AUTH_BEARER`, :data:`AUTH_SESSION`
    or :data:`AUTH_INSECURE_DEV` (recorded in every audit record)."""
    acr: str = ""
    """The ``acr`` claim (authentication context class), for step-up rules."""
    amr: frozenset[str] = frozenset()
    """The ``amr`` claim (authentication methods, e.g. ``pwd``, ``mfa``, ``hwk``)."""
    auth_time: float | None = None
    """The ``auth_time`` claim: when the person last authenticated at the IdP."""
    session_id: str = ""
    """The codec server's session id (cookie sign-in only; never the cookie)."""


DEV_IDENTITY = Identity(subject="insecure-dev", auth_method=AUTH_INSECURE_DEV)
"""The identity of every request in ``--insecure-dev`` mode."""
