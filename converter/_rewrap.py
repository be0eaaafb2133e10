"""``keys rewrap``: re-encrypt S3-offloaded payloads under the current primary KEK.

Idempotent (objects already under the primary are left alone), resumable (keys
are processed in S3's lexicographic order; ``start_after`` skips ahead), and
with a dry run. Each object is decrypted and sealed again with a fresh data key,
the same namespace, workflow binding and classification, and an authenticated
*origin*: the SHA-256 of the bytes the history reference was made for (carried
over if the object was already re-encrypted once). :class:`ShieldS3Driver`
accepts the new object for that reference; nothing else does.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from temporalio.api.common.v1 import Payload

from temporal_shield.codec import (
    CLASSIFICATION_METADATA,
    ENCODING,
    KEY_ID_METADATA,
    DecryptionError,
    Envelope,
    parse,
)

from ._scan import _Throttle

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client


@dataclass
class RewrapReport:
    """What a rewrap run did (object keys only, never contents)."""

    scanned: int = 0
    rewrapped: int = 0
    current: int = 0
    """Already under the primary KEK (left alone)."""
    foreign: int = 0
    """Not temporal-shield ciphertext (left alone)."""
    failed: list[str] = field(default_factory=list)
    """Objects that could not be decrypted (e.g. a retired or unknown key)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Why each failed object failed (object key -> reason; never contents)."""
    last_key: str = ""
    """The last object key processed: pass it as ``start_after`` to resume."""

    def merge(self, other: RewrapReport) -> None:
        """Add ``other`` (a later stretch of keys) to this report."""
        self.scanned += other.scanned
        self.rewrapped += other.rewrapped
        self.current += other.current
        self.foreign += other.foreign
        self.failed += other.failed
        self.reasons.update(other.reasons)
        self.last_key = other.last_key or self.last_key

    def as_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (inverse: :meth:`from_json`); object keys, never contents."""
        return {
            "scanned": self.scanned,
            "rewrapped": self.rewrapped,
            "current": self.current,
            "foreign": self.foreign,
            "failed": list(self.failed),
            "reasons": dict(self.reasons),
            "last_key": self.last_key,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RewrapReport:
        """Rebuild a report from :meth:`as_json` output."""
        return cls(
            scanned=int(data["scanned"]),
            rewrapped=int(data["rewrapped"]),
            current=int(data["current"]),
            foreign=int(data["foreign"]),
            failed=[str(key) for key in data["failed"]],
            reasons={str(k): str(v) for k, v in data.get("reasons", {}).items()},
            last_key=str(data["last_key"]),
        )


async def rewrap(
    s3: S3Client,
    bucket: str,
    envelope: Envelope,
    *,
    prefix: str = "",
    start_after: str = "",
    until_key: str = "",
    dry_run: bool = False,
    progress: Callable[[RewrapReport], None] | None = None,
) -> RewrapReport:
    """Re-encrypt every temporal-shield object under ``prefix`` with the primary KEK.

    Keys after ``start_after`` and up to ``until_key`` inclusive (``""``: to the
    end) are processed, in S3's lexicographic order.

    Raises:
        KeyProviderError: the KMS failed (the run stops; resume later).
    """
    report = RewrapReport()
    # The KEK id this process writes, per namespace: looked up once, not per object.
    primaries: dict[str, str] = {}
    pages = iter(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, StartAfter=start_after
        )
    )
    # boto3 is blocking: every S3 round trip runs off the event loop.
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        for item in page.get("Contents", []):
            key = item["Key"]
            if until_key and key > until_key:
                return report
            report.scanned += 1
            await _one(s3, bucket, key, envelope, report, dry_run, primaries)
            report.last_key = key
            if progress is not None:
                progress(report)
    return report


def _failed(report: RewrapReport, key: str, reason: str) -> None:
    report.failed.append(key)
    report.reasons[key] = reason


def _read(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


async def _one(
    s3: Any,
    bucket: str,
    key: str,
    envelope: Envelope,
    report: RewrapReport,
    dry_run: bool,
    primaries: dict[str, str],
) -> None:
    data = await asyncio.to_thread(_read, s3, bucket, key)
    try:
        payload = Payload.FromString(data)
        if payload.metadata.get("encoding") != ENCODING:
            raise ValueError
        header, _ = parse(payload.data)
        key_id = payload.metadata[KEY_ID_METADATA].decode()
    except (ValueError, KeyError, DecryptionError, UnicodeDecodeError):
        report.foreign += 1
        return
    primary = primaries.get(header.namespace)
    if primary is None:
        primary = (await envelope.keys.encryption_key(header.namespace, 0)).key_id
        primaries[header.namespace] = primary
    if key_id == primary:
        report.current += 1
        return
    if not envelope.keys.can_decrypt(key_id):
        # Known without a KMS call, so a dry run predicts it too.
        _failed(
            report, key, f"no configured key may decrypt {key_id} (add it to keys.decrypt_uris)"
        )
        return
    if dry_run:
        report.rewrapped += 1
        return
    try:
        opened = await envelope.open(payload.data, key_id=key_id, namespace=header.namespace)
    except DecryptionError:
        _failed(report, key, f"does not decrypt under {key_id} (damaged, or not what it claims)")
        return
    sealed = await envelope.seal(
        opened.plaintext,
        namespace=header.namespace,
        workflow_id=header.workflow_id,
        classification=header.classification,
        origin=header.origin or hashlib.sha256(data).digest(),
    )
    metadata = {"encoding": ENCODING, KEY_ID_METADATA: sealed.key_id.encode()}
    if sealed.classification:
        metadata[CLASSIFICATION_METADATA] = sealed.classification.encode()
    replacement = Payload(metadata=metadata, data=sealed.data).SerializeToString()
    # A PUT replaces the object atomically: readers see the old or the new one,
    # and both decrypt.
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=replacement)
    report.rewrapped += 1


def rewrap_progress(*, dry_run: bool) -> Callable[[RewrapReport], None]:
    """A ``progress`` callback for :func:`rewrap`: one line on stderr, only on a terminal."""
    throttle = _Throttle()
    verb = "would re-encrypt" if dry_run else "re-encrypted"

    def draw(report: RewrapReport) -> None:
        if sys.stderr.isatty() and throttle.due():
            sys.stderr.write(
                f"\rrewrap: {report.scanned} objects, {verb} {report.rewrapped}, current "
                f"{report.current}, not ours {report.foreign}, failed {len(report.failed)}"
            )
            sys.stderr.flush()

    return draw
