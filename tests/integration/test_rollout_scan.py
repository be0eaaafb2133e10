"""Safe roll-out on a live fleet, proven with the coverage scan on a real dev server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin, scan

from .conftest import wait_visible
from .test_workflows import _run_everything
from .workflows import (
    MARK,
    ChildWorkflow,
    WaitForSignalWorkflow,
    mark,
)

pytestmark = pytest.mark.integration


async def test_workflow_started_before_encryption_completes_after_switch(
    dev_server: DevServer, tmp_path: Path
) -> None:
    queue = f"rollout-{uuid.uuid4().hex[:6]}"
    plain_client = await Client.connect(dev_server.address)
    async with Worker(plain_client, task_queue=queue, workflows=[WaitForSignalWorkflow]):
        handle = await plain_client.start_workflow(
            WaitForSignalWorkflow.run, mark("before"), id=queue, task_queue=queue
        )
    # Readers first, then writers: every worker and client now runs the codec.
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{ring}"))
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    async with Worker(client, task_queue=queue, workflows=[WaitForSignalWorkflow]):
        running = client.get_workflow_handle(handle.id)
        await running.signal(WaitForSignalWorkflow.signal, mark("after"))
        assert await running.result() == f"{mark('before')}|{mark('after')}"

    raw = await Client.connect(dev_server.address)
    await wait_visible(raw, f"WorkflowId = '{queue}' AND ExecutionStatus = 'Completed'", 1)
    report = await scan(raw, query=f"WorkflowId = '{queue}'")
    assert report.workflows == 1
    assert not report.clean
    # Old payloads are reported as plaintext, by event type and field...
    assert report.plaintext == {
        (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.input.payloads[]",
        ): 1
    }
    assert report.first_seen[("plaintext", *next(iter(report.plaintext)))] == queue
    # ...the new ones (signal, result) as encrypted under the keyring's key.
    assert report.encrypted == 2
    assert set(report.key_ids) == {f"local:{Keyring.load(ring).primary}"}
    text = report.as_table() + json.dumps(report.as_json())
    assert MARK not in text  # never payload contents


async def test_fully_encrypted_namespace_scans_clean_and_cli_exit_codes(
    dev_server: DevServer, tmp_path: Path
) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{ring}"))
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    queue, _ = await _run_everything(client, f"clean-{uuid.uuid4().hex[:6]}")
    raw = await Client.connect(dev_server.address)
    await wait_visible(raw, f"WorkflowId STARTS_WITH '{queue}' AND ExecutionStatus != 'Running'", 3)
    report = await scan(raw, query=f"WorkflowId STARTS_WITH '{queue}'")
    assert report.workflows >= 3
    assert report.clean, report.as_table()
    assert report.encrypted > 10
    cli = [sys.executable, "-m", "temporal_shield", "scan", "--address", dev_server.address]
    out = await asyncio.to_thread(
        subprocess.run,
        [*cli, "--query", f"WorkflowId STARTS_WITH '{queue}'", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["clean"] is True
    # A plaintext run makes the CLI exit 1 (for CI/cron alerts).
    plain_queue = f"plain-{uuid.uuid4().hex[:6]}"
    async with Worker(raw, task_queue=plain_queue, workflows=[ChildWorkflow]):
        await raw.execute_workflow(
            ChildWorkflow.run, mark("p"), id=plain_queue, task_queue=plain_queue
        )
    await wait_visible(raw, f"WorkflowId = '{plain_queue}' AND ExecutionStatus = 'Completed'", 1)
    out = await asyncio.to_thread(
        subprocess.run,
        [*cli, "--query", f"WorkflowId = '{plain_queue}'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "NOT ENCRYPTED" in out.stdout
    assert MARK not in out.stdout
