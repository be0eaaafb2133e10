"""The coverage scan against hostile histories: items shaped to be miscounted.

Each test plants application data where an insider with write access to
Temporal's API or database (or a misconfigured client) could, shaped so that an
earlier scan counted it as encrypted, as a search attribute or as another
codec's ciphertext. None of them may leave the report clean (or merely
"foreign", which ``--allow-foreign-encryption`` lets through).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import struct
import zlib
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference

from temporal_shield.codec._format import parse
from temporal_shield.converter import _scan as scan_module
from temporal_shield.converter._scan import ScanReport, _inspect

PII = json.dumps(
    [
        {"name": f"Jane Doe {i}", "ssn": f"123-45-{i:04d}", "card": "4111 1111 1111 1111"}
        for i in range(40)
    ]
).encode()
STARTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
INPUT = (
    "WORKFLOW_EXECUTION_STARTED",
    "workflow_execution_started_event_attributes.input.payloads[]",
)


def _json(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def _scan(*events: HistoryEvent) -> ScanReport:
    report = ScanReport(namespace="ns")
    for event in events:
        _inspect(report, "wf-1", event)
    return report


def _started(*inputs: Payload) -> HistoryEvent:
    event = HistoryEvent(event_type=STARTED)
    for payload in inputs:
        event.workflow_execution_started_event_attributes.input.payloads.add().CopyFrom(payload)
    return event


# --- a field named like search attributes is not one --------------------------------


def test_map_keys_named_search_attributes_are_not_search_attributes() -> None:
    """Memo, header and marker details keys are the writer's to choose."""
    started = HistoryEvent(event_type=STARTED)
    attrs = started.workflow_execution_started_event_attributes
    attrs.memo.fields["search_attributes"].CopyFrom(_json("ssn 123-45-6789"))
    attrs.memo.fields["x.search_attributes.indexed_fields"].CopyFrom(_json("ssn 123-45-6789"))
    attrs.header.fields["search_attributes"].CopyFrom(_json("ssn 123-45-6789"))
    marker = HistoryEvent(event_type=EventType.EVENT_TYPE_MARKER_RECORDED)
    marker.marker_recorded_event_attributes.marker_name = "search_attributes"
    details = marker.marker_recorded_event_attributes.details["search_attributes"]
    details.payloads.add().CopyFrom(_json("ssn 123-45-6789"))
    report = _scan(started, marker)
    assert not report.search_attributes, report.as_table()
    assert sum(report.plaintext.values()) == 4
    assert not report.clean


