"""Signed checkpoints, tamper detection, crash recovery and health of the audit log."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from temporal_shield._main import main
from temporal_shield.codec import ConfigError
from temporal_shield.server import AuditConfig, AuditError, AuditLog, verify
from temporal_shield.server._audit import GENESIS, _digest, canonical_line
from temporal_shield.server._checkpoint import Checkpoint
from temporal_shield.server._signer import (
    CheckpointSigner,
    Ed25519Signer,
    generate_ed25519,
    key_id,
)

from .conftest import ClientFactory
from .idp import Idp


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 pair in its own folder (never the log's)."""
    return generate_ed25519(tmp_path / "keys")


def _config(tmp_path: Path, key: Path, **kw: Any) -> AuditConfig:
    defaults: dict[str, Any] = {
        "file": str(tmp_path / "log" / "audit.jsonl"),
        "signing_key": f"ed25519://{key}",
        "checkpoint_every": 5,
        "checkpoint_stdout": True,
        "replica_id": "pod-0",
    }
    return AuditConfig(**{**defaults, **kw})


def _write(config: AuditConfig, count: int, sink: io.StringIO, start: int = 0) -> Path:
    log = AuditLog(config, stdout=sink)
    for i in range(start, start + count):
        log.record({"n": i})
    log.close()
    return Path(config.file)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rechain(
    path: Path, records: list[dict[str, Any]], resign: CheckpointSigner | None = None
) -> None:
    """The old attack: rewrite the records, then recompute the whole SHA-256 chain.

    With ``resign``, every checkpoint is also re-signed (over the new heads) by
    that key, as an insider with a key of their own would.
    """
    prev = GENESIS
    for number, record in enumerate(records, start=1):
        record.pop("hash", None)
        record["prev"] = prev
        if record.get("type") == "checkpoint":
            record["line"] = number  # even the checkpoint positions are made consistent
            if resign is not None:
                record["head"] = records[record["seq"] - 1]["hash"]
                record["key"] = key_id(resign.public_key)
                message = Checkpoint.parse(record).message()
                record["sig"] = base64.b64encode(resign.sign(message)).decode()
        record["hash"] = prev = _digest(record)
    # Written exactly as the log writes lines: a careful insider leaves no trace
    # in the form of the lines, only in what they say.
    path.write_bytes(b"".join(canonical_line(r) for r in records))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def signed_log(tmp_path: Path, keys: tuple[Path, Path]) -> tuple[Path, Path, Path]:
    """12 records, checkpoints after 5 and 11 records and at close; external copies."""
    sink = io.StringIO()
    path = _write(_config(tmp_path, keys[0]), 12, sink)
    external = tmp_path / "checkpoints.jsonl"
    external.write_text(sink.getvalue())
    return path, keys[1], external


def test_checkpoints_every_n_records_and_at_close(
    signed_log: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, external = signed_log
    records = _records(path)
    checkpoints = [r for r in records if r.get("type") == "checkpoint"]
    assert [c["seq"] for c in checkpoints] == [5, 11, 14]
    assert all(c["alg"] == "ed25519" and c["replica"] == "pod-0" for c in checkpoints)
    assert [c["line"] for c in checkpoints] == [6, 12, 15]
    lines = [json.loads(x) for x in external.read_text().splitlines()]
    assert [x["type"] for x in lines] == ["audit_checkpoint"] * 3
    code, out, _ = _cli(
        capsys, str(path), "--public-key", str(public), "--checkpoints", str(external)
    )
    assert code == 0
    assert "chain intact, 15 records" in out
    assert "3 external checkpoints match" in out
    assert "0 records after the last checkpoint" in out


def test_recomputed_chain_after_an_edit_is_detected(
    signed_log: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, _ = signed_log
    records = _records(path)
    records[2]["n"] = 999
    _rechain(path, records)
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))
    assert code == 1
    assert "line 6" in out
    assert "does not match the head" in out


