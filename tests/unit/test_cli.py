"""The command line: help everywhere, --output json, exit codes, one-line errors, keyring URI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from temporal_shield._main import describe, expected, parser
from temporal_shield.codec import ConfigError, Keyring

SCRIPT = str(Path(sys.executable).with_name("temporal-shield"))
REST = ("``", ":func:", ":class:", ":data:", ":meth:", ".. ")


def _parsers(
    p: argparse.ArgumentParser, path: str = "temporal-shield"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_command_and_argument_has_plain_help() -> None:
    seen = 0
    for path, p in _parsers(parser()):
        assert p.description, f"{path} has no description"
        assert not any(marker in p.description for marker in REST), path
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.dest == "worker":
                continue  # argparse's own -h; the supervisor's hidden --worker
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{path} {choice.dest} has no help"
                continue
            assert action.help, f"{path} {action.dest}"
            assert action.help != argparse.SUPPRESS, f"{path} {action.dest}"
            assert not any(marker in action.help for marker in REST), f"{path} {action.dest}"
            seen += 1
    assert seen > 30  # the walk reached the sub-commands


def test_commands_that_print_results_take_output_json() -> None:
    for path, p in _parsers(parser()):
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        if leaf and path.split()[1] in ("keys", "audit", "certs"):
            assert any("--output" in a.option_strings for a in p._actions), path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_SHIELD_")}
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def _one_line_error(out: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("temporal-shield"), lines[0]
    assert fragment in lines[0], lines[0]


@pytest.fixture
def ring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    Keyring.new().save(path)
    return path


def test_error_paths_of_every_command_are_one_line_and_status_2(tmp_path: Path, ring: Path) -> None:
    missing = str(tmp_path / "missing.json")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["keys", "init", "--keyring", str(ring)], {}, "already exists"),
        (["keys", "list", "--keyring", missing], {}, "does not exist"),
        (["keys", "rotate", "--keyring", str(not_a_dir)], {}, "keyring"),
        (["keys", "retire", "--keyring", str(ring), "k-nope"], {}, "k-nope"),
        (["keys", "rewrap"], {}, "no bucket"),
        (["keys", "list"], {"TEMPORAL_SHIELD_KEYS_URI": "aws-kms://alias/x"}, "local://"),
        (["keys", "list"], {"TEMPORAL_SHIELD_KEY_UIR": "x"}, "TEMPORAL_SHIELD_KEY_UIR"),
        (["audit", "verify", missing], {}, "missing.json"),
        (["audit", "keygen", "--out", str(not_a_dir)], {}, "file"),
        (["serve", "--insecure-dev"], {"TEMPORAL_SHIELD_SERVER_PROT": "1"}, "SERVER_PROT"),
        (["serve", "--config", missing], {}, "cannot read config"),
        (["scan", "--address", "127.0.0.1:1"], {}, "cannot connect to Temporal"),
        (["certs", "dev", "--out", str(not_a_dir / "sub")], {}, "file"),
        (["demo", "--wait-forever"], {}, "unrecognized arguments"),
        (["keys", "lst"], {}, "invalid choice"),
        (["serve", "--workers", "many"], {}, "number of workers"),
        # Once ignored: the default keyring was listed instead of the one named.
        (["keys", "list"], {"temporal_shield_keys_uri": "local:///x"}, "temporal_shield_keys_uri"),
        (["keys", "list"], {"TEMPORAL_SHIELD_KEYS_URI": ""}, "TEMPORAL_SHIELD_KEYS_URI is empty"),
        # Once "internal error: OverflowError" after the insecure-dev warning.
        (["serve", "--insecure-dev", "--port", "99999"], {}, "server.port"),
        (["serve", "--insecure-dev"], {"TEMPORAL_SHIELD_SERVER_AUTH_LEEWAY": "nan"}, "finite"),
        (["secret", "init", str(not_a_dir)], {}, "not overwriting"),
    ]
    for args, env, fragment in cases:
        _one_line_error(_run(*args, env=env), fragment)


def test_secret_init_writes_a_private_secret_once(tmp_path: Path) -> None:
    from temporal_shield.server._secrets import MIN_SECRET_BYTES, ServerSecret

    path = tmp_path / "server.secret"
    result = _run("secret", "init", str(path), "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"secret_file": str(path)}
    assert path.stat().st_mode & 0o777 == 0o600
    ServerSecret.load(path)  # loads: long enough, private
    assert len(path.read_text().strip()) >= MIN_SECRET_BYTES


def test_keys_commands_json_and_the_configured_keyring(tmp_path: Path) -> None:
    path = tmp_path / "configured" / "ring.json"
    path.parent.mkdir()
    env = {"TEMPORAL_SHIELD_KEYS_URI": f"local://{path}"}
    created = json.loads(_run("keys", "init", "-o", "json", env=env).stdout)
    assert created == {"keyring": str(path), "primary": Keyring.load(path).primary}
    rotated = json.loads(_run("keys", "rotate", "--output", "json", env=env).stdout)
    assert rotated["primary"] != created["primary"]
    listed = json.loads(_run("keys", "list", "-o", "json", env=env).stdout)
    assert [k["id"] for k in listed["keys"]] == [created["primary"], rotated["primary"]]
    assert [k["primary"] for k in listed["keys"]] == [False, True]
    assert "material" not in json.dumps(listed)
    retired = json.loads(_run("keys", "retire", created["primary"], "-o", "json", env=env).stdout)
    assert retired == {"keyring": str(path), "retired": created["primary"]}
    text = _run("keys", "list", env=env).stdout.splitlines()
    assert text[0].split("\t")[2] == "retired"
    assert text[1].endswith("\tprimary")
    # From a config file, and from XDG_CONFIG_HOME when nothing names one.
    toml = tmp_path / "shield.toml"
    toml.write_text(f'[keys]\nuri = "local://{path}"\n')
    assert (
        json.loads(_run("keys", "list", "--config", str(toml), "-o", "json").stdout)["primary"]
        == (rotated["primary"])
    )
    xdg = tmp_path / "xdg"
    out = _run("keys", "init", "-o", "json", env={"XDG_CONFIG_HOME": str(xdg)})
    assert json.loads(out.stdout)["keyring"] == str(xdg / "temporal-shield" / "keyring.json")
    assert (xdg / "temporal-shield" / "keyring.json").exists()


def test_audit_and_certs_json_and_findings_exit_1(tmp_path: Path) -> None:
    keys = json.loads(_run("audit", "keygen", "--out", str(tmp_path / "k"), "-o", "json").stdout)
    assert keys["signing_key"] == f"ed25519://{keys['private_key']}"
    assert Path(keys["public_key"]).exists()
    broken = tmp_path / "audit.jsonl"
    broken.write_text("not json\n")
    out = _run("audit", "verify", str(broken), "-o", "json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["ok"] is False
    assert report["files"][0]["broken_line"] == 1
    certs = json.loads(_run("certs", "dev", "--out", str(tmp_path / "pki"), "-o", "json").stdout)
    assert certs["secrets"]
    assert all((Path(folder) / "tls.crt").exists() for folder in certs["secrets"])


def test_describe_gives_one_line_without_secrets_of_ours() -> None:
    assert describe(ConfigError("bad\nthing")) == "bad thing"
    assert describe(FileNotFoundError(2, "No such file or directory", "/x")) == (
        "/x: No such file or directory"
    )
    assert describe(ValueError()) == "ValueError"
    assert describe(ValueError("odd")) == "ValueError: odd"


def test_operating_failures_are_expected_and_bugs_are_not() -> None:
    assert expected(ConfigError("x"))
    assert expected(PermissionError(13, "Permission denied"))
    assert expected(RuntimeError("Failed client connect: Server connection error"))
    assert expected(ModuleNotFoundError("No module named 'aiohttp'", name="aiohttp"))
    assert not expected(KeyError("bug"))
    assert not expected(RuntimeError("something else"))


def test_text_output_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Lines quote others' text (object keys, key ids, subjects): escapes are shown, not run."""
    import argparse

    from temporal_shield._main import emit, terminal_safe

    forged = "local:k-OLD\x1b[1A\x1b[2K\r\n1 objects: failed 0\u202e\x00"
    emit(argparse.Namespace(output="text"), {}, lambda: [f"  failed: v0/x: {forged}", "a\tb"])
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "  failed: v0/x: local:k-OLD\\x1b[1A\\x1b[2K\\r\\n1 objects: failed 0\\u202e\\x00",
        "a\tb",  # tabs (the keys list's columns) are kept
    ]
    assert terminal_safe("ünïcode ok") == "ünïcode ok"
