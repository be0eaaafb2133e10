"""``temporal-shield audit``: verify audit logs and make checkpoint signing keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit verify`` and ``audit keygen`` to the command line."""
    audit = sub.add_parser("audit", help="work with the codec server's audit log")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check hash chains, signed checkpoints and external checkpoints "
        "(exit 0 intact, 1 broken or forged, 2 usage or read errors)",
    )
    verify.add_argument("files", nargs="+", metavar="FILE", help="one file per replica")
    verify.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        metavar="SOURCE",
        help="external checkpoints: a folder of *.json, a JSON Lines export, or "
        "s3://bucket/prefix (repeatable)",
    )
    verify.add_argument(
        "--public-key", action="append", default=[], metavar="PEM", help="verifying key"
    )
    verify.add_argument(
        "--kms-key", action="append", default=[], metavar="URI", help="aws-kms://KEY to verify with"
    )
    verify.add_argument("--s3-endpoint-url", help="S3 endpoint for s3:// checkpoints")
    verify.add_argument("--s3-region", help="S3 region for s3:// checkpoints")
    verify.add_argument("--kms-endpoint-url", help="KMS endpoint for --kms-key")
    verify.add_argument("--kms-region", help="KMS region for --kms-key")
    keygen = audit_sub.add_parser(
        "keygen", help="create an Ed25519 checkpoint signing key (0600) and its public key"
    )
    keygen.add_argument(
        "--out", required=True, help="folder for the key pair (not the audit log's folder)"
    )
    audit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run an ``audit`` action; returns the exit code."""
    if args.action == "keygen":
        from temporal_shield.server._signer import generate_ed25519

        private, public = generate_ed25519(Path(args.out))
        print(f"wrote {private} (mode 0600: the server's audit.signing_key = ed25519://{private})")
        print(f"wrote {public} (give it to `audit verify --public-key`)")
        return 0
    return _verify(args)


def _verify(args: argparse.Namespace) -> int:
    from temporal_shield.codec import ConfigError
    from temporal_shield.server._checkpoint import Found, read_checkpoints
    from temporal_shield.server._signer import (
        KmsSigner,
        PublicKey,
        key_id,
        kms_client,
        load_public_key,
    )
    from temporal_shield.server._verify import verify_files

    keys: dict[str, PublicKey] = {}
    for pem in args.public_key:
        try:
            key = load_public_key(Path(pem).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {pem}: {exc.strerror}") from None
        keys[key_id(key)] = key
    for uri in args.kms_key:
        if not uri.startswith("aws-kms://"):
            raise ConfigError(f"--kms-key must be aws-kms://KEY, not {uri!r}")
        client = kms_client(region=args.kms_region, endpoint_url=args.kms_endpoint_url)
        key = KmsSigner(uri.removeprefix("aws-kms://"), client=client).public_key
        keys[key_id(key)] = key
    external: list[Found] = []
    for source in args.checkpoints:
        external.extend(
            read_checkpoints(source, region=args.s3_region, endpoint_url=args.s3_endpoint_url)
        )
    report = verify_files(
        [Path(f) for f in args.files], keys=keys if keys else None, external=external
    )
    if not keys and (external or any(r.checkpoints for _, r in report.files)):
        raise ConfigError(
            "signed checkpoints found: give --public-key PEM or --kms-key URI to check them"
        )
    for path, result in report.files:
        if not result.ok:
            print(
                f"{path}: chain broken at line {result.broken_line} ({result.reason}); "
                f"{result.records} records before it are intact"
            )
            continue
        if not result.checkpoints and not result.anchored:
            print(
                f"{path}: chain intact, {result.records} records; no checkpoints: all "
                f"{result.records} records are protected only by the hash chain"
            )
            continue
        replica = f"replica {result.replica}, " if result.replica else ""
        print(
            f"{path}: chain intact, {result.records} records ({replica}{result.checkpoints} "
            f"signed checkpoints in the file, {result.anchored} external checkpoints match); "
            f"{result.unprotected} records after the last checkpoint (record "
            f"{result.signed_records}) are protected only by the hash chain"
        )
    for finding in report.findings:
        print(finding)
    sys.stdout.flush()
    return 0 if report.ok else 1