def test_real_search_attributes_stay_search_attributes() -> None:
    started = HistoryEvent(event_type=STARTED)
    attrs = started.workflow_execution_started_event_attributes
    attrs.search_attributes.indexed_fields["CustomerId"].CopyFrom(_json("c-1"))
    upsert = HistoryEvent(event_type=EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
    fields = upsert.upsert_workflow_search_attributes_event_attributes.search_attributes
    fields.indexed_fields["plaintext"].CopyFrom(_json("x"))
    report = _scan(started, upsert)
    assert report.search_attributes == {
        (
            "WORKFLOW_EXECUTION_STARTED",
            "workflow_execution_started_event_attributes.search_attributes"
            ".indexed_fields[CustomerId]",
        ): 1,
        (
            "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES",
            "upsert_workflow_search_attributes_event_attributes.search_attributes"
            ".indexed_fields[plaintext]",
        ): 1,
    }
    assert report.clean
    assert report.payloads == 2


# --- encoded attributes do not vouch for a message kept beside them ------------------


@pytest.mark.parametrize(
    ("message", "stack_trace"),
    [
        ("card 4111 1111 1111 1111 declined", ""),
        ("Encoded failure", '  File "pay.py", line 3, in charge(ssn="123-45-6789")'),
        ("Encoded failure: ssn 123-45-6789", ""),
    ],
)
def test_encoded_attributes_beside_a_plaintext_message_are_plaintext(
    encrypted: Payload, message: str, stack_trace: str
) -> None:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failure = event.activity_task_failed_event_attributes.failure
    failure.encoded_attributes.CopyFrom(encrypted)
    failure.message = message
    failure.stack_trace = stack_trace
    failure.cause.encoded_attributes.CopyFrom(encrypted)
    failure.cause.message = message
    failure.cause.stack_trace = stack_trace
    report = _scan(event)
    where = "activity_task_failed_event_attributes.failure"
    assert report.plaintext == {
        ("ACTIVITY_TASK_FAILED", f"{where}.message"): 1,
        ("ACTIVITY_TASK_FAILED", f"{where}.cause.message"): 1,
    }
    assert report.encrypted == 2  # the encoded attributes themselves are ours


def test_the_sdk_encoded_failure_shape_is_encrypted(encrypted: Payload) -> None:
    event = HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
    failure = event.activity_task_failed_event_attributes.failure
    failure.encoded_attributes.CopyFrom(encrypted)
    failure.message = "Encoded failure"
    failure.application_failure_info.type = "ValueError"
    report = _scan(event)
    assert report.clean, report.as_table()
    assert report.encrypted == 1


# --- a well-formed header does not make the bytes after it ciphertext -----------------


def _forged(encrypted: Payload, body: bytes, *, original_length: int | None = None) -> Payload:
    """Our header (copied from a real envelope) followed by ``body``."""
    _, offset = parse(encrypted.data)
    head = bytearray(encrypted.data[:offset])
    head[4] = 0  # no compression
    length = len(body) - 16 if original_length is None else original_length
    struct.pack_into(">I", head, 5, length)
    return Payload(metadata=dict(encrypted.metadata), data=bytes(head) + body)


def _minimal_header(body: bytes) -> bytes:
    """The smallest well-formed header (every field empty) before ``body``."""
    fixed = struct.pack(">2sBBBI", b"TS", 1, 1, 0, max(len(body) - 16, 0))
    return fixed + b"\x00\x00" + b"\x00\x00" + b"\x00" + b"\x00\x00" + bytes(32) + bytes(12) + body


def test_a_real_envelope_is_encrypted(encrypted: Payload) -> None:
    report = _scan(_started(encrypted))
    assert report.encrypted == 1
    assert report.clean


@pytest.mark.parametrize(
    "body",
    [
        PII,  # text after the header
        b'{"ssn": "123-45-6789", "n": 1}' + bytes(16),  # short JSON and a zero "tag"
        zstandard.ZstdCompressor().compress(PII),  # compressed text after the header
        gzip.compress(PII),
    ],
)
def test_a_copied_header_before_plaintext_is_plaintext(encrypted: Payload, body: bytes) -> None:
    report = _scan(
        _started(
            _forged(encrypted, body),
            Payload(metadata=dict(encrypted.metadata), data=_minimal_header(body)),
        )
    )
    assert report.encrypted == 0, report.as_table()
    assert report.plaintext == {INPUT: 2}


def test_an_envelope_whose_lengths_disagree_is_not_encrypted(encrypted: Payload) -> None:
    _, offset = parse(encrypted.data)
    body = encrypted.data[offset:]
    # uncompressed: ciphertext is exactly the original length plus the tag
    report = _scan(
        _started(
            _forged(encrypted, body, original_length=len(body) - 17),
            _forged(encrypted, body + os.urandom(64), original_length=len(body) - 16),
        )
    )
    assert report.encrypted == 0
    assert not report.clean


# --- compressed plaintext is not another codec's ciphertext ---------------------------


def _labelled(data: bytes) -> Payload:
    return Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"test-key-id"},
        data=data,
    )


_COMPRESSORS = {
    "gzip": gzip.compress,
    "zlib": zlib.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("name", sorted(_COMPRESSORS))
@pytest.mark.parametrize("size", [60, len(PII)])
def test_compressed_plaintext_under_the_label_is_plaintext_not_foreign(
    name: str, size: int
) -> None:
    packed = _COMPRESSORS[name](PII[:size])
    assert len(packed) >= 28
    report = _scan(_started(_labelled(packed)))
    assert report.plaintext == {INPUT: 1}, (name, report.as_table())
    assert not report.foreign_encryption


def test_sample_codec_ciphertext_stays_foreign_even_when_it_starts_like_a_frame() -> None:
    """A nonce that happens to begin with a compression magic is still ciphertext."""
    key = AESGCM(os.urandom(32))
    magics = [b"\x1f\x8b\x08", b"\x78\x9c", b"\x78\x01", b"\x78\xda", b""]
    payloads: list[Payload] = []
    for magic in magics:
        for _ in range(200):
            nonce = magic + os.urandom(12 - len(magic))
            payloads.append(_labelled(nonce + key.encrypt(nonce, PII[: 40 + len(payloads)], None)))
    report = _scan(_started(*payloads))
    assert report.foreign_encryption == {INPUT: len(payloads)}
    assert not report.plaintext


def test_lz4_frames_are_compressed_plaintext() -> None:
    # An lz4 frame (no lz4 library here): magic, FLG (version 01, block
    # independence, content checksum), BD (64 KiB blocks), header checksum,
    # then one uncompressed block of the text.
    frame = b"\x04\x22\x4d\x18\x64\x40\xa7" + struct.pack("<I", 0x80000000 | 60) + PII[:60]
    report = _scan(_started(_labelled(frame)))
    assert report.plaintext == {INPUT: 1}


# --- application map keys cannot bloat or forge the report -----------------------------


def _memo_run(keys: list[str], workflow_id: str = "wf-1") -> ScanReport:
    started = HistoryEvent(event_type=STARTED)
    for key in keys:
        started.workflow_execution_started_event_attributes.memo.fields[key].CopyFrom(_json("x"))
    report = ScanReport(namespace="ns")
    _inspect(report, workflow_id, started)
    return report


def test_distinct_memo_keys_per_run_keep_the_report_bounded_and_counts_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scan_module, "MAX_ROWS", 20)
    total = ScanReport(namespace="ns")
    for run in range(200):  # a fresh memo key per run, as a careless writer does
        total.merge(_memo_run([f"order-{run}"], f"wf-{run}"))
    assert sum(total.plaintext.values()) == 200
    assert len(total.plaintext) <= 21
    collapsed = (
        "WORKFLOW_EXECUTION_STARTED",
        "workflow_execution_started_event_attributes.memo.fields[*]",
    )
    assert total.plaintext[collapsed] == 180
    assert len(total.first_seen) <= 21
    assert len(json.dumps(total.as_json())) < 20_000
    # A sequential fold of the same runs gives the same rows.
    sequential = ScanReport(namespace="ns")
    for run in range(200):
        started = HistoryEvent(event_type=STARTED)
        fields = started.workflow_execution_started_event_attributes.memo.fields
        fields[f"order-{run}"].CopyFrom(_json("x"))
        _inspect(sequential, f"wf-{run}", started)
    assert sequential.as_json() == total.as_json()
    assert ScanReport.from_json(total.as_json()).as_json() == total.as_json()


