"""S3 offload of large payloads through the SDK's ``ExternalStorage`` and S3 driver.

The SDK applies external storage *after* the codec, so what lands in the bucket is
the already-encrypted payload. We only supply the small client adapter the SDK's
S3 driver asks for, over plain boto3 (already a worker dependency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import boto3
from temporalio.contrib.aws.s3driver import S3StorageDriver, S3StorageDriverClient
from temporalio.converter import ExternalStorage

from ._config import StorageConfig

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


class Boto3S3Client(S3StorageDriverClient):
    """:class:`S3StorageDriverClient` over a boto3 S3 client (calls run in a thread)."""

    def __init__(self, client: S3Client) -> None:
        """Wrap ``client``."""
        self._client = client

    async def put_object(self, *, bucket: str, key: str, data: bytes) -> None:
        """See base class."""
        await asyncio.to_thread(self._client.put_object, Bucket=bucket, Key=key, Body=data)

    async def object_exists(self, *, bucket: str, key: str) -> bool:
        """See base class."""
        try:
            await asyncio.to_thread(self._client.head_object, Bucket=bucket, Key=key)
        except self._client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def get_object(self, *, bucket: str, key: str) -> bytes:
        """See base class."""
        resp = await asyncio.to_thread(self._client.get_object, Bucket=bucket, Key=key)
        return await asyncio.to_thread(resp["Body"].read)

    def describe(self) -> Mapping[str, str]:
        """See base class."""
        return {"region": str(self._client.meta.region_name)}


def external_storage(config: StorageConfig) -> ExternalStorage | None:
    """The SDK external-storage settings for ``config``, or ``None`` if offload is off."""
    if not config.s3_bucket:
        return None
    client = boto3.client("s3", region_name=config.s3_region, endpoint_url=config.s3_endpoint_url)
    driver = S3StorageDriver(client=Boto3S3Client(client), bucket=config.s3_bucket)
    return ExternalStorage(drivers=[driver], payload_size_threshold=config.threshold)
