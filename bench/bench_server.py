"""Codec-server load test: /decode with all security on, against two baselines.

Servers, each in its own process on 127.0.0.1, loaded from a separate process:

* ``shield``   — ``temporal-shield serve`` itself (the real command, one worker):
  JWT auth (ES256, static key), RBAC policy, hash-chained audit file,
  OpenTelemetry metrics, local keyring;
* ``sample``   — Temporal's sample codec server (samples-python ``encryption/
  codec_server.py``) as written there: aiohttp, the body parsed by protobuf
  ``json_format.Parse`` into ``temporal.api.common.v1.Payloads``, decoded by the
  sample's static-key AES-GCM codec, answered with ``json_format.MessageToJson``;
  no auth, no audit, no compression;
* ``echo``     — a bare aiohttp endpoint returning the body (the ceiling).

It also measures the shield server with authentication, RBAC and audit off
(``--insecure-dev``) to show what those cost.

For one-payload requests (the Web UI's pattern) and 20-payload requests it
prints peak requests/s (wrk, 32 connections) and the server's CPU time per
request, as medians of alternating runs, and, at half of the shield server's
peak, p50/p99 latency from an open-loop client (requests on a fixed schedule,
latency counted from the scheduled time, like wrk2). With ``taskset`` the
server gets CPU 0 and the load generator CPU 1. Then ``serve --workers 2``
against ``--workers 1`` (alternating runs), and the goal ratios.

    .venv/bin/python -m bench.bench_server [--duration 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import itertools
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from temporalio.api.common.v1 import Payload

from bench.bench_codec import json_like
from temporal_shield._devserver import free_port

ISSUER, AUDIENCE = "urn:bench-idp", "bench-codec"
PARTS_BYTES = 4096
"""Payload size of the compression line of "what the parts cost" (above the threshold)."""
SCALING_DRIFT = 1.2
"""How far (as a factor) the scaling section's one-worker figure may be from the same
server's other figures in the run before the scaling ratio is called not valid."""
POLICY = """
roles:
  reader: {namespaces: [default], operations: [decode], classifications: ["*"]}
bindings:
  - {role: reader, subjects: [bench-user]}
"""


def _body(payloads: list[Payload]) -> bytes:
    return json.dumps(
        {
            "payloads": [
                {
                    "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                    "data": base64.b64encode(p.data).decode(),
                }
                for p in payloads
            ]
        }
    ).encode()


# -- servers (run in child processes) ----------------------------------------------------


