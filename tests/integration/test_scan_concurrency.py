"""A concurrent scan gives exactly the sequential scan's report (real dev server)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin, scan

from .conftest import wait_visible
from .test_scan_temporal_written import (
    EchoOnce,
    SampleCodec,
    TemporalWritesWorkflow,
    beat_then_stall,
    console_script,
    fresh_namespace,
    quick,
    run_cli,
    slow,
)

pytestmark = pytest.mark.integration


async def test_concurrent_report_equals_sequential(dev_server: DevServer, tmp_path: Path) -> None:
    namespace = await fresh_namespace(dev_server.address)
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    shield = await Client.connect(
        dev_server.address,
        namespace=namespace,
        plugins=[ShieldPlugin(ShieldConfig(keys=KeysConfig(uri=f"local://{ring}")))],
    )
    plain = await Client.connect(dev_server.address, namespace=namespace)
    sample = await Client.connect(
        dev_server.address,
        namespace=namespace,
        data_converter=DataConverter(payload_codec=SampleCodec()),
    )
    queue = f"conc-{uuid.uuid4().hex[:6]}"
    # Interleave kinds so that which run is the first example of each location
    # depends on the order runs are folded in.
    clients = [shield, plain, sample]
    workers = [
        Worker(c, task_queue=f"{queue}-{i}", workflows=[EchoOnce]) for i, c in enumerate(clients)
    ]
    running = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        for i in range(24):
            k = i % 3
            await clients[k].execute_workflow(
                EchoOnce.run, f"run {i}", id=f"{queue}-run-{i}", task_queue=f"{queue}-{k}"
            )
        # one long history (timeouts, markers) among the short ones
        async with Worker(
            shield,
            task_queue=f"{queue}-long",
            workflows=[TemporalWritesWorkflow],
            activities=[quick, slow, beat_then_stall],
        ):
            await shield.execute_workflow(
                TemporalWritesWorkflow.run, "x", id=f"{queue}-long", task_queue=f"{queue}-long"
            )
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*running)
    await wait_visible(plain, "ExecutionStatus = 'Completed'", 25)

    sequential = await scan(plain, concurrency=1)
    assert sequential.workflows == 25
    assert sequential.plaintext
    assert sequential.foreign_encryption
    assert sequential.temporal_written
    for concurrency in (2, 8, 32):
        assert (await scan(plain, concurrency=concurrency)).as_json() == sequential.as_json()
    # --limit stops at the same runs whatever the concurrency
    first = await scan(plain, concurrency=1, limit=7)
    assert first.workflows == 7
    assert (await scan(plain, concurrency=8, limit=7)).as_json() == first.as_json()


def run_with_tty_stderr(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the console script with stderr on a pseudo-terminal, stdout on a pipe."""
    import os
    import pty
    import subprocess

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [console_script(), *argv], stdout=subprocess.PIPE, stderr=secondary, text=True, env=env
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=60)
    os.close(primary)
    return proc.returncode, out, b"".join(chunks).decode()


async def test_progress_is_drawn_only_on_a_terminal(dev_server: DevServer) -> None:
    namespace = await fresh_namespace(dev_server.address)
    client = await Client.connect(dev_server.address, namespace=namespace)
    async with Worker(client, task_queue="progress", workflows=[EchoOnce]):
        for i in range(3):
            await client.execute_workflow(EchoOnce.run, "x", id=f"p-{i}", task_queue="progress")
    await wait_visible(client, "ExecutionStatus = 'Completed'", 3)
    argv = ["scan", "--address", dev_server.address, "--namespace", namespace]
    status, out, err = await asyncio.to_thread(run_with_tty_stderr, argv)
    assert status == 1  # plaintext runs
    assert "scanned 1 runs" in err  # the first redraw is never throttled
    assert err.endswith("\n")  # the line is finished before the report
    assert "NOT ENCRYPTED" in out
    assert "scanned" not in out
    piped = await asyncio.to_thread(run_cli, argv)
    assert piped.returncode == 1
    assert piped.stderr == ""  # no progress noise when stderr is not a terminal
