"""The one small exception hierarchy of temporal-shield (GUIDE §4 "one shape of error").

Every failure to authenticate or open a ciphertext is the single opaque
:class:`DecryptionError`: callers (and attackers) learn nothing about which check
failed. Operational failures that an operator must act on (a KMS outage, a bad
configuration, a payload over a limit) have their own types so they can be
mapped to the right HTTP status or alert, and none of them carries key material,
plaintext or tokens in its message.
"""

from __future__ import annotations


class ShieldError(Exception):
    """Base class of every error raised by temporal-shield."""


class ConfigError(ShieldError):
    """The configuration is invalid or incomplete; raised at construction time."""


class KeyProviderError(ShieldError):
    """A key provider (KMS or keyring) could not be reached or refused a request.

    Raised instead of writing anything when a data key cannot be generated or
    unwrapped for operational reasons (network, throttling, permissions). It is
    distinct from :class:`DecryptionError` so that an outage is not mistaken for
    tampering, and so that the server can answer 503 rather than 400.
    """


class DecryptionError(ShieldError):
    """A payload could not be authenticated or decrypted.

    Deliberately opaque: a flipped bit, a truncated header, a wrong namespace, an
    unknown or disallowed key id and a wrong key all raise this same error with
    the same message.
    """

    def __init__(self) -> None:
        super().__init__("payload could not be decrypted")


class PayloadTooLargeError(ShieldError):
    """A payload exceeds a configured size bound (before or after compression)."""
