"""Injectable time source, so cache ages can be tested with a fake clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds."""

    def __call__(self) -> float:
        """Return the current monotonic time in seconds."""
        ...


monotonic: Clock = time.monotonic
"""The default :class:`Clock`."""