@pytest.mark.parametrize(
    "rewrite",
    [
        # What grep and readers see changes; the parsed record (and hash) do not.
        lambda line: line.replace(b'"type":"checkpoint"', b'"type":"\\u0063heckpoint"'),
        lambda line: line.replace(b'{"', b'{"n":-1,"decision":"deny","', 1),
        lambda line: line.replace(b",", b", ", 1),
    ],
    ids=["escaped-character", "duplicate-keys-in-front", "extra-whitespace"],
)
def test_a_line_must_be_exactly_the_canonical_form_its_hash_covers(
    signed_log: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    keys: tuple[Path, Path],
    rewrite: Callable[[bytes], bytes],
) -> None:
    path, public, _ = signed_log
    lines = path.read_bytes().splitlines(keepends=True)
    target = 5  # the first checkpoint record (line 6)
    assert json.loads(lines[target])["type"] == "checkpoint"
    tampered = rewrite(lines[target])
    assert tampered != lines[target]
    assert json.loads(tampered)["hash"] == json.loads(lines[target])["hash"]
    path.write_bytes(b"".join([*lines[:target], tampered, *lines[target + 1 :]]))
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))
    assert code == 1
    assert "line 6" in out
    # At start the last record is checked the same way.
    last = [*lines[:-1], rewrite(lines[-1])]
    path.write_bytes(b"".join(last))
    with pytest.raises(AuditError, match="refusing to start"):
        AuditLog(_config(tmp_path, keys[0]), stdout=io.StringIO())


@pytest.mark.parametrize("attack", ["delete", "reorder"])
def test_deleted_or_reordered_record_is_detected(
    signed_log: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], attack: str
) -> None:
    path, public, _ = signed_log
    records = _records(path)
    if attack == "delete":
        del records[1]
    else:
        records[1], records[2] = records[2], records[1]
    _rechain(path, records)
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))
    assert code == 1
    assert "chain broken" in out


def test_truncation_before_the_last_checkpoint_is_detected_by_external_checkpoints(
    signed_log: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, external = signed_log
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:10]))  # a valid, shorter chain: checkpoint 11 is gone
    # The file alone cannot show it (the documented limit) ...
    assert _cli(capsys, str(path), "--public-key", str(public))[0] == 0
    # ... the external checkpoints can.
    code, out, _ = _cli(
        capsys, str(path), "--public-key", str(public), "--checkpoints", str(external)
    )
    assert code == 1
    assert "records were cut off" in out


def test_stripping_every_checkpoint_is_detected_by_external_checkpoints(
    signed_log: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, external = signed_log
    records = [r for r in _records(path) if r.get("type") != "checkpoint"]
    records[3]["n"] = -1
    _rechain(path, records)  # now it looks like an old log without checkpoints
    code, out, _ = _cli(
        capsys, str(path), "--public-key", str(public), "--checkpoints", str(external)
    )
    assert code == 1
    assert "differs from checkpoint" in out or "cut off" in out


def test_replaced_checkpoint_signature_is_detected(
    signed_log: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, _ = signed_log
    records = _records(path)
    checkpoints = [r for r in records if r.get("type") == "checkpoint"]
    checkpoints[0]["sig"] = checkpoints[1]["sig"]
    _rechain(path, records)
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))
    assert code == 1
    assert "line 6" in out
    assert "signature is not valid" in out


def test_checkpoint_forged_with_another_key_is_detected(
    signed_log: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, _ = signed_log
    # The insider edits a record, recomputes the chain and re-signs every
    # checkpoint with a key of their own.
    other = Ed25519Signer(generate_ed25519(tmp_path / "mine")[0])
    records = _records(path)
    records[0]["n"] = 42
    _rechain(path, records, resign=other)
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))
    assert code == 1
    assert "unknown key" in out


def test_torn_tail_is_cut_off_recorded_and_the_log_goes_on(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, keys[0])
    sink = io.StringIO()
    path = _write(config, 3, sink)
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"n":3,"prev":"ab')  # the crash: half a record, no newline
    _write(config, 2, sink, start=3)
    records = _records(path)
    assert path.read_bytes().startswith(whole)
    recovery = [r for r in records if r.get("type") == "recovery"]
    assert len(recovery) == 1
    assert recovery[0]["dropped_bytes"] == len(b'{"n":3,"prev":"ab')
    external = tmp_path / "c.jsonl"
    external.write_text(sink.getvalue())
    code, out, _ = _cli(
        capsys, str(path), "--public-key", str(keys[1]), "--checkpoints", str(external)
    )
    assert code == 0, out
    # Continuous across the restart: the checkpoint after it counts every line.
    assert records[-1]["type"] == "checkpoint"
    assert records[-1]["line"] == len(records)


def test_invalid_json_last_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(AuditConfig(file=str(path)), 2, io.StringIO())
    with path.open("ab") as f:
        f.write(b"\x00\x00\x00\n")
    log = AuditLog(AuditConfig(file=str(path)))
    log.close()
    assert _records(path)[-1]["dropped_bytes"] == 4
    assert verify(path).ok


