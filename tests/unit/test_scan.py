"""The coverage scan's classification of history fields (synthetic events)."""

from __future__ import annotations

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from temporal_shield.converter._scan import ScanReport, _inspect


def _encrypted() -> Payload:
    return Payload(
        metadata={
            "encoding": b"binary/encrypted",
            "encryption-key-id": b"local:k-1",
            "temporal-shield-classification": b"phi",
        },
        data=b"\x00",
    )


def test_failures_search_attributes_and_payloads_are_told_apart() -> None:
    report = ScanReport(namespace="ns")
    failed = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failure = failed.activity_task_failed_event_attributes.failure
    failure.message = "card 4111 declined"  # plaintext failure text
    failure.cause.encoded_attributes.CopyFrom(_encrypted())
    failure.cause.application_failure_info.details.payloads.add().CopyFrom(_encrypted())
    failure.application_failure_info.details.payloads.add().CopyFrom(
        Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')
    )
    _inspect(report, "wf-1", failed)
    started = HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    attrs = started.workflow_execution_started_event_attributes
    attrs.input.payloads.add().CopyFrom(_encrypted())
    attrs.search_attributes.indexed_fields["CustomerId"].CopyFrom(
        Payload(metadata={"encoding": b"json/plain"}, data=b'"c-1"')
    )
    attrs.memo.fields["note"].CopyFrom(Payload(metadata={"encoding": b"json/plain"}, data=b"1"))
    _inspect(report, "wf-1", started)
    assert report.plaintext == {
        ("ACTIVITY_TASK_FAILED", "activity_task_failed_event_attributes.failure.message"): 1,
        (
            "ACTIVITY_TASK_FAILED",
            "activity_task_failed_event_attributes.failure.application_failure_info.details.payloads[]",
        ): 1,
        (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.memo.fields[]",
        ): 1,
    }
    assert report.search_attributes == {
        (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.search_attributes.indexed_fields[]",
        ): 1
    }
    assert report.encrypted == 3  # input, cause attributes, cause details: each once
    assert report.classifications == {"phi": 3}
    assert report.key_ids == {"local:k-1": 3}
    table = report.as_table()
    assert "4111" not in table
    assert "NOT ENCRYPTED" in table
