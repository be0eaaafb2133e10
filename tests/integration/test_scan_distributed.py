"""The distributed scan on a real dev server: two scan-worker processes, one SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import ENCODING, KEY_ID_METADATA, Keyring
from temporal_shield.converter import (
    KeysConfig,
    ShieldConfig,
    ShieldPlugin,
    build_codec,
    rewrap,
    scan,
)
from temporal_shield.converter._rewrap_workflow import REWRAP_ACTIVITY
from temporal_shield.converter._scan_workflow import (
    PROGRESS_QUERY,
    SCAN_ACTIVITY,
    DistributedScanOptions,
    ScanActivities,
    _bounded_query,
)

from .conftest import offload_setup, wait_visible
from .workflows import MARK, EchoWorkflow, mark

pytestmark = pytest.mark.integration

RUNS = 60  # half encrypted, half plaintext; 6 pages of 10


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


async def _page_running(handle: Any) -> bool:
    """Whether a page activity (scan or rewrap) is started and not yet completed."""
    return any(
        a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        and a.activity_type.name in (SCAN_ACTIVITY, REWRAP_ACTIVITY)
        for a in (await handle.describe()).raw_description.pending_activities
    )


async def _wait_for_pages(handle: Any, pages: int) -> dict[str, Any]:
    """Progress once ``pages`` pages are folded and a page activity is running.

    Only the first worker polls then, so the running activity is that worker's:
    killing it now makes the server retry that page elsewhere.
    """
    progress: dict[str, Any] = {}
    for _ in range(1200):
        try:
            progress = await handle.query(PROGRESS_QUERY)
            running = await _page_running(handle)
        except (RPCError, WorkflowQueryFailedError):  # not started yet, or between runs
            progress, running = {}, False
        if progress.get("pages", 0) >= pages and running:
            return progress
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {pages} pages folded with one running: {progress}")


async def _kill_mid_run(
    address: str,
    config: ShieldConfig,
    workflow_id: str,
    workers: tuple[asyncio.subprocess.Process, Callable[[], Awaitable[asyncio.subprocess.Process]]],
    follower: asyncio.subprocess.Process,
    *,
    pages: int,
    counted: str,
    total: int,
) -> tuple[Client, bytes, bytes]:
    """SIGKILL the first worker mid-run, start the second, return the follower's output."""
    first, start_second = workers
    second: asyncio.subprocess.Process | None = None
    try:
        client = await Client.connect(address, plugins=[ShieldPlugin(config)])
        handle = client.get_workflow_handle(workflow_id)
        for _ in range(50):
            progress = await _wait_for_pages(handle, pages)
            # Frozen, the worker cannot finish the page between the look and the
            # kill (it did once, and no page was retried); a completion already
            # on its way lands first.
            first.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.2)
            if await _page_running(handle):
                break
            first.send_signal(signal.SIGCONT)
        else:
            raise AssertionError("never caught the first worker in the middle of a page")
        assert progress[counted] < total  # mid-run
        first.send_signal(signal.SIGKILL)
        await first.wait()
        second = await start_second()
        out, err = await asyncio.wait_for(follower.communicate(), timeout=120)
    finally:
        for process in (first, second, follower):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    return client, out, err


