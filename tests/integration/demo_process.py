"""`temporal-shield demo` as a person starts it: a process, and what it printed until it waits."""

from __future__ import annotations

import subprocess
import sys
import time


def start_demo(timeout: float = 150.0) -> tuple[subprocess.Popen[str], str]:
    """Start the demo; return it and its output up to "Press Ctrl-C" (or ``timeout``).

    The caller stops it (``tests.helpers.stop_process``), also when this output
    shows that it failed.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "temporal_shield", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    return proc, "".join(lines)
