"""The audit log itself: group commit, failure rewinds, canonical form."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from temporal_shield.server import AuditConfig, AuditError, AuditLog, verify
from temporal_shield.server._audit import _CANONICAL, GENESIS


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_group_commit_writes_one_chain_in_call_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(file=str(path)))
    records = await asyncio.gather(*(log.commit({"n": i}) for i in range(50)))
    log.record({"n": 50})  # the synchronous path continues the same chain
    records.append(await log.commit({"n": 51}))
    log.close()
    written = _lines(path)
    assert [r["n"] for r in written] == list(range(52))
    assert [r["hash"] for r in records] == [written[i]["hash"] for i in (*range(50), 51)]
    assert written[0]["prev"] == GENESIS
    result = verify(path)
    assert result.ok
    assert result.records == 52


def test_a_second_writer_of_the_same_file_is_refused(tmp_path: Path) -> None:
    # Two writers would each continue the chain from the record they saw last:
    # a forked chain that no verifier accepts (found with two `serve --workers 2`).
    path = tmp_path / "audit.jsonl"
    first = AuditLog(AuditConfig(file=str(path)))
    first.record({"n": 0})
    with pytest.raises(AuditError, match="being written by another process"):
        AuditLog(AuditConfig(file=str(path), lock_wait=0))
    first.record({"n": 1})  # the refused writer took nothing from the first
    first.close()
    second = AuditLog(AuditConfig(file=str(path), lock_wait=0))
    second.record({"n": 2})
    second.close()
    assert [r["n"] for r in _lines(path)] == [0, 1, 2]
    assert verify(path).ok


def test_another_name_for_the_file_does_not_get_around_the_lock(tmp_path: Path) -> None:
    # docs/server.md: the lock is on the file itself, not on its name.
    path = tmp_path / "audit.jsonl"
    first = AuditLog(AuditConfig(file=str(path)))
    (tmp_path / "symlink.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hardlink.jsonl")
    try:
        for other in ("symlink.jsonl", "hardlink.jsonl"):
            with pytest.raises(AuditError, match="being written by another process"):
                AuditLog(AuditConfig(file=str(tmp_path / other), lock_wait=0))
    finally:
        first.close()


def test_a_starting_writer_waits_for_one_that_is_still_draining(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = AuditLog(AuditConfig(file=str(path)))
    old.record({"n": 0})

    def drain() -> None:
        time.sleep(0.3)
        old.record({"n": 1})  # the old instance's last request, written while waited for
        old.close()

    thread = threading.Thread(target=drain)
    thread.start()
    new = AuditLog(AuditConfig(file=str(path), lock_wait=30))
    thread.join()
    new.record({"n": 2})
    new.close()
    written = _lines(path)
    assert [r["n"] for r in written] == [0, 1, 2]
    assert written[2]["prev"] == written[1]["hash"]  # the tail was read after the wait
    assert verify(path).ok


class _FlakyStream(io.StringIO):
    """A stdout sink that fails while ``broken`` is set."""

    broken = False

    def write(self, text: str) -> int:
        if self.broken:
            raise OSError("disk full")
        return super().write(text)


async def test_failed_batch_fails_every_waiter_and_rewinds_the_chain(tmp_path: Path) -> None:
    sink = _FlakyStream()
    log = AuditLog(AuditConfig(stdout=True), stdout=sink)
    first = await log.commit({"n": 0})
    sink.broken = True
    results = await asyncio.gather(
        *(log.commit({"n": i}) for i in (1, 2, 3)), return_exceptions=True
    )
    assert all(isinstance(r, AuditError) for r in results)
    assert len({id(r) for r in results}) == 3  # each waiter raises its own error
    sink.broken = False
    after = await log.commit({"n": 4})
    # The failed records were never written, so the chain continues from the last one that was.
    assert after["prev"] == first["hash"]
    path = tmp_path / "copy.jsonl"
    path.write_text(sink.getvalue())
    assert [r["n"] for r in _lines(path)] == [0, 4]
    assert verify(path).ok


class _HalfWrites:
    """A disk filling up mid-batch: write() takes half, then fails with ENOSPC (as write(2))."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.full = False

    def write(self, data: bytes) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        self.full = True
        return int(self.inner.write(bytes(data[: len(data) // 2])))

    def fileno(self) -> int:
        return int(self.inner.fileno())


async def test_half_written_batch_is_cut_back_off_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(file=str(path)))
    await log.commit({"n": 0})
    before = path.read_bytes()
    real = log._file
    log._file = _HalfWrites(real)  # type: ignore[assignment]
    results = await asyncio.gather(*(log.commit({"n": i}) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(r, AuditError) for r in results)
    assert path.read_bytes() == before  # no partial line, no record of a refused request
    log._file = real
    await log.commit({"n": 3})
    log.close()
    assert [r["n"] for r in _lines(path)] == [0, 3]
    assert verify(path).ok


async def test_close_writes_a_pending_batch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(file=str(path)))
    task = asyncio.create_task(log.commit({"n": 0}))
    await asyncio.sleep(0)  # chained, not yet written
    log.close()
    assert (await task)["n"] == 0
    assert [r["n"] for r in _lines(path)] == [0]


async def test_a_cancelled_caller_does_not_cancel_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(file=str(path)))
    doomed = asyncio.create_task(log.commit({"n": 0}))
    kept = asyncio.create_task(log.commit({"n": 1}))
    await asyncio.sleep(0)  # both are chained into one pending batch
    doomed.cancel()
    record = await kept
    with pytest.raises(asyncio.CancelledError):
        await doomed
    log.close()
    # The cancelled caller's decision is on record all the same (it was chained first).
    assert [r["n"] for r in _lines(path)] == [0, 1]
    assert record["prev"] == _lines(path)[0]["hash"]
    assert verify(path).ok


async def test_unserialisable_record_fails_closed_without_advancing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditConfig(file=str(path)))
    with pytest.raises(AuditError):
        await log.commit({"subject": "\ud800"})  # a lone surrogate is not UTF-8
    record = await log.commit({"subject": "ok"})
    log.close()
    assert record["prev"] == GENESIS
    assert verify(path).ok


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_values = st.one_of(
    _text,
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(min_value=0, max_value=1e9).map(lambda f: round(f, 3)),
    st.lists(_text, max_size=4),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_text, _values, max_size=12))
def test_canonical_form_is_the_stdlib_json_form(record: dict[str, Any]) -> None:
    # Logs written by earlier releases (stdlib json) must keep verifying.
    stdlib = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert _CANONICAL.encode(record) == stdlib.encode()