async def _chains(client: Client, workflow_id: str) -> int:
    """Runs of ``workflow_id`` that were started, not continued from another run."""
    heads = 0
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        handle = client.get_workflow_handle(workflow_id, run_id=execution.run_id)
        async for event in handle.fetch_history_events():
            started = event.workflow_execution_started_event_attributes
            heads += not started.continued_execution_run_id
            break
    return heads


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
    argv = _cli(
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
        "10",
        "--pages-in-flight",
        "2",
        "--concurrency",
        "1",
        "--pages-per-run",
        "2",
        "--heartbeat-timeout",
        "2",
    )

    async def follow() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=_env(ring),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    # Two followers of one id: whichever comes second attaches to the first's scan.
    follower, attached = await follow(), await follow()
    try:
        client, out, err = await _kill_mid_run(
            dev_server.address,
            config,
            scan_id,
            (first, lambda: _worker(dev_server.address, ring, scan_queue)),
            follower,
            pages=1,
            counted="workflows",
            total=RUNS,
        )
        assert follower.returncode == 1, err.decode()  # plaintext found, as sequentially
        assert json.loads(out) == expected.as_json()
        attached_out, attached_err = await asyncio.wait_for(attached.communicate(), timeout=60)
        assert attached.returncode == 1, attached_err.decode()
        assert attached_out == out
        assert await _chains(client, scan_id) == 1  # one scan, not two
    finally:
        if attached.returncode is None:
            attached.kill()
            await attached.wait()
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
        scan_ = ["scan", "--distributed", "--task-queue", queue, "--id", queue]
        rewrap_ = ["keys", "rewrap", "--distributed", "--bucket", "b", "--task-queue", queue]
        cases = {
            "bad query": [*scan_, "--address", dev_server.address, "--query", "NoSuchField = 'x'"],
            "unreachable": [*scan_, "--address", "127.0.0.1:1"],
            "limit": [*scan_, "--address", dev_server.address, "--limit", "3"],
            "rewrap unreachable": [*rewrap_, "--address", "127.0.0.1:1"],
            "rewrap --start-after": [
                *rewrap_,
                "--address",
                dev_server.address,
                "--start-after",
                "k",
            ],
        }
        for name, args in cases.items():
            result = await asyncio.to_thread(
                subprocess.run,
                _cli(*args),
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
        for flag, value, message in (
            ("--page-size", "0", "at least 1"),
            ("--pages-in-flight", "x", "whole number"),
            ("--heartbeat-timeout", "nan", "positive number of seconds"),
            ("--heartbeat-timeout", "-1", "positive number of seconds"),
        ):
            bad = await asyncio.to_thread(
                subprocess.run,
                _cli("scan", "--distributed", flag, value),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert bad.returncode == 2, (flag, value)
            assert message in bad.stderr, (flag, value, bad.stderr)
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


OBJECTS = 90  # 30 pages of 3


async def test_distributed_rewrap_survives_a_killed_worker(
    dev_server: DevServer, tmp_path: Path, aws_env: dict[str, Any]
) -> None:
    s3, bucket, ring, config = offload_setup(aws_env, tmp_path, threshold=4096)
    envelope = build_codec(config).envelope
    for i in range(OBJECTS):
        sealed = await envelope.seal(mark(f"object-{i}").encode(), namespace="default")
        payload = Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: sealed.key_id.encode()},
            data=sealed.data,
        )
        s3.put_object(Bucket=bucket, Key=f"obj/{i:04d}", Body=payload.SerializeToString())
    s3.put_object(Bucket=bucket, Key="obj/zz-not-ours", Body=b"plain bytes")
    Keyring.load(ring).rotated().save(ring)
    new_key = f"local:{Keyring.load(ring).primary}"
    rotated = build_codec(config).envelope
    dry = await rewrap(s3, bucket, rotated, dry_run=True)  # the sequential verdict
    assert (dry.scanned, dry.rewrapped, dry.foreign) == (OBJECTS + 1, OBJECTS, 1)

    tag = uuid.uuid4().hex[:6]
    queue, workflow_id = f"rewrapq-{tag}", f"rewrap-{tag}"
    env = {
        **_env(ring),
        "TEMPORAL_SHIELD_STORAGE_S3_BUCKET": bucket,
        "TEMPORAL_SHIELD_STORAGE_S3_ENDPOINT_URL": aws_env["endpoint_url"],
    }

    async def worker() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *_cli(
                "scan-worker", "--rewrap", "--address", dev_server.address, "--task-queue", queue
            ),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    first = await worker()
    follower = await asyncio.create_subprocess_exec(
        *_cli(
            "keys", "rewrap", "--distributed", "-o", "json", "--address", dev_server.address,
            "--task-queue", queue, "--id", workflow_id, "--page-size", "3",
            "--pages-in-flight", "2", "--pages-per-run", "5", "--heartbeat-timeout", "2",
        ),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    client, out, err = await _kill_mid_run(
        dev_server.address,
        config,
        workflow_id,
        (first, worker),
        follower,
        pages=2,
        counted="objects",
        total=OBJECTS,
    )
    assert follower.returncode == 0, err.decode()
    report = json.loads(out)
    # Every object once; one redone after the kill (its PUT landed, its heartbeat
    # did not) is found current the second time, never rewritten twice.
    assert report["scanned"] == OBJECTS + 1
    assert report["rewrapped"] + report["current"] == OBJECTS
    assert (report["foreign"], report["failed"]) == (1, [])
    assert MARK.encode() not in out + err
    for i in range(OBJECTS):
        data = s3.get_object(Bucket=bucket, Key=f"obj/{i:04d}")["Body"].read()
        assert Payload.FromString(data).metadata[KEY_ID_METADATA].decode() == new_key
    again = await rewrap(s3, bucket, rotated)
    assert (again.rewrapped, again.current) == (0, OBJECTS)
    assert await _retried_pages(client, workflow_id) >= 1
    runs = [e async for e in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert len(runs) > 1  # continued as new


def test_progress_line_for_scan_and_rewrap(capsys: pytest.CaptureFixture[str]) -> None:
    from temporal_shield._cluster_cli import _show

    common = {"started": True, "pages": 3, "pages_in_flight": 2, "pages_listed_ahead": 4}
    _show({**common, "listing_done": False, "continued": 1, "workflows": 30, "payloads": 90})
    _show({**common, "listing_done": True, "continued": 0, "objects": 12, "rewrapped": 5})
    _show({"started": False})  # before the first workflow task: nothing
    err = capsys.readouterr().err
    assert err == (
        "\rdistributed: 30 runs, 3 pages done, 2 in flight, 4+ listed ahead, continued 1x"
        "\rdistributed: 12 objects, 3 pages done, 2 in flight, 4 listed ahead, continued 0x"
    )


async def test_follower_on_a_terminal_waits_for_a_worker(
    dev_server: DevServer, tmp_path: Path
) -> None:
    """On a TTY the follower queries progress; with no worker to answer yet it keeps waiting."""
    ring, _ = _keys(tmp_path)
    queue = f"scanq-{uuid.uuid4().hex[:6]}"
    terminal, stderr_side = pty.openpty()
    follower = await asyncio.create_subprocess_exec(
        *_cli("scan", "--distributed", "--address", dev_server.address, "--task-queue", queue,
              "--id", queue, "--query", f"TaskQueue = 'nothing-{queue}'"),
        env=_env(ring),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr_side,
    )  # fmt: skip
    os.close(stderr_side)
    worker: asyncio.subprocess.Process | None = None
    try:
        await asyncio.sleep(3)  # progress turns with nobody to answer the query
        waiting = follower.returncode is None
        assert waiting
        worker = await _worker(dev_server.address, ring, queue)
        out, _ = await asyncio.wait_for(follower.communicate(), timeout=60)
    finally:
        for process in (follower, worker):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
    try:
        shown = os.read(terminal, 65536).decode(errors="replace")
    except OSError:  # nothing was written to the terminal
        shown = ""
    os.close(terminal)
    assert follower.returncode == 0, shown
    assert "error" not in shown
    assert "0 workflow runs" in out.decode()


class _Handle:
    """A workflow handle whose progress query fails or never returns."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    async def query(self, name: str) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()  # no worker ever answers
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "error",
    [
        None,
        RPCError("Timeout expired", RPCStatusCode.DEADLINE_EXCEEDED, b""),
        RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b""),
    ],
)
async def test_progress_never_ends_the_follow(
    error: BaseException | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query no worker answers (none yet, or its worker just died) only skips a line."""
    from temporal_shield._cluster_cli import _draw

    await _draw(_Handle(error), PROGRESS_QUERY)  # returns: no exception, no hang
    assert capsys.readouterr().err == ""
