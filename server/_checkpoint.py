r"""Signed checkpoints of an audit chain and the append-only places they are anchored.

A checkpoint states "replica R's chain had S records and record S had hash H
at time T", signed. It is written twice: as a record in the chain itself
(``"type": "checkpoint"``) and as a document (``"type": "audit_checkpoint"``)
to external sinks that the log's writer cannot rewrite — S3 with Object Lock
(one object per checkpoint, ``<prefix>/<replica>/<seq:020d>.json``) and/or a
JSON line on standard output for a log pipeline.

Signed message: ``temporal-shield audit checkpoint v1\n`` followed by the
canonical JSON (sorted keys, no whitespace) of ``head``, ``replica``, ``seq``,
``time`` and ``v``. The prefix keeps a checkpoint signature from meaning
anything in another protocol that uses the same key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from temporal_shield.codec import ConfigError, ShieldError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

DOC_TYPE = "audit_checkpoint"
"""``type`` of a checkpoint document outside the chain (S3 object, stdout line)."""
RECORD_TYPE = "checkpoint"
"""``type`` of a checkpoint record inside the chain."""
_PREFIX = b"temporal-shield audit checkpoint v1\n"
_CANONICAL = msgspec.json.Encoder(order="sorted")
REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Replica ids: host-name characters, so they are safe in file names and S3 keys."""


class CheckpointError(ShieldError):
    """A checkpoint document is malformed (not a signature failure)."""


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One signed statement about a chain head."""

    replica: str
    seq: int
    """Number of records in the chain up to and including the head (its 1-based line)."""
    head: str
    """Hash of record ``seq``."""
    time: str
    """UTC time of signing, ISO 8601."""
    key: str = ""
    """Id of the verifying key (:func:`~._signer.key_id`)."""
    alg: str = ""
    """``ed25519`` or ``ecdsa-p256-sha256``."""
    signer: str = ""
    """What signed (``ed25519`` or ``aws-kms:<key ARN>``); informational, not signed."""
    sig: str = ""
    """Base64 signature over :meth:`message`."""

    def message(self) -> bytes:
        """The bytes that are signed."""
        body = {"head": self.head, "replica": self.replica, "seq": self.seq, "time": self.time}
        return _PREFIX + _CANONICAL.encode({**body, "v": 1})

    def signature(self) -> bytes:
        """The decoded signature (empty if it is not base64)."""
        try:
            return base64.b64decode(self.sig, validate=True)
        except (binascii.Error, ValueError):
            return b""

    def fields(self) -> dict[str, Any]:
        """The checkpoint's fields (without a ``type``)."""
        return {
            "replica": self.replica,
            "seq": self.seq,
            "head": self.head,
            "time": self.time,
            "key": self.key,
            "alg": self.alg,
            "signer": self.signer,
            "sig": self.sig,
        }

    def document(self) -> dict[str, Any]:
        """The external form (S3 object, stdout line)."""
        return {"type": DOC_TYPE, **self.fields()}

    @classmethod
    def parse(cls, doc: Any) -> Checkpoint:
        """Read a checkpoint record or document.

        Raises:
            CheckpointError: a field is missing or has the wrong type.
        """
        if not isinstance(doc, dict) or doc.get("type") not in (DOC_TYPE, RECORD_TYPE):
            raise CheckpointError("not a checkpoint")
        try:
            values = {
                name: doc[name]
                for name in ("replica", "seq", "head", "time", "key", "alg", "signer", "sig")
            }
        except KeyError as exc:
            raise CheckpointError(f"checkpoint without {exc.args[0]!r}") from None
        if not isinstance(values["seq"], int) or isinstance(values["seq"], bool):
            raise CheckpointError("checkpoint seq is not an integer")
        if any(not isinstance(v, str) for k, v in values.items() if k != "seq"):
            raise CheckpointError("checkpoint field of the wrong type")
        return cls(**values)


