"""``temporal-shield demo``: the product's main job on embedded defaults.

Starts a Temporal dev server (with its Web UI pointed at the codec server) and a
worker with the converter on a fresh local keyring in a temporary directory,
runs a workflow with PII-like data and prints the input as Temporal stored it
(ciphertext) next to the decoded input. With ``--no-wait`` it stops there (a URL
or command would point at stopped servers).

Otherwise it runs an order (``default``, internal data) and a payment (the
production-like ``prod-payments``, card data), starts the demo's
development-only identity provider (:mod:`._demo_idp`) and the codec server —
sign-in with a session cookie, bearer tokens from the same provider, a policy
with roles, a step-up rule and just-in-time grants kept as workflows on the dev
server, an audit log — and prints a guide: the Web UI URL, sign-in as a person
of the demo, the placeholders for what that person may not read, the grant
commands, the step-up sign-in, and a ready ``temporal workflow show`` command.
It runs until Ctrl-C and stops everything it started.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield.codec import KEY_ID_METADATA, Keyring
from temporal_shield.converter import (
    ClassificationConfig,
    KeysConfig,
    ShieldConfig,
    ShieldPlugin,
    client_connect_config,
)
from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, create_app
from temporal_shield.server._config import GrantsConfig, OidcConfig
from temporal_shield.server._secrets import create_secret_file

from ._demo_idp import ACR_SECURITY_KEY, USERS, DemoIdentityProvider
from ._devserver import DevServer, free_port, temporal_cli
from ._sample import Intake, IntakeWorkflow, RecordWorkflow, summarise, triage

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


PROD_NAMESPACE = "prod-payments"
"""The production-like namespace: reading it needs a grant and a security-key sign-in."""
GRANTS_NAMESPACE = "temporal-shield-grants"
"""Where the codec server keeps its grant workflows (a namespace of their own)."""
CLIENT_ID = "temporal-shield-demo"
AUDIENCE = "temporal-shield-codec"
DEMO_POLICY = f"""\
# Demo RBAC policy. People (demo identity provider): alice (engineering),
# bob (security), carol (clinical).
roles:
  engineer:          # development data, read and written freely
    namespaces: [default]
    operations: [decode, encode]
    classifications: [internal]
  clinical-reader:   # patient records
    namespaces: [default]
    operations: [decode]
    classifications: [internal, phi]
bindings:
  - {{role: engineer, groups: [engineering, security]}}
  - {{role: clinical-reader, groups: [clinical]}}
step_up:             # production payloads need a security-key sign-in, whoever reads them
  - namespaces: ["prod-*"]
    acr: ["{ACR_SECURITY_KEY}"]
grants:              # nobody holds a production role: access is requested and approved
  namespaces: ["prod-*"]
  classifications: ["*"]
  max_duration: 3600
  requesters: {{groups: [engineering]}}
  approvers: {{groups: [security]}}
