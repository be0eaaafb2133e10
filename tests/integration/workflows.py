"""Workflows for the integration tests: every kind of payload Temporal stores.

Every value carries a marker string; the tests assert that no marker appears in
the raw history (fetched without a codec) and that all of them appear after
decoding. Kept free of test imports so the workflow sandbox can load it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

MARK = "SECRET-MARKER"


def mark(kind: str) -> str:
    """The marker string for one kind of payload."""
    return f"{MARK}-{kind}"


@dataclass
class Args:
    """Workflow input."""

    text: str
    iteration: int = 0


@activity.defn
async def echo_activity(text: str) -> str:
    """Returns a marked result."""
    return f"{text}|{mark('activity-result')}"


@activity.defn
async def failing_activity(text: str) -> str:
    """Fails with a marked message (and marked details)."""
    raise ApplicationError(mark("failure-message"), mark("failure-details"), non_retryable=True)


@workflow.defn
class ChildWorkflow:
    """A child returning a marked result."""

    @workflow.run
    async def run(self, text: str) -> str:
        """Return a marked value."""
        return f"{text}|{mark('child-result')}"


@workflow.defn
class EverythingWorkflow:
    """Activity, failed activity, child, signal, query, update, continue-as-new."""

    def __init__(self) -> None:
        self.signals: list[str] = []
        self.updates: list[str] = []

    @workflow.run
    async def run(self, args: Args) -> str:
        """First run does everything and continues as new; the second returns."""
        if args.iteration > 0:
            return f"{args.text}|{mark('final-result')}"
        results = [
            await workflow.execute_activity(
                echo_activity, mark("activity-input"), start_to_close_timeout=timedelta(seconds=30)
            )
        ]
        try:
            await workflow.execute_activity(
                failing_activity,
                mark("failing-input"),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:
            results.append(str(err.cause))
        results.append(
            await workflow.execute_child_workflow(
                ChildWorkflow.run, mark("child-input"), id=f"{workflow.info().workflow_id}-child"
            )
        )
        await workflow.wait_condition(lambda: bool(self.signals) and bool(self.updates))
        workflow.continue_as_new(Args(text=mark("continue-as-new-input"), iteration=1))

    @workflow.signal
    def signal(self, text: str) -> None:
        """Record a marked signal."""
        self.signals.append(text)

    @workflow.query
    def state(self) -> str:
        """Answer with a marked value."""
        return f"{len(self.signals)}|{mark('query-result')}"

    @workflow.update
    async def update(self, text: str) -> str:
        """Record a marked update and answer with a marked result."""
        self.updates.append(text)
        return mark("update-result")


@workflow.defn
class WaitForSignalWorkflow:
    """Waits for one signal and returns it (for rotation while running)."""

    def __init__(self) -> None:
        self.value: str | None = None

    @workflow.run
    async def run(self, text: str) -> str:
        """Wait for the signal."""
        await workflow.wait_condition(lambda: self.value is not None)
        return f"{text}|{self.value}"

    @workflow.signal
    def signal(self, text: str) -> None:
        """Deliver the value."""
        self.value = text


@workflow.defn
class EchoWorkflow:
    """Returns its input (for large payloads)."""

    @workflow.run
    async def run(self, text: str) -> str:
        """Echo."""
        await asyncio.sleep(0)
        return text
