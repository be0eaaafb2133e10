"""Coverage scan throughput: histories/s for each scan mode over one generated namespace.

One ``temporal server start-dev`` (loopback, free port) gets a namespace filled with
``--workflows`` completed runs written through ``ShieldPlugin`` (each: encrypted input,
one activity with encrypted argument and result, a ``workflow.patched()`` marker, an
encrypted result; about 20 events). Then every mode of :data:`MODES` scans the whole
namespace, in ``--rounds`` interleaved rounds (A B A B ...), each scan in a child
process of its own so that its peak RSS is its own.

A mode is a row of :data:`MODES`: a name and the arguments of the child
(``--scan-child MODE``) that runs it; add a mode (e.g. the distributed scan with 1 and
2 workers) by adding a row and a branch in :func:`_scan_child`. Every mode's report
must equal the sequential one (checked), and the table prints histories/s (median of
rounds, min-max), the ratio to ``sequential`` taken per round (median), the CPU time
of scanner and dev server together per history (from ``/proc``), and peak RSS.
Histories/s cannot exceed cores ÷ CPU per history: that is the ceiling concurrency
approaches on loopback.

With ``--rtt-ms 0,4`` the modes run once straight against the dev server and once
through a loopback TCP proxy (:class:`DelayProxy`) that holds every chunk for half the
round trip in each direction: a scan of a remote cluster waits on the network, which
concurrency hides, while on loopback a sequential scan already keeps about one of the
two cores busy (scanner + server), so there concurrency can gain at most about the
number of cores.

    .venv/bin/python -m bench.bench_scan [--workflows N] [--rounds R] [--modes a,b] [--rtt-ms 0,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client
    from temporalio.worker import Worker

    from bench.bench_e2e import _cpu_seconds, _server_pid
    from temporal_shield._devserver import DevServer
    from temporal_shield.codec import Keyring
    from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin, scan


@dataclass(frozen=True, kw_only=True)
class Mode:
    """One way to scan: its name and how the child process runs it."""

    name: str
    concurrency: int = 1
    """Histories read at once (local scan; per page activity when distributed)."""
    workers: int = 0
    """Scan-worker processes of a distributed scan (0: a local scan)."""


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode(name="sequential", concurrency=1),
        Mode(name="concurrent-4", concurrency=4),
        Mode(name="concurrent-8", concurrency=8),
        Mode(name="concurrent-16", concurrency=16),
        Mode(name="distributed-1", concurrency=8, workers=1),
        Mode(name="distributed-2", concurrency=8, workers=2),
    )
}
"""Scan modes, in the order they run within a round; ``sequential`` is the baseline."""


@activity.defn
async def enrich(document: dict[str, Any]) -> dict[str, Any]:
    """Returns the document with one more field (a realistic argument and result)."""
    return {**document, "enriched": True}


@workflow.defn
class BenchScanWorkflow:
    """Input, one activity, one patch marker, a result: a typical small history."""

    @workflow.run
    async def run(self, document: dict[str, Any]) -> dict[str, Any]:
        """Call the activity once behind a patch."""
        if workflow.patched("bench-scan-v2"):
            document = {**document, "v": 2}
        return await workflow.execute_activity(
            enrich, document, start_to_close_timeout=timedelta(seconds=30)
        )


async def _generate(address: str, workflows: int, keyring: Path) -> None:
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{keyring}"))
    client = await Client.connect(address, plugins=[ShieldPlugin(config)])
    queue = f"bench-scan-{uuid.uuid4().hex[:6]}"
    document = {"customer": "c-1", "notes": "x" * 512}
    started = time.monotonic()
    async with Worker(client, task_queue=queue, workflows=[BenchScanWorkflow], activities=[enrich]):
        pending = iter(range(workflows))

        async def runner() -> None:
            for i in pending:
                await client.execute_workflow(
                    BenchScanWorkflow.run, document, id=f"{queue}-{i}", task_queue=queue
                )

        await asyncio.gather(*(runner() for _ in range(32)))
    raw = await Client.connect(address)
    while True:  # visibility is eventually consistent
        count = await raw.count_workflows("ExecutionStatus = 'Completed'")
        if count.count >= workflows:
            break
        await asyncio.sleep(0.2)
    print(f"generated {workflows} workflows in {time.monotonic() - started:.1f} s", file=sys.stderr)


class DelayProxy:
    """A loopback TCP proxy adding ``rtt_ms / 2`` to each direction (no bandwidth limit).

    Chunks are forwarded in order once due, each on its own timestamp, so the delay
    models distance, not a slow link. Runs its own event loop in a daemon thread.
    """

    def __init__(self, upstream: str, rtt_ms: float) -> None:
        """Proxy to ``upstream`` (``host:port``) with the given round-trip time."""
        self.delay = rtt_ms / 2000
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.loop = asyncio.new_event_loop()
        self.address = ""
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


# Every mode scans the generated runs only: the distributed modes' own scan
# workflows live in the same namespace.
QUERY = "WorkflowType = 'BenchScanWorkflow'"


def _scan_child(mode: Mode, address: str) -> dict[str, Any]:
    if mode.workers:
        return _distributed_child(mode, address)

    async def run() -> dict[str, Any]:
        client = await Client.connect(address)
        started = time.perf_counter()
        cpu = time.process_time()
        report = await scan(client, query=QUERY, concurrency=mode.concurrency)
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu,
            "report": report.as_json(),
        }

    result = asyncio.run(run())
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _distributed_child(mode: Mode, address: str) -> dict[str, Any]:
    """``mode.workers`` real ``scan-worker`` processes; timed from start to result.

    CPU and peak RSS are the scan workers' (the process starting the workflow only
    waits); the workers are up and polling before the clock starts.
    """
    from temporal_shield.converter import load_config
    from temporal_shield.converter._scan_workflow import (
        SCAN_WORKFLOW,
        DistributedScanOptions,
        ScanInput,
    )

    queue = f"bench-dist-{uuid.uuid4().hex[:6]}"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "temporal_shield",
                "scan-worker",
                "--address",
                address,
                "--task-queue",
                queue,
                "--max-activities",
                "2",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(mode.workers)
    ]
    try:
        for worker in workers:
            assert worker.stderr is not None
            if "scan worker on task queue" not in worker.stderr.readline():
                raise SystemExit("a scan worker did not start")
        options = DistributedScanOptions(
            query=QUERY,
            page_size=50,
            pages_in_flight=2 * mode.workers,
            run_concurrency=mode.concurrency,
        )

        async def run() -> tuple[float, dict[str, Any]]:
            config = load_config()
            client = await Client.connect(address, plugins=[ShieldPlugin(config)])
            started = time.perf_counter()
            report = await client.execute_workflow(
                SCAN_WORKFLOW, ScanInput(options), id=queue, task_queue=queue, result_type=dict
            )
            return time.perf_counter() - started, report

        cpu = sum(_cpu_seconds(w.pid) for w in workers)
        seconds, report = asyncio.run(run())
        cpu = sum(_cpu_seconds(w.pid) for w in workers) - cpu
        rss = max(_peak_rss_kib(w.pid) for w in workers)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)
    return {"seconds": seconds, "cpu_seconds": cpu, "report": report, "peak_rss_kib": rss}


def _run_child(mode: Mode, address: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_scan", "--scan-child", mode.name, "--address", address],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _summary(values: list[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def main(args: argparse.Namespace) -> int:
    """Generate the namespace, run every mode's rounds per round-trip time, print tables."""
    modes = [MODES[name] for name in args.modes]
    with tempfile.TemporaryDirectory() as tmp, DevServer() as server:
        keyring = Path(tmp) / "keyring.json"
        Keyring.new().save(keyring)
        # The distributed modes' workers and clients carry the workflow's own payloads
        # through the codec, with this keyring.
        os.environ["TEMPORAL_SHIELD_KEYS_URI"] = f"local://{keyring}"
        asyncio.run(_generate(server.address, args.workflows, keyring))
        server_pid = _server_pid(server.port)
        tables = []
        baseline: list[dict[str, Any]] = []
        for rtt in args.rtt_ms:
            address = DelayProxy(server.address, rtt).address if rtt else server.address
            tables.append(_rounds(args, modes, address, rtt, baseline, server_pid))
    report = baseline[0]
    print(
        f"\n{report['workflows']} workflow runs ({report['events'] / report['workflows']:.0f} "
        f"events, {report['payloads'] / report['workflows']:.0f} payloads each, "
        f"{report['encrypted']} encrypted in all), {args.rounds} rounds, "
        f"{os.cpu_count()} cores, dev server on the same machine"
    )
    for table in tables:
        print(table)
    return 0