def utc_now() -> str:
    """Current UTC time, ISO 8601 with milliseconds."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class CheckpointSink(ABC):
    """An append-only place outside the log file that keeps every checkpoint.

    Contract: :meth:`put` is blocking (network) and runs in a worker thread;
    it stores the document or raises (any exception counts as a failed
    anchor, retried with the next checkpoint); it never overwrites or deletes
    an earlier checkpoint.
    """

    @abstractmethod
    def put(self, checkpoint: Checkpoint) -> None:
        """Store one checkpoint; see the class contract."""


class StdoutSink(CheckpointSink):
    """One JSON line per checkpoint (``"type": "audit_checkpoint"``) for a log pipeline."""

    def __init__(self, stream: IO[str]) -> None:
        """Write to ``stream`` (standard output in production)."""
        self._stream = stream

    def put(self, checkpoint: Checkpoint) -> None:
        """See base class."""
        self._stream.write(json.dumps(checkpoint.document(), sort_keys=True) + "\n")
        self._stream.flush()


def object_key(prefix: str, replica: str, seq: int) -> str:
    """S3 key of a checkpoint: ``<prefix>/<replica>/<seq:020d>.json`` (sorted by seq)."""
    return f"{prefix.strip('/')}/{replica}/{seq:020d}.json".lstrip("/")


class S3Sink(CheckpointSink):
    """One S3 object per checkpoint in a bucket with Object Lock enabled.

    With ``retention_days`` > 0 each object is put with ``ObjectLockMode=COMPLIANCE``
    and a retain-until date, so nobody (the root account included) can delete or
    overwrite that version until then. With 0 the bucket's default retention
    applies; the bucket must then have a COMPLIANCE default rule.
    """

    def __init__(
        self, client: S3Client, bucket: str, prefix: str, *, retention_days: int = 0
    ) -> None:
        """Write to ``bucket`` under ``prefix``."""
        self._client = client
        self._bucket = bucket
        self._prefix = prefix
        self._retention_days = retention_days

    def put(self, checkpoint: Checkpoint) -> None:
        """See base class."""
        extra: dict[str, Any] = {}
        if self._retention_days > 0:
            until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                days=self._retention_days
            )
            extra = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}
        self._client.put_object(
            Bucket=self._bucket,
            Key=object_key(self._prefix, checkpoint.replica, checkpoint.seq),
            Body=json.dumps(checkpoint.document(), sort_keys=True).encode(),
            ContentType="application/json",
            # Object Lock puts need an integrity checksum (Content-MD5 or a flexible one).
            ChecksumAlgorithm="SHA256",
            **extra,
        )


def s3_client(*, region: str | None = None, endpoint_url: str | None = None) -> S3Client:
    """A boto3 S3 client with bounded timeouts and standard retries."""
    from temporal_shield.codec import AwsSettings, aws_client

    settings = AwsSettings(region=region, endpoint_url=endpoint_url)
    client: S3Client = aws_client("s3", settings, feature="S3 audit anchors")
    return client


@dataclass(frozen=True)
class Found:
    """A checkpoint read from an external source, or why it could not be read."""

    where: str
    """File path, ``file:line`` or ``s3://bucket/key?versionId=...``."""
    checkpoint: Checkpoint | None
    problem: str = ""


def read_checkpoints(
    source: str, *, region: str | None = None, endpoint_url: str | None = None
) -> Iterator[Found]:
    """Every checkpoint in a folder (``*.json``), a JSON Lines file, or ``s3://bucket/prefix``.

    For S3 every *version* of every object is read: a checkpoint overwritten
    with different content shows up as two documents for one sequence number.

    Raises:
        ConfigError: the source cannot be read at all (missing folder, S3 error).
    """
    if source.startswith("s3://"):
        yield from _read_s3(source, region=region, endpoint_url=endpoint_url)
        return
    path = Path(source)
    if path.is_dir():
        for item in sorted(path.rglob("*.json")):
            yield _parse(str(item), _read(item))
    elif path.is_file():
        for number, line in enumerate(_read(path).splitlines(), start=1):
            if line.strip():
                found = _parse(f"{path}:{number}", line)
                # A pipeline export holds other lines too: keep only checkpoints.
                if found.checkpoint is not None or b'"audit_checkpoint"' in line:
                    yield found
    else:
        raise ConfigError(f"no such checkpoint folder or file: {source}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _parse(where: str, data: bytes) -> Found:
    try:
        return Found(where, Checkpoint.parse(json.loads(data)))
    except ValueError:
        return Found(where, None, "not valid JSON")
    except CheckpointError as exc:
        return Found(where, None, str(exc))


def _read_s3(source: str, *, region: str | None, endpoint_url: str | None) -> Iterator[Found]:
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    client = s3_client(region=region, endpoint_url=endpoint_url)
    try:
        pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for version in page.get("Versions", []):
                key, vid = version["Key"], version["VersionId"]
                if not key.endswith(".json"):
                    continue
                body = client.get_object(Bucket=bucket, Key=key, VersionId=vid)["Body"].read()
                yield _parse(f"s3://{bucket}/{key}?versionId={vid}", body)
    except ConfigError:
        raise
    except Exception as exc:
        from ._signer import aws_error_code

        raise ConfigError(f"cannot read checkpoints from {source}: {aws_error_code(exc)}") from None
