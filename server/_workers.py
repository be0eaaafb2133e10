"""Several codec-server processes on one port: per-worker settings, stdout, supervisor.

Model: ``SO_REUSEPORT``. Every worker binds its own listening socket to the
same address with ``reuse_port=True`` and the kernel spreads new connections
over them by a hash of the connection's addresses. Chosen over a pre-forked
shared socket because:

* the Web UI, the CLI and proxies keep connections alive, so what must be even
  is the spread of *connections*; with one shared socket the asyncio worker
  that wakes first accepts a whole backlog at once (it accepts in a loop), and
  one process can end up with every connection of a burst;
* no thundering herd and no accept lock: each worker waits on its own queue;
* the parent never touches a listening socket, so it needs nothing of the
  server (no keys, no policy, no event loop state) and workers are plain
  ``exec``-ed interpreters that load everything themselves.

The price: connections still waiting in a worker's own accept queue when it
dies are reset (clients retry; the UI re-requests), and Linux lets only
processes of the same user join the port. The parent keeps the port bound
(never listening) so that it stays ours while a worker restarts.

Workers are started with ``exec`` (``python -m temporal_shield serve``), never
``fork``: a forked copy would inherit whatever threads, event loop or boto3
clients the parent had, and the parent is meant to hold none of them anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import io
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from temporal_shield.codec import ConfigError

from ._config import MAX_WORKERS, WORKER_TIMEOUT, ServerConfig

log = logging.getLogger("temporal_shield.server.workers")

STOP_TIMEOUT = 60.0
"""Seconds a worker gets after SIGTERM (in-flight requests, then the final
checkpoint, which may wait on KMS) before it is killed."""
BACKOFF_FIRST = 0.5
"""Seconds before the first restart of a worker that died."""
BACKOFF_MAX = 30.0
"""Longest wait between restarts (doubling from :data:`BACKOFF_FIRST`)."""
MAX_FAILURES = 6
"""Restarts in a row (each worker) after which the supervisor gives up."""
STABLE_AFTER = 30.0
"""Seconds a worker must have served for its next death to count as the first."""


def heartbeat_interval(worker_timeout: float) -> float:
    """How often a worker tells the supervisor it is alive: several beats per timeout."""
    return min(5.0, worker_timeout / 6)


def worker_count(configured: int) -> int:
    """``server.workers`` resolved: 0 means one per CPU this process may use.

    The CPU *affinity*, not the machine's count: a container pinned to some
    cores (a cpuset) sees only those. A CPU quota without a cpuset is not
    visible here; set the number explicitly then.
    """
    if configured > 0:
        return configured
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)) or 1)


def worker_audit_file(path: str, index: int) -> str:
    """Worker ``index``'s audit file: ``DIR/audit.jsonl`` → ``DIR/audit-w{index}.jsonl``."""
    file = Path(path)
    return str(file.with_name(f"{file.stem}-w{index}{file.suffix}"))


