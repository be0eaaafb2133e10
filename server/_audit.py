"""Tamper-evident audit log: one JSON record per decision, hash-chained, checkpointed.

Each record carries ``prev`` (the hash of the record before it) and ``hash``
(SHA-256 of the record's canonical JSON without ``hash``). Editing, deleting or
reordering any line breaks the chain at that line. A plain hash chain can be
recomputed by whoever can write the file, so every ``checkpoint_every`` records
or ``checkpoint_interval`` seconds (and at shutdown) the log signs its head
(:mod:`._checkpoint`): a checkpoint record in the chain and a copy in
append-only sinks outside the host. ``temporal-shield audit verify`` checks
the chain, the signatures and the external checkpoints (:mod:`._verify`).
Records never contain payloads, keys or tokens: the server builds them from
counts, ids and labels only.

Records in the file: the server's decision records (no ``type``), and records
of the log itself: ``checkpoint`` (a signed head; ``line`` is its own line
number), ``recovery`` (a torn tail was cut off at start: ``dropped_bytes``) and
``resume`` (the sink works again after ``failed_batches`` failed writes).

What is checked at start (reading the whole file would make a large log slow
to restart): the last :data:`TAIL_BYTES` of the file. A torn last line (no
final newline, or a last line that is not JSON) is cut off and a ``recovery``
record says how many bytes went. Every complete record in that chunk is
parsed, its hash recomputed and its link to the record before it checked (and
the first record of the file links to the genesis hash, if it is in the
chunk); any failure refuses to start. The record count comes from the last
checkpoint record in the chunk, else from counting the file's lines. Records
before the chunk and all signatures are checked by ``audit verify``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from temporal_shield.codec import ShieldError

from ._checkpoint import (
    RECORD_TYPE,
    Checkpoint,
    CheckpointSink,
    S3Sink,
    StdoutSink,
    s3_client,
    utc_now,
)
from ._config import AuditConfig
from ._signer import CheckpointSigner, algorithm, aws_error_code, key_id, signer_from_uri

GENESIS = "0" * 64
TAIL_BYTES = 1 << 20
"""How much of the file's end is checked at start."""

log = logging.getLogger("temporal_shield.server.audit")


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


def _line(canonical: bytes, digest: str) -> bytes:
    """The line the log writes: the canonical body with ``hash`` appended last."""
    return b'%s,"hash":"%s"}\n' % (canonical[:-1], digest.encode())


