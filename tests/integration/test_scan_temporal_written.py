"""What Temporal itself writes in clear, captured from a real dev server, and how scan reports it.

These tests are the evidence behind ``docs/scan.md``: a fully encrypted namespace
with local activities, ``workflow.patched()`` and every kind of activity timeout
scans clean (exit 0) with those items listed apart; another codec's ciphertext
and a forged ``binary/encrypted`` label are findings (exit 1).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.duration_pb2 import Duration
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.exceptions import ActivityError
from temporalio.service import RPCError
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin, scan

from .conftest import wait_visible

pytestmark = pytest.mark.integration

SECRET = "pan-4111111111111111"


@activity.defn
async def quick(text: str) -> str:
    """Returns at once (a local activity's result goes through the codec)."""
    return f"{text}-done"


@activity.defn
async def slow(text: str) -> str:
    """Outlives every timeout the workflow sets."""
    await asyncio.sleep(3)
    return text


@activity.defn
async def beat_then_stall(text: str) -> str:
    """Heartbeats once (details through the codec), then misses the heartbeat timeout."""
    activity.heartbeat(f"progress {text}")
    await asyncio.sleep(3)
    return text


@workflow.defn(sandboxed=False)
class TemporalWritesWorkflow:
    """A local activity (ok and timed out), a patch and a deprecated patch, four timeouts."""

    @workflow.run
    async def run(self, text: str) -> list[str]:
        """Everything Temporal writes about, at once (timeouts run concurrently)."""
        out = [
            await workflow.execute_local_activity(
                quick, text, start_to_close_timeout=timedelta(seconds=5)
            )
        ]
        if workflow.patched("scan-v2"):
            out.append("patched")
        workflow.deprecate_patch("scan-old")
        once = RetryPolicy(maximum_attempts=1)
        calls = [
            workflow.execute_activity(
                slow,
                text,
                start_to_close_timeout=timedelta(seconds=1),
                retry_policy=RetryPolicy(
                    maximum_attempts=2, initial_interval=timedelta(milliseconds=100)
                ),
            ),
            workflow.execute_activity(slow, text, schedule_to_close_timeout=timedelta(seconds=1)),
            workflow.execute_activity(
                beat_then_stall,
                text,
                start_to_close_timeout=timedelta(seconds=10),
                heartbeat_timeout=timedelta(seconds=1),
                retry_policy=once,
            ),
            workflow.execute_activity(
                slow,
                text,
                task_queue=f"{workflow.info().task_queue}-nobody",
                schedule_to_start_timeout=timedelta(seconds=1),
                start_to_close_timeout=timedelta(seconds=5),
                retry_policy=once,
            ),
            workflow.execute_local_activity(
                slow, text, start_to_close_timeout=timedelta(seconds=1), retry_policy=once
            ),
        ]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            assert isinstance(outcome, ActivityError), outcome
            out.append(type(outcome.cause).__name__)
        return out


@workflow.defn(sandboxed=False)
class OutlivesItsRunTimeout:
    """Sleeps past its run timeout: the server retries it and writes why."""

    @workflow.run
    async def run(self) -> None:
        """Sleep longer than any run timeout the test sets."""
        await asyncio.sleep(30)


async def fresh_namespace(address: str) -> str:
    """Register a namespace of its own on the dev server and wait until it is usable."""
    name = f"scan-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(address)
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    for _ in range(100):
        try:
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=name)
            )
            ns_client = await Client.connect(address, namespace=name)
            _ = [e async for e in ns_client.list_workflows(limit=1)]
            return name
        except RPCError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"namespace {name} never became usable")


