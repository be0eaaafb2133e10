"""``temporal-shield audit``: verify audit logs and make checkpoint signing keys."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._main import add_output, emit

if TYPE_CHECKING:
    from temporal_shield.server._verify import Report


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``audit verify`` and ``audit keygen`` to the command line."""
    text = "work with the codec server's audit log"
    audit = sub.add_parser("audit", help=text, description=text.capitalize() + ".")
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = "check hash chains, signed checkpoints and external checkpoints"
    verify = audit_sub.add_parser(
        "verify",
        help=text,
        description=text.capitalize() + ". Exit status 0 intact, 1 broken or forged, "
        "2 usage or read errors.",
    )
    verify.add_argument("files", nargs="+", metavar="FILE", help="one audit file per replica")
    verify.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        metavar="SOURCE",
        help="external checkpoints: a folder of *.json, a JSON Lines export, or "
        "s3://bucket/prefix (repeatable)",
    )
    verify.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="PEM",
        help="public key file that verifies checkpoint signatures (repeatable)",
    )
    verify.add_argument(
        "--kms-key",
        action="append",
        default=[],
        metavar="URI",
        help="aws-kms://KEY whose public key verifies checkpoint signatures (repeatable)",
    )
    verify.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint for s3:// sources")
    verify.add_argument("--s3-region", metavar="REGION", help="S3 region for s3:// sources")
    verify.add_argument("--kms-endpoint-url", metavar="URL", help="KMS endpoint for --kms-key")
    verify.add_argument("--kms-region", metavar="REGION", help="KMS region for --kms-key")
    add_output(verify)
    text = "create an Ed25519 checkpoint signing key (mode 0600) and its public key"
    keygen = audit_sub.add_parser("keygen", help=text, description=text.capitalize() + ".")
    keygen.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the key pair (not the audit log's folder)",
    )
    add_output(keygen)
    audit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run an ``audit`` action; returns the exit code."""
    if args.action == "keygen":
        from temporal_shield.server._signer import generate_ed25519

        private, public = generate_ed25519(Path(args.out))
        emit(
            args,
            {
                "private_key": str(private),
                "public_key": str(public),
                "signing_key": f"ed25519://{private}",
            },
            lambda: [
                f"wrote {private} (mode 0600: the server's audit.signing_key = "
                f"ed25519://{private})",
                f"wrote {public} (give it to `audit verify --public-key`)",
            ],
        )
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
    emit(args, _as_json(report), lambda: _as_text(report))
    sys.stdout.flush()
    return 0 if report.ok else 1


def _as_json(report: Report) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "files": [
            {"file": str(path), **dataclasses.asdict(result)} for path, result in report.files
        ],
        "findings": list(report.findings),
    }


def _as_text(report: Report) -> list[str]:
    lines = []
    for path, result in report.files:
        if not result.ok:
            lines.append(
                f"{path}: chain broken at line {result.broken_line} ({result.reason}); "
                f"{result.records} records before it are intact"
            )
            continue
        if not result.checkpoints and not result.anchored:
            lines.append(
                f"{path}: chain intact, {result.records} records; no checkpoints: all "
                f"{result.records} records are protected only by the hash chain"
            )
            continue
        replica = f"replica {result.replica}, " if result.replica else ""
        lines.append(
            f"{path}: chain intact, {result.records} records ({replica}{result.checkpoints} "
            f"signed checkpoints in the file, {result.anchored} external checkpoints match); "
            f"{result.unprotected} records after the last checkpoint (record "
            f"{result.signed_records}) are protected only by the hash chain"
        )
    return lines + list(report.findings)