def serve(kind: str, port: int, workdir: Path) -> None:
    """The peers (the shield server is the real ``temporal-shield serve``, see :func:`start`)."""
    from aiohttp import web

    if kind == "sample":
        from google.protobuf import json_format
        from temporalio.api.common.v1 import Payloads

        from bench.bench_codec import StaticKeyCodec

        codec = StaticKeyCodec((workdir / "static.key").read_bytes())

        # As samples-python encryption/codec_server.py does it (CORS aside).
        async def decode(request: web.Request) -> web.Response:
            payloads = json_format.Parse(await request.read(), Payloads())
            payloads = Payloads(payloads=await codec.decode(payloads.payloads))
            return web.Response(
                text=json_format.MessageToJson(payloads), content_type="application/json"
            )

        app = web.Application(client_max_size=8 << 20)
        app.router.add_post("/decode", decode)
    else:

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read(), content_type="application/json")

        app = web.Application(client_max_size=8 << 20)
        app.router.add_post("/decode", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- setup and load -------------------------------------------------------------------------


def prepare(workdir: Path) -> dict[str, Any]:
    from bench.bench_codec import StaticKeyCodec
    from temporal_shield.codec import CompressionConfig, Keyring
    from temporal_shield.converter import KeysConfig, ShieldConfig, build_codec

    Keyring.new().save(workdir / "keyring.json")
    (workdir / "policy.yaml").write_text(POLICY)
    key = ec.generate_private_key(ec.SECP256R1())
    (workdir / "idp.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())
    token = jwt.encode(
        {"sub": "bench-user", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 7200},
        key,
        algorithm="ES256",
        headers={"kid": "idp"},
    )
    keys = KeysConfig(uri=f"local://{workdir / 'keyring.json'}")
    codec = build_codec(ShieldConfig(keys=keys))
    # The same payloads sealed by workers that run with compression off.
    uncompressed = build_codec(
        ShieldConfig(keys=keys, compression=CompressionConfig(enabled=False))
    )
    static = StaticKeyCodec()
    (workdir / "static.key").write_bytes(static.key)
    plain = Payload(metadata={"encoding": b"json/plain"}, data=json_like(512))
    # Above the compression threshold (1 KiB): what zstd costs the server's decode.
    large = Payload(metadata={"encoding": b"json/plain"}, data=json_like(PARTS_BYTES))

    async def encode() -> dict[tuple[str, int], bytes]:
        bodies = {}
        for n in (1, 20):
            bodies[("shield", n)] = _body(await codec.with_namespace("default").encode([plain] * n))
            bodies[("sample", n)] = _body(await static.encode([plain] * n))
            bodies[("echo", n)] = bodies[("shield", n)]
        bodies[("shield-zstd", 1)] = _body(await codec.with_namespace("default").encode([large]))
        bodies[("shield-raw", 1)] = _body(
            await uncompressed.with_namespace("default").encode([large])
        )
        return bodies

    return {"token": token, "bodies": asyncio.run(encode())}


def _pinning() -> tuple[list[str], list[str]]:
    """``taskset`` prefixes giving the server CPU 0 and the load generator CPU 1.

    On a shared 2-core machine this keeps the two from taking turns on one core,
    which otherwise moves the figures by 20% from run to run.
    """
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


SERVER_CPU, CLIENT_CPU = _pinning()


_STARTS = itertools.count()


def _shield_command(kind: str, port: int, workdir: Path, workers: int) -> list[str]:
    """``temporal-shield serve`` for a shield kind (settings from the environment)."""
    argv = [sys.executable, "-m", "temporal_shield", "serve", "--port", str(port)]
    argv += ["--workers", str(workers)]
    return argv + (["--insecure-dev"] if kind == "shield-insecure" else [])


def _shield_env(kind: str, workdir: Path) -> dict[str, str]:
    env = {**os.environ, "TEMPORAL_SHIELD_KEYS_URI": f"local://{workdir / 'keyring.json'}"}
    if kind == "shield-insecure":
        return env
    return {
        **env,
        "TEMPORAL_SHIELD_SERVER_POLICY_FILE": str(workdir / "policy.yaml"),
        "TEMPORAL_SHIELD_SERVER_AUTH_ISSUER": ISSUER,
        "TEMPORAL_SHIELD_SERVER_AUTH_AUDIENCE": AUDIENCE,
        "TEMPORAL_SHIELD_SERVER_AUTH_PUBLIC_KEY_FILES": str(workdir / "idp.pem"),
        # A fresh chain per start (with several workers: audit-N-w0.jsonl, ...).
        "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(workdir / f"audit-{next(_STARTS)}.jsonl"),
    }


def start(kind: str, workdir: Path, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server; returns it once every worker listens, and its /decode URL.

    One worker is pinned to CPU 0 (wrk has CPU 1); several share both cores
    with wrk, as they would have to on this machine.
    """
    port = free_port()
    log = workdir / f"server-{port}.log"
    if kind.startswith("shield"):
        command, env = _shield_command(kind, port, workdir, workers), _shield_env(kind, workdir)
        # Lines the serve command logs once each worker (or the only one) listens.
        ready = "listening on" if workers == 1 else ") ready"
    else:
        command = [sys.executable, "-m", "bench.bench_server", "--serve", kind, str(port)]
        command, env, ready = [*command, str(workdir)], dict(os.environ), ""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*(SERVER_CPU if workers == 1 else []), *command],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited:\n{log.read_text()}")
        if ready:
            up = log.read_text().count(ready) >= workers
        else:
            with socket.socket() as s:
                up = s.connect_ex(("127.0.0.1", port)) == 0
        if up:
            return proc, f"http://127.0.0.1:{port}/decode"
        time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    if proc.wait(90) != 0:
        raise RuntimeError(f"server exited with {proc.returncode} on SIGTERM")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (workers), from /proc."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wrk_peak(
    url: str,
    body: bytes,
    headers: dict[str, str],
    duration: int,
    workdir: Path,
    server: subprocess.Popen[bytes] | None = None,
) -> tuple[float, float, float]:
    """Peak requests/s, the server's CPU µs per request (0 if not given), wrk's CPU share."""
    script = workdir / "post.lua"
    (workdir / "body.json").write_bytes(body)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{workdir / "body.json"}", "rb"); wrk.body = f:read("*a"); f:close()',
        *[f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()],
    ]
    script.write_text("\n".join(lines) + "\n")
    cpu_before = _cpu_seconds(server.pid) if server else 0.0
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*CLIENT_CPU, "wrk", "-t1", "-c32", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = _cpu_seconds(server.pid) - cpu_before if server else 0.0
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk = wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime
    if "Non-2xx" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, cpu / requests * 1e6, wrk / duration


# -- open-loop latency ---------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending a fixed request."""

    def __init__(self, request: bytes, done: Any) -> None:
        self.request = request
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.scheduled = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.buffer = b""
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        if len(body) >= length:
            self.done(self, head.split(b" ", 2)[1] == b"200")


async def _open_loop(
    url: str, body: bytes, headers: dict[str, str], rate: float, seconds: float
) -> list[float]:
    """Latencies of requests sent on a fixed schedule, measured from their scheduled time.

    A request whose time comes while every connection is busy waits in a queue
    and that wait counts (no coordinated omission), as in wrk2.
    """
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    backlog: collections.deque[float] = collections.deque()
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    finished = loop.create_future()

    def done(conn: _Connection, ok: bool) -> None:
        nonlocal errors
        latencies.append(time.perf_counter() - conn.scheduled)
        errors += not ok
        if backlog:
            conn.send(backlog.popleft())
        else:
            idle.append(conn)
        if len(latencies) == total and not finished.done():
            finished.set_result(None)

    for _ in range(64):
        _, conn = await loop.create_connection(lambda: _Connection(request, done), host, int(port))
        idle.append(conn)
    begin = time.perf_counter()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - begin) * rate) + 1)
        while sent < due:
            scheduled = begin + sent / rate
            if idle:
                idle.pop().send(scheduled)
            else:
                backlog.append(scheduled)
            sent += 1
        await asyncio.sleep(max(0.0, begin + sent / rate - time.perf_counter()))
    await asyncio.wait_for(finished, 60)
    for conn in idle:
        assert conn.transport is not None
        conn.transport.close()
    if errors:
        raise RuntimeError(f"{errors} non-200 responses in the latency run")
    return sorted(latencies)