def console_script() -> str:
    """The installed ``temporal-shield`` console script (the real entry point)."""
    return str(Path(sys.executable).with_name("temporal-shield"))


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script; never raises on a non-zero status."""
    return subprocess.run(
        [console_script(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _shield(tmp_path: Path) -> ShieldConfig:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    return ShieldConfig(keys=KeysConfig(uri=f"local://{ring}"))


async def test_encrypted_namespace_with_temporal_writes_scans_clean(
    dev_server: DevServer, tmp_path: Path
) -> None:
    namespace = await fresh_namespace(dev_server.address)
    client = await Client.connect(
        dev_server.address, namespace=namespace, plugins=[ShieldPlugin(_shield(tmp_path))]
    )
    queue = f"tw-{uuid.uuid4().hex[:6]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[TemporalWritesWorkflow, OutlivesItsRunTimeout],
        activities=[quick, slow, beat_then_stall],
    ):
        out = await client.execute_workflow(
            TemporalWritesWorkflow.run, SECRET, id=queue, task_queue=queue
        )
        retried = await client.start_workflow(
            OutlivesItsRunTimeout.run,
            id=f"{queue}-run-timeout",
            task_queue=queue,
            run_timeout=timedelta(seconds=1),
            retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=0.1)),
        )
        with pytest.raises(WorkflowFailureError):
            await retried.result()
    assert out[:2] == [f"{SECRET}-done", "patched"]
    assert out[2:] == ["TimeoutError"] * 5
    raw = await Client.connect(dev_server.address, namespace=namespace)
    await wait_visible(raw, "ExecutionStatus = 'Completed' OR ExecutionStatus = 'TimedOut'", 3)

    # The evidence: exactly what the dev server stored in the Temporal-written places.
    written = await _temporal_written_items(raw, queue)
    assert (
        written["local activity marker keys"]
        == [
            [
                "activation_index",
                "activity_id",
                "activity_type",
                "attempt",
                "backoff",
                "complete_time",
                "original_schedule_time",
                "seq",
            ]
        ]
        * 2
    )
    assert written["patch markers"] == [
        {"id": "scan-v2", "deprecated": False},
        {"id": "scan-old", "deprecated": True},
    ]
    assert sorted(set(written["server failures"])) == [
        (
            "Server",
            "Not enough time to schedule next retry before activity ScheduleToClose"
            " timeout, giving up retrying",
            "TIMEOUT_TYPE_SCHEDULE_TO_CLOSE",
        ),
        ("Server", "activity Heartbeat timeout", "TIMEOUT_TYPE_HEARTBEAT"),
        ("Server", "activity ScheduleToStart timeout", "TIMEOUT_TYPE_SCHEDULE_TO_START"),
        ("Server", "activity StartToClose timeout", "TIMEOUT_TYPE_START_TO_CLOSE"),
    ]
    assert written["marker failures"] == [("", "Activity timed out", "TIMEOUT_TYPE_START_TO_CLOSE")]

    # The retried run starts with the server's account of the timed-out one.
    last = raw.get_workflow_handle(f"{queue}-run-timeout")
    async for event in last.fetch_history_events():
        attrs = event.workflow_execution_started_event_attributes
        if event.HasField("workflow_execution_started_event_attributes"):
            failure = attrs.continued_failure
            assert (failure.source, failure.message, failure.stack_trace) == (
                "Server",
                "workflow timeout",
                "",
            )
            assert _timeout_name(failure.timeout_failure_info.timeout_type) == (
                "TIMEOUT_TYPE_START_TO_CLOSE"
            )

    report = await scan(raw)
    assert report.workflows == 3  # the workflow, and both runs of the timed-out one
    assert report.clean, report.as_table()
    assert not report.plaintext
    assert not report.foreign_encryption
    kinds = {kind for _, _, kind in report.temporal_written}
    assert kinds == {
        "local activity marker",
        "patch marker",
        "SDK local activity StartToClose timeout",
        "server StartToClose timeout",
        "server ScheduleToClose timeout",
        "server Heartbeat timeout",
        "server ScheduleToStart timeout",
        "server workflow run timeout",
    }
    where = {field for _, field, _ in report.temporal_written}
    assert "marker_recorded_event_attributes.details[data].payloads[]" in where
    assert "marker_recorded_event_attributes.details[patch-data].payloads[]" in where
    # last_failure of the retried attempt: the server's timeout failure again
    assert "activity_task_started_event_attributes.last_failure.message" in where
    assert report.encrypted > 5  # input, results, heartbeat details, ...

    cli = await asyncio.to_thread(
        run_cli, ["scan", "--address", dev_server.address, "--namespace", namespace, "-o", "json"]
    )
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout)
    assert answer["clean"] is True
    assert {row["kind"] for row in answer["temporal_written"]} == kinds
    assert SECRET not in cli.stdout
    text = await asyncio.to_thread(
        run_cli, ["scan", "--address", dev_server.address, "--namespace", namespace]
    )
    assert text.returncode == 0, text.stderr
    assert "written by Temporal, no application data" in text.stdout
    assert "NOT ENCRYPTED" not in text.stdout


async def _temporal_written_items(client: Client, workflow_id: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {
        "local activity marker keys": [],
        "patch markers": [],
        "server failures": [],
        "marker failures": [],
    }
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        kind = str(event.WhichOneof("attributes"))
        if kind == "marker_recorded_event_attributes":
            marker = event.marker_recorded_event_attributes
            key = "data" if marker.marker_name == "core_local_activity" else "patch-data"
            assert set(marker.details) <= {key, "result"}
            [data] = marker.details[key].payloads
            assert data.metadata == {"encoding": b"json/plain"}
            value = json.loads(data.data)
            if marker.marker_name == "core_local_activity":
                found["local activity marker keys"].append(sorted(value))
                if marker.HasField("failure"):
                    f = marker.failure
                    found["marker failures"].append(
                        (f.source, f.message, _timeout_name(f.timeout_failure_info.timeout_type))
                    )
                    assert not f.stack_trace
                else:  # the result sits beside the data, through the codec
                    assert marker.details["result"].payloads[0].data[:2] == b"TS"
            else:
                assert marker.marker_name == "core_patch"
                found["patch markers"].append(value)
        for failure in _failures(getattr(event, kind)):
            if failure.source == "Server":
                assert not failure.stack_trace
                assert failure.HasField("timeout_failure_info")
                found["server failures"].append(
                    (
                        failure.source,
                        failure.message,
                        _timeout_name(failure.timeout_failure_info.timeout_type),
                    )
                )
    return found


def _timeout_name(value: int) -> str:
    from temporalio.api.enums.v1 import TimeoutType

    return TimeoutType.Name(TimeoutType.ValueType(value))


def _failures(message: Any) -> list[Any]:
    from temporalio.api.failure.v1 import Failure

    from temporal_shield.converter import iter_messages

    out: list[Any] = []
    for _, found in iter_messages(message, (Failure,)):
        failure: Any = found
        while failure is not None:
            out.append(failure)
            failure = failure.cause if failure.HasField("cause") else None
    return out


class SampleCodec(PayloadCodec):
    """Temporal's samples-python encryption codec: nonce || AES-GCM, no magic."""

    def __init__(self) -> None:
        self.key = AESGCM(os.urandom(32))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            nonce = os.urandom(12)
            data = nonce + self.key.encrypt(nonce, p.SerializeToString(), None)
            out.append(
                Payload(
                    metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"test-key"},
                    data=data,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload.FromString(self.key.decrypt(p.data[:12], p.data[12:], None)) for p in payloads
        ]