"""
CLASSIFICATION = ClassificationConfig(
    default="internal",
    workflow_ids=(("intake-*", "phi"),),
    namespaces=(("prod-*", "pci"),),
)
"""Intakes carry patient data (phi), production payments card data (pci), the rest internal."""
ORDER = {"order": "ORD-1042", "item": "standing desk", "status": "shipped"}
PAYMENT = {"cardholder": "Sam Example", "card_number": "5500 0000 0000 0004", "amount": "129.00"}


async def _start_codec_server(
    workdir: Path, shield: ShieldConfig, port: int, ui_url: str, temporal_address: str
) -> tuple[web.AppRunner, DemoIdentityProvider]:
    public_url = f"http://localhost:{port}"
    idp = DemoIdentityProvider(
        client_id=CLIENT_ID,
        redirect_uri=f"{public_url}/auth/callback",
        audience=AUDIENCE,
        port=free_port(),
    )
    await idp.start()
    policy = workdir / "policy.yaml"
    policy.write_text(DEMO_POLICY)
    config = ServerConfig(
        host="127.0.0.1",
        port=port,
        public_url=public_url,
        secret_file=str(create_secret_file(workdir / "server.secret")),
        # Only the UI on localhost: the session cookie reaches the codec server
        # from the same site only (docs/sign-in.md), and 127.0.0.1 is another site.
        cors_origins=(ui_url,),
        cors_credentials=True,
        policy_file=str(policy),
        auth=AuthConfig(
            issuer=idp.issuer,
            audience=(AUDIENCE,),
            algorithms=("ES256",),
            jwks_url=f"{idp.issuer}/jwks",
        ),
        oidc=OidcConfig(issuer=idp.issuer, client_id=CLIENT_ID, acr_values=(ACR_SECURITY_KEY,)),
        grants=GrantsConfig(enabled=True, namespace=GRANTS_NAMESPACE, refresh_interval=1.0),
        audit=AuditConfig(file=str(workdir / "audit.jsonl")),
    )
    try:
        app = create_app(
            config,
            shield,
            allow_development_idp=True,
            temporal_env={"TEMPORAL_ADDRESS": temporal_address},
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
    except BaseException:
        await idp.stop()
        raise
    return runner, idp


def _token_file(workdir: Path, idp: DemoIdentityProvider, sub: str) -> Path:
    """``sub``'s bearer token in a private file (a token is a secret: not on the screen)."""
    path = workdir / f"{sub}.token"
    path.touch(mode=0o600)
    path.write_text(idp.token(sub))
    return path


def _shield_cli() -> str:
    """How to run ``temporal-shield`` from a shell (its script, or this Python's module)."""
    beside = Path(sys.executable).with_name("temporal-shield")
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m temporal_shield"


async def _run_record(
    config: ShieldConfig, address: str, namespace: str, workflow_id: str, record: dict[str, str]
) -> None:
    connect = client_connect_config(config, address=address, namespace=namespace, env={})
    client = await Client.connect(**connect, plugins=[ShieldPlugin(config)])
    async with Worker(
        client, task_queue="shield-demo", workflows=[RecordWorkflow], activities=[summarise]
    ):
        await client.execute_workflow(
            RecordWorkflow.run, record, id=workflow_id, task_queue="shield-demo"
        )


