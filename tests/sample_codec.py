"""Test helpers for migrating off Temporal's sample encryption codec.

The sample's codec itself (samples-python ``encryption/codec.py``, byte for byte)
is the benchmarks' :class:`~bench.bench_codec.StaticKeyCodec`; here it gets the
sample's own default key and any key id.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

from bench.bench_codec import StaticKeyCodec
from temporal_shield.codec import SAMPLE_KEYS_FORMAT

SAMPLE_KEY = b"test-key-test-key-test-key-test!"
"""The sample's own default key and id."""
SAMPLE_KEY_ID = "test-key-id"


def sample_codec(key_id: str = SAMPLE_KEY_ID, key: bytes = SAMPLE_KEY) -> StaticKeyCodec:
    """The sample's codec writing under ``key_id`` with ``key``."""
    codec = StaticKeyCodec(key)
    codec.key_id = key_id
    return codec


def write_sample_keys(path: Path, keys: Mapping[str, bytes], mode: int = 0o600) -> Path:
    """Write a sample keys file (``keys.sample_keys_file``) with ``mode``."""
    doc = {
        "format": SAMPLE_KEYS_FORMAT,
        "keys": {key_id: base64.b64encode(key).decode() for key_id, key in keys.items()},
    }
    path.write_text(json.dumps(doc))
    path.chmod(mode)
    return path
