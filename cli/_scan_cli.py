"""``temporal-shield scan``: report payloads in history that are not encrypted."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _scan(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from temporalio.client import Client

    from temporal_shield.converter import load_config, scan, temporal_tls, terminal_progress

    config = load_config(args.config)
    query = args.query or ""
    if args.since:
        since = f'StartTime > "{args.since}"'
        query = f"({query}) AND {since}" if query else since

    async def run() -> int:
        client = await Client.connect(
            args.address, namespace=args.namespace, tls=temporal_tls(config) or False
        )
        report = await scan(
            client, query=query or None, limit=args.limit, progress=terminal_progress
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(json.dumps(report.as_json(), indent=2) if args.json else report.as_table())
        return 0 if report.clean else 1

    return asyncio.run(run())


def add_parser(sub: Any) -> None:
    """Register ``scan`` on the top-level sub-parsers."""
    scan = sub.add_parser(
        "scan", help="report payloads in history that are not encrypted (exit 1 if any)"
    )
    scan.add_argument("--address", default="localhost:7233", help="Temporal frontend host:port")
    scan.add_argument("--namespace", default="default", help="namespace to scan")
    scan.add_argument("--query", help="visibility query selecting workflow runs")
    scan.add_argument("--since", help="only runs started after this RFC 3339 time")
    scan.add_argument("--limit", type=int, help="stop after this many runs")
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    scan.add_argument("--config", help="TOML file with [tls] settings (else environment)")
    scan.set_defaults(func=_scan)
