"""Tamper-evident audit log: one JSON record per decision, hash-chained.

Each record carries ``prev`` (the hash of the record before it) and ``hash``
(SHA-256 of the record's canonical JSON without ``hash``). Editing, deleting or
reordering any line breaks the chain at that line, which
``temporal-shield audit verify FILE`` reports. Records never contain payloads,
keys or tokens: the server builds them from counts, ids and labels only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from temporal_shield.codec import ShieldError

from ._config import AuditConfig

GENESIS = "0" * 64


class AuditError(ShieldError):
    """An audit record could not be written: the request must fail closed (503)."""


def _canonical(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(record).encode()).hexdigest()


class AuditLog:
    """Writes chained records to a JSON Lines file and/or standard output."""

    def __init__(self, config: AuditConfig, *, stdout: IO[str] | None = None) -> None:
        """Open the sinks; an existing file's chain is continued.

        Raises:
            AuditError: the file cannot be opened or its last record is unreadable.
        """
        self._config = config
        self._stdout = (stdout or sys.stdout) if config.stdout else None
        self._file: IO[str] | None = None
        self._prev = GENESIS
        if config.file:
            path = Path(config.file)
            try:
                self._prev = _last_hash(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
            except (OSError, ValueError) as exc:
                raise AuditError(f"cannot open audit log {path}: {exc}") from None

    def record(self, event: dict[str, Any]) -> dict[str, Any]:
        """Chain and write one record; returns it with ``prev`` and ``hash``.

        Raises:
            AuditError: any sink failed. The chain does not advance.
        """
        record = {**event, "prev": self._prev}
        canonical = _canonical(record)
        record["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
        # The written line is the canonical body with the hash appended: one
        # serialisation per record (verify() re-derives the body from the JSON).
        line = f'{canonical[:-1]},"hash":"{record["hash"]}"}}'

        try:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
                if self._config.fsync:
                    os.fsync(self._file.fileno())
            if self._stdout is not None:
                self._stdout.write(line + "\n")
                self._stdout.flush()
        except (OSError, ValueError) as exc:
            raise AuditError(f"audit write failed: {type(exc).__name__}") from None
        self._prev = record["hash"]
        return record

    def close(self) -> None:
        """Close the file sink."""
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
