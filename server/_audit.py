"""Tamper-evident audit log: one JSON record per decision, hash-chained.

Each record carries ``prev`` (the hash of the record before it) and ``hash``
(SHA-256 of the record's canonical JSON without ``hash``). Editing, deleting or
reordering any line breaks the chain at that line, which
``temporal-shield audit verify FILE`` reports. Records never contain payloads,
keys or tokens: the server builds them from counts, ids and labels only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from temporal_shield.codec import ShieldError

from ._config import AuditConfig

GENESIS = "0" * 64


class AuditError(ShieldError):
    """An audit record could not be written: the request must fail closed (503)."""


# Canonical form: keys sorted, no whitespace, UTF-8 (byte-identical to
# ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` for the
# strings, integers and 3-decimal floats records hold; tests/server pin this).
# msgspec encodes a record in well under a microsecond, the stdlib in about six.
_CANONICAL = msgspec.json.Encoder(order="sorted")


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_CANONICAL.encode(body)).hexdigest()


@dataclass
class _Batch:
    """Records chained in one event-loop turn, waiting for their write."""

    prev: str
    """The chain head before the batch (restored if the write fails)."""
    loop: asyncio.AbstractEventLoop
    lines: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class AuditLog:
    """Writes chained records to a JSON Lines file and/or standard output."""

    def __init__(self, config: AuditConfig, *, stdout: IO[str] | None = None) -> None:
        """Open the sinks; an existing file's chain is continued.

        Raises:
            AuditError: the file cannot be opened or its last record is unreadable.
        """
        self._config = config
        self._stdout = (stdout or sys.stdout) if config.stdout else None
        self._file: IO[bytes] | None = None
        self._prev = GENESIS
        self._pending: _Batch | None = None
        self._size = 0
        """Bytes in the file as this log last wrote it."""
        if config.file:
            path = Path(config.file)
            try:
                self._prev = _last_hash(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                # Unbuffered: every record is one write() straight to the kernel
                # before the response that it records is sent.
                self._file = os.fdopen(fd, "ab", buffering=0)
                self._size = os.fstat(fd).st_size
            except (OSError, ValueError) as exc:
                raise AuditError(f"cannot open audit log {path}: {exc}") from None

    def _chain(self, event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        record = event  # owned by the log from here on (documented on the callers)
        record["prev"] = self._prev
        try:
            canonical = _CANONICAL.encode(record)
        except (UnicodeEncodeError, msgspec.EncodeError, TypeError) as exc:
            raise AuditError(f"audit record not serialisable: {type(exc).__name__}") from None
        record["hash"] = hashlib.sha256(canonical).hexdigest()
        # The written line is the canonical body with the hash appended: one
        # serialisation per record (verify() re-derives the body from the JSON).
        return record, b'%s,"hash":"%s"}\n' % (canonical[:-1], record["hash"].encode())

    def _write(self, lines: bytes) -> None:
        written = 0
        try:
            if self._file is not None:
                view = memoryview(lines)
                while written < len(lines):
                    step = self._file.write(view[written:])
                    if not step:
                        raise OSError("short write")
                    written += step
                if self._config.fsync:
                    os.fsync(self._file.fileno())
            if self._stdout is not None:
                self._stdout.write(lines.decode())
                self._stdout.flush()
        except (OSError, ValueError) as exc:
            if self._file is not None:
                self._cut_back(written)
            raise AuditError(f"audit write failed: {type(exc).__name__}") from None
        if self._file is not None:
            self._size += written

    def _cut_back(self, written: int) -> None:
        """Cut a failed batch back off the file, so it ends at the last written record.

        Otherwise a half-written batch (disk full mid-write) would leave records
        of requests that were refused, and a chain that breaks at the next one.
        Only when the file is exactly as this log left it plus this batch's
        bytes: another writer's records (a misconfiguration) are never cut.
        """
        assert self._file is not None
        with contextlib.suppress(OSError, ValueError):  # the write error is what counts
            if os.fstat(self._file.fileno()).st_size == self._size + written:
                os.ftruncate(self._file.fileno(), self._size)

    def record(self, event: dict[str, Any]) -> dict[str, Any]:
        """Chain and write one record now; returns it with ``prev`` and ``hash``.

        ``event`` becomes the record (``prev`` and ``hash`` are added to it).

        Raises:
            AuditError: any sink failed. The chain does not advance.
        """
        if self._pending is not None:
            self._flush()  # keep file order equal to chain order
        record, line = self._chain(event)
        self._write(line)
        self._prev = record["hash"]
        return record

    async def commit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Chain one record and return once it is written (group commit).

        ``event`` becomes the record (``prev`` and ``hash`` are added to it).

        Records chained during one turn of the event loop are written together
        by a single ``write`` (and ``fsync``, if configured) at the start of the
        next: under load one system call serves many requests, and no caller
        continues — so no plaintext leaves — before its own record is written.

        Raises:
            AuditError: the batch could not be written. Every record in it
                fails and the chain rewinds to the last written record.
        """
        record, line = self._chain(event)
        batch = self._pending
        if batch is None:
            # Looked up once per batch: on Python 3.11 every lookup is a getpid().
            loop = asyncio.get_running_loop()
            batch = self._pending = _Batch(self._prev, loop)
            loop.call_soon(self._flush)
        # One future per waiter: a cancelled caller cannot cancel the others'.
        written = batch.loop.create_future()
        batch.lines.append(line)
        batch.waiters.append(written)
        self._prev = record["hash"]
        await written
        return record

    def _flush(self) -> None:
        batch, self._pending = self._pending, None
        if batch is None:
            return
        try:
            self._write(b"".join(batch.lines))
        except AuditError as exc:
            self._prev = batch.prev
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(AuditError(str(exc)))
        else:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def close(self) -> None:
        """Write any pending batch, then close the file sink."""
        if self._pending is not None:
            self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _last_hash(path: Path) -> str:
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        last = f.read().splitlines()[-1]
    return str(json.loads(last)["hash"])


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`."""

    ok: bool
    records: int
    """Records checked (up to and excluding the first broken one)."""
    broken_line: int | None = None
    """1-based line number of the first broken link."""
    reason: str = ""


def verify(path: Path) -> VerifyResult:
    """Check every link of an audit log's hash chain."""
    prev = GENESIS
    count = 0
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                return VerifyResult(False, count, number, "not valid JSON")
            if not isinstance(record, dict) or record.get("prev") != prev:
                return VerifyResult(False, count, number, "previous-hash link does not match")
            if record.get("hash") != _digest(record):
                return VerifyResult(False, count, number, "record hash does not match its content")
            prev = record["hash"]
            count += 1
    return VerifyResult(True, count)
