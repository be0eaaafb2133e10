"""Codec-server fixtures: an IdP with a real JWKS endpoint, keyring, policy, app."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from temporalio.api.common.v1 import Payload

from temporal_shield.codec import Keyring
from temporal_shield.converter import ClassificationConfig, KeysConfig, ShieldConfig
from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, create_app
from temporal_shield.server._http import ShieldRunner

from .idp import AUDIENCE, ISSUER, Idp

POLICY = """
roles:
  engineer:
    namespaces: ["dev-*"]
    operations: [decode, encode]
    classifications: ["internal", "unclassified"]
  finance:
    namespaces: ["*"]
    operations: [decode]
    classifications: ["pci", "internal"]
  clinician:
    namespaces: ["clinic-*", "prod-clinic"]
    operations: [decode]
    classifications: ["phi", "internal"]
  reader:
    namespaces: ["*"]
    operations: [decode]
    classifications: ["internal", "unclassified"]
bindings:
  - role: engineer
    groups: [engineering]
  - role: finance
    emails: [cfo@example.com]
  - role: clinician
    subjects: [dr-house]
permissions:
  claim: permissions
  roles: {read: reader}
groups_claim: groups
"""

CLASSIFICATION = ClassificationConfig(
    default="internal",
    namespaces=(
        ("pay-*", "pci"),
        ("clinic-*", "phi"),
        ("prod-clinic", "phi"),
        ("dev-*", "internal"),
    ),
)
ORIGIN = "http://127.0.0.1:8233"


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = Idp()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
def shield_config(keyring_path: Path) -> ShieldConfig:
    return ShieldConfig(
        keys=KeysConfig(uri=f"local://{keyring_path}"), classification=CLASSIFICATION
    )


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def server_config(idp: Idp, policy_file: Path, tmp_path: Path, **kw: Any) -> ServerConfig:
    auth = kw.pop("auth", None) or AuthConfig(
        issuer=ISSUER, audience=(AUDIENCE,), algorithms=("RS256", "ES256"), jwks_url=idp.url
    )
    return ServerConfig(
        cors_origins=(ORIGIN,),
        policy_file=str(policy_file),
        auth=auth,
        audit=kw.pop("audit", None) or AuditConfig(file=str(tmp_path / "audit.jsonl")),
        **kw,
    )


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def wire_body(*payloads: Payload) -> dict[str, Any]:
    """A codec request body (protobuf JSON, base64 bytes) holding ``payloads``."""
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


class ShieldTestServer(TestServer):
    """aiohttp's test server, run by :class:`ShieldRunner` as ``serve`` runs the app."""

    def __init__(self, app: web.Application, config: ServerConfig) -> None:
        super().__init__(app, host="127.0.0.1")
        self.config = config

    async def _make_runner(self, **kwargs: Any) -> ShieldRunner:
        return ShieldRunner(self.app, self.config, **kwargs)


@pytest.fixture
async def make_client(
    idp: Idp, policy_file: Path, tmp_path: Path, shield_config: ShieldConfig
) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def factory(**kw: Any) -> TestClient[Any, Any]:
        stdout = kw.pop("audit_stdout", io.StringIO())
        providers = kw.pop("providers", None)
        running = [c for c in clients if not c.server.closed]
        if running and "audit" not in kw and "config" not in kw:
            # One writer per audit file (the log locks it): a second server
            # running alongside writes a chain of its own, next to ``audit.jsonl``
            # (a server started after the first stopped continues its chain).
            kw["audit"] = AuditConfig(file=str(tmp_path / f"audit-{len(clients) + 1}.jsonl"))
        config = kw.pop("config", None) or server_config(idp, policy_file, tmp_path, **kw)
        app = create_app(config, shield_config, audit_stdout=stdout, providers=providers)
        client = TestClient(ShieldTestServer(app, config))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


__all__ = ["CLASSIFICATION", "ORIGIN", "ClientFactory", "Keyring", "server_config"]
