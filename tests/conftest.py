"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import settings
from temporalio.api.common.v1 import Payload

from temporal_shield.codec import DataKeyManager, Envelope, LocalKeyProvider
from temporal_shield.converter import ClassificationConfig, KeysConfig, ShieldConfig, build_codec

from .helpers import make_keyring

# Tests never assert on time (performance lives in bench/): Hypothesis's default
# 200 ms deadline per example would fail a correct test on a loaded machine.
settings.register_profile("temporal-shield", deadline=None)
settings.load_profile("temporal-shield")


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


@pytest.fixture
async def encrypted(keyring_path: Path) -> Payload:
    """One payload as a writer seals it (label ``phi``): a real envelope."""
    codec = build_codec(
        ShieldConfig(
            keys=KeysConfig(uri=f"local://{keyring_path}"),
            classification=ClassificationConfig(default="phi"),
        )
    )
    plain = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps("secret").encode())
    [payload] = await codec.encode([plain])
    return payload
