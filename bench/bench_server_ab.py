"""A/B of the codec server's cost per request at two commits, measured in one run.

Each commit's package is exported (``git archive``) into a temporary tree laid
out like the installed ``temporal_shield`` package; ``temporal-shield serve``
from each tree (everything on, as in :mod:`bench.bench_server`) is started in
alternating order, pinned to CPU 0, and loaded by ``wrk -t1 -c32`` on CPU 1
with one-payload ``/decode`` requests. Printed: requests/s and the server's CPU
µs per request for every run, their medians, and B's CPU per request over A's
per round (below 1: B is cheaper). Alternating starts put the machine's
changing load on both sides alike; only the ratio is comparable across runs.

    .venv/bin/python -m bench.bench_server_ab A_REV B_REV [--rounds 6] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import bench_server
from temporal_shield._devserver import free_port

ROOT = Path(__file__).resolve().parent.parent
# pyproject's package-dir: the top-level folders that make up temporal_shield.
SUBPACKAGES = ("codec", "converter", "server", "certs")


def export(rev: str, into: Path) -> Path:
    """``rev``'s package as an importable tree under ``into``; returns the PYTHONPATH entry."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "cli", *SUBPACKAGES],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    package = into / "temporal_shield"
    shutil.copytree(src / "cli", package)
    for name in SUBPACKAGES:
        shutil.copytree(src / name, package / name)
    return into


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("serve exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("serve did not start")


def main(a_rev: str, b_rev: str, rounds: int, duration: int) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        trees = {"A": export(a_rev, workdir / "A"), "B": export(b_rev, workdir / "B")}
        setup = bench_server.prepare(workdir)
        body = setup["bodies"][("shield", 1)]
        headers = {
            "Content-Type": "application/json",
            "X-Namespace": "default",
            "Authorization": f"Bearer {setup['token']}",
        }
        runs: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        print(f"A = {a_rev}, B = {b_rev}; {rounds} rounds of {duration} s each, alternating")
        for n in range(rounds):
            for side in ("A", "B") if n % 2 == 0 else ("B", "A"):
                port = free_port()
                env = {
                    **bench_server._shield_env("shield", workdir),
                    "PYTHONPATH": str(trees[side]),
                }
                command = [sys.executable, "-m", "temporal_shield", "serve", "--port", str(port)]
                proc = subprocess.Popen(
                    [*bench_server.SERVER_CPU, *command],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    _wait_listening(port, proc)
                    rps, cpu, _ = bench_server.wrk_peak(
                        f"http://127.0.0.1:{port}/decode", body, headers, duration, workdir, proc
                    )
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
                runs[side].append((rps, cpu))
                print(f"  {side} {rps:8.0f} requests/s {cpu:7.1f} µs CPU per request", flush=True)
        for side, values in runs.items():
            print(
                f"{side} median {statistics.median(r for r, _ in values):8.0f} requests/s "
                f"{statistics.median(c for _, c in values):7.1f} µs CPU per request"
            )
        ratios = [b[1] / a[1] for a, b in zip(runs["A"], runs["B"], strict=True)]
        print(
            "B ÷ A, CPU per request, per round: "
            + " ".join(f"{r:.3f}" for r in ratios)
            + f"; median {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a_rev", help="baseline commit (A)")
    ap.add_argument("b_rev", help="commit to compare (B)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating runs per side")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main(args.a_rev, args.b_rev, args.rounds, args.duration)
