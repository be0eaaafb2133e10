"""The hostile suite: the real ``temporal-shield serve`` process, attacked over HTTP.

One server, configured as a user deploys it (JWT from a key file, RBAC policy,
audit file with signed checkpoints, CORS, local keyring), takes every class of
hostile request in turn: tokens, header bytes, bodies, namespaces, protocol,
tampered envelopes, amplification, KMS floods. After every case the server
must still answer, and over the whole run:

* no 5xx except the documented 503s;
* every error is JSON (``error``, ``message``, ``request_id``) with CORS;
* no plaintext reaches a caller who may not read it;
* no token, in full or in part, in the server's logs or audit file;
* the audit file verifies, and forging, deleting, truncating or tearing it
  is detected (or recovered, for a torn tail).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from temporalio.api.common.v1 import Payload

from temporal_shield._devserver import free_port
from temporal_shield.codec import Keyring, parse
from temporal_shield.converter import ShieldConfig, build_codec, load_config

from .conftest import ORIGIN, POLICY
from .conftest import wire_body as body_of
from .forge import forged_payload as _forged
from .idp import AUDIENCE, ISSUER
from .rawhttp import parse as parse_raw
from .rawhttp import post as raw_post
from .rawhttp import raw

SECRET = b'"HOSTILE-SUITE-SECRET-7f3a"'
TOKEN_MARKERS: list[str] = []
"""Every token this suite sends (to look for in logs and the audit file)."""


@dataclass
class Served:
    """A running ``serve`` process and what it was configured with."""

    url: str
    port: int
    root: Path
    config_path: Path
    audit: Path
    public_key: Path
    log: Path
    key: ec.EllipticCurvePrivateKey
    shield: ShieldConfig
    proc: subprocess.Popen[bytes] | None = None
    statuses: list[int] = field(default_factory=list)

    def token(self, key: Any = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": "user-1",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": os.urandom(8).hex(),
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        header = {"alg": "ES256", "typ": "JWT", "kid": "idp", **(headers or {})}
        # Signed by hand: PyJWT refuses to *encode* some of the hostile headers
        # (a non-string kid) that it must still refuse to accept.
        signing_input = f"{_b64(header)}.{_b64(body)}".encode()
        signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, key or self.key)
        token = (
            signing_input.decode() + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        )
        TOKEN_MARKERS.append(token)
        return token

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "temporal_shield", "serve", "--config", str(self.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("serve did not become ready")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.proc = None
        return code


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "temporal_shield", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile")
    keyring = root / "keyring.json"
    Keyring.new().save(keyring)
    key = ec.generate_private_key(ec.SECP256R1())
    (root / "idp.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (root / "policy.yaml").write_text(POLICY)
    keygen = _cli("audit", "keygen", "--out", str(root / "signing"))
    assert keygen.returncode == 0, keygen.stderr
    (root / "log").mkdir()
    port = free_port()
    config = root / "shield.toml"
    config.write_text(
        f"""
[keys]
uri = "local://{keyring}"
[classification]
default = "internal"
[classification.namespaces]
"clinic-*" = "phi"
"dev-*" = "internal"

[server]
host = "127.0.0.1"
port = {port}
cors_origins = ["{ORIGIN}"]
policy_file = "{root / "policy.yaml"}"
body_read_timeout = 1.0
max_payloads = 200

[server.auth]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
algorithms = ["ES256"]
public_key_files = ["{root / "idp.pem"}"]

