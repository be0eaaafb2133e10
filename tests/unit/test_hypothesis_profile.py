"""Property-based tests carry no time limit (tests never assert on time)."""

from __future__ import annotations

from hypothesis import settings


def test_the_default_profile_has_no_deadline() -> None:
    # Hypothesis fails an example that takes over 200 ms by default: on a loaded
    # CI machine that is a time assertion on a correct test.
    assert settings.default is not None
    assert settings.default.deadline is None
