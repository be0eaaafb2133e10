"""The configuration schema shared by workers, clients and (later) the codec server.

Every section is a frozen, keyword-only dataclass; loading from TOML and the
environment lives in :mod:`._settings`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporal_shield.codec import (
    AwsSettings,
    CompressionConfig,
    ConfigError,
    DataKeyPolicy,
    validate_classification,
)

DEFAULT_KEY_URI = "local://~/.config/temporal-shield/keyring.json"
"""The keyring when neither ``keys.uri`` nor ``XDG_CONFIG_HOME`` says otherwise."""
_AWS = AwsSettings()  # the timeout and retry defaults (and why) live with AwsSettings


def config_home(env: Mapping[str, str]) -> Path | None:
    """``$XDG_CONFIG_HOME``, else ``$HOME/.config`` (None if neither is set).

    A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG specification says.
    """
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    home = env.get("HOME", "")
    return Path(home) / ".config" if home else None


def default_key_uri(env: Mapping[str, str] | None = None) -> str:
    """``local://$XDG_CONFIG_HOME/temporal-shield/keyring.json``, else :data:`DEFAULT_KEY_URI`."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return f"local://{Path(xdg) / 'temporal-shield' / 'keyring.json'}"
    return DEFAULT_KEY_URI


@dataclass(frozen=True, kw_only=True)
class KeysConfig:
    """Where the key-encryption keys live."""

    uri: str = field(default_factory=default_key_uri)
    """Primary key URI: ``local://PATH`` or ``aws-kms://KEY`` (id, ARN or alias).
    Default: ``local://$XDG_CONFIG_HOME/temporal-shield/keyring.json``
    (``~/.config/...`` when ``XDG_CONFIG_HOME`` is not set). The ``keys``
    commands manage this keyring when it is ``local://``."""
    decrypt_uris: tuple[str, ...] = ()
    """Further key URIs that may only decrypt (e.g. the previous KMS key while
    switching keys). Local keyrings listed here still only decrypt."""
    allowed_key_ids: tuple[str, ...] = ()
    """If non-empty, restricts decryption to these KEKs (local key names or AWS
    key ids/ARNs/aliases). The primary KEK is always allowed."""
    sample_keys_file: str = ""
    """Keys of Temporal's sample encryption codec (JSON, mode 0600; see
    docs/format.md): workers then read the sample's payloads while writing ours,
    until they age out (docs/operations.md). Empty: no sample reader."""
    aws_region: str | None = None
    """AWS region for KMS (else the usual AWS configuration)."""
    aws_endpoint_url: str | None = None
    """KMS endpoint URL (VPC endpoint, or a local emulator in tests)."""
    kms_connect_timeout: float = _AWS.connect_timeout
    """Seconds to connect to KMS (botocore's default is 60)."""
    kms_read_timeout: float = _AWS.read_timeout
    """Seconds to wait for a KMS answer on an open connection (botocore's default is 60)."""
    kms_max_attempts: int = _AWS.max_attempts
    """Attempts per KMS call including the first, in botocore's ``standard`` retry
    mode. A hung KMS fails a call after about ``attempts * (connect + read)``
    seconds plus back-off; the codec server answers 503 ``kms_unavailable``."""

    def __post_init__(self) -> None:
        self.aws  # noqa: B018 - validates the timeouts now, not at the first KMS call

    @property
    def aws(self) -> AwsSettings:
        """The KMS connection settings, for :func:`~temporal_shield.codec.provider_from_uri`."""
        return AwsSettings(
            region=self.aws_region,
            endpoint_url=self.aws_endpoint_url,
            connect_timeout=self.kms_connect_timeout,
            read_timeout=self.kms_read_timeout,
            max_attempts=self.kms_max_attempts,
        )


