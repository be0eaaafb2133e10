"""``temporal-shield demo``: the product's main job on embedded defaults.

Starts a Temporal dev server (with its Web UI pointed at the codec server) and a
worker with the converter on a fresh local keyring in a temporary directory,
runs a workflow with PII-like data and prints the input as Temporal stored it
(ciphertext) next to the decoded input. Then it starts the codec server — JWT
authentication against a locally generated signing key standing in for the
identity provider, a demo RBAC policy, an audit log — prints the workflow's Web
UI URL and a ready ``temporal workflow show`` command with a token, and keeps
running until Ctrl-C. It stops everything it started. With ``--no-wait`` it
stops after the workflow and prints neither (they would point at stopped servers).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield.codec import KEY_ID_METADATA, Keyring
from temporal_shield.converter import (
    KeysConfig,
    ShieldConfig,
    ShieldPlugin,
    client_connect_config,
)
from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, create_app

from ._devserver import DevServer, free_port, temporal_cli
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


DEMO_POLICY = """\
# Demo RBAC policy: the demo user may read and write every classification in `default`.
roles:
  demo-reader:
    namespaces: ["default"]
    operations: [decode, encode]
    classifications: ["*"]
bindings:
  - role: demo-reader
    subjects: [demo-user]
"""
DEMO_ISSUER = "urn:temporal-shield:demo-idp"
DEMO_AUDIENCE = "temporal-shield-codec"


def _demo_identity_provider(workdir: Path) -> tuple[Path, str]:
    """A signing key standing in for the IdP: its public key file and one token."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = workdir / "demo-idp.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())
    token = jwt.encode(
        {
            "sub": "demo-user",
            "iss": DEMO_ISSUER,
            "aud": DEMO_AUDIENCE,
            "iat": now,
            "exp": now + 8 * 3600,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithm="ES256",
        headers={"kid": public.stem},
    )
    return public, token


async def _start_codec_server(
    workdir: Path, shield: ShieldConfig, port: int, ui_url: str
) -> tuple[web.AppRunner, str]:
    public_key, token = _demo_identity_provider(workdir)
    policy = workdir / "policy.yaml"
    policy.write_text(DEMO_POLICY)
    config = ServerConfig(
        host="127.0.0.1",
        port=port,
        cors_origins=(ui_url, ui_url.replace("127.0.0.1", "localhost")),
        policy_file=str(policy),
        auth=AuthConfig(
            issuer=DEMO_ISSUER,
            audience=(DEMO_AUDIENCE,),
            algorithms=("ES256",),
            public_key_files=(str(public_key),),
        ),
        audit=AuditConfig(file=str(workdir / "audit.jsonl")),
    )
    runner = web.AppRunner(create_app(config, shield), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    return runner, token


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_demo(workdir: Path, *, wait: bool = True) -> int:
    """Run the demo in ``workdir``; returns a process exit code."""
    keyring = workdir / "keyring.json"
    Keyring.new().save(keyring)
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{keyring}"))
    print(f"keyring:      {keyring} (one fresh 256-bit KEK, mode 0600)")
    codec_port = free_port()
    codec_url = f"http://127.0.0.1:{codec_port}"
    with DevServer(ui=True, codec_endpoint=codec_url) as server:
        print(f"dev server:   {server.address}")
        # How a worker connects (envconfig + our [tls]); env={} because the demo's
        # own dev server must not be redirected by the caller's TEMPORAL_* settings.
        connect = client_connect_config(config, address=server.address, env={})
        client = await Client.connect(**connect, plugins=[ShieldPlugin(config)])
        raw = await Client.connect(**connect)  # no codec: sees what the server stores
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
        if leaked:
            return 1
        if not wait:
            # Everything stops on return: a URL or command for it would not work.
            print(
                "\n--no-wait: the dev server stops now and no codec server is started; run "
                "`temporal-shield demo` without --no-wait for the Web UI and a decrypting "
                "`temporal workflow show` command."
            )
            return 0
        assert server.ui_url is not None
        runner, token = await _start_codec_server(workdir, config, codec_port, server.ui_url)
        try:
            cli = temporal_cli() or "temporal"
            print(f"\ncodec server: {codec_url} (JWT auth, RBAC policy)")
            print(f"audit log:    {workdir}/audit.jsonl")
            print(f"Web UI:       {server.ui_url}/namespaces/default/workflows/{workflow_id}")
            print(
                "              (the UI shows ciphertext and a codec banner unless its\n"
                "               requests carry the token below: an OIDC login in production,\n"
                "               a header extension here)"
            )
            print("\nDecrypt for a person, through the codec server, with the real CLI:")
            print(
                f"    {cli} workflow show --workflow-id {workflow_id} --address {server.address} "
                f"--codec-endpoint {codec_url} --codec-auth 'Bearer {token}'"
            )
            print("\nPress Ctrl-C to stop the dev server and the codec server.")
            sys.stdout.flush()
            await _until_stopped()
        finally:
            await runner.cleanup()
        return 0


def main(*, wait: bool = True) -> int:
    """Entry point of ``temporal-shield demo``."""
    with tempfile.TemporaryDirectory(prefix="temporal-shield-demo-") as tmp:
        return asyncio.run(run_demo(Path(tmp), wait=wait))