def canonical_line(record: dict[str, Any]) -> bytes:
    """The exact line the log writes for ``record`` (which carries its ``hash``)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return _line(_CANONICAL.encode(body), str(record["hash"]))


def line_problem(line: bytes, record: dict[str, Any]) -> str:
    """Why ``line`` is not exactly the line the log wrote for ``record``, or ``""``.

    The hash covers the record's *canonical* form, so a line must also *be*
    that form, byte for byte: otherwise an insider could keep the hash valid
    while changing what people and other parsers read (an escaped character
    that grep does not match, a duplicate key that first-key-wins parsers
    take instead of the hashed one).
    """
    digest = record.get("hash")
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        canonical = _CANONICAL.encode(body)
    except (UnicodeEncodeError, msgspec.EncodeError, RecursionError, TypeError):
        # A lone surrogate escape or absurd nesting: never written by the log.
        return "record is not in the canonical form its hash covers"
    if not isinstance(digest, str) or hashlib.sha256(canonical).hexdigest() != digest:
        return "record hash does not match its content"
    if line.rstrip(b"\n") != _line(canonical, digest)[:-1]:
        return "record is not in the canonical form its hash covers"
    return ""


_LOCK_POLL = 0.1


def _lock(fd: int, path: Path, wait: float) -> None:
    """Take the exclusive ``flock`` that makes this process the file's only writer.

    Two processes appending to one file (a second server started with the same
    settings, or a new instance started while the old one still drains) would
    each continue the chain from the record it saw last, forking it. The lock
    is advisory: it binds temporal-shield processes, which is what a forked
    chain needs; the kernel releases it when the holder exits, however it exits.

    Raises:
        AuditError: another process still holds the file after ``wait`` seconds.
    """
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AuditError(
                    f"audit log {path} is being written by another process (another "
                    "temporal-shield serve with the same audit.file?); refusing to start: "
                    "two writers would fork its hash chain"
                ) from None
            if not waiting:
                waiting = True
                log.warning(
                    "audit log %s is held by another process; waiting up to %.0f s for it",
                    path,
                    wait,
                )
            time.sleep(_LOCK_POLL)


@dataclass
class _Batch:
    """Records chained in one event-loop turn, waiting for their write."""

    prev: str
    """The chain head before the batch (restored if the write fails)."""
    loop: asyncio.AbstractEventLoop
    lines: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class AuditLog:
    """Writes chained records to a JSON Lines file and/or standard output.

    Health: :attr:`failing` is true after a failed write (until a write
    succeeds: while failing, :meth:`start`'s timer writes a ``resume`` record
    every second as a probe) and after a failed checkpoint (until one
    succeeds). The server's ``/readyz`` answers 503 meanwhile.
    """

    def __init__(
        self,
        config: AuditConfig,
        *,
        stdout: IO[str] | None = None,
        signer: CheckpointSigner | None = None,
        sinks: list[CheckpointSink] | None = None,
    ) -> None:
        """Open the sinks; an existing file's chain is continued (see the module doc).

        Args:
            config: Sinks and checkpoint settings.
            stdout: Stream for the stdout sinks (tests); default ``sys.stdout``.
            signer: Checkpoint signer instead of the one ``config.signing_key`` names.
            sinks: Checkpoint sinks instead of those ``config`` names.

        Raises:
            AuditError: the file cannot be opened, or is damaged other than a
                torn last line (the message names the file, the line and what to do).
            ConfigError: the signing key or a checkpoint sink is unusable.
        """
        self._config = config
        out = stdout or sys.stdout
        self._stdout = out if config.stdout else None
        self._file: IO[bytes] | None = None
        self._prev = GENESIS
        self._pending: _Batch | None = None
        self._size = 0
        """Bytes in the file as this log last wrote it."""
        self._seq = 0
        """Records written to the file (the head's line number)."""
        self._checkpoint_line = 0
        """Line of the last checkpoint record."""
        self._covered = 0
        """Records its signed head covers (records written while it was signed follow)."""
        self._checkpoint_at = time.monotonic()
        self._checkpointing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._write_failed = False
        self._checkpoint_failed = False
        self._failed_batches = 0
        self.checkpoints = 0
        """Checkpoints signed, written and anchored (for metrics and tests)."""
        self.checkpoint_failures = 0
        """Checkpoint attempts that failed at signing, writing or anchoring."""
        self.write_failures = 0
        """Batches that could not be written."""
        dropped = 0
        if config.file:
            path = Path(config.file)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                # Unbuffered: every record is one write() straight to the kernel
                # before the response that it records is sent.
                self._file = os.fdopen(fd, "ab", buffering=0)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {path}: {exc.strerror}") from None
            try:
                # Held for the log's life, and taken before the tail is read: the
                # previous writer's last record is then final.
                _lock(fd, path, config.lock_wait)
                # The record count only numbers checkpoints: without a signer
                # it is not needed, and counting means reading the whole file.
                tail = _recover(path, config.replica_id, count=bool(signer or config.signing_key))
                self._size = os.fstat(fd).st_size
            except BaseException as exc:
                self._file.close()  # and the lock with it
                if isinstance(exc, OSError):
                    raise AuditError(f"cannot open audit log {path}: {exc.strerror}") from None
                raise
            self._prev, self._seq, self._checkpoint_line, self._covered, dropped = tail
        self._signer = signer
        if signer is None and config.signing_key:
            signer = self._signer = signer_from_uri(
                config.signing_key,
                log_file=Path(config.file),
                region=config.kms_region,
                endpoint_url=config.kms_endpoint_url,
            )
        self._key_id = key_id(signer.public_key) if signer else ""
        self._sinks = _sinks(config, out) if sinks is None else sinks
        if dropped:
            log.warning("audit log %s: cut off a torn last line (%d bytes)", config.file, dropped)
            self.record(
                {
                    "type": "recovery",
                    "time": utc_now(),
                    "dropped_bytes": dropped,
                    "reason": "torn last line (crash mid-write) cut off at start",
                }
            )

    @property
    def failing(self) -> bool:
        """Whether the last write or the last checkpoint failed (cheap; for ``/readyz``)."""
        return self._write_failed or self._checkpoint_failed

    @property
    def healthy(self) -> bool:
        """The opposite of :attr:`failing`."""
        return not self.failing

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
        return record, _line(canonical, record["hash"])

    def _write(self, lines: bytes, count: int) -> None:
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
            self._write_failed = True
            self.write_failures += 1
            self._failed_batches += 1
            raise AuditError(f"audit write failed: {type(exc).__name__}") from None
        if self._file is not None:
            self._size += written
        self._seq += count
        self._write_failed = False

    def _written(self) -> None:
        """After a write, once the head (``_prev``) is the last written record."""
        if (
            self._signer is not None
            and not self._checkpointing
            and self._unsigned() >= self._config.checkpoint_every
        ):
            self._checkpoint_soon()

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
        self._write(line, 1)
        self._prev = record["hash"]
        self._written()
        return record

    async def commit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Chain one record and return once it is written (group commit).

        ``event`` becomes the record (``prev`` and ``hash`` are added to it).

        Records chained during one turn of the event loop are written together
        by a single ``write`` (and ``fsync``, if configured) at the start of the
        next: under load one system call serves many requests, and no caller
        continues — so no plaintext leaves — before its own record is written.
        Checkpoints never delay this: they are signed in a worker thread.

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
            self._write(b"".join(batch.lines), len(batch.lines))
        except AuditError as exc:
            self._prev = batch.prev
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(AuditError(str(exc)))
        else:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._written()

    # -- checkpoints ---------------------------------------------------------

    async def start(self) -> None:
        """Start the timer for periodic checkpoints and sink probes (call on the loop)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        period = min(1.0, self._config.checkpoint_interval)
        while True:
            await asyncio.sleep(period)
            if self._write_failed:
                self._probe()
            if self._checkpoint_due():
                await self._checkpoint()

    def _probe(self) -> None:
        """While writes fail, try one ``resume`` record: its success clears the failure."""
        with contextlib.suppress(AuditError):
            self.record(
                {"type": "resume", "time": utc_now(), "failed_batches": self._failed_batches}
            )
            self._failed_batches = 0

    def _checkpoint_due(self) -> bool:
        if self._signer is None or self._checkpointing:
            return False
        # Checkpoint records alone do not make a checkpoint due (or an idle
        # server would sign forever); a failed one is retried.
        unsigned = self._unsigned() > 0 or self._checkpoint_failed
        waited = time.monotonic() - self._checkpoint_at >= self._config.checkpoint_interval
        return unsigned and waited

    def _unsigned(self) -> int:
        """Records no checkpoint covers, other than the last checkpoint record itself."""
        own = 1 if self._checkpoint_line > self._covered else 0
        return self._seq - self._covered - own

    def _checkpoint_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller: nothing to keep responsive
            self._checkpoint_sync()
            return
        task = loop.create_task(self._checkpoint())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _head(self) -> Checkpoint | None:
        """The written chain head, as an unsigned checkpoint; marks one in progress."""
        if self._pending is not None:
            self._flush()  # sign what is on disk, not what is still in memory
        self._checkpointing = True
        if self._seq == 0:
            return None
        return Checkpoint(
            replica=self._config.replica_id, seq=self._seq, head=self._prev, time=utc_now()
        )

    def _sign(self, head: Checkpoint) -> Checkpoint:
        assert self._signer is not None
        signature = self._signer.sign(head.message())
        return dataclasses.replace(
            head,
            key=self._key_id,
            alg=algorithm(self._signer.public_key),
            signer=self._signer.name,
            sig=base64.b64encode(signature).decode(),
        )

    def _append(self, checkpoint: Checkpoint) -> None:
        if self._pending is not None:
            self._flush()
        line = self._seq + 1
        self.record({"type": RECORD_TYPE, **checkpoint.fields(), "line": line})
        self._checkpoint_line = line
        self._covered = checkpoint.seq

    def _anchor(self, checkpoint: Checkpoint) -> None:
        """Put ``checkpoint`` into every sink; raise the first failure after trying all."""
        failure: Exception | None = None
        for sink in self._sinks:
            try:
                sink.put(checkpoint)
            except Exception as exc:
                log.error(
                    "audit checkpoint %d not anchored in %s: %s",
                    checkpoint.seq,
                    type(sink).__name__,
                    aws_error_code(exc),
                )
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _checkpoint(self) -> None:
        """Sign the written head and anchor it, off the event loop."""
        if self._checkpointing:
            return
        try:
            head = self._head()
            if head is not None:
                signed = await asyncio.to_thread(self._sign, head)
                self._append(signed)
                await asyncio.to_thread(self._anchor, signed)
        except Exception as exc:
            self._checkpoint_done(exc)
        else:
            self._checkpoint_done(None)

    def _checkpoint_sync(self) -> None:
        """:meth:`_checkpoint` for callers without an event loop (and :meth:`close`)."""
        if self._checkpointing:
            return
        try:
            head = self._head()
            if head is not None:
                signed = self._sign(head)
                self._append(signed)
                self._anchor(signed)
        except Exception as exc:
            self._checkpoint_done(exc)
        else:
            self._checkpoint_done(None)

    def _checkpoint_done(self, failure: Exception | None) -> None:
        self._checkpointing = False
        self._checkpoint_at = time.monotonic()
        if failure is None:
            self._checkpoint_failed = False
            self.checkpoints += 1
            return
        self._checkpoint_failed = True
        self.checkpoint_failures += 1
        # The type or AWS error code only: messages could echo request data.
        log.error("audit checkpoint failed (retried later): %s", aws_error_code(failure))

    async def aclose(self) -> None:
        """Stop the timer, finish checkpoints in flight, sign the final head, close."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        unsigned = self._unsigned() > 0 or self._checkpoint_failed
        if self._signer is not None and self._file is not None and unsigned:
            await self._checkpoint()
        self.close()

    def close(self) -> None:
        """Write any pending batch, sign the final head (blocking), close the file sink.

        In a server use :meth:`aclose`, which signs in a worker thread.
        """
        if self._pending is not None:
            self._flush()
        if self._signer is not None and self._file is not None and self._unsigned() > 0:
            self._checkpoint_sync()
        if self._file is not None:
            self._file.close()
            self._file = None


def _sinks(config: AuditConfig, stdout: IO[str]) -> list[CheckpointSink]:
    sinks: list[CheckpointSink] = []
    if config.s3_bucket:
        client = s3_client(region=config.s3_region, endpoint_url=config.s3_endpoint_url)
        sinks.append(
            S3Sink(
                client,
                config.s3_bucket,
                config.s3_prefix,
                retention_days=config.s3_retention_days,
            )
        )
    if config.checkpoint_stdout:
        sinks.append(StdoutSink(stdout))
    return sinks


def _recover(path: Path, replica: str, *, count: bool) -> tuple[str, int, int, int, int]:
    """Check the file's tail and cut a torn last line off (see the module doc).

    Returns:
        (head hash, records, line of the last checkpoint record, records it
        covers, bytes dropped); with ``count`` false and no checkpoint in the
        tail, records is 0 (not counted: that reads the whole file)

    Raises:
        AuditError: damage other than a torn last line; the file is left as it is.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return GENESIS, 0, 0, 0, 0
    if size == 0:
        return GENESIS, 0, 0, 0, 0
    with path.open("rb") as f:
        start = max(0, size - TAIL_BYTES)
        f.seek(start)
        chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        if end == 0 and start > 0:
            raise _damage(path, f, start, 0, "a last line longer than 1 MiB")
        body, dropped = chunk[:end], len(chunk) - end
        lines = body.split(b"\n")[:-1]
        first = 0 if start == 0 else 1  # a chunk that starts mid-file starts mid-line
        if not dropped and len(lines) > first and not _is_json(lines[-1]):
            dropped = len(lines[-1]) + 1
            lines.pop()
        prev: str | None = GENESIS if start == 0 else None
        checkpoint: tuple[int, dict[str, Any]] | None = None
        for index in range(first, len(lines)):
            reason = ""
            try:
                record = json.loads(lines[index])
            except (ValueError, RecursionError):
                record, reason = None, "not valid JSON"
            if not reason and not isinstance(record, dict):
                reason = "not a JSON object"
            elif not reason:
                reason = line_problem(lines[index], record)
            if not reason and prev is not None and record.get("prev") != prev:
                reason = "previous-hash link does not match"
            if reason:
                raise _damage(path, f, start, index, reason)
            assert isinstance(record, dict)
            prev = record["hash"]
            if record.get("type") == RECORD_TYPE:
                checkpoint = (index, record)
        if dropped:
            os.truncate(path, size - dropped)
        if prev is None:  # only a (dropped) partial line after the chunk start
            raise _damage(path, f, start, 0, "no complete record in the last 1 MiB")
        if checkpoint is None:
            records = _count_lines(f, size - dropped) if count else 0
            return prev, records, 0, 0, dropped
    index, record = checkpoint
    if record.get("replica") != replica:
        raise AuditError(
            f"audit log {path} belongs to replica {record.get('replica')!r}, not {replica!r}: "
            "each replica needs its own file (set audit.file or audit.replica_id)"
        )
    line, covered = record.get("line"), record.get("seq")
    if not isinstance(line, int) or not isinstance(covered, int):
        raise AuditError(f"audit log {path}: checkpoint record without line or seq")
    return prev, line + (len(lines) - 1 - index), line, covered, dropped


def _count_lines(f: IO[bytes], end: int) -> int:
    """Newlines in the file's first ``end`` bytes, read in 1 MiB blocks."""
    f.seek(0)
    count = 0
    while end > 0:
        block = f.read(min(end, 1 << 20))
        if not block:
            break
        count += block.count(b"\n")
        end -= len(block)
    return count


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _damage(path: Path, f: IO[bytes], start: int, index: int, reason: str) -> AuditError:
    """The start-up refusal: names the file, the line and what to do."""
    number = _count_lines(f, start) + index + 1  # only on this error path: it reads the file
    return AuditError(
        f"audit log {path} is damaged at line {number} ({reason}), before its last line: "
        "refusing to start. Move the file aside and start a new one (keep the old file "
        "for investigation; `temporal-shield audit verify` reports every finding)"
    )
