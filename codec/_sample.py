"""A decrypt-only reader for Temporal's sample encryption codec (for migrating off it).

Temporal's samples (samples-python ``encryption/codec.py``, and the Go and
TypeScript samples it is compatible with) write payloads with metadata
``encoding: binary/encrypted`` and ``encryption-key-id: <id>``, and data
``nonce (12 bytes) || AES-GCM(key, nonce, serialized inner Payload, no
associated data)`` (ciphertext followed by the 16-byte tag) under one static
key per id. Nothing binds such a payload to a namespace or a workflow.

Workers that switch to temporal-shield keep reading these payloads with
:class:`SampleKeys` while writing only temporal-shield envelopes; nothing here
encrypts. The keys come from a JSON file (format ``temporal-shield-sample-keys/v1``)::

    {"format": "temporal-shield-sample-keys/v1",
     "keys": {"test-key-id": "<base64 of the 32-byte key>"}}

which, like the keyring, is refused when group or others can access it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import ConfigError, DecryptionError
from ._local import read_private

SAMPLE_KEYS_FORMAT = "temporal-shield-sample-keys/v1"
"""``format`` of a sample keys file."""
SAMPLE_NONCE_SIZE = 12
SAMPLE_TAG_SIZE = 16
_KEY_SIZE = 32


class SampleKeys:
    """The static keys of Temporal's sample codec, by key id; decrypts, never encrypts.

    Contract: :meth:`open` returns the serialized inner payload or raises the
    opaque :class:`DecryptionError` (unknown key id, truncated data, failed
    authentication alike). Key material is never printed.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        """Create a reader.

        Args:
            keys: Key id (as written in ``encryption-key-id``) → 32-byte AES key.

        Raises:
            ConfigError: no keys, an empty id, or a key that is not 32 bytes.
        """
        if not keys:
            raise ConfigError("sample keys: at least one key is needed")
        for key_id, key in keys.items():
            if not key_id or len(key) != _KEY_SIZE:
                raise ConfigError(
                    f"sample keys: key {key_id!r} must have a non-empty id and {_KEY_SIZE} bytes"
                )
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.items()}

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._aead

    def __repr__(self) -> str:
        return f"SampleKeys(ids={sorted(self._aead)!r})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The key ids this reader opens, sorted."""
        return tuple(sorted(self._aead))

    def open(self, key_id: str, data: bytes) -> bytes:
        """Decrypt one sample-codec payload's data: the serialized inner payload.

        Raises:
            DecryptionError: unknown key id, data shorter than nonce and tag, or
                the ciphertext does not authenticate under the key.
        """
        aead = self._aead.get(key_id)
        if aead is None or len(data) < SAMPLE_NONCE_SIZE + SAMPLE_TAG_SIZE:
            raise DecryptionError()
        try:
            return aead.decrypt(data[:SAMPLE_NONCE_SIZE], data[SAMPLE_NONCE_SIZE:], None)
        except InvalidTag:
            raise DecryptionError() from None

    @classmethod
    def load(cls, path: Path) -> SampleKeys:
        """Read a sample keys file (see the module docstring for the format).

        Raises:
            ConfigError: the file is missing, accessible by group or others, or
                malformed (the message never contains key material).
        """
        text = read_private(path, "sample keys file")
        try:
            doc = json.loads(text)
            if doc["format"] != SAMPLE_KEYS_FORMAT:
                raise ValueError("unknown format")
            if not isinstance(doc["keys"], dict):
                raise TypeError("keys must be an object")
            keys = {
                str(key_id): base64.b64decode(material, validate=True)
                for key_id, material in doc["keys"].items()
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"sample keys file {path} is malformed: {type(exc).__name__}"
            ) from None
        return cls(keys)
