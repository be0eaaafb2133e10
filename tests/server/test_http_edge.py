"""Whatever bytes a caller sends: an audit record, a JSON answer, no 500, no token in logs.

These requests are written on a raw socket, because an HTTP client library
refuses to send most of them (non-UTF-8 header bytes, malformed header lines,
a body cut short).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ORIGIN, ClientFactory
from .idp import Idp
from .rawhttp import parse as _parse
from .rawhttp import post as _post
from .rawhttp import raw

ENGINEER: dict[str, Any] = {"groups": ["engineering"]}


def _engineer(idp: Idp, **extra: str) -> dict[str, str]:
    """Headers of an authorised engineer's browser request to dev-team."""
    return {
        "Authorization": f"Bearer {idp.token(**ENGINEER)}",
        "X-Namespace": "dev-team",
        "Origin": ORIGIN,
        **extra,
    }


async def _raw(client: Any, request: bytes, **kw: Any) -> bytes:
    return bytes(await raw(client.server.host, client.server.port, request, **kw))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_non_utf8_header_bytes_are_audited_and_answered(
    make_client: ClientFactory, audit_path: Path
) -> None:
    client = await make_client()
    request = _post(
        "/decode",
        [b"X-Namespace: dev-\xff\xfe", b"Origin: http://\xc3\x28.example", b"Content-Length: 2"],
        b"{}",
    )
    status, _, body = _parse(await _raw(client, request))
    assert status == 401
    assert body["error"] == "unauthorized"
    record = _records(audit_path)[-1]
    assert record["status"] == 401
    assert record["request_id"] == body["request_id"]
    assert record["namespace"].startswith("dev-\\u")  # escaped, not dropped
    assert "\\u" in record["origin"]


async def test_overlong_header_values_are_cut_in_the_audit_record(
    make_client: ClientFactory, audit_path: Path
) -> None:
    client = await make_client()
    resp = await client.post("/decode", data=b"{}", headers={"X-Namespace": "n" * 5000})
    assert resp.status == 401
    record = _records(audit_path)[-1]
    assert record["namespace"].endswith("...[truncated]")
    assert len(record["namespace"]) < 300


@pytest.mark.parametrize(
    ("extra", "body", "status"),
    [
        (["Content-Encoding: gzip"], b'{"payloads": []}', 415),  # not gzip at all
        (["Content-Encoding: gzip"], gzip.compress(b'{"payloads": []}'), 415),  # real gzip
        (["Content-Encoding: br"], b"\x00\x01\x02garbage", 415),
        (["Content-Encoding: x-bogus"], b'{"payloads": []}', 415),
        (["Transfer-Encoding: chunked"], b"zz\r\nnot hex\r\n0\r\n\r\n", 400),
    ],
    ids=["gzip-lie", "gzip", "br-garbage", "bogus-coding", "bad-chunking"],
)
async def test_compressed_or_broken_bodies_are_4xx_json_and_never_inflated(
    make_client: ClientFactory,
    idp: Idp,
    audit_path: Path,
    caplog: pytest.LogCaptureFixture,
    extra: list[str],
    body: bytes,
    status: int,
) -> None:
    client = await make_client()
    headers = [
        f"Authorization: Bearer {idp.token(**ENGINEER)}".encode(),
        b"X-Namespace: dev-team",
        f"Origin: {ORIGIN}".encode(),
        *[e.encode() for e in extra],
    ]
    if not any(e.startswith("Transfer-Encoding") for e in extra):
        headers.append(f"Content-Length: {len(body)}".encode())
    answer_status, response_headers, answer = _parse(
        await _raw(client, _post("/decode", headers, body))
    )
    assert answer_status == status
    assert answer["error"] in ("unsupported_media_type", "bad_request")
    assert response_headers.get("access-control-allow-origin") == ORIGIN
    if status == 415:  # refused by our handler: audited
        assert _records(audit_path)[-1]["status"] == 415
    assert "Traceback" not in caplog.text
    assert (await client.get("/healthz")).status == 200


