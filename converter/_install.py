"""One-line installation: a configured ``DataConverter`` and a Temporal plugin."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.client import ClientConfig
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    FailureConverter,
)
from temporalio.plugin import SimplePlugin

from temporal_shield.codec import (
    DataKeyManager,
    Envelope,
    KeyProvider,
    provider_from_uri,
)

from ._codec import ShieldCodec
from ._config import ShieldConfig
from ._settings import load_config
from ._storage import external_storage

PLUGIN_NAME = "temporal-shield"


def key_providers(config: ShieldConfig) -> list[KeyProvider]:
    """The key providers ``config`` names: the primary first, then decrypt-only ones."""
    aws = config.keys.aws
    allowed = config.keys.allowed_key_ids
    providers = [provider_from_uri(config.keys.uri, allowed_key_ids=allowed, aws=aws)]
    providers += [
        provider_from_uri(uri, decrypt_only=True, allowed_key_ids=allowed, aws=aws)
        for uri in config.keys.decrypt_uris
    ]
    return providers


def build_codec(
    config: ShieldConfig | None = None, *, providers: list[KeyProvider] | None = None
) -> ShieldCodec:
    """Build the :class:`ShieldCodec` for ``config``.

    Args:
        config: Settings; default: :func:`load_config` (TOML file named by
            ``TEMPORAL_SHIELD_CONFIG`` and ``TEMPORAL_SHIELD_*`` variables).
        providers: Key providers to use instead of the ones ``config`` names
            (for tests and custom providers).

    Raises:
        ConfigError: the configuration or a keyring is invalid, or a KMS key
            cannot be resolved.
    """
    config = config or load_config()
    keys = DataKeyManager(providers or key_providers(config), policy=config.data_keys)
    envelope = Envelope(
        keys, compression=config.compression, max_plaintext=config.max_payload_bytes
    )
    return ShieldCodec(
        envelope,
        namespace=config.namespace,
        classifier=config.classification.label_for,
        strict_workflow_binding=config.strict_workflow_binding,
    )


def data_converter(
    config: ShieldConfig | None = None,
    *,
    codec: ShieldCodec | None = None,
    base: DataConverter | None = None,
) -> DataConverter:
    """A ``DataConverter`` that encrypts every payload (and failure) with temporal-shield.

    Example::

        client = await Client.connect("localhost:7233", data_converter=data_converter())

    Args:
        config: Settings; default: :func:`load_config`.
        codec: A prebuilt codec (else built from ``config``).
        base: Converter to extend (its payload converter is kept); default
            ``DataConverter.default``.
    """
    config = config or load_config()
    codec = codec or build_codec(config)
    failure_cls: type[FailureConverter] = (
        DefaultFailureConverterWithEncodedAttributes
        if config.encrypt_failures
        else DefaultFailureConverter
    )
    return dataclasses.replace(
        base or DataConverter.default,
        payload_codec=codec,
        failure_converter_class=failure_cls,
        external_storage=external_storage(config.storage),
    )


class ShieldPlugin(SimplePlugin):
    """Temporal plugin installing temporal-shield on a client and its workers.

    Example::

        client = await Client.connect("localhost:7233", plugins=[ShieldPlugin()])
        worker = Worker(client, task_queue="q", workflows=[...])  # inherits it

    The codec's default namespace becomes the client's namespace.
    """

    def __init__(self, config: ShieldConfig | str | Path | None = None) -> None:
        """Create the plugin.

        Args:
            config: A :class:`ShieldConfig`, a TOML file path, or ``None`` for
                :func:`load_config` (environment and ``TEMPORAL_SHIELD_CONFIG``).
        """
        if not isinstance(config, ShieldConfig):
            config = load_config(config)
        self.config = config
        self.converter = data_converter(config)
        super().__init__(PLUGIN_NAME, data_converter=self._converter_for)

    def _converter_for(self, existing: DataConverter | None) -> DataConverter:
        return self.converter

    def configure_client(self, config: ClientConfig) -> ClientConfig:
        """Bind the codec's default namespace to the client's, then apply the converter."""
        codec = self.converter.payload_codec
        assert isinstance(codec, ShieldCodec)
        namespace = config.get("namespace") or self.config.namespace
        self.converter = dataclasses.replace(
            self.converter, payload_codec=codec.with_namespace(namespace)
        )
        return super().configure_client(config)
