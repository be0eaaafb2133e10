"""The codec server in front of a KMS that hangs mid-life: 503 ``kms_unavailable`` in seconds.

KMS is moto behind a relay on 127.0.0.1 that goes silent on demand (new and
pooled connections alike), so the server starts and resolves its key normally
and then meets a real hung endpoint.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from temporalio.api.common.v1 import Payload

from temporal_shield.converter import KeysConfig, ShieldConfig, build_codec
from temporal_shield.server import create_app

from ..blackhole import Blackhole
from ..server.conftest import CLASSIFICATION, ORIGIN, POLICY, server_config, wire_body
from ..server.idp import Idp
from .conftest import kms_client

pytestmark = pytest.mark.integration

BOUND = 30.0  # generous: configured for ~2-4 s; botocore's defaults take ~180 s


async def test_hung_kms_gives_503_within_seconds(aws_env: dict[str, Any], tmp_path: Path) -> None:
    key_id = kms_client(aws_env).create_key()["KeyMetadata"]["KeyId"]
    moto = urlsplit(aws_env["endpoint_url"])
    assert moto.hostname is not None
    assert moto.port is not None
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    idp = Idp()
    await idp.start()
    with Blackhole((moto.hostname, moto.port)) as relay:
        shield = ShieldConfig(
            keys=KeysConfig(
                uri=f"aws-kms://{key_id}",
                aws_endpoint_url=relay.url,
                kms_connect_timeout=1,
                kms_read_timeout=1,
                kms_max_attempts=2,
            ),
            classification=CLASSIFICATION,
        )
        plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"SECRET-MARKER"')
        (sealed,) = await build_codec(shield).with_namespace("dev-team").encode([plain])
        app = create_app(server_config(idp, policy, tmp_path), shield, audit_stdout=io.StringIO())
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            relay.hang()
            started = time.monotonic()
            resp = await client.post(
                "/decode",
                json=wire_body(sealed),
                headers={
                    "Authorization": f"Bearer {idp.token(groups=['engineering'])}",
                    "X-Namespace": "dev-team",
                    "Origin": ORIGIN,
                },
            )
            elapsed = time.monotonic() - started
            body = await resp.json()
        finally:
            await client.close()
            await idp.stop()
    assert resp.status == 503
    assert body["error"] == "kms_unavailable"
    assert "SECRET-MARKER" not in str(body)
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert elapsed < BOUND
