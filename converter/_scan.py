"""Encryption-coverage scan: which payloads in a namespace's histories are not encrypted.

Reads raw histories (no codec), event by event, and never keeps or prints payload
contents: only where each payload sits (event type and field), whether it is
temporal-shield ciphertext, and — from the unencrypted header of ciphertexts —
which KEK ids and classification labels are in use.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client

from temporal_shield.codec import CLASSIFICATION_METADATA, ENCODING, KEY_ID_METADATA

from ._history import iter_messages

_INDEX = re.compile(r"\[[^\]]*\]")
ENCODED_FAILURE_MESSAGE = "Encoded failure"
"""What ``DefaultFailureConverterWithEncodedAttributes`` leaves in clear."""


def _where(event_type: int, path: str) -> tuple[str, str]:
    name = EventType.Name(EventType.ValueType(event_type)).removeprefix("EVENT_TYPE_")
    return name, _INDEX.sub("[]", path)


@dataclass
class ScanReport:
    """Counts only; safe to print, log and store."""

    namespace: str
    workflows: int = 0
    events: int = 0
    payloads: int = 0
    encrypted: int = 0
    plaintext: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Unencrypted payloads and failure texts by (event type, field)."""
    search_attributes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Search attributes: plaintext by design (the server indexes them)."""
    key_ids: Counter[str] = field(default_factory=Counter)
    classifications: Counter[str] = field(default_factory=Counter)
    first_seen: dict[tuple[str, str], str] = field(default_factory=dict)
    """A workflow id where each plaintext location was first seen."""

    @property
    def clean(self) -> bool:
        """No plaintext besides search attributes."""
        return not self.plaintext

    def as_json(self) -> dict[str, Any]:
        """A JSON-serialisable form of the report."""

        def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            return [
                {
                    "event_type": e,
                    "field": f,
                    "count": n,
                    "example_workflow_id": self.first_seen.get((e, f), ""),
                }
                for (e, f), n in sorted(counter.items())
            ]

        return {
            "namespace": self.namespace,
            "workflows": self.workflows,
            "events": self.events,
            "payloads": self.payloads,
            "encrypted": self.encrypted,
            "clean": self.clean,
            "plaintext": rows(self.plaintext),
            "search_attributes": rows(self.search_attributes),
            "key_ids": dict(self.key_ids),
            "classifications": dict(self.classifications),
        }

    def as_table(self) -> str:
        """A human-readable table."""
        lines = [
            f"namespace {self.namespace}: {self.workflows} workflow runs, {self.events} events, "
            f"{self.payloads} payloads, {self.encrypted} encrypted by temporal-shield",
        ]
        if self.plaintext:
            lines.append("\nNOT ENCRYPTED (event type / field: count, example workflow id)")
            for (e, f), n in sorted(self.plaintext.items()):
                lines.append(f"  {e:<45} {f:<60} {n:>6}  {self.first_seen.get((e, f), '')}")
        else:
            lines.append("\nevery payload and failure message is encrypted")
        if self.search_attributes:
            lines.append("\nsearch attributes (plaintext by design; keep PII out of them)")
            for (e, f), n in sorted(self.search_attributes.items()):
                lines.append(f"  {e:<45} {f:<60} {n:>6}")
        if self.key_ids:
            lines.append("\nkey ids in use")
            lines += [f"  {k:<60} {n:>6}" for k, n in self.key_ids.most_common()]
        if self.classifications:
            lines.append("\nclassifications")
            lines += [f"  {k:<20} {n:>6}" for k, n in self.classifications.most_common()]
        return "\n".join(lines)


def _inspect(report: ScanReport, workflow_id: str, event: Any) -> None:
    report.events += 1
    for path, message in iter_messages(event, (Payload, Failure)):
        where = _where(event.event_type, path)
        if isinstance(message, Failure):
            _inspect_failure(report, workflow_id, event.event_type, path, message)
            continue
        assert isinstance(message, Payload)
        _inspect_payload(report, workflow_id, where, message)


def _inspect_payload(
    report: ScanReport, workflow_id: str, where: tuple[str, str], payload: Payload
) -> None:
    report.payloads += 1
    if "search_attributes" in where[1]:
        report.search_attributes[where] += 1
    elif payload.metadata.get("encoding") == ENCODING:
        report.encrypted += 1
        report.key_ids[payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")] += 1
        label = payload.metadata.get(CLASSIFICATION_METADATA, b"").decode(errors="replace")
        report.classifications[label or "unclassified"] += 1
    else:
        report.plaintext[where] += 1
        report.first_seen.setdefault(where, workflow_id)


def _inspect_failure(
    report: ScanReport, workflow_id: str, event_type: int, path: str, failure: Failure
) -> None:
    # A failure's message and stack trace are strings, not payloads: in clear
    # unless the failure converter moved them into encoded_attributes.
    if failure.HasField("encoded_attributes"):
        where = _where(event_type, f"{path}.encoded_attributes")
        _inspect_payload(report, workflow_id, where, failure.encoded_attributes)
    elif failure.message or failure.stack_trace:
        where = _where(event_type, f"{path}.message")
        report.plaintext[where] += 1
        report.first_seen.setdefault(where, workflow_id)
    for sub_path, payload in iter_messages(failure, (Payload,), path):
        if sub_path.endswith("encoded_attributes") or sub_path.startswith(f"{path}.cause"):
            continue  # counted above, or by the recursion into the cause below
        assert isinstance(payload, Payload)
        _inspect_payload(report, workflow_id, _where(event_type, sub_path), payload)
    if failure.HasField("cause"):
        _inspect_failure(report, workflow_id, event_type, f"{path}.cause", failure.cause)


async def scan(
    client: Client,
    *,
    query: str | None = None,
    limit: int | None = None,
    progress: Callable[[ScanReport], None] | None = None,
) -> ScanReport:
    """Scan the raw histories of the workflow runs ``query`` selects.

    Memory stays bounded: runs are paged from visibility and each history is
    streamed event by event.

    Args:
        client: A client **without** the temporal-shield codec (raw payloads).
        query: Visibility query (default: every run in the namespace).
        limit: Stop after this many runs.
        progress: Called after each run (e.g. to draw a progress line).
    """
    report = ScanReport(namespace=client.namespace)
    async for execution in client.list_workflows(query or None, page_size=100):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        async for event in handle.fetch_history_events():
            _inspect(report, execution.id, event)
        report.workflows += 1
        if progress is not None:
            progress(report)
        if limit is not None and report.workflows >= limit:
            break
    return report


def terminal_progress(report: ScanReport) -> None:
    """A one-line progress indicator on stderr when it is a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(
            f"\rscanned {report.workflows} runs, {report.payloads} payloads, "
            f"{sum(report.plaintext.values())} not encrypted"
        )
        sys.stderr.flush()
