"""`temporal-shield serve --workers N`: one port, a chain per worker, restarts, shutdown."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from temporal_shield._devserver import free_port
from temporal_shield.codec import ConfigError, Keyring
from temporal_shield.server import AuditConfig, ServerConfig
from temporal_shield.server._workers import (
    LineLockedStdout,
    check_workers,
    stdout_lock,
    worker_audit_file,
    worker_config,
    worker_count,
)

DEV = ServerConfig(insecure_dev=True)
CLI = [sys.executable, "-m", "temporal_shield"]
SERVE = [*CLI, "serve"]


def test_one_worker_keeps_its_settings() -> None:
    config = replace(DEV, audit=AuditConfig(file="/var/log/ts/audit.jsonl", replica_id="pod-0"))
    assert worker_config(config, 0, 1) is config


def test_each_worker_gets_its_own_file_replica_and_share_of_the_budgets() -> None:
    config = replace(
        DEV,
        audit=AuditConfig(file="/var/log/ts/audit.jsonl", replica_id="pod-0"),
        principal_unwraps_per_minute=120.0,
        principal_unwrap_burst=3,
        max_decoded_bytes_in_flight=1000,
    )
    second = worker_config(config, 1, 2)
    assert second.audit.file == "/var/log/ts/audit-w1.jsonl"
    assert second.audit.replica_id == "pod-0-w1"
    assert second.principal_unwraps_per_minute == 60.0
    assert second.principal_unwrap_burst == 1
    # Never below what the largest request holds (its body twice).
    assert second.max_decoded_bytes_in_flight == 2 * config.max_body_bytes
    per_caller = config.max_decoded_bytes_in_flight_per_caller
    assert second.max_decoded_bytes_in_flight_per_caller == max(
        2 * config.max_body_bytes, per_caller // 2
    )
    tight = replace(config, max_decoded_bytes_in_flight_per_caller=config.max_body_bytes)
    assert (
        worker_config(tight, 0, 8).max_decoded_bytes_in_flight_per_caller
        == 2 * config.max_body_bytes
    )
    assert second.max_connections == config.max_connections // 2
    assert second.grants.requests_per_hour == config.grants.requests_per_hour / 2
    assert second.grants.max_open_requests == config.grants.max_open_requests // 2
    assert worker_config(config, 0, 8).grants.max_open_requests == 1  # at least one
    roomy = replace(config, max_decoded_bytes_in_flight=1 << 30, max_body_bytes=1 << 20)
    assert worker_config(roomy, 0, 4).max_decoded_bytes_in_flight == 1 << 28
    assert worker_config(config, 1, 2) == second  # the same slot, the same file, every start
    no_burst = replace(config, principal_unwrap_burst=0)
    assert worker_config(no_burst, 0, 4).principal_unwrap_burst == 0
    assert worker_audit_file("/logs/audit", 3) == "/logs/audit-w3"


def test_settings_several_workers_cannot_honour_are_refused() -> None:
    stdout_only = replace(DEV, audit=AuditConfig(stdout=True))
    check_workers(stdout_only, 1)
    with pytest.raises(ConfigError, match="only audit sink"):
        check_workers(stdout_only, 2)
    long_id = replace(DEV, audit=AuditConfig(file="a.jsonl", replica_id="r" * 127))
    with pytest.raises(ConfigError, match="replica_id"):
        check_workers(long_id, 2)
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3


def test_worker_counts_and_ports_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        ServerConfig(insecure_dev=True, workers=257)
    with pytest.raises(ConfigError, match=r"server\.workers"):
        ServerConfig(insecure_dev=True, workers=-1)
    high = replace(DEV, metrics_port=65535)
    check_workers(high, 1)
    with pytest.raises(ConfigError, match="over 65535"):
        check_workers(high, 2)
    overlap = replace(DEV, port=9091, metrics_port=9090)
    with pytest.raises(ConfigError, match="metrics ports"):
        check_workers(overlap, 2)
    check_workers(replace(DEV, port=9092, metrics_port=9090), 2)
    for directory in (str(tmp_path), f"{tmp_path}/logs/"):
        with pytest.raises(ConfigError, match="is a directory"):
            check_workers(replace(DEV, audit=AuditConfig(file=directory)), 2)


_WRITER = """
import os, sys
from temporal_shield.server._workers import LineLockedStdout
out = LineLockedStdout(int(sys.argv[1]))
tag = sys.argv[2]
for i in range(40):
    out.write('{"w": "%s", "i": %d, "pad": "%s"}\\n' % (tag, i, tag * 70000))
    out.flush()
