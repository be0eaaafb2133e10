"""The real `temporal` CLI against a codec server: what it shows for payloads it may not read.

The CLI sends no Origin header, so with the default ``placeholders = "browser"``
it gets denied payloads back unchanged (ciphertext, as before placeholders
existed); with ``placeholders = "always"`` it shows the readable notice. Either
way every payload keeps its place: the Go client rejects any other count.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import DataConverter, PayloadCodec

from temporal_shield._devserver import DevServer
from temporal_shield.codec import Keyring
from temporal_shield.converter import ClassificationConfig, KeysConfig, ShieldConfig, build_codec
from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, create_app

from ..server.conftest import POLICY
from ..server.idp import AUDIENCE, ISSUER, Idp
from .codec_server import running
from .test_codec_cli import _show
from .workflows import mark

pytestmark = pytest.mark.integration

ARGS = ["allowed-1", "pci-2", "plain-3", "pci-4", "allowed-5"]
"""Workflow arguments: ``pci-*`` sealed as ``pci`` (the reader role may not read it),
``plain-*`` left unencrypted, the rest sealed as ``internal``."""


class Mixed(PayloadCodec):
    """Seals each argument by its name: one history with allowed, denied and plain payloads."""

    def __init__(self, shield: ShieldConfig) -> None:
        self._internal = build_codec(shield).with_namespace("default")
        pci = ShieldConfig(keys=shield.keys, classification=ClassificationConfig(default="pci"))
        self._pci = build_codec(pci).with_namespace("default")

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if b"plain-" in payload.data:
                out.append(payload)
            elif b"pci-" in payload.data:
                out.extend(await self._pci.encode([payload]))
            else:
                out.extend(await self._internal.encode([payload]))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)  # this client only writes


def _input(out: str) -> list[dict[str, Any]]:
    """The started event's input payloads as the CLI printed them."""
    history = json.loads(out)
    for event in history["events"]:
        started = event.get("workflowExecutionStartedEventAttributes")
        if started is not None:
            payloads: list[dict[str, Any]] = started["input"]["payloads"]
            return payloads
    raise AssertionError(f"no started event in {out[:500]}")


def _data(payload: dict[str, Any]) -> bytes:
    """A payload's bytes, whichever way the CLI printed them (base64, or decoded JSON)."""
    data = payload.get("data")
    if isinstance(data, str):
        return base64.b64decode(data)
    return json.dumps(payload).encode()


async def test_cli_shows_ciphertext_by_default_and_the_notice_when_always(
    dev_server: DevServer, tmp_path: Path
) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    shield = ShieldConfig(keys=KeysConfig(uri=f"local://{ring}"))
    client = await Client.connect(
        dev_server.address, data_converter=DataConverter(payload_codec=Mixed(shield))
    )
    workflow_id = f"placeholders-cli-{uuid.uuid4().hex[:8]}"
    # No worker: the started event's input is all this test reads.
    handle = await client.start_workflow(
        "NoSuchWorkflow", args=[mark(a) for a in ARGS], id=workflow_id, task_queue=workflow_id
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    idp = Idp()
    await idp.start()
    reader = idp.token(permissions=["default:read"])
    shown: dict[str, list[dict[str, Any]]] = {}
    try:
        for mode in ("browser", "always"):
            config = ServerConfig(
                policy_file=str(policy),
                auth=AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url),
                audit=AuditConfig(file=str(tmp_path / f"audit-{mode}.jsonl")),
                placeholders=mode,
            )
            async with running(create_app(config, shield)) as url:
                code, out = await _show(
                    dev_server, workflow_id, url, "--codec-auth", f"Bearer {reader}"
                )
            assert code == 0, out
            shown[mode] = _input(out)
    finally:
        await idp.stop()
        await handle.terminate()
    raw = await _raw_input(client, workflow_id)
    for mode, payloads in shown.items():
        assert len(payloads) == len(ARGS), mode
        texts = [_data(p) for p in payloads]
        for i in (0, 2, 4):  # allowed and plain: decoded, in place
            assert mark(ARGS[i]).encode() in texts[i], (mode, i)
        for i in (1, 3):
            assert mark(ARGS[i]).encode() not in texts[i], (mode, i)
    # Default: the CLI (no Origin) gets the ciphertext back exactly as stored.
    for i in (1, 3):
        assert _data(shown["browser"][i]) == raw[i].data
        assert b"withheld" not in _data(shown["browser"][i])
    # Always: the notice, readable in the CLI's output, in the denied payloads' places.
    for i in (1, 3):
        notice = json.loads(_data(shown["always"][i]))
        assert notice == {
            "temporal-shield": "withheld",
            "reason": "classification pci not permitted",
            "namespace": "default",
            "classification": "pci",
            "how to get access": ["Ask for one of these roles: finance."],
        }
    records = [
        json.loads(line) for line in (tmp_path / "audit-always.jsonl").read_text().splitlines()
    ]
    assert any(r["denied"] == 2 and r["decoded"] == 2 for r in records)


async def _raw_input(client: Client, workflow_id: str) -> list[Payload]:
    """The stored input payloads, read without any codec."""
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.HasField("workflow_execution_started_event_attributes"):
            return list(event.workflow_execution_started_event_attributes.input.payloads)
    raise AssertionError("no started event")