async def test_a_gzip_bomb_is_refused_unread(make_client: ClientFactory, idp: Idp) -> None:
    from temporal_shield.server import STATE

    # 1 GiB of zeros in ~1 MB of gzip: aiohttp would inflate it in its parser,
    # on the event loop, whatever the handler said. Here it is never inflated.
    bomb = gzip.compress(b"\0" * (1 << 30), compresslevel=9)
    client = await make_client()
    resp = await client.post(
        "/decode",
        data=bomb,
        headers=_engineer(idp, **{"Content-Encoding": "gzip"}),
    )
    assert resp.status == 415
    assert (await resp.json())["error"] == "unsupported_media_type"
    app = client.app
    assert app is not None
    assert app[STATE].config.max_body_bytes > len(bomb)  # not refused for its size


async def test_expect_headers_never_get_a_plain_text_answer(
    make_client: ClientFactory, idp: Idp, audit_path: Path
) -> None:
    client = await make_client()
    headers = _engineer(idp, **{"Content-Length": "16"})
    weird = _post("/decode", {**headers, "Expect": "999-weird"}, b'{"payloads": []}')
    status, _, answer = _parse(await _raw(client, weird))
    assert (status, answer) == (200, {"payloads": []})
    assert _records(audit_path)[-1]["status"] == 200
    # 100-continue is still honoured: the interim answer, then the real one.
    answer_bytes = await _raw(
        client, _post("/decode", {**headers, "Expect": "100-continue"}, b'{"payloads": []}')
    )
    assert answer_bytes.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


async def test_client_gone_mid_body_is_a_400_record_not_a_500(
    make_client: ClientFactory, idp: Idp, audit_path: Path
) -> None:
    client = await make_client()
    headers = _engineer(idp, **{"Content-Length": "100000"})
    _, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(_post("/decode", headers, b'{"payloads": ['))
    await writer.drain()
    writer.close()
    for _ in range(100):
        if audit_path.exists() and audit_path.read_text():
            break
        await asyncio.sleep(0.05)
    record = _records(audit_path)[-1]
    assert (record["status"], record["decision"]) == (400, "deny")
    assert "body could not be read" in record["reason"]
    assert (await client.get("/healthz")).status == 200


async def test_slow_body_gets_408(make_client: ClientFactory, idp: Idp, audit_path: Path) -> None:
    client = await make_client(body_read_timeout=0.5)
    headers = _engineer(idp, **{"Content-Length": "100"})
    answer = await _raw(
        client,
        _post("/decode", headers, b'{"payl'),
        pause=2.0,
        tail=b"x" * 94,
    )
    status, response_headers, body = _parse(answer)
    assert (status, body["error"]) == (408, "request_timeout")
    assert response_headers["access-control-allow-origin"] == ORIGIN
    assert _records(audit_path)[-1]["status"] == 408