def latency_at(
    url: str, body: bytes, headers: dict[str, str], rate: float, seconds: float
) -> tuple[float, float]:
    """p50 and p99 latency in ms at ``rate`` requests/s, from a client on its own core."""
    out = subprocess.run(
        [
            *CLIENT_CPU,
            sys.executable,
            "-m",
            "bench.bench_server",
            "--latency",
            url,
            json.dumps(headers),
            str(rate),
            str(seconds),
        ],
        input=body,
        capture_output=True,
        check=True,
    ).stdout
    p50, p99 = json.loads(out)
    return float(p50), float(p99)


def _latency_main(url: str, headers: str, rate: float, seconds: float) -> None:
    lat = asyncio.run(_open_loop(url, sys.stdin.buffer.read(), json.loads(headers), rate, seconds))
    print(json.dumps([lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000]))


def _variant(kind: str) -> tuple[str, int]:
    """``shield-w2`` → (``shield``, 2 workers); other kinds run one process."""
    base, _, workers = kind.partition("-w")
    return (base, int(workers)) if workers.isdigit() else (kind, 1)


def _median_peaks(
    kinds: list[str], setup: dict[str, Any], n: int, duration: int, rounds: int, workdir: Path
) -> dict[str, tuple[float, float, float]]:
    """Median (requests/s, server CPU µs/request, wrk CPU share) per kind, alternating runs."""
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            base, workers = _variant(kind)
            proc, url = start(base, workdir, workers)
            try:
                body = setup["bodies"][("shield" if base == "shield-insecure" else base, n)]
                runs[kind].append(
                    wrk_peak(url, body, setup["headers"][base], duration, workdir, proc)
                )
            finally:
                stop(proc)
    return {
        k: (
            statistics.median(r for r, _, _ in v),
            statistics.median(c for _, c, _ in v),
            statistics.median(w for _, _, w in v),
        )
        for k, v in runs.items()
    }


