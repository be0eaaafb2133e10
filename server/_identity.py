"""Who is asking: the identity a request was authenticated as."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Identity:
    """An authenticated caller. Holds claims, never the token itself."""

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


DEV_IDENTITY = Identity(subject="insecure-dev")
"""The identity of every request in ``--insecure-dev`` mode."""
