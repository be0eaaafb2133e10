"""Verification of audit logs: hash chains, signed checkpoints, external anchors.

What is detected, given the verifying public key(s) and the external
checkpoints (S3 objects or a pipeline's copy of the stdout lines):

* an edited, deleted, inserted or reordered record anywhere: the chain
  breaks, or — if the chain was recomputed — a signed head no longer matches
  the record it names;
* a truncated file: an external checkpoint names more records than the file has;
* a forged or altered checkpoint: its signature fails, or its key is not one
  of the keys given;
* a replaced external checkpoint (another S3 object version with other content).

What is not: records after the last checkpoint are protected only by the hash
chain (the output states how many), and a process that holds the signing key
can sign a *new* false head (but not change checkpoints already anchored).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporal_shield.codec import ConfigError

from ._audit import GENESIS, line_problem
from ._checkpoint import RECORD_TYPE, Checkpoint, CheckpointError, Found
from ._signer import PublicKey, check_signature

_RECENT = 1 << 20
"""Record hashes kept for in-file checkpoints: a head signed further back than
this many records before its checkpoint record is reported as broken."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify` for one file."""

    ok: bool
    records: int
    """Records checked (up to and excluding the first broken one)."""
    broken_line: int | None = None
    """1-based line number of the first broken link."""
    reason: str = ""
    replica: str = ""
    """Replica id named by the file's checkpoints ("" if it has none)."""
    checkpoints: int = 0
    """Checkpoint records in the file (signatures checked when keys were given)."""
    anchored: int = 0
    """External checkpoints that matched the file."""
    signed_records: int = 0
    """Records covered by the latest checkpoint (in the file or external)."""
    unprotected: int = 0
    """Records after that, other than checkpoint records: hash chain only."""


def _signature_problem(checkpoint: Checkpoint, keys: Mapping[str, PublicKey]) -> str:
    key = keys.get(checkpoint.key)
    if key is None:
        return f"checkpoint signed by an unknown key {checkpoint.key!r}"
    if not check_signature(key, checkpoint.message(), checkpoint.signature()):
        return "checkpoint signature is not valid"
    return ""


def verify(
    path: Path,
    *,
    keys: Mapping[str, PublicKey] | None = None,
    external: Sequence[Found] = (),
) -> VerifyResult:
    """Check an audit file: every link, every checkpoint, every external checkpoint.

    Args:
        path: The JSON Lines file.
        keys: Verifying keys by :func:`~._signer.key_id`; ``None`` skips the
            signature checks (the chain and checkpoint heads are still checked).
        external: This replica's external checkpoints (already signature-checked
            by the caller; see :func:`verify_files`).

    Raises:
        ConfigError: the file cannot be read.
    """
    wanted = {found.checkpoint.seq for found in external if found.checkpoint}
    at_seq: dict[int, str] = {}
    recent: collections.deque[str] = collections.deque(maxlen=_RECENT)
    prev, count = GENESIS, 0
    replica, checkpoints, last_signed = "", 0, 0
    checkpoint_lines: list[int] = []

    def broken(number: int, reason: str) -> VerifyResult:
        return VerifyResult(False, count, number, reason, replica=replica, checkpoints=checkpoints)

    try:
        f = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return broken(number, "incomplete last line (a torn write; cut off at start)")
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                return broken(number, "not valid JSON")
            if not isinstance(record, dict) or record.get("prev") != prev:
                return broken(number, "previous-hash link does not match")
            problem = line_problem(line, record)
            if problem:
                return broken(number, problem)
            if record.get("type") == RECORD_TYPE:
                problem = _in_file(record, number, replica, last_signed, count, recent, keys)
                if problem:
                    return broken(number, problem)
                replica = record["replica"]
                last_signed = record["seq"]
                checkpoints += 1
                checkpoint_lines.append(number)
            prev = record["hash"]
            count += 1
            recent.append(prev)
            if count in wanted:
                at_seq[count] = prev
    anchored = 0
    for found in sorted(external, key=lambda x: x.checkpoint.seq if x.checkpoint else 0):
        checkpoint = found.checkpoint
        assert checkpoint is not None
        if checkpoint.seq > count:
            return broken(
                count + 1,
                f"file ends after {count} records, but checkpoint {found.where} "
                f"covers {checkpoint.seq}: records were cut off",
            )
        if at_seq.get(checkpoint.seq) != checkpoint.head:
            return broken(
                checkpoint.seq,
                f"record {checkpoint.seq} differs from checkpoint {found.where}",
            )
        anchored += 1
        last_signed = max(last_signed, checkpoint.seq)
    after = count - last_signed - sum(1 for n in checkpoint_lines if n > last_signed)
    return VerifyResult(
        True,
        count,
        replica=replica,
        checkpoints=checkpoints,
        anchored=anchored,
        signed_records=last_signed,
        unprotected=after,
    )


