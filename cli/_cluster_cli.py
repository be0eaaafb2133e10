"""``scan-worker`` and ``scan --distributed``: the scan as a workflow on your own cluster."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ._scan_cli import CommandFailed, _positive, connect_temporal, exit_status, print_report

if TYPE_CHECKING:
    from temporalio.client import Client

    from temporal_shield.converter import RewrapReport, ShieldConfig

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


def _add_common(group: Any, *, what: str, unit: str, default_id: str) -> None:
    group.add_argument(
        "--distributed",
        action="store_true",
        help=f"run {what} as a workflow on scan workers (start `scan-worker` first) "
        "and follow it; attaches if the workflow id is already running",
    )
    group.add_argument("--task-queue", default=DEFAULT_TASK_QUEUE, help="the scan workers' queue")
    group.add_argument("--id", default=default_id, help="the workflow's id")
    group.add_argument("--page-size", type=_positive, default=100, help=f"{unit} per activity")
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


def add_distributed_arguments(scan: argparse.ArgumentParser) -> None:
    """Add ``--distributed`` and its options to the ``scan`` parser."""
    group = scan.add_argument_group("distributed scan (a workflow on your Temporal cluster)")
    _add_common(group, what="the scan", unit="runs", default_id=DEFAULT_WORKFLOW_ID)


def add_rewrap_distributed_arguments(rewrap: argparse.ArgumentParser) -> None:
    """Add ``--distributed`` and its options to the ``keys rewrap`` parser."""
    group = rewrap.add_argument_group("distributed rewrap (a workflow on your Temporal cluster)")
    _add_common(group, what="the rewrap", unit="objects", default_id="temporal-shield-rewrap")
    group.add_argument("--address", help="Temporal frontend host:port (else TEMPORAL_ADDRESS)")
    group.add_argument("--namespace", help="namespace (else TEMPORAL_NAMESPACE, default)")


async def _connect(args: argparse.Namespace, config: ShieldConfig) -> Client:
    from temporal_shield.converter import ShieldPlugin, client_connect_config

    # The workflow's own payloads (options, checkpoints, reports: counts only)
    # go through the user's normal converter, so a namespace that refuses
    # plaintext (require_encryption) accepts them.
    return await connect_temporal(  # type: ignore[no-any-return]
        client_connect_config(config, address=args.address, namespace=args.namespace),
        plugins=[ShieldPlugin(config)],
    )


async def _follow(
    args: argparse.Namespace, config: ShieldConfig, workflow: str, argument: Any
) -> dict[str, Any]:
    """Start ``workflow`` (or attach to the running ``args.id``), follow it, return its result.

    Raises:
        CommandFailed: no connection, the start was refused, or the workflow failed.
    """
    import asyncio

    from temporalio.client import WorkflowFailureError
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError

    from temporal_shield.converter._scan_workflow import PROGRESS_QUERY

    client = await _connect(args, config)
    tty = sys.stderr.isatty()
    try:
        handle = await client.start_workflow(
            workflow,
            argument,
            id=args.id,
            task_queue=args.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=dict,
        )
        result = asyncio.ensure_future(handle.result())
        while not result.done():
            await asyncio.wait([result], timeout=1.0)
            if tty and not result.done():
                await _draw(handle, PROGRESS_QUERY)
        answer: dict[str, Any] = result.result()
    except WorkflowFailureError as exc:
        # WorkflowFailureError -> ActivityError -> the activity's own error.
        cause = exc.cause.__cause__ or exc.cause
        raise CommandFailed(f"the workflow {args.id} failed: {_first_line(cause)}") from None
    except RPCError as exc:
        raise CommandFailed(f"workflow {args.id}: {_first_line(exc)}") from None
    finally:
        if tty:
            sys.stderr.write("\n")
    return answer


def scan_distributed(args: argparse.Namespace, query: str | None) -> int:
    """Start (or attach to) the scan workflow, follow it, print its report."""
    import asyncio

    from temporal_shield.converter import ScanReport, load_config
    from temporal_shield.converter._scan_workflow import (
        SCAN_WORKFLOW,
        DistributedScanOptions,
        ScanInput,
    )

    if getattr(args, "limit", None) is not None:
        raise CommandFailed("--limit is not supported with --distributed (use --query or --since)")
    config = load_config(args.config)
    options = DistributedScanOptions(
        query=query or "",
        page_size=args.page_size,
        pages_in_flight=args.pages_in_flight,
        run_concurrency=args.concurrency,
        pages_per_run=args.pages_per_run,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
    )
    answer = asyncio.run(_follow(args, config, SCAN_WORKFLOW, ScanInput(options)))
    report = ScanReport.from_json(answer)
    print_report(report, as_json=args.json)
    return exit_status(report, allow_foreign=args.allow_foreign_encryption)


def rewrap_distributed(args: argparse.Namespace, bucket: str) -> RewrapReport:
    """Run ``keys rewrap`` as a workflow on the scan workers (``scan-worker --rewrap``).

    Raises:
        ConfigError: ``--start-after`` was given (the workflow resumes by itself).
        CommandFailed: no connection, or the workflow failed.
    """
    import asyncio

    from temporal_shield.codec import ConfigError
    from temporal_shield.converter import RewrapReport, load_config
    from temporal_shield.converter._rewrap_workflow import REWRAP_WORKFLOW, RewrapInput
    from temporal_shield.converter._scan_workflow import DistributedScanOptions

    if args.start_after:
        raise ConfigError("--start-after is not used with --distributed (it resumes by itself)")
    config = load_config(args.config)
    options = DistributedScanOptions(
        page_size=args.page_size,
        pages_in_flight=args.pages_in_flight,
        pages_per_run=args.pages_per_run,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
    )
    argument = RewrapInput(bucket, args.prefix, args.dry_run, options)
    answer = asyncio.run(_follow(args, config, REWRAP_WORKFLOW, argument))
    return RewrapReport.from_json(answer)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def _draw(handle: Any, query: str) -> None:
    """Show the progress query's answer; skip a turn when no worker answers it yet.

    A query needs a worker: none may be running yet, or the one holding the
    workflow was just lost. The workflow's result decides the outcome, never this.
    """
    import asyncio

    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError

    try:
        _show(await asyncio.wait_for(handle.query(query), timeout=2.0))
    except (RPCError, WorkflowQueryFailedError, TimeoutError):
        return


def _show(progress: dict[str, Any]) -> None:
    if not progress.get("started"):
        return
    listing = "" if progress["listing_done"] else "+"
    done = (
        f"{progress['workflows']} runs"
        if "workflows" in progress
        else f"{progress.get('objects', 0)} objects"
    )
    sys.stderr.write(
        f"\rdistributed: {done}, {progress['pages']} pages done, "
        f"{progress['pages_in_flight']} in flight, {progress['pages_listed_ahead']}{listing} "
        f"listed ahead, continued {progress['continued']}x"
    )
    sys.stderr.flush()


def _scan_worker(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from temporal_shield.converter import load_config
    from temporal_shield.converter._scan_workflow import scan_worker

    config = load_config(args.config)

    async def run() -> int:
        client = await _connect(args, config)
        rewrap = None
        if args.rewrap:
            from temporal_shield.codec import aws_client
            from temporal_shield.converter import build_codec
            from temporal_shield.converter._rewrap_workflow import RewrapActivities

            s3 = aws_client("s3", config.storage.aws, feature="scan-worker --rewrap")
            rewrap = RewrapActivities(s3, build_codec(config).envelope)
        worker = scan_worker(
            client,
            task_queue=args.task_queue,
            max_concurrent_activities=args.max_activities,
            rewrap=rewrap,
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
    worker.add_argument(
        "--rewrap",
        action="store_true",
        help="also run `keys rewrap --distributed` (needs the [aws] extra, S3 settings, keys)",
    )
    worker.set_defaults(func=_scan_worker)
