"""Build the envelope-v1 test vectors deterministically.

``python -m tests.vectors.make_vectors`` rewrites ``envelope-v1.json``; the test
suite rebuilds them and requires byte equality, so any change to the format is
caught. The keys here are test keys, published on purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from temporal_shield.codec import (
    CompressionConfig,
    DataKeyManager,
    Envelope,
    Keyring,
    KeyringEntry,
    LocalKeyProvider,
)

HERE = Path(__file__).parent
VECTOR_FILE = HERE / "envelope-v1.json"
KEK = bytes(range(32))
DEK = bytes(range(0x40, 0x60))
NONCE = bytes(range(0xA0, 0xAC))
KEY_NAME = "k-test-vector"

CASES: list[dict[str, Any]] = [
    {"name": "small-uncompressed", "namespace": "default", "plaintext": b'"hello"'},
    {"name": "empty", "namespace": "default", "plaintext": b""},
    {
        "name": "zstd-compressed",
        "namespace": "clinic",
        "classification": "phi",
        "plaintext": b'{"ssn":"078-05-1120","notes":"' + b"ab" * 400 + b'"}',
    },
    {
        "name": "rewrapped-v2-origin",
        "namespace": "default",
        "origin": hashlib.sha256(b"the object this one re-encrypts").digest(),
        "plaintext": b'{"note":"re-encrypted by keys rewrap"}',
    },
    {
        "name": "workflow-bound",
        "namespace": "default",
        "workflow_id": "order-42",
        "plaintext": b'{"card":"4111111111111111"}',
    },
]


def _derived(namespace: str) -> dict[str, str]:
    wrap = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"temporal-shield/v1/local-wrap\x00" + namespace.encode(),
    ).derive(KEK)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=None,
        info=b"temporal-shield/v1/aes-256-gcm+commitment",
    ).derive(DEK)
    return {"wrapping_key": wrap.hex(), "aes_key": okm[:32].hex(), "commitment": okm[32:].hex()}


async def _seal_all(tmp: Path) -> list[dict[str, Any]]:
    ring_path = tmp / "keyring.json"
    Keyring(
        primary=KEY_NAME,
        keys=(
            KeyringEntry(id=KEY_NAME, created="2026-01-01T00:00:00Z", state="active", material=KEK),
        ),
    ).save(ring_path)
    out = []
    for case in CASES:
        provider = LocalKeyProvider(ring_path, random=lambda n: DEK[:n])
        env = Envelope(
            DataKeyManager([provider]),
            compression=CompressionConfig(threshold=512, level=3),  # as first published
            random=lambda n: NONCE[:n],
        )
        sealed = await env.seal(
            case["plaintext"],
            namespace=case["namespace"],
            workflow_id=case.get("workflow_id", ""),
            classification=case.get("classification", ""),
            origin=case.get("origin", b""),
        )
        out.append(
            {
                "name": case["name"],
                "namespace": case["namespace"],
                "workflow_id": case.get("workflow_id", ""),
                "classification": case.get("classification", ""),
                "origin_hex": case.get("origin", b"").hex(),
                "key_id": sealed.key_id,
                "plaintext_hex": case["plaintext"].hex(),
                "data_hex": sealed.data.hex(),
                "derived": _derived(case["namespace"]),
            }
        )
    return out


def _negatives(positive: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = positive[0]
    data = bytes.fromhex(base["data_hex"])
    ct_start = len(data) - 16 - len(bytes.fromhex(base["plaintext_hex"]))

    def flip(i: int) -> str:
        b = bytearray(data)
        b[i] ^= 0x01
        return bytes(b).hex()

    def neg(name: str, **kw: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": kw.get("namespace", base["namespace"]),
            "key_id": kw.get("key_id", base["key_id"]),
            "data_hex": kw.get("data_hex", base["data_hex"]),
        }

    return [
        neg("wrong-namespace", namespace="other"),
        neg("unknown-key-id", key_id="local:k-unknown"),
        neg("bad-magic", data_hex=flip(0)),
        neg("bad-version", data_hex=flip(2)),
        neg("original-length-changed", data_hex=flip(8)),
        neg("wrapped-dek-flipped", data_hex=flip(25)),
        neg("commitment-flipped", data_hex=flip(ct_start - 12 - 1)),
        neg("nonce-flipped", data_hex=flip(ct_start - 1)),
        neg("ciphertext-flipped", data_hex=flip(ct_start)),
        neg("tag-flipped", data_hex=flip(len(data) - 1)),
        neg("truncated", data_hex=data[:-1].hex()),
    ]


def build_vectors() -> dict[str, Any]:
    """The full vector document."""
    with tempfile.TemporaryDirectory() as tmp:
        positive = asyncio.run(_seal_all(Path(tmp)))
    return {
        "format": "temporal-shield envelope test vectors, versions 1 and 2 (see docs/format.md)",
        "kek_hex": KEK.hex(),
        "kek_name": KEY_NAME,
        "dek_hex": DEK.hex(),
        "nonce_hex": NONCE.hex(),
        "positive": positive,
        "negative": _negatives(positive),
    }


if __name__ == "__main__":
    VECTOR_FILE.write_text(json.dumps(build_vectors(), indent=2) + "\n")
    print(f"wrote {VECTOR_FILE}")
