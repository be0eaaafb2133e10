"""``scan-worker`` and ``scan --distributed``: the scan as a workflow on your own cluster."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ._scan_cli import _error, _positive, exit_status

if TYPE_CHECKING:
    from temporalio.client import Client

    from temporal_shield.converter import ShieldConfig

DEFAULT_TASK_QUEUE = "temporal-shield-scan"
DEFAULT_WORKFLOW_ID = "temporal-shield-scan"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def add_distributed_arguments(scan: argparse.ArgumentParser) -> None:
    """Add ``--distributed`` and its options to the ``scan`` parser."""
    group = scan.add_argument_group("distributed scan (a workflow on your Temporal cluster)")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="run the scan as a workflow on scan workers (start `scan-worker` first) "
        "and follow it; attaches if the workflow id is already running",
    )
    group.add_argument("--task-queue", default=DEFAULT_TASK_QUEUE, help="the scan workers' queue")
    group.add_argument("--id", default=DEFAULT_WORKFLOW_ID, help="the scan workflow's id")
    group.add_argument("--page-size", type=_positive, default=100, help="runs per activity")
    group.add_argument(
        "--pages-in-flight", type=_positive, default=4, help="page activities at once"
    )
    group.add_argument(
        "--pages-per-run", type=_positive, default=200, help="pages before continue-as-new"
    )
    group.add_argument(
        "--heartbeat-timeout",
        type=_seconds,
        default=30.0,
        help="seconds before a silent page activity is retried on another worker",
    )


async def _connect(args: argparse.Namespace, config: ShieldConfig) -> Client:
    from temporalio.client import Client

    from temporal_shield.converter import ShieldPlugin, client_connect_config

    # The workflow's own payloads (options, checkpoints, reports: counts only)
    # go through the user's normal converter, so a namespace that refuses
    # plaintext (require_encryption) accepts them.
    return await Client.connect(
        **client_connect_config(config, address=args.address, namespace=args.namespace),
        plugins=[ShieldPlugin(config)],
    )


def scan_distributed(args: argparse.Namespace, query: str | None) -> int:
    """Start (or attach to) the scan workflow, follow it, print its report."""
    import asyncio
    import json

    from temporalio.client import WorkflowFailureError
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError

    from temporal_shield.converter import ScanReport, load_config
    from temporal_shield.converter._scan_workflow import (
        PROGRESS_QUERY,
        SCAN_WORKFLOW,
        DistributedScanOptions,
        ScanInput,
    )

    if getattr(args, "limit", None) is not None:
        return _error("--limit is not supported with --distributed (use --query or --since)")
    config = load_config(args.config)
    options = DistributedScanOptions(
        query=query or "",
        page_size=args.page_size,
        pages_in_flight=args.pages_in_flight,
        run_concurrency=args.concurrency,
        pages_per_run=args.pages_per_run,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
    )
    tty = sys.stderr.isatty()

    async def run() -> int:
        try:
            client = await _connect(args, config)
        except (RPCError, RuntimeError) as exc:
            return _error(f"cannot connect to Temporal: {_first_line(exc)}")
        try:
            handle = await client.start_workflow(
                SCAN_WORKFLOW,
                ScanInput(options),
                id=args.id,
                task_queue=args.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                result_type=dict,
            )
            result = asyncio.ensure_future(handle.result())
            while not result.done():
                await asyncio.wait([result], timeout=1.0)
                if tty and not result.done():
                    _show(await handle.query(PROGRESS_QUERY))
            answer: dict[str, Any] = result.result()
        except WorkflowFailureError as exc:
            # WorkflowFailureError -> ActivityError -> the activity's own error.
            cause = exc.cause.__cause__ or exc.cause
            return _error(f"the distributed scan {args.id} failed: {_first_line(cause)}")
        except RPCError as exc:
            return _error(f"distributed scan {args.id}: {_first_line(exc)}")
        if tty:
            sys.stderr.write("\n")
        report = ScanReport.from_json(answer)
        print(json.dumps(report.as_json(), indent=2) if args.json else report.as_table())
        return exit_status(report, allow_foreign=args.allow_foreign_encryption)

    return asyncio.run(run())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _show(progress: dict[str, Any]) -> None:
    if not progress.get("started"):
        return
    listing = "" if progress["listing_done"] else "+"
    sys.stderr.write(
        f"\rdistributed scan: {progress['workflows']} runs, {progress['pages']} pages done, "
        f"{progress['pages_in_flight']} in flight, {progress['pages_listed_ahead']}{listing} "
        f"listed ahead, continued {progress['continued']}x"
    )
    sys.stderr.flush()


def _scan_worker(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from temporalio.service import RPCError

    from temporal_shield.converter import load_config
    from temporal_shield.converter._scan_workflow import scan_worker

    config = load_config(args.config)

    async def run() -> int:
        try:
            client = await _connect(args, config)
        except (RPCError, RuntimeError) as exc:
            return _error(f"cannot connect to Temporal: {_first_line(exc)}")
        worker = scan_worker(
            client, task_queue=args.task_queue, max_concurrent_activities=args.max_activities
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            print(
                f"scan worker on task queue {args.task_queue!r}, namespace {client.namespace!r}",
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()
        return 0

    return asyncio.run(run())


def add_parser(sub: Any) -> None:
    """Register ``scan-worker`` on the top-level sub-parsers."""
    worker = sub.add_parser(
        "scan-worker", help="run distributed-scan workflows and activities (scan --distributed)"
    )
    worker.add_argument("--task-queue", default=DEFAULT_TASK_QUEUE, help="queue to poll")
    worker.add_argument("--address", help="Temporal frontend host:port (else TEMPORAL_ADDRESS)")
    worker.add_argument("--namespace", help="namespace (else TEMPORAL_NAMESPACE, default)")
    worker.add_argument("--config", help="TOML file (keys, [tls]); else environment")
    worker.add_argument(
        "--max-activities", type=_positive, default=4, help="page activities this worker runs"
    )
    worker.set_defaults(func=_scan_worker)
