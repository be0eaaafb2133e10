"""Install size and import time per extra, against temporalio alone.

Each variant is installed with pip into a fresh virtual environment (the wheel
built from this checkout, dependencies from the package index or pip's cache):

* ``temporalio``     — the SDK alone, the baseline a worker image has anyway;
* ``default``        — ``temporal-shield``: what a worker with a local keyring needs;
* ``aws``            — ``temporal-shield[aws]``: KMS keys and S3 offload;
* ``server``         — ``temporal-shield[server]``: the codec server;
* ``aws,server``     — the codec server with KMS keys (deploy/'s image).

Size: every file under the environment's site-packages except pip and setuptools
(the venv's installer). Import time: a fresh interpreter imports what that
install is for — the SDK's client and worker; plus ``temporal_shield.converter``
(a worker's hot path); plus ``boto3`` as a KMS worker does when it builds its
client; ``temporal_shield.server`` for the server — measured inside the
interpreter with ``perf_counter`` around the imports, median of ``--runs``
interpreters, interleaved across variants so that machine noise falls on all.

    .venv/bin/python -m bench.bench_install [--runs 9] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT, build_wheel, make_venv, site_packages_bytes

SDK = "temporalio.client, temporalio.worker"


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    extras: str | None  # None: temporalio alone
    imports: str


VARIANTS = (
    Variant(name="temporalio", extras=None, imports=SDK),
    Variant(name="default", extras="", imports=f"{SDK}, temporal_shield.converter"),
    Variant(name="aws", extras="aws", imports=f"{SDK}, temporal_shield.converter, boto3"),
    Variant(name="server", extras="server", imports=f"{SDK}, temporal_shield.server"),
    Variant(
        name="aws,server",
        extras="aws,server",
        imports=f"{SDK}, temporal_shield.server, boto3",
    ),
)

_PROBE = "import time\nt = time.perf_counter()\nimport {imports}\nprint(time.perf_counter() - t)\n"


def _dependencies() -> list[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(meta["project"]["dependencies"])


def import_seconds(bin_dir: Path, imports: str) -> float:
    out = subprocess.run(
        [str(bin_dir / "python"), "-c", _PROBE.format(imports=imports)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="interpreters per variant (median)")
    ap.add_argument("--keep", type=Path, help="build the environments here and keep them")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        root = args.keep or Path(tmp)
        wheel = build_wheel(root / "wheel")
        # The same temporalio requirement as ours, so both resolve to one version.
        temporalio = next(r for r in _dependencies() if r.startswith("temporalio"))
        envs: dict[str, Path] = {}
        for v in VARIANTS:
            requirement = (
                temporalio
                if v.extras is None
                else f"temporal-shield[{v.extras}] @ {wheel.as_uri()}"
                if v.extras
                else str(wheel)
            )
            envs[v.name] = make_venv(root / v.name.replace(",", "-"), requirement)
        sizes = {v.name: site_packages_bytes(envs[v.name].parent) for v in VARIANTS}
        times: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
        for _ in range(args.runs):
            for v in VARIANTS:
                times[v.name].append(import_seconds(envs[v.name], v.imports))
    base_mb = sizes["temporalio"] / 2**20
    base_s = statistics.median(times["temporalio"])
    print(
        f"{'install':<12} {'site-packages':>14} {'÷ temporalio':>13} {'import':>9} {'÷ temporalio':>13}"
    )
    for v in VARIANTS:
        mb = sizes[v.name] / 2**20
        s = statistics.median(times[v.name])
        print(
            f"{v.name:<12} {mb:>11.1f} MB {mb / base_mb:>12.2f}x {s * 1000:>6.0f} ms {s / base_s:>12.2f}x"
        )
    print(
        f"(median of {args.runs} fresh interpreters per variant; imports: see the module docstring)"
    )


if __name__ == "__main__":
    main()