def test_key_ids_and_labels_from_metadata_are_bounded(
    monkeypatch: pytest.MonkeyPatch, encrypted: Payload
) -> None:
    monkeypatch.setattr(scan_module, "MAX_ROWS", 5)
    report = ScanReport(namespace="ns")
    for i in range(50):  # metadata is not authenticated: anyone can vary it
        forged = Payload()
        forged.CopyFrom(encrypted)
        forged.metadata["encryption-key-id"] = f"key-{i}".encode()
        forged.metadata["temporal-shield-classification"] = f"label-{i}".encode()
        _inspect(report, "wf", _started(forged))
    assert report.encrypted == 50
    assert len(report.key_ids) <= 6
    assert report.key_ids["(other)"] == 45
    assert len(report.classifications) <= 6
    assert sum(report.classifications.values()) == 50


def test_map_keys_cannot_forge_a_path_or_carry_control_characters() -> None:
    report = _memo_run(["a].search_attributes[b", "line\nbreak\x1b[31m", "k" * 10_000])
    fields = sorted(f for _, f in report.plaintext)
    assert all("\n" not in f and "\x1b" not in f for f in fields)
    assert any(f.endswith("memo.fields[a\\u005d.search_attributes\\u005bb]") for f in fields)
    assert max(len(f) for f in fields) < 200
    assert not report.search_attributes


# --- S3 offload references: exactly the SDK driver's, nothing riding along ---------------

_DIGEST = "ab" * 32


def _reference(claim: dict[str, str] | None = None, *, sized: bool = True) -> Payload:
    claim = claim or {
        "bucket": "payloads",
        "key": f"v0/ns/default/wt/Echo/wi/wf-1/ri/r1/d/sha256/{_DIGEST}",
        "hash_algorithm": "sha256",
        "hash_value": _DIGEST,
    }
    reference = ExternalStorageReference(driver_name="aws.s3driver", claim_data=claim)
    payload = Payload(
        metadata={
            "encoding": b"json/protobuf",
            "messageType": b"temporal.api.sdk.v1.ExternalStorageReference",
        },
        data=json_format.MessageToJson(reference).encode(),
    )
    if sized:
        payload.external_payloads.add().size_bytes = 20_000
    return payload


def test_the_s3_drivers_reference_is_offloaded_not_plaintext() -> None:
    report = _scan(_started(_reference()))
    assert sum(report.offloaded.values()) == 1
    assert report.clean


@pytest.mark.parametrize(
    "payload",
    [
        _reference(
            {
                "bucket": "payloads",
                "key": f"v0/ns/default/d/sha256/{_DIGEST}",
                "hash_algorithm": "sha256",
                "hash_value": _DIGEST,
                "ssn": "123-45-6789",  # application data riding along
            }
        ),
        _reference(
            {
                "bucket": "payloads",
                "key": "v0/ssn/123-45-6789",  # not the driver's key form
                "hash_algorithm": "sha256",
                "hash_value": _DIGEST,
            }
        ),
        _reference(sized=False),  # no stored payload behind it
        Payload(
            metadata={
                "encoding": b"json/protobuf",
                "messageType": b"temporal.api.sdk.v1.ExternalStorageReference",
            },
            data=b'{"driverName": "aws.s3driver", "note": "Jane Doe"}',
        ),
    ],
    ids=["extra-claim", "foreign-key", "no-size", "unknown-field"],
)
def test_anything_else_shaped_like_a_reference_is_plaintext(payload: Payload) -> None:
    report = _scan(_started(payload))
    assert not report.offloaded
    assert not report.clean