"""


def _into_one_pipe(script: str, tags: Sequence[str], *, stderr: bool = False) -> list[bytes]:
    """Lines that processes running ``script`` (one per tag, sharing one stdout
    lock) wrote into one pipe (their stderr too, if ``stderr``), read slowly.

    A slow reader (a log shipper) makes writers block mid-line on a full pipe,
    which is when another process's line can land inside one.
    """
    lock = stdout_lock()
    try:
        read_end, write_end = os.pipe()
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(lock), tag],
                stdout=write_end,
                stderr=write_end if stderr else None,
                pass_fds=(lock,),
            )
            for tag in tags
        ]
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
            time.sleep(0.0002)
        os.close(read_end)
        assert [w.wait(60) for w in writers] == [0] * len(tags)
    finally:
        os.close(lock)
    return b"".join(chunks).splitlines()


def test_stdout_lines_of_several_processes_never_mix(tmp_path: Path) -> None:
    """Lines far over PIPE_BUF, from three processes into one pipe, each stays whole."""
    records = [json.loads(line) for line in _into_one_pipe(_WRITER, "abc")]
    assert sorted((r["w"], r["i"]) for r in records) == [(t, i) for t in "abc" for i in range(40)]


def test_a_line_torn_by_a_killed_writer_is_ended_before_the_next(tmp_path: Path) -> None:
    lock = stdout_lock()
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b'{"torn": ')
        os.pwrite(lock, b"1", 0)  # what a writer killed mid-write leaves
        out = LineLockedStdout(lock, fd)
        out.write('{"whole": 1}\n')
        out.flush()
        out.close()
    finally:
        os.close(fd)
        os.close(lock)
    assert target.read_bytes().splitlines()[-1] == b'{"whole": 1}'


# -- the real command --------------------------------------------------------------------


def _get(
    port: int, path: str, context: ssl.SSLContext | None = None
) -> tuple[int, str, dict[str, str]]:
    scheme = "https" if context else "http"
    try:
        with urllib.request.urlopen(  # noqa: S310 - http(s) to 127.0.0.1 only
            f"{scheme}://127.0.0.1:{port}{path}", timeout=5, context=context
        ) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _decode(port: int) -> str:
    """One /decode on a new connection; returns the answering worker's id prefix."""
    with urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{port}/decode",
            data=b'{"payloads": []}',
            headers={"Content-Type": "application/json", "X-Namespace": "default"},
        ),
        timeout=5,
    ) as resp:
        assert resp.status == 200
        return str(resp.headers["X-Request-Id"])[:16]


def _free_pair(avoid: int) -> int:
    """A port ``p`` with ``p`` and ``p + 1`` both free now (a worker's metrics port each)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            base = int(first.getsockname()[1])
            if avoid in (base, base + 1):
                continue
            try:
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no two adjacent free ports")


def _wait_ready(
    port: int,
    proc: subprocess.Popen[bytes],
    log: Path | None = None,
    context: ssl.SSLContext | None = None,
) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            said = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"supervisor exited with {proc.returncode}:\n{said}")
        try:
            if _get(port, "/readyz", context)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"port {port} never ready")


def _prefixes_until(port: int, wanted: int, seen: set[str] | None = None) -> set[str]:
    """Request ids' prefixes over new connections until ``wanted`` distinct ones showed."""
    seen = set() if seen is None else seen
    for _ in range(500):
        seen.add(_decode(port))
        if len(seen) >= wanted:
            return seen
    raise AssertionError(f"only {len(seen)} workers answered")


def _worker_pids(supervisor: int) -> dict[int, int]:
    """Worker index → pid, from the supervisor's children."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    found = {}
    for pid in map(int, children):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"--worker" in argv:
            found[json.loads(argv[argv.index(b"--worker") + 1])["index"]] = pid
    return found


@dataclass
class _Served:
    """A running ``serve --insecure-dev --workers 2`` (see :func:`_two_workers`)."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics: int
    argv: list[str]
    env: dict[str, str]