def _rounds(
    args: argparse.Namespace,
    modes: list[Mode],
    address: str,
    rtt: float,
    baseline: list[dict[str, Any]],
    server_pid: int,
) -> str:
    rates: dict[str, list[float]] = {m.name: [] for m in modes}
    cpu_ms: dict[str, list[float]] = {m.name: [] for m in modes}
    ratios: dict[str, list[float]] = {m.name: [] for m in modes}
    rss: dict[str, list[int]] = {m.name: [] for m in modes}
    for round_no in range(args.rounds):
        order = modes if round_no % 2 == 0 else list(reversed(modes))
        this_round: dict[str, float] = {}
        for mode in order:
            server_cpu = _cpu_seconds(server_pid)
            result = _run_child(mode, address)
            server_cpu = _cpu_seconds(server_pid) - server_cpu
            report = result["report"]
            if report["workflows"] != args.workflows:
                raise SystemExit(f"{mode.name} scanned {report['workflows']} runs")
            if not baseline:
                baseline.append(report)
            elif report != baseline[0]:
                raise SystemExit(f"{mode.name}'s report differs from the first one")
            this_round[mode.name] = report["workflows"] / result["seconds"]
            rates[mode.name].append(this_round[mode.name])
            rss[mode.name].append(int(result["peak_rss_kib"]))
            cpu_ms[mode.name].append(
                1000 * (result["cpu_seconds"] + server_cpu) / report["workflows"]
            )
            print(
                f"rtt {rtt} ms round {round_no + 1} {mode.name:<16} "
                f"{this_round[mode.name]:8.1f} hist/s",
                file=sys.stderr,
            )
        if "sequential" in this_round:
            for name, rate in this_round.items():
                ratios[name].append(rate / this_round["sequential"])
    lines = [
        f"\nround trip {'loopback' if not rtt else f'+{rtt:g} ms (delay proxy)'}",
        f"{'mode':<16} {'histories/s median (min-max)':<32} {'÷ sequential':<22} "
        f"{'CPU ms/history':<16} peak RSS",
    ]
    for mode in modes:
        ratio = _summary(ratios[mode.name], lambda v: f"{v:.2f}") if ratios[mode.name] else "-"
        lines.append(
            f"{mode.name:<16} {_summary(rates[mode.name], lambda v: f'{v:.0f}'):<32} "
            f"{ratio:<22} {statistics.median(cpu_ms[mode.name]):<16.2f} "
            f"{max(rss[mode.name]) / 1024:.0f} MiB"
        )
    return "\n".join(lines)


def _modes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}")
    return names


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--workflows", type=int, default=500, help="runs in the namespace")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each runs every mode)")
    ap.add_argument(
        "--modes", type=_modes, default=list(MODES), help=f"comma-separated: {','.join(MODES)}"
    )
    ap.add_argument(
        "--rtt-ms",
        type=lambda t: [float(v) for v in t.split(",")],
        default=[0.0],
        help="comma-separated round-trip times to add through a delay proxy (0 = direct)",
    )
    ap.add_argument("--scan-child", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    parsed = ap.parse_args()
    if parsed.scan_child:
        print(json.dumps(_scan_child(MODES[parsed.scan_child], parsed.address)))
        sys.stdout.flush()
        os._exit(0)  # temporalio may abort at interpreter shutdown
    sys.exit(main(parsed))
