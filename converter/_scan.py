"""Encryption-coverage scan: which payloads in a namespace's histories are not encrypted.

Reads raw histories (no codec), event by event, and never keeps or prints payload
contents: only where each payload sits (event type and field), which category it
falls in, and — from the unencrypted header of our ciphertexts — which KEK ids and
classification labels are in use.

Categories (see ``docs/scan.md``):

* **encrypted** — a temporal-shield envelope (magic, version, a well-formed header
  and, after it, ciphertext whose length fits the header and that is neither text
  nor a compressed stream), whatever the label says;
* **foreign encryption** — labelled ``binary/encrypted`` and shaped like ciphertext
  (at least a 12-byte nonce and a 16-byte tag, not text, not a compressed stream)
  but not our envelope, e.g. Temporal's sample codec;
* **plaintext** — everything else that carries application data, including a
  ``binary/encrypted`` label on bytes that are not ciphertext (a forged label), a
  copied header before plaintext, and a failure text kept in clear beside its
  encoded attributes;
* **written by Temporal** — items the SDK or the server writes in every namespace
  and that provably hold no application data (recognised by their exact shape);
* **search attributes** — plaintext by design (the server indexes them): payloads
  of a ``SearchAttributes`` message, by type (a map entry *named*
  ``search_attributes`` is not one).
"""

from __future__ import annotations

import asyncio
import bz2
import json
import math
import re
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zstandard
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, SearchAttributes
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference
from temporalio.client import Client

from temporal_shield.codec import CLASSIFICATION_METADATA, ENCODING, KEY_ID_METADATA
from temporal_shield.codec._errors import DecryptionError
from temporal_shield.codec._format import TAG_SIZE, parse

from ._history import iter_messages

# List indices collapse (one row per field, not per element); map keys are kept
# (`details[data]`, `fields[note]`) because they say what the field holds.
_LIST_INDEX = re.compile(r"\[\d+\]")
ENCODED_FAILURE_MESSAGE = "Encoded failure"
"""What ``DefaultFailureConverterWithEncodedAttributes`` leaves in clear."""

Location = tuple[str, str]
"""(event type without ``EVENT_TYPE_``, field path)."""
TemporalLocation = tuple[str, str, str]
"""(event type, field path, what Temporal wrote there)."""

PLAINTEXT = "plaintext"
FOREIGN = "foreign_encryption"
TEMPORAL = "temporal_written"
SEARCH = "search_attributes"
OFFLOADED = "offloaded"
_CATEGORIES = (PLAINTEXT, FOREIGN, TEMPORAL, SEARCH, OFFLOADED)


MAX_ROWS = 1000
"""Distinct rows kept per category, and key ids and labels kept. Map keys come
from applications (memo, header keys): past this many rows, a new location's map
keys collapse to ``[*]`` and a new key id or label counts under ``(other)``, so
the report's size stays bounded whatever the histories hold. Counts stay exact."""
_MAP_KEY = re.compile(r"\[[^\]]+\]")
OTHER = "(other)"


def _bounded(counter: Counter[Any], location: tuple[str, ...]) -> tuple[str, ...]:
    if location in counter or len(counter) < MAX_ROWS:
        return location
    return (location[0], _MAP_KEY.sub("[*]", location[1]), *location[2:])


def _bump(counter: Counter[str], key: str, n: int = 1) -> None:
    counter[key if key in counter or len(counter) < MAX_ROWS else OTHER] += n


def _where(event_type: int, path: str) -> Location:
    name = EventType.Name(EventType.ValueType(event_type)).removeprefix("EVENT_TYPE_")
    return name, _LIST_INDEX.sub("[]", path)


