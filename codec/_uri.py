"""Key URIs select a key provider through a registry of factories, by scheme.

Built in: ``local://PATH`` (a keyring file) and ``aws-kms://KEY``. Further
schemes (``vault://``, ``gcp-kms://``, ...) come from
:func:`register_key_provider` or from factories passed per call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from ._aws import AwsSettings, aws_client
from ._errors import ConfigError, ShieldError
from ._provider import KeyProvider, KeyProviderFactory

LOCAL_SCHEME = "local://"
AWS_KMS_SCHEME = "aws-kms://"


class LocalKeyProviderFactory(KeyProviderFactory):
    """``local://PATH``: a keyring file (``local:///abs/keyring.json``, ``~`` expanded).

    A keyring always wraps new data keys with its primary, so ``decrypt_only``
    has no effect; ``allowed_key_ids`` are key names without the ``local:`` prefix.
    """

    scheme = LOCAL_SCHEME

    def create(
        self,
        uri: str,
        *,
        decrypt_only: bool,
        allowed_key_ids: tuple[str, ...],
        aws: AwsSettings | None,
    ) -> KeyProvider:
        """See base class."""
        from ._local import LocalKeyProvider

        path = uri[len(LOCAL_SCHEME) :]
        if not path:
            raise ConfigError("local:// URI needs a keyring path (local:///path/keyring.json)")
        allowed = frozenset(allowed_key_ids) if allowed_key_ids else None
        return LocalKeyProvider(Path(path).expanduser(), allowed_key_ids=allowed)


class AwsKmsKeyProviderFactory(KeyProviderFactory):
    """``aws-kms://KEY``: an AWS KMS key id, ARN or ``alias/NAME``.

    boto3 is imported only when such a URI is used, so a worker with a local
    keyring never loads the AWS SDK.
    """

    scheme = AWS_KMS_SCHEME

    def create(
        self,
        uri: str,
        *,
        decrypt_only: bool,
        allowed_key_ids: tuple[str, ...],
        aws: AwsSettings | None,
    ) -> KeyProvider:
        """See base class."""
        key = uri[len(AWS_KMS_SCHEME) :]
        if not key:
            raise ConfigError("aws-kms:// URI needs a key id, ARN or alias")
        try:
            client = aws_client("kms", aws or AwsSettings(), feature="an aws-kms:// key")
        except ImportError as exc:
            raise ConfigError(str(exc)) from None

        from ._aws import AwsKmsKeyProvider

        return AwsKmsKeyProvider(
            None if decrypt_only else key,
            client=client,
            decrypt_keys=(key, *allowed_key_ids) if decrypt_only else allowed_key_ids,
        )


_BUILT_IN: tuple[KeyProviderFactory, ...] = (LocalKeyProviderFactory(), AwsKmsKeyProviderFactory())
_BUILT_IN_TYPES = (LocalKeyProviderFactory, AwsKmsKeyProviderFactory)
_lock = threading.Lock()
# Newest registration first, built-ins last: a registration can take over a
# built-in scheme (e.g. a local:// provider backed by an HSM in tests).
_registry: list[KeyProviderFactory] = list(_BUILT_IN)


def register_key_provider(factory: KeyProviderFactory) -> None:
    """Make ``factory`` reachable from every key URI in this process.

    Factories are asked newest first, so a registration takes precedence over
    earlier ones and over the built-in ``local://`` and ``aws-kms://``.
    Registering the same factory object again moves it to the front.

    Raises:
        TypeError: ``factory`` is not a :class:`KeyProviderFactory`.
    """
    if not isinstance(factory, KeyProviderFactory):
        raise TypeError(
            f"register_key_provider needs a KeyProviderFactory, not {type(factory).__name__}"
        )
    with _lock:
        _registry[:] = [factory, *(f for f in _registry if f is not factory)]


def unregister_key_provider(factory: KeyProviderFactory) -> None:
    """Remove a registered factory (a no-op if it is not registered).

    The built-in factories can be removed too, e.g. to forbid ``local://``
    keyrings in a production worker.
    """
    with _lock:
        _registry[:] = [f for f in _registry if f is not factory]


def registered_key_providers() -> tuple[KeyProviderFactory, ...]:
    """The registered factories, in the order they are asked (newest first)."""
    with _lock:
        return tuple(_registry)


def provider_from_uri(
    uri: str,
    *,
    decrypt_only: bool = False,
    allowed_key_ids: Iterable[str] = (),
    aws: AwsSettings | None = None,
    factories: Sequence[KeyProviderFactory] = (),
) -> KeyProvider:
    """Build the key provider a key URI names.

    ``factories`` are asked first, then the registry (:func:`register_key_provider`);
    the first whose ``supports(uri)`` is true builds the provider.

    Args:
        uri: ``local://PATH`` (``local:///abs/keyring.json``, ``~`` expanded),
            ``aws-kms://KEY`` (key id, ARN or ``alias/NAME``), or a scheme of a
            registered or given factory.
        decrypt_only: Do not encrypt with this key (an old key kept readable
            after switching keys). Local keyrings always encrypt with their
            primary.
        allowed_key_ids: Restrict decryption to these KEKs (local key names, or
            AWS key ids/ARNs/aliases added to the primary).
        aws: AWS connection settings (endpoint, region, timeouts, retries).
        factories: Factories to ask before the registry (a plugin's own).

    Raises:
        ConfigError: no factory supports the URI (the message lists the
            schemes that are available), or the provider cannot be set up.
    """
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"a key URI must be a non-empty string, not {uri!r}")
    _check_factories(factories)
    candidates = (*factories, *registered_key_providers())
    for factory in candidates:
        if _supports(factory, uri):
            return _create(
                factory,
                uri,
                decrypt_only=decrypt_only,
                allowed_key_ids=tuple(allowed_key_ids),
                aws=aws,
            )
    schemes = ", ".join(dict.fromkeys(_scheme(f) for f in candidates)) or "none"
    raise ConfigError(f"unsupported key URI {uri!r}: no key provider for it (available: {schemes})")


def _check_factories(factories: object) -> None:
    """Programming errors in the ``factories`` argument are TypeErrors, like registration."""
    if isinstance(factories, KeyProviderFactory | str | bytes) or not isinstance(
        factories, Sequence
    ):
        raise TypeError(
            f"key provider factories must be a list of KeyProviderFactory, not "
            f"{type(factories).__name__}"
        )
    for factory in factories:
        if not isinstance(factory, KeyProviderFactory):
            raise TypeError(f"not a KeyProviderFactory: {type(factory).__name__}")


def _supports(factory: KeyProviderFactory, uri: str) -> bool:
    try:
        return bool(factory.supports(uri))
    except Exception as exc:
        # A broken third-party factory must not break every other scheme silently.
        raise ConfigError(
            f"key provider factory {type(factory).__name__} failed on supports(): {exc}"
        ) from exc


def _create(
    factory: KeyProviderFactory,
    uri: str,
    *,
    decrypt_only: bool,
    allowed_key_ids: tuple[str, ...],
    aws: AwsSettings | None,
) -> KeyProvider:
    try:
        provider = factory.create(
            uri, decrypt_only=decrypt_only, allowed_key_ids=allowed_key_ids, aws=aws
        )
    except ShieldError:
        raise
    except Exception as exc:
        if isinstance(factory, _BUILT_IN_TYPES):
            # Ours raise ConfigError for what they check; anything else (a boto3
            # setup error) keeps its own type, as it always has.
            raise
        raise ConfigError(
            f"key provider for {_scheme(factory)} could not be set up: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(provider, KeyProvider):
        raise ConfigError(
            f"key provider factory {type(factory).__name__} returned "
            f"{type(provider).__name__}, not a KeyProvider"
        )
    return provider


def _scheme(factory: KeyProviderFactory) -> str:
    try:
        return str(factory.scheme)
    except Exception:
        return type(factory).__name__
