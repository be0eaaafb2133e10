"""Migrating off Temporal's sample encryption codec, on a real dev server.

Workflows started under the sample's codec (its exact format, see
``tests/sample_codec.py``) finish under temporal-shield with the sample reader
configured (``keys.sample_keys_file``); new payloads are only ours; ``scan``
shows the old payloads as foreign encryption until they age out; the codec
server returns them unchanged and counts and audits them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from pathlib import Path

import aiohttp
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import Keyring, is_envelope
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin, scan
from temporal_shield.server import AuditConfig, ServerConfig, create_app

from ..sample_codec import SAMPLE_KEY, SAMPLE_KEY_ID, sample_codec, write_sample_keys
from .codec_server import running
from .conftest import wait_visible
from .workflows import MARK, EchoWorkflow, WaitForSignalWorkflow, mark

pytestmark = pytest.mark.integration


def _shield(tmp_path: Path, *, reader: bool = True) -> ShieldConfig:
    ring = tmp_path / "keyring.json"
    if not ring.exists():
        Keyring.new().save(ring)
    keys = write_sample_keys(tmp_path / "sample-keys.json", {SAMPLE_KEY_ID: SAMPLE_KEY})
    return ShieldConfig(
        keys=KeysConfig(uri=f"local://{ring}", sample_keys_file=str(keys) if reader else "")
    )


async def test_sample_codec_workflows_finish_under_ours(
    dev_server: DevServer, tmp_path: Path
) -> None:
    prefix = f"sample-{uuid.uuid4().hex[:8]}"
    queue = prefix
    sample = await Client.connect(
        dev_server.address,
        data_converter=dataclasses.replace(DataConverter.default, payload_codec=sample_codec()),
    )
    # The sample era: one run finished, one waiting for a signal.
    async with Worker(sample, task_queue=queue, workflows=[WaitForSignalWorkflow, EchoWorkflow]):
        done = await sample.execute_workflow(
            EchoWorkflow.run, mark("sample-done"), id=f"{prefix}-done", task_queue=queue
        )
        assert done == mark("sample-done")
        waiting = await sample.start_workflow(
            WaitForSignalWorkflow.run, mark("sample-era"), id=f"{prefix}-old", task_queue=queue
        )
    # The switch: our plugin, with the sample's keys to read (never to write).
    shield = await Client.connect(dev_server.address, plugins=[ShieldPlugin(_shield(tmp_path))])
    async with Worker(shield, task_queue=queue, workflows=[WaitForSignalWorkflow, EchoWorkflow]):
        old = shield.get_workflow_handle(waiting.id)
        await old.signal(WaitForSignalWorkflow.signal, mark("shield-era"))
        assert await old.result() == f"{mark('sample-era')}|{mark('shield-era')}"
        # Reading the finished run's result needs the reader too.
        assert await shield.get_workflow_handle(f"{prefix}-done").result() == mark("sample-done")
        new = await shield.execute_workflow(
            EchoWorkflow.run, mark("new"), id=f"{prefix}-new", task_queue=queue
        )
        assert new == mark("new")
    raw = await Client.connect(dev_server.address)
    await wait_visible(
        raw, f"WorkflowId STARTS_WITH '{prefix}' AND ExecutionStatus = 'Completed'", 3
    )
    # What the old run's history holds after the switch: sample input, our signal and result.
    events = (await raw.get_workflow_handle(waiting.id).fetch_history()).events
    payloads = [
        p
        for e in events
        for p in (
            *e.workflow_execution_started_event_attributes.input.payloads,
            *e.workflow_execution_signaled_event_attributes.input.payloads,
            *e.workflow_execution_completed_event_attributes.result.payloads,
        )
    ]
    assert [is_envelope(p.data) for p in payloads] == [False, True, True]
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in payloads)
    # scan: the sample's payloads are foreign encryption until they age out.
    old_runs = await scan(raw, query=f"WorkflowId = '{waiting.id}' OR WorkflowId = '{prefix}-done'")
    assert not old_runs.clean
    assert not old_runs.plaintext
    assert sum(old_runs.foreign_encryption.values()) == 1 + 2  # old input; done's input, result
    assert old_runs.encrypted == 2
    assert (await scan(raw, query=f"WorkflowId = '{prefix}-new'")).clean
    # Without the reader, our codec passes the sample's payloads through
    # (no DecryptionError); the SDK then cannot read them.
    no_reader = await Client.connect(
        dev_server.address, plugins=[ShieldPlugin(_shield(tmp_path, reader=False))]
    )
    with pytest.raises(Exception, match="binary/encrypted") as raised:
        await no_reader.get_workflow_handle(f"{prefix}-done").result()
    assert "could not be decrypted" not in str(raised.value)


async def test_codec_server_returns_other_formats_unchanged_and_counts_them(
    tmp_path: Path,
) -> None:
    shield = _shield(tmp_path)
    audit = tmp_path / "audit.jsonl"
    config = ServerConfig(insecure_dev=True, audit=AuditConfig(file=str(audit)))
    sample_payload = (await sample_codec().encode([_json(mark("old"))]))[0]
    forged = Payload(metadata={"encoding": b"binary/encrypted"}, data=b"TS-not-really")
    plain = _json(mark("plain"))
    body = {"payloads": [_wire(p) for p in (sample_payload, plain)]}
    async with running(create_app(config, shield)) as url, aiohttp.ClientSession() as http:
        resp = await http.post(f"{url}/decode", json=body, headers={"X-Namespace": "default"})
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        # Unchanged, one per input, in order; the sample's ciphertext is not
        # decrypted here (it is bound to no namespace).
        assert answer["payloads"] == body["payloads"]
        # A payload that starts with our magic but is no envelope is a failure of ours.
        resp = await http.post(
            f"{url}/decode", json={"payloads": [_wire(forged)]}, headers={"X-Namespace": "default"}
        )
        assert resp.status == 200
        metrics = await (await http.get(f"{url}/metrics")).text()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    first = records[0]
    assert (first["passed_through"], first["foreign_encryption"], first["decoded"]) == (2, 1, 0)
    assert (records[1]["failed"], records[1]["foreign_encryption"]) == (1, 0)
    assert _metric(metrics, "codec_payloads_total", result="foreign_encryption") == 1
    assert _metric(metrics, "codec_payloads_total", result="passed_through") == 1
    assert MARK not in audit.read_text()


def _json(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


def _wire(payload: Payload) -> dict[str, object]:
    return {
        "metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
        "data": base64.b64encode(payload.data).decode(),
    }


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )
