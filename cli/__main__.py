"""``python -m temporal_shield``."""

from ._main import entry

entry()
