"""``temporal-shield serve``: run the codec server until SIGTERM/SIGINT.

One worker (the default) serves in this process. With ``server.workers`` > 1
this process only supervises (:mod:`temporal_shield.server._workers`): it
resolves the port, starts the workers as fresh interpreters of this same
command with a hidden ``--worker`` argument, restarts those that die and
stops them on SIGTERM. It never loads keys, policy or the audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from temporal_shield.server import ServerConfig, create_app, load_server_config
from temporal_shield.server._app import create_metrics_app
from temporal_shield.server._http import ShieldRunner, install_log_redaction
from temporal_shield.server._tls import server_ssl_context
from temporal_shield.server._workers import (
    LineLockedStdout,
    Supervisor,
    check_workers,
    heartbeat_interval,
    lock_stderr_logging,
    reserve_port,
    stdout_lock,
    worker_config,
    worker_count,
)

log = logging.getLogger("temporal_shield.server")

SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish after SIGTERM."""


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What the supervisor tells a worker (the hidden ``--worker`` JSON argument)."""

    index: int
    """This worker's number, 0 to ``count - 1`` (the same slot keeps it across restarts)."""
    count: int
    """How many workers share the port."""
    control: int
    """Inherited socket to the supervisor: ``ready`` goes out, end of file means it is gone."""
    stdout_lock: int = -1
    """Inherited lock file for whole-line standard output (-1: stdout not used)."""
    settings: dict[str, Any]
    """The ``[server]`` overrides of the supervisor's command line, port resolved."""

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        """The spec from its JSON form (written by :func:`_supervise`)."""
        return cls(**json.loads(text))


def serve(config_path: str | None, overrides: Mapping[str, Any], worker: str | None = None) -> int:
    """Load configuration and serve (graceful shutdown on SIGTERM).

    Args:
        config_path: TOML file, else ``$TEMPORAL_SHIELD_CONFIG``.
        overrides: Dotted ``[server]`` settings from the command line.
        worker: The supervisor's :class:`WorkerSpec` as JSON, in a worker process.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_log_redaction()
    spec = WorkerSpec.parse(worker) if worker is not None else None
    settings = spec.settings if spec is not None else overrides
    server, shield = load_server_config(config_path, overrides=settings)
    if spec is not None:
        server = worker_config(server, spec.index, spec.count)
        # OTLP tells streams apart by their resource: each worker needs its own.
        resource = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(
            filter(None, [resource, f"temporal_shield.worker={spec.index}"])
        )
        stdout = None
        if spec.stdout_lock >= 0:
            stdout = LineLockedStdout(spec.stdout_lock)
            lock_stderr_logging(spec.stdout_lock)
        app = create_app(
            server, shield, audit_stdout=stdout, metric_labels={"worker": str(spec.index)}
        )
        ssl_context = server_ssl_context(server.tls, app) if server.tls.dir else None
        metrics_port = server.metrics_port + spec.index if server.metrics_port else 0
        asyncio.run(_run(app, server, ssl_context, metrics_port=metrics_port, worker=spec))
        return 0
    count = worker_count(server.workers)
    if count > 1:
        return _supervise(config_path, overrides, server, count)
    app = create_app(server, shield)
    ssl_context = server_ssl_context(server.tls, app) if server.tls.dir else None
    asyncio.run(_run(app, server, ssl_context, metrics_port=server.metrics_port))
    return 0


def _supervise(
    config_path: str | None, overrides: Mapping[str, Any], server: ServerConfig, count: int
) -> int:
    """Start ``count`` workers on one port and supervise them; returns the exit status."""
    check_workers(server, count)
    with reserve_port(server.host, server.port) as held:
        port = int(held.getsockname()[1])
        audit = server.audit
        lock = stdout_lock() if audit.stdout or audit.checkpoint_stdout else -1
        settings = {**overrides, "port": port, "workers": count}

        def command(index: int, control: int) -> list[str]:
            spec = WorkerSpec(
                index=index, count=count, control=control, stdout_lock=lock, settings=settings
            )
            argv = [sys.executable, "-m", "temporal_shield", "serve"]
            argv += ["--worker", json.dumps(dataclasses.asdict(spec))]
            return argv + (["--config", config_path] if config_path is not None else [])

        log.info(
            "codec server on %s:%d: supervising %d workers (pid %d)",
            server.host,
            port,
            count,
            os.getpid(),
        )
        return Supervisor(
            command,
            count,
            pass_fds=(lock,) if lock >= 0 else (),
            worker_timeout=server.worker_timeout,
        ).run()


async def _run(
    app: web.Application,
    config: ServerConfig,
    ssl_context: ssl.SSLContext | None,
    *,
    metrics_port: int = 0,
    worker: WorkerSpec | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (or, in a worker, until the supervisor is gone).

    Our own loop rather than ``web.run_app``: the runner must be
    :class:`ShieldRunner` (JSON pre-routing errors, header limits).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = ShieldRunner(app, config, shutdown_timeout=SHUTDOWN_TIMEOUT)
    side: ShieldRunner | None = None
    try:
        # Inside: a startup that fails (sign-in discovery, say) still runs the
        # cleanup of what started, closing the audit log and releasing its lock.
        await runner.setup()
        site = web.TCPSite(
            runner,
            config.host,
            config.port,
            ssl_context=ssl_context,
            reuse_port=worker is not None,
        )
        await site.start()
        # The port actually bound: with ``port = 0`` the configured one says nothing.
        port = int(runner.addresses[0][1])
        if metrics_port:
            side = ShieldRunner(create_metrics_app(app), config, shutdown_timeout=1.0)
            await side.setup()
            await web.TCPSite(side, config.host, metrics_port, ssl_context=ssl_context).start()
        scheme = "https" if ssl_context else "http"
        name = f"worker {worker.index}" if worker else "codec server"
        host = f"[{config.host}]" if ":" in config.host else config.host
        log.info("%s listening on %s://%s:%d", name, scheme, host, port)
        if metrics_port:
            log.info("%s metrics on %s://%s:%d", name, scheme, host, metrics_port)
        if worker is not None:
            _report_to_supervisor(
                loop, worker.control, stop, heartbeat_interval(config.worker_timeout)
            )
        await stop.wait()
        log.info("%s shutting down", name)
    finally:
        if side is not None:
            await side.cleanup()
        await runner.cleanup()


def _report_to_supervisor(
    loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event, interval: float
) -> None:
    """Say ``ready`` and beat every ``interval`` s; stop when the supervisor is gone.

    The beats come from the event loop: a loop that is stuck stops beating, and
    the supervisor kills the worker. Stops gracefully when the supervisor's end
    closes (it died).
    """
    control = socket.socket(fileno=fd)
    control.setblocking(False)

    def gone() -> None:
        loop.remove_reader(control.fileno())
        log.error("supervisor gone; shutting down")
        stop.set()

    def readable() -> None:
        try:
            if control.recv(64):
                return  # the supervisor sends nothing today
        except BlockingIOError:
            return
        except OSError:
            pass
        gone()

    def beat() -> None:
        if stop.is_set():
            return
        try:
            control.send(b"alive\n")
        except BlockingIOError:
            pass  # the supervisor is behind on reading: the beat is not needed
        except OSError:
            return  # gone: readable() notices
        loop.call_later(interval, beat)

    try:
        control.send(b"ready\n")
    except OSError:
        stop.set()
        return
    loop.add_reader(control.fileno(), readable)
    loop.call_later(interval, beat)