def test_damage_before_the_last_line_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(AuditConfig(file=str(path)), 4, io.StringIO())
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"n":1', '"n":7')
    path.write_text("".join(lines))
    with pytest.raises(AuditError) as caught:
        AuditLog(AuditConfig(file=str(path)))
    message = str(caught.value)
    assert str(path) in message
    assert "line 2" in message
    assert "Move the file aside" in message
    assert path.read_text() == "".join(lines)  # nothing was cut


def test_last_record_hash_is_checked_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(AuditConfig(file=str(path)), 3, io.StringIO())
    path.write_text(path.read_text().replace('"n":2', '"n":9'))
    with pytest.raises(AuditError, match="line 3"):
        AuditLog(AuditConfig(file=str(path)))


def test_a_file_of_another_replica_refuses_to_start(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    _write(_config(tmp_path, keys[0]), 2, io.StringIO())
    with pytest.raises(AuditError, match="belongs to replica 'pod-0'"):
        AuditLog(_config(tmp_path, keys[0], replica_id="pod-1"))


def test_signing_key_must_be_kept_apart_and_private(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    beside = tmp_path / "log" / "audit-signing.key"
    beside.parent.mkdir()
    beside.write_bytes(keys[0].read_bytes())
    beside.chmod(0o600)
    with pytest.raises(ConfigError, match="audit log's directory"):
        AuditLog(_config(tmp_path, beside))
    below = tmp_path / "log" / "keys" / "audit-signing.key"
    below.parent.mkdir()
    below.write_bytes(keys[0].read_bytes())
    below.chmod(0o600)
    with pytest.raises(ConfigError, match="audit log's directory"):
        AuditLog(_config(tmp_path, below))
    keys[0].chmod(0o640)
    with pytest.raises(ConfigError, match="group or others"):
        AuditLog(_config(tmp_path, keys[0]))
    with pytest.raises(ConfigError, match="replica_id"):
        AuditConfig(replica_id="pod/0")


def test_keygen_cli_writes_a_private_key_only_the_owner_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "keygen", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    assert main(["audit", "keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_several_replicas_verify_together(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = io.StringIO()
    files = [
        str(
            _write(
                _config(
                    tmp_path,
                    keys[0],
                    file=str(tmp_path / f"log{i}" / "a.jsonl"),
                    replica_id=f"pod-{i}",
                ),
                7,
                sink,
            )
        )
        for i in (0, 1)
    ]
    external = tmp_path / "c.jsonl"
    external.write_text(sink.getvalue())
    code, out, _ = _cli(
        capsys, *files, "--public-key", str(keys[1]), "--checkpoints", str(external)
    )
    assert code == 0
    assert "replica pod-0" in out
    assert "replica pod-1" in out
    # A replica's whole file deleted: its external checkpoints still say it existed.
    code, out, _ = _cli(
        capsys, files[0], "--public-key", str(keys[1]), "--checkpoints", str(external)
    )
    assert code == 1
    assert "replica pod-1" in out
    assert "no file given" in out


def test_cli_exit_codes_and_malformed_lines(
    signed_log: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, public, _ = signed_log
    code, _, err = _cli(capsys, str(tmp_path / "missing.jsonl"))
    assert code == 2
    assert err.count("\n") == 1
    code, _, err = _cli(capsys, str(path))  # checkpoints but no key to check them
    assert code == 2
    assert "--public-key" in err
    code, _, err = _cli(capsys, str(path), "--public-key", str(path))
    assert code == 2
    assert "not a PEM" in err
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = b"\xff{not json\n"
    path.write_bytes(b"".join(lines))
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))
    assert code == 1
    assert "line 4 (not valid JSON)" in out


def test_old_logs_without_checkpoints_still_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(AuditConfig(file=str(tmp_path / "a.jsonl")), 3, io.StringIO())
    code, out, _ = _cli(capsys, str(path))
    assert code == 0
    assert "no checkpoints" in out
    assert "3 records" in out


async def _eventually(check: Callable[[], bool]) -> bool:
    for _ in range(60):
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


class _Flaky(CheckpointSigner):
    """A signer whose KMS is down while ``down`` is set."""

    def __init__(self, inner: CheckpointSigner) -> None:
        self.inner = inner
        self.public_key = inner.public_key
        self.down = True

    @property
    def name(self) -> str:
        return "flaky"

    def sign(self, message: bytes) -> bytes:
        if self.down:
            raise RuntimeError("kms down")
        return self.inner.sign(message)


async def test_timer_checkpoints_off_the_loop_and_a_failed_sign_is_retried(
    tmp_path: Path, keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    signer = _Flaky(Ed25519Signer(keys[0]))
    config = _config(tmp_path, keys[0], checkpoint_every=1000, checkpoint_interval=0.05)
    log = AuditLog(config, signer=signer, sinks=[])
    await log.start()
    await asyncio.gather(*(log.commit({"n": i}) for i in range(3)))
    assert await _eventually(lambda: log.checkpoint_failures > 0)
    assert log.failing
    assert "kms down" not in caplog.text  # type only: messages could carry data
    signer.down = False
    assert await _eventually(lambda: log.healthy)
    assert log.checkpoints >= 1
    await log.aclose()
    assert verify(Path(config.file), keys={key_id(signer.public_key): signer.public_key}).ok


async def test_readyz_is_503_while_the_audit_sink_fails(
    make_client: ClientFactory, idp: Idp
) -> None:
    class Sink(io.StringIO):
        broken = False

        def write(self, text: str) -> int:
            if self.broken:
                raise OSError(28, "No space left on device")
            return super().write(text)

    sink = Sink()
    client = await make_client(audit=AuditConfig(stdout=True), audit_stdout=sink)
    assert (await client.get("/readyz")).status == 200
    sink.broken = True
    token = idp.token(groups=["engineering"])
    headers = {"Authorization": f"Bearer {token}", "X-Namespace": "dev-team"}
    response = await client.post("/decode", json={"payloads": []}, headers=headers)
    assert response.status == 503
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["error"] == "not_ready"
    sink.broken = False  # the disk has room again: the probe record clears it
    for _ in range(40):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await client.get("/readyz")).status == 200
    assert '"type":"resume"' in sink.getvalue()


def test_no_secret_key_material_in_the_log(
    signed_log: tuple[Path, Path, Path], keys: tuple[Path, Path]
) -> None:
    path, _, external = signed_log
    private = keys[0].read_text().splitlines()[1]
    assert private not in path.read_text()
    assert private not in external.read_text()
    assert os.stat(keys[0]).st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "line",
    [
        b'{"n":"\\ud800","prev":"x","hash":"y"}\n',  # an escape no encoder writes back
        b'{"n":' + b"[" * 100_000 + b"]" * 100_000 + b',"prev":"x","hash":"y"}\n',
    ],
    ids=["lone-surrogate-escape", "deep-nesting"],
)
def test_hostile_lines_are_reported_by_line_without_a_traceback(
    signed_log: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    keys: tuple[Path, Path],
    line: bytes,
) -> None:
    path, public, _ = signed_log
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:3], line, *lines[3:]]))
    code, out, _ = _cli(capsys, str(path), "--public-key", str(public))  # asserts no traceback
    assert code == 1
    assert "line 4" in out
    # As the last line, at start: never a traceback. Valid JSON that the log
    # cannot have written refuses the start; what does not parse at all is
    # taken for a torn write and cut off (recorded).
    path.write_bytes(b"".join([*lines[:-1], line]))
    if b"ud800" in line:
        with pytest.raises(AuditError, match="refusing to start"):
            AuditLog(_config(tmp_path, keys[0]), stdout=io.StringIO())
    else:
        AuditLog(_config(tmp_path, keys[0]), stdout=io.StringIO()).close()
        assert any(r.get("type") == "recovery" for r in _records(path))


def test_start_up_reads_only_the_tail_without_a_signing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from temporal_shield.server import _audit

    config = AuditConfig(file=str(tmp_path / "log" / "audit.jsonl"))
    _write(config, 20, io.StringIO())
    counted: list[int] = []
    real = _audit._count_lines

    def counting(f: Any, end: int) -> int:
        counted.append(end)
        return real(f, end)

    monkeypatch.setattr(_audit, "_count_lines", counting)
    AuditLog(config, stdout=io.StringIO()).close()
    assert counted == []  # no checkpoints to number: the whole file is not read
    key, _ = generate_ed25519(tmp_path / "keys")
    AuditLog(_config(tmp_path, key), stdout=io.StringIO()).close()
    assert len(counted) == 1  # checkpoints need the count of a file without one
