"""Installation on a client: compose with its ``DataConverter``, as a plugin or by hand.

temporal-shield adds three things to whatever data converter a client already
has, and keeps the rest (the payload converter above all: Pydantic models and
other custom types keep working):

* the payload codec (an existing codec is refused, or chained with
  ``chain_codec=True``: it runs before ours on encode, after ours on decode);
* failure encoding (the SDK default failure converter is swapped for the one
  that moves messages and stack traces into encoded attributes; a custom one
  is kept if it already does so, refused otherwise, and always kept with
  ``encrypt_failures = false``);
* S3 offload (a user's own ``external_storage`` is kept; it and our
  ``storage.s3_bucket`` together are refused).

Applying it again (the plugin on a client built from another client's config,
or on top of :func:`data_converter`) replaces our layer instead of adding a
second one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from temporalio.api.common.v1 import Payload
from temporalio.client import ClientConfig
from temporalio.common import HeaderCodecBehavior
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    ExternalStorage,
    FailureConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.plugin import SimplePlugin
from temporalio.worker import ReplayerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from temporal_shield.codec import (
    ConfigError,
    DataKeyManager,
    Envelope,
    KeyProvider,
    KeyProviderFactory,
    provider_from_uri,
)

from ._codec import ShieldCodec, sample_keys
from ._config import ShieldConfig
from ._settings import load_config
from ._storage import ShieldS3Driver, external_storage

PLUGIN_NAME = "temporal-shield"
_log = logging.getLogger("temporal_shield")


def key_providers(
    config: ShieldConfig, *, factories: Sequence[KeyProviderFactory] = ()
) -> list[KeyProvider]:
    """The key providers ``config`` names: the primary first, then decrypt-only ones.

    Args:
        config: Settings (``keys.uri``, ``keys.decrypt_uris``).
        factories: Key provider factories asked before the registry
            (:func:`~temporal_shield.codec.register_key_provider`).

    Raises:
        ConfigError: a URI has no provider (the message lists the available
            schemes) or its provider cannot be set up.
    """
    aws = config.keys.aws
    allowed = config.keys.allowed_key_ids
    providers = [
        provider_from_uri(config.keys.uri, allowed_key_ids=allowed, aws=aws, factories=factories)
    ]
    providers += [
        provider_from_uri(
            uri, decrypt_only=True, allowed_key_ids=allowed, aws=aws, factories=factories
        )
        for uri in config.keys.decrypt_uris
    ]
    return providers


def build_codec(
    config: ShieldConfig | None = None,
    *,
    providers: list[KeyProvider] | None = None,
    factories: Sequence[KeyProviderFactory] = (),
) -> ShieldCodec:
    """Build the :class:`ShieldCodec` for ``config``.

    Args:
        config: Settings; default: :func:`load_config` (TOML file named by
            ``TEMPORAL_SHIELD_CONFIG`` and ``TEMPORAL_SHIELD_*`` variables).
        providers: Key providers to use instead of the ones ``config`` names
            (for tests).
        factories: Key provider factories for the URIs ``config`` names, asked
            before the registry.

    Raises:
        ConfigError: the configuration or a keyring is invalid, or a KMS key
            cannot be resolved.
    """
    config = config or load_config()
    if config.read_only:
        _log.warning(
            "temporal-shield read_only: new payloads are written unencrypted "
            "(roll-out stage 1; remove read_only once every process has the converter)"
        )
    keys = DataKeyManager(
        providers or key_providers(config, factories=factories), policy=config.data_keys
    )
    envelope = Envelope(
        keys, compression=config.compression, max_plaintext=config.max_payload_bytes
    )
    return ShieldCodec(
        envelope,
        namespace=config.namespace,
        classifier=config.classification.label_for,
        strict_workflow_binding=config.strict_workflow_binding,
        require_encryption=config.require_encryption,
        sample_keys=sample_keys(config),
        read_only=config.read_only,
    )


class ChainedCodec(PayloadCodec, WithSerializationContext):
    """A user's payload codec followed by temporal-shield's.

    Encode runs the user's codec first and encrypts its output; decode decrypts
    first and hands the result to the user's codec. History therefore holds
    only our ciphertext, and the user's codec sees exactly the payloads it
    produced. Both codecs receive the serialization context.
    """

    def __init__(self, user_codec: PayloadCodec, shield: ShieldCodec) -> None:
        """Chain ``user_codec`` (inner) and ``shield`` (outer)."""
        self.user_codec = user_codec
        self.shield = shield

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """See :class:`PayloadCodec`."""
        return await self.shield.encode(await self.user_codec.encode(payloads))

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """See :class:`PayloadCodec`."""
        return await self.user_codec.decode(await self.shield.decode(payloads))

    def with_context(self, context: SerializationContext) -> Self:
        """See :class:`WithSerializationContext`."""
        user = self.user_codec
        if isinstance(user, WithSerializationContext):
            user = user.with_context(context)
        return type(self)(user, self.shield.with_context(context))


def shield_codec(converter: DataConverter) -> ShieldCodec | None:
    """temporal-shield's codec inside ``converter`` (alone or chained), if any."""
    codec = converter.payload_codec
    if isinstance(codec, ChainedCodec):
        return codec.shield
    return codec if isinstance(codec, ShieldCodec) else None