@contextlib.contextmanager
def _two_workers(
    tmp_path: Path,
    settings: dict[str, str],
    *,
    stdout: int | None = None,
    context: ssl.SSLContext | None = None,
) -> Iterator[_Served]:
    """Both workers ready (on their metrics ports), then stopped whatever happens.

    ``settings``: ``TEMPORAL_SHIELD_*`` variables besides a fresh keyring and
    two workers. The serve log (stderr, and stdout unless ``stdout`` is given)
    is ``tmp_path / "serve.log"``.
    """
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    port = free_port()
    metrics = _free_pair(avoid=port)
    env = {
        **os.environ,
        "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}",
        "TEMPORAL_SHIELD_SERVER_WORKERS": "2",
        **settings,
    }
    argv = [*SERVE, "--insecure-dev", "--port", str(port)]
    path = tmp_path / "serve.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--metrics-port", str(metrics)],
            stdout=log if stdout is None else stdout,
            stderr=log,
            env=env,
        )
        try:
            for k in (0, 1):
                _wait_ready(metrics + k, proc, path, context)
            yield _Served(proc, port, metrics, argv, env)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_replaced(proc: subprocess.Popen[bytes], old: int, failure: str) -> None:
    """Until worker 1 runs as a process other than ``old`` (30 s), else ``failure``."""
    for _ in range(300):
        if _worker_pids(proc.pid).get(1) not in (None, old):
            return
        time.sleep(0.1)
    raise AssertionError(failure)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: every worker finishes and the supervisor exits 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0


def test_metrics_ports_speak_the_servers_tls(tmp_path: Path) -> None:
    """As docs/server.md says: with server.tls, /metrics is https with the server's CA."""
    from temporal_shield.certs import SERVER_AUTH, issue, make_ca, write_secret

    ca = make_ca()
    pki = tmp_path / "codec"
    write_secret(pki, issue(ca, dns_names=["localhost"], usages=[SERVER_AUTH]), ca.cert)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.check_hostname = False  # 127.0.0.1 against "localhost": the CA is what counts
    settings = {"TEMPORAL_SHIELD_SERVER_TLS_DIR": str(pki)}
    with _two_workers(tmp_path, settings, context=context) as served:
        for k in (0, 1):
            status, body, _ = _get(served.metrics + k, "/metrics", context)
            assert status == 200
            assert f'worker="{k}"' in body
            with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
                _get(served.metrics + k, "/metrics")  # no plain http beside it
        _stop(served.proc)


