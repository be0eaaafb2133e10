"""The coverage scan's classification of history fields (synthetic events) and its report."""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.history.v1 import HistoryEvent

from temporal_shield.converter._scan import ScanReport, _inspect, scan

LA_DATA = {
    "seq": 1,
    "attempt": 1,
    "activity_id": "1",
    "activity_type": "charge",
    "complete_time": {"seconds": 1700000000, "nanos": 5},
    "backoff": None,
    "original_schedule_time": {"seconds": 1700000000, "nanos": 1},
}


def _json(value: Any, **extra: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain", **extra}, data=json.dumps(value).encode())


def _marker(
    name: str, data: Payload, *, more: dict[str, Payload] | None = None, key: str = ""
) -> HistoryEvent:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_MARKER_RECORDED)
    attrs = event.marker_recorded_event_attributes
    attrs.marker_name = name
    key = key or ("patch-data" if name == "core_patch" else "data")
    attrs.details[key].payloads.add().CopyFrom(data)
    for key, payload in (more or {}).items():
        attrs.details[key].payloads.add().CopyFrom(payload)
    return event


def _scan(*events: HistoryEvent) -> ScanReport:
    report = ScanReport(namespace="ns")
    for event in events:
        _inspect(report, "wf-1", event)
    return report


MARKER_DATA = "marker_recorded_event_attributes.details[data].payloads[]"
PATCH_DATA = "marker_recorded_event_attributes.details[patch-data].payloads[]"


def test_failures_search_attributes_and_payloads_are_told_apart(encrypted: Payload) -> None:
    failed = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failure = failed.activity_task_failed_event_attributes.failure
    failure.message = "card 4111 declined"  # plaintext failure text
    failure.cause.encoded_attributes.CopyFrom(encrypted)
    failure.cause.application_failure_info.details.payloads.add().CopyFrom(encrypted)
    failure.application_failure_info.details.payloads.add().CopyFrom(_json("x"))
    started = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    attrs = started.workflow_execution_started_event_attributes
    attrs.input.payloads.add().CopyFrom(encrypted)
    attrs.search_attributes.indexed_fields["CustomerId"].CopyFrom(_json("c-1"))
    attrs.memo.fields["note"].CopyFrom(_json(1))
    report = _scan(failed, started)
    assert report.plaintext == {
        ("ACTIVITY_TASK_FAILED", "activity_task_failed_event_attributes.failure.message"): 1,
        (
            "ACTIVITY_TASK_FAILED",
            "activity_task_failed_event_attributes.failure.application_failure_info.details.payloads[]",
        ): 1,
        (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.memo.fields[note]",
        ): 1,
    }
    assert report.search_attributes == {
        (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.search_attributes.indexed_fields[CustomerId]",
        ): 1
    }
    assert report.encrypted == 3  # input, cause attributes, cause details: each once
    assert report.classifications == {"phi": 3}
    assert len(report.key_ids) == 1
    assert sum(report.key_ids.values()) == 3
    assert not report.temporal_written
    assert not report.foreign_encryption
    table = report.as_table()
    assert "4111" not in table
    assert "NOT ENCRYPTED" in table


