"""The published test vectors: stable bytes, our reader, and an independent reader."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

from temporal_shield.codec import (
    DataKeyManager,
    DecryptionError,
    Envelope,
    Keyring,
    KeyringEntry,
    LocalKeyProvider,
)

from ..vectors.make_vectors import VECTOR_FILE, build_vectors

VECTORS: dict[str, Any] = json.loads(VECTOR_FILE.read_text())


def test_vectors_are_reproducible() -> None:
    assert build_vectors() == VECTORS


def _envelope() -> Envelope:
    tmp = Path(tempfile.mkdtemp())
    Keyring(
        primary=VECTORS["kek_name"],
        keys=(
            KeyringEntry(
                id=VECTORS["kek_name"],
                created="2026-01-01T00:00:00Z",
                state="active",
                material=bytes.fromhex(VECTORS["kek_hex"]),
            ),
        ),
    ).save(tmp / "k.json")
    return Envelope(DataKeyManager([LocalKeyProvider(tmp / "k.json")]))


@pytest.mark.parametrize("case", VECTORS["positive"], ids=lambda c: c["name"])
async def test_positive_vectors_open(case: dict[str, Any]) -> None:
    opened = await _envelope().open(
        bytes.fromhex(case["data_hex"]), key_id=case["key_id"], namespace=case["namespace"]
    )
    assert opened.plaintext.hex() == case["plaintext_hex"]
    assert opened.header.classification == case["classification"]
    assert opened.header.workflow_id == case["workflow_id"]
    assert opened.header.origin.hex() == case["origin_hex"]


@pytest.mark.parametrize("case", VECTORS["negative"], ids=lambda c: c["name"])
async def test_negative_vectors_fail(case: dict[str, Any]) -> None:
    with pytest.raises(DecryptionError):
        await _envelope().open(
            bytes.fromhex(case["data_hex"]), key_id=case["key_id"], namespace=case["namespace"]
        )


def _independent_open(data: bytes, key_id: str, kek: bytes) -> bytes:
    """A from-the-spec reader (docs/format.md) using only pyca primitives and zstd."""
    magic, version, alg, comp, orig_len = struct.unpack_from(">2sBBBI", data, 0)
    assert (magic, alg) == (b"TS", 1)
    assert version in (1, 2)
    pos = 9
    fields = []
    for width in (2, 2, 1, 2):
        size = data[pos] if width == 1 else struct.unpack_from(">H", data, pos)[0]
        fields.append(data[pos + width : pos + width + size])
        pos += width + size
    namespace, _workflow, _cls, wrapped = fields
    commitment = data[pos : pos + 32]
    pos += 32
    if version == 2:  # origin: u8 length (32) + SHA-256
        assert data[pos] == 32
        pos += 33
    nonce = data[pos : pos + 12]
    header_end = pos + 12
    wrap_key = HKDF(
        hashes.SHA256(), 32, None, b"temporal-shield/v1/local-wrap\x00" + namespace
    ).derive(kek)
    dek = aes_key_unwrap(wrap_key, wrapped)
    okm = HKDF(hashes.SHA256(), 64, None, b"temporal-shield/v1/aes-256-gcm+commitment").derive(dek)
    assert okm[32:] == commitment
    body = AESGCM(okm[:32]).decrypt(nonce, data[header_end:], data[:header_end] + key_id.encode())
    out = zstandard.ZstdDecompressor().decompress(body) if comp == 1 else body
    assert len(out) == orig_len
    return out


@pytest.mark.parametrize("case", VECTORS["positive"], ids=lambda c: c["name"])
def test_independent_reader_agrees(case: dict[str, Any]) -> None:
    kek = bytes.fromhex(VECTORS["kek_hex"])
    out = _independent_open(bytes.fromhex(case["data_hex"]), case["key_id"], kek)
    assert out.hex() == case["plaintext_hex"]
