"""The real `temporal` CLI decodes history through the codec server with a bearer token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer, temporal_cli
from temporal_shield.certs import SERVER_AUTH, issue, make_ca, write_secret
from temporal_shield.codec import Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin
from temporal_shield.server import (
    AuditConfig,
    AuthConfig,
    ServerConfig,
    TlsConfig,
    create_app,
    verify,
)
from temporal_shield.server._tls import server_ssl_context

from ..server.conftest import POLICY
from ..server.idp import AUDIENCE, ISSUER, Idp
from .codec_server import running
from .workflows import EchoWorkflow, mark

pytestmark = pytest.mark.integration


def _payload_texts(out: str) -> str:
    """Every payload ``data`` in the CLI's JSON history, base64-decoded and joined."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                found.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    try:
        walk(json.loads(out))
    except ValueError:
        return out  # not JSON (an error message): search it as it is
    return "\n".join(found) + out


async def _show(
    dev: DevServer, workflow_id: str, endpoint: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    cli = temporal_cli()
    assert cli is not None
    proc = await asyncio.create_subprocess_exec(
        cli,
        "workflow",
        "show",
        "--workflow-id",
        workflow_id,
        "--address",
        dev.address,
        "--namespace",
        "default",
        "--codec-endpoint",
        endpoint,
        "--output",
        "json",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


async def _echoed(dev_server: DevServer, tmp_path: Path) -> tuple[str, ShieldConfig]:
    """A workflow run through a shielded worker (its id), and the converter settings."""
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    shield = ShieldConfig(keys=KeysConfig(uri=f"local://{ring}"))
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(shield)])
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=workflow_id, workflows=[EchoWorkflow]):
        await client.execute_workflow(
            EchoWorkflow.run, mark("cli-input"), id=workflow_id, task_queue=workflow_id
        )
    return workflow_id, shield


def _server_config(tmp_path: Path, idp: Idp, **extra: Any) -> ServerConfig:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return ServerConfig(
        policy_file=str(policy),
        auth=AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url),
        audit=AuditConfig(file=str(tmp_path / "audit.jsonl")),
        **extra,
    )


async def test_temporal_cli_with_codec_auth(dev_server: DevServer, tmp_path: Path) -> None:
    workflow_id, shield = await _echoed(dev_server, tmp_path)
    idp = Idp()
    await idp.start()
    audit = tmp_path / "audit.jsonl"
    config = _server_config(tmp_path, idp)
    try:
        async with running(create_app(config, shield)) as url:
            reader = idp.token(permissions=["default:read"])
            for endpoint in (url, url + "/{namespace}"):
                code, out = await _show(
                    dev_server, workflow_id, endpoint, "--codec-auth", f"Bearer {reader}"
                )
                assert code == 0, out
                assert mark("cli-input") in _payload_texts(out)
            # No token: the CLI gets 401s and never sees plaintext.
            code, out = await _show(dev_server, workflow_id, url)
            assert mark("cli-input") not in _payload_texts(out)
            # A token without a role for this namespace: payloads stay encrypted.
            stranger = idp.token(permissions=["elsewhere:read"])
            code, out = await _show(
                dev_server, workflow_id, url, "--codec-auth", f"Bearer {stranger}"
            )
            assert code == 0, out
            assert mark("cli-input") not in _payload_texts(out)
    finally:
        await idp.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {r["decision"] for r in records} >= {"allow", "deny"}
    assert any(r["decoded"] > 0 and r["namespace"] == "default" for r in records)
    assert verify(audit).ok


async def test_temporal_cli_trusts_a_private_ca_given_in_ssl_cert_file(
    dev_server: DevServer, tmp_path: Path
) -> None:
    """As docs/server.md says: the CLI reads the codec server's CA from SSL_CERT_FILE."""
    workflow_id, shield = await _echoed(dev_server, tmp_path)
    ca = make_ca()
    pki = tmp_path / "codec"
    write_secret(pki, issue(ca, dns_names=["localhost"], usages=[SERVER_AUTH]), ca.cert)
    idp = Idp()
    await idp.start()
    config = _server_config(tmp_path, idp, tls=TlsConfig(dir=str(pki)))
    app = create_app(config, shield)
    try:
        async with running(app, server_ssl_context(config.tls, app)) as url:
            endpoint = url.replace("127.0.0.1", "localhost")  # the certificate's name
            token = f"Bearer {idp.token(permissions=['default:read'])}"
            env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
            code, out = await _show(
                dev_server, workflow_id, endpoint, "--codec-auth", token, env=env
            )
            assert mark("cli-input") not in _payload_texts(out)  # the CA is not trusted
            trusted = {**env, "SSL_CERT_FILE": str(pki / "ca.crt")}
            code, out = await _show(
                dev_server, workflow_id, endpoint, "--codec-auth", token, env=trusted
            )
            assert code == 0, out
            assert mark("cli-input") in _payload_texts(out)
    finally:
        await idp.stop()
