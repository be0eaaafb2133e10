"""The ``temporal-shield`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from temporal_shield.codec import ShieldError

from . import __version__


def _keyring_path(value: str | None) -> Path:
    from temporal_shield.converter import DEFAULT_KEY_URI

    if value:
        return Path(value).expanduser()
    return Path(DEFAULT_KEY_URI.removeprefix("local://")).expanduser()


def _rewrap(args: argparse.Namespace) -> int:
    import asyncio

    import boto3

    from temporal_shield.codec import aws_client_config
    from temporal_shield.converter import build_codec, load_config, rewrap

    config = load_config(args.config)
    bucket = args.bucket or config.storage.s3_bucket
    if not bucket:
        print("temporal-shield: error: no bucket (--bucket or storage.s3_bucket)", file=sys.stderr)
        return 2
    aws = config.storage.aws
    s3 = boto3.client(
        "s3",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=aws_client_config(aws),
    )
    envelope = build_codec(config).envelope
    report = asyncio.run(
        rewrap(
            s3,
            bucket,
            envelope,
            prefix=args.prefix,
            start_after=args.start_after,
            dry_run=args.dry_run,
        )
    )
    verb = "would re-encrypt" if args.dry_run else "re-encrypted"
    print(
        f"{report.scanned} objects: {verb} {report.rewrapped}, already current {report.current}, "
        f"not ours {report.foreign}, failed {len(report.failed)}"
    )
    for key in report.failed:
        print(f"  failed: {key}")
    if report.last_key:
        print(f"resume with --start-after {report.last_key!r}")
    return 1 if report.failed else 0


def _keys(args: argparse.Namespace) -> int:
    from temporal_shield.codec import ConfigError, Keyring

    if args.action == "rewrap":
        return _rewrap(args)
    path = _keyring_path(args.keyring)
    if args.action == "init":
        if path.exists():
            raise ConfigError(f"{path} already exists; use `keys rotate` to add a key")
        ring = Keyring.new()
        ring.save(path)
        print(f"created {path} with primary key {ring.primary}")
        return 0
    ring = Keyring.load(path)
    if args.action == "rotate":
        ring = ring.rotated()
        ring.save(path)
        print(f"new primary key {ring.primary}; older keys stay active for decryption")
    elif args.action == "retire":
        ring = ring.retired(args.key_id)
        ring.save(path)
        print(f"retired {args.key_id}: payloads under it can no longer be decrypted")
    else:
        for key in ring.keys:
            mark = "primary" if key.id == ring.primary else ""
            print(f"{key.id}\t{key.created}\t{key.state}\t{mark}".rstrip())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ._serve import serve

    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "policy_file": args.policy,
            "insecure_dev": True if args.insecure_dev else None,
            "workers": args.workers,
            "metrics_port": args.metrics_port,
        }.items()
        if value is not None
    }
    return serve(args.config, overrides, worker=args.worker)


def _workers(text: str) -> int:
    """``--workers``: a number, or ``auto`` (0: one per CPU)."""
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("expected a number of workers or 'auto'")
    return value


def _certs(args: argparse.Namespace) -> int:
    from temporal_shield.certs import dev_pki

    for folder in dev_pki(Path(args.out)):
        print(f"wrote {folder}/{{tls.crt,tls.key,ca.crt}}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import main

    return main(wait=not args.no_wait)


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="temporal-shield", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="manage the local keyring (embedded default KEKs)")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    for name, text in (
        ("init", "create a keyring with one primary key"),
        ("list", "list keys (ids, creation time, state; never key material)"),
        ("rotate", "add a new primary key; old keys stay readable"),
        ("retire", "stop a non-primary key from decrypting"),
    ):
        sp = keys_sub.add_parser(name, help=text)
        sp.add_argument("--keyring", help="keyring file (default ~/.config/temporal-shield/)")
        if name == "retire":
            sp.add_argument("key_id")
    rw = keys_sub.add_parser(
        "rewrap", help="re-encrypt S3-offloaded payloads under the current primary key"
    )
    rw.add_argument("--config", help="TOML file (keys and [storage]); else environment")
    rw.add_argument("--bucket", help="bucket (default storage.s3_bucket)")
    rw.add_argument("--prefix", default="", help="only objects under this key prefix")
    rw.add_argument("--start-after", default="", help="resume after this object key")
    rw.add_argument("--dry-run", action="store_true", help="report, change nothing")
    keys.set_defaults(func=_keys)

    from ._audit_cli import add_parser as add_audit

    add_audit(sub)

    serve = sub.add_parser("serve", help="run the remote codec server for the Web UI and CLI")
    serve.add_argument("--config", help="TOML file (default $TEMPORAL_SHIELD_CONFIG)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--policy", help="RBAC policy file (overrides server.policy_file)")
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="no authentication: every caller may decrypt (local development only)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="processes serving the port: a number, or 'auto' (one per CPU); "
        "overrides server.workers",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="also serve /metrics, /healthz, /readyz on this port + worker index "
        "(overrides server.metrics_port)",
    )
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # set by the supervisor
    serve.set_defaults(func=_serve)

    from ._scan_cli import add_parser as add_scan

    add_scan(sub)

    certs = sub.add_parser("certs", help="local PKI in the cert-manager Secret layout")
    certs_sub = certs.add_subparsers(dest="action", required=True)
    dev = certs_sub.add_parser("dev", help="create a CA and the deploy/ leaf certificates")
    dev.add_argument("--out", required=True, help="output folder (one sub-folder per Secret)")
    certs.set_defaults(func=_certs)

    demo = sub.add_parser("demo", help="run a workflow with encrypted PII on a dev server")
    demo.add_argument(
        "--no-wait", action="store_true", help="stop right after printing (no Ctrl-C wait)"
    )
    demo.set_defaults(func=_demo)
    return p


def entry() -> NoReturn:
    """The console script: :func:`main`, then exit without interpreter finalisation.

    temporalio's native client can abort while the interpreter shuts down
    (seen with a plain SDK client too), which would replace our exit status
    with SIGABRT: a status that means "plaintext found" or "chain broken" must
    not depend on that, so flush and leave with ``os._exit``.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ShieldError as exc:
        print(f"temporal-shield: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    entry()