@pytest.mark.parametrize(
    "body",
    [
        b'{"payloads": [], "ignored": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"payloads": [{"metadata": {"encoding": "\xff\xfe"}, "data": ""}]}',
        b'{"payloads": [{"metadata": {"\xc3\x28": "AA=="}, "data": ""}]}',
        b'{"payloads": [], "x": "\xed\xa0\x80"}',  # an encoded surrogate
        b'{"payloads": [{"metadata": {}, "data": "\\ud800"}]}',
    ],
    ids=["deep-nesting", "bad-utf8-value", "bad-utf8-key", "surrogate-bytes", "escaped-surrogate"],
)
async def test_hostile_json_is_400(
    make_client: ClientFactory, idp: Idp, audit_path: Path, body: bytes
) -> None:
    client = await make_client()
    resp = await client.post(
        "/decode",
        data=body,
        headers=_engineer(idp, **{"Content-Type": "application/json"}),
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert _records(audit_path)[-1]["status"] == 400


async def test_malformed_header_line_is_json_and_never_logs_the_token(
    make_client: ClientFactory, idp: Idp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = idp.token(**ENGINEER)
    client = await make_client()
    request = _post(
        "/decode",
        [f"Authorization: Bearer {token}\x01".encode(), b"Bad Header Line", b"Content-Length: 0"],
    )
    status, headers, body = _parse(await _raw(client, request))
    assert status == 400
    assert body["error"] == "bad_request"
    assert headers["access-control-allow-origin"] == ORIGIN  # the one configured origin
    assert token not in caplog.text
    assert token[:20] not in caplog.text
    assert "refused a request before routing" in caplog.text


async def test_large_idp_token_fits_and_oversize_headers_get_431_json(
    make_client: ClientFactory, idp: Idp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # An IdP token with a few hundred groups: ~20 KB, over aiohttp's 8 KiB default.
    groups = ["engineering", *[f"group-{i:04d}-with-a-long-name" for i in range(600)]]
    big = idp.token(groups=groups)
    assert len(big) > 16_000
    client = await make_client()
    resp = await client.post(
        "/decode",
        json={"payloads": []},
        headers={"Authorization": f"Bearer {big}", "X-Namespace": "dev-team"},
    )
    assert resp.status == 200
    huge = idp.token(groups=groups * 6)
    request = _post("/decode", {"Authorization": f"Bearer {huge}", "Content-Length": "0"})
    status, headers, body = _parse(await _raw(client, request))
    assert (status, body["error"]) == (431, "headers_too_large")
    assert headers["access-control-allow-origin"] == ORIGIN
    assert huge[:40] not in caplog.text


def test_log_redaction_scrubs_tokens_from_any_record(idp: Idp) -> None:
    from temporal_shield.server._http import RedactSecrets

    token = idp.token()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "bad line %r", (f"Bearer {token}",), None
    )
    try:
        raise ValueError(f"Invalid header: Authorization: Bearer {token}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactSecrets().filter(record)
    text = logging.Formatter().format(record)
    assert token not in text
    assert token.split(".")[0] not in text
    assert "[redacted]" in text


_SERVE_THEN_LOG = """
import logging, sys
from temporal_shield._serve import serve
from temporal_shield.codec import ConfigError
try:
    serve(None, {"port": "not a port"})  # logging is set up before the settings load
except ConfigError:
    pass
else:
    sys.exit("the settings were expected to be refused")
logging.getLogger("aiohttp.server").error("Invalid header: Authorization: Bearer %s", sys.argv[1])
"""


def test_serve_scrubs_tokens_that_a_library_logs(idp: Idp) -> None:
    """The filter is installed by ``serve`` itself, on the handler its logs go to."""
    token = idp.token()
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_THEN_LOG, token], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Invalid header: Authorization: Bearer [redacted]" in done.stderr
    assert token.split(".")[1] not in done.stderr


async def test_a_trickled_request_head_times_out_with_json(make_client: ClientFactory) -> None:
    client = await make_client(header_timeout=0.5)
    answer = await _raw(client, b"POST /decode HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # never ends
    status, headers, body = _parse(answer)
    assert (status, body["error"]) == (408, "request_timeout")
    assert headers["access-control-allow-origin"] == ORIGIN


async def test_a_request_head_is_bounded_in_total_not_only_per_field(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"a" * 60_000) for i in range(40))
    answer = await _raw(client, b"POST /decode HTTP/1.1\r\nHost: x\r\n" + fields)
    status, _, body = _parse(answer)
    assert (status, body["error"]) == (431, "headers_too_large")


async def test_connections_over_the_cap_are_closed(make_client: ClientFactory) -> None:
    client = await make_client(max_connections=3)
    held = [await asyncio.open_connection(client.server.host, client.server.port) for _ in range(3)]
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without a word
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    assert (await client.get("/healthz")).status == 200  # room again


async def test_idle_keep_alive_connections_are_closed(make_client: ClientFactory) -> None:
    """Each idle connection counts against max_connections: they do not stay for long."""
    from temporal_shield.server import ServerConfig

    assert ServerConfig(insecure_dev=True).keepalive_timeout == 75.0  # nginx's default
    client = await make_client(keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive (HTTP/1.1)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"close" not in head.lower()
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    # Then idle: the server closes it (a read returns end of stream).
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


@pytest.mark.parametrize("request_line", [b"OPTIONS * HTTP/1.1", b"CONNECT 127.0.0.1:443 HTTP/1.1"])
async def test_request_targets_that_are_not_paths_get_json(
    make_client: ClientFactory, request_line: bytes
) -> None:
    client = await make_client()
    answer = await _raw(client, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = _parse(answer)
    assert (status, body["error"]) == (404, "not_found")
    assert headers["access-control-allow-origin"] == ORIGIN


async def test_readyz_asks_the_key_providers_at_most_once_per_interval(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from temporal_shield.server import STATE, _app

    calls = 0

    async def check() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)

    client = await make_client()
    app = client.app
    assert app is not None
    app[STATE].readiness = _app._Readiness(check)
    answers = await asyncio.gather(*[client.get("/readyz") for _ in range(50)])
    assert {a.status for a in answers} == {200}
    assert calls == 1  # concurrent probes shared one check, later ones reused it
    monkeypatch.setattr(_app, "READINESS_TTL", 0.0)
    assert (await client.get("/readyz")).status == 200
    assert calls == 2


def test_audit_text_escapes_are_unambiguous() -> None:
    from temporal_shield.server._app import _text

    assert _text("plain") == "plain"
    assert _text("\x00") == "\\u0000"
    assert _text("\\u0000") == "\\\\u0000"  # the text of an escape is not an escape
    assert _text("\udcff") == "\\udcff"
    assert _text("\U000e0001") == "\\U000e0001"
    assert _text("ok😀") == "ok😀"
    # Values within the limit never collide, however much escaping lengthens them.
    victim, attacker = "alice" + "\u2060" * 42 + "-victim", "alice" + "\u2060" * 42 + "-attacker"
    assert _text(victim) != _text(attacker)
    assert _text("\\" * 200 + "a") != _text("\\" * 200 + "b")
    assert _text("x" * 300).endswith("...[truncated]")
    assert len(_text("\x00" * 10_000)) < 10 * 256 + 20  # still bounded


@pytest.mark.parametrize(
    "sub",
    # Invisible; with a control character (grant tags join fields with NUL, and a
    # record would show an escape); longer than OIDC's 255 characters.
    [
        *["", " ", "\u200b", "\ufeff", "alice\x00bob", "alice\n", "\x1balice", "a" * 256],
        # Reads like "alice" (or another name) in a record: bidi override, word
        # joiner, line separator, no-break space, private use.
        *["\u202eecila", "alice\u2060", "alice\u2028", "alice\u00a0", "alice\ue000"],
    ],
)
async def test_an_invisible_subject_is_not_an_identity(
    make_client: ClientFactory, idp: Idp, sub: str
) -> None:
    assert await _decode_as(await make_client(), idp, sub) == 401


async def _decode_as(client: Any, idp: Idp, sub: str) -> int:
    """The status of an empty /decode with a token for ``sub``."""
    resp = await client.post(
        "/decode",
        json={"payloads": []},
        headers={"Authorization": f"Bearer {idp.token(sub=sub)}", "X-Namespace": "dev-team"},
    )
    return int(resp.status)


@pytest.mark.parametrize("sub", ["a" * 255, "José Müller", "auth0|5f1c", "user@example.com"])
async def test_printable_subjects_up_to_255_characters_are_identities(
    make_client: ClientFactory, idp: Idp, audit_path: Path, sub: str
) -> None:
    assert await _decode_as(await make_client(), idp, sub) == 200
    assert _records(audit_path)[-1]["subject"] == sub  # whole, never cut


async def test_decoded_answers_are_not_stored_by_caches(
    make_client: ClientFactory, idp: Idp
) -> None:
    client = await make_client()
    resp = await client.post("/decode", json={"payloads": []}, headers=_engineer(idp))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