def test_sdk_markers_of_the_exact_shape_are_temporal_written() -> None:
    report = _scan(
        _marker("core_local_activity", _json(LA_DATA)),
        _marker("core_local_activity", _json({**LA_DATA, "backoff": {"seconds": 2}})),
        _marker("core_patch", _json({"id": "v2", "deprecated": False})),
    )
    assert report.temporal_written == {
        ("MARKER_RECORDED", MARKER_DATA, "local activity marker"): 2,
        ("MARKER_RECORDED", PATCH_DATA, "patch marker"): 1,
    }
    assert report.clean
    assert not report.plaintext
    assert report.payloads == 3


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # an extra key (application data smuggled beside the SDK's fields)
        ("core_local_activity", _json({**LA_DATA, "card": "4111"})),
        # a known key with the wrong type
        ("core_local_activity", _json({**LA_DATA, "activity_id": {"pan": "4111"}})),
        ("core_local_activity", _json({**LA_DATA, "seq": True})),
        ("core_local_activity", _json({**LA_DATA, "complete_time": {"seconds": "x"}})),
        ("core_local_activity", _json({**LA_DATA, "complete_time": {"ssn": 1}})),
        # a required key missing
        ("core_local_activity", _json({"seq": 1, "attempt": 1})),
        ("core_patch", _json({"id": "v2", "deprecated": False, "note": "x"})),
        ("core_patch", _json({"id": 7, "deprecated": False})),
        ("core_patch", _json({"id": "v2", "deprecated": "no"})),
        ("core_patch", _json(["v2", False])),
        # the right shape under another marker name, or another encoding
        ("my_marker", _json({"id": "v2", "deprecated": False})),
        ("core_patch", _json({"id": "v2", "deprecated": False}, extra=b"1")),
        (
            "core_patch",
            Payload(metadata={"encoding": b"binary/plain"}, data=b'{"id":"v2","deprecated":false}'),
        ),
        ("core_patch", Payload(metadata={"encoding": b"json/plain"}, data=b"{not json")),
    ],
)
def test_markers_carrying_more_are_plaintext(name: str, data: Payload) -> None:
    report = _scan(_marker(name, data))
    where = PATCH_DATA if name == "core_patch" else MARKER_DATA
    assert report.plaintext == {("MARKER_RECORDED", where): 1}
    assert not report.temporal_written
    assert not report.clean


def test_marker_with_a_second_details_entry_or_payload_is_plaintext() -> None:
    two = _marker("core_patch", _json({"id": "v2", "deprecated": False}))
    two.marker_recorded_event_attributes.details["patch-data"].payloads.add().CopyFrom(
        _json({"id": "v3", "deprecated": False})
    )
    beside = _marker("core_local_activity", _json(LA_DATA), more={"extra": _json("pii")})
    report = _scan(two, beside)
    assert report.plaintext == {
        ("MARKER_RECORDED", PATCH_DATA): 2,
        ("MARKER_RECORDED", "marker_recorded_event_attributes.details[extra].payloads[]"): 1,
    }
    assert report.temporal_written == {("MARKER_RECORDED", MARKER_DATA, "local activity marker"): 1}


def test_marker_json_under_another_details_key_is_plaintext() -> None:
    patch = _marker("core_patch", _json({"id": "v2", "deprecated": False}), key="data")
    local = _marker("core_local_activity", _json(LA_DATA), key="patch-data")
    report = _scan(patch, local)
    assert report.plaintext == {
        ("MARKER_RECORDED", MARKER_DATA): 1,
        ("MARKER_RECORDED", PATCH_DATA): 1,
    }
    assert not report.temporal_written


def _timeout_event(
    message: str,
    timeout_type: TimeoutType.ValueType = TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE,
    **failure_fields: Any,
) -> HistoryEvent:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT)
    failure = event.activity_task_timed_out_event_attributes.failure
    failure.message = message
    failure.source = "Server"
    failure.timeout_failure_info.timeout_type = timeout_type
    for key, value in failure_fields.items():
        setattr(failure, key, value)
    return event


def test_server_timeout_failures_are_temporal_written() -> None:
    report = _scan(
        _timeout_event("activity StartToClose timeout"),
        _timeout_event("activity Heartbeat timeout", TimeoutType.TIMEOUT_TYPE_HEARTBEAT),
        _timeout_event(
            "Not enough time to schedule next retry before activity ScheduleToClose timeout,"
            " giving up retrying",
            TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE,
        ),
    )
    where = "activity_task_timed_out_event_attributes.failure.message"
    assert report.temporal_written == {
        ("ACTIVITY_TASK_TIMED_OUT", where, "server StartToClose timeout"): 1,
        ("ACTIVITY_TASK_TIMED_OUT", where, "server Heartbeat timeout"): 1,
        ("ACTIVITY_TASK_TIMED_OUT", where, "server ScheduleToClose timeout"): 1,
    }
    assert report.clean


@pytest.mark.parametrize(
    "event",
    [
        _timeout_event("activity StartToClose timeout: card 4111"),
        _timeout_event("activity StartToClose timeout", stack_trace="at charge(4111)"),
        _timeout_event("activity StartToClose timeout", source="PythonSDK"),
        # the message names another timeout than the failure info carries
        _timeout_event("activity Heartbeat timeout", TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE),
        _timeout_event("activity StartToClose timeout", TimeoutType.TIMEOUT_TYPE_UNSPECIFIED),
        # the SDK's local-activity wording outside a local-activity marker
        _timeout_event("Activity timed out", source=""),
    ],
)
def test_timeout_failures_carrying_more_are_plaintext(event: HistoryEvent) -> None:
    report = _scan(event)
    assert not report.temporal_written
    assert report.plaintext == {
        ("ACTIVITY_TASK_TIMED_OUT", "activity_task_timed_out_event_attributes.failure.message"): 1
    }


