"""Key lifecycle for S3-offloaded payloads: rotate, rewrap, retire, still readable."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer
from temporal_shield.codec import DecryptionError, Keyring, parse
from temporal_shield.converter import (
    RewrapReport,
    ShieldPlugin,
    build_codec,
    rewrap,
)

from .conftest import offload_setup
from .test_scan_concurrency import run_with_tty_stderr
from .workflows import EchoWorkflow, mark

pytestmark = pytest.mark.integration


def _objects(s3: Any, bucket: str) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _key_id(data: bytes) -> str:
    return Payload.FromString(data).metadata["encryption-key-id"].decode()


async def test_rotate_rewrap_retire_keeps_every_object_readable(
    dev_server: DevServer, tmp_path: Path, aws_env: dict[str, Any]
) -> None:
    s3, bucket, ring, config = offload_setup(aws_env, tmp_path, threshold=4096)
    old_key = f"local:{Keyring.load(ring).primary}"
    big = mark("large") + os.urandom(16 * 1024).hex()
    queue = f"rewrap-{uuid.uuid4().hex[:6]}"
    client = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    async with Worker(client, task_queue=queue, workflows=[EchoWorkflow]):
        await client.execute_workflow(EchoWorkflow.run, big, id=queue, task_queue=queue)
    originals = _objects(s3, bucket)
    assert originals
    assert {_key_id(d) for d in originals.values()} == {old_key}

    Keyring.load(ring).rotated().save(ring)
    new_key = f"local:{Keyring.load(ring).primary}"
    envelope = build_codec(config).envelope

    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "temporal_shield", "keys", "rewrap", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}",
            "TEMPORAL_SHIELD_STORAGE_S3_BUCKET": bucket,
            "TEMPORAL_SHIELD_STORAGE_S3_ENDPOINT_URL": aws_env["endpoint_url"],
        },
    )
    assert cli.returncode == 0, cli.stderr
    assert f"would re-encrypt {len(originals)}" in cli.stdout
    assert "rewrap:" not in cli.stderr  # no progress noise when stderr is not a terminal
    status, out, err = await asyncio.to_thread(
        run_with_tty_stderr,
        ["keys", "rewrap", "--dry-run"],
        {
            **os.environ,
            "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}",
            "TEMPORAL_SHIELD_STORAGE_S3_BUCKET": bucket,
            "TEMPORAL_SHIELD_STORAGE_S3_ENDPOINT_URL": aws_env["endpoint_url"],
        },
    )
    assert status == 0, err
    assert re.search(r"\rrewrap: \d+ objects, would re-encrypt \d+", err), err
    assert err.rstrip().endswith("failed 0")  # the line is ended before the report
    assert f"would re-encrypt {len(originals)}" in out
    dry = await rewrap(s3, bucket, envelope, dry_run=True)
    assert dry.rewrapped == len(originals)
    assert _objects(s3, bucket) == originals  # a dry run changes nothing

    report = await rewrap(s3, bucket, envelope)
    assert report.rewrapped == len(originals)
    assert report.failed == []
    rewrapped = _objects(s3, bucket)
    for key, data in rewrapped.items():
        assert _key_id(data) == new_key
        header, _ = parse(Payload.FromString(data).data)
        assert header.origin == hashlib.sha256(originals[key]).digest()
        assert mark("large").encode() not in data

    again = await rewrap(s3, bucket, envelope)  # idempotent: nothing left to do
    assert (again.rewrapped, again.current) == (0, len(originals))

    # Retire the old key: the history's references still resolve, through the
    # authenticated origin, to objects under the new key.
    Keyring.load(ring).retired(old_key.removeprefix("local:")).save(ring)
    reader = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    assert await reader.get_workflow_handle(queue).result() == big
    # The retired key id is refused for anything still under it.
    codec = build_codec(config)
    with pytest.raises(DecryptionError):
        await codec.decode([Payload.FromString(next(iter(originals.values())))])
    # An object still under it is a failure a dry run predicts, with the reason.
    stale_key = next(iter(originals))
    s3.put_object(Bucket=bucket, Key=stale_key, Body=originals[stale_key])
    for dry_run in (True, False):
        failed = await rewrap(s3, bucket, codec.envelope, dry_run=dry_run)
        assert failed.failed == [stale_key]
        assert "add it to keys.decrypt_uris" in failed.reasons[stale_key]
        assert old_key in failed.reasons[stale_key]
    assert RewrapReport.from_json(failed.as_json()) == failed
    s3.put_object(Bucket=bucket, Key=stale_key, Body=rewrapped[stale_key])

    # An object whose origin does not match its reference is refused on read.
    key, data = next(iter(rewrapped.items()))
    payload = Payload.FromString(data)
    header, _ = parse(payload.data)
    at = payload.data.index(header.origin)
    forged = bytearray(payload.data)
    forged[at] ^= 1
    payload.data = bytes(forged)
    s3.put_object(Bucket=bucket, Key=key, Body=payload.SerializeToString())
    fresh = await Client.connect(dev_server.address, plugins=[ShieldPlugin(config)])
    with pytest.raises(Exception) as info:  # noqa: PT011 - the SDK may wrap the driver's error
        await fresh.get_workflow_handle(queue).result()
    chain: list[str] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("does not match its reference" in text for text in chain), chain


async def test_every_failed_object_says_why_and_the_run_exits_1(
    tmp_path: Path, aws_env: dict[str, Any]
) -> None:
    """A damaged object under a usable key fails the real run (not a dry run), with
    its reason in the text and the JSON report; the rest are re-encrypted."""
    s3, bucket, ring, config = offload_setup(aws_env, tmp_path, threshold=4096)
    codec = build_codec(config).with_namespace("default")
    old_key = f"local:{Keyring.load(ring).primary}"
    for name in ("good", "damaged"):
        (sealed,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
        if name == "damaged":
            sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
        s3.put_object(Bucket=bucket, Key=f"v0/t/{name}", Body=sealed.SerializeToString())
    Keyring.load(ring).rotated().save(ring)
    env = {
        **os.environ,
        "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}",
        "TEMPORAL_SHIELD_STORAGE_S3_BUCKET": bucket,
        "TEMPORAL_SHIELD_STORAGE_S3_ENDPOINT_URL": aws_env["endpoint_url"],
    }

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "temporal_shield", "keys", "rewrap", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    dry = cli("--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr  # a dry run cannot see damage
    assert "would re-encrypt 2" in dry.stdout
    text = cli()
    assert text.returncode == 1
    assert "re-encrypted 1," in text.stdout
    assert f"failed: v0/t/damaged: does not decrypt under {old_key}" in text.stdout
    as_json = cli("--output", "json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert (report["rewrapped"], report["current"], report["failed"]) == (0, 1, ["v0/t/damaged"])
    assert report["reasons"]["v0/t/damaged"].startswith("does not decrypt under")
