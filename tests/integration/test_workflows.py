"""End to end against a real Temporal dev server: nothing readable in history."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import KEY_ID_METADATA, Keyring
from temporal_shield.converter import (
    KeysConfig,
    ShieldCodec,
    ShieldConfig,
    ShieldPlugin,
    iter_payloads,
    scan,
)

from .conftest import kms_client, offload_setup, wait_visible
from .workflows import (
    MARK,
    Args,
    ChildWorkflow,
    EchoWorkflow,
    EverythingWorkflow,
    WaitForSignalWorkflow,
    echo_activity,
    failing_activity,
    mark,
)

pytestmark = pytest.mark.integration

ALL_MARKS = [
    "workflow-input",
    "memo",
    "activity-input",
    "activity-result",
    "failing-input",
    "failure-message",
    "failure-details",
    "child-input",
    "child-result",
    "signal",
    "update-input",
    "update-result",
    "continue-as-new-input",
    "final-result",
]


def _raw_bytes(history: WorkflowHistory) -> bytes:
    return b"".join(event.SerializeToString() for event in history.events)


async def _histories(raw: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Histories of every run of ``workflow_id`` and of its child, without a codec."""
    await wait_visible(
        raw, f"WorkflowId STARTS_WITH '{workflow_id}' AND ExecutionStatus != 'Running'", 3
    )
    out = []
    async for execution in raw.list_workflows(f"WorkflowId STARTS_WITH '{workflow_id}'"):
        handle = raw.get_workflow_handle(execution.id, run_id=execution.run_id)
        out.append(await handle.fetch_history())
    return out


async def _run_everything(client: Client, task_queue: str) -> tuple[str, str]:
    workflow_id = f"everything-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[EverythingWorkflow, ChildWorkflow],
        activities=[echo_activity, failing_activity],
    ):
        handle = await client.start_workflow(
            EverythingWorkflow.run,
            Args(text=mark("workflow-input")),
            id=workflow_id,
            task_queue=task_queue,
            memo={"note": mark("memo")},
        )
        assert MARK in await handle.query(EverythingWorkflow.state)
        assert await handle.execute_update(EverythingWorkflow.update, mark("update-input")) == mark(
            "update-result"
        )
        await handle.signal(EverythingWorkflow.signal, mark("signal"))
        result = await handle.result()
    assert mark("final-result") in result
    return workflow_id, result


async def _assert_encrypted_everywhere(
    dev_server: DevServer, codec: ShieldCodec, workflow_id: str
) -> set[str]:
    raw = await Client.connect(dev_server.address)
    histories = await _histories(raw, workflow_id)
    assert len(histories) >= 3  # first run, continued run, child
    key_ids: set[str] = set()
    decoded_text = b""
    for history in histories:
        assert MARK.encode() not in _raw_bytes(history)
        assert MARK not in history.to_json()
        for path, payload in _payloads(history):
            if "search_attributes" in path:
                continue
            assert payload.metadata["encoding"] == b"binary/encrypted", path
            key_ids.add(payload.metadata[KEY_ID_METADATA].decode())
            decoded = (await codec.with_namespace("default").decode([payload]))[0]
            decoded_text += decoded.data
    for kind in ALL_MARKS:
        assert mark(kind).encode() in decoded_text, kind
    return key_ids


def _payloads(history: WorkflowHistory) -> list[tuple[str, Payload]]:
    return [pair for event in history.events for pair in iter_payloads(event)]


async def test_control_without_codec_markers_are_visible(dev_server: DevServer) -> None:
    """Proves the check below can fail: without the codec the markers are in history."""
    client = await Client.connect(dev_server.address)
    workflow_id, _ = await _run_everything(client, f"plain-{uuid.uuid4().hex[:6]}")
    histories = await _histories(client, workflow_id)
    raw = b"".join(_raw_bytes(h) for h in histories)
    for kind in ("workflow-input", "memo", "signal", "failure-message", "child-result"):
        assert mark(kind).encode() in raw, kind


