"""The server secret: one file of random bytes shared by every replica.

From it come independent keys, one per purpose (HKDF-SHA256 with the purpose
as ``info``), so that a value made for one purpose is never accepted for
another: session cookies and sign-in state are *sealed* (AES-256-GCM, the
purpose and an expiry authenticated), grant approvals are *vouched for*
(HMAC-SHA256).

Written here rather than taken from a session library because what must be
true is small and exact (purpose binding, an authenticated expiry, constant-
time comparison, no key in any message), and ``cryptography`` provides every
primitive; the formats are versioned by a one-byte prefix.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import stat
import struct
import time
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from temporal_shield.codec import ConfigError, ShieldError

MIN_SECRET_BYTES = 32
_VERSION = b"\x01"
_NONCE = 12
_MAX_SEALED_CHARS = 8192
"""Longest sealed text opened at all (a cookie is at most 4 KiB)."""


class SealError(ShieldError):
    """A sealed value is malformed, forged, made for another purpose, or expired.

    The message never says which: all are the same to a caller.
    """


def create_secret_file(path: str | Path) -> Path:
    """Write 32 fresh random bytes (base64) to ``path``, mode 0600, never overwriting.

    Raises:
        ConfigError: the file exists or cannot be written.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{target} exists; not overwriting a server secret") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {target}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(os.urandom(MIN_SECRET_BYTES)) + b"\n")
    return target


class ServerSecret:
    """Per-purpose keys derived from the server secret file."""

    def __init__(self, material: bytes) -> None:
        """Use ``material`` (at least 32 bytes) as the secret.

        Raises:
            ConfigError: too short.
        """
        if len(material) < MIN_SECRET_BYTES:
            raise ConfigError(f"the server secret must hold at least {MIN_SECRET_BYTES} bytes")
        self._material = material
        self._keys: dict[str, bytes] = {}

    @classmethod
    def load(cls, path: str | Path) -> ServerSecret:
        """Read the secret file (base64 text, or raw bytes).

        Raises:
            ConfigError: unreadable, readable by group or others, or too short.
        """
        target = Path(path)
        try:
            mode = target.stat().st_mode
            raw = target.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read server secret {target}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"server secret {target} is readable by others; chmod 600 {target}")
        try:
            material = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            material = raw
        return cls(material)

    def key(self, purpose: str) -> bytes:
        """The 32-byte key for ``purpose`` (derived once, then reused)."""
        key = self._keys.get(purpose)
        if key is None:
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=b"temporal-shield server secret v1",
                info=purpose.encode(),
            ).derive(self._material)
            self._keys[purpose] = key
        return key

    def seal(self, purpose: str, data: bytes, *, ttl: float, now: float | None = None) -> str:
        """Encrypt and authenticate ``data`` for ``purpose`` until ``now + ttl``.

        Returns URL-safe base64 text (fit for a cookie or a ``state`` value).
        """
        expires = int((time.time() if now is None else now) + ttl)
        nonce = os.urandom(_NONCE)
        head = _VERSION + struct.pack(">Q", expires)
        sealed = AESGCM(self.key(purpose)).encrypt(nonce, data, head + purpose.encode())
        return base64.urlsafe_b64encode(head + nonce + sealed).rstrip(b"=").decode()

    def open(self, purpose: str, text: str, *, now: float | None = None) -> bytes:
        """The data sealed by :meth:`seal` for ``purpose``, if not expired.

        Raises:
            SealError: malformed, forged, another purpose's, or expired.
        """
        if len(text) > _MAX_SEALED_CHARS or not text.isascii():
            raise SealError("invalid sealed value")
        try:
            blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise SealError("invalid sealed value") from None
        # One spelling per value: the decoder skips stray characters and unused
        # low bits of the last one, so a value is accepted only as seal() wrote it.
        if base64.urlsafe_b64encode(blob).rstrip(b"=") != text.encode():
            raise SealError("invalid sealed value")
        if len(blob) < 1 + 8 + _NONCE + 16 or blob[:1] != _VERSION:
            raise SealError("invalid sealed value")
        head, nonce, sealed = blob[:9], blob[9 : 9 + _NONCE], blob[9 + _NONCE :]
        try:
            data = AESGCM(self.key(purpose)).decrypt(nonce, sealed, head + purpose.encode())
        except InvalidTag:
            raise SealError("invalid sealed value") from None
        (expires,) = struct.unpack(">Q", head[1:])
        if expires <= (time.time() if now is None else now):
            raise SealError("invalid sealed value")
        return data

    def vouch(self, purpose: str, data: bytes) -> str:
        """An HMAC-SHA256 tag (hex) saying this server vouched for ``data``."""
        return hmac.new(self.key(purpose), data, sha256).hexdigest()

    def vouched(self, purpose: str, data: bytes, tag: str) -> bool:
        """Whether ``tag`` is this server's :meth:`vouch` for ``data`` (constant time)."""
        if not isinstance(tag, str) or not tag.isascii():
            return False
        return hmac.compare_digest(self.vouch(purpose, data), tag)
