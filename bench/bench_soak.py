"""Soak and crash: minutes of mixed and hostile load on the real ``serve`` process.

Starts ``temporal-shield serve --config FILE`` as a user deploys it (JWT from a
static ES256 public key, RBAC policy, CORS, local keyring, hash-chained audit
file with Ed25519-signed checkpoints every 200 records) on 127.0.0.1, then
drives it from several asyncio clients at once:

* authorised ``/decode`` requests of 1 and 20 payloads, and 20-payload requests
  mixing payloads the caller may read with ``pci`` payloads it may not;
* unauthorised requests: no token, a token signed by another key, a namespace
  the caller has no role in, payloads bound to another namespace;
* amplification requests (two a second, plus a burst of 20 at once every 15 s):
  16 payloads of 3-5 MiB of one repeated byte, a few hundred bytes each on the
  wire, which the server must withhold past ``max_decoded_payload_bytes``
  (4 MiB), ``max_decoded_request_bytes`` (16 MiB) and
  ``max_decoded_bytes_in_flight`` (256 MiB);
* forged-payload floods from a second caller: 200 payloads with a valid-looking
  header and a random wrapped key, to spend KMS unwraps.

It samples the server's RSS every 0.5 s, sends it SIGKILL mid-load, restarts it
on the same config and audit file, waits for ``/readyz`` and carries on; at the
end it stops it with SIGTERM and runs ``temporal-shield audit verify``.

It prints what was served, RSS per server life, the KMS and budget counters
from ``/metrics``, and the figures that must be 0: plaintext to a caller not
allowed to read it, plaintext answers (or any ``/decode`` answer) without an
audit record, amplification answers over the decoded-bytes budgets, 5xx other
than the documented 503s. Exit status 1 if one is not 0 or verify fails.

    .venv/bin/python -m bench.bench_soak [--duration 180] [--kill-at SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from temporalio.api.common.v1 import Payload
from temporalio.converter import WorkflowSerializationContext

from bench.bench_codec import json_like
from bench.bench_server import AUDIENCE, ISSUER, _body
from temporal_shield._devserver import free_port
from temporal_shield.codec import Keyring
from temporal_shield.converter import build_codec, load_config
from tests.server.forge import forged_payload

ORIGIN = "http://127.0.0.1:8233"  # the Web UI's origin, allowed by CORS
USER, FLOODER = "soak-user", "soak-flooder"
# Both callers may read `internal` payloads in `default` only: `pci` payloads,
# other namespaces and payloads bound elsewhere must come back unchanged.
POLICY = f"""
roles:
  reader: {{namespaces: [default], operations: [decode], classifications: [internal]}}
bindings:
  - {{role: reader, subjects: [{USER}, {FLOODER}]}}
