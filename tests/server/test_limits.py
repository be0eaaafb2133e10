"""Bounded work per request: decoded bytes, KMS calls per request and per caller.

Each test is an attack an authorised caller can mount with small requests;
each asserts the bound holds, the excess is counted (audit record and metrics)
and the answer keeps the protocol's shape (one payload per input, in order).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload

from temporal_shield.codec import parse
from temporal_shield.converter import ShieldConfig, build_codec

from ..helpers import FakeKms
from .conftest import ORIGIN, ClientFactory
from .conftest import wire_body as _body
from .forge import forged_payload as _forged
from .idp import Idp

ENGINEER: dict[str, Any] = {"groups": ["engineering"]}


def _headers(idp: Idp, namespace: str = "dev-team", **claims: Any) -> dict[str, str]:
    return {
        "X-Namespace": namespace,
        "Origin": ORIGIN,
        "Authorization": f"Bearer {idp.token(**(claims or ENGINEER))}",
    }


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _non_reader(client: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that will not read: a tiny receive buffer, so the kernel
    cannot take a large answer off the server's hands on the client's behalf."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((client.server.host, client.server.port))
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _sealed(config: ShieldConfig, namespace: str, inner: bytes, **kw: Any) -> Payload:
    codec = build_codec(config, **kw).with_namespace(namespace)
    return (await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=inner)]))[0]


async def test_decode_amplification_is_bounded_per_payload_and_per_request(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    # 3 MiB of one byte compresses to a few hundred bytes: the amplification vector.
    bomb = await _sealed(shield_config, "dev-team", b'"' + b"a" * (3 << 20) + b'"')
    huge = await _sealed(shield_config, "dev-team", b'"' + b"b" * (5 << 20) + b'"')
    small = await _sealed(shield_config, "dev-team", b'"small"')
    assert len(bomb.data) < 2048
    assert len(huge.data) < 2048
    client = await make_client()
    resp = await client.post("/decode", json=_body(huge, small, *[bomb] * 8), headers=_headers(idp))
    assert resp.status == 200
    out = (await resp.json())["payloads"]
    assert len(out) == 10
    # Over the per-payload bound (4 MiB): unchanged.
    assert base64.b64decode(out[0]["data"]) == huge.data
    assert base64.b64decode(out[1]["data"]) != small.data  # decoded
    decoded = [p for p in out[2:] if base64.b64decode(p["data"]) != bomb.data]
    # 16 MiB per request: the small one and five 3 MiB ones fit, three do not.
    assert len(decoded) == 5
    assert len(await resp.read()) < 24 << 20  # base64 of at most 16 MiB of plaintext
    record = _records(audit_path)[-1]
    assert (record["decoded"], record["withheld"], record["decision"]) == (6, 4, "partial")
    assert "decoded payload over the limit" in record["reason"]
    assert "decoded request over the limit" in record["reason"]
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, "codec_limit_refusals_total", limit="decoded_payload_bytes") == 1
    assert _metric(metrics, "codec_limit_refusals_total", limit="decoded_request_bytes") == 3
    assert _metric(metrics, "codec_payloads_total", result="withheld") == 4


async def test_a_large_decode_lets_the_event_loop_serve_others(
    make_client: ClientFactory, shield_config: ShieldConfig
) -> None:
    from temporal_shield.server import STATE, Identity

    bomb = await _sealed(shield_config, "dev-team", b'"' + b"a" * (3 << 20) + b'"')
    client = await make_client()
    app = client.app
    assert app is not None
    service = app[STATE].service
    engineer = Identity(subject="u", groups=frozenset({"engineering"}))
    await service.decode(engineer, "dev-team", [bomb])  # the data key is cached now
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    # Decoding from a cached key never suspends on its own: only the yields
    # between large payloads let the ticker (another caller) run.
    _, outcome = await service.decode(engineer, "dev-team", [bomb] * 5)
    task.cancel()
    assert outcome.decoded == 5
    assert ticks - before >= 4


async def test_process_wide_decoded_bytes_are_bounded(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    from temporal_shield.server import STATE

    bomb = await _sealed(shield_config, "dev-team", b'"' + b"a" * (3 << 20) + b'"')
    # Counted as 3 bytes of memory per decoded byte: room for two 3 MiB payloads.
    client = await make_client(max_decoded_bytes_in_flight=21 << 20)
    resp = await client.post("/decode", json=_body(*[bomb] * 4), headers=_headers(idp))
    record = _records(audit_path)[-1]
    assert (record["decoded"], record["withheld"]) == (2, 2)
    assert "server decode capacity busy" in record["reason"]
    assert resp.status == 200
    # Released once the response was sent: the next request gets the same room.
    await resp.read()
    app = client.app
    assert app is not None
    for _ in range(200):
        if app[STATE].service.in_flight.used == 0:
            break
        await asyncio.sleep(0.01)
    await client.post("/decode", json=_body(*[bomb] * 2), headers=_headers(idp))
    assert _records(audit_path)[-1]["decoded"] == 2


async def test_forged_payload_flood_makes_bounded_kms_calls(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    kms = FakeKms()
    template = await _sealed(shield_config, "dev-team", b'"x"', providers=[kms])
    # One token a minute: the refill cannot blur the counts below.
    client = await make_client(providers=[kms], principal_unwraps_per_minute=1)
    forged = [_forged(template) for _ in range(1000)]
    resp = await client.post("/decode", json=_body(*forged), headers=_headers(idp))
    assert resp.status == 200
    assert len((await resp.json())["payloads"]) == 1000
    assert kms.decrypt_calls == 32  # max_unwraps_per_request
    record = _records(audit_path)[-1]
    assert (record["failed"], record["withheld"]) == (32, 968)
    # The same forged keys again: remembered as bad, no KMS call; the next 28
    # new ones drain the caller's burst of 60.
    await client.post("/decode", json=_body(*forged), headers=_headers(idp))
    assert kms.decrypt_calls == 60
    # The caller's budget is spent: a third flood of new keys costs nothing.
    await client.post("/decode", json=_body(*forged[500:]), headers=_headers(idp))
    assert kms.decrypt_calls == 60
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, "codec_limit_refusals_total", limit="unwraps_per_request") > 0
    assert _metric(metrics, "codec_limit_refusals_total", limit="unwraps_per_principal") > 0
    # The second flood's first 32 were answered from the negative cache.
    assert _metric(metrics, "data_key_cache_total", kind="failed_cache_hits") == 32
    # Another caller has a budget of its own.
    other = await client.post(
        "/decode",
        json=_body(await _sealed(shield_config, "dev-team", b'"ok"', providers=[kms])),
        headers=_headers(idp, sub="someone-else", groups=["engineering"]),
    )
    assert base64.b64decode((await other.json())["payloads"][0]["data"]) == b'"ok"'


async def test_one_forged_key_repeated_costs_one_kms_call(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    kms = FakeKms()
    template = await _sealed(shield_config, "dev-team", b'"x"', providers=[kms])
    client = await make_client(providers=[kms])
    forged = _forged(template)
    resp = await client.post("/decode", json=_body(*[forged] * 1000), headers=_headers(idp))
    assert resp.status == 200
    assert kms.decrypt_calls == 1


async def test_refused_payloads_never_reach_the_kms(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    kms = FakeKms()
    phi = await _sealed(shield_config, "clinic-a", b'"phi"', providers=[kms])
    other_ns = await _sealed(shield_config, "dev-other", b'"x"', providers=[kms])
    huge = await _sealed(shield_config, "dev-team", b"0" * (5 << 20), providers=[kms])
    client = await make_client(providers=[kms])
    # Another process wrote them: nothing is in this server's cache.
    await client.post(
        "/decode", json=_body(*[phi] * 50), headers=_headers(idp, namespace="clinic-a")
    )
    await client.post("/decode", json=_body(*[other_ns] * 50), headers=_headers(idp))
    await client.post("/decode", json=_body(huge), headers=_headers(idp))
    assert kms.decrypt_calls == 0
    assert [r["decision"] for r in _records(audit_path)] == ["deny", "deny", "deny"]


async def test_encode_into_many_namespaces_is_budgeted_per_caller(
    make_client: ClientFactory, idp: Idp, audit_path: Path
) -> None:
    kms = FakeKms()
    client = await make_client(
        providers=[kms], principal_unwrap_burst=5, principal_unwraps_per_minute=1
    )
    body = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "IngiCg=="}]}
    statuses = []
    for i in range(8):
        resp = await client.post("/encode", json=body, headers=_headers(idp, namespace=f"dev-{i}"))
        statuses.append(resp.status)
    assert statuses == [200] * 5 + [429] * 3
    assert kms.generate_calls == 5
    assert resp.headers["Retry-After"].isdigit()
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert (await resp.json())["error"] == "rate_limited"
    assert _records(audit_path)[-1]["status"] == 429
    # A namespace that already has a data key costs nothing: still served.
    again = await client.post("/encode", json=body, headers=_headers(idp, namespace="dev-0"))
    assert again.status == 200


def test_kms_budget_refills_over_time() -> None:
    from temporal_shield.server._limits import TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(60.0, 2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [True, True, False]
    assert buckets.take("b")  # per principal
    now[0] += 1.0  # 60 per minute: one token a second
    assert buckets.take("a")
    assert not buckets.take("a")
    assert buckets.retry_after() >= 1


async def test_unread_responses_hold_their_budget_until_sent_or_timed_out(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    from temporal_shield.server import STATE

    from .rawhttp import post

    bomb = await _sealed(shield_config, "dev-team", b'"' + b"a" * (3 << 20) + b'"')
    client = await make_client(max_decoded_bytes_in_flight=50 << 20, send_timeout=1.0)
    app = client.app
    assert app is not None
    in_flight = app[STATE].service.in_flight
    body = json.dumps(_body(*[bomb] * 5)).encode()
    request = post("/decode", {**_headers(idp), "Content-Length": str(len(body))}, body)
    # A client that sends its request and never reads the ~20 MB answer.
    _, writer = await _non_reader(client)
    writer.write(request)
    await writer.drain()
    for _ in range(200):
        if audit_path.exists() and audit_path.read_text():
            break
        await asyncio.sleep(0.02)
    assert _records(audit_path)[-1]["decoded"] == 5
    size = parse(bomb.data)[0].original_length
    # Held while the answer is unread: the decoded payloads (the small body is
    # bounded by the connection cap instead, see SMALL_HOLD).
    assert in_flight.used == 5 * size * 3
    # Meanwhile the process budget is spent for everyone: withheld, not OOM.
    resp = await client.post("/decode", json=_body(bomb), headers=_headers(idp))
    assert resp.status == 200
    record = _records(audit_path)[-1]
    assert (record["withheld"], record["reason"]) == (1, "server decode capacity busy")
    # After send_timeout the reader is disconnected and the budget comes back.
    for _ in range(300):
        if in_flight.used == 0:
            break
        await asyncio.sleep(0.02)
    assert in_flight.used == 0
    writer.close()
    resp = await client.post("/decode", json=_body(bomb), headers=_headers(idp))
    assert _records(audit_path)[-1]["decoded"] == 1


async def test_forged_labels_never_reach_a_record_or_a_decision(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig, audit_path: Path
) -> None:
    template = await _sealed(shield_config, "dev-team", b'"x"')
    client = await make_client()
    forged = []
    for i in range(300):
        payload = _forged(template)
        # Rewrite the label byte-for-byte: control characters, 255 bytes long.
        header_start = 9 + 2 + len(b"dev-team") + 2
        label_len = payload.data[header_start]
        label = bytes([1 + (i % 30)]) * 200 + str(i).encode()
        data = (
            payload.data[:header_start]
            + bytes([len(label)])
            + label
            + payload.data[header_start + 1 + label_len :]
        )
        forged.append(type(payload)(metadata=dict(payload.metadata), data=data))
    # Many distinct *valid* labels too: every list in the record stays bounded.
    for i in range(100):
        payload = _forged(template)
        header_start = 9 + 2 + len(b"dev-team") + 2
        label_len = payload.data[header_start]
        label = f"label-{i:03d}".encode()
        forged.append(
            type(payload)(
                metadata=dict(payload.metadata),
                data=payload.data[:header_start]
                + bytes([len(label)])
                + label
                + payload.data[header_start + 1 + label_len :],
            )
        )
    resp = await client.post("/decode", json=_body(*forged), headers=_headers(idp))
    assert resp.status == 200
    line = audit_path.read_text().splitlines()[-1]
    assert len(line) < 8192  # bounded whatever the request holds
    record = json.loads(line)
    assert record["failed"] >= 300
    assert not any(ord(c) < 32 for c in "".join(record["classifications"]))
    assert len(record["classifications"]) == 17
    assert record["classifications"][-1] == "...(+84 more)"


def test_the_grants_list_of_a_record_is_bounded_like_the_others() -> None:
    from temporal_shield.server._app import AUDIT_LIST_LIMIT, _grant_list

    grants = {f"grant-{i:03}": "INC-1" for i in range(AUDIT_LIST_LIMIT + 5)}
    listed = _grant_list(grants)
    assert len(listed) == AUDIT_LIST_LIMIT + 1
    assert listed[-1] == {"id": "...(+5 more)", "justification": ""}
    assert len(_grant_list(dict(list(grants.items())[:AUDIT_LIST_LIMIT]))) == AUDIT_LIST_LIMIT


async def test_echoed_answers_count_and_time_out_like_decoded_ones(
    make_client: ClientFactory, idp: Idp, audit_path: Path
) -> None:
    """A caller with no role that posts big bodies of payloads it gets back unchanged,
    and never reads the answers, holds budget (its own share) and is cut off."""
    from temporal_shield.server import STATE

    from .rawhttp import post

    client = await make_client(
        max_decoded_bytes_in_flight=40 << 20,
        max_decoded_bytes_in_flight_per_caller=16 << 20,
        send_timeout=1.0,
    )
    app = client.app
    assert app is not None
    in_flight = app[STATE].service.in_flight
    plain = {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "QUFB" * 600_000}
    body = json.dumps({"payloads": [plain, plain, plain]}).encode()  # ~7 MB
    headers = {**_headers(idp, sub="no-role", groups=[]), "Content-Length": str(len(body))}
    _, writer = await _non_reader(client)
    writer.write(post("/decode", headers, body))
    await writer.drain()
    for _ in range(300):
        if in_flight.held_by("no-role"):
            break
        await asyncio.sleep(0.01)
    assert in_flight.held_by("no-role") == 2 * len(body)  # held while the echo is unread
    # The same caller cannot take more than its share: a second such request is refused...
    resp = await client.post("/decode", data=body, headers=_headers(idp, sub="no-role", groups=[]))
    assert resp.status == 503
    assert (await resp.json())["error"] == "server_busy"
    assert resp.headers["Retry-After"] == "1"
    assert _records(audit_path)[-1]["status"] == 503
    # ...while another caller is served.
    other = await client.post("/decode", json={"payloads": [plain]}, headers=_headers(idp))
    assert other.status == 200
    await other.read()
    # After send_timeout the non-reader is cut off and its share comes back.
    for _ in range(300):
        if not in_flight.held_by("no-role"):
            break
        await asyncio.sleep(0.02)
    assert in_flight.held_by("no-role") == 0
    writer.close()
