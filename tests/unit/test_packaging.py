"""`pip install .` must put only `temporal_shield` into site-packages (GUIDE §2)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from ..helpers import build_wheel, make_venv

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_only_the_temporal_shield_namespace(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
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


# --- The lean worker (issue 12 §4): extras, lazy imports, one-line errors ------------

OPTIONAL = ("boto3", "botocore", "s3transfer", "aiohttp", "jwt", "opentelemetry", "msgspec", "yaml")

_WORKER = """
import asyncio, json, sys, tempfile
from pathlib import Path
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
import temporal_shield.converter as converter
from temporal_shield.codec import Keyring

ring = Path(tempfile.mkdtemp()) / "keyring.json"
Keyring.new().save(ring)
config = converter.ShieldConfig(keys=converter.KeysConfig(uri=f"local://{ring}"))
plugin = converter.ShieldPlugin(config)
codec = converter.build_codec(config)
data = b'{"ssn": "078-05-1120"}'
[encoded] = asyncio.run(codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=data)]))
[decoded] = asyncio.run(codec.decode([encoded]))
assert decoded.data == data and encoded.data != data
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(loaded))
"""


def _blocked(*modules: str) -> str:
    """Python source that makes importing ``modules`` fail as if not installed."""
    return f"import sys\nfor _m in {modules!r}:\n    sys.modules[_m] = None\n"


def test_the_worker_hot_path_imports_no_aws_sdk_and_no_server_stack() -> None:
    """A worker with a local keyring: converter, plugin, codec, a round trip."""
    out = subprocess.run(
        [sys.executable, "-c", _WORKER], check=True, capture_output=True, text=True
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    assert "temporal_shield" in loaded
    assert "temporalio" in loaded
    assert loaded.isdisjoint(OPTIONAL), sorted(loaded & set(OPTIONAL))


def test_the_worker_runs_with_the_optional_packages_absent() -> None:
    """The same round trip when importing any optional package would fail."""
    result = subprocess.run(
        [sys.executable, "-c", _blocked(*OPTIONAL) + _WORKER], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _cli(blocked: Sequence[str], *argv: str) -> subprocess.CompletedProcess[str]:
    code = _blocked(*blocked) + (
        "from temporal_shield._main import entry\n"
        f"sys.argv = ['temporal-shield', *{list(argv)!r}]\n"
        "entry()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_clean_env()
    )


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_SHIELD_")}


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["serve", "--insecure-dev", "--port", "0"], "server"),
        (["audit", "verify", "/nonexistent/audit.jsonl"], "server"),
        (["audit", "keygen", "--out", "/nonexistent/key"], "server"),
        (["demo", "--no-wait"], "server"),
        (["keys", "rewrap", "--bucket", "b"], "aws"),
    ],
)
def test_a_command_whose_extra_is_missing_says_which_to_install(
    argv: list[str], extra: str
) -> None:
    result = _cli(OPTIONAL, *argv)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith("temporal-shield: error: ")
    assert f"pip install 'temporal-shield[{extra}]'" in line


def test_help_works_without_any_extra() -> None:
    for argv in (["--help"], ["serve", "--help"], ["audit", "verify", "--help"]):
        result = _cli(OPTIONAL, *argv)
        assert result.returncode == 0, result.stderr
        assert "usage: temporal-shield" in result.stdout


def test_offload_without_the_aws_extra_names_it() -> None:
    code = _blocked("boto3", "botocore") + (
        "from temporal_shield.converter import StorageConfig\n"
        "from temporal_shield.converter._storage import external_storage\n"
        "assert external_storage(StorageConfig()) is None\n"  # no bucket: no SDK needed
        "try:\n"
        "    external_storage(StorageConfig(s3_bucket='b'))\n"
        "except ImportError as exc:\n"
        "    print(exc.name, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.startswith("boto3 S3 offload")
    assert "pip install 'temporal-shield[aws]'" in out


def test_missing_extra_maps_only_optional_packages() -> None:
    from temporal_shield._extras import missing_extra

    assert missing_extra(ValueError("aiohttp")) is None
    assert missing_extra(ImportError("no name")) is None
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None
    assert missing_extra(ModuleNotFoundError("x", name="temporal_shield.nothing")) is None
    sub = missing_extra(ModuleNotFoundError("x", name="opentelemetry.sdk.metrics"))
    assert sub is not None
    assert "'opentelemetry'" in sub
    assert "pip install 'temporal-shield[server]'" in sub
    aws = missing_extra(ModuleNotFoundError("x", name="botocore"))
    assert aws is not None
    assert aws.endswith("pip install 'temporal-shield[aws]'")
    ours = ImportError("S3 offload needs the AWS SDK: pip install 'temporal-shield[aws]'")
    ours.name = "boto3"
    assert missing_extra(ours) == str(ours)


def test_extras_and_build_floor_in_pyproject() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = " ".join(meta["project"]["dependencies"])
    for name in OPTIONAL:
        assert name not in deps
    extras = meta["project"]["optional-dependencies"]
    assert any(r.startswith("boto3") for r in extras["aws"])
    assert {"aiohttp", "pyjwt[crypto]", "opentelemetry-sdk", "msgspec"} <= {
        r.split(">")[0].split("=")[0] for r in extras["server"]
    }
    assert "temporal-shield[aws,server,demo]" in extras["dev"]
    # A license given as an SPDX expression (PEP 639) needs setuptools 77.
    assert isinstance(meta["project"]["license"], str)
    assert "setuptools>=77" in meta["build-system"]["requires"]


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed without extras into a fresh virtual environment."""
    root = tmp_path_factory.mktemp("lean")
    return make_venv(root / "venv", str(build_wheel(root / "wheel")))


@pytest.mark.integration
def test_the_default_install_has_no_aws_sdk_and_round_trips(lean_venv: Path) -> None:
    probe = (
        "import importlib.util, sys\n"
        f"assert all(importlib.util.find_spec(m) is None for m in {OPTIONAL!r})\n" + _WORKER
    )
    result = subprocess.run(
        [str(lean_venv / "python"), "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "temporal_shield" in json.loads(result.stdout.splitlines()[-1])


@pytest.mark.integration
def test_the_default_install_cli_names_the_server_extra(lean_venv: Path, tmp_path: Path) -> None:
    cli = str(lean_venv / "temporal-shield")
    env = {**_clean_env(), "XDG_CONFIG_HOME": str(tmp_path)}
    helped = subprocess.run([cli, "serve", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0
    assert "--workers" in helped.stdout
    keys = subprocess.run(
        [cli, "keys", "init", "--keyring", str(tmp_path / "ring.json")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert keys.returncode == 0, keys.stderr
    for argv in (["serve", "--insecure-dev", "--port", "0"], ["demo", "--no-wait"]):
        result = subprocess.run([cli, *argv], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "temporal-shield: error: the codec server, `audit` and `demo` need the Python "
            f"package {_first_server_module(argv)!r}: pip install 'temporal-shield[server]' "
            "(for `demo`: 'temporal-shield[demo]')"
        ]


def _first_server_module(argv: list[str]) -> str:
    """serve and demo both import aiohttp first."""
    del argv
    return "aiohttp"
