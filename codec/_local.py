"""The embedded default key provider: a local keyring file of named 256-bit KEKs.

A keyring is a JSON file (format ``temporal-shield-keyring/v1``)::

    {"format": "temporal-shield-keyring/v1",
     "primary": "k-20261123-1a2b3c",
     "keys": [{"id": "k-20261123-1a2b3c", "created": "2026-11-23T03:00:00Z",
               "state": "active", "material": "<base64 of 32 bytes>"}]}

It is written atomically with mode 0600 and refused when group or others can read
it. Data keys are wrapped with AES key wrap (RFC 3394) under a wrapping key derived
from the KEK and the namespace (HKDF-SHA256), so a wrapped key is bound to its
namespace and the wrap costs only 40 bytes per payload.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from ._errors import ConfigError, DecryptionError
from ._provider import GeneratedDataKey, KeyProvider

KEYRING_FORMAT = "temporal-shield-keyring/v1"
KEY_ID_PREFIX = "local:"
"""Prefix of local KEK ids in payload metadata; routes decryption to this provider."""
_WRAP_INFO = b"temporal-shield/v1/local-wrap\x00"


@dataclass(frozen=True)
class KeyringEntry:
    """One KEK of a keyring."""

    id: str
    """Name of the key, unique in the keyring."""
    created: str
    """Creation time, ISO 8601 UTC."""
    state: str
    """``active`` (may decrypt; the primary also encrypts) or ``retired``."""
    material: bytes
    """The 32-byte key. Never printed."""

    def __repr__(self) -> str:
        return f"KeyringEntry(id={self.id!r}, created={self.created!r}, state={self.state!r})"


@dataclass(frozen=True)
class Keyring:
    """The parsed content of a keyring file."""

    primary: str
    """Id of the KEK that wraps new data keys."""
    keys: tuple[KeyringEntry, ...]
    """All KEKs, oldest first."""

    def get(self, key_id: str) -> KeyringEntry | None:
        """The entry named ``key_id``, if present."""
        return next((k for k in self.keys if k.id == key_id), None)

    # -- file I/O -----------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read and validate a keyring file.

        Raises:
            ConfigError: the file is missing, readable by group/others, or malformed.
        """
        text = read_private(path, "keyring", missing="; create it with `temporal-shield keys init`")
        try:
            doc = json.loads(text)
            return cls._from_doc(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"keyring {path} is malformed: {type(exc).__name__}") from None

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> Keyring:
        if doc["format"] != KEYRING_FORMAT:
            raise ValueError("unknown keyring format")
        keys = tuple(
            KeyringEntry(
                id=str(k["id"]),
                created=str(k["created"]),
                state=str(k["state"]),
                material=base64.b64decode(k["material"], validate=True),
            )
            for k in doc["keys"]
        )
        ring = cls(primary=str(doc["primary"]), keys=keys)
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate key id")
        if any(len(k.material) != 32 or k.state not in ("active", "retired") for k in keys):
            raise ValueError("bad key entry")
        primary = ring.get(ring.primary)
        if primary is None or primary.state != "active":
            raise ValueError("primary key missing or retired")
        return ring

    def save(self, path: Path) -> None:
        """Write the keyring atomically with mode 0600."""
        doc = {
            "format": KEYRING_FORMAT,
            "primary": self.primary,
            "keys": [
                {
                    "id": k.id,
                    "created": k.created,
                    "state": k.state,
                    "material": base64.b64encode(k.material).decode(),
                }
                for k in self.keys
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    def new(cls, *, random: Callable[[int], bytes] = secrets.token_bytes) -> Keyring:
        """A keyring holding one fresh primary KEK."""
        entry = _new_entry(random)
        return cls(primary=entry.id, keys=(entry,))

    def rotated(self, *, random: Callable[[int], bytes] = secrets.token_bytes) -> Keyring:
        """A copy with a new primary KEK; older keys stay active for decryption."""
        entry = _new_entry(random)
        return Keyring(primary=entry.id, keys=(*self.keys, entry))

    def retired(self, key_id: str) -> Keyring:
        """A copy in which ``key_id`` may no longer decrypt.

        Raises:
            ConfigError: the key is unknown or is the primary.
        """
        if self.get(key_id) is None:
            raise ConfigError(f"no key {key_id!r} in keyring")
        if key_id == self.primary:
            raise ConfigError("the primary key cannot be retired; rotate first")
        keys = tuple(
            KeyringEntry(id=k.id, created=k.created, state="retired", material=k.material)
            if k.id == key_id
            else k
            for k in self.keys
        )
        return Keyring(primary=self.primary, keys=keys)


def read_private(path: Path, what: str, *, missing: str = "") -> str:
    """The text of a key file that only its owner may access (mode 0600 or stricter).

    Raises:
        ConfigError: the file does not exist (``missing`` is appended to the
            message) or group or others can access it.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist{missing}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
        )
    return path.read_text()


def _new_entry(random: Callable[[int], bytes]) -> KeyringEntry:
    now = datetime.now(UTC)
    return KeyringEntry(
        id=f"k-{random(4).hex()}",
        created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        state="active",
        material=random(32),
    )


def _wrapping_key(kek: bytes, namespace: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_WRAP_INFO + namespace.encode()
    ).derive(kek)


class LocalKeyProvider(KeyProvider):
    """:class:`KeyProvider` over a :class:`Keyring` file (``local://PATH``).

    The keyring is read once at construction (fail fast); restart or build a new
    provider after ``keys rotate``.
    """

    def __init__(
        self,
        path: Path,
        *,
        allowed_key_ids: frozenset[str] | None = None,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        """Load the keyring.

        Args:
            path: Keyring file.
            allowed_key_ids: If given, only these key names (without the
                ``local:`` prefix) may decrypt, in addition to being active.
            random: Source of data-key bytes (injectable for test vectors).

        Raises:
            ConfigError: the keyring cannot be loaded.
        """
        self._ring = Keyring.load(path)
        self._random = random
        self._allowed = allowed_key_ids

    @property
    def primary_key_id(self) -> str:
        """See base class."""
        return KEY_ID_PREFIX + self._ring.primary

    def can_decrypt(self, key_id: str) -> bool:
        """See base class."""
        entry = self._entry(key_id)
        return entry is not None and entry.state == "active"

    def _entry(self, key_id: str) -> KeyringEntry | None:
        if not key_id.startswith(KEY_ID_PREFIX):
            return None
        name = key_id[len(KEY_ID_PREFIX) :]
        if self._allowed is not None and name not in self._allowed:
            return None
        return self._ring.get(name)

    async def generate_data_key(self, namespace: str) -> GeneratedDataKey:
        """See base class."""
        primary = self._ring.get(self._ring.primary)
        assert primary is not None  # validated by Keyring.load
        dek = self._random(32)
        wrapped = aes_key_wrap(_wrapping_key(primary.material, namespace), dek)
        return GeneratedDataKey(key_id=self.primary_key_id, wrapped=wrapped, plaintext=dek)

    async def decrypt_data_key(self, key_id: str, wrapped: bytes, namespace: str) -> bytes:
        """See base class."""
        entry = self._entry(key_id)
        if entry is None or entry.state != "active":
            raise DecryptionError()  # unknown or retired: as opaque as any other failure
        try:
            return aes_key_unwrap(_wrapping_key(entry.material, namespace), wrapped)
        except (InvalidUnwrap, ValueError) as exc:
            raise DecryptionError() from exc
