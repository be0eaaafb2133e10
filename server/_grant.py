"""A just-in-time grant as the codec server honours it, and how it is looked up.

The lifecycle (request, approval, expiry, revocation) lives in Temporal
workflows (``_grants``); this module is only what the authorisation path needs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Protocol

from ._identity import Identity


@dataclass(frozen=True, kw_only=True)
class Grant:
    """An approved grant: its subject may decode one namespace's classification until it ends.

    Only an approved, unexpired, unrevoked grant is ever held as this type.
    """

    id: str
    """The grant's id (its workflow id)."""
    subject: str
    """The requester's ``sub``: only this identity may use it."""
    namespace: str
    """The exact namespace it opens."""
    classification: str
    """The classification it opens (``*``: every one)."""
    expires_at: float
    """Unix time after which it is never honoured, whatever Temporal says."""
    justification: str
    """The requester's justification or ticket id (named in decode audit records)."""
    approver: str
    """The approver's ``sub``."""

    def covers(self, identity: Identity, namespace: str, classification: str, now: float) -> bool:
        """Whether this grant lets ``identity`` decode ``classification`` in ``namespace``."""
        return (
            identity.subject == self.subject
            and namespace == self.namespace
            and now < self.expires_at
            and fnmatch.fnmatchcase(classification or "unclassified", self.classification)
        )


class GrantLookup(Protocol):
    """Where the codec service finds grants (the registry every replica refreshes)."""

    def find(
        self, identity: Identity, namespace: str, classification: str, now: float
    ) -> Grant | None:
        """A grant that lets ``identity`` decode ``classification`` in ``namespace``, if any."""
        ...