def _in_file(
    record: dict[str, Any],
    number: int,
    replica: str,
    last_signed: int,
    count: int,
    recent: collections.deque[str],
    keys: Mapping[str, PublicKey] | None,
) -> str:
    """Why a checkpoint record on line ``number`` is wrong ("" if it is right)."""
    try:
        checkpoint = Checkpoint.parse(record)
    except CheckpointError as exc:
        return f"malformed checkpoint: {exc}"
    if record.get("line") != number:
        return (
            f"checkpoint says it is line {record.get('line')}: "
            "records before it were inserted, deleted or reordered"
        )
    if replica and checkpoint.replica != replica:
        return f"checkpoint of replica {checkpoint.replica!r} in the file of {replica!r}"
    if not last_signed < checkpoint.seq <= count:
        return f"checkpoint names record {checkpoint.seq}, out of order"
    back = count - checkpoint.seq
    if back >= len(recent) or recent[-1 - back] != checkpoint.head:
        return f"record {checkpoint.seq} does not match the head this checkpoint signed"
    if keys is not None:
        return _signature_problem(checkpoint, keys)
    return ""


@dataclass
class Report:
    """Outcome of :func:`verify_files`."""

    files: list[tuple[Path, VerifyResult]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    """Problems not tied to one file's line (external checkpoints, replicas)."""

    @property
    def ok(self) -> bool:
        """Whether everything checked out."""
        return not self.findings and all(result.ok for _, result in self.files)


def verify_files(
    paths: Sequence[Path],
    *,
    keys: Mapping[str, PublicKey] | None,
    external: Iterable[Found] = (),
) -> Report:
    """Verify several replicas' files against their signatures and external checkpoints.

    Files are matched to replicas by the replica id in their checkpoint
    records; a file without any is matched to the only replica left over, if
    exactly one file and one replica are. External checkpoints of a replica
    without a file are a finding (a deleted file looks like that).

    Raises:
        ConfigError: a file cannot be read.
    """
    report = Report()
    by_replica: dict[str, dict[int, Found]] = {}
    for found in external:
        checkpoint = found.checkpoint
        problem = found.problem
        if checkpoint is not None and not problem and keys is not None:
            problem = _signature_problem(checkpoint, keys)
        if checkpoint is None or problem:
            report.findings.append(f"{found.where}: {problem}")
            continue
        seen = by_replica.setdefault(checkpoint.replica, {})
        other = seen.get(checkpoint.seq)
        if other is not None and other.checkpoint != checkpoint:
            report.findings.append(
                f"{found.where}: another checkpoint for replica {checkpoint.replica} "
                f"record {checkpoint.seq} ({other.where}) says something else"
            )
        seen.setdefault(checkpoint.seq, found)
    # First pass without external checkpoints learns each file's replica.
    first = [(path, verify(path, keys=keys)) for path in paths]
    claimed: dict[str, Path] = {}
    for path, result in first:
        if result.replica:
            if result.replica in claimed:
                report.findings.append(
                    f"{path}: replica {result.replica} also writes {claimed[result.replica]}"
                )
            claimed[result.replica] = path
    orphans = [path for path, result in first if not result.replica]
    left = sorted(set(by_replica) - set(claimed))
    if len(orphans) == 1 and len(left) == 1:
        claimed[left.pop()] = orphans[0]
    for replica in left:
        if replica not in claimed:
            report.findings.append(
                f"replica {replica}: {len(by_replica[replica])} external checkpoints, "
                "but no file given for it"
            )
    owner = {path: replica for replica, path in claimed.items()}
    for path, result in first:
        replica = owner.get(path, "")
        if result.ok and replica in by_replica:
            result = verify(path, keys=keys, external=list(by_replica[replica].values()))
        report.files.append((path, result))
    return report