def test_two_workers_one_port_own_chains_restart_and_graceful_stop(tmp_path: Path) -> None:
    keys = tmp_path / "signing"
    subprocess.run(
        [*CLI, "audit", "keygen", "--out", str(keys)],
        check=True,
        capture_output=True,
    )
    private, public = keys / "audit-signing.key", keys / "audit-signing.pub"
    logs = tmp_path / "logs"
    settings = {
        "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(logs / "audit.jsonl"),
        "TEMPORAL_SHIELD_SERVER_AUDIT_REPLICA_ID": "pod-0",
        "TEMPORAL_SHIELD_SERVER_AUDIT_SIGNING_KEY": f"ed25519://{private}",
    }
    with _two_workers(tmp_path, settings) as served:
        proc, port, metrics = served.proc, served.port, served.metrics
        before = _prefixes_until(port, 2)  # both workers answer on the one port
        for k in (0, 1):
            status, body, _ = _get(metrics + k, "/metrics")
            assert status == 200
            assert f'worker="{k}"' in body
            assert _get(metrics + k, "/decode")[0] == 405  # no codec routes

        first = _worker_pids(proc.pid)
        assert sorted(first) == [0, 1]
        os.kill(first[1], signal.SIGKILL)
        for _ in range(300):
            now = _worker_pids(proc.pid)
            if now.get(1) not in (None, first[1]):
                break
            time.sleep(0.1)
        _wait_ready(metrics + 1, proc)
        _prefixes_until(port, 3, set(before))  # the new worker 1 serves too
        _stop(proc)
    assert sorted(p.name for p in logs.iterdir()) == ["audit-w0.jsonl", "audit-w1.jsonl"]
    second = [json.loads(line) for line in (logs / "audit-w1.jsonl").read_text().splitlines()]
    # Worker 1's chain spans both of its processes and ends with a signed checkpoint.
    assert len({r["request_id"][:16] for r in second if "request_id" in r}) == 2
    assert second[-1]["type"] == "checkpoint"
    assert second[-1]["replica"] == "pod-0-w1"
    files = [str(logs / "audit-w0.jsonl"), str(logs / "audit-w1.jsonl")]
    verify = subprocess.run(
        [*CLI, "audit", "verify", "--public-key", str(public), *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_second_server_on_the_same_audit_files_is_refused(tmp_path: Path) -> None:
    # SO_REUSEPORT lets a second `serve` of the same user join the port; with the
    # same audit.file its workers would fork both chains (an outside review did).
    logs = tmp_path / "logs"
    settings = {
        "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(logs / "audit.jsonl"),
        "TEMPORAL_SHIELD_SERVER_AUDIT_LOCK_WAIT": "0",
    }
    with _two_workers(tmp_path, settings) as first:
        _prefixes_until(first.port, 2)
        second = subprocess.run(
            first.argv, capture_output=True, text=True, env=first.env, timeout=120, check=False
        )
        assert second.returncode == 2
        assert "being written by another process" in second.stderr
        _prefixes_until(first.port, 2)  # the first server still serves, on both workers
        _stop(first.proc)
    files = sorted(str(path) for path in logs.iterdir())
    assert [Path(f).name for f in files] == ["audit-w0.jsonl", "audit-w1.jsonl"]
    verify = subprocess.run(
        [*CLI, "audit", "verify", *files], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_supervisor_never_waits_for_the_stdout_lock(tmp_path: Path) -> None:
    # A worker blocked on a full stdout pipe holds the lock; the supervisor must
    # still log, restart and kill (its log lines once waited on that lock).
    settings = {
        "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(tmp_path / "audit.jsonl"),
        "TEMPORAL_SHIELD_SERVER_AUDIT_STDOUT": "1",
    }
    with _two_workers(tmp_path, settings, stdout=subprocess.DEVNULL) as served:
        proc = served.proc
        fds = Path(f"/proc/{proc.pid}/fd")
        lock_fd = next(f for f in fds.iterdir() if "stdout-lock" in os.readlink(f))
        held = os.open(lock_fd, os.O_RDWR)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)  # as a worker stuck mid-write would
            first = _worker_pids(proc.pid)
            os.kill(first[1], signal.SIGKILL)
            _wait_replaced(proc, first[1], "the supervisor did not restart worker 1")
        finally:
            os.close(held)
        _stop(proc)


def test_a_worker_whose_event_loop_is_stuck_is_killed_and_restarted(tmp_path: Path) -> None:
    settings = {
        "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(tmp_path / "audit.jsonl"),
        "TEMPORAL_SHIELD_SERVER_WORKER_TIMEOUT": "3",
    }
    with _two_workers(tmp_path, settings) as served:
        proc = served.proc
        first = _worker_pids(proc.pid)
        time.sleep(4)  # longer than the timeout: healthy workers beat and stay
        assert _worker_pids(proc.pid) == first
        os.kill(first[1], signal.SIGSTOP)  # stuck: no beat, no request answered
        _wait_replaced(proc, first[1], "the stuck worker was not replaced")
        _wait_ready(served.metrics + 1, proc)
        assert _worker_pids(proc.pid)[0] == first[0]  # the other worker is untouched
        _prefixes_until(served.port, 2)
        _stop(proc)
    said = (tmp_path / "serve.log").read_text()
    assert f"worker 1 (pid {first[1]}) sent no heartbeat for 3 s" in said


_BEATING = """
import socket, sys, time
control = socket.socket(fileno={control})
control.send(b"ready")
for _ in range(15):
    time.sleep(0.1)
    control.send(b"alive")
raise SystemExit(3)
"""
_SILENT = """
import socket, time
control = socket.socket(fileno={control})
control.send(b"ready")
time.sleep(60)
"""


@pytest.mark.parametrize("beats", [True, False])
def test_heartbeats_keep_a_worker_alive_and_their_absence_gets_it_killed(
    beats: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from temporal_shield.server import _workers

    monkeypatch.setattr(_workers, "BACKOFF_FIRST", 0.01)

    def command(index: int, control: int) -> list[str]:
        return [sys.executable, "-c", (_BEATING if beats else _SILENT).format(control=control)]

    started = time.monotonic()
    # A beating worker gets a timeout far above its 0.1 s beats (a loaded machine
    # must not make it look stuck); a silent one a short one, to keep this quick.
    timeout = 3.0 if beats else 0.5
    assert _workers.Supervisor(command, 1, worker_timeout=timeout).run() == 2
    err = capsys.readouterr().err
    assert "died 6 times in a row" in err
    logged = caplog.text
    assert logged.count("restarting in") == _workers.MAX_FAILURES - 1
    if beats:
        # Beating every 0.1 s for 1.5 s, then exiting 3: never taken for stuck.
        assert "sent no heartbeat" not in logged
        assert "last status 3" in err
    else:
        assert logged.count("sent no heartbeat for 0 s") == _workers.MAX_FAILURES
        assert "last status -9" in err
        assert time.monotonic() - started < 60  # killed, not waited for


def _serve_two_workers(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, "--insecure-dev", "--workers", "2", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def test_a_worker_that_cannot_start_stops_the_supervisor_with_2(tmp_path: Path) -> None:
    out = _serve_two_workers({"TEMPORAL_SHIELD_KEYS_URI": f"local://{tmp_path / 'missing.json'}"})
    assert out.returncode == 2
    assert "could not start" in out.stderr


def test_stdout_as_the_only_audit_sink_is_refused_with_workers(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    out = _serve_two_workers(
        {"TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}", "TEMPORAL_SHIELD_SERVER_AUDIT_STDOUT": "1"}
    )
    assert out.returncode == 2
    assert "only audit sink" in out.stderr


_LOGGER = """
import logging, sys, time
from temporal_shield.server._workers import LineLockedStdout, lock_stderr_logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
lock = int(sys.argv[1])
lock_stderr_logging(lock)
out = LineLockedStdout(lock)
tag = sys.argv[2]
for i in range(40):
    if tag == "log":  # a worker that only logs (refused connections, say), throughout
        for j in range(50):
            logging.warning("log line %s %d %s", tag, i * 50 + j, "x" * 200)
            # An error message or a traceback: written to sys.stderr, not logged.
            print("print line %d %s" % (i * 50 + j, "y" * 200), file=sys.stderr)
            time.sleep(0.0005)
        logging.warning("a file name that is not UTF-8: %s", "/etc/tls-\\udcff")
    else:
        out.write('{"w": "%s", "i": %d, "pad": "%s"}\\n' % (tag, i, tag * 70000))
        out.flush()
"""


def test_log_lines_on_stderr_never_tear_audit_lines_on_a_shared_stream() -> None:
    """``2>&1``: the workers' log lines and the stdout audit copy share one pipe."""
    lines = _into_one_pipe(_LOGGER, ("a", "b", "log"), stderr=True)
    logs = [line for line in lines if line.startswith(b"WARNING log line ")]
    prints = [line for line in lines if line.startswith(b"print line ")]
    records = [json.loads(line) for line in lines if line.startswith(b"{")]
    assert len(logs) == 2000
    assert all(line.endswith(b"x" * 200) for line in logs)
    assert len(prints) == 2000
    assert all(line.endswith(b"y" * 200) for line in prints)
    assert lines.count(b"WARNING a file name that is not UTF-8: /etc/tls-\\udcff") == 40
    assert len(lines) == len(logs) + len(prints) + len(records) + 40
    assert sorted((r["w"], r["i"]) for r in records) == [(t, i) for t in "ab" for i in range(40)]


_READY_THEN_CRASH = (
    "import socket; socket.socket(fileno={control}).send(b'ready'); raise SystemExit(3)"
)


@pytest.mark.parametrize(
    "restart",
    [
        # Says it is ready, then crashes: a restart is worth trying, up to a point.
        _READY_THEN_CRASH,
        # Served once, then fails to start (its metrics port taken while it was
        # down, say): retried like a crash, not taken for a configuration error.
        "raise SystemExit(2)",
    ],
)
def test_workers_that_keep_dying_make_the_supervisor_give_up(
    restart: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from temporal_shield.server import _workers

    monkeypatch.setattr(_workers, "BACKOFF_FIRST", 0.01)
    started: list[int] = []

    def command(index: int, control: int) -> list[str]:
        started.append(index)
        code = _READY_THEN_CRASH if len(started) == 1 else restart
        return [sys.executable, "-c", code.format(control=control)]

    assert _workers.Supervisor(command, 1).run() == 2
    assert len(started) == _workers.MAX_FAILURES
    err = capsys.readouterr().err
    assert "could not start" not in err
    assert "died 6 times in a row" in err