def test_server_message_without_timeout_info_is_plaintext() -> None:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failure = event.activity_task_failed_event_attributes.failure
    failure.message = "activity StartToClose timeout"
    failure.application_failure_info.type = "X"
    assert _scan(event).plaintext
    assert not _scan(event).temporal_written


def test_server_workflow_timeout_in_the_retried_run_is_temporal_written() -> None:
    def started(message: str, timeout_type: TimeoutType.ValueType) -> HistoryEvent:
        event = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
        failure = event.workflow_execution_started_event_attributes.continued_failure
        failure.message, failure.source = message, "Server"
        failure.timeout_failure_info.timeout_type = timeout_type
        return event

    where = "workflow_execution_started_event_attributes.continued_failure.message"
    good = _scan(started("workflow timeout", TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE))
    assert good.temporal_written == {
        ("WORKFLOW_EXECUTION_STARTED", where, "server workflow run timeout"): 1
    }
    for bad in (
        started("workflow timeout: order 17", TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE),
        started("workflow timeout", TimeoutType.TIMEOUT_TYPE_HEARTBEAT),
    ):
        assert _scan(bad).plaintext == {("WORKFLOW_EXECUTION_STARTED", where): 1}


def test_timeout_heartbeat_details_are_inspected_as_payloads() -> None:
    event = _timeout_event("activity Heartbeat timeout", TimeoutType.TIMEOUT_TYPE_HEARTBEAT)
    failure = event.activity_task_timed_out_event_attributes.failure
    failure.timeout_failure_info.last_heartbeat_details.payloads.add().CopyFrom(_json("row 17"))
    report = _scan(event)
    assert sum(report.temporal_written.values()) == 1
    assert report.plaintext == {
        (
            "ACTIVITY_TASK_TIMED_OUT",
            "activity_task_timed_out_event_attributes.failure.timeout_failure_info"
            ".last_heartbeat_details.payloads[]",
        ): 1
    }


def _la_timeout_marker(name: str, message: str) -> HistoryEvent:
    event = _marker(name, _json(LA_DATA))
    failure = event.marker_recorded_event_attributes.failure
    failure.message = message
    failure.timeout_failure_info.timeout_type = TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE
    return event


def test_local_activity_timeout_in_its_marker_is_temporal_written() -> None:
    report = _scan(_la_timeout_marker("core_local_activity", "Activity timed out"))
    where = "marker_recorded_event_attributes.failure.message"
    assert (
        report.temporal_written[
            ("MARKER_RECORDED", where, "SDK local activity StartToClose timeout")
        ]
        == 1
    )
    assert report.clean
    for bad in (
        _la_timeout_marker("core_patch", "Activity timed out"),
        _la_timeout_marker("core_local_activity", "Activity timed out: card 4111"),
    ):
        assert _scan(bad).plaintext[("MARKER_RECORDED", where)] == 1


def _sample_codec_payload(plaintext: bytes) -> Payload:
    # samples-python encryption/codec.py: nonce (12 bytes) || AES-GCM ciphertext.
    nonce = os.urandom(12)
    data = nonce + AESGCM(os.urandom(32)).encrypt(nonce, plaintext, None)
    return Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"test-key-id"}, data=data
    )


def test_foreign_encryption_and_forged_labels(encrypted: Payload) -> None:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    payloads = event.workflow_execution_started_event_attributes.input.payloads
    payloads.add().CopyFrom(_sample_codec_payload(b'"card 4111"'))
    forged = Payload(
        metadata={"encoding": b"binary/encrypted"}, data=b'{"card": "4111 1111 1111 1111"}'
    )
    payloads.add().CopyFrom(forged)
    short = Payload(metadata={"encoding": b"binary/encrypted"}, data=b"\xff\x00")
    payloads.add().CopyFrom(short)
    # our label on bytes that only start like an envelope is not ours
    bad_magic = Payload(metadata=dict(encrypted.metadata), data=b"TS\x09" + encrypted.data[3:])
    payloads.add().CopyFrom(bad_magic)
    report = _scan(event)
    where = (
        "WORKFLOW_EXECUTION_STARTED",
        "workflow_execution_started_event_attributes.input.payloads[]",
    )
    assert report.foreign_encryption == {where: 2}  # sample codec, and the bad-magic ciphertext
    assert report.plaintext == {where: 2}  # forged label on JSON, too short for ciphertext
    assert report.encrypted == 0
    assert not report.clean


