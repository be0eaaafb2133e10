"""Enforcement, the last roll-out step, on a real dev server.

The whole roll-out: plaintext era (no codec) → codec readers (decode only) →
writers → clean scan → ``require_encryption`` → a planted plaintext payload
(written by a raw client without the codec) is refused in every place a worker
decodes: the workflow task fails visibly (history, ``describe``, the
``temporal`` CLI) and workflow code never sees the planted data. What Temporal
writes in clear itself (local-activity and patch markers, server timeout
failures) never reaches the worker's codec: workflows that use all three run
under enforcement with every task replayed from history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import RetryPolicy
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer, temporal_cli
from temporal_shield.codec import ConfigError, Keyring, is_envelope
from temporal_shield.converter import (
    KeysConfig,
    PlaintextRefusedError,
    ShieldConfig,
    ShieldPlugin,
    scan,
)

from .conftest import wait_visible

pytestmark = pytest.mark.integration

PLANTED = "PLANTED-plaintext-value"
REFUSAL = "not a temporal-shield envelope"
_TOKENS: dict[str, bytes] = {}
"""Task tokens of activities completed from outside, by workflow id."""


@activity.defn
async def quick(text: str) -> str:
    """A local activity (its marker's ``details[data]`` is written in clear by the SDK)."""
    return f"{text}-quick"


@activity.defn
async def times_out_once(text: str) -> str:
    """Outlives its start-to-close timeout on the first attempt (a server-written failure)."""
    if activity.info().attempt == 1:
        await asyncio.sleep(1.5)
    return f"{text}-retried"


@activity.defn
async def completed_outside(text: str) -> str:
    """Hands its task token to the test, which completes it from another client."""
    _TOKENS[activity.info().workflow_id or ""] = activity.info().task_token
    activity.raise_complete_async()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What a :class:`GuardedWorkflow` run does before it waits."""

    text: str
    temporal_written: bool = False
    """Local activity, patch marker and an activity timeout (a few seconds)."""
    outside_activity: bool = False
    """An activity the test completes from another client."""


@workflow.defn(sandboxed=False)
class GuardedWorkflow:
    """Waits for one value by signal, update or an activity completed from outside."""

    @workflow.init
    def __init__(self, plan: Plan) -> None:
        # The input first, whatever arrives in the first activation with it.
        self.seen: list[str] = [plan.text]

    @workflow.run
    async def run(self, plan: Plan) -> str:
        """Do what ``plan`` says, then return the first value delivered."""
        if plan.temporal_written:
            self.seen.append(
                await workflow.execute_local_activity(
                    quick, plan.text, start_to_close_timeout=timedelta(seconds=10)
                )
            )
            if workflow.patched("enforcement-v2"):
                self.seen.append("patched")
            self.seen.append(
                await workflow.execute_activity(
                    times_out_once,
                    plan.text,
                    start_to_close_timeout=timedelta(seconds=1),
                    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
                )
            )
        if plan.outside_activity:
            self.seen.append(
                await workflow.execute_activity(
                    completed_outside, plan.text, start_to_close_timeout=timedelta(seconds=120)
                )
            )
            return "|".join(self.seen)
        await workflow.wait_condition(lambda: len(self.seen) > 1 + 3 * plan.temporal_written)
        return "|".join(self.seen)

    @workflow.signal
    def deliver(self, text: str) -> None:
        """Deliver a value."""
        self.seen.append(text)

    @workflow.update
    def put(self, text: str) -> str:
        """Deliver a value and answer."""
        self.seen.append(text)
        return f"put-{text}"

    @workflow.query
    def count(self, text: str) -> str:
        """How many values were seen (with the caller's word)."""
        return f"{text}:{len(self.seen)}"


_ACTIVITIES = [quick, times_out_once, completed_outside]


def _config(ring: Path, *, enforce: bool = False, read_only: bool = False) -> ShieldConfig:
    return ShieldConfig(
        keys=KeysConfig(uri=f"local://{ring}"),
        require_encryption=("default",) if enforce else (),
        read_only=read_only,
    )


def _worker(client: Client, queue: str) -> Worker:
    # No cache: every workflow task replays the whole history, markers included.
    return Worker(
        client,
        task_queue=queue,
        workflows=[GuardedWorkflow],
        activities=_ACTIVITIES,
        max_cached_workflows=0,
    )


async def _wait_for(handle: WorkflowHandle[Any, Any], event_type: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        history = await handle.fetch_history()
        if any(e.event_type == event_type for e in history.events):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {EventType.Name(event_type)} in {handle.id}")  # type: ignore[arg-type]


async def _assert_refused_visibly(
    dev_server: DevServer, shield: Client, handle: WorkflowHandle[Any, Any]
) -> None:
    """The workflow task failed on the planted payload, is retried, and shows it."""
    deadline = time.monotonic() + 30
    while True:
        pending = (await handle.describe()).raw_description.pending_workflow_task
        if pending.attempt >= 2:
            break
        assert time.monotonic() < deadline, "the workflow task was never retried"
        await asyncio.sleep(0.2)
    history = await handle.fetch_history()
    failed = [
        e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    assert failed, "no WORKFLOW_TASK_FAILED event"
    error = await shield.data_converter.decode_failure(
        failed[-1].workflow_task_failed_event_attributes.failure
    )
    assert isinstance(error, ApplicationError)
    assert error.type == "PlaintextRefusedError"
    assert REFUSAL in str(error)
    assert PLANTED not in str(error)
    # Workflow code never ran past the planted payload: no task completed after it.
    last_failed = max(i for i, e in enumerate(history.events) if e in failed)
    assert not any(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        for e in history.events[last_failed:]
    )
    # The `temporal` CLI shows the retried workflow task too.
    cli = temporal_cli()
    assert cli is not None
    out = await asyncio.to_thread(
        subprocess.run,
        [
            cli,
            "workflow",
            "describe",
            "--address",
            dev_server.address,
            "-w",
            handle.id,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    described = json.loads(out.stdout)
    assert int(described["pendingWorkflowTask"]["attempt"]) >= 2
    assert described["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"


async def test_rollout_from_plaintext_to_enforcement(dev_server: DevServer, tmp_path: Path) -> None:
    prefix = f"enforce-{uuid.uuid4().hex[:8]}"
    queue = prefix
    raw = await Client.connect(dev_server.address)
    # 1. Plaintext era: no codec anywhere. A workflow starts and waits.
    async with _worker(raw, queue):
        old = await raw.start_workflow(
            GuardedWorkflow.run, Plan(text="plain-era"), id=f"{prefix}-old", task_queue=queue
        )
        await _wait_for(old, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    # 2. Readers: every process can decode our envelopes, nothing writes them yet.
    reader = await Client.connect(
        dev_server.address,
        plugins=[ShieldPlugin(_config(ring, read_only=True))],
    )
    async with _worker(reader, queue):
        mid = await reader.start_workflow(
            GuardedWorkflow.run, Plan(text="reader-era"), id=f"{prefix}-mid", task_queue=queue
        )
        await mid.signal(GuardedWorkflow.deliver, "read")
        assert await mid.result() == "reader-era|read"
        # A reader writes nothing encrypted (older images can still read what it
        # writes) but reads what the first writer encrypts.
        started = await raw.get_workflow_handle(mid.id).fetch_history()
        first = started.events[0].workflow_execution_started_event_attributes.input.payloads[0]
        assert first.metadata["encoding"] == b"json/plain"
        writer = await Client.connect(dev_server.address, plugins=[ShieldPlugin(_config(ring))])
        early = await writer.start_workflow(
            GuardedWorkflow.run, Plan(text="early"), id=f"{prefix}-early", task_queue=queue
        )
        sealed = (await raw.get_workflow_handle(early.id).fetch_history()).events[0]
        assert is_envelope(
            sealed.workflow_execution_started_event_attributes.input.payloads[0].data
        )
        await reader.get_workflow_handle(early.id).signal(GuardedWorkflow.deliver, "seen")
        assert await reader.get_workflow_handle(early.id).result() == "early|seen"
    # 3. Writers: the plugin everywhere. The old run finishes on mixed history.
    shield = await Client.connect(dev_server.address, plugins=[ShieldPlugin(_config(ring))])
    async with _worker(shield, queue):
        await shield.get_workflow_handle(old.id).signal(GuardedWorkflow.deliver, "write")
        assert await shield.get_workflow_handle(old.id).result() == "plain-era|write"
        new = await shield.start_workflow(
            GuardedWorkflow.run,
            Plan(text="new", temporal_written=True),
            id=f"{prefix}-new",
            task_queue=queue,
        )
        await new.signal(GuardedWorkflow.deliver, "sealed")
        assert set((await new.result()).split("|")) == {
            "new",
            "new-quick",
            "patched",
            "new-retried",
            "sealed",
        }
    # 4. A clean scan of what runs since the switch (the old runs are not clean).
    await wait_visible(
        raw, f"WorkflowId STARTS_WITH '{prefix}' AND ExecutionStatus = 'Completed'", 4
    )
    since = await scan(raw, query=f"WorkflowId = '{new.id}'")
    assert since.clean, since.as_table()
    # Temporal's own plaintext is listed apart: markers and the timeout failure.
    assert len(since.temporal_written) >= 3, since.as_table()
    before = await scan(raw, query=f"WorkflowId = '{old.id}' OR WorkflowId = '{mid.id}'")
    assert not before.clean
    # 5. Enforcement: markers and server timeout failures never trip it, even
    # with every task replayed from history...
    enforcing = await Client.connect(
        dev_server.address, plugins=[ShieldPlugin(_config(ring, enforce=True))]
    )
    async with _worker(enforcing, queue):
        guarded = await enforcing.start_workflow(
            GuardedWorkflow.run,
            Plan(text="guarded", temporal_written=True),
            id=f"{prefix}-guarded",
            task_queue=queue,
        )
        await guarded.signal(GuardedWorkflow.deliver, "sealed")
        assert set((await guarded.result()).split("|")) == {
            "guarded",
            "guarded-quick",
            "patched",
            "guarded-retried",
            "sealed",
        }
        # Clients refuse too: the reader era's run has a plaintext result.
        with pytest.raises(PlaintextRefusedError):
            await enforcing.get_workflow_handle(mid.id).result()
        # 6. ...but a plaintext signal planted by a raw client is refused.
        victim = await enforcing.start_workflow(
            GuardedWorkflow.run, Plan(text="victim"), id=f"{prefix}-victim", task_queue=queue
        )
        await _wait_for(victim, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
        await raw.get_workflow_handle(victim.id).signal("deliver", PLANTED)
        await _assert_refused_visibly(dev_server, enforcing, victim)
        await victim.terminate("planted payload")


@pytest.mark.parametrize("place", ["input", "signal", "update", "activity result", "query arg"])
async def test_planted_plaintext_is_refused_wherever_a_worker_decodes(
    dev_server: DevServer, tmp_path: Path, place: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"planted-{uuid.uuid4().hex[:8]}"
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    enforcing = await Client.connect(
        dev_server.address, plugins=[ShieldPlugin(_config(ring, enforce=True))]
    )
    # Writes plaintext like a raw client, and reads our envelopes (the refusal).
    raw = await Client.connect(
        dev_server.address,
        plugins=[ShieldPlugin(_config(ring, read_only=True))],
    )
    async with _worker(enforcing, queue):
        if place == "input":
            planted = await raw.start_workflow(
                GuardedWorkflow.run, Plan(text=PLANTED), id=queue, task_queue=queue
            )
            handle = enforcing.get_workflow_handle(planted.id)
            await _assert_refused_visibly(dev_server, enforcing, handle)
            await handle.terminate("planted input")
            return
        handle = await enforcing.start_workflow(
            GuardedWorkflow.run,
            Plan(text="sealed", outside_activity=place == "activity result"),
            id=queue,
            task_queue=queue,
        )
        await _wait_for(handle, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
        if place == "query arg":
            # A query fails for its caller and leaves history alone. The caller
            # sees the failure converter's "Encoded failure" (a query failure
            # travels as a message only); the worker logs the refusal.
            with pytest.raises(WorkflowQueryFailedError) as raised:
                await raw.get_workflow_handle(queue).query(GuardedWorkflow.count, PLANTED)
            assert PLANTED not in str(raised.value)
            refusals = [r for r in caplog.records if r.exc_info and REFUSAL in str(r.exc_info[1])]
            assert refusals
            assert all(PLANTED not in r.getMessage() for r in caplog.records)
            assert await handle.query(GuardedWorkflow.count, "sealed") == "sealed:1"
            await handle.signal(GuardedWorkflow.deliver, "done")
            assert await handle.result() == "sealed|done"
            return
        pending: asyncio.Task[object] | None = None
        if place == "signal":
            await raw.get_workflow_handle(queue).signal("deliver", PLANTED)
        elif place == "update":
            # The update is never accepted: its caller waits until we give up.
            pending = asyncio.create_task(
                raw.get_workflow_handle(queue).execute_update("put", PLANTED)
            )
        else:
            deadline = time.monotonic() + 30
            while queue not in _TOKENS:  # started activities are in history only once done
                assert time.monotonic() < deadline, "the activity never started"
                await asyncio.sleep(0.1)
            await raw.get_async_activity_handle(task_token=_TOKENS[queue]).complete(PLANTED)
        try:
            await _assert_refused_visibly(dev_server, enforcing, handle)
        finally:
            if pending is not None:
                pending.cancel()
        await handle.terminate("planted payload")


class _TenantHeader(Interceptor):
    """A client interceptor adding a header, the way tracing or tenancy interceptors do."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _TenantOutbound(next)


class _TenantOutbound(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        header = DataConverter.default.payload_converter.to_payloads([PLANTED])[0]
        input.headers = {**input.headers, "tenant": header}
        return await super().start_workflow(input)


async def test_headers_are_encrypted_and_planted_plaintext_headers_refused(
    dev_server: DevServer, tmp_path: Path
) -> None:
    queue = f"headers-{uuid.uuid4().hex[:8]}"
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    raw = await Client.connect(dev_server.address)
    enforcing = await Client.connect(
        dev_server.address, plugins=[ShieldPlugin(_config(ring, enforce=True))]
    )
    sealing = await Client.connect(
        dev_server.address, plugins=[ShieldPlugin(_config(ring))], interceptors=[_TenantHeader()]
    )
    # Writes plaintext, headers included, through the same interceptor.
    planting = await Client.connect(
        dev_server.address,
        plugins=[ShieldPlugin(_config(ring, read_only=True))],
        interceptors=[_TenantHeader()],
    )
    async with _worker(enforcing, queue):
        sealed = await sealing.start_workflow(
            GuardedWorkflow.run, Plan(text="sealed"), id=f"{queue}-sealed", task_queue=queue
        )
        await sealed.signal(GuardedWorkflow.deliver, "done")
        assert await sealed.result() == "sealed|done"
        started = (await raw.get_workflow_handle(sealed.id).fetch_history()).events[0]
        header = started.workflow_execution_started_event_attributes.header.fields["tenant"]
        assert is_envelope(header.data)
        assert PLANTED.encode() not in header.data
        planted = await planting.start_workflow(
            GuardedWorkflow.run, Plan(text="x"), id=f"{queue}-planted", task_queue=queue
        )
        started = (await raw.get_workflow_handle(planted.id).fetch_history()).events[0]
        header = started.workflow_execution_started_event_attributes.header.fields["tenant"]
        assert PLANTED.encode() in header.data  # the plant really is plaintext
        handle = enforcing.get_workflow_handle(planted.id)
        await _assert_refused_visibly(dev_server, enforcing, handle)
        await handle.terminate("planted header")


def test_require_encryption_needs_encrypted_headers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encrypt_headers"):
        ShieldConfig(require_encryption=("*",), encrypt_headers=False)
