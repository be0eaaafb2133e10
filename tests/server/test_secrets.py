"""The server secret: per-purpose keys, sealed values with an authenticated expiry, vouching."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from temporal_shield.codec import ConfigError
from temporal_shield.server._secrets import SealError, ServerSecret, create_secret_file


@pytest.fixture
def secret(tmp_path: Path) -> ServerSecret:
    return ServerSecret.load(create_secret_file(tmp_path / "s"))


def test_sealed_values_open_only_for_their_purpose_until_they_expire(secret: ServerSecret) -> None:
    sealed = secret.seal("session", b"claims", ttl=60, now=1000)
    assert secret.open("session", sealed, now=1059) == b"claims"
    with pytest.raises(SealError):
        secret.open("login", sealed, now=1000)  # made for another purpose
    with pytest.raises(SealError):
        secret.open("session", sealed, now=1060)  # expired
    # The expiry is authenticated: moving it forward breaks the seal.
    raw = bytearray(sealed.encode())
    for i in range(len(raw)):
        flipped = bytes(raw[:i]) + (b"A" if raw[i : i + 1] != b"A" else b"B") + bytes(raw[i + 1 :])
        with pytest.raises(SealError):
            secret.open("session", flipped.decode(), now=1000)
    # Other spellings of the same bytes (stray characters the decoder would
    # skip, padding) are refused too: a cookie is accepted only as it was issued.
    for respelled in (sealed[:5] + "." + sealed[5:], sealed + "=", sealed + "\n"):
        with pytest.raises(SealError):
            secret.open("session", respelled, now=1000)
    for junk in ("", "x", "é" * 10, "A" * 9000, "!!!!"):
        with pytest.raises(SealError):
            secret.open("session", junk, now=1000)


def test_another_secret_opens_nothing_and_vouches_differently(
    secret: ServerSecret, tmp_path: Path
) -> None:
    other = ServerSecret.load(create_secret_file(tmp_path / "other"))
    with pytest.raises(SealError):
        other.open("session", secret.seal("session", b"x", ttl=60))
    tag = secret.vouch("grant", b"grant-1|alice|prod")
    assert secret.vouched("grant", b"grant-1|alice|prod", tag)
    assert not secret.vouched("grant", b"grant-1|alice|prod2", tag)
    assert not secret.vouched("session", b"grant-1|alice|prod", tag)
    assert not other.vouched("grant", b"grant-1|alice|prod", tag)
    assert not secret.vouched("grant", b"grant-1|alice|prod", "é")


def test_the_secret_file_must_be_private_long_and_never_overwritten(tmp_path: Path) -> None:
    path = create_secret_file(tmp_path / "s")
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="not overwriting"):
        create_secret_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        ServerSecret.load(path)
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        ServerSecret.load(short)
    with pytest.raises(ConfigError, match="cannot read"):
        ServerSecret.load(tmp_path / "missing")
