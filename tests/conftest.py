"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from temporal_shield.codec import DataKeyManager, Envelope, LocalKeyProvider

from .helpers import make_keyring


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    make_keyring(path)
    return path


@pytest.fixture
def local_provider(keyring_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(keyring_path)


@pytest.fixture
def envelope(local_provider: LocalKeyProvider) -> Envelope:
    return Envelope(DataKeyManager([local_provider]))