def data_converter(
    config: ShieldConfig | None = None,
    *,
    codec: ShieldCodec | None = None,
    base: DataConverter | None = None,
    chain_codec: bool = False,
    key_providers: Sequence[KeyProviderFactory] = (),
) -> DataConverter:
    """``base`` with temporal-shield added: every payload (and failure) encrypted.

    Example::

        from temporalio.contrib.pydantic import pydantic_data_converter
        converter = data_converter(config, base=pydantic_data_converter)
        client = await Client.connect("localhost:7233", data_converter=converter)

    Args:
        config: Settings; default: :func:`load_config`.
        codec: A prebuilt codec (else built from ``config``).
        base: Converter to extend; default ``DataConverter.default``. Its payload
            converter and external storage are kept (see the module docstring
            for what is refused).
        chain_codec: Keep a payload codec ``base`` already has, running it before
            ours on encode and after ours on decode; without it, such a codec is
            a :class:`ConfigError`.
        key_providers: Key provider factories for the URIs ``config`` names,
            asked before the registry.

    Raises:
        ConfigError: invalid settings, or ``base`` holds something that cannot be
            combined (a payload codec without ``chain_codec``, a failure converter
            that leaves messages in plaintext while ``encrypt_failures`` is on,
            its own external storage while ``storage.s3_bucket`` is set).
    """
    config = config or load_config()
    codec = codec or build_codec(config, factories=key_providers)
    return _compose(
        base,
        codec,
        encrypt_failures=config.encrypt_failures,
        chain_codec=chain_codec,
        storage=external_storage(config.storage),
    )


def _compose(
    base: DataConverter | None,
    codec: ShieldCodec,
    *,
    encrypt_failures: bool,
    chain_codec: bool,
    storage: ExternalStorage | None,
) -> DataConverter:
    base = base or DataConverter.default
    # dataclasses.replace keeps payload_converter_class (and any subclass of
    # DataConverter), as the SDK's own plugins do.
    return dataclasses.replace(
        base,
        payload_codec=_payload_codec(base.payload_codec, codec, chain=chain_codec),
        failure_converter_class=_failure_converter(base, encrypt=encrypt_failures),
        external_storage=_external_storage(base.external_storage, storage),
    )


def _payload_codec(
    existing: PayloadCodec | None, ours: ShieldCodec, *, chain: bool
) -> PayloadCodec:
    if existing is None or isinstance(existing, ShieldCodec):
        # Ours already there (applied twice): replace it, never stack a second layer.
        return ours
    if isinstance(existing, ChainedCodec):
        # A chain accepted once stays a chain, with our layer replaced.
        return ChainedCodec(existing.user_codec, ours)
    if chain:
        return ChainedCodec(existing, ours)
    raise ConfigError(
        f"the client's data converter already has a payload codec "
        f"({type(existing).__qualname__}); temporal-shield would drop it. Pass "
        "chain_codec=True to keep it (it then runs before ours on encode and after "
        "ours on decode), or remove it"
    )


def _failure_converter(base: DataConverter, *, encrypt: bool) -> type[FailureConverter]:
    current = base.failure_converter_class
    if not encrypt:
        return current
    if current is DefaultFailureConverter:
        return DefaultFailureConverterWithEncodedAttributes
    # A custom converter that already moves message and stack trace into the
    # encoded attributes (which our codec then encrypts) is compatible as it is.
    if isinstance(base.failure_converter, DefaultFailureConverter) and getattr(
        base.failure_converter, "_encode_common_attributes", False
    ):
        return current
    raise ConfigError(
        f"the client's data converter has a custom failure converter "
        f"({current.__qualname__}) that leaves failure messages and stack traces "
        "in plaintext, so encrypt_failures cannot be honoured. Make it a "
        "DefaultFailureConverter with encode_common_attributes=True, or set "
        "encrypt_failures = false to keep it (failure messages then stay readable "
        "in history)"
    )


def _external_storage(
    existing: ExternalStorage | None, ours: ExternalStorage | None
) -> ExternalStorage | None:
    if existing is None or _is_ours(existing):
        return ours or existing
    if ours is None:
        # The SDK applies external storage after the codec: the user's store
        # receives our ciphertext.
        return existing
    raise ConfigError(
        "the client's data converter already has external storage and "
        "storage.s3_bucket is set too; the SDK takes one. Remove storage.s3_bucket "
        "to keep yours (it then stores encrypted payloads), or remove yours"
    )


def _is_ours(storage: ExternalStorage) -> bool:
    return bool(storage.drivers) and all(isinstance(d, ShieldS3Driver) for d in storage.drivers)