def test_envelope_counts_as_encrypted_whatever_the_label(encrypted: Payload) -> None:
    relabelled = Payload(metadata={"encoding": b"json/plain"}, data=encrypted.data)
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    event.workflow_execution_started_event_attributes.input.payloads.add().CopyFrom(relabelled)
    assert _scan(event).encrypted == 1


def _full_report(encrypted: Payload) -> ScanReport:
    failed = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failed.activity_task_failed_event_attributes.failure.message = "boom"
    started = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    attrs = started.workflow_execution_started_event_attributes
    attrs.input.payloads.add().CopyFrom(encrypted)
    attrs.input.payloads.add().CopyFrom(_sample_codec_payload(b"x"))
    attrs.search_attributes.indexed_fields["CustomerId"].CopyFrom(_json("c-1"))
    report = ScanReport(namespace="ns")
    _inspect(report, "wf-a", failed)
    _inspect(report, "wf-b", started)
    _inspect(report, "wf-c", _marker("core_patch", _json({"id": "v2", "deprecated": True})))
    _inspect(
        report,
        "wf-c",
        _timeout_event(
            "activity ScheduleToClose timeout", TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE
        ),
    )
    report.workflows = 3
    return report


def test_json_round_trip_is_exact(encrypted: Payload) -> None:
    report = _full_report(encrypted)
    data = report.as_json()
    assert all(data[k] for k in ("plaintext", "foreign_encryption", "temporal_written"))
    assert {r["kind"] for r in data["temporal_written"]} == {
        "patch marker",
        "server ScheduleToClose timeout",
    }
    again = ScanReport.from_json(json.loads(json.dumps(data)))
    assert again == report
    assert again.as_json() == data
    empty = ScanReport(namespace="x")
    assert ScanReport.from_json(empty.as_json()) == empty


def test_the_documented_json_output_has_the_reports_fields() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "scan.md").read_text()
    example = json.loads(doc.split("## JSON output\n\n```json\n")[1].split("```")[0])
    assert list(example) == list(ScanReport(namespace="x").as_json())


def test_merge_adds_counts_and_keeps_first_examples(encrypted: Payload) -> None:
    one = _full_report(encrypted)
    other = ScanReport(namespace="ns")
    failed = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failed.activity_task_failed_event_attributes.failure.message = "boom again"
    _inspect(other, "wf-z", failed)
    other.workflows = 1
    merged = ScanReport.from_json(one.as_json())
    merged.merge(other)
    where = ("ACTIVITY_TASK_FAILED", "activity_task_failed_event_attributes.failure.message")
    assert merged.plaintext[where] == 2
    assert merged.first_seen[("plaintext", *where)] == "wf-a"  # the existing example stays
    assert merged.workflows == 4
    assert merged.events == one.events + 1
    assert merged.encrypted == one.encrypted
    assert merged.key_ids == one.key_ids
    # merging into an empty report copies the other exactly
    copy = ScanReport(namespace="ns")
    copy.merge(one)
    assert copy == one


def test_long_low_entropy_binary_under_the_label_is_plaintext() -> None:
    # Protobuf-like binary plaintext (not UTF-8) relabelled as encrypted.
    record = b"\x0a\x08customer\x12\xff\x01" + b"4111111111111111" * 20
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    payloads = event.workflow_execution_started_event_attributes.input.payloads
    payloads.add().CopyFrom(Payload(metadata={"encoding": b"binary/encrypted"}, data=record))
    payloads.add().CopyFrom(_sample_codec_payload(record))
    report = _scan(event)
    where = (
        "WORKFLOW_EXECUTION_STARTED",
        "workflow_execution_started_event_attributes.input.payloads[]",
    )
    assert report.plaintext == {where: 1}
    assert report.foreign_encryption == {where: 1}


