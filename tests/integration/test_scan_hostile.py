"""Hostile histories on a real dev server: application data shaped to pass the scan.

An insider with write access to Temporal's API (here: raw ``StartWorkflowExecution``
calls with payloads of their choosing) or a misconfigured failure converter puts
plaintext where an earlier scan counted it as encrypted or as a search attribute,
or made compressed plaintext look like another codec's ciphertext. Each must make
the installed console script exit 1, also with ``--allow-foreign-encryption``,
while a namespace holding only genuine envelopes exits 0.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import Memo, Payload, Payloads, WorkflowType
from temporalio.api.failure.v1 import Failure
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import DataConverter, DefaultFailureConverter, PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec._format import parse
from temporal_shield.converter import ShieldPlugin

from .conftest import wait_visible
from .test_scan_temporal_written import _shield, fresh_namespace, run_cli

pytestmark = pytest.mark.integration

SECRET = "ssn-123-45-6789"
PII = json.dumps([{"name": f"Jane Doe {i}", "ssn": SECRET} for i in range(30)]).encode()


class KeepsTheMessage(DefaultFailureConverter):
    """Encodes message and stack trace (so ShieldPlugin accepts it), then puts the message back.

    A plausible "readable failures in the UI" customisation: the encoded
    attributes are encrypted, the text beside them is not.
    """

    def __init__(self) -> None:
        """Encode common attributes, as the plugin requires."""
        super().__init__(encode_common_attributes=True)

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        """See base class; then the message again, in clear."""
        super().to_failure(exception, payload_converter, failure)
        failure.message = str(exception)


@workflow.defn(sandboxed=False)
class Declines:
    """Fails with a message that carries the secret."""

    @workflow.run
    async def run(self) -> None:
        """Fail at once, not retried."""
        raise ApplicationError(f"card declined for {SECRET}", non_retryable=True)


async def _plant(
    client: Client, workflow_id: str, *, input: Payload, memo: dict[str, Payload] | None = None
) -> None:
    """Start a run with exactly these payloads, through the raw API (no codec, no SDK)."""
    await client.workflow_service.start_workflow_execution(
        StartWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_id=workflow_id,
            workflow_type=WorkflowType(name="Planted"),
            task_queue=TaskQueue(name=f"nobody-{uuid.uuid4().hex[:6]}"),
            input=Payloads(payloads=[input]),
            memo=Memo(fields=memo or {}),
            request_id=str(uuid.uuid4()),
            identity="insider",
        )
    )


def _copied_header(envelope: Payload, body: bytes) -> Payload:
    """A genuine envelope's header (lengths adjusted, no compression) before ``body``."""
    _, offset = parse(envelope.data)
    head = bytearray(envelope.data[:offset])
    head[4] = 0
    struct.pack_into(">I", head, 5, len(body) - 16)
    return Payload(metadata=dict(envelope.metadata), data=bytes(head) + body)


def _scan(address: str, namespace: str, workflow_id: str, *extra: str) -> Any:
    return run_cli(
        [
            "scan",
            "--address",
            address,
            "--namespace",
            namespace,
            "--query",
            f"WorkflowId = '{workflow_id}'",
            "-o",
            "json",
            *extra,
        ]
    )


async def test_planted_plaintext_shaped_to_pass_is_found(
    dev_server: DevServer, tmp_path: Path
) -> None:
    namespace = await fresh_namespace(dev_server.address)
    shield = _shield(tmp_path)
    client = await Client.connect(
        dev_server.address,
        namespace=namespace,
        data_converter=DataConverter(failure_converter_class=KeepsTheMessage),
        plugins=[ShieldPlugin(shield)],
    )
    raw = await Client.connect(dev_server.address, namespace=namespace)
    codec = client.data_converter.payload_codec
    assert codec is not None
    [envelope, memo_envelope] = await codec.encode(
        [
            Payload(metadata={"encoding": b"json/plain"}, data=b'"order-1"'),
            Payload(metadata={"encoding": b"json/plain"}, data=b'"note"'),
        ]
    )
    plain = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(SECRET).encode())
    labelled_gzip = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"test-key-id"},
        data=gzip.compress(PII),
    )

    await _plant(raw, "genuine", input=envelope, memo={"note": memo_envelope})
    # memo entries are the writer's to name: not a search attribute
    await _plant(raw, "memo-key", input=envelope, memo={"search_attributes": plain})
    await _plant(raw, "copied-header", input=_copied_header(envelope, PII))
    await _plant(raw, "gzip-labelled", input=labelled_gzip)
    queue = f"declines-{uuid.uuid4().hex[:6]}"
    async with Worker(client, task_queue=queue, workflows=[Declines]):
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(Declines.run, id="kept-message", task_queue=queue)
    await wait_visible(raw, "", 5)

    genuine = await asyncio.to_thread(_scan, dev_server.address, namespace, "genuine")
    assert genuine.returncode == 0, genuine.stdout + genuine.stderr
    assert json.loads(genuine.stdout)["encrypted"] == 2

    expected = {
        "memo-key": (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.memo.fields[search_attributes]",
        ),
        "copied-header": (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.input.payloads[]",
        ),
        "gzip-labelled": (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.input.payloads[]",
        ),
        "kept-message": (
            "WORKFLOW_EXECUTION_FAILED",
            "workflow_execution_failed_event_attributes.failure.message",
        ),
    }
    for workflow_id, where in expected.items():
        cli = await asyncio.to_thread(
            _scan,
            dev_server.address,
            namespace,
            workflow_id,
            "--allow-foreign-encryption",
        )
        assert cli.returncode == 1, (workflow_id, cli.stdout, cli.stderr)
        report = json.loads(cli.stdout)
        rows = {(row["event_type"], row["field"]) for row in report["plaintext"]}
        assert where in rows, (workflow_id, report)
        assert not report["search_attributes"], (workflow_id, report)
        assert not report["foreign_encryption"], (workflow_id, report)
        assert SECRET not in cli.stdout
