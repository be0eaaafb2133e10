"""Codec-server load test: /decode with all security on, against two baselines.

Servers, each in its own process on 127.0.0.1, loaded from a separate process:

* ``shield``   — ``temporal-shield``'s server: JWT auth (ES256, static key),
  RBAC policy, hash-chained audit file, OpenTelemetry metrics, local keyring;
* ``sample``   — a minimal aiohttp server decoding with a static AES-GCM key and
  no auth (the shape of Temporal's sample codec server, written here);
* ``echo``     — a bare aiohttp endpoint returning the body (the ceiling).

It also measures the shield server with authentication, RBAC and audit off
(``--insecure-dev``) to show what those cost.

For one-payload requests (the Web UI's pattern) and 20-payload requests it
prints peak requests/s (wrk, 32 connections) and, at half of the shield
server's peak, p50/p99 latency from an open-loop Python client. Then the peak
with 1 and 2 server processes (SO_REUSEPORT). The machine has 2 cores shared by
server and load generator, so scaling figures are a floor.

    .venv/bin/python -m bench.bench_server [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload

from bench.bench_codec import json_like

ISSUER, AUDIENCE = "urn:bench-idp", "bench-codec"
POLICY = """
roles:
  reader: {namespaces: [default], operations: [decode], classifications: ["*"]}
bindings:
  - {role: reader, subjects: [bench-user]}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    from aiohttp import web

    if kind in ("shield", "shield-insecure"):
        from temporal_shield.converter import KeysConfig, ShieldConfig
        from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, create_app

        secure = ServerConfig(
            host="127.0.0.1",
            port=port,
            policy_file=str(workdir / "policy.yaml"),
            auth=AuthConfig(
                issuer=ISSUER,
                audience=(AUDIENCE,),
                algorithms=("ES256",),
                public_key_files=(str(workdir / "idp.pem"),),
            ),
            audit=AuditConfig(file=str(workdir / f"audit-{os.getpid()}.jsonl")),
        )
        # The reference without authentication, RBAC and audit: what they cost.
        insecure = ServerConfig(host="127.0.0.1", port=port, insecure_dev=True)
        app = create_app(
            secure if kind == "shield" else insecure,
            ShieldConfig(keys=KeysConfig(uri=f"local://{workdir / 'keyring.json'}")),
        )
    elif kind == "sample":
        aead = AESGCM((workdir / "static.key").read_bytes())

        async def decode(request: web.Request) -> web.Response:
            doc = await request.json()
            out = []
            for item in doc["payloads"]:
                meta = {k: base64.b64decode(v) for k, v in item.get("metadata", {}).items()}
                data = base64.b64decode(item.get("data", ""))
                if meta.get("encoding") == b"binary/encrypted":
                    inner = Payload.FromString(aead.decrypt(data[:12], data[12:], None))
                    meta, data = dict(inner.metadata), inner.data
                out.append(
                    {
                        "metadata": {k: base64.b64encode(v).decode() for k, v in meta.items()},
                        "data": base64.b64encode(data).decode(),
                    }
                )
            return web.json_response({"payloads": out})

        app = web.Application(client_max_size=8 << 20)
        app.router.add_post("/decode", decode)
    else:

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read(), content_type="application/json")

        app = web.Application(client_max_size=8 << 20)
        app.router.add_post("/decode", echo)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, print=None, access_log=None)


# -- setup and load -------------------------------------------------------------------------


def prepare(workdir: Path) -> dict[str, Any]:
    from bench.bench_codec import StaticKeyCodec
    from temporal_shield.codec import Keyring
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
    codec = build_codec(ShieldConfig(keys=KeysConfig(uri=f"local://{workdir / 'keyring.json'}")))
    static = StaticKeyCodec()
    (workdir / "static.key").write_bytes(static.key)
    plain = Payload(metadata={"encoding": b"json/plain"}, data=json_like(512))

    async def encode() -> dict[tuple[str, int], bytes]:
        bodies = {}
        for n in (1, 20):
            bodies[("shield", n)] = _body(await codec.with_namespace("default").encode([plain] * n))
            bodies[("sample", n)] = _body(await static.encode([plain] * n))
            bodies[("echo", n)] = bodies[("shield", n)]
        return bodies

    return {"token": token, "bodies": asyncio.run(encode())}


def start(
    kind: str, workdir: Path, processes: int = 1
) -> tuple[list[subprocess.Popen[bytes]], str]:
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.bench_server", "--serve", kind, str(port), str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5 if processes > 1 else 0.1)  # let every process bind
                return procs, f"http://127.0.0.1:{port}/decode"
        time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)


def wrk_peak(url: str, body: bytes, headers: dict[str, str], duration: int, workdir: Path) -> float:
    script = workdir / "post.lua"
    (workdir / "body.json").write_bytes(body)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{workdir / "body.json"}", "rb"); wrk.body = f:read("*a"); f:close()',
        *[f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()],
    ]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


async def _open_loop(
    url: str, body: bytes, headers: dict[str, str], rate: float, seconds: float
) -> list[float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200
            latencies.append(time.perf_counter() - t0)

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return sorted(latencies)


def latency_at(
    url: str, body: bytes, headers: dict[str, str], rate: float, seconds: float
) -> tuple[float, float]:
    lat = asyncio.run(_open_loop(url, body, headers, rate, seconds))
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def main(duration: int) -> None:
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
        print(f"peak requests/s (wrk -c32 -d{duration}s), one server process\n")
        print(
            f"{'payloads':>8} | {'shield':>8} | {'sample (a)':>10} | {'echo (b)':>9} | {'vs (a)':>6} | {'vs (b)':>6} | {'p50 ms':>6} {'p99 ms':>6} @ rps"
            " | echo p50/p99 ms at that rate (client floor)"
        )
        for n in (1, 20):
            peaks = {}
            latency = {}
            for kind in ("shield", "sample", "echo"):
                procs, url = start(kind, workdir)
                try:
                    headers = auth if kind == "shield" else plain
                    body = setup["bodies"][(kind, n)]
                    peaks[kind] = wrk_peak(url, body, headers, duration, workdir)
                    if kind in ("shield", "echo"):
                        rate = peaks["shield"] / 2
                        latency[kind] = latency_at(url, body, headers, rate, min(duration, 8))
                finally:
                    stop(procs)
            (p50, p99), (e50, e99) = latency["shield"], latency["echo"]
            print(
                f"{n:>8} | {peaks['shield']:8.0f} | {peaks['sample']:10.0f} | {peaks['echo']:9.0f} | "
                f"{peaks['shield'] / peaks['sample']:6.2f} | {peaks['shield'] / peaks['echo']:6.2f} | "
                f"{p50:6.2f} {p99:6.2f} @ {rate:.0f} | {e50:.2f}/{e99:.2f}"
            )
        procs, url = start("shield-insecure", workdir)
        try:
            bare = wrk_peak(url, setup["bodies"][("shield", 1)], auth, duration, workdir)
        finally:
            stop(procs)
        print(
            f"\nthe same server with authentication, RBAC and audit off (--insecure-dev), "
            f"one-payload requests: {bare:.0f} requests/s"
        )
        print("\nscaling, shield server, one-payload requests")
        for processes in (1, 2):
            procs, url = start("shield", workdir, processes)
            try:
                peak = wrk_peak(url, setup["bodies"][("shield", 1)], auth, duration, workdir)
            finally:
                stop(procs)
            print(f"  {processes} process(es): {peak:8.0f} requests/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--serve", nargs=3, metavar=("KIND", "PORT", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), Path(args.serve[2]))
    else:
        main(args.duration)
