"""``temporal-shield scan``: report payloads in history that are not encrypted.

Exit status: 0 clean, 1 findings (plaintext, or another codec's encryption unless
``--allow-foreign-encryption``), 2 usage, configuration, connection, TLS,
namespace or query errors (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from temporal_shield.codec import ShieldError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class CommandFailed(ShieldError):
    """A scan that could not run (message: one line); ``main`` prints it, status 2."""


def exit_status(report: Any, *, allow_foreign: bool = False) -> int:
    """0 when the report has no findings, else 1 (foreign encryption optionally allowed)."""
    if report.plaintext or (report.foreign_encryption and not allow_foreign):
        return 1
    return 0


def _scan(args: argparse.Namespace) -> int:
    import asyncio

    from temporalio.service import RPCError, RPCStatusCode

    from temporal_shield.converter import (
        client_connect_config,
        load_config,
        scan,
        terminal_progress,
    )

    if args.json:  # the older spelling of --output json
        args.output = "json"
    args.json = args.output == "json"
    config = load_config(args.config)
    query = args.query or ""
    if args.since:
        since = f'StartTime > "{args.since}"'
        query = f"({query}) AND {since}" if query else since
    if args.distributed:
        from ._cluster_cli import scan_distributed

        return scan_distributed(args, query or None)
    connect = client_connect_config(config, address=args.address, namespace=args.namespace)
    tty = sys.stderr.isatty()

    async def run() -> int:
        client = await connect_temporal(connect)
        try:
            report = await scan(
                client,
                query=query or None,
                limit=args.limit,
                concurrency=args.concurrency,
                progress=terminal_progress if tty else None,
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise CommandFailed(f"namespace {client.namespace!r}: {exc.message}") from None
            if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                raise CommandFailed(f"invalid visibility query {query!r}: {exc.message}") from None
            raise CommandFailed(f"Temporal: {exc.message}") from None
        finally:
            if tty:
                sys.stderr.write("\n")
        print_report(report, as_json=args.json)
        return exit_status(report, allow_foreign=args.allow_foreign_encryption)

    return asyncio.run(run())


def add_parser(sub: Any) -> None:
    """Register ``scan`` on the top-level sub-parsers."""
    scan = sub.add_parser(
        "scan",
        help="report payloads in history that are not encrypted (exit 1 if any)",
        description=(
            "Read the raw event histories of a namespace and report every payload and "
            "failure text that is not a temporal-shield envelope, by event type and field "
            "(counts and an example workflow id, never contents). Exit status: 0 clean, "
            "1 findings, 2 errors."
        ),
    )
    scan.add_argument(
        "--address", help="Temporal frontend host:port (else TEMPORAL_ADDRESS or profile)"
    )
    scan.add_argument(
        "--namespace", help="namespace to scan (else TEMPORAL_NAMESPACE, profile or default)"
    )
    scan.add_argument("--query", help="visibility query selecting workflow runs")
    scan.add_argument("--since", help="only runs started after this RFC 3339 time")
    scan.add_argument("--limit", type=_positive, help="stop after this many runs")
    scan.add_argument(
        "--concurrency",
        type=_positive,
        default=8,
        help="histories read at once (default 8; 1 = sequential; same report either way)",
    )
    scan.add_argument(
        "--allow-foreign-encryption",
        action="store_true",
        help="exit 0 when the only findings are another codec's ciphertext (a migration)",
    )
    from ._main import add_output

    add_output(scan)
    scan.add_argument("--json", action="store_true", help="same as --output json")
    scan.add_argument("--config", help="TOML file with [tls] settings (else environment)")
    from ._cluster_cli import add_distributed_arguments

    add_distributed_arguments(scan)
    scan.set_defaults(func=_scan)


def print_report(report: Any, *, as_json: bool) -> None:
    """A :class:`ScanReport` on stdout, as JSON or as the table."""
    import json

    from ._main import terminal_safe

    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        # Workflow ids and key ids in the table are whatever was written.
        print("\n".join(map(terminal_safe, report.as_table().splitlines())))


async def connect_temporal(connect: dict[str, Any], **extra: Any) -> Any:
    """``Client.connect``; a connection failure is one line naming the address tried.

    The address may come from ``--address``, ``TEMPORAL_ADDRESS`` or a profile:
    an error that does not say which leaves the reader guessing.

    Raises:
        CommandFailed: Temporal could not be reached at that address.
    """
    from temporalio.client import Client
    from temporalio.service import RPCError

    try:
        return await Client.connect(**connect, **extra)
    except (RPCError, RuntimeError) as exc:
        address = connect.get("target_host", "?")
        raise CommandFailed(
            f"cannot connect to Temporal at {address}: {connect_reason(exc)}"
        ) from None


def connect_reason(exc: BaseException) -> str:
    """The reason in the SDK's connection error, whose message is a Rust debug dump."""
    import re

    text = str(exc)
    reasons = re.findall(r'message: "([^"]+)"', text)  # the last one is the reason
    return reasons[-1] if reasons else (text.strip().splitlines() or [type(exc).__name__])[0]
