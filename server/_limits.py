"""Bounds on the work one request, one caller and the whole process may cause.

The wire limits (body size, payload count, payload size) bound what a caller
*sends*. They do not bound what a request *costs*: a payload of a few hundred
bytes can decode to megabytes (its authenticated original length), and a payload
with a valid-looking header and a random wrapped key costs a KMS call. KMS quota
is shared with every worker of the account, so the codec server budgets its
unwraps per request and per principal, and bounds decoded bytes per payload,
per request and in the whole process. What does not fit a budget comes back
unchanged and is counted (see :class:`~._service.Outcome`), like a payload the
caller may not read: the response still has one payload per input.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

LIMIT_PAYLOAD_BYTES = "decoded_payload_bytes"
LIMIT_REQUEST_BYTES = "decoded_request_bytes"
LIMIT_IN_FLIGHT = "decoded_bytes_in_flight"
LIMIT_UNWRAPS_REQUEST = "unwraps_per_request"
LIMIT_UNWRAPS_PRINCIPAL = "unwraps_per_principal"
LIMIT_DATA_KEYS_PRINCIPAL = "data_keys_per_principal"
LIMITS = (
    LIMIT_PAYLOAD_BYTES,
    LIMIT_REQUEST_BYTES,
    LIMIT_IN_FLIGHT,
    LIMIT_UNWRAPS_REQUEST,
    LIMIT_UNWRAPS_PRINCIPAL,
    LIMIT_DATA_KEYS_PRINCIPAL,
)
"""Names of the budgets, as they appear in audit reasons and the refusal metric."""


class TokenBuckets:
    """One token bucket per principal: ``burst`` tokens, refilled at ``per_minute``.

    Bounded: at most ``max_principals`` buckets are kept (least recently used
    evicted). A principal evicted and seen again starts with a full bucket,
    which only a caller with that many valid identities can exploit.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        max_principals: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the buckets (``burst`` 0 refuses every take)."""
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max = max_principals
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, principal: str) -> bool:
        """Spend one token of ``principal``'s bucket; False when it is empty."""
        now = self._clock()
        tokens, last = self._buckets.get(principal, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[principal] = (tokens, now)
        self._buckets.move_to_end(principal)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return allowed

    def give_back(self, principal: str) -> None:
        """Return one token :meth:`take` spent on something that did not happen."""
        found = self._buckets.get(principal)
        if found is not None:
            self._buckets[principal] = (min(self._burst, found[0] + 1.0), found[1])

    def retry_after(self) -> int:
        """Whole seconds until an empty bucket holds one token again."""
        return max(1, int(1.0 / self._rate) + 1) if self._rate > 0 else 60


class InFlight:
    """Memory held for requests of this process at once: in all, and per caller.

    Counts what a request holds until its response has left the process: its
    body (and the share of the response that echoes it), and its decoded
    payloads with their share of the response (see ``MEMORY_PER_DECODED_BYTE``).
    The per-caller share keeps one identity from taking the whole budget.
    """

    def __init__(self, limit: int, per_caller: int) -> None:
        """Bound the process at ``limit`` bytes, and each caller at ``per_caller``."""
        self.limit = limit
        self.per_caller = per_caller
        self.used = 0
        self._callers: dict[str, int] = {}

    def reserve(self, caller: str, nbytes: int) -> bool:
        """Reserve ``nbytes`` for ``caller``; False (nothing reserved) if over a limit."""
        held = self._callers.get(caller, 0)
        if self.used + nbytes > self.limit or held + nbytes > self.per_caller:
            return False
        self.used += nbytes
        self._callers[caller] = held + nbytes
        return True

    def release(self, caller: str, nbytes: int) -> None:
        """Give back what :meth:`reserve` granted."""
        self.used -= nbytes
        held = self._callers[caller] - nbytes
        if held:
            self._callers[caller] = held
        else:
            del self._callers[caller]  # bounded by the callers with requests in flight

    def held_by(self, caller: str) -> int:
        """Bytes ``caller`` holds now."""
        return self._callers.get(caller, 0)


class Hold:
    """One request's reservations in :class:`InFlight`, released together once."""

    __slots__ = ("_caller", "_in_flight", "held")

    def __init__(self, in_flight: InFlight, caller: str) -> None:
        """Start an empty hold for ``caller``."""
        self._in_flight = in_flight
        self._caller = caller
        self.held = 0

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` more; False (nothing reserved) if over a limit."""
        if not self._in_flight.reserve(self._caller, nbytes):
            return False
        self.held += nbytes
        return True

    def release(self) -> None:
        """Give everything back (idempotent)."""
        if self.held:
            self._in_flight.release(self._caller, self.held)
            self.held = 0
