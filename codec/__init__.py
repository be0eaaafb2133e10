"""Envelope encryption of Temporal payload bytes: format, AEAD, compression, keys.

This package imports nothing else of temporal-shield and nothing of Temporal: it
turns bytes into authenticated, self-describing ciphertext and back.
"""

from ._aws import AwsSettings, aws_client, aws_client_config
from ._compression import Compression, CompressionConfig
from ._datakeys import DataKey, DataKeyManager, DataKeyPolicy, KeyStats, SingleFlight
from ._envelope import Envelope, Opened, Sealed, validate_classification
from ._errors import (
    ConfigError,
    DecryptionError,
    KeyProviderError,
    PayloadTooLargeError,
    ShieldError,
)
from ._format import CLASSIFICATION_METADATA, ENCODING, KEY_ID_METADATA, Header, is_envelope, parse
from ._local import KEY_ID_PREFIX, Keyring, KeyringEntry, LocalKeyProvider
from ._provider import GeneratedDataKey, KeyProvider, KeyProviderFactory
from ._sample import SAMPLE_KEYS_FORMAT, SampleKeys
from ._uri import (
    AwsKmsKeyProviderFactory,
    LocalKeyProviderFactory,
    provider_from_uri,
    register_key_provider,
    registered_key_providers,
    unregister_key_provider,
)

__all__ = [
    "CLASSIFICATION_METADATA",
    "ENCODING",
    "KEY_ID_METADATA",
    "KEY_ID_PREFIX",
    "SAMPLE_KEYS_FORMAT",
    "AwsKmsKeyProviderFactory",
    "AwsSettings",
    "Compression",
    "CompressionConfig",
    "ConfigError",
    "DataKey",
    "DataKeyManager",
    "DataKeyPolicy",
    "DecryptionError",
    "Envelope",
    "GeneratedDataKey",
    "Header",
    "KeyProvider",
    "KeyProviderError",
    "KeyProviderFactory",
    "KeyStats",
    "Keyring",
    "KeyringEntry",
    "LocalKeyProvider",
    "LocalKeyProviderFactory",
    "Opened",
    "PayloadTooLargeError",
    "SampleKeys",
    "Sealed",
    "ShieldError",
    "SingleFlight",
    "aws_client",
    "aws_client_config",
    "is_envelope",
    "parse",
    "provider_from_uri",
    "register_key_provider",
    "registered_key_providers",
    "unregister_key_provider",
    "validate_classification",
]