def _guide(
    *,
    workdir: Path,
    codec_url: str,
    idp: DemoIdentityProvider,
    ui_url: str,
    order_id: str,
    intake_id: str,
    payment_id: str,
) -> str:
    """What a person does next, with every URL and command ready to use."""
    people = "; ".join(f"{u.sub} ({u.about})" for u in USERS)
    default_list = f"{ui_url}/namespaces/default/workflows"
    payment_page = f"{ui_url}/namespaces/{PROD_NAMESPACE}/workflows/{payment_id}"
    sign_in = f"{codec_url}/auth/login?{urlencode({'return_to': default_list})}"
    step_up = f"{codec_url}/auth/login?" + urlencode(
        {"acr_values": ACR_SECURITY_KEY, "return_to": payment_page}
    )
    cli = _shield_cli()
    alice, bob = (shlex.quote(str(_token_file(workdir, idp, s))) for s in ("alice", "bob"))
    request = (
        f'TEMPORAL_SHIELD_TOKEN="$(cat {alice})" {cli} grants request'
        f" --namespace {PROD_NAMESPACE} --classification pci --duration 30m"
        ' --justification "DEMO-1 refund dispute"'
    )
    approve = f'TEMPORAL_SHIELD_TOKEN="$(cat {bob})" {cli} grants approve GRANT_ID'
    return f"""
codec server:      {codec_url} (sign-in, RBAC policy, step-up, just-in-time grants)
identity provider: {idp.issuer} (DEVELOPMENT ONLY: anyone signs in as anyone;
                   `temporal-shield serve` refuses it)
audit log:         {workdir}/audit.jsonl
policy:            {workdir}/policy.yaml (roles, the step-up rule, who may request and approve)
people:            {people}

In a browser on this machine:
 1. Open the Web UI: {default_list}
    Once, so that the UI sends the codec server its sign-in cookie: click the
    codec icon in the top bar ("Codec Server is configured"). The panel shows
    this server as the Cluster-level setting, which cannot send cookies: pick
    "Use my browser setting and ignore Cluster-level setting", enter
    {codec_url}, turn on "Include cross-origin credentials" and Apply.
    Until you sign in, payloads read "sign-in required".
 2. Sign in as alice: {sign_in}
    {order_id} (internal) is decoded; {intake_id} (patient data, phi) shows
    what is withheld, why, and the role that may read it (clinical-reader,
    which carol holds). The UI shows links in notices as text: copy them.
 3. Production: {payment_page}
    alice holds no production role: the payment card data needs a grant that
    someone else approves, and a sign-in with a security key.
 4. Request and approve the grant (the token files stand in for the tokens
    your identity provider gives the CLI):
    export TEMPORAL_SHIELD_SERVER_URL={codec_url}
    {request}
    {approve}
    (GRANT_ID: the id the request printed. alice cannot approve it: she is not
    an approver, and no approver may approve their own request either)
 5. Step up: {step_up}
    Sign in as alice with "I touch my security key" (ticked for you): back on
    the payment page it is decoded, and its audit record names the grant and
    its justification. (The notice's own step-up link works too, and leads
    back to the UI's start page.)"""


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
    config = ShieldConfig(keys=KeysConfig(uri=f"local://{keyring}"), classification=CLASSIFICATION)
    print(f"keyring:      {keyring} (one fresh 256-bit KEK, mode 0600)")
    codec_port = free_port()
    # localhost, not 127.0.0.1: the UI and the codec server on one site, so the
    # browser sends the codec server its session cookie (docs/sign-in.md).
    codec_url = f"http://localhost:{codec_port}"
    namespaces = (PROD_NAMESPACE, GRANTS_NAMESPACE)
    with DevServer(ui=True, codec_endpoint=codec_url, namespaces=namespaces) as server:
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
        assert server.ui_port is not None
        ui_url = f"http://localhost:{server.ui_port}"
        suffix = workflow_id.removeprefix("intake-")
        order_id, payment_id = f"order-{suffix}", f"payment-{suffix}"
        await _run_record(config, server.address, "default", order_id, ORDER)
        await _run_record(config, server.address, PROD_NAMESPACE, payment_id, PAYMENT)
        runner, idp = await _start_codec_server(workdir, config, codec_port, ui_url, server.address)
        try:
            print(
                _guide(
                    workdir=workdir,
                    codec_url=codec_url,
                    idp=idp,
                    ui_url=ui_url,
                    order_id=order_id,
                    intake_id=workflow_id,
                    payment_id=payment_id,
                )
            )
            cli = temporal_cli() or "temporal"
            print(f"\nWeb UI:       {ui_url}/namespaces/default/workflows/{workflow_id}")
            print("\nDecrypt for a person, through the codec server, with the real CLI (as carol):")
            print(
                f"    {cli} workflow show --workflow-id {workflow_id} --address {server.address} "
                f"--codec-endpoint {codec_url} --codec-auth 'Bearer {idp.token('carol')}'"
            )
            print(
                "\nPress Ctrl-C to stop the dev server, the codec server and the identity provider."
            )
            sys.stdout.flush()
            await _until_stopped()
        finally:
            await runner.cleanup()
            await idp.stop()
        return 0


def main(*, wait: bool = True) -> int:
    """Entry point of ``temporal-shield demo``."""
    with tempfile.TemporaryDirectory(prefix="temporal-shield-demo-") as tmp:
        return asyncio.run(run_demo(Path(tmp), wait=wait))