def pass_through_sandbox(runner: WorkflowRunner | None = None) -> WorkflowRunner:
    """The worker's workflow sandbox with ``temporal_shield`` passed through to it.

    The sandbox re-imports, per workflow run, every module it does not pass
    through. A workflow file that imports ``temporal_shield`` (for a type, a
    setting, the plugin itself) would have the codec, zstd and cryptography
    re-imported into the sandbox, where module-level state such as a
    ``threading.local`` cannot be created: the worker fails to start with
    "Failed validating workflow". Nothing of ours runs inside a workflow, so
    passing the package through is safe; the worker's own restrictions are
    kept, and an unsandboxed or custom runner is left as it is. ``None`` stands
    for the SDK's default sandbox.
    """
    if runner is None:
        runner = SandboxedWorkflowRunner()
    if isinstance(runner, SandboxedWorkflowRunner):
        restrictions = runner.restrictions.with_passthrough_modules("temporal_shield")
        return dataclasses.replace(runner, restrictions=restrictions)
    return runner


class ShieldPlugin(SimplePlugin):
    """Temporal plugin installing temporal-shield on a client and its workers.

    Example::

        client = await Client.connect("localhost:7233", plugins=[ShieldPlugin()])
        worker = Worker(client, task_queue="q", workflows=[...])  # inherits it

    The plugin builds on the converter the client is given (see the module
    docstring: the payload converter and external storage are kept, an existing
    payload codec is refused unless ``chain_codec=True``), and binds the codec's
    default namespace to the client's namespace. Applying it more than once
    (``Client(**client.config())``, a replayer given the client's converter)
    leaves one layer of encryption.
    """

    def __init__(
        self,
        config: ShieldConfig | str | Path | None = None,
        *,
        chain_codec: bool = False,
        key_providers: Sequence[KeyProviderFactory] = (),
    ) -> None:
        """Create the plugin; keys are loaded now, so a bad configuration fails here.

        Args:
            config: A :class:`ShieldConfig`, a TOML file path, or ``None`` for
                :func:`load_config` (environment and ``TEMPORAL_SHIELD_CONFIG``).
            chain_codec: Keep a payload codec the client already has, running it
                before ours on encode and after ours on decode.
            key_providers: Key provider factories for the key URIs of
                ``config`` (e.g. a ``vault://`` one), asked before the registry.

        Raises:
            ConfigError: invalid settings, or no provider for a key URI.
        """
        if not isinstance(config, ShieldConfig):
            config = load_config(config)
        self.config = config
        self.chain_codec = chain_codec
        self.codec = build_codec(config, factories=key_providers)
        self._storage = external_storage(config.storage)
        self.converter = self.compose(None)
        """The default converter with temporal-shield added (for use without a client)."""
        # Converters are composed in configure_client/configure_replayer, which
        # know the namespace; SimplePlugin's callable would not.
        super().__init__(PLUGIN_NAME, workflow_runner=pass_through_sandbox)

    def compose(
        self, existing: DataConverter | None, *, namespace: str | None = None
    ) -> DataConverter:
        """``existing`` with temporal-shield added, payloads bound to ``namespace``.

        Raises:
            ConfigError: ``existing`` holds something that cannot be combined.
        """
        codec = self.codec.with_namespace(namespace) if namespace else self.codec
        return _compose(
            existing,
            codec,
            encrypt_failures=self.config.encrypt_failures,
            chain_codec=self.chain_codec,
            storage=self._storage,
        )

    def configure_client(self, config: ClientConfig) -> ClientConfig:
        """Compose with the client's converter, bound to the client's namespace."""
        namespace = config.get("namespace") or self.config.namespace
        config["data_converter"] = self.compose(config.get("data_converter"), namespace=namespace)
        config["header_codec_behavior"] = self._headers(config.get("header_codec_behavior"))
        return super().configure_client(config)

    def configure_replayer(self, config: ReplayerConfig) -> ReplayerConfig:
        """Compose with the replayer's converter, bound to its namespace."""
        namespace = config.get("namespace") or self.config.namespace
        config["data_converter"] = self.compose(config.get("data_converter"), namespace=namespace)
        config["header_codec_behavior"] = self._headers(config.get("header_codec_behavior"))
        return super().configure_replayer(config)

    def _headers(self, current: HeaderCodecBehavior | None) -> HeaderCodecBehavior:
        # The SDK leaves headers (interceptors' context: tracing, tenant ids,
        # auth) out of the codec by default, so they would sit in history in
        # clear and bypass require_encryption. The SDK's default cannot be told
        # apart from an explicit NO_CODEC: encrypt_headers = false opts out.
        if self.config.encrypt_headers and current in (None, HeaderCodecBehavior.NO_CODEC):
            return HeaderCodecBehavior.CODEC
        return current or HeaderCodecBehavior.NO_CODEC
