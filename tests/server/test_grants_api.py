"""The grant API over a real codec server and a real Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from temporalio.client import Client

from temporal_shield._devserver import DevServer
from temporal_shield.server import Identity
from temporal_shield.server._app import STATE
from temporal_shield.server._config import GrantsConfig
from temporal_shield.server._grant_workflow import Decision, GrantRequest, GrantWorkflow
from temporal_shield.server._grants import GRANTS, GrantError
from temporal_shield.server._secrets import create_secret_file
from tests.integration.conftest import dev_server

from .conftest import ClientFactory, server_config
from .idp import Idp

pytestmark = pytest.mark.integration
__all__ = ["dev_server"]

GRANT_POLICY = """
roles:
  engineer: {namespaces: ["dev-*"], operations: [decode, encode], classifications: ["*"]}
bindings:
  - {role: engineer, groups: [engineering]}
grants:
  namespaces: ["prod-*"]
  classifications: ["*"]
  max_duration: 7200
  approvers: {groups: [security]}
"""


@pytest.fixture
def grants_client(
    make_client: ClientFactory,
    idp: Idp,
    tmp_path: Path,
    dev_server: DevServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_server.address)
    policy = tmp_path / "grant-policy.yaml"
    policy.write_text(GRANT_POLICY)
    secret = create_secret_file(tmp_path / "secret")
    queue = f"grants-{time.time_ns()}"

    async def start(**kw: Any) -> TestClient[Any, Any]:
        """A codec server with grants; ``settings`` overrides GrantsConfig fields."""
        settings = kw.pop("settings", {})
        grants = kw.pop(
            "grants",
            GrantsConfig(
                enabled=True,
                task_queue=queue,
                refresh_interval=0.2,
                stale_after=3.0,
                **settings,
            ),
        )
        config = server_config(idp, policy, tmp_path, secret_file=str(secret), grants=grants)
        return await make_client(config=config)

    return start


def who(idp: Idp, sub: str, *groups: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.token(sub=sub, groups=list(groups))}"}


async def honoured(client: TestClient[Any, Any], sub: str, namespace: str) -> str | None:
    """Poll the registry (a few seconds) until ``sub``'s grant shows, or give up."""
    registry = client.app[STATE].service.grants
    assert registry is not None
    identity = Identity(subject=sub, email="", groups=frozenset(), permissions=frozenset())
    for _ in range(100):
        grant = registry.find(identity, namespace, "internal", time.time())
        if grant is not None:
            return str(grant.id)
        await asyncio.sleep(0.1)
    return None


async def gone(client: TestClient[Any, Any], sub: str, namespace: str) -> bool:
    """Poll the registry (a few seconds) until ``sub`` has no grant for ``namespace``."""
    registry = client.app[STATE].service.grants
    assert registry is not None
    identity = Identity(subject=sub, email="", groups=frozenset(), permissions=frozenset())
    for _ in range(100):
        if registry.find(identity, namespace, "internal", time.time()) is None:
            return True
        await asyncio.sleep(0.1)
    return False


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def test_lifecycle(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp, tmp_path: Path
) -> None:
    client = await grants_client()
    alice = who(idp, "alice", "engineering")
    bob = who(idp, "bob", "security")
    carol = who(idp, "carol", "engineering")
    body = {
        "namespace": "prod-pay",
        "classification": "internal",
        "duration": "1h",
        "justification": "INC-42",
    }
    response = await client.post("/grants", json=body, headers=alice)
    assert response.status == 201, await response.text()
    grant_id = (await response.json())["id"]
    # Four eyes: the requester cannot approve (not an approver), a non-approver neither.
    assert (await client.post(f"/grants/{grant_id}/approve", headers=alice)).status == 403
    assert (await client.post(f"/grants/{grant_id}/approve", headers=carol)).status == 403
    assert await honoured(client, "alice", "prod-pay") is None
    response = await client.post(f"/grants/{grant_id}/approve", headers=bob)
    assert response.status == 200, await response.text()
    assert (await response.json())["state"] == "approved"
    assert await honoured(client, "alice", "prod-pay") == grant_id
    # Approving twice is refused.
    assert (await client.post(f"/grants/{grant_id}/approve", headers=bob)).status == 409
    listed = await (await client.get("/grants", headers=alice)).json()
    assert [g["id"] for g in listed["grants"]] == [grant_id]
    assert "tag" not in listed["grants"][0]
    response = await client.post(
        f"/grants/{grant_id}/revoke", json={"reason": "done"}, headers=carol
    )
    assert response.status == 403
    response = await client.post(
        f"/grants/{grant_id}/revoke", json={"reason": "done"}, headers=alice
    )
    assert response.status == 200, await response.text()
    assert await gone(client, "alice", "prod-pay")
    records = audit(tmp_path)
    steps = [(r["operation"], r["decision"]) for r in records if r.get("grant") == grant_id]
    assert ("grant.request", "allow") in steps
    assert ("grant.approve", "deny") in steps
    assert ("grant.approve", "allow") in steps
    assert ("grant.revoke", "allow") in steps
    request = next(r for r in records if r["operation"] == "grant.request")
    assert request["justification"] == "INC-42"