def worker_config(config: ServerConfig, index: int, count: int) -> ServerConfig:
    """The settings worker ``index`` of ``count`` runs with.

    One worker runs with ``config`` unchanged (its audit file and replica id
    stay). With several, each gets its own audit file and replica id (the
    same for the same index on every start, so each chain continues), and the
    budgets that protect the pod as a whole are divided between them: a
    caller's KMS unwraps per minute and burst, the decoded bytes in flight,
    the open connections and a person's grant requests per hour. A worker
    cannot see its siblings' spending, so an undivided budget would be
    ``count`` times the configured one per pod. Bursts are rounded down but
    kept at 1 or more when configured non-zero, and the bytes in flight never
    fall below twice ``max_body_bytes`` (what the largest request body holds;
    decoded bytes past a worker's share come back withheld).

    Raises:
        ConfigError: the derived replica id is invalid (too long).
    """
    if count == 1:
        return config
    audit = config.audit
    audit = dataclasses.replace(
        audit,
        file=worker_audit_file(audit.file, index) if audit.file else "",
        replica_id=f"{audit.replica_id}-w{index}",
    )
    burst = config.principal_unwrap_burst
    # Every worker must be able to hold the largest request it accepts (its
    # body twice: see SMALL_HOLD in the app), or such a request would be
    # refused as busy on an idle server; that floor can lift the pod's total.
    largest = 2 * config.max_body_bytes
    return dataclasses.replace(
        config,
        audit=audit,
        principal_unwraps_per_minute=config.principal_unwraps_per_minute / count,
        principal_unwrap_burst=max(1, burst // count) if burst else 0,
        max_decoded_bytes_in_flight=max(largest, config.max_decoded_bytes_in_flight // count),
        max_decoded_bytes_in_flight_per_caller=max(
            largest, config.max_decoded_bytes_in_flight_per_caller // count
        ),
        max_connections=max(1, config.max_connections // count),
        grants=dataclasses.replace(
            config.grants,
            requests_per_hour=config.grants.requests_per_hour / count,
            # Each worker counts what it started until a refresh lists it: a
            # share each keeps the pod's total at the setting between refreshes.
            max_open_requests=max(1, config.grants.max_open_requests // count),
        ),
    )


def check_workers(config: ServerConfig, count: int) -> None:
    """Refuse settings that several workers cannot honour (before starting any).

    Raises:
        ConfigError: no ``SO_REUSEPORT``, stdout as the only audit sink, an
            audit file that is a directory, metrics ports past 65535 or over
            the main port, or a derived replica id that is invalid.
    """
    if count == 1:
        return
    if not hasattr(socket, "SO_REUSEPORT") or not sys.platform.startswith("linux"):
        raise ConfigError("server.workers > 1 needs Linux (SO_REUSEPORT load balancing)")
    if config.audit.stdout and not config.audit.file:
        # Each worker writes a chain of its own; on one stream they interleave
        # (whole lines, see LineLockedStdout) and a record does not say whose
        # chain it belongs to, so `audit verify` could not check them.
        raise ConfigError(
            "audit.stdout as the only audit sink cannot be used with server.workers > 1: "
            "set audit.file (each worker writes its own file) or run one worker"
        )
    if config.audit.file and (
        config.audit.file.endswith(("/", os.sep)) or Path(config.audit.file).is_dir()
    ):
        # With one worker opening it fails; with several the per-worker names
        # (DIR-w0, ...) would land next to the directory, outside a mounted volume.
        raise ConfigError(f"audit.file {config.audit.file} is a directory: name a file in it")
    metrics = config.metrics_port
    if metrics and metrics + count - 1 > 65535:
        raise ConfigError(
            f"server.metrics_port {metrics} + {count - 1} (one port per worker) is over 65535"
        )
    if metrics and config.port and metrics <= config.port < metrics + count:
        raise ConfigError(
            f"server.port {config.port} is one of the workers' metrics ports "
            f"({metrics}-{metrics + count - 1})"
        )
    for index in range(count):
        worker_config(config, index, count)


class LineLockedStdout(io.TextIOBase):
    """Standard output shared by workers: every flush is whole lines, never mixed.

    (Their standard error too, through :func:`lock_stderr_logging`: it may be
    the same stream.)

    A pipe takes writes of up to ``PIPE_BUF`` (4 KiB) in one piece, but audit
    batches and checkpoints can be longer, and a terminal or file takes no
    such promise at all. So each flush takes an exclusive ``flock`` on a lock
    file shared by the workers (released by the kernel if the holder dies,
    unlike a semaphore) and writes everything before releasing it. The lock
    file's first byte is ``1`` while a write is under way: a worker killed
    mid-write leaves it set, and the next writer first ends the torn line
    with a newline so that its own records stay parseable.

    Callers write whole lines and then flush (the audit log and the checkpoint
    sink both do).
    """

    def __init__(
        self, lock_fd: int, fd: int = 1, *, errors: str = "strict", line_buffered: bool = False
    ) -> None:
        """Open the lock (inherited ``lock_fd``) as a description of our own.

        ``flock`` excludes other *open file descriptions*; the inherited
        descriptor is shared with the siblings, so it is reopened.

        Args:
            lock_fd: The inherited lock file.
            fd: The descriptor written to.
            errors: How text that is not UTF-8 (lone surrogates) is encoded.
            line_buffered: Flush on every write that ends a line (for
                writers that never flush, like ``print``), not only on
                :meth:`flush`.
        """
        super().__init__()
        self._lock = os.open(f"/proc/self/fd/{lock_fd}", os.O_RDWR | os.O_CLOEXEC)
        self._fd = fd
        self._errors = errors
        self._line_buffered = line_buffered
        self._pending: list[bytes] = []

    def writable(self) -> bool:
        """See base class."""
        return True

    def write(self, text: str) -> int:
        """Buffer ``text`` until :meth:`flush` (or the end of a line, if line buffered)."""
        self._pending.append(text.encode("utf-8", self._errors))
        if self._line_buffered and text.endswith("\n"):
            self.flush()
        return len(text)

    def flush(self) -> None:
        """Write what is buffered in one locked run (raises ``OSError`` on failure)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            if os.pread(self._lock, 1, 0) == b"1":
                data = b"\n" + data
            os.pwrite(self._lock, b"1", 0)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.pwrite(self._lock, b"0", 0)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file."""
        if not self.closed:
            os.close(self._lock)
        super().close()


def lock_stderr_logging(lock_fd: int) -> None:
    """Send what this worker writes to stderr through the stdout line lock.

    With ``2>&1`` (a shell, systemd, ``| logger``) standard error is the same
    stream as the audit copy on standard output: an unlocked line (a log line,
    an error message, a traceback) could land in the middle of a locked audit
    batch longer than ``PIPE_BUF``. Replaces ``sys.stderr`` and the log
    handlers' stream with one that writes each complete line under the lock.

    Workers only: the supervisor never takes the lock, so that a worker stuck
    on a full stdout pipe while holding it cannot stop the supervisor from
    killing it.
    """
    locked = LineLockedStdout(lock_fd, 2, errors="backslashreplace", line_buffered=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setStream(locked)
    sys.stderr = locked


def stdout_lock() -> int:
    """A lock file for :class:`LineLockedStdout`: anonymous, inherited by the workers."""
    fd = os.memfd_create("temporal-shield-stdout-lock")
    os.set_inheritable(fd, True)
    return fd


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen on) ``host:port`` with ``SO_REUSEPORT``; resolves port 0.

    The parent holds it for its lifetime: the workers join the port, and no
    other program can take it while a worker restarts. A socket that does not
    listen receives no connections.

    Raises:
        ConfigError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


Command = Callable[[int, int], Sequence[str]]
"""``(worker index, control descriptor)`` → the worker's command line."""


@dataclasses.dataclass
class _Slot:
    index: int
    failures: int = 0
    process: asyncio.subprocess.Process | None = None
    ever_ready: bool = False
    """Whether a worker in this slot ever served: then a failed restart is a crash
    to retry (a port taken meanwhile, a file briefly held), not a configuration
    error."""


class Supervisor:
    """Starts ``count`` workers, restarts those that die, stops them all on SIGTERM.

    Each worker gets one end of a socket pair (its *control* descriptor): it
    writes ``ready`` once it listens, and it shuts down gracefully when the
    other end closes, so the workers of a killed parent stop accepting and exit
    once their in-flight requests are done.

    Exit status of :meth:`run`: 0 after a requested stop in which every
    worker exited cleanly; 2 when the first worker of a slot fails before it
    is ready with status 2 (a configuration error: restarting cannot help), or
    when a worker dies :data:`MAX_FAILURES` times in a row (a restart that
    fails to start counts as a death); 1 when a worker did not exit cleanly
    on stop.
    """

    def __init__(
        self,
        command: Command,
        count: int,
        *,
        pass_fds: Sequence[int] = (),
        stop_timeout: float = STOP_TIMEOUT,
        worker_timeout: float = WORKER_TIMEOUT,
    ) -> None:
        """Prepare ``count`` slots; nothing starts before :meth:`run`.

        Args:
            command: Builds worker ``k``'s command line.
            count: Number of workers.
            pass_fds: Descriptors every worker inherits (besides its control socket).
            stop_timeout: Seconds between SIGTERM and SIGKILL on stop.
            worker_timeout: Seconds a ready worker may go without a heartbeat
                (see :func:`heartbeat_interval`) before it is killed.
        """
        self._command = command
        self._pass_fds = tuple(pass_fds)
        self._slots = [_Slot(k) for k in range(count)]
        self._stop_timeout = stop_timeout
        self._worker_timeout = worker_timeout
        self._stop = asyncio.Event()
        self._fatal = ""
        self._unclean = False

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT or a fatal failure; returns the exit status."""
        return asyncio.run(self._run())

    async def _run(self) -> int:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await asyncio.gather(*(self._keep(slot) for slot in self._slots))
        if self._fatal:
            print(f"temporal-shield: error: {self._fatal}", file=sys.stderr)
            return 2
        return 1 if self._unclean else 0

    def _give_up(self, reason: str) -> None:
        if not self._fatal:
            self._fatal = reason
        self._stop.set()

    async def _keep(self, slot: _Slot) -> None:
        """Run one worker slot until stop: start, wait, restart with backoff."""
        while not self._stop.is_set():
            started = time.monotonic()
            ready, status = await self._run_once(slot)
            if self._stop.is_set():
                # Stopped while still starting: killed by the signal, or 130 (SIGINT).
                clean = status in (0, 130, -signal.SIGTERM, -signal.SIGINT)
                self._unclean = self._unclean or not clean
                return
            slot.ever_ready = slot.ever_ready or ready
            if not slot.ever_ready and status == 2:
                self._give_up(f"worker {slot.index} could not start (see its message above)")
                return
            if ready and time.monotonic() - started >= STABLE_AFTER:
                slot.failures = 0
            slot.failures += 1
            if slot.failures >= MAX_FAILURES:
                self._give_up(
                    f"worker {slot.index} died {slot.failures} times in a row "
                    f"(last status {status}); giving up"
                )
                return
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1))
            log.error(
                "worker %d exited with status %s; restarting in %.1f s",
                slot.index,
                status,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self, slot: _Slot) -> tuple[bool, int]:
        """Start the worker and wait for its exit (stopping it on request).

        Returns:
            (whether it said it was ready, its exit status; negative = signal)
        """
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(slot.index, theirs.fileno()),
                pass_fds=(theirs.fileno(), *self._pass_fds),
            )
        finally:
            theirs.close()
        slot.process = process
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        ready = loop.create_task(loop.sock_recv(ours, 64))
        exited = loop.create_task(process.wait())
        stop = loop.create_task(self._stop.wait())
        watch: asyncio.Task[None] | None = None
        said_ready = False
        try:
            done, _ = await asyncio.wait({ready, exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done and not ready.exception() and ready.result().startswith(b"ready"):
                said_ready = True
                log.info("worker %d (pid %d) ready", slot.index, process.pid)
                watch = loop.create_task(self._watch(slot.index, ours, process))
            if not exited.done() and not self._stop.is_set():
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if watch is not None:
                watch.cancel()  # stopping (however long it takes) is not hanging
            if not exited.done():
                await self._terminate(slot.index, process, exited)
            return said_ready, exited.result()
        finally:
            for task in (ready, stop, watch):
                if task is not None:
                    task.cancel()
            ours.close()
            slot.process = None

    async def _watch(
        self, index: int, ours: socket.socket, process: asyncio.subprocess.Process
    ) -> None:
        """Kill a ready worker whose heartbeats stop: its event loop is stuck.

        The kernel keeps giving a stuck worker its share of new connections,
        and its health endpoints answer no one; an exit is all the supervisor
        would otherwise see. Killed, it is restarted like any worker that died.
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                beat = await asyncio.wait_for(loop.sock_recv(ours, 64), self._worker_timeout)
            except TimeoutError:
                log.error(
                    "worker %d (pid %d) sent no heartbeat for %.0f s (its event loop is "
                    "stuck); killing it",
                    index,
                    process.pid,
                    self._worker_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                return
            except OSError:
                return
            if not beat:
                return  # its end closed: it is exiting

    async def _terminate(
        self, index: int, process: asyncio.subprocess.Process, exited: asyncio.Task[int]
    ) -> None:
        """SIGTERM (graceful: in-flight requests, final checkpoint), then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._stop_timeout)
        except TimeoutError:
            log.error("worker %d did not stop in %.0f s; killing it", index, self._stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await exited
