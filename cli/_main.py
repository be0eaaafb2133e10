"""The ``temporal-shield`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from temporal_shield.codec import ShieldError

from . import __version__
from ._extras import missing_extra
from ._scan_cli import connect_reason

DESCRIPTION = """\
Compression and KMS envelope encryption for Temporal payloads: manage keys,
re-encrypt offloaded payloads, scan history for plaintext, run the remote codec
server for the Web UI and CLI, verify its audit log, and try it all in a demo.

Exit status: 0 success, 1 findings (plaintext found, audit chain broken, objects
that failed to re-encrypt), 2 usage, configuration, connection or file errors
(one line on standard error)."""

CONFIG_HELP = (
    "TOML configuration file (default: $TEMPORAL_SHIELD_CONFIG, else "
    "$XDG_CONFIG_HOME/temporal-shield/shield.toml if it exists)"
)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2 (argparse prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_output(parser: argparse.ArgumentParser) -> None:
    """``-o/--output text|json``, as the ``temporal`` CLI has it."""
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="output format: text for people, json for programs (default: text)",
    )


def emit(args: argparse.Namespace, data: Any, text: Callable[[], Sequence[str]]) -> None:
    """Print ``data`` as JSON with ``--output json``, else the lines ``text()`` gives.

    Text lines are made safe for a terminal: they quote what others wrote (object
    keys, key ids, subjects, justifications), and an escape sequence in one could
    rewrite what the reader sees (erase a "failed 1" line, fake a summary).
    """
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        for line in text():
            print(terminal_safe(line))


def terminal_safe(line: str) -> str:
    r"""``line`` with every unprintable character but a tab escaped (as ``\x1b``, ``\u202e``)."""
    if line.isprintable():
        return line
    return "".join(
        ch if ch.isprintable() or ch == "\t" else ch.encode("unicode_escape").decode("ascii")
        for ch in line
    )


def _keyring_path(args: argparse.Namespace) -> Path:
    """``--keyring``, else the configured ``keys.uri`` when it is a ``local://`` keyring."""
    from temporal_shield.codec import ConfigError
    from temporal_shield.converter import load_config

    if args.keyring:
        return Path(args.keyring).expanduser()
    uri = load_config(args.config).keys.uri
    if not uri.startswith("local://"):
        raise ConfigError(
            f"keys.uri is {uri!r}, not a local:// keyring: give --keyring PATH "
            "(KMS keys are rotated in the KMS)"
        )
    return Path(uri.removeprefix("local://")).expanduser()