@dataclass
class ScanReport:
    """Counts only; safe to print, log and store.

    ``as_json`` and ``from_json`` are exact inverses, and ``merge`` adds two
    reports, so partial reports can travel (activities, heartbeats) and be folded.
    """

    namespace: str
    workflows: int = 0
    events: int = 0
    payloads: int = 0
    """Payload messages seen (failure texts are not payloads)."""
    encrypted: int = 0
    """Payloads that are temporal-shield envelopes."""
    plaintext: Counter[Location] = field(default_factory=Counter)
    """Unencrypted application payloads and failure texts by (event type, field)."""
    foreign_encryption: Counter[Location] = field(default_factory=Counter)
    """``binary/encrypted`` ciphertext that is not ours (e.g. Temporal's sample codec)."""
    temporal_written: Counter[TemporalLocation] = field(default_factory=Counter)
    """Plaintext written by the SDK or server with no application data in it."""
    search_attributes: Counter[Location] = field(default_factory=Counter)
    """Search attributes: plaintext by design (the server indexes them)."""
    offloaded: Counter[Location] = field(default_factory=Counter)
    """References to payloads in external storage written by the SDK's S3 driver
    (the bytes are in the bucket; ``keys rewrap --dry-run`` checks them)."""
    key_ids: Counter[str] = field(default_factory=Counter)
    classifications: Counter[str] = field(default_factory=Counter)
    first_seen: dict[tuple[str, ...], str] = field(default_factory=dict)
    """``(category, *location)`` → a workflow id where it was first seen."""

    @property
    def clean(self) -> bool:
        """Nothing but our ciphertext, Temporal-written items and search attributes."""
        return not self.plaintext and not self.foreign_encryption

    def count(self, category: str, location: tuple[str, ...], workflow_id: str, n: int = 1) -> None:
        """Count ``n`` items of ``category`` at ``location`` (remembering a first example).

        Past :data:`MAX_ROWS` rows, a new location is counted with its map keys
        collapsed.
        """
        counter: Counter[Any] = getattr(self, category)
        location = _bounded(counter, location)
        counter[location] += n
        if workflow_id:
            self.first_seen.setdefault((category, *location), workflow_id)

    def merge(self, other: ScanReport) -> None:
        """Add every count of ``other`` to this report.

        Examples already known are kept, so folding per-run reports in visibility
        order gives exactly the report a sequential scan gives.
        """
        self.workflows += other.workflows
        self.events += other.events
        self.payloads += other.payloads
        self.encrypted += other.encrypted
        for name in _CATEGORIES:
            theirs: Counter[Any] = getattr(other, name)
            for location, n in theirs.items():
                example = other.first_seen.get((name, *location), "")
                self.count(name, location, example, n)
        for key, n in other.key_ids.items():
            _bump(self.key_ids, key, n)
        for key, n in other.classifications.items():
            _bump(self.classifications, key, n)

    def as_json(self) -> dict[str, Any]:
        """A JSON-serialisable form of the report (inverse: :meth:`from_json`)."""

        def rows(category: str) -> list[dict[str, Any]]:
            counter: Counter[Any] = getattr(self, category)
            out = []
            for location, n in sorted(counter.items()):
                row: dict[str, Any] = {"event_type": location[0], "field": location[1]}
                if category == TEMPORAL:
                    row["kind"] = location[2]
                row["count"] = n
                row["example_workflow_id"] = self.first_seen.get((category, *location), "")
                out.append(row)
            return out

        return {
            "namespace": self.namespace,
            "workflows": self.workflows,
            "events": self.events,
            "payloads": self.payloads,
            "encrypted": self.encrypted,
            "clean": self.clean,
            **{name: rows(name) for name in _CATEGORIES},
            "key_ids": dict(sorted(self.key_ids.items())),
            "classifications": dict(sorted(self.classifications.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanReport:
        """Rebuild a report from :meth:`as_json` output (``clean`` is recomputed)."""
        report = cls(
            namespace=str(data["namespace"]),
            workflows=int(data["workflows"]),
            events=int(data["events"]),
            payloads=int(data["payloads"]),
            encrypted=int(data["encrypted"]),
            # Rows as they were counted (already bounded): an exact inverse.
            key_ids=Counter({str(k): int(n) for k, n in data["key_ids"].items()}),
            classifications=Counter({str(k): int(n) for k, n in data["classifications"].items()}),
        )
        for category in _CATEGORIES:
            counter: Counter[Any] = getattr(report, category)
            for row in data.get(category, []):
                location: tuple[str, ...] = (str(row["event_type"]), str(row["field"]))
                if category == TEMPORAL:
                    location += (str(row["kind"]),)
                counter[location] += int(row["count"])
                if row.get("example_workflow_id"):
                    report.first_seen[(category, *location)] = str(row["example_workflow_id"])
        return report

    def as_table(self) -> str:
        """A human-readable table."""
        lines = [
            f"namespace {self.namespace}: {self.workflows} workflow runs, {self.events} events, "
            f"{self.payloads} payloads, {self.encrypted} encrypted by temporal-shield",
        ]

        def section(category: str, title: str) -> None:
            counter: Counter[Any] = getattr(self, category)
            if not counter:
                return
            lines.append(f"\n{title}")
            for location, n in sorted(counter.items()):
                e, f = location[0], location[1]
                kind = f" [{location[2]}]" if category == TEMPORAL else ""
                example = self.first_seen.get((category, *location), "")
                lines.append(f"  {e:<40} {f + kind:<70} {n:>6}  {example}")

        section(PLAINTEXT, "NOT ENCRYPTED (event type / field: count, example workflow id)")
        section(
            FOREIGN,
            "ENCRYPTED BY ANOTHER CODEC (binary/encrypted, not a temporal-shield envelope)",
        )
        if self.clean:
            lines.append("\nevery payload and failure message is encrypted by temporal-shield")
        section(TEMPORAL, "written by Temporal, no application data")
        section(SEARCH, "search attributes (plaintext by design; keep PII out of them)")
        section(
            OFFLOADED,
            "offloaded to S3 (the history holds a reference; check the stored bytes "
            "with `keys rewrap --dry-run`)",
        )
        if self.key_ids:
            lines.append("\nkey ids in use")
            lines += [f"  {k:<60} {n:>6}" for k, n in self.key_ids.most_common()]
        if self.classifications:
            lines.append("\nclassifications")
            lines += [f"  {k:<20} {n:>6}" for k, n in self.classifications.most_common()]
        return "\n".join(lines)


# --- what Temporal writes itself -------------------------------------------------

_LOCAL_ACTIVITY_MARKER = "core_local_activity"
_PATCH_MARKER = "core_patch"
# The SDK core's LocalActivityMarkerData (sdk-core, serialised with serde_json):
# every key and the JSON types it may have.
_LOCAL_ACTIVITY_KEYS: dict[str, tuple[type, ...]] = {
    "seq": (int,),
    "attempt": (int,),
    "activity_id": (str,),
    "activity_type": (str,),
    "complete_time": (dict, type(None)),
    "backoff": (dict, type(None)),
    "original_schedule_time": (dict, type(None)),
    "activation_index": (int,),
}
_TIMESTAMP_KEYS = {"seconds", "nanos"}


def _json_object(payload: Payload) -> dict[str, Any] | None:
    """The payload's JSON object if it is exactly ``json/plain`` with no other metadata."""
    if set(payload.metadata) != {"encoding"} or payload.metadata["encoding"] != b"json/plain":
        return None
    try:
        value = json.loads(payload.data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_local_activity_data(payload: Payload) -> bool:
    value = _json_object(payload)
    if value is None or not set(value) <= set(_LOCAL_ACTIVITY_KEYS):
        return False
    if not {"seq", "attempt", "activity_id", "activity_type"} <= set(value):
        return False
    for key, item in value.items():
        types = _LOCAL_ACTIVITY_KEYS[key]
        if int in types and not _is_int(item):
            return False
        if not isinstance(item, types):
            return False
        if isinstance(item, dict) and not (
            set(item) <= _TIMESTAMP_KEYS and all(_is_int(v) for v in item.values())
        ):
            return False
    return True


def _is_patch_data(payload: Payload) -> bool:
    value = _json_object(payload)
    return (
        value is not None
        and set(value) == {"id", "deprecated"}
        and isinstance(value["id"], str)
        and isinstance(value["deprecated"], bool)
    )


_MARKER_DATA_KEY = {_LOCAL_ACTIVITY_MARKER: "data", _PATCH_MARKER: "patch-data"}
"""The details entry each SDK marker keeps its JSON in (as a real dev server stores it)."""


def _marker_item(event: HistoryEvent, path: str, payload: Payload) -> str | None:
    """What Temporal wrote at ``path`` of a marker event, or ``None`` if not provably Temporal's."""
    if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
        return None
    marker = event.marker_recorded_event_attributes
    key = _MARKER_DATA_KEY.get(marker.marker_name)
    if key is None or path != f"marker_recorded_event_attributes.details[{key}].payloads[0]":
        return None
    if len(marker.details[key].payloads) != 1:
        return None
    if marker.marker_name == _LOCAL_ACTIVITY_MARKER and _is_local_activity_data(payload):
        return "local activity marker"
    if marker.marker_name == _PATCH_MARKER and _is_patch_data(payload):
        return "patch marker"
    return None


# Timeout failures as a real server writes them (evidence in
# tests/integration/test_scan_temporal_written.py): the message names the timeout
# type the failure info carries, source is "Server", no stack trace.
_TIMEOUT_NAMES = {
    TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE: "StartToClose",
    TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START: "ScheduleToStart",
    TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE: "ScheduleToClose",
    TimeoutType.TIMEOUT_TYPE_HEARTBEAT: "Heartbeat",
}
_SERVER_TIMEOUT_FORMS = (
    "activity {} timeout",
    "Not enough time to schedule next retry before activity {} timeout, giving up retrying",
)
_WORKFLOW_TIMEOUT = "workflow timeout"
"""What the server writes as the next run's ``continued_failure`` when a run timed out."""
_LOCAL_ACTIVITY_TIMEOUT = "Activity timed out"
"""What the SDK core writes in a local-activity marker's failure on timeout."""


def _temporal_failure(event: HistoryEvent, path: str, failure: Failure) -> str | None:
    """What Temporal wrote, if ``failure`` has exactly the shape of a Temporal timeout.

    Only the failure's own message is vouched for: payloads inside it (last
    heartbeat details) and its cause are inspected on their own.
    """
    if not failure.HasField("timeout_failure_info"):
        return None
    if failure.stack_trace or failure.HasField("encoded_attributes"):
        return None
    if failure.HasField("application_failure_info"):  # one-of: defensive only
        return None
    name = _TIMEOUT_NAMES.get(failure.timeout_failure_info.timeout_type)
    if name is None:
        return None
    if failure.source == "Server" and failure.message in (
        form.format(name) for form in _SERVER_TIMEOUT_FORMS
    ):
        return f"server {name} timeout"
    if (
        failure.source == "Server"
        and failure.message == _WORKFLOW_TIMEOUT
        and failure.timeout_failure_info.timeout_type == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE
    ):
        return "server workflow run timeout"
    if (
        failure.source == ""
        and failure.message == _LOCAL_ACTIVITY_TIMEOUT
        and event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and event.marker_recorded_event_attributes.marker_name == _LOCAL_ACTIVITY_MARKER
        and path == "marker_recorded_event_attributes.failure"
    ):
        return f"SDK local activity {name} timeout"
    return None


def _inspect(report: ScanReport, workflow_id: str, event: HistoryEvent) -> None:
    report.events += 1
    for path, message in iter_messages(event, (Payload, Failure, SearchAttributes)):
        if isinstance(message, Failure):
            _inspect_failure(report, workflow_id, event, path, message)
            continue
        if isinstance(message, SearchAttributes):
            # By the field's type, never by its name: a memo, header or marker
            # entry may be *keyed* "search_attributes" and is still a payload.
            for key in message.indexed_fields:
                report.payloads += 1
                where = _where(event.event_type, f"{path}.indexed_fields[{key}]")
                report.count(SEARCH, where, workflow_id)
            continue
        assert isinstance(message, Payload)
        kind = _marker_item(event, path, message)
        if kind is not None:
            report.payloads += 1
            report.count(TEMPORAL, (*_where(event.event_type, path), kind), workflow_id)
            continue
        _inspect_payload(report, workflow_id, _where(event.event_type, path), message)


def _looks_like_ciphertext(data: bytes) -> bool:
    """At least a nonce and a tag, and random-looking (:func:`_random_looking`)."""
    return len(data) >= 12 + TAG_SIZE and _random_looking(data)


def _random_looking(data: bytes) -> bool:
    """Not text, not a compressed stream, and (when long enough to tell) high-entropy.

    Ciphertext is almost never valid UTF-8, and from 256 bytes its byte entropy
    is above 6.9 bits (random data: 7.17 on average at 256 bytes); structured
    plaintext (protobuf, JSON, text) is far below. Compressed plaintext has
    ciphertext's entropy: the framed formats (gzip, zlib, zstd, bz2, xz, lz4)
    are recognised by their magic and a successful decompression; raw deflate,
    brotli or snappy blocks have no frame and cannot be told apart without a key.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return False
    if _compressed(data):
        return False
    if len(data) < 256:
        return True
    counts = Counter(data)
    entropy = -sum(n / len(data) * math.log2(n / len(data)) for n in counts.values())
    return entropy >= _MIN_CIPHERTEXT_ENTROPY


_MIN_CIPHERTEXT_ENTROPY = 6.5
_PROBE_OUTPUT = 4096
"""Decompressed bytes that prove a frame is one (random bytes fail far earlier)."""


def _compressed(data: bytes) -> bool:
    """Whether ``data`` is a compressed stream of a framed format (magic, then it inflates).

    A magic alone matches a random nonce too often (gzip's 3 bytes, zlib's 2,
    even zstd's 4 once in four billion): the stream must also decompress — to
    its end, checksum included, or to at least :data:`_PROBE_OUTPUT` bytes.
    lz4 (no decompressor here) needs its magic and the fixed bits of its frame
    descriptor (41 bits); xz's magic is 48 bits.
    """
    if data.startswith(b"\xfd7zXZ\x00"):
        return True
    if data.startswith(b"\x04\x22\x4d\x18") and len(data) > 5:
        return data[4] & 0xC2 == 0x40 and data[5] & 0x8F == 0 and data[5] >> 4 >= 4
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        try:
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                return bool(reader.read(_PROBE_OUTPUT))
        except zstandard.ZstdError:
            return False
    if data.startswith(b"\x1f\x8b\x08"):
        return _inflates(zlib.decompressobj(31), data)
    if data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0:
        return _inflates(zlib.decompressobj(15), data)
    if data.startswith(b"BZh") and data[3:4].isdigit():
        return _inflates(bz2.BZ2Decompressor(), data)
    return False


def _inflates(decompressor: Any, data: bytes) -> bool:
    try:
        out = decompressor.decompress(data, _PROBE_OUTPUT)
    except (zlib.error, OSError, EOFError, ValueError):
        return False
    return len(out) >= _PROBE_OUTPUT or (decompressor.eof and not decompressor.unused_data)


def _sealed(data: bytes) -> bool | None:
    """Whether ``data`` is a temporal-shield envelope as a writer makes one.

    ``None`` when it does not even start with a well-formed header; ``False``
    when it does but what follows is not ciphertext that fits it.

    A well-formed header (:func:`temporal_shield.codec.is_envelope`) is not
    enough: copied from another payload it can sit before any bytes. What
    follows must be ciphertext whose length fits the header (the original
    length exactly without compression, less with zstd, plus the tag) and that
    is neither text nor a compressed stream. This cannot authenticate (the scan
    holds no keys); it stops a copied header from vouching for plaintext.
    """
    try:
        header, offset = parse(data)
    except DecryptionError:
        return None
    body = len(data) - offset - TAG_SIZE
    if header.compression == 0:
        fits = body == header.original_length
    else:
        fits = header.compression == 1 and 0 < body < header.original_length
    ciphertext = data[offset:]
    if len(ciphertext) < _TEXT_CHECK_FROM:
        # 16-39 random bytes are valid UTF-8 too often (1e-4 at 16 bytes) to
        # call text plaintext; no SDK payload seals that small (binary/null is 41).
        return fits and not _compressed(ciphertext)
    return fits and _random_looking(ciphertext)


_TEXT_CHECK_FROM = 40
"""Envelope bodies from this size must not be UTF-8 (random: 1 in 10^10 is)."""


def _inspect_payload(
    report: ScanReport, workflow_id: str, where: Location, payload: Payload
) -> None:
    report.payloads += 1
    sealed = _sealed(payload.data)
    if sealed:
        report.encrypted += 1
        _bump(report.key_ids, payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace"))
        label = payload.metadata.get(CLASSIFICATION_METADATA, b"").decode(errors="replace")
        _bump(report.classifications, label or "unclassified")
    elif sealed is None and (
        payload.metadata.get("encoding") == ENCODING and _looks_like_ciphertext(payload.data)
    ):
        report.count(FOREIGN, where, workflow_id)
    elif _is_s3_reference(payload):
        report.count(OFFLOADED, where, workflow_id)
    else:
        report.count(PLAINTEXT, where, workflow_id)


_REFERENCE_TYPE = ExternalStorageReference.DESCRIPTOR.full_name.encode()
_REFERENCE_ENCODINGS = (b"json/protobuf", b"json/external-storage-reference")
_S3_CLAIM_KEYS = {"bucket", "key", "hash_algorithm", "hash_value"}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_REFERENCE = 4096
"""A reference is a bucket, a key of at most 1,024 bytes and a hash."""


def _is_s3_reference(payload: Payload) -> bool:
    """Whether ``payload`` is exactly what the SDK's S3 driver leaves in history.

    ``temporalio.converter.ExternalStorage`` replaces a large payload by a
    reference: an ``ExternalStorageReference`` (driver name, claim data) as
    protobuf JSON, with the stored size in ``external_payloads``. The S3
    driver's claim is the bucket, the object key (``v0/...`` ending in
    ``/d/sha256/<hash>``) and that hash; nothing else may ride along.
    """
    metadata = payload.metadata
    if (
        metadata.get("encoding") not in _REFERENCE_ENCODINGS
        or metadata.get("messageType") != _REFERENCE_TYPE
        or set(metadata) - {"encoding", "messageType", "__temporal_external_storage_reference"}
        or len(payload.data) > _MAX_REFERENCE
        or not payload.external_payloads
    ):
        return False
    try:
        reference = json_format.Parse(payload.data, ExternalStorageReference())
    except (json_format.ParseError, UnicodeDecodeError):
        return False
    claim = dict(reference.claim_data)
    digest = claim.get("hash_value", "")
    return (
        set(claim) == _S3_CLAIM_KEYS
        and claim["hash_algorithm"] == "sha256"
        and bool(_SHA256_HEX.fullmatch(digest))
        and claim["key"].startswith("v0/")
        and claim["key"].endswith(f"/d/sha256/{digest}")
        and bool(claim["bucket"])
    )


def _text_in_clear(failure: Failure) -> bool:
    """Whether the failure's message or stack trace holds text of its own.

    Encoded attributes vouch only for what the SDK's failure converter leaves
    beside them (``Encoded failure``, no stack trace): a converter or a writer
    that keeps the real text in clear next to them leaks it.
    """
    if failure.HasField("encoded_attributes"):
        return failure.message not in ("", ENCODED_FAILURE_MESSAGE) or bool(failure.stack_trace)
    return bool(failure.message or failure.stack_trace)


def _inspect_failure(
    report: ScanReport, workflow_id: str, event: HistoryEvent, path: str, failure: Failure
) -> None:
    event_type = event.event_type
    # A failure's message and stack trace are strings, not payloads: in clear
    # unless the failure converter moved them into encoded_attributes.
    if failure.HasField("encoded_attributes"):
        where = _where(event_type, f"{path}.encoded_attributes")
        _inspect_payload(report, workflow_id, where, failure.encoded_attributes)
    if _text_in_clear(failure):
        where = _where(event_type, f"{path}.message")
        kind = _temporal_failure(event, path, failure)
        if kind is not None:
            report.count(TEMPORAL, (*where, kind), workflow_id)
        else:
            report.count(PLAINTEXT, where, workflow_id)
    for sub_path, payload in iter_messages(failure, (Payload,), path):
        if sub_path == f"{path}.encoded_attributes" or sub_path.startswith(f"{path}.cause"):
            continue  # counted above, or by the recursion into the cause below
        assert isinstance(payload, Payload)
        _inspect_payload(report, workflow_id, _where(event_type, sub_path), payload)
    if failure.HasField("cause"):
        _inspect_failure(report, workflow_id, event, f"{path}.cause", failure.cause)


# --- scanning ----------------------------------------------------------------------


async def scan_run(client: Client, report: ScanReport, workflow_id: str, run_id: str) -> None:
    """Scan one run's raw history into ``report`` (streamed event by event).

    Args:
        client: A client **without** the temporal-shield codec (raw payloads).
        report: Where the counts go; ``workflows`` is incremented once.
        workflow_id: The run's workflow id.
        run_id: The run to read (not the latest run of the id).
    """
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events():
        _inspect(report, workflow_id, event)
    report.workflows += 1


async def _runs(client: Client, query: str | None, limit: int | None) -> AsyncIterator[Any]:
    listed = 0
    async for execution in client.list_workflows(query or None, page_size=100):
        if limit is not None and listed >= limit:
            return
        listed += 1
        yield execution


async def scan_in_order(
    client: Client,
    runs: AsyncIterable[Any] | Iterable[Any],
    concurrency: int,
    fold: Callable[[ScanReport], None],
) -> None:
    """Scan ``runs`` (objects with ``id`` and ``run_id``), ``concurrency`` at a time.

    Each run gets its own report, handed to ``fold`` in the order of ``runs``
    whatever order the fetches finish in, so folding with
    :meth:`ScanReport.merge` gives the same report as a sequential scan. At most
    ``2 * concurrency`` runs are listed ahead of the fold (flat memory).
    """
    fetchers = asyncio.Semaphore(concurrency)

    async def one(execution: Any) -> ScanReport:
        single = ScanReport(namespace=client.namespace)
        async with fetchers:
            await scan_run(client, single, execution.id, execution.run_id)
        return single

    async def listed() -> AsyncIterator[Any]:
        if isinstance(runs, AsyncIterable):
            async for execution in runs:
                yield execution
        else:
            for execution in runs:
                yield execution

    # A window twice as long as the fetchers are many: a slow run at its head
    # does not idle the other fetchers, and the oldest is folded before another
    # run is listed once the window is full.
    window: deque[asyncio.Task[ScanReport]] = deque()
    try:
        async for execution in listed():
            if len(window) >= 2 * concurrency:
                fold(await window.popleft())
            window.append(asyncio.create_task(one(execution)))
        while window:
            fold(await window.popleft())
    finally:
        for task in window:
            task.cancel()


async def scan(
    client: Client,
    *,
    query: str | None = None,
    limit: int | None = None,
    concurrency: int = 1,
    progress: Callable[[ScanReport], None] | None = None,
) -> ScanReport:
    """Scan the raw histories of the workflow runs ``query`` selects.

    Up to ``concurrency`` histories are read at once, fed from the visibility
    pager; per-run reports are folded in visibility order, so the result is the
    same as a sequential scan's. Memory stays bounded: at most ``concurrency``
    runs are in flight and each history is streamed event by event.

    Args:
        client: A client **without** the temporal-shield codec (raw payloads).
        query: Visibility query (default: every run in the namespace).
        limit: Stop after this many runs.
        concurrency: Histories read at once (1 = sequential).
        progress: Called after each run is folded (e.g. to draw a progress line).

    Raises:
        ValueError: ``concurrency`` or ``limit`` is below 1 / 0.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    report = ScanReport(namespace=client.namespace)

    def fold(one: ScanReport) -> None:
        report.merge(one)
        if progress is not None:
            progress(report)

    await scan_in_order(client, _runs(client, query, limit), concurrency, fold)
    return report


class _Throttle:
    """Redraw at most ten times a second: a fast scan must not spend its time on stderr."""

    def __init__(self) -> None:
        self.last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < 0.1:
            return False
        self.last = now
        return True


_throttle = _Throttle()


def terminal_progress(report: ScanReport) -> None:
    """A one-line progress indicator on stderr, drawn only when it is a terminal."""
    if sys.stderr.isatty() and _throttle.due():
        sys.stderr.write(
            f"\rscanned {report.workflows} runs, {report.payloads} payloads, "
            f"{sum(report.plaintext.values())} not encrypted, "
            f"{sum(report.foreign_encryption.values())} other codecs' ciphertext"
        )
        sys.stderr.flush()
