"""Just-in-time grants end to end: a real dev server, two ``serve`` processes, the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload

from temporal_shield._devserver import DevServer, free_port
from temporal_shield.codec import Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, build_codec
from temporal_shield.server._secrets import create_secret_file
from tests.server.conftest import wire_body
from tests.server.idp import AUDIENCE, ISSUER, Idp

pytestmark = pytest.mark.integration

POLICY = """
roles:
  engineer: {namespaces: ["dev-*"], operations: [decode, encode], classifications: ["*"]}
bindings:
  - {role: engineer, groups: [engineering]}
grants:
  namespaces: ["prod-*"]
  classifications: ["*"]
  max_duration: 3600
  approvers: {groups: [security]}
"""
SECRET = b'"PROD-SECRET-MARKER"'
CLI = [sys.executable, "-m", "temporal_shield"]


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = Idp()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
def replicas(tmp_path: Path, dev_server: DevServer, idp: Idp) -> Iterator[list[tuple[str, Path]]]:
    """Two codec servers sharing keys, secret and policy; each its own audit file."""
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    (tmp_path / "policy.yaml").write_text(POLICY)
    secret = create_secret_file(tmp_path / "secret")
    procs: list[subprocess.Popen[bytes]] = []
    out: list[tuple[str, Path]] = []
    queue = f"grants-{time.time_ns()}"
    try:
        for n in range(2):
            port = free_port()
            audit = tmp_path / f"audit-{n}.jsonl"
            env = {
                **os.environ,
                "TEMPORAL_ADDRESS": dev_server.address,
                "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}",
                "TEMPORAL_SHIELD_SERVER_PORT": str(port),
                "TEMPORAL_SHIELD_SERVER_POLICY_FILE": str(tmp_path / "policy.yaml"),
                "TEMPORAL_SHIELD_SERVER_SECRET_FILE": str(secret),
                "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(audit),
                "TEMPORAL_SHIELD_SERVER_AUTH_ISSUER": ISSUER,
                "TEMPORAL_SHIELD_SERVER_AUTH_AUDIENCE": AUDIENCE,
                "TEMPORAL_SHIELD_SERVER_AUTH_JWKS_URL": idp.url,
                "TEMPORAL_SHIELD_SERVER_AUTH_ALLOW_INSECURE_JWKS_URL": "true",
                "TEMPORAL_SHIELD_SERVER_GRANTS_ENABLED": "true",
                "TEMPORAL_SHIELD_SERVER_GRANTS_TASK_QUEUE": queue,
                "TEMPORAL_SHIELD_SERVER_GRANTS_REFRESH_INTERVAL": "0.5",
            }
            log = (tmp_path / f"serve-{n}.log").open("wb")
            procs.append(subprocess.Popen([*CLI, "serve"], stdout=log, stderr=log, env=env))
            out.append((f"http://127.0.0.1:{port}", audit))
        yield out
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def http(url: str, token: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")  # noqa: S310
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


async def ready(url: str) -> None:
    for _ in range(150):
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"{url}/readyz", None, 1)
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


async def decodes(url: str, token: str, payload: Payload) -> bool:
    doc = await asyncio.to_thread(
        http, f"{url}/decode", token, wire_body(payload), X_Namespace="prod-pay"
    )
    return bool(base64.b64decode(doc["payloads"][0]["data"]) == SECRET)


async def until(url: str, token: str, payload: Payload, want: bool) -> bool:
    """Whether ``url`` gives the wanted answer within ~15 s (refresh_interval is 0.5 s)."""
    for _ in range(75):
        if await decodes(url, token, payload) == want:
            return True
        await asyncio.sleep(0.2)
    return False


async def cli(token: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMPORAL_SHIELD_TOKEN": token, "TEMPORAL_SHIELD_SERVER_URL": url}
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, "grants", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_grant_end_to_end(replicas: list[tuple[str, Path]], idp: Idp, tmp_path: Path) -> None:
    (one, audit_one), (two, audit_two) = replicas
    await ready(one)
    await ready(two)
    shield = ShieldConfig(keys=KeysConfig(uri=f"local://{tmp_path / 'keyring.json'}"))
    codec = build_codec(shield).with_namespace("prod-pay")
    plain = Payload(metadata={"encoding": b"json/plain"}, data=SECRET)
    payload = (await codec.encode([plain]))[0]
    alice = idp.token(sub="alice", groups=["engineering"])
    bob = idp.token(sub="bob", groups=["security"])
    assert not await decodes(one, alice, payload)
    assert not await decodes(two, alice, payload)

    done = await cli(
        alice, one, "request", "--namespace", "prod-pay", "--classification", "*",
        "--duration", "1h", "--justification", "INC-7 checkout bug", "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    grant_id = json.loads(done.stdout)["id"]
    self_approval = await cli(alice, two, "approve", grant_id)
    assert self_approval.returncode == 2
    assert "refused (403)" in self_approval.stderr
    assert alice not in self_approval.stderr + self_approval.stdout
    approved = await cli(bob, two, "approve", grant_id)
    assert approved.returncode == 0, approved.stderr
    assert await until(one, alice, payload, True)
    assert await until(two, alice, payload, True)
    decode = [r for r in records(audit_two) if r["operation"] == "decode" and r["decoded"]]
    assert decode
    assert grant_id in json.dumps(decode[-1]["grants"])
    assert "INC-7 checkout bug" in json.dumps(decode[-1]["grants"])

    revoked = await cli(alice, one, "revoke", grant_id, "--reason", "fixed")
    assert revoked.returncode == 0, revoked.stderr
    assert await until(one, alice, payload, False)
    assert await until(two, alice, payload, False)

    short = await cli(
        alice, one, "request", "--namespace", "prod-pay", "--classification", "*",
        "--duration", "5", "--justification", "INC-8", "-o", "json",
    )  # fmt: skip
    short_id = json.loads(short.stdout)["id"]
    assert (await cli(bob, one, "approve", short_id)).returncode == 0
    assert await until(two, alice, payload, True)
    assert await until(two, alice, payload, False)  # expired by itself

    steps = {(r["operation"], r.get("grant"), r["decision"]) for r in records(audit_one)}
    steps |= {(r["operation"], r.get("grant"), r["decision"]) for r in records(audit_two)}
    assert ("grant.request", grant_id, "allow") in steps
    assert ("grant.approve", grant_id, "deny") in steps
    assert ("grant.approve", grant_id, "allow") in steps
    assert ("grant.revoke", grant_id, "allow") in steps
    for _ in range(50):  # each replica records the end at its next refresh
        ended = {r.get("grant"): r for r in records(audit_one) if r["operation"] == "grant.ended"}
        if short_id in ended:
            break
        await asyncio.sleep(0.2)
    assert ended[grant_id]["justification"] == "INC-7 checkout bug"
    assert ended[short_id]["decision"] == "expired"