async def test_self_approval_and_deny(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp
) -> None:
    client = await grants_client()
    bob = who(idp, "bob", "security")
    dave = who(idp, "dave", "security")
    body = {
        "namespace": "prod-x",
        "classification": "internal",
        "duration": 60,
        "justification": "t",
    }
    grant_id = (await (await client.post("/grants", json=body, headers=bob)).json())["id"]
    response = await client.post(f"/grants/{grant_id}/approve", headers=bob)
    assert response.status == 409
    assert (await response.json())["error"] == "self_approval"
    assert (await client.post(f"/grants/{grant_id}/deny", json={}, headers=dave)).status == 400
    response = await client.post(f"/grants/{grant_id}/deny", json={"reason": "no"}, headers=dave)
    assert response.status == 200
    assert (await response.json())["state"] == "denied"
    assert (await client.post(f"/grants/{grant_id}/approve", headers=dave)).status in (404, 409)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"classification": "internal", "duration": 60, "justification": "t"}, 400),
        ({"namespace": "prod-x", "classification": "internal", "duration": 60}, 400),
        (
            {
                "namespace": "prod-x",
                "classification": "i",
                "duration": 60,
                "justification": "x" * 5000,
            },
            400,
        ),
        (
            {
                "namespace": "prod-x",
                "classification": "i",
                "duration": 60,
                "justification": "a\x00b",
            },
            400,
        ),
        ({"namespace": "dev-x", "classification": "i", "duration": 60, "justification": "t"}, 403),
        (
            {"namespace": "prod-x", "classification": "i", "duration": "3h", "justification": "t"},
            400,
        ),
        (
            {
                "namespace": "prod-x",
                "classification": "i",
                "duration": "soon",
                "justification": "t",
            },
            400,
        ),
        (
            {"namespace": ["prod-x"], "classification": "i", "duration": 60, "justification": "t"},
            400,
        ),
        # An integer too large for a float.
        (
            {
                "namespace": "prod-x",
                "classification": "i",
                "duration": 10**400,
                "justification": "t",
            },
            400,
        ),
        # Names, not patterns: "pci-?" would be honoured as a glob covering more.
        (
            {
                "namespace": "prod-x",
                "classification": "pci-?",
                "duration": 60,
                "justification": "t",
            },
            400,
        ),
        ({"namespace": "prod-*", "classification": "*", "duration": 60, "justification": "t"}, 400),
        (
            {"namespace": "prod-[a]", "classification": "i", "duration": 60, "justification": "t"},
            400,
        ),
    ],
)
async def test_bad_requests(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    idp: Idp,
    body: dict[str, Any],
    status: int,
) -> None:
    client = await grants_client()
    response = await client.post("/grants", json=body, headers=who(idp, "alice", "engineering"))
    assert response.status == status
    assert "error" in await response.json()


