"""The key-provider extension point: who holds the key-encryption keys (KEKs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GeneratedDataKey:
    """A fresh data key and its wrapped form."""

    key_id: str
    """Id of the KEK that wrapped it, exactly as it must be written to metadata."""
    wrapped: bytes
    """The data key wrapped (encrypted) by the KEK, bound to the namespace."""
    # repr=False: the plaintext key must never reach a log line through repr().
    plaintext: bytes = field(repr=False)
    """The 32-byte data key itself."""


class KeyProvider(ABC):
    """Holds KEKs, and wraps and unwraps 256-bit data keys with them.

    Contract:
        * :meth:`generate_data_key` returns a new random 32-byte data key wrapped
          by the current primary KEK, cryptographically bound to ``namespace``
          (a wrapped key for one namespace must not unwrap for another).
        * :meth:`decrypt_data_key` unwraps only for KEK ids allowed by
          :meth:`can_decrypt`; it is never asked for others.
        * Operational failures (network, throttling, permissions, a disabled key)
          raise :class:`~._errors.KeyProviderError`; a wrapped key that does not
          authenticate raises :class:`~._errors.DecryptionError`.
        * Methods may be called concurrently from one event loop; blocking I/O
          must be moved off the loop.
    """

    @property
    @abstractmethod
    def primary_key_id(self) -> str | None:
        """Id of the KEK that wraps new data keys, or ``None`` if decrypt-only."""

    @abstractmethod
    def can_decrypt(self, key_id: str) -> bool:
        """Whether ``key_id`` is owned by this provider *and* allowed for decryption."""

    @abstractmethod
    async def generate_data_key(self, namespace: str) -> GeneratedDataKey:
        """Create a data key bound to ``namespace``, wrapped by the primary KEK."""

    @abstractmethod
    async def decrypt_data_key(self, key_id: str, wrapped: bytes, namespace: str) -> bytes:
        """Unwrap a data key created by :meth:`generate_data_key` for ``namespace``."""

    async def check(self) -> None:  # noqa: B027 - optional hook with a working default
        """Prove the provider works (readiness): a cheap round trip, or nothing.

        Raises:
            KeyProviderError: the provider is not usable.
        """