[server.audit]
file = "{root / "log" / "audit.jsonl"}"
replica_id = "hostile-1"
signing_key = "ed25519://{root / "signing" / "audit-signing.key"}"
checkpoint_every = 25
checkpoint_stdout = true
"""
    )
    served = Served(
        url=f"http://127.0.0.1:{port}",
        port=port,
        root=root,
        config_path=config,
        audit=root / "log" / "audit.jsonl",
        public_key=root / "signing" / "audit-signing.pub",
        log=root / "serve.log",
        key=key,
        shield=load_config(config, env={}, other_sections=["server"]),
    )
    served.start()
    yield served
    if served.proc is not None:
        served.proc.kill()
        served.proc.wait()


@pytest.fixture
async def http(served: Served) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(served.url) as session:
        yield session
        # After every case: the server is alive and still answers.
        assert (await session.get("/healthz")).status == 200


async def _sealed(shield: ShieldConfig, namespace: str, inner: bytes = SECRET) -> Payload:
    codec = build_codec(shield).with_namespace(namespace)
    return (await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=inner)]))[0]


def _headers(token: str | None, namespace: str = "dev-team") -> dict[str, str]:
    headers = {"X-Namespace": namespace, "Origin": ORIGIN}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def _check(served: Served, resp: aiohttp.ClientResponse) -> Any:
    """The suite-wide rules for one answer; returns its JSON."""
    served.statuses.append(resp.status)
    assert resp.status < 500 or resp.status == 503, resp.status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers.get("Access-Control-Allow-Origin") == ORIGIN
    doc = await resp.json()
    if resp.status >= 400:
        assert set(doc) == {"error", "message", "request_id"}
    return doc


def _revealed(doc: Any) -> bool:
    return any(
        SECRET in base64.b64decode(p.get("data", "")) for p in doc.get("payloads", [])
    ) or SECRET.decode() in json.dumps(doc)


ENGINEER: dict[str, Any] = {"groups": ["engineering"]}


def _hostile_tokens(served: Served) -> list[str]:
    now = int(time.time())
    other = ec.generate_private_key(ec.SECP256R1())
    good_header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"idp"}').rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(
        json.dumps({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}).encode()
    )
    return [
        f"{good_header}.{claims.rstrip(b'=').decode()}.",  # alg none
        served.token(key=other, **ENGINEER),  # wrong key
        served.token(exp=now - 3600, **ENGINEER),
        served.token(iss="https://evil.example/", **ENGINEER),
        served.token(aud="someone-else", **ENGINEER),
        served.token(headers={"kid": 7}, **ENGINEER),
        served.token(headers={"kid": ["idp"]}, **ENGINEER),
        served.token(headers={"crit": ["exp"]}, **ENGINEER),
        served.token(exp=str(now + 60), **ENGINEER),
        served.token(sub={"a": 1}, **ENGINEER),
        served.token(groups="engineering admins"),  # a string, not a list
        served.token(iss=[ISSUER], **ENGINEER),
        served.token(exp=10**30, **ENGINEER),
        served.token(nbf=now + 3600, **ENGINEER),
        "x.y.z",
        "not-a-jwt",
        "ey" + "A" * 30_000,
        "ñandú.ñandú.ñandú",
    ]


async def test_hostile_tokens_are_401_json(served: Served, http: aiohttp.ClientSession) -> None:
    enc = await _sealed(served.shield, "dev-team")
    for token in _hostile_tokens(served):
        resp = await http.post("/decode", json=body_of(enc), headers=_headers(token))
        doc = await _check(served, resp)
        assert resp.status == 401, (token[:40], doc)
        assert not _revealed(doc)
    # The control: a good token reads it.
    resp = await http.post("/decode", json=body_of(enc), headers=_headers(served.token(**ENGINEER)))
    assert _revealed(await _check(served, resp))


async def test_hostile_bodies_are_4xx_json(served: Served, http: aiohttp.ClientSession) -> None:
    token = served.token(**ENGINEER)
    bodies: list[tuple[bytes, dict[str, str]]] = [
        (b"not json", {}),
        (b'{"payloads": [], "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}),
        (b'{"payloads": [{"data": "\xff\xfe"}]}', {}),
        (b'{"payloads": [{"data": "not base64!"}]}', {}),
        (b'{"payloads": [{"metadata": [], "data": ""}]}', {}),
        (json.dumps({"payloads": [{}] * 201}).encode(), {}),
        (b'{"payloads": []}', {"Content-Encoding": "gzip"}),
        (b'{"payloads": []}', {"Content-Encoding": "x-bogus"}),
    ]
    for body, extra in bodies:
        resp = await http.post("/decode", data=body, headers={**_headers(token), **extra})
        doc = await _check(served, resp)
        assert 200 <= resp.status < 500, (body[:30], doc)
    # Over max_body_bytes: 413 as soon as the declared length is seen; the
    # server then closes, so a client still sending may see a reset instead.
    too_big = raw_post("/decode", {**_headers(token), "Content-Length": str(9 << 20)}, b"{")
    status, headers, doc = parse_raw(await raw("127.0.0.1", served.port, too_big))
    assert (status, doc["error"]) == (413, "too_large")
    assert headers["access-control-allow-origin"] == ORIGIN


async def test_hostile_bytes_on_the_wire(served: Served, http: aiohttp.ClientSession) -> None:
    token = served.token(**ENGINEER)
    enc = await _sealed(served.shield, "dev-team")
    payload = json.dumps(body_of(enc)).encode()
    cases = [
        # Non-UTF-8 bytes in X-Namespace and Origin (so: not an allowed origin).
        (
            raw_post(
                "/decode",
                [b"X-Namespace: dev-\xff", b"Origin: http://\xc3\x28", b"Content-Length: 2"],
                b"{}",
            ),
            None,
        ),
        # A malformed header line right after the bearer token.
        (raw_post("/decode", [f"Authorization: Bearer {token}".encode(), b"Bad Line"]), ORIGIN),
        # Header over the limit.
        (raw_post("/decode", [b"X-Big: " + b"a" * 70_000, b"Content-Length: 0"]), ORIGIN),
        # A bad chunked body.
        (raw_post("/decode", [b"Transfer-Encoding: chunked"], b"zz\r\n"), ORIGIN),
    ]
    for request, cors in cases:
        status, headers, doc = parse_raw(await raw("127.0.0.1", served.port, request))
        served.statuses.append(status)
        assert 400 <= status < 500
        assert set(doc) == {"error", "message", "request_id"}
        assert headers.get("access-control-allow-origin") == cors
    # A body cut short by the client, and one that trickles in too slowly.
    headers = {**_headers(token), "Content-Length": str(len(payload))}
    await raw("127.0.0.1", served.port, raw_post("/decode", headers, payload[:20]), tail=b"")
    status, _, doc = parse_raw(
        await raw(
            "127.0.0.1",
            served.port,
            raw_post("/decode", headers, payload[:20]),
            pause=2.0,
            tail=payload[20:],
        )
    )
    assert (status, doc["error"]) == (408, "request_timeout")
    assert not _revealed(doc)


async def test_namespaces_and_classifications_hold(
    served: Served, http: aiohttp.ClientSession
) -> None:
    engineer = served.token(**ENGINEER)
    phi = await _sealed(served.shield, "clinic-a")
    dev = await _sealed(served.shield, "dev-team")
    for namespace, payload in [
        ("clinic-a", phi),  # phi: not for engineers
        ("dev-other", dev),  # bound to another namespace
        ("undefined", dev),  # the UI's "no namespace"
        ("dev-*", dev),  # a glob is not a namespace
        ("", dev),
    ]:
        resp = await http.post(
            "/decode", json=body_of(payload), headers=_headers(engineer, namespace)
        )
        doc = await _check(served, resp)
        assert not _revealed(doc), namespace
    # Through the path instead of the header: the same rules.
    resp = await http.post(
        "/clinic-a/decode",
        json=body_of(phi),
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {engineer}"},
    )
    assert not _revealed(await _check(served, resp))


async def test_protocol_edges_are_json(served: Served, http: aiohttp.ClientSession) -> None:
    for method, path, expected in [
        ("GET", "/decode", 405),
        ("PUT", "/encode", 405),
        ("POST", "/download", 404),
        ("GET", "/nope", 404),
        ("DELETE", "/", 404),
    ]:
        resp = await http.request(method, path, headers={"Origin": ORIGIN})
        await _check(served, resp)
        assert resp.status == expected
    resp = await http.options("/decode", headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_tampered_envelopes_never_decode(served: Served, http: aiohttp.ClientSession) -> None:
    enc = await _sealed(served.shield, "dev-team")
    header_end = parse(enc.data)[1]
    variants = []
    for pos in (0, 2, 5, 9, 12, header_end - 13, header_end - 1, header_end, len(enc.data) - 1):
        data = bytearray(enc.data)
        data[pos] ^= 0x01
        variants.append(Payload(metadata=dict(enc.metadata), data=bytes(data)))
    variants.append(Payload(metadata=dict(enc.metadata), data=enc.data[: header_end + 3]))
    variants.append(
        Payload(metadata={**enc.metadata, "encryption-key-id": b"local:nope"}, data=enc.data)
    )
    variants.append(
        Payload(metadata={**enc.metadata, "encryption-key-id": b"\xff\xfe"}, data=enc.data)
    )
    resp = await http.post(
        "/decode", json=body_of(*variants), headers=_headers(served.token(**ENGINEER))
    )
    doc = await _check(served, resp)
    assert resp.status == 200
    assert len(doc["payloads"]) == len(variants)
    assert not _revealed(doc)


async def test_amplification_and_kms_floods_are_bounded(
    served: Served, http: aiohttp.ClientSession
) -> None:
    token = served.token(sub="flooder", **ENGINEER)
    bomb = await _sealed(served.shield, "dev-team", b'"' + b"a" * (3 << 20) + b'"')
    resp = await http.post("/decode", json=body_of(*[bomb] * 100), headers=_headers(token))
    doc = await _check(served, resp)
    assert resp.status == 200
    assert resp.content_length is not None
    assert resp.content_length < 24 << 20  # 16 MiB decoded at most, as base64
    assert sum(base64.b64decode(p["data"]) != bomb.data for p in doc["payloads"]) == 5
    before = await _kms_decrypt_calls(http)
    forged = [_forged(bomb) for _ in range(200)]
    for _ in range(3):
        resp = await http.post("/decode", json=body_of(*forged), headers=_headers(token))
        await _check(served, resp)
    # 32 per request, 60 per caller's burst (plus whatever refilled meanwhile).
    assert await _kms_decrypt_calls(http) - before <= 64


async def _kms_decrypt_calls(http: aiohttp.ClientSession) -> float:
    text = await (await http.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith("kms_calls_total{") and 'kind="kms_decrypt_calls"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_zz_no_token_in_logs_and_the_audit_trail_holds(served: Served, tmp_path: Path) -> None:
    """Runs last (module order): stop the server, then attack its audit file."""
    assert served.statuses, "the cases above ran"
    assert all(s < 500 or s == 503 for s in served.statuses)
    assert served.stop() == 0
    logs = served.log.read_text(errors="replace")
    audit = served.audit.read_text()
    for token in TOKEN_MARKERS:
        for part in {token, *[p for p in token.split(".") if len(p) > 16]}:
            assert part not in logs
            assert part not in audit
    assert SECRET.decode() not in logs + audit

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return _cli("audit", "verify", "--public-key", str(served.public_key), str(path))

    intact = verify(served.audit)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    lines = served.audit.read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    checkpoints = [i for i, r in enumerate(records) if r.get("type") == "checkpoint"]
    assert checkpoints, "checkpoints were signed"
    last_checkpoint = checkpoints[-1]

    def forged(name: str, edited: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("".join(edited))
        return path

    # Delete a record, then recompute the plain hash chain as the old attack did.
    from temporal_shield.server._audit import _digest, canonical_line

    rechained = []
    prev = "0" * 64
    for i, line in enumerate(lines):
        record = json.loads(line)
        if i == 3:
            continue
        if record.get("type") != "checkpoint":
            record["prev"] = prev
            record["hash"] = _digest(record)
        prev = record["hash"]
        rechained.append(canonical_line(record).decode())
    assert verify(forged("rechained.jsonl", rechained)).returncode == 1
    assert verify(forged("deleted.jsonl", lines[:3] + lines[4:])).returncode == 1
    swapped = [*lines]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert verify(forged("reordered.jsonl", swapped)).returncode == 1
    edited = [*lines]
    edited[2] = edited[2].replace('"decision":"', '"decision":"x', 1)
    assert verify(forged("edited.jsonl", edited)).returncode == 1
    # Truncation before the last checkpoint: the file alone cannot tell (its
    # last checkpoints went with it), the anchored copies can. Here the anchor
    # is the checkpoint lines serve wrote to stdout, as a log pipeline keeps them.
    anchored = tmp_path / "anchored.jsonl"
    anchored.write_text(
        "".join(
            line + "\n"
            for line in logs.splitlines()
            if line.startswith("{") and '"audit_checkpoint"' in line
        )
    )
    assert anchored.read_text(), "serve wrote its checkpoints to stdout"
    cut = forged("truncated.jsonl", lines[: last_checkpoint - 5])  # records it signed
    alone = verify(cut)
    assert alone.returncode == 0
    assert "after the last checkpoint" in alone.stdout  # the unprotected window, stated
    truncated = _cli(
        "audit",
        "verify",
        "--public-key",
        str(served.public_key),
        "--checkpoints",
        str(anchored),
        str(cut),
    )
    assert truncated.returncode == 1, truncated.stdout

    # A torn tail (a crash mid-write) is cut off at the next start, recorded,
    # and the trail verifies again.
    with served.audit.open("ab") as f:
        f.write(b'{"time":"2026-11-23T00:00:00Z","request_id":"torn')
    served.start()
    assert served.stop() == 0
    after = [json.loads(line) for line in served.audit.read_text().splitlines()]
    assert any(r.get("type") == "recovery" for r in after)
    again = verify(served.audit)
    assert again.returncode == 0, again.stdout + again.stderr