async def test_local_keyring_encrypts_every_payload(dev_server: DevServer, tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    plugin = ShieldPlugin(ShieldConfig(keys=KeysConfig(uri=f"local://{ring}")))
    client = await Client.connect(dev_server.address, plugins=[plugin])
    workflow_id, _ = await _run_everything(client, f"local-{uuid.uuid4().hex[:6]}")
    codec = client.data_converter.payload_codec
    assert isinstance(codec, ShieldCodec)
    key_ids = await _assert_encrypted_everywhere(dev_server, codec, workflow_id)
    assert key_ids == {f"local:{Keyring.load(ring).primary}"}


async def test_aws_kms_on_moto_encrypts_every_payload(
    dev_server: DevServer, aws_env: dict[str, Any]
) -> None:
    kms = kms_client(aws_env)
    key = kms.create_key(Description="temporal-shield test")["KeyMetadata"]
    alias = f"alias/shield-{uuid.uuid4().hex[:6]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    config = ShieldConfig(
        keys=KeysConfig(uri=f"aws-kms://{alias}", aws_endpoint_url=aws_env["endpoint_url"])
    )
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    workflow_id, _ = await _run_everything(client, f"kms-{uuid.uuid4().hex[:6]}")
    codec = client.data_converter.payload_codec
    assert isinstance(codec, ShieldCodec)
    # The whole run (dozens of payloads) cost one GenerateDataKey.
    assert codec.envelope.keys.stats.kms_generate_calls == 1
    # A fresh reader (another process) decodes everything through KMS Decrypt.
    reader = ShieldPlugin(config).converter.payload_codec
    assert isinstance(reader, ShieldCodec)
    key_ids = await _assert_encrypted_everywhere(dev_server, reader, workflow_id)
    assert key_ids == {key["Arn"]}
    assert reader.envelope.keys.stats.kms_decrypt_calls == 1


async def test_key_rotation_while_workflows_run(dev_server: DevServer, tmp_path: Path) -> None:
    ring_path = tmp_path / "keyring.json"
    Keyring.new().save(ring_path)
    old_key = f"local:{Keyring.load(ring_path).primary}"
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{ring_path}"))
    queue = f"rotate-{uuid.uuid4().hex[:6]}"
    old_client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    async with Worker(old_client, task_queue=queue, workflows=[WaitForSignalWorkflow]):
        running = await old_client.start_workflow(
            WaitForSignalWorkflow.run, mark("old-input"), id=f"old-{queue}", task_queue=queue
        )
    # Rotate; every worker and client restarts with the new keyring.
    Keyring.load(ring_path).rotated().save(ring_path)
    new_key = f"local:{Keyring.load(ring_path).primary}"
    new_client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    async with Worker(new_client, task_queue=queue, workflows=[WaitForSignalWorkflow]):
        handle = new_client.get_workflow_handle(running.id)
        await handle.signal(WaitForSignalWorkflow.signal, mark("signal"))
        assert await handle.result() == f"{mark('old-input')}|{mark('signal')}"
        fresh = await new_client.execute_workflow(
            WaitForSignalWorkflow.run,
            mark("new-input"),
            id=f"new-{queue}",
            task_queue=queue,
            start_signal="signal",
            start_signal_args=[mark("x")],
        )
        assert mark("new-input") in fresh
    raw = await Client.connect(dev_server.address)

    async def key_ids(workflow_id: str) -> set[str]:
        history = await raw.get_workflow_handle(workflow_id).fetch_history()
        return {p.metadata[KEY_ID_METADATA].decode() for _, p in _payloads(history)}

    assert await key_ids(f"old-{queue}") == {old_key, new_key}
    assert await key_ids(f"new-{queue}") == {new_key}


async def test_s3_offload_stores_ciphertext(
    dev_server: DevServer, tmp_path: Path, aws_env: dict[str, Any]
) -> None:
    s3, bucket, _, config = offload_setup(aws_env, tmp_path, threshold=8 * 1024)
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    # Random hex does not compress below the threshold.
    big = mark("large") + os.urandom(16 * 1024).hex()
    queue = f"s3-{uuid.uuid4().hex[:6]}"
    async with Worker(client, task_queue=queue, workflows=[EchoWorkflow]):
        assert (
            await client.execute_workflow(EchoWorkflow.run, big, id=queue, task_queue=queue) == big
        )
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert objects, "nothing was offloaded"
    for obj in objects:
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        assert MARK.encode() not in body
        stored = Payload.FromString(body)
        assert stored.metadata["encoding"] == b"binary/encrypted"
    history = (
        await (await Client.connect(dev_server.address)).get_workflow_handle(queue).fetch_history()
    )
    assert MARK.encode() not in _raw_bytes(history)
    assert len(_raw_bytes(history)) < len(big)  # the history holds references only
    # The scan counts the SDK driver's references apart, not as plaintext.
    raw = await Client.connect(dev_server.address)
    await wait_visible(raw, f"WorkflowId = '{queue}'", 1)
    report = await scan(raw, query=f"WorkflowId = '{queue}'")
    assert report.clean, report.as_table()
    assert sum(report.offloaded.values()) == 2, report.as_table()  # input and result