async def test_forged_approval_never_honoured(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    idp: Idp,
    dev_server: DevServer,
) -> None:
    client = await grants_client()
    body = {
        "namespace": "prod-f",
        "classification": "internal",
        "duration": 600,
        "justification": "t",
    }
    alice = who(idp, "alice", "engineering")
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    grants = client.app[GRANTS]
    assert grants.client is not None
    # Someone who can write to the namespace approves with a made-up tag
    # (knowing the run id, too).
    handle = grants.client.get_workflow_handle(grant_id)
    run_id = (await handle.describe()).run_id
    forged = Decision(actor="mallory", expires_at=time.time() + 600, tag="00" * 32, run_id=run_id)
    await handle.execute_update(GrantWorkflow.approve, forged)
    await grants.refresh()
    assert await honoured(client, "alice", "prod-f") is None
    # Listed as approved, and as not honoured.
    listed = (await (await client.get("/grants", headers=alice)).json())["grants"]
    assert [(g["state"], g["honoured"]) for g in listed] == [("approved", False)]


async def test_stale_registry_honours_nothing(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp
) -> None:
    client = await grants_client()
    body = {
        "namespace": "prod-s",
        "classification": "internal",
        "duration": 600,
        "justification": "t",
    }
    alice = who(idp, "alice", "engineering")
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    await client.post(f"/grants/{grant_id}/approve", headers=who(idp, "bob", "security"))
    assert await honoured(client, "alice", "prod-s") == grant_id
    # Temporal unreachable: refreshes fail, and after stale_after nothing is honoured.
    grants = client.app[GRANTS]
    grants.client = await Client.connect("127.0.0.1:1", lazy=True)
    for _ in range(10):  # stale_after is 3 s; gone() polls for up to 10 s each time
        if await gone(client, "alice", "prod-s"):
            break
    assert await gone(client, "alice", "prod-s")


async def test_listing_withdrawal_and_body_cap(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp
) -> None:
    client = await grants_client()
    alice = who(idp, "alice", "engineering")
    carol = who(idp, "carol", "engineering")
    bob = who(idp, "bob", "security")
    body = {"namespace": "prod-l", "classification": "*", "duration": 60, "justification": "t"}
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    for _ in range(50):  # visibility is eventually consistent
        pending = (await (await client.get("/grants", headers=bob)).json())["grants"]
        if pending:
            break
        await asyncio.sleep(0.1)
    assert [g["id"] for g in pending] == [grant_id]  # approvers see pending requests
    assert (await (await client.get("/grants", headers=carol)).json())["grants"] == []
    assert (await client.get("/grants?all", headers=carol)).status == 403
    assert (await client.get("/grants?all", headers=bob)).status == 200
    # The requester withdraws a pending request.
    response = await client.post(f"/grants/{grant_id}/revoke", json={"reason": "x"}, headers=alice)
    assert (await response.json())["state"] == "revoked"
    huge = json.dumps({**body, "pad": "x" * 9000})
    response = await client.post("/grants", data=huge, headers=alice)
    assert response.status == 413


async def test_unreadable_record_skipped(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    idp: Idp,
    dev_server: DevServer,
    tmp_path: Path,
) -> None:
    from temporal_shield.codec import Keyring
    from temporal_shield.converter import KeysConfig, ShieldConfig, data_converter

    client = await grants_client()
    grants = client.app[GRANTS]
    alice = who(idp, "alice", "engineering")
    body = {"namespace": "prod-u", "classification": "*", "duration": 600, "justification": "t"}
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    await client.post(f"/grants/{grant_id}/approve", headers=who(idp, "bob", "security"))
    # Someone else starts a "grant" whose record only another keyring can read.
    Keyring.new().save(tmp_path / "other.json")
    other = data_converter(ShieldConfig(keys=KeysConfig(uri=f"local://{tmp_path / 'other.json'}")))
    stranger = await Client.connect(dev_server.address, data_converter=other)
    await stranger.start_workflow(
        "TemporalShieldGrant",
        {"id": "x"},
        id=f"stranger-{time.time_ns()}",
        task_queue=grants.config.task_queue,
        memo={"grant": {"state": "approved", "subject": "alice"}},
    )
    await grants.refresh()
    assert await honoured(client, "alice", "prod-u") == grant_id


async def test_install_needs_secret_and_grants_section(
    make_client: ClientFactory, idp: Idp, tmp_path: Path
) -> None:
    from temporal_shield.codec import ConfigError

    no_section = tmp_path / "plain.yaml"
    no_section.write_text(GRANT_POLICY.split("grants:")[0])
    secret = create_secret_file(tmp_path / "s")
    config = server_config(
        idp, no_section, tmp_path, secret_file=str(secret), grants=GrantsConfig(enabled=True)
    )
    with pytest.raises(ConfigError, match="grants"):
        await make_client(config=config)


async def test_tampered_justification_never_honoured(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp
) -> None:
    client = await grants_client()
    alice = who(idp, "alice", "engineering")
    body = {"namespace": "prod-j", "classification": "*", "duration": 600, "justification": "t"}
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    response = await client.post(f"/grants/{grant_id}/approve", headers=who(idp, "bob", "security"))
    record = await response.json()
    grants = client.app[GRANTS]
    vouched, run_id = await grants._current(grant_id)
    now = time.time()
    assert grants.registry.honoured(vouched, run_id, now) is not None
    # The same vouched record with another justification, or another namespace, is not;
    # nor in another run of the workflow (what a reset makes).
    assert grants.registry.honoured({**vouched, "justification": "other"}, run_id, now) is None
    assert grants.registry.honoured({**vouched, "namespace": "prod-k"}, run_id, now) is None
    assert grants.registry.honoured(vouched, "another-run", now) is None
    assert grants.registry.honoured({**vouched, "run_id": "x"}, "x", now) is None
    assert record["state"] == "approved"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "no codec server"),
        (["--server", "http://127.0.0.1:9"], "no token"),
        (["--server", "http://127.0.0.1:9", "--token", "SECRET-TOKEN"], "cannot reach"),
        (["--server", "file:///etc/passwd", "--token", "SECRET-TOKEN"], "http(s) URL"),
        # A token in clear to another machine: refused before any connection.
        (["--server", "http://codec.example.com", "--token", "SECRET-TOKEN"], "must be https://"),
    ],
    ids=["no server", "no token", "unreachable", "not http", "plain http to another host"],
)
def test_cli_without_token_or_server_fails_cleanly(arguments: list[str], message: str) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_SHIELD_")}
    out = subprocess.run(
        [sys.executable, "-m", "temporal_shield", "grants", "list", *arguments],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert message in out.stderr
    assert "SECRET-TOKEN" not in out.stderr + out.stdout


def test_cli_never_sends_plain_http_through_a_proxy() -> None:
    """http_proxy would get the token in clear (and a loopback URL off the machine)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as proxy, socket.socket() as closed:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(4)
        proxy.settimeout(0.5)
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_SHIELD_")}
        env.pop("no_proxy", None)
        env.pop("NO_PROXY", None)
        env["http_proxy"] = env["HTTP_PROXY"] = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"
        out = subprocess.run(
            [sys.executable, "-m", "temporal_shield", "grants", "list", "--server", server],
            capture_output=True,
            text=True,
            env={**env, "TEMPORAL_SHIELD_TOKEN": "SECRET-TOKEN"},
            check=False,
        )
        assert out.returncode == 2
        assert "cannot reach" in out.stderr  # it went to the server itself
        with pytest.raises(TimeoutError):
            proxy.accept()  # and never to the proxy


def test_cli_never_follows_a_redirect() -> None:
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/stolen")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_SHIELD_")}
        command = [sys.executable, "-m", "temporal_shield", "grants", "list", "--server", url]
        out = subprocess.run(
            [*command, "--token", "t"], capture_output=True, text=True, env=env, check=False
        )
    finally:
        server.shutdown()
    assert out.returncode == 2
    assert "refused (302)" in out.stderr
    assert seen == ["/grants"]  # the token went nowhere else


async def test_starts_without_temporal_and_refuses_grant_calls(
    make_client: ClientFactory, idp: Idp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from temporal_shield._devserver import free_port

    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens
    policy = tmp_path / "grant-policy.yaml"
    policy.write_text(GRANT_POLICY)
    secret = create_secret_file(tmp_path / "secret")
    grants = GrantsConfig(enabled=True, requests_per_hour=1, max_open_requests=1)
    config = server_config(idp, policy, tmp_path, secret_file=str(secret), grants=grants)
    client = await make_client(config=config)
    assert (await client.get("/healthz")).status == 200
    body = {"namespace": "prod-x", "classification": "*", "duration": 60, "justification": "t"}
    # A request Temporal never took costs nothing: neither the hour's one request
    # nor the one open place (the retry is 503 again, not 429).
    for _ in range(2):
        response = await client.post("/grants", json=body, headers=who(idp, "alice", "engineering"))
        assert response.status == 503
        assert (await response.json())["error"] == "grants_unavailable"
    identity = Identity(subject="alice", email="", groups=frozenset(), permissions=frozenset())
    registry = client.app[STATE].service.grants
    assert registry is not None
    assert registry.find(identity, "prod-x", "internal", time.time()) is None


async def test_bad_connection_settings_stop_the_start(
    make_client: ClientFactory, idp: Idp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from temporal_shield.codec import ConfigError

    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "missing.pem"))
    policy = tmp_path / "grant-policy.yaml"
    policy.write_text(GRANT_POLICY)
    secret = create_secret_file(tmp_path / "secret")
    config = server_config(
        idp, policy, tmp_path, secret_file=str(secret), grants=GrantsConfig(enabled=True)
    )
    with pytest.raises(ConfigError):
        await make_client(config=config)


async def test_a_request_planted_in_temporal_is_never_approved(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp, tmp_path: Path
) -> None:
    """A writer to the grants namespace starts a "request" outside every rule: no approval."""
    client = await grants_client()
    grants = client.app[GRANTS]
    temporal = await grants._client()
    bob = who(idp, "bob", "security")
    planted: dict[str, Any] = {
        "subject": "alice",
        "email": "",
        "groups": [],
        "namespace": "dev-team",  # not requestable
        "classification": "*",
        "duration": 1e8,  # over the cap
        "justification": "planted",
    }
    for made_up_tag in ("", "00" * 32):
        record = {**planted, "requested_at": time.time(), "id": "grant-" + secrets.token_hex(16)}
        handle = await temporal.start_workflow(
            GrantWorkflow.run,
            GrantRequest(**record),
            id=record["id"],
            task_queue=grants.config.task_queue,
        )
        if made_up_tag:  # and vouched for with a tag of the planter's own making
            await handle.execute_update(GrantWorkflow.vouch_request, made_up_tag)
        response = await client.post(f"/grants/{record['id']}/approve", headers=bob)
        assert response.status == 409, await response.text()
        assert (await response.json())["error"] == "not_vouched"
    assert await honoured(client, "alice", "dev-team") is None
    denials = [r for r in audit(tmp_path) if r["operation"] == "grant.approve"]
    assert [r["decision"] for r in denials] == ["deny", "deny"]


async def test_a_revoked_grant_does_not_come_back_with_a_reset(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    idp: Idp,
    dev_server: DevServer,
) -> None:
    """`temporal workflow reset` replays the approval into a new run: not honoured."""
    from temporal_shield._devserver import temporal_cli

    client = await grants_client()
    grants = client.app[GRANTS]
    temporal = await grants._client()
    alice = who(idp, "alice", "engineering")
    body = {"namespace": "prod-r", "classification": "*", "duration": 600, "justification": "t"}
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    await client.post(f"/grants/{grant_id}/approve", headers=who(idp, "bob", "security"))
    assert await honoured(client, "alice", "prod-r") == grant_id
    revoked = await client.post(f"/grants/{grant_id}/revoke", json={"reason": "x"}, headers=alice)
    assert revoked.status == 200
    assert await gone(client, "alice", "prod-r")
    cli = temporal_cli()
    assert cli is not None
    reset = await asyncio.create_subprocess_exec(
        cli, "workflow", "reset", "--workflow-id", grant_id, "--type", "LastWorkflowTask",
        "--reapply-exclude", "All", "--reason", "resurrect", "--address", dev_server.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await reset.communicate()
    assert reset.returncode == 0, out.decode()
    # The reset brought the approved record back in a new, running run ...
    handle = temporal.get_workflow_handle(grant_id)
    for _ in range(50):
        record = await handle.query(GrantWorkflow.record)
        if record["state"] == "approved":
            break
        await asyncio.sleep(0.1)
    assert record["state"] == "approved"
    assert (await handle.describe()).run_id != record["run_id"]
    # ... which no replica honours.
    await grants.refresh()
    assert await honoured(client, "alice", "prod-r") is None


async def test_unauthenticated_grant_calls_are_401_json_and_audited(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    client = await grants_client()
    for method, path in (("GET", "/grants"), ("POST", "/grants/grant-00/approve")):
        for headers in ({}, {"Authorization": "Bearer x"}):
            response = await client.request(method, path, headers=headers)
            assert response.status == 401
            assert (await response.json())["error"] == "unauthorized"
            assert response.headers["X-Request-Id"]
    records = [r for r in audit(tmp_path) if r["operation"].startswith("grant.")]
    assert len(records) == 4
    assert {(r["decision"], r["status"]) for r in records} == {("deny", 401)}


async def test_a_denied_request_re_presented_as_a_new_run_is_not_approved(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp, tmp_path: Path
) -> None:
    """A writer to the namespace restarts a denied request (genuine tag, same id): no approval."""
    client = await grants_client()
    grants = client.app[GRANTS]
    temporal = await grants._client()
    alice, bob = who(idp, "alice", "engineering"), who(idp, "bob", "security")
    body = {"namespace": "prod-d", "classification": "*", "duration": 600, "justification": "t"}
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    record, _ = await grants._current(grant_id)
    denied = await client.post(f"/grants/{grant_id}/deny", json={"reason": "no"}, headers=bob)
    assert denied.status == 200
    # Finished: acting on it again is a conflict, not "no such grant".
    again = await client.post(f"/grants/{grant_id}/approve", headers=bob)
    assert (again.status, (await again.json())["error"]) == (409, "conflict")
    replayed = GrantRequest(
        id=grant_id,
        subject=record["subject"],
        email=record["email"],
        groups=[],
        namespace=record["namespace"],
        classification=record["classification"],
        duration=record["duration"],
        justification=record["justification"],
        requested_at=record["requested_at"],
    )
    handle = await temporal.start_workflow(
        GrantWorkflow.run, replayed, id=grant_id, task_queue=grants.config.task_queue
    )
    # The genuine tag, copied onto the new run: it was made for the old run.
    # (Whether the old run is still listed or was deleted makes no difference.)
    await handle.execute_update(GrantWorkflow.vouch_request, record["request_tag"])
    response = await client.post(f"/grants/{grant_id}/approve", headers=bob)
    assert response.status == 409, await response.text()
    assert (await response.json())["error"] == "not_vouched"
    assert await honoured(client, "alice", "prod-d") is None


async def test_requests_per_person_are_rate_limited(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp, tmp_path: Path
) -> None:
    client = await grants_client(settings={"requests_per_hour": 2})
    body = {"namespace": "prod-q", "classification": "*", "duration": 60, "justification": "t"}
    alice, carol = who(idp, "alice", "engineering"), who(idp, "carol", "engineering")
    statuses = [(await client.post("/grants", json=body, headers=alice)).status for _ in range(3)]
    assert statuses == [201, 201, 429]
    assert (await client.post("/grants", json=body, headers=carol)).status == 201  # per person
    refused = [r for r in audit(tmp_path) if r["operation"] == "grant.request"][-2]
    assert (refused["decision"], refused["status"]) == ("deny", 429)


async def test_too_many_grant_workflows_fail_closed_rather_than_drop_some(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    idp: Idp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Visibility lists the newest first: a cut-off list would silently drop older grants."""
    from temporal_shield.server import _grants

    client = await grants_client()
    grants = client.app[GRANTS]
    alice, bob = who(idp, "alice", "engineering"), who(idp, "bob", "security")
    body = {"namespace": "prod-m", "classification": "*", "duration": 600, "justification": "t"}
    grant_id = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    await client.post(f"/grants/{grant_id}/approve", headers=bob)
    assert await honoured(client, "alice", "prod-m") == grant_id
    for _ in range(2):
        await client.post("/grants", json=body, headers=who(idp, "dave", "engineering"))
    monkeypatch.setattr(_grants, "MAX_RECORDS", 2)
    refused = 0
    for _ in range(50):  # until visibility shows all three
        try:
            await grants.refresh()
        except GrantError as exc:
            refused = exc.status
            break
        await asyncio.sleep(0.1)
    assert refused == 503  # the refresh refuses the overflow
    listed = await client.get("/grants?all", headers=bob)
    assert (listed.status, (await listed.json())["error"]) == (503, "grants_unavailable")
    # The registry keeps what it last read until stale_after, then honours nothing.
    assert await gone(client, "alice", "prod-m")


async def test_open_requests_per_person_are_capped(
    grants_client: Callable[..., Awaitable[TestClient[Any, Any]]], idp: Idp
) -> None:
    from temporal_shield.server._grants import VISIBILITY_LAG

    client = await grants_client(settings={"max_open_requests": 2})
    grants = client.app[GRANTS]
    alice, bob = who(idp, "alice", "engineering"), who(idp, "bob", "security")
    body = {"namespace": "prod-o", "classification": "*", "duration": 60, "justification": "t"}
    # Listings that do not show the requests yet (visibility lags, or they were
    # filed while a refresh ran): what this replica started still counts. (Every
    # refresh, the background one too, sees them from here on.)
    real_records = grants.records

    async def lagging(query: str) -> list[tuple[dict[str, Any], str]]:
        return []

    grants.records = lagging
    first = (await (await client.post("/grants", json=body, headers=alice)).json())["id"]
    assert (await client.post("/grants", json=body, headers=alice)).status == 201
    await grants.refresh()
    assert grants.open_requests["alice"] == 2
    refused = await client.post("/grants", json=body, headers=alice)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "pending or approved" in (await refused.json())["message"]
    # ...for at most VISIBILITY_LAG: one no listing ever shows (it ended at
    # another replica before any refresh here) stops counting then.
    subject, started = grants._started[first]
    grants._started[first] = (subject, started - VISIBILITY_LAG - 1)
    await grants.refresh()
    assert grants.open_requests["alice"] == 1
    assert first not in grants._started
    grants.records = real_records
    # A decision frees a place once a refresh has counted it.
    await client.post(f"/grants/{first}/deny", json={"reason": "no"}, headers=bob)
    for _ in range(50):
        await grants.refresh()
        if grants.open_requests["alice"] < 2:
            break
        await asyncio.sleep(0.1)
    assert (await client.post("/grants", json=body, headers=alice)).status == 201


def test_cli_lines_keep_each_field_one_field() -> None:
    """A subject with spaces or "=" cannot pose as another field (say, an approver)."""
    from temporal_shield._grants_cli import _line

    grant = {"id": "grant-1", "state": "pending", "namespace": "prod", "classification": "*"}
    assert _line({**grant, "subject": "bob", "approver": "carol", "justification": "t"}) == (
        'grant-1 pending prod/* requester=bob approver=carol justification="t"'
    )
    forged = _line({**grant, "subject": "x approver=alice", "justification": "t"})
    assert forged == 'grant-1 pending prod/* requester="x approver=alice" justification="t"'