"""
MIB = 1 << 20
PAYLOAD_BUDGET, REQUEST_BUDGET = 4 * MIB, 16 * MIB  # the server's defaults
DOCUMENTED_503 = frozenset({"audit_unavailable", "kms_unavailable"})
SAMPLE_EVERY = 0.5


class _WirePayload(msgspec.Struct):
    metadata: dict[str, bytes] = {}
    data: bytes = b""


class _Wire(msgspec.Struct):
    payloads: list[_WirePayload]


_decode_wire = msgspec.json.Decoder(_Wire).decode


# -- what is sent and what may come back ---------------------------------------------------

READ, SEALED, BUDGETED = "read", "sealed", "budgeted"
"""Per payload: must come back decoded; must come back unchanged (the caller may
not read it, or nothing can decrypt it); may come back decoded within the budgets."""


@dataclass
class Kind:
    """One class of request: a fixed body and headers, and what each payload may become."""

    name: str
    bodies: list[bytes]
    headers: dict[str, str]
    sent: list[list[_WirePayload]]
    expect: list[str]
    plain: list[bytes]
    """Expected plaintext per position (for READ)."""
    status: int = 200
    turn: int = 0

    def next_body(self) -> tuple[bytes, list[_WirePayload]]:
        self.turn = (self.turn + 1) % len(self.bodies)
        return self.bodies[self.turn], self.sent[self.turn]


def _wire(payloads: list[Payload]) -> list[_WirePayload]:
    return [_WirePayload(dict(p.metadata), p.data) for p in payloads]


def _token(key: ec.EllipticCurvePrivateKey, subject: str, hours: int = 4) -> str:
    now = int(time.time())
    claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600 * hours}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "idp"})


def prepare(workdir: Path, port: int) -> tuple[Path, Path | None, dict[str, Kind]]:
    """Keys, policy and config file; the request kinds. Returns (config, verify key, kinds)."""
    Keyring.new().save(workdir / "keyring.json")
    (workdir / "policy.yaml").write_text(POLICY)
    idp = ec.generate_private_key(ec.SECP256R1())
    (workdir / "idp.pem").write_bytes(
        idp.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    audit_dir = workdir / "audit"
    audit_dir.mkdir()
    public_key: Path | None = None
    signing = ""
    help_text = subprocess.run(
        [sys.executable, "-m", "temporal_shield", "audit", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if "keygen" in help_text:
        # Outside the audit log's folder, as keygen requires: whoever can write
        # the log must not be able to read the key that signs its checkpoints.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "temporal_shield",
                "audit",
                "keygen",
                "--out",
                str(workdir / "sig"),
            ],
            capture_output=True,
            check=True,
        )
        public_key = workdir / "sig" / "audit-signing.pub"
        signing = f"""signing_key = {json.dumps("ed25519://" + str(workdir / "sig" / "audit-signing.key"))}
checkpoint_every = 200
"""
    config = workdir / "shield.toml"
    config.write_text(
        f"""[keys]
uri = {json.dumps(f"local://{workdir / 'keyring.json'}")}

[classification]
default = "internal"
[classification.workflow_ids]
"invoice-*" = "pci"

[server]
host = "127.0.0.1"
port = {port}
cors_origins = [{json.dumps(ORIGIN)}]
policy_file = {json.dumps(str(workdir / "policy.yaml"))}

[server.auth]
issuer = {json.dumps(ISSUER)}
audience = [{json.dumps(AUDIENCE)}]
algorithms = ["ES256"]
public_key_files = [{json.dumps(str(workdir / "idp.pem"))}]

