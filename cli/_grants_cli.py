"""``temporal-shield grants``: request, approve, deny, revoke and list just-in-time grants.

Talks to a codec server's grant API (``docs/grants.md``) with a bearer token.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from temporal_shield.converter._net import is_loopback_url
from temporal_shield.converter._settings import GRANTS_CLI_ENV

from ._scan_cli import CommandFailed

SERVER_URL_ENV, TOKEN_ENV = GRANTS_CLI_ENV

TIMEOUT = 30.0
MAX_ANSWER = 4 * 1024 * 1024


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``grants request|approve|deny|revoke|list`` to the command line."""
    from ._main import add_output

    text = "request, approve, deny, revoke and list just-in-time access grants"
    grants = sub.add_parser("grants", help=text, description=text.capitalize() + ".")
    actions = grants.add_subparsers(dest="action", required=True, metavar="ACTION")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text.capitalize() + "."
        )
        parser.add_argument(
            "--server",
            default=os.environ.get(SERVER_URL_ENV, ""),
            metavar="URL",
            help="codec server URL (default: TEMPORAL_SHIELD_SERVER_URL)",
        )
        parser.add_argument(
            "--token",
            default=None,
            metavar="TOKEN",
            help="bearer token (default: TEMPORAL_SHIELD_TOKEN; never printed)",
        )
        parser.add_argument(
            "--ca-file", default=None, metavar="PEM", help="CA bundle for an https server"
        )
        add_output(parser)
        parser.set_defaults(func=_run, action=name)
        return parser

    request = command("request", "ask for access to a namespace's classification")
    request.add_argument("--namespace", required=True, help="the namespace to read")
    request.add_argument(
        "--classification", required=True, help="the classification to read (* for every one)"
    )
    request.add_argument(
        "--duration", required=True, help="how long: seconds, or like 30m, 1h (up to the cap)"
    )
    request.add_argument("--justification", required=True, help="why: a ticket id or a sentence")
    approve = command("approve", "approve someone else's pending request")
    approve.add_argument("id", help="the grant id")
    deny = command("deny", "deny a pending request")
    deny.add_argument("id", help="the grant id")
    deny.add_argument("--reason", required=True, help="why it is denied")
    revoke = command("revoke", "end a grant now (yours, or any as an approver)")
    revoke.add_argument("id", help="the grant id")
    revoke.add_argument("--reason", required=True, help="why it is revoked")
    listing = command("list", "list your grants (approvers: pending requests too)")
    listing.add_argument("--all", action="store_true", help="every running grant (approvers only)")


def _run(args: argparse.Namespace) -> int:
    from ._main import emit

    action = args.action
    if action == "request":
        answer = _call(
            args,
            "POST",
            "/grants",
            {
                "namespace": args.namespace,
                "classification": args.classification,
                "duration": args.duration,
                "justification": args.justification,
            },
        )
        emit(args, answer, lambda: [f"requested {answer['id']} ({answer['state']})"])
    elif action == "list":
        answer = _call(args, "GET", "/grants" + ("?all=1" if args.all else ""), None)
        emit(args, answer, lambda: [_line(g) for g in answer.get("grants", [])] or ["no grants"])
    else:
        if "/" in args.id or not args.id:
            raise CommandFailed(f"not a grant id: {args.id!r}")
        body = {"reason": args.reason} if action in ("deny", "revoke") else {}
        answer = _call(args, "POST", f"/grants/{urllib.parse.quote(args.id)}/{action}", body)
        emit(args, answer, lambda: [_line(answer)])
    return 0


def _word(value: str) -> str:
    """``value`` as one field of a line: quoted (JSON) if it could read as more."""
    if value and not any(ch.isspace() or ch in '="' for ch in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _line(grant: dict[str, Any]) -> str:
    fields = [
        str(grant.get("id", "")),
        str(grant.get("state", "")),
        f"{grant.get('namespace', '')}/{grant.get('classification', '')}",
        f"requester={_word(str(grant.get('subject', '')))}",
    ]
    if grant.get("approver"):
        fields.append(f"approver={_word(str(grant['approver']))}")
    fields.append(f"justification={json.dumps(grant.get('justification', ''))}")
    return " ".join(fields)


def _call(args: argparse.Namespace, method: str, path: str, body: Any) -> dict[str, Any]:
    server = (args.server or "").rstrip("/")
    if not server:
        raise CommandFailed("no codec server: pass --server or set TEMPORAL_SHIELD_SERVER_URL")
    if not server.startswith(("http://", "https://")):
        raise CommandFailed("--server (or TEMPORAL_SHIELD_SERVER_URL) must be an http(s) URL")
    if server.startswith("http://") and not is_loopback_url(server):
        # The request carries a bearer token: in clear only to this machine.
        raise CommandFailed(
            "--server must be https:// (plain http:// only to a loopback address or localhost): "
            "the request carries your token"
        )
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    if not token:
        raise CommandFailed("no token: pass --token or set TEMPORAL_SHIELD_TOKEN")
    data = None if body is None else json.dumps(body).encode()
    # The scheme is checked above (no file: or custom schemes).
    request = urllib.request.Request(server + path, data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    try:
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirect(),
            urllib.request.HTTPSHandler(context=context),
        ]
        if server.startswith("http://"):
            # A proxy from http_proxy would see the token in clear (and lift a
            # loopback URL off this machine): plain http goes direct. https
            # through a proxy stays end-to-end encrypted (CONNECT).
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)
        with opener.open(request, timeout=TIMEOUT) as response:
            raw = response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        raise CommandFailed(f"refused ({exc.code}): {_message(exc.read(MAX_ANSWER))}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandFailed(f"cannot reach {server}: {reason}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise CommandFailed("the server's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise CommandFailed("the server's answer is not a JSON object")
    return answer


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would resend the bearer token to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _message(raw: bytes) -> str:
    try:
        answer = json.loads(raw)
        return f"{answer['error']}: {answer['message']}"[:500]
    except (ValueError, KeyError, TypeError):
        return "no details"