class _FakeHandle:
    def __init__(self, client: _FakeClient, workflow_id: str) -> None:
        self.client, self.workflow_id = client, workflow_id

    async def fetch_history_events(self) -> Any:
        self.client.in_flight += 1
        self.client.max_in_flight = max(self.client.max_in_flight, self.client.in_flight)
        # later runs finish first: the fold must still follow list order
        for _ in range(50 - int(self.workflow_id)):
            await asyncio.sleep(0)
        self.client.in_flight -= 1
        event = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
        attrs = event.workflow_execution_started_event_attributes
        attrs.input.payloads.add().CopyFrom(_json(self.workflow_id))
        yield event


class _FakeClient:
    namespace = "ns"

    def __init__(self) -> None:
        self.in_flight = self.max_in_flight = self.listed = 0

    def get_workflow_handle(self, workflow_id: str, *, run_id: str) -> _FakeHandle:
        return _FakeHandle(self, workflow_id)

    async def list_workflows(self, query: str | None, page_size: int) -> Any:
        for i in range(40):
            self.listed += 1
            yield SimpleNamespace(id=str(i), run_id=f"r{i}")


async def test_scan_bounds_in_flight_and_listing_and_folds_in_order() -> None:
    client = _FakeClient()
    folded: list[int] = []
    ahead: list[int] = []

    def progress(report: ScanReport) -> None:
        folded.append(report.workflows)
        ahead.append(client.listed - report.workflows)

    report = await scan(client, concurrency=4, progress=progress)  # type: ignore[arg-type]
    assert report.workflows == 40
    assert client.max_in_flight == 4
    assert max(ahead) <= 2 * 4  # listing never runs far ahead of the fold (flat memory)
    assert folded == list(range(1, 41))
    # run "0" finished last but is the first example, as in a sequential scan
    where = (
        "WORKFLOW_EXECUTION_STARTED",
        "workflow_execution_started_event_attributes.input.payloads[]",
    )
    assert report.first_seen[("plaintext", *where)] == "0"
    sequential = await scan(_FakeClient(), concurrency=1)  # type: ignore[arg-type]
    assert sequential == report


async def test_scan_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        await scan(_FakeClient(), concurrency=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await scan(_FakeClient(), limit=-1)  # type: ignore[arg-type]
    assert (await scan(_FakeClient(), limit=0)).workflows == 0  # type: ignore[arg-type]


def _naive_walk(message: Any, types: tuple[type, ...], path: str = "") -> list[tuple[str, Any]]:
    """The walk without pruning: every message field, every depth."""
    if isinstance(message, types):
        return [(path, message)]
    found = []
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    found += _naive_walk(item, types, f"{name}[{key}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                found += _naive_walk(item, types, f"{name}[{i}]")
        else:
            found += _naive_walk(value, types, name)
    return found


def test_pruned_walk_finds_exactly_what_a_full_walk_finds(encrypted: Payload) -> None:
    from temporalio.api.failure.v1 import Failure

    from temporal_shield.converter import iter_messages

    started = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    attrs = started.workflow_execution_started_event_attributes
    attrs.input.payloads.add().CopyFrom(encrypted)
    attrs.header.fields["tracing"].CopyFrom(_json("t"))
    attrs.memo.fields["note"].CopyFrom(_json(1))
    attrs.search_attributes.indexed_fields["CustomerId"].CopyFrom(_json("c"))
    attrs.continued_failure.message = "m"
    attrs.continued_failure.cause.cause.application_failure_info.details.payloads.add()
    attrs.workflow_type.name = "W"
    attrs.task_queue.name = "q"
    attrs.workflow_run_timeout.seconds = 5
    attrs.prev_auto_reset_points.points.add().binary_checksum = "x"
    events = [
        started,
        _marker("core_local_activity", _json(LA_DATA), more={"result": encrypted}),
        _timeout_event("activity Heartbeat timeout", TimeoutType.TIMEOUT_TYPE_HEARTBEAT),
        _la_timeout_marker("core_local_activity", "Activity timed out"),
    ]
    for event in events:
        for types in ((Payload,), (Payload, Failure), (Failure,)):
            assert list(iter_messages(event, types)) == _naive_walk(event, types)
    assert len(list(iter_messages(started, (Payload,)))) == 5