class ForgedLabelCodec(PayloadCodec):
    """Labels plaintext ``binary/encrypted`` without encrypting anything."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": b"binary/encrypted", "forged": base64.b64encode(b"1")},
                data=p.data,
            )
            for p in payloads
        ]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload(metadata={"encoding": b"json/plain"}, data=p.data) for p in payloads]


@workflow.defn(sandboxed=False)
class EchoOnce:
    """Returns its input."""

    @workflow.run
    async def run(self, text: str) -> str:
        """Echo."""
        return text


async def _run_with(address: str, namespace: str, codec: PayloadCodec, wid: str) -> None:
    client = await Client.connect(
        address, namespace=namespace, data_converter=DataConverter(payload_codec=codec)
    )
    async with Worker(client, task_queue=wid, workflows=[EchoOnce]):
        assert await client.execute_workflow(EchoOnce.run, SECRET, id=wid, task_queue=wid) == SECRET


async def test_foreign_ciphertext_and_forged_label_are_findings(dev_server: DevServer) -> None:
    namespace = await fresh_namespace(dev_server.address)
    await _run_with(dev_server.address, namespace, SampleCodec(), "sample-codec")
    await _run_with(dev_server.address, namespace, ForgedLabelCodec(), "forged-label")
    raw = await Client.connect(dev_server.address, namespace=namespace)
    await wait_visible(raw, "ExecutionStatus = 'Completed'", 2)
    report = await scan(raw)
    input_field = (
        "WORKFLOW_EXECUTION_STARTED",
        "workflow_execution_started_event_attributes.input.payloads[]",
    )
    assert report.foreign_encryption[input_field] == 1
    assert report.first_seen[("foreign_encryption", *input_field)] == "sample-codec"
    assert report.plaintext[input_field] == 1
    assert report.first_seen[("plaintext", *input_field)] == "forged-label"
    assert report.encrypted == 0
    assert not report.clean

    base = ["scan", "--address", dev_server.address, "--namespace", namespace]
    cli = await asyncio.to_thread(run_cli, [*base, "--query", "WorkflowId = 'sample-codec'"])
    assert cli.returncode == 1, cli.stderr
    assert "ENCRYPTED BY ANOTHER CODEC" in cli.stdout
    assert "NOT ENCRYPTED" not in cli.stdout
    allowed = await asyncio.to_thread(
        run_cli, [*base, "--query", "WorkflowId = 'sample-codec'", "--allow-foreign-encryption"]
    )
    assert allowed.returncode == 0, allowed.stderr
    forged = await asyncio.to_thread(run_cli, [*base, "--allow-foreign-encryption", "--json"])
    assert forged.returncode == 1  # the forged label is plaintext, never allowed
    rows = json.loads(forged.stdout)["plaintext"]
    assert {r["example_workflow_id"] for r in rows} == {"forged-label"}
    assert SECRET not in forged.stdout
