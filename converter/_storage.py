"""S3 offload of large payloads through the SDK's ``ExternalStorage`` and S3 driver.

The SDK applies external storage *after* the codec, so what lands in the bucket is
the already-encrypted payload. We supply the small client adapter the SDK's S3
driver asks for, over plain boto3 (the ``aws`` extra, imported only when a
bucket is configured, so a worker without offload never loads it), and one
extension of the driver: history references carry the SHA-256 of the stored
bytes, so an object that ``keys rewrap`` re-encrypted under a new KEK no longer
matches. :class:`ShieldS3Driver` accepts such an object only when its
*authenticated* header records that very hash as its origin (format version 2);
the codec then authenticates the whole header when it decrypts.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from temporalio.api.common.v1 import Payload
from temporalio.contrib.aws.s3driver import S3StorageDriver, S3StorageDriverClient
from temporalio.converter import (
    ExternalStorage,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
)

from temporal_shield.codec import ENCODING, DecryptionError, aws_client, parse

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


class ShieldS3Driver(S3StorageDriver):
    """The SDK's S3 driver, also accepting objects re-encrypted by ``keys rewrap``."""

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        """Fetch the claimed objects; verify each against its reference.

        Raises:
            ValueError: an object matches neither the referenced hash nor, as a
                re-encryption, records it as its origin.
        """
        return list(await asyncio.gather(*(self._retrieve_one(c) for c in claims)))

    async def _retrieve_one(self, claim: StorageDriverClaim) -> Payload:
        bucket, key = claim.claim_data["bucket"], claim.claim_data["key"]
        if claim.claim_data.get("hash_algorithm") != "sha256" or not claim.claim_data.get(
            "hash_value"
        ):
            raise ValueError(f"S3 reference without a sha256 content hash [key={key}]")
        expected = claim.claim_data["hash_value"].lower()
        data = await self._client.get_object(bucket=bucket, key=key)
        payload = Payload.FromString(data)
        if hashlib.sha256(data).hexdigest() != expected and _origin(payload) != expected:
            raise ValueError(f"S3 object does not match its reference [key={key}]")
        return payload


def _origin(payload: Payload) -> str | None:
    if payload.metadata.get("encoding") != ENCODING:
        return None
    try:
        header, _ = parse(payload.data)
    except DecryptionError:
        return None
    return header.origin.hex() or None


def external_storage(config: StorageConfig) -> ExternalStorage | None:
    """The SDK external-storage settings for ``config``, or ``None`` if offload is off.

    Raises:
        ImportError: offload is on and boto3 is not installed (the message names
            the ``temporal-shield[aws]`` extra).
    """
    if not config.s3_bucket:
        return None
    client = aws_client("s3", config.aws, feature="S3 offload (storage.s3_bucket)")
    driver = ShieldS3Driver(client=Boto3S3Client(client), bucket=config.s3_bucket)
    return ExternalStorage(drivers=[driver], payload_size_threshold=config.threshold)