def _rewrap(args: argparse.Namespace) -> int:
    import asyncio

    from temporal_shield.codec import ConfigError, aws_client
    from temporal_shield.converter import build_codec, load_config, rewrap, rewrap_progress

    config = load_config(args.config)
    bucket = args.bucket or config.storage.s3_bucket
    if not bucket:
        raise ConfigError("no bucket: give --bucket or set storage.s3_bucket")
    if args.distributed:
        from ._cluster_cli import rewrap_distributed

        report = rewrap_distributed(args, bucket)
    else:
        s3 = aws_client("s3", config.storage.aws, feature="keys rewrap")
        envelope = build_codec(config).envelope
        report = asyncio.run(
            rewrap(
                s3,
                bucket,
                envelope,
                prefix=args.prefix,
                start_after=args.start_after,
                dry_run=args.dry_run,
                progress=rewrap_progress(dry_run=args.dry_run),
            )
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # end the progress line before the report

    def text() -> list[str]:
        verb = "would re-encrypt" if args.dry_run else "re-encrypted"
        lines = [
            f"{report.scanned} objects: {verb} {report.rewrapped}, already current "
            f"{report.current}, not ours {report.foreign}, failed {len(report.failed)}"
        ]
        lines += [f"  failed: {key}: {report.reasons.get(key, '')}" for key in report.failed]
        # No "resume" hint: a re-run skips objects already current, and the
        # JSON output carries last_key for scripts that page by hand.
        return lines

    emit(
        args,
        {
            "bucket": bucket,
            "dry_run": args.dry_run,
            "scanned": report.scanned,
            "rewrapped": report.rewrapped,
            "current": report.current,
            "foreign": report.foreign,
            "failed": report.failed,
            "reasons": report.reasons,
            "last_key": report.last_key,
        },
        text,
    )
    return 1 if report.failed else 0


def _keys(args: argparse.Namespace) -> int:
    from temporal_shield.codec import ConfigError, Keyring

    if args.action == "rewrap":
        return _rewrap(args)
    path = _keyring_path(args)
    if args.action == "init":
        if path.exists():
            raise ConfigError(f"{path} already exists; use `keys rotate` to add a key")
        ring = Keyring.new()
        ring.save(path)
        emit(
            args,
            {"keyring": str(path), "primary": ring.primary},
            lambda: [f"created {path} with primary key {ring.primary}"],
        )
        return 0
    ring = Keyring.load(path)
    if args.action == "rotate":
        ring = ring.rotated()
        ring.save(path)
        emit(
            args,
            {"keyring": str(path), "primary": ring.primary},
            lambda: [f"new primary key {ring.primary}; older keys stay active for decryption"],
        )
    elif args.action == "retire":
        ring = ring.retired(args.key_id)
        ring.save(path)
        emit(
            args,
            {"keyring": str(path), "retired": args.key_id},
            lambda: [f"retired {args.key_id}: payloads under it can no longer be decrypted"],
        )
    else:
        primary = ring.primary
        emit(
            args,
            {
                "keyring": str(path),
                "primary": primary,
                "keys": [
                    {"id": k.id, "created": k.created, "state": k.state, "primary": k.id == primary}
                    for k in ring.keys
                ],
            },
            lambda: [
                "\t".join([k.id, k.created, k.state, "primary" if k.id == primary else ""]).rstrip()
                for k in ring.keys
            ],
        )
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

    folders = [str(folder) for folder in dev_pki(Path(args.out))]
    emit(
        args,
        {"secrets": folders, "files": ["tls.crt", "tls.key", "ca.crt"]},
        lambda: [f"wrote {folder}/{{tls.crt,tls.key,ca.crt}}" for folder in folders],
    )
    return 0


def _secret(args: argparse.Namespace) -> int:
    from temporal_shield.server._secrets import create_secret_file

    path = create_secret_file(args.path)
    emit(args, {"secret_file": str(path)}, lambda: [f"wrote {path} (mode 0600)"])
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import main

    return main(wait=not args.no_wait)


def _command(sub: argparse._SubParsersAction[Any], name: str, text: str) -> argparse.ArgumentParser:
    """A sub-command whose one-line help is also its description (``--help`` shows it)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=text, description=text[0].upper() + text[1:] + "."
    )
    return parser


def _add_keys(sub: argparse._SubParsersAction[Any]) -> None:
    keys = _command(sub, "keys", "manage the local keyring and re-encrypt offloaded payloads")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("init", "create a keyring with one primary key"),
        ("list", "list keys: ids, creation time, state (never key material)"),
        ("rotate", "add a new primary key; older keys stay readable"),
        ("retire", "stop a key that is not the primary from decrypting"),
    ):
        sp = _command(keys_sub, name, text)
        sp.add_argument(
            "--keyring",
            metavar="PATH",
            help="keyring file (default: keys.uri from the configuration when it is "
            "local://, else $XDG_CONFIG_HOME/temporal-shield/keyring.json)",
        )
        sp.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
        if name == "retire":
            sp.add_argument("key_id", metavar="KEY_ID", help="id of the key to retire")
        add_output(sp)
    rw = _command(
        keys_sub, "rewrap", "re-encrypt S3-offloaded payloads under the current primary key"
    )
    rw.add_argument("--config", metavar="FILE", help=CONFIG_HELP + "; keys and [storage]")
    rw.add_argument("--bucket", help="bucket to rewrap (default: storage.s3_bucket)")
    rw.add_argument("--prefix", default="", help="only objects under this key prefix")
    rw.add_argument("--start-after", default="", metavar="KEY", help="resume after this key")
    rw.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    from ._cluster_cli import add_rewrap_distributed_arguments

    add_rewrap_distributed_arguments(rw)
    add_output(rw)
    keys.set_defaults(func=_keys)


def _add_serve(sub: argparse._SubParsersAction[Any]) -> None:
    serve = _command(sub, "serve", "run the remote codec server for the Web UI and CLI")
    serve.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument(
        "--port", type=int, help="listen port, 0 for any free port (overrides server.port)"
    )
    serve.add_argument(
        "--policy", metavar="FILE", help="RBAC policy file (overrides server.policy_file)"
    )
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="no authentication: every caller is the identity 'insecure-dev' "
        "(allowed everything, or what a configured policy grants it); "
        "loopback only, for local development",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="processes serving the port: a number, or 'auto' (one per CPU); "
        "overrides server.workers",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also serve /metrics, /healthz, /readyz on this port plus the worker index "
        "(overrides server.metrics_port)",
    )
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # set by the supervisor
    serve.set_defaults(func=_serve)


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = Parser(
        prog="temporal-shield",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version", action="version", version=__version__, help="print the version and exit"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_keys(sub)

    from ._audit_cli import add_parser as add_audit

    add_audit(sub)
    _add_serve(sub)

    from ._scan_cli import add_parser as add_scan

    add_scan(sub)

    from ._cluster_cli import add_parser as add_scan_worker

    add_scan_worker(sub)

    from ._grants_cli import add_parser as add_grants

    add_grants(sub)

    certs = _command(sub, "certs", "make a local PKI in the cert-manager Secret layout")
    certs_sub = certs.add_subparsers(dest="action", required=True, metavar="ACTION")
    dev = _command(certs_sub, "dev", "create a CA and the deploy/ leaf certificates")
    dev.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (one sub-folder per Secret)"
    )
    add_output(dev)
    certs.set_defaults(func=_certs)

    secret = _command(sub, "secret", "manage the codec server's shared secret")
    secret_sub = secret.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = _command(
        secret_sub,
        "init",
        "write a new server secret (32 random bytes, mode 0600; never overwrites a file)",
    )
    init.add_argument("path", metavar="PATH", help="file to create (server.secret_file)")
    add_output(init)
    secret.set_defaults(func=_secret)

    demo = _command(sub, "demo", "run a workflow with encrypted PII on a local dev server")
    demo.add_argument(
        "--no-wait",
        action="store_true",
        help="stop everything right after the workflow (no codec server, no Ctrl-C wait)",
    )
    demo.set_defaults(func=_demo)
    _describe_commands(p)
    return p


def _describe_commands(p: argparse.ArgumentParser) -> None:
    """Give every sub-command registered elsewhere its help line as a description too."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                text = helps.get(name)
                if not child.description and text:
                    child.description = text[0].upper() + text[1:] + "."
                _describe_commands(child)


def entry() -> NoReturn:
    """The console script: :func:`main`, then exit without interpreter finalisation.

    temporalio's native client can abort while the interpreter shuts down
    (seen with a plain SDK client too), which would replace our exit status
    with SIGABRT: a status that means "plaintext found" or "chain broken" must
    not depend on that, so flush and leave with ``os._exit``.
    """
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except Exception as exc:  # a failure main() does not know: still one line, no traceback
        print(f"temporal-shield: internal error: {describe(exc)}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, without a traceback.

    Our own errors never carry key material or payloads, so the message is safe
    to print.
    """
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    elif isinstance(exc, ImportError) and (hint := missing_extra(exc)):
        text = hint  # an optional package of an extra: name the extra to install
    elif isinstance(exc, ShieldError):
        text = str(exc)
    elif "Failed client connect" in str(exc):
        text = f"cannot connect to Temporal: {connect_reason(exc)}"
    else:
        text = f"{_kind(exc)}: {exc}" if str(exc) else _kind(exc)
    return " ".join(text.split()) or type(exc).__name__


def _kind(exc: BaseException) -> str:
    """A reader's name for an exception from a library we call."""
    module = type(exc).__module__.split(".")[0]
    if module == "temporalio":
        return "Temporal"
    if module in ("botocore", "boto3"):
        return "AWS"
    return type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Every expected error ends the same way: one line on stderr and status 2
    (see :func:`expected`). Findings (status 1) are decided by the commands.
    """
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one place maps every expected failure to "error, status 2"
        if not expected(exc):
            raise  # a bug: entry() still prints one line, tests see the exception
        print(f"temporal-shield: error: {describe(exc)}", file=sys.stderr)
        return 2


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is an operating failure rather than a bug.

    Operating failures: configuration, files, connections, KMS/S3, a missing
    optional package.
    """
    if isinstance(exc, (ShieldError, OSError, ImportError)):
        return True
    if "Failed client connect" in str(exc):  # temporalio raises a bare RuntimeError
        return True
    return type(exc).__module__.split(".")[0] in ("temporalio", "botocore", "boto3")


if __name__ == "__main__":
    entry()