def main(duration: int, rounds: int) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        setup = prepare(workdir)
        auth = {
            "Content-Type": "application/json",
            "X-Namespace": "default",
            "Authorization": f"Bearer {setup['token']}",
        }
        plain = {"Content-Type": "application/json", "X-Namespace": "default"}
        setup["headers"] = {
            "shield": auth,
            "shield-insecure": auth,
            "shield-raw": auth,
            "shield-zstd": auth,
            "sample": plain,
            "echo": plain,
        }
        pinned = "server on CPU 0, load on CPU 1" if SERVER_CPU else "unpinned"
        print(
            f"peak (wrk -t1 -c32 -d{duration}s, median of {rounds} alternating runs, {pinned});"
            " cpu = server CPU µs per request; ratios of requests/s (of cpu cost)\n"
        )
        print(
            f"{'payloads':>8} | {'shield':>15} | {'sample (a)':>15} | {'echo (b)':>15} |"
            f" {'vs (a)':>11} | {'vs (b)':>11} | p50 / p99 ms @ ½ peak | echo p50 / p99 ms"
        )
        table = {}
        for n in (1, 20):
            peaks = _median_peaks(["shield", "sample", "echo"], setup, n, duration, rounds, workdir)
            table[n] = peaks
            rate = peaks["shield"][0] / 2
            latency = {}
            for kind in ("shield", "echo"):
                proc, url = start(kind, workdir)
                try:
                    body = setup["bodies"][(kind, n)]
                    latency[kind] = latency_at(url, body, setup["headers"][kind], rate, duration)
                finally:
                    stop(proc)
            (rs, cs, _), (ra, ca, _), (rb, cb, _) = peaks["shield"], peaks["sample"], peaks["echo"]
            (p50, p99), (e50, e99) = latency["shield"], latency["echo"]
            print(
                f"{n:>8} | {rs:6.0f} {cs:5.1f}µs | {ra:6.0f} {ca:5.1f}µs | {rb:6.0f} {cb:5.1f}µs |"
                f" {rs / ra:4.2f} ({ca / cs:4.2f}) | {rs / rb:4.2f} ({cb / cs:4.2f}) |"
                f" {p50:5.2f} / {p99:6.2f} @ {rate:.0f}/s | {e50:5.2f} / {e99:6.2f}"
            )
        print("\nwhat the parts cost, one-payload requests (shield server unless noted):")
        parts = _median_peaks(
            ["shield", "shield-insecure", "shield-zstd", "shield-raw"],
            setup,
            1,
            duration,
            rounds,
            workdir,
        )
        kib = PARTS_BYTES // 1024
        for kind, label in (
            ("shield", "everything on (as above)"),
            ("shield-insecure", "authentication, RBAC and audit off (--insecure-dev)"),
            ("shield-zstd", f"{kib} KiB payloads, sealed with the defaults (zstd)"),
            ("shield-raw", f"{kib} KiB payloads, sealed with compression off"),
        ):
            rate, cpu, _ = parts[kind]
            print(f"  {label:60} {rate:7.0f} requests/s {cpu:6.1f} µs CPU per request")
        print(
            "\nscaling, serve --workers 1 (pinned to CPU 0) vs --workers 2 (both cores,"
            " shared with wrk on CPU 1), one-payload requests, alternating runs:"
        )
        scaling = _median_peaks(["shield", "shield-w2"], setup, 1, duration, rounds, workdir)
        for kind, label in (("shield", "1 worker"), ("shield-w2", "2 workers")):
            rate, cpu, wrk = scaling[kind]
            print(
                f"  {label:10} {rate:8.0f} requests/s {cpu:6.1f} µs server CPU per request,"
                f" wrk {wrk:4.0%} of a core"
            )
        one = table[1]
        # The same one-worker server measured three times in this run: if its
        # scaling figure is far off the other two, other load hit it and the
        # scaling ratio says more about the neighbours than about the workers.
        drift = scaling["shield"][0] / statistics.median((one["shield"][0], parts["shield"][0]))
        valid = 1 / SCALING_DRIFT <= drift <= SCALING_DRIFT
        if not valid:
            print(
                f"  (the 1-worker figure is {drift:.2f}x the same server's earlier in this run:"
                " other load moved it, so the scaling ratio is not valid; run again)"
            )
        goals: tuple[tuple[str, float, float | None], ...] = (
            ("2 workers ÷ 1 worker", scaling["shield-w2"][0] / scaling["shield"][0], 1.7),
            (
                "1 worker ÷ sample (json_format), 1 payload",
                one["shield"][0] / one["sample"][0],
                1.5,
            ),
            ("1 worker ÷ echo, 1 payload", one["shield"][0] / one["echo"][0], 0.5),
            (
                "1 worker ÷ sample (json_format), 20 payloads",
                table[20]["shield"][0] / table[20]["sample"][0],
                None,
            ),
        )
        print("\ngoal ratios (requests/s, this run):")
        for label, ratio, target in goals:
            if target is None:
                verdict = "reference"
            elif label.startswith("2 workers") and not valid:
                verdict = "NOT VALID: the 1-worker figure drifted, see above"
            else:
                verdict = f"target ≥ {target}: " + ("met" if ratio >= target else "MISSED")
            print(f"  {label:48} {ratio:5.2f}  ({verdict})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per figure")
    ap.add_argument("--serve", nargs=3, metavar=("KIND", "PORT", "WORKDIR"), help=argparse.SUPPRESS)
    ap.add_argument("--latency", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), Path(args.serve[2]))
    elif args.latency:
        url, headers, rate, seconds = args.latency
        _latency_main(url, headers, float(rate), float(seconds))
    else:
        main(args.duration, args.rounds)
