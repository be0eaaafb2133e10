"""The key-provider extension point: who holds the key-encryption keys (KEKs)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only the settings dataclass; importing it at run time would be harmless,
    # but this module is the extension point and stays dependency-free.
    from ._aws import AwsSettings


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


class KeyProviderFactory(ABC):
    """Builds the :class:`KeyProvider` a key URI names (a scheme such as ``vault://``).

    Register one with :func:`~temporal_shield.codec.register_key_provider` (for the
    whole process) or pass it to ``ShieldPlugin(key_providers=[...])`` (for one
    plugin); ``keys.uri`` and ``keys.decrypt_uris`` then reach it like the built-in
    ``local://`` and ``aws-kms://``. This is how Tink chooses a KMS client: the
    first one whose ``does_support(uri)`` is true.

    Contract:
        * :meth:`supports` is a cheap, side-effect-free test of the URI (by
          default: it starts with :attr:`scheme`); it must not raise and must
          not import heavy SDKs: it is asked about every URI, including those
          meant for other providers.
        * :meth:`create` is called only for URIs :meth:`supports` accepted. It
          returns a ready :class:`KeyProvider` or raises
          :class:`~._errors.ConfigError` (with a message naming what is wrong,
          never a secret); import provider SDKs here, lazily.
        * ``decrypt_only`` asks for a provider whose :attr:`KeyProvider.primary_key_id`
          is ``None`` (an old key kept readable), where the provider can tell.
        * ``allowed_key_ids`` restricts decryption to those KEK ids (empty: the
          provider's own keys only).
        * ``aws`` carries the configured AWS connection settings; other
          providers ignore it.
    """

    @property
    @abstractmethod
    def scheme(self) -> str:
        """The URI prefix this factory serves, e.g. ``"vault://"`` (shown in errors)."""

    def supports(self, uri: str) -> bool:
        """Whether this factory builds providers for ``uri`` (default: prefix :attr:`scheme`)."""
        return uri.startswith(self.scheme)

    @abstractmethod
    def create(
        self,
        uri: str,
        *,
        decrypt_only: bool,
        allowed_key_ids: tuple[str, ...],
        aws: AwsSettings | None,
    ) -> KeyProvider:
        """Build the provider ``uri`` names.

        Args:
            uri: A key URI :meth:`supports` accepted.
            decrypt_only: Do not wrap new data keys with this key.
            allowed_key_ids: Restrict decryption to these KEK ids.
            aws: AWS connection settings from the configuration, if any.

        Raises:
            ConfigError: the URI is malformed or the provider cannot be set up.
        """