[server.audit]
file = {json.dumps(str(audit_dir / "audit.jsonl"))}
replica_id = "soak"
{signing}"""
    )
    return config, public_key, asyncio.run(_kinds(config, idp))


async def _kinds(config: Path, idp: ec.EllipticCurvePrivateKey) -> dict[str, Kind]:
    # Sealed as a worker sharing the server's config file would seal them.
    codec = build_codec(load_config(config, env={}, other_sections=["server"]))
    default = codec.with_namespace("default")
    pci = codec.with_context(
        WorkflowSerializationContext(namespace="default", workflow_id="invoice-7")
    )
    elsewhere = codec.with_namespace("team-b")

    def plain(i: int, tag: bytes = b"internal") -> Payload:
        data = b'{"soak":"' + tag + b"-%d" % i + b'","rows":' + json_like(512, seed=i) + b"}"
        return Payload(metadata={"encoding": b"json/plain"}, data=data)

    one, twenty = [plain(0)], [plain(i) for i in range(1, 21)]
    secret = [plain(i, b"pci") for i in range(10)]
    sealed_one = await default.encode(one)
    sealed_twenty = await default.encode(twenty)
    readable, secret_sealed = await default.encode(twenty[:10]), await pci.encode(secret)
    mixed = [p for pair in zip(readable, secret_sealed, strict=True) for p in pair]
    # Megabytes of one byte compress to a few hundred bytes: the amplification vector.
    bombs = [Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"b" * (5 * MIB) + b'"')]
    bombs += [
        Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"a" * (3 * MIB) + b'"')
    ] * 15
    sealed_bombs = await default.encode(bombs)
    assert all(len(p.data) < 2048 for p in sealed_bombs)
    bound_elsewhere = await elsewhere.encode(twenty)
    flood = [[forged_payload(sealed_one[0]) for _ in range(200)] for _ in range(50)]

    token, flooder = _token(idp, USER), _token(idp, FLOODER)
    # Same subject, issuer and kid, signed by a key the server does not know.
    forged_token = _token(ec.generate_private_key(ec.SECP256R1()), USER)

    def headers(bearer: str | None, namespace: str = "default") -> dict[str, str]:
        out = {"Content-Type": "application/json", "X-Namespace": namespace, "Origin": ORIGIN}
        if bearer:
            out["Authorization"] = f"Bearer {bearer}"
        return out

    def kind(
        name: str, sealed: list[list[Payload]], hdrs: dict[str, str], expect: list[str], **kw: Any
    ) -> Kind:
        return Kind(
            name, [_body(s) for s in sealed], hdrs, [_wire(s) for s in sealed], expect, **kw
        )

    kinds = [
        kind("authorised, 1 payload", [sealed_one], headers(token), [READ], plain=[one[0].data]),
        kind(
            "authorised, 20 payloads",
            [sealed_twenty],
            headers(token),
            [READ] * 20,
            plain=[p.data for p in twenty],
        ),
        kind(
            "10 readable + 10 pci (not permitted)",
            [mixed],
            headers(token),
            [READ, SEALED] * 10,
            plain=[x for p in twenty[:10] for x in (p.data, b"")],
        ),
        kind("no token", [sealed_one], headers(None), [SEALED], plain=[], status=401),
        kind(
            "token from another key",
            [sealed_one],
            headers(forged_token),
            [SEALED],
            plain=[],
            status=401,
        ),
        kind(
            "namespace without a role",
            [sealed_twenty],
            headers(token, "team-b"),
            [SEALED] * 20,
            plain=[],
        ),
        kind(
            "payloads bound to another namespace",
            [bound_elsewhere],
            headers(token),
            [SEALED] * 20,
            plain=[],
        ),
        kind(
            "amplification (16 x 3-5 MiB)",
            [sealed_bombs],
            headers(token),
            [BUDGETED] * 16,
            plain=[],
        ),
        kind("forged-key flood (200 payloads)", flood, headers(flooder), [SEALED] * 200, plain=[]),
    ]
    return {k.name: k for k in kinds}


# Weights of the steady mix each ordinary client draws from; amplification and
# floods have clients of their own so that their rate does not depend on the mix.
MIX = {
    "authorised, 1 payload": 50,
    "authorised, 20 payloads": 25,
    "10 readable + 10 pci (not permitted)": 8,
    "no token": 4,
    "token from another key": 4,
    "namespace without a role": 5,
    "payloads bound to another namespace": 4,
}


# -- the server -----------------------------------------------------------------------------


@dataclass
class Life:
    """One server process: its RSS samples and its last /metrics scrape."""

    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    ready: float = 0.0
    rss: list[tuple[float, float]] = field(default_factory=list)
    metrics: str = ""
    ended: float = 0.0
    exit: str = ""


def start_server(config: Path, workdir: Path, index: int) -> Life:
    log = (workdir / f"server-{index}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "temporal_shield", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        # Only the config file: no TEMPORAL_SHIELD_* from the caller's shell.
        env={k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_SHIELD_")},
    )
    return Life(proc, log, time.monotonic())


async def wait_ready(session: aiohttp.ClientSession, base: str, life: Life) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if life.proc.poll() is not None:
            raise RuntimeError(f"server exited with {life.proc.returncode} before /readyz")
        try:
            async with session.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    life.ready = time.monotonic()
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("server not ready within 60 s")


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples with these labels."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def label_values(text: str, name: str, label: str) -> list[str]:
    return sorted(set(re.findall(rf'^{name}{{[^}}]*{label}="([^"]+)"', text, re.M)))


# -- the load -------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    undocumented_5xx: list[str] = field(default_factory=list)
    conn_errors: list[tuple[float, str]] = field(default_factory=list)
    """(time, exception class) of requests that got no HTTP answer."""
    leaks: list[str] = field(default_factory=list)
    over_budget: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)
    not_decoded: int = 0
    withheld_amplification: int = 0
    max_decoded_request: int = 0
    without_cors: int = 0
    plaintext_ids: list[tuple[str, int]] = field(default_factory=list)
    answered_ids: list[tuple[str, int, str, int]] = field(default_factory=list)
    """(request id, life, kind, status) of every /decode answer."""


class Soak:
    def __init__(self, base: str, kinds: dict[str, Kind]) -> None:
        self.base = base
        self.kinds = kinds
        self.tally = Tally()
        self.life = 0
        self.stopping = False
        self.stopped = asyncio.Event()

    async def send(self, session: aiohttp.ClientSession, kind: Kind) -> None:
        body, sent = kind.next_body()
        life = self.life
        try:
            async with session.post(f"{self.base}/decode", data=body, headers=kind.headers) as resp:
                raw = await resp.read()
                status = resp.status
                rid = resp.headers.get("X-Request-Id", "")
                cors = resp.headers.get("Access-Control-Allow-Origin") == ORIGIN
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Expected only around the kill; counted with its time to show that.
            self.tally.conn_errors.append((time.monotonic(), type(exc).__name__))
            if not self.stopping:
                await asyncio.sleep(
                    0.02 if isinstance(exc, aiohttp.ServerDisconnectedError) else 0.1
                )
            return
        # A process that has answered belongs to the life current when it answered.
        self.check(kind, sent, status, raw, rid, cors, max(life, self.life))

    def check(
        self,
        kind: Kind,
        sent: list[_WirePayload],
        status: int,
        raw: bytes,
        rid: str,
        cors: bool,
        life: int,
    ) -> None:
        t = self.tally
        t.statuses[(kind.name, status)] += 1
        t.answered_ids.append((rid, life, kind.name, status))
        t.without_cors += not cors
        if status >= 500:
            code = ""
            with contextlib.suppress(ValueError, AttributeError):
                code = str(json.loads(raw).get("error", ""))
            if status != 503 or code not in DOCUMENTED_503:
                t.undocumented_5xx.append(
                    f"{kind.name}: {status} {raw[:200]!r} (X-Request-Id {rid})"
                )
        if status != 200:
            if b'"payloads"' in raw:
                t.leaks.append(f"{kind.name}: {status} answer carries payloads ({rid})")
            return
        try:
            out = _decode_wire(raw).payloads
        except msgspec.ValidationError as exc:
            t.wrong_shape.append(f"{kind.name}: {exc} ({rid})")
            return
        if len(out) != len(sent):
            t.wrong_shape.append(f"{kind.name}: {len(out)} payloads for {len(sent)} ({rid})")
            return
        decoded_bytes = 0
        any_plain = False
        for i, (got, was) in enumerate(zip(out, sent, strict=True)):
            unchanged = got.data == was.data and got.metadata == was.metadata
            any_plain |= not unchanged
            rule = kind.expect[i]
            if rule == SEALED and not unchanged:
                t.leaks.append(f"{kind.name}: payload {i} came back changed ({rid})")
            elif rule == READ and unchanged:
                t.not_decoded += 1
            elif rule == READ and got.data != kind.plain[i]:
                t.wrong_shape.append(f"{kind.name}: payload {i} decoded to other bytes ({rid})")
            elif rule == BUDGETED:
                if unchanged:
                    t.withheld_amplification += 1
                    continue
                decoded_bytes += len(got.data)
                if len(got.data) > PAYLOAD_BUDGET:
                    t.over_budget.append(f"payload {i}: {len(got.data)} bytes ({rid})")
        if decoded_bytes > REQUEST_BUDGET:
            t.over_budget.append(f"request: {decoded_bytes} decoded bytes ({rid})")
        t.max_decoded_request = max(t.max_decoded_request, decoded_bytes)
        if any_plain:
            t.plaintext_ids.append((rid, life))

    async def client(
        self, session: aiohttp.ClientSession, pick: Callable[[], Kind], pace: float = 0.0
    ) -> None:
        """Requests back to back, or one every ``pace`` seconds."""
        while not self.stopping:
            began = time.monotonic()
            await self.send(session, pick())
            if pace:
                await asyncio.sleep(max(0.0, began + pace - time.monotonic()))

    async def bursts(self, session: aiohttp.ClientSession, size: int, every: float) -> None:
        # Enough amplification requests at once to pass the in-flight budget
        # (20 x 15 MiB decodable > 256 MiB): the worst moment for memory.
        kind = self.kinds["amplification (16 x 3-5 MiB)"]
        while not self.stopping:
            # Woken by the stop, so that the run does not idle out a whole period.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), every)
            if not self.stopping:
                await asyncio.gather(*(self.send(session, kind) for _ in range(size)))


async def sample(soak: Soak, lives: list[Life], session: aiohttp.ClientSession) -> None:
    """RSS of the current server every 0.5 s; /metrics every 2 s."""
    turn = 0
    while not soak.stopping:
        life = lives[-1]
        value = rss_mib(life.proc.pid) if life.proc.poll() is None else None
        if value is not None and life.ready:
            life.rss.append((time.monotonic(), value))
        turn += 1
        if turn % 4 == 0 and life.ready and not life.ended:
            await scrape(session, soak.base, life)
        await asyncio.sleep(SAMPLE_EVERY)


async def scrape(session: aiohttp.ClientSession, base: str, life: Life) -> None:
    try:
        async with session.get(f"{base}/metrics") as resp:
            if resp.status == 200:
                life.metrics = await resp.text()
    except aiohttp.ClientError:
        pass


async def run(
    config: Path,
    workdir: Path,
    port: int,
    kinds: dict[str, Kind],
    duration: float,
    kill_at: float,
    clients: int,
) -> tuple[Soak, list[Life], float]:
    base = f"http://127.0.0.1:{port}"
    soak = Soak(base, kinds)
    lives = [start_server(config, workdir, 0)]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await wait_ready(session, base, lives[0])
        names, weights = list(MIX), list(MIX.values())
        rng = random.Random(1)

        def mixed() -> Kind:
            return kinds[rng.choices(names, weights)[0]]

        amplification = kinds["amplification (16 x 3-5 MiB)"]
        flood = kinds["forged-key flood (200 payloads)"]
        began = time.monotonic()
        tasks = [asyncio.create_task(soak.client(session, mixed)) for _ in range(clients)]
        # Paced: back to back, 20 MiB answers would take most of the 2 cores
        # (server and this client), and the steady mix would hardly run.
        tasks.append(asyncio.create_task(soak.client(session, lambda: amplification, 0.5)))
        tasks.append(asyncio.create_task(soak.client(session, lambda: flood)))
        tasks.append(asyncio.create_task(soak.bursts(session, 20, 15.0)))
        sampler = asyncio.create_task(sample(soak, lives, session))

        await asyncio.sleep(max(0.0, began + kill_at - time.monotonic()))
        old = lives[-1]
        await scrape(session, base, old)  # this life's counters, a moment before it dies
        old.proc.send_signal(signal.SIGKILL)
        old.ended = time.monotonic()
        old.exit = f"SIGKILL (exit {old.proc.wait()})"
        # Same config, same port, same audit file: the chain must continue.
        lives.append(start_server(config, workdir, 1))
        soak.life = 1
        await wait_ready(session, base, lives[-1])

        await asyncio.sleep(max(0.0, began + duration - time.monotonic()))
        soak.stopping = True
        soak.stopped.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - began
        # A client that died of a bug would have quietly thinned the load.
        crashed = [r for r in results if isinstance(r, BaseException)]
        if crashed:
            raise crashed[0]
        await scrape(session, base, lives[-1])
        sampler.cancel()
    last = lives[-1]
    last.proc.send_signal(signal.SIGTERM)
    last.ended = time.monotonic()
    last.exit = f"SIGTERM (exit {last.proc.wait(30)})"
    for life in lives:
        life.log.close()
    return soak, lives, elapsed


# -- the report -----------------------------------------------------------------------------


def audit_ids(path: Path) -> tuple[set[str], collections.Counter[str]]:
    """Request ids with a record, and how many records of each type the file holds."""
    ids: set[str] = set()
    types: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            types["unparsable line"] += 1
            continue
        types[str(record.get("type", "request"))] += 1
        if "request_id" in record:
            ids.add(str(record["request_id"]))
    return ids, types


def report(
    soak: Soak,
    lives: list[Life],
    elapsed: float,
    workdir: Path,
    public_key: Path | None,
    kill_at: float,
) -> int:
    t = soak.tally
    failures: list[str] = []
    answered = sum(t.statuses.values())
    print(f"duration {elapsed:.1f} s, server SIGKILLed at {kill_at:.0f} s and restarted")
    print(f"HTTP answers {answered} ({answered / elapsed:.0f} requests/s)\n")

    statuses = sorted({s for _, s in t.statuses})
    width = max(len(k) for k in soak.kinds)
    print(f"{'request kind':{width}} | " + " | ".join(f"{s:>7}" for s in statuses))
    for name in soak.kinds:
        print(f"{name:{width}} | " + " | ".join(f"{t.statuses[(name, s)]:>7}" for s in statuses))

    killed, restarted = lives[0].ended, lives[1].ready
    near = collections.Counter(
        name for at, name in t.conn_errors if killed - 1 <= at <= restarted + 2
    )
    elsewhere = len(t.conn_errors) - sum(near.values())
    print(
        f"\nno HTTP answer (connection errors): {len(t.conn_errors)}; from 1 s before the kill"
        f" to 2 s after ready again (down {restarted - killed:.2f} s): "
        + ", ".join(f"{n} {name}" for name, n in near.most_common())
        + f"; elsewhere: {elsewhere}"
    )

    print("\nserver life | answers | RSS start / max / end MiB | ended by")
    for i, life in enumerate(lives):
        served = sum(1 for _, lf, _, _ in t.answered_ids if lf == i)
        rss = [v for _, v in life.rss] or [0.0]
        print(
            f"{i:>11} | {served:>7} | {rss[0]:6.1f} / {max(rss):6.1f} / {rss[-1]:6.1f} | {life.exit}"
        )
    for i, life in enumerate(lives):
        # The largest sample of each 10 s window: growth would show as a rising line.
        windows: dict[int, float] = {}
        for at, v in life.rss:
            w = int((at - life.ready) // 10)
            windows[w] = max(windows.get(w, 0.0), v)
        print(f"  life {i}, max RSS per 10 s: " + " ".join(f"{v:.0f}" for v in windows.values()))

    print(
        "\n/metrics, last scrape of each life          "
        + "  ".join(f"life {i:>2}" for i in range(len(lives)))
    )
    rows: list[tuple[str, str, dict[str, str]]] = [
        (f"kms_calls_total {kind}", "kms_calls_total", {"kind": kind})
        for kind in ("kms_generate_calls", "kms_decrypt_calls", "kms_errors")
    ]
    limits = sorted(
        {
            v
            for life in lives
            for v in label_values(life.metrics, "codec_limit_refusals_total", "limit")
        }
    )
    rows += [
        (f"limit refusals {limit}", "codec_limit_refusals_total", {"limit": limit})
        for limit in limits
    ]
    rows.append(
        ("data_key_cache failed_cache_hits", "data_key_cache_total", {"kind": "failed_cache_hits"})
    )
    for label, name, labels in rows:
        print(
            f"  {label:42}"
            + "  ".join(f"{metric(life.metrics, name, **labels):>7.0f}" for life in lives)
        )

    audit = workdir / "audit" / "audit.jsonl"
    recorded, types = audit_ids(audit)
    missing_plain = [(rid, lf) for rid, lf in t.plaintext_ids if rid not in recorded]
    missing_any = [(rid, lf, k, s) for rid, lf, k, s in t.answered_ids if rid not in recorded]
    verify_cmd = [sys.executable, "-m", "temporal_shield", "audit", "verify"]
    if public_key is not None:
        verify_cmd += ["--public-key", str(public_key)]
    verify = subprocess.run([*verify_cmd, str(audit)], capture_output=True, text=True, check=False)
    out_line = (verify.stdout + verify.stderr).strip().splitlines()
    print(
        f"\naudit file: {sum(types.values())} lines ("
        + ", ".join(f"{n} {kind}" for kind, n in sorted(types.items()))
        + "); request records whose answer never arrived (cut by the kill or the stop): "
        + str(len(recorded - {rid for rid, _, _, _ in t.answered_ids}))
    )
    print(
        f"audit verify{' --public-key' if public_key else ''}: exit {verify.returncode}: "
        f"{out_line[-1] if out_line else ''}"
    )
    print(
        f"plaintext answers: {len(t.plaintext_ids)} "
        f"({sum(lf == 0 for _, lf in t.plaintext_ids)} before the kill); "
        f"authorised payloads not decoded {t.not_decoded}; amplification payloads withheld "
        f"{t.withheld_amplification}, largest decoded answer {t.max_decoded_request / MIB:.1f} MiB"
    )
    print(f"answers without CORS headers: {t.without_cors}")

    print("\nmust be 0:")
    musts: list[tuple[str, list[Any]]] = [
        ("plaintext to a caller not allowed to read it", t.leaks),
        ("plaintext answers without an audit record", missing_plain),
        ("  of which received before the kill", [m for m in missing_plain if m[1] == 0]),
        ("/decode answers (any status) without an audit record", missing_any),
        ("amplification answers over the decoded-bytes budgets", t.over_budget),
        ("5xx other than the documented 503s", t.undocumented_5xx),
        ("answers of the wrong shape or plaintext", t.wrong_shape),
    ]
    for label, items in musts:
        print(f"  {label:55} {len(items)}")
        for item in items[:5]:
            print(f"      {item}")
        if items:
            failures.append(label)
    if verify.returncode != 0:
        failures.append("audit verify")
        print(verify.stdout + verify.stderr)

    for i in range(len(lives)):
        text = (workdir / f"server-{i}.log").read_text(errors="replace").splitlines()
        bad = [line for line in text if re.search(r"Traceback|ERROR|CRITICAL", line)]
        print(f"server log {i}: {len(text)} lines, {len(bad)} with Traceback/ERROR/CRITICAL")
        for line in bad[:5]:
            print(f"      {line[:300]}")
    print("\nresult: " + ("FAIL (" + ", ".join(failures) + ")" if failures else "ok"))
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    ap.add_argument(
        "--kill-at", type=float, help="SIGKILL the server after this many seconds (default 60%%)"
    )
    ap.add_argument("--clients", type=int, default=6, help="concurrent clients of the steady mix")
    args = ap.parse_args()
    kill_at = args.kill_at if args.kill_at is not None else args.duration * 0.6
    if not 0 < kill_at < args.duration:
        ap.error("--kill-at must fall within --duration")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        config, public_key, kinds = prepare(workdir, port)
        print(
            f"temporal-shield serve --config {config} on port {port}, {args.clients} + 2 clients, bursts of 20"
        )
        soak, lives, elapsed = asyncio.run(
            run(config, workdir, port, kinds, args.duration, kill_at, args.clients)
        )
        return report(soak, lives, elapsed, workdir, public_key, kill_at)


if __name__ == "__main__":
    sys.exit(main())
