"""`pip install .` must put only `temporal_shield` into site-packages (GUIDE §2)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_only_the_temporal_shield_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("temporal_shield-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"temporal_shield"}
    for package in ("codec", "converter", "server", "certs"):
        assert f"temporal_shield/{package}/__init__.py" in names
        assert f"temporal_shield/{package}/py.typed" in names
    assert "temporal_shield/py.typed" in names
    assert "temporal_shield/_main.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert b"temporal-shield = temporal_shield._main:entry" in zipfile.ZipFile(wheel).read(
        entry_points
    )