@dataclass(frozen=True, kw_only=True)
class ClassificationConfig:
    """Which data-classification label new payloads carry (e.g. ``phi``, ``pci``).

    The label is authenticated in the envelope header and repeated in metadata so
    that the codec server can decide per payload who may read it.

    Rules can select by workflow id and by namespace. The SDK's serialization
    context carries the namespace and the workflow id on every path (client,
    workflow, activity, child, signal, query, update) but the workflow *type* and
    task queue only on some, so a label chosen by type would differ between the
    client that starts a workflow and the worker that runs it. Workflow ids
    conventionally carry the type (``claim-8431``), so ``workflow_ids`` rules are
    the reliable way to classify per kind of workflow.
    """

    default: str = ""
    """Label for payloads that match no rule ("" = unclassified)."""
    workflow_ids: tuple[tuple[str, str], ...] = ()
    """``(workflow id glob, label)`` rules, first match wins; checked first."""
    namespaces: tuple[tuple[str, str], ...] = ()
    """``(namespace glob, label)`` rules, first match wins."""

    def __post_init__(self) -> None:
        validate_classification(self.default)
        for _, label in (*self.workflow_ids, *self.namespaces):
            validate_classification(label)

    def label_for(self, namespace: str, workflow_id: str | None = None) -> str:
        """The label for a payload written in ``namespace`` (for ``workflow_id``)."""
        if workflow_id:
            for pattern, label in self.workflow_ids:
                if fnmatch.fnmatchcase(workflow_id, pattern):
                    return label
        for pattern, label in self.namespaces:
            if fnmatch.fnmatchcase(namespace, pattern):
                return label
        return self.default


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Optional offload of large, already-encrypted payloads to S3."""

    s3_bucket: str | None = None
    """Bucket for offloaded payloads; ``None`` disables offload."""
    threshold: int = 256 * 1024
    """Encoded payloads of at least this many bytes are offloaded."""
    s3_region: str | None = None
    """S3 region (else the usual AWS configuration)."""
    s3_endpoint_url: str | None = None
    """S3 endpoint URL (a local emulator in tests)."""
    s3_connect_timeout: float = _AWS.connect_timeout
    """Seconds to connect to S3 (botocore's default is 60)."""
    s3_read_timeout: float = _AWS.read_timeout
    """Seconds to wait for (more of) an S3 answer; a stalled download fails after it."""
    s3_max_attempts: int = _AWS.max_attempts
    """Attempts per S3 call including the first (botocore ``standard`` retry mode)."""

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ConfigError("storage threshold must be >= 0")
        self.aws  # noqa: B018 - validates the timeouts now, not at the first S3 call

    @property
    def aws(self) -> AwsSettings:
        """The S3 connection settings (for a client made with ``aws_client_config``)."""
        return AwsSettings(
            region=self.s3_region,
            endpoint_url=self.s3_endpoint_url,
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
            max_attempts=self.s3_max_attempts,
        )


@dataclass(frozen=True, kw_only=True)
class TemporalTlsConfig:
    """TLS from workers and clients to the Temporal frontend (mutual TLS).

    Files are in the cert-manager Secret layout: point ``dir`` at a mounted
    Secret (``tls.crt``, ``tls.key``, ``ca.crt``) or name the files one by one.
    """

    dir: str = ""
    """Folder with ``tls.crt`` (client certificate), ``tls.key`` and ``ca.crt``."""
    ca_file: str = ""
    """CA bundle that signed the frontend's certificate (overrides ``dir``)."""
    cert_file: str = ""
    """Client certificate (overrides ``dir``)."""
    key_file: str = ""
    """Client private key (overrides ``dir``)."""
    server_name: str = ""
    """Expected name in the frontend's certificate, when it differs from the address.
    Needs ``dir`` or ``ca_file`` too: set alone it is an error (it once meant plaintext)."""

    def __post_init__(self) -> None:
        if self.server_name and not self.enabled:
            # Once this silently meant a plaintext connection.
            raise ConfigError(
                "tls.server_name is set but no TLS files are: set tls.dir or tls.ca_file "
                "(or use TEMPORAL_TLS_SERVER_NAME for TLS with the system's CAs)"
            )

    @property
    def enabled(self) -> bool:
        """Whether TLS files are configured (TLS is then required)."""
        return bool(self.dir or self.ca_file or self.cert_file or self.key_file)


@dataclass(frozen=True, kw_only=True)
class ShieldConfig:
    """Everything the converter needs. Defaults are the embedded, fail-closed ones."""

    keys: KeysConfig = field(default_factory=KeysConfig)
    """Key providers."""
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    """Compression before encryption."""
    data_keys: DataKeyPolicy = field(default_factory=DataKeyPolicy)
    """Data-key reuse bounds and decrypted-key cache."""
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    """Classification labels of new payloads."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """S3 offload."""
    tls: TemporalTlsConfig = field(default_factory=TemporalTlsConfig)
    """Mutual TLS to the Temporal frontend (see :func:`temporal_tls`)."""
    namespace: str = "default"
    """Namespace bound into payloads encoded without a serialization context. The
    plugin replaces it with the client's namespace."""
    strict_workflow_binding: bool = False
    """Also bind payloads to their workflow id (see docs/format.md for why this is
    not the default: schedules, the codec server and payload forwarding)."""
    encrypt_failures: bool = True
    """Move failure messages and stack traces into encrypted attributes."""
    max_payload_bytes: int = 64 * 1024 * 1024
    """Largest serialized payload encoded or decoded (also the decompression cap)."""
    require_encryption: tuple[str, ...] = ()
    """Namespace globs where decoding refuses payloads that are not temporal-shield
    envelopes (the last roll-out step, once ``scan`` is clean; see
    docs/operations.md). Empty: every non-envelope payload passes through."""
    encrypt_headers: bool = True
    """Pass Temporal headers (what interceptors propagate: trace context, tenant
    ids) through the codec: the plugin sets the client's
    ``header_codec_behavior`` to ``CODEC`` unless it is already ``CODEC`` or
    ``WORKFLOW_ONLY_CODEC``. Off: headers stay in clear in history, and
    ``require_encryption`` cannot check them (so the two are refused together)."""
    read_only: bool = False
    """Roll-out stage 1 only: decode temporal-shield envelopes but write new payloads
    unchanged (in plaintext), so that every process of a fleet with several images
    can read ciphertext before any of them writes it (docs/operations.md). Never a
    steady state: ``scan`` reports what is written meanwhile, a warning is logged
    at start-up, and it cannot be combined with ``require_encryption``."""

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ConfigError("namespace must not be empty")
        if self.read_only and self.require_encryption:
            raise ConfigError(
                "read_only (write plaintext during a roll-out) cannot be combined with "
                "require_encryption (refuse plaintext): finish the roll-out first"
            )
        if self.require_encryption and not self.encrypt_headers:
            raise ConfigError(
                "require_encryption needs encrypt_headers: headers left out of the codec "
                "would reach workers unchecked"
            )
        if self.max_payload_bytes <= 0:
            raise ConfigError("max_payload_bytes must be positive")
