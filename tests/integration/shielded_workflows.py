"""A workflow file written the way a user writes one: it imports temporal_shield.

No ``imports_passed_through()`` around the import: the plugin passes the package
through the worker's sandbox (without that, the worker fails to validate it).
"""

from __future__ import annotations

from temporalio import workflow

from temporal_shield.converter import ShieldConfig


@workflow.defn
class ConfiguredWorkflow:
    """Returns its input with the default compression setting it sees."""

    @workflow.run
    async def run(self, text: str) -> str:
        return f"{text}:{ShieldConfig().compression.enabled}"
