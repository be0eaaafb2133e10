"""``temporal-shield demo``: the product's main job on embedded defaults.

Starts a Temporal dev server and a worker with the converter on a fresh local
keyring in a temporary directory, runs a workflow with PII-like data, prints the
input as Temporal stored it (ciphertext) next to the decoded input, and stops
everything it started.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import uuid
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield.codec import KEY_ID_METADATA, Keyring
from temporal_shield.converter import KeysConfig, ShieldConfig, ShieldPlugin

from ._devserver import DevServer
from ._sample import Intake, IntakeWorkflow, triage

SAMPLE = Intake(
    patient="Jane Q. Example",
    ssn="078-05-1120",
    diagnosis="seasonal allergies",
    card_number="4111 1111 1111 1111",
)


def _describe(payload: Payload, limit: int = 72) -> str:
    meta = {k: v.decode(errors="replace") for k, v in sorted(payload.metadata.items())}
    data = base64.b64encode(payload.data).decode()
    more = f"... ({len(payload.data)} bytes)" if len(data) > limit else ""
    return f"metadata={json.dumps(meta)}\n    data={data[:limit]}{more}"


async def run_demo(workdir: Path) -> int:
    """Run the demo in ``workdir``; returns a process exit code."""
    keyring = workdir / "keyring.json"
    Keyring.new().save(keyring)
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{keyring}"))
    print(f"keyring:      {keyring} (one fresh 256-bit KEK, mode 0600)")
    with DevServer() as server:
        print(f"dev server:   {server.address}")
        client = await Client.connect(server.address, plugins=[ShieldPlugin(config)])
        raw = await Client.connect(server.address)  # no codec: sees what the server stores
        workflow_id = f"intake-{uuid.uuid4().hex[:8]}"
        async with Worker(
            client, task_queue="shield-demo", workflows=[IntakeWorkflow], activities=[triage]
        ):
            result = await client.execute_workflow(
                IntakeWorkflow.run, SAMPLE, id=workflow_id, task_queue="shield-demo"
            )
        history = await raw.get_workflow_handle(workflow_id).fetch_history()
        stored = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
        codec = client.data_converter.payload_codec
        assert codec is not None
        decoded = (await codec.decode([stored]))[0]
        print(f"workflow:     {workflow_id} completed: {result!r}\n")
        print("Stored in Temporal's history (what the server, its database and backups see):")
        print(f"    {_describe(stored)}\n")
        print("Decoded with temporal-shield (what an authorised reader sees):")
        print(f"    {_describe(decoded, limit=10_000)}")
        print(f"    as text: {decoded.data.decode()}\n")
        key_id = stored.metadata[KEY_ID_METADATA].decode()
        leaked = SAMPLE.ssn.encode() in history.to_json().encode()
        print(f"key id {key_id}; SSN present in raw history: {leaked}")
        return 1 if leaked else 0


def main() -> int:
    """Entry point of ``temporal-shield demo``."""
    with tempfile.TemporaryDirectory(prefix="temporal-shield-demo-") as tmp:
        return asyncio.run(run_demo(Path(tmp)))
