"""Audit checkpoints signed by a KMS key and anchored in S3 with Object Lock (moto server)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from temporal_shield._main import main
from temporal_shield.server import AuditConfig, AuditLog

from .conftest import kms_client, s3_client


def _signing_key(aws: dict[str, Any]) -> str:
    kms = kms_client(aws)
    key = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]
    alias = f"alias/audit-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    return f"aws-kms://{alias}"


def _locked_bucket(aws: dict[str, Any], *, default_days: int = 0) -> str:
    s3 = s3_client(aws)
    bucket = f"audit-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    if default_days:
        s3.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": default_days}},
            },
        )
    return bucket


async def _run(config: AuditConfig, count: int) -> Path:
    log = AuditLog(config)
    await log.start()
    for i in range(count):
        await log.commit({"n": i})
    await log.aclose()  # signs the final head in a worker thread
    assert log.healthy
    return Path(config.file)


def _config(tmp_path: Path, aws: dict[str, Any], key: str, bucket: str, **kw: Any) -> AuditConfig:
    return AuditConfig(
        file=str(tmp_path / "log" / "audit.jsonl"),
        replica_id="pod-0",
        signing_key=key,
        checkpoint_every=4,
        s3_bucket=bucket,
        s3_prefix="audit",
        s3_endpoint_url=aws["endpoint_url"],
        s3_region=aws["region_name"],
        kms_endpoint_url=aws["endpoint_url"],
        kms_region=aws["region_name"],
        **kw,
    )


def _verify(capsys: pytest.CaptureFixture[str], aws: dict[str, Any], *args: str) -> tuple[int, str]:
    code = main(
        [
            "audit",
            "verify",
            *args,
            "--s3-endpoint-url",
            aws["endpoint_url"],
            "--s3-region",
            aws["region_name"],
            "--kms-endpoint-url",
            aws["endpoint_url"],
            "--kms-region",
            aws["region_name"],
        ]
    )
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


async def test_kms_signed_checkpoints_anchored_in_s3_verify(
    aws_env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _signing_key(aws_env)
    bucket = _locked_bucket(aws_env)
    path = await _run(_config(tmp_path, aws_env, key, bucket, s3_retention_days=1), 9)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    checkpoints = [r for r in records if r.get("type") == "checkpoint"]
    # One after the first 4 records (signed while more are written), one at close.
    assert len(checkpoints) >= 2
    assert checkpoints[0]["alg"] == "ecdsa-p256-sha256"
    assert checkpoints[-1]["seq"] == len(records) - 1  # the final head covers everything
    s3 = s3_client(aws_env)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"audit/pod-0/{c['seq']:020d}.json" for c in checkpoints]
    head = s3.head_object(Bucket=bucket, Key=keys[0])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    code, out = _verify(
        capsys, aws_env, str(path), "--kms-key", key, "--checkpoints", f"s3://{bucket}/audit"
    )
    assert code == 0, out
    assert f"{len(checkpoints)} external checkpoints match" in out
    # The same check offline, with the public key as a PEM file.
    from cryptography.hazmat.primitives import serialization

    der = kms_client(aws_env).get_public_key(KeyId=key.removeprefix("aws-kms://"))["PublicKey"]
    pem = tmp_path / "kms.pub"
    pem.write_bytes(
        serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, out = _verify(capsys, aws_env, str(path), "--public-key", str(pem))
    assert code == 0, out
    # Truncation before the last checkpoint: the file is a valid shorter chain, S3 says otherwise.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: checkpoints[-1]["seq"] - 1]))
    code, out = _verify(
        capsys, aws_env, str(path), "--kms-key", key, "--checkpoints", f"s3://{bucket}/audit"
    )
    assert code == 1
    assert "records were cut off" in out


@pytest.mark.parametrize("per_object_days", [1, 0])
async def test_object_lock_refuses_deleting_a_checkpoint(
    aws_env: dict[str, Any], tmp_path: Path, per_object_days: int
) -> None:
    # Either each object carries COMPLIANCE retention, or the bucket's default rule does.
    key = _signing_key(aws_env)
    bucket = _locked_bucket(aws_env, default_days=0 if per_object_days else 1)
    await _run(_config(tmp_path, aws_env, key, bucket, s3_retention_days=per_object_days), 2)
    s3 = s3_client(aws_env)
    version = s3.list_object_versions(Bucket=bucket)["Versions"][0]
    with pytest.raises(ClientError) as caught:
        s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    assert caught.value.response["Error"]["Code"] == "AccessDenied"


async def test_a_replaced_s3_checkpoint_version_is_reported(
    aws_env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An insider who can sign (holds kms:Sign) writes a new version of a checkpoint
    # object: the locked original version is still there, and verify reads every version.
    key = _signing_key(aws_env)
    bucket = _locked_bucket(aws_env)
    path = await _run(_config(tmp_path, aws_env, key, bucket, s3_retention_days=1), 5)
    s3 = s3_client(aws_env)
    first = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])[0]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=first)["Body"].read())
    doc["head"] = "0" * 64
    s3.put_object(Bucket=bucket, Key=first, Body=json.dumps(doc).encode())
    code, out = _verify(
        capsys, aws_env, str(path), "--kms-key", key, "--checkpoints", f"s3://{bucket}/audit"
    )
    assert code == 1
    assert "signature is not valid" in out or "says something else" in out


async def test_kms_outage_marks_the_log_failing_without_blocking_writes(
    aws_env: dict[str, Any], tmp_path: Path
) -> None:
    key = _signing_key(aws_env)
    bucket = _locked_bucket(aws_env)
    config = _config(tmp_path, aws_env, key, bucket, s3_retention_days=1)
    log = AuditLog(config)
    # The key becomes unusable after start (moto does not model disabled keys).
    kms_client(aws_env).delete_alias(AliasName=key.removeprefix("aws-kms://"))
    for i in range(6):
        await log.commit({"n": i})  # requests are answered while signing fails
    for task in list(log._tasks):
        await task
    assert log.failing
    assert log.checkpoint_failures >= 1
    await log.aclose()
