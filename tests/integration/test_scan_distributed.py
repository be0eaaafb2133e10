"""The distributed scan on a real dev server: two scan-worker processes, one SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin, scan
from temporal_shield.converter._scan_workflow import (
    PROGRESS_QUERY,
    DistributedScanOptions,
    ScanActivities,
    _bounded_query,
)

from .conftest import wait_visible
from .workflows import MARK, EchoWorkflow, mark

pytestmark = pytest.mark.integration

RUNS = 60  # half encrypted, half plaintext; 20 pages of 3


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "temporal_shield", *args]


def _keys(tmp_path: Path) -> tuple[Path, ShieldConfig]:
    """A fresh keyring and the config using it (workers get it through the environment)."""
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    return ring, ShieldConfig(keys=KeysConfig(uri=f"local://{ring}"))


def _env(ring: Path) -> dict[str, str]:
    return {**os.environ, "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}"}


async def _populate(address: str, config: ShieldConfig, queue: str) -> None:
    """RUNS/2 completed runs through the codec, RUNS/2 plaintext runs terminated."""
    client = await Client.connect(address, plugins=[ShieldPlugin(config)])
    plain = await Client.connect(address)
    handles = [
        await plain.start_workflow(
            EchoWorkflow.run, mark("plain"), id=f"{queue}-plain-{i}", task_queue=queue
        )
        for i in range(RUNS // 2)
    ]
    await asyncio.gather(*(h.terminate() for h in handles))
    async with Worker(client, task_queue=queue, workflows=[EchoWorkflow]):
        await asyncio.gather(
            *(
                client.execute_workflow(
                    EchoWorkflow.run, mark("enc"), id=f"{queue}-enc-{i}", task_queue=queue
                )
                for i in range(RUNS // 2)
            )
        )


async def _worker(address: str, ring: Path, queue: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *_cli("scan-worker", "--address", address, "--task-queue", queue),
        env=_env(ring),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _retried_pages(client: Client, workflow_id: str) -> int:
    """Scan activities that completed on a later attempt, over every run of the workflow."""
    retried = 0
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        handle = client.get_workflow_handle(workflow_id, run_id=execution.run_id)
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                retried += event.activity_task_started_event_attributes.attempt > 1
    return retried


async def test_distributed_scan_survives_a_killed_worker_with_the_sequential_report(
    dev_server: DevServer, tmp_path: Path
) -> None:
    ring, config = _keys(tmp_path)
    tag = uuid.uuid4().hex[:6]
    data_queue, scan_queue, scan_id = f"data-{tag}", f"scanq-{tag}", f"scan-{tag}"
    await _populate(dev_server.address, config, data_queue)
    query = f"TaskQueue = '{data_queue}'"
    raw = await Client.connect(dev_server.address)
    await wait_visible(raw, f"{query} AND ExecutionStatus != 'Running'", RUNS)
    expected = await scan(raw, query=query)
    assert expected.workflows == RUNS
    assert not expected.clean
    assert expected.encrypted > 0

    first = await _worker(dev_server.address, ring, scan_queue)
    second: asyncio.subprocess.Process | None = None
    follower = await asyncio.create_subprocess_exec(
        *_cli(
            "scan",
            "--distributed",
            "--json",
            "--address",
            dev_server.address,
            "--query",
            query,
            "--task-queue",
            scan_queue,
            "--id",
            scan_id,
            "--page-size",
            "3",
            "--pages-in-flight",
            "2",
            "--concurrency",
            "2",
            "--pages-per-run",
            "4",
            "--heartbeat-timeout",
            "2",
        ),
        env=_env(ring),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
        handle = client.get_workflow_handle(scan_id)
        progress: dict[str, Any] = {}
        for _ in range(600):  # the first worker alone has scanned some pages, not all
            try:
                progress = await handle.query(PROGRESS_QUERY)
            except (RPCError, WorkflowQueryFailedError):  # not started yet, or between runs
                progress = {}
            if progress.get("pages", 0) >= 2:
                break
            await asyncio.sleep(0.05)
        assert progress.get("pages", 0) >= 2, progress
        assert progress["workflows"] < RUNS  # mid-run
        first.send_signal(signal.SIGKILL)
        await first.wait()
        second = await _worker(dev_server.address, ring, scan_queue)
        out, err = await asyncio.wait_for(follower.communicate(), timeout=120)
    finally:
        for process in (first, second, follower):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    assert follower.returncode == 1, err.decode()  # plaintext found, as sequentially
    assert json.loads(out) == expected.as_json()
    assert MARK.encode() not in out + err  # counts only, never payload contents
    # The work really was resumed: a page or listing attempt was retried after
    # the kill, and the workflow continued as new to bound its history.
    assert await _retried_pages(client, scan_id) >= 1
    runs = [e async for e in client.list_workflows(f"WorkflowId = '{scan_id}'")]
    assert len(runs) > 1


async def test_distributed_scan_errors_exit_2_with_one_line(
    dev_server: DevServer, tmp_path: Path
) -> None:
    ring, _ = _keys(tmp_path)
    queue = f"scanq-{uuid.uuid4().hex[:6]}"
    worker = await _worker(dev_server.address, ring, queue)
    try:
        cases = {
            "bad query": ["--address", dev_server.address, "--query", "NoSuchField = 'x'"],
            "unreachable": ["--address", "127.0.0.1:1"],
            "limit": ["--address", dev_server.address, "--limit", "3"],
        }
        for name, args in cases.items():
            result = await asyncio.to_thread(
                subprocess.run,
                _cli("scan", "--distributed", "--task-queue", queue, "--id", queue, *args),
                env=_env(ring),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 2, (name, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, (name, lines)
            assert lines[0].startswith("temporal-shield: error:"), (name, lines)
            assert "Traceback" not in result.stderr
        bad = await asyncio.to_thread(
            subprocess.run,
            _cli("scan", "--distributed", "--page-size", "0"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert bad.returncode == 2
        assert "at least 1" in bad.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        stderr = (await asyncio.wait_for(worker.communicate(), timeout=30))[1]
    assert worker.returncode == 0, stderr.decode()  # a clean stop on SIGTERM


@pytest.mark.parametrize(
    "bad",
    [
        {"page_size": 0},
        {"pages_in_flight": -1},
        {"run_concurrency": 0},
        {"pages_per_run": 0},
        {"heartbeat_timeout_seconds": 0.0},
        {"heartbeat_timeout_seconds": -5.0},
        {"maximum_attempts": -1},
    ],
)
def test_distributed_scan_options_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        DistributedScanOptions(**bad)


def test_scan_is_bounded_by_its_start_so_it_never_scans_itself() -> None:
    until = "2026-11-23T21:00:00+00:00"
    assert _bounded_query("", until) == f'StartTime < "{until}"'
    # The user's query is parenthesised, so an OR in it cannot escape the bound.
    assert _bounded_query("A = 1 OR B = 2", until) == f'(A = 1 OR B = 2) AND StartTime < "{until}"'


async def test_activities_refuse_a_client_with_a_codec(
    dev_server: DevServer, tmp_path: Path
) -> None:
    _, config = _keys(tmp_path)
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    with pytest.raises(ValueError, match="without a payload codec"):
        ScanActivities(client)
    ScanActivities(Client(client.service_client, namespace=client.namespace))  # raw: accepted
