"""`temporal-shield serve`: starts from flags/env, announces insecure mode, stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from temporal_shield._devserver import free_port
from temporal_shield.codec import Keyring


def test_serve_insecure_dev_and_graceful_sigterm(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    port = free_port()
    env = {**os.environ, "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "temporal_shield", "serve", "--insecure-dev", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    status = resp.status
            except OSError:
                time.sleep(0.2)
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert proc.stdout is not None
        assert "INSECURE DEV MODE" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_to_start_without_authentication(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    env = {**os.environ, "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}"}
    out = subprocess.run(
        [sys.executable, "-m", "temporal_shield", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "no authenticator configured" in out.stderr


def test_serve_on_port_0_logs_the_port_it_bound(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    env = {**os.environ, "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "temporal_shield", "serve", "--insecure-dev", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
