"""Temporal integration: the payload codec, its configuration, and one-line installation.

Typical use in a worker or client::

    from temporal_shield.converter import ShieldPlugin, client_connect_config, load_config
    config = load_config()
    client = await Client.connect(
        **client_connect_config(config), plugins=[ShieldPlugin(config)]
    )

``client_connect_config`` takes the address, namespace, API key and TLS from the
SDK's ``temporalio.envconfig`` (``TEMPORAL_ADDRESS``, ``TEMPORAL_*``, profiles) and
our ``[tls]`` section.
"""

from ._codec import PayloadLike, PlaintextRefusedError, ShieldCodec, is_encrypted
from ._config import (
    DEFAULT_KEY_URI,
    ClassificationConfig,
    KeysConfig,
    ShieldConfig,
    StorageConfig,
    TemporalTlsConfig,
)
from ._connect import client_connect_config
from ._history import iter_messages, iter_payloads
from ._install import (
    ChainedCodec,
    ShieldPlugin,
    build_codec,
    data_converter,
    key_providers,
    pass_through_sandbox,
    shield_codec,
)
from ._rewrap import RewrapReport, rewrap, rewrap_progress
from ._scan import ScanReport, scan, terminal_progress
from ._settings import CONFIG_ENV, ENV_PREFIX, ENV_VARS, build, load_config, read_toml
from ._storage import Boto3S3Client, ShieldS3Driver, external_storage
from ._tls import temporal_tls

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_KEY_URI",
    "ENV_PREFIX",
    "ENV_VARS",
    "Boto3S3Client",
    "ChainedCodec",
    "ClassificationConfig",
    "KeysConfig",
    "PayloadLike",
    "PlaintextRefusedError",
    "RewrapReport",
    "ScanReport",
    "ShieldCodec",
    "ShieldConfig",
    "ShieldPlugin",
    "ShieldS3Driver",
    "StorageConfig",
    "TemporalTlsConfig",
    "build",
    "build_codec",
    "client_connect_config",
    "data_converter",
    "external_storage",
    "is_encrypted",
    "iter_messages",
    "iter_payloads",
    "key_providers",
    "load_config",
    "pass_through_sandbox",
    "read_toml",
    "rewrap",
    "rewrap_progress",
    "scan",
    "shield_codec",
    "temporal_tls",
    "terminal_progress",
]
