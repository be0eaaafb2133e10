"""Codec-server configuration: the ``[server]`` table of the shared TOML file."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from temporal_shield.codec import ConfigError
from temporal_shield.converter import ShieldConfig, build
from temporal_shield.converter._net import is_loopback_host
from temporal_shield.converter._settings import (
    DEPRECATED_ENV,
    ENV_VARS,
    SERVER_SECTION,
    build_shield,
    env_names,
    load_document,
    reference_markdown,
    set_dotted,
)

from ._checkpoint import REPLICA_ID

ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Asymmetric JWT algorithms we accept in configuration. Symmetric (HS*) and
``none`` are refused: the server must never share a secret with the IdP."""


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """JWT bearer-token validation. The checks come from here, never from the token."""

    issuer: str = ""
    """Required ``iss``."""
    audience: tuple[str, ...] = ()
    """Accepted ``aud`` values (at least one must match)."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    """Allowed signature algorithms (asymmetric only)."""
    jwks_url: str = ""
    """JWKS endpoint of the identity provider (cached; refetched on unknown ``kid``).
    Must be ``https://`` (plain ``http://`` only to a loopback address) unless
    ``allow_insecure_jwks_url``: whoever can alter the JWKS in transit can mint
    tokens the server accepts."""
    allow_insecure_jwks_url: bool = False
    """Accept a plain-``http://`` JWKS URL to a non-loopback host (for example an
    IdP inside a service mesh that encrypts the hop). Never over an open network."""
    public_key_files: tuple[str, ...] = ()
    """PEM public keys used instead of (or besides) a JWKS URL; ``kid`` = file stem."""
    leeway: float = 30.0
    """Clock-skew allowance in seconds for ``exp``/``nbf``/``iat``."""
    jwks_min_refresh_interval: float = 60.0
    """Minimum seconds between two JWKS fetches (unknown ``kid`` floods are cheap)."""
    jwks_cache_ttl: float = 3600.0
    """Seconds a fetched JWKS is trusted before it is refetched."""
    accept_id_token: bool = False
    """Also accept the Web UI's ``Authorization-Extras`` id token (same checks, and
    one that lists several audiences must name one of ours as its ``azp``)."""

    def __post_init__(self) -> None:
        # not (>= 0) also catches nan, which PyJWT's "exp <= now - leeway" never refuses.
        if not (0 <= self.leeway < math.inf):
            raise ConfigError("server.auth.leeway must be a finite number of seconds >= 0")
        bad = set(self.algorithms) - ALGORITHMS
        if bad:
            raise ConfigError(f"unsupported JWT algorithm(s): {', '.join(sorted(bad))}")
        if self.jwks_url:
            _check_jwks_url(self.jwks_url, insecure_ok=self.allow_insecure_jwks_url)

    @property
    def enabled(self) -> bool:
        """Whether an authenticator is configured at all."""
        return bool(self.jwks_url or self.public_key_files)


def _check_jwks_url(url: str, *, insecure_ok: bool) -> None:
    """Refuse a JWKS URL that an attacker on the network could answer for.

    Raises:
        ConfigError: not https (http only to loopback, or with ``insecure_ok``).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return
    # urllib, which fetches the JWKS, also opens file:// and ftp://: never those.
    if parts.scheme != "http" or not host:
        raise ConfigError("server.auth.jwks_url must be an https:// URL")
    if insecure_ok or is_loopback_host(host):
        return
    raise ConfigError(
        "server.auth.jwks_url uses plain http to a non-loopback host: use https "
        "(or set server.auth.allow_insecure_jwks_url = true if the hop is protected)"
    )


def _check_public_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.query or parts.fragment or not parts.hostname:
        raise ConfigError("server.public_url must be a plain URL (https://host[:port][/prefix])")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname)):
        return
    # Session cookies are Secure: a browser never sends them over plain HTTP.
    raise ConfigError("server.public_url must be https:// (http:// only on loopback)")


MAX_WORKERS = 256
"""Most ``server.workers``: one per CPU is the useful most, and this is far past it."""
WORKER_TIMEOUT = 30.0
"""Default of ``server.worker_timeout``."""


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Where audit records go. At least one sink is required unless insecure_dev."""

    file: str = ""
    """JSON Lines file, appended to; the hash chain continues across restarts."""
    stdout: bool = False
    """Also write each record to standard output."""
    fsync: bool = False
    """fsync after every record (slower; survives a host crash, not just a process crash)."""
    lock_wait: float = 60.0
    """Seconds a starting server waits for another process that holds ``file`` (an
    instance still finishing its last requests and its final checkpoint) before
    refusing to start. Only one process at a time writes a chain: two writers
    would fork it."""
    replica_id: str = field(default_factory=socket.gethostname)
    """This replica's id in checkpoints (default: the host name, which a StatefulSet
    pod keeps across restarts). Each replica writes its own file; letters, digits,
    ``.``, ``_``, ``-``."""
    signing_key: str = ""
    """Key that signs checkpoints: ``ed25519://PATH`` (a private key file outside the
    log's directory, mode 0600) or ``aws-kms://KEY`` (an ECC_NIST_P256 signing key).
    Empty: no checkpoints (the file is then protected only by its hash chain)."""
    checkpoint_every: int = 1000
    """Sign a checkpoint after this many records."""
    checkpoint_interval: float = 60.0
    """...or after this many seconds, when records were written since the last one."""
    checkpoint_stdout: bool = False
    """Also write each checkpoint as one JSON line (``"type": "audit_checkpoint"``) to stdout."""
    s3_bucket: str = ""
    """Bucket with Object Lock enabled that receives one object per checkpoint."""
    s3_prefix: str = "audit-checkpoints"
    """Key prefix: objects are ``<prefix>/<replica>/<seq:020d>.json``."""
    s3_retention_days: int = 0
    """Put each object with COMPLIANCE retention for this many days; 0 = the bucket's
    default retention rule (which must then be COMPLIANCE)."""
    s3_region: str | None = None
    """Region of the checkpoint bucket (else the usual AWS configuration)."""
    s3_endpoint_url: str | None = None
    """S3 endpoint URL (VPC endpoint, emulator)."""
    kms_region: str | None = None
    """Region of an ``aws-kms://`` signing key."""
    kms_endpoint_url: str | None = None
    """KMS endpoint URL for the signing key."""

    def __post_init__(self) -> None:
        if not REPLICA_ID.fullmatch(self.replica_id):
            raise ConfigError(
                "audit.replica_id must be 1-128 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        if self.checkpoint_every <= 0 or self.checkpoint_interval <= 0:
            raise ConfigError("audit.checkpoint_every and checkpoint_interval must be positive")
        if self.s3_retention_days < 0:
            raise ConfigError("audit.s3_retention_days must not be negative")
        if not 0 <= self.lock_wait <= 3600:
            raise ConfigError("audit.lock_wait must be between 0 and 3600 seconds")
        if self.signing_key and not self.file:
            raise ConfigError("audit.signing_key needs audit.file (checkpoints count its records)")
        if (self.s3_bucket or self.checkpoint_stdout) and not self.signing_key:
            raise ConfigError("checkpoint sinks need audit.signing_key")


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """HTTPS with files in the cert-manager Secret layout."""

    dir: str = ""
    """Folder with ``tls.crt``, ``tls.key`` and (for client auth) ``ca.crt``."""
    client_auth: str = "none"
    """``none``, ``optional`` or ``require`` client certificates signed by ``ca.crt``
    (``optional`` and ``require`` need ``dir``)."""
    reload_interval: float = 5.0
    """Seconds between checks for rotated certificate files."""

    def __post_init__(self) -> None:
        if self.client_auth not in ("none", "optional", "require"):
            raise ConfigError("tls.client_auth must be none, optional or require")
        if self.client_auth != "none" and not self.dir:
            # Without a folder the server speaks plain HTTP and checks no certificate.
            raise ConfigError(
                f"server.tls.client_auth = {self.client_auth} needs server.tls.dir "
                "(without it the server serves plain HTTP)"
            )


@dataclass(frozen=True, kw_only=True)
class OidcConfig:
    """Sign-in at the codec server: OpenID Connect authorization code flow with PKCE.

    A person signs in through the organisation's identity provider and gets a
    session cookie on the codec server's origin, which the Web UI sends with
    "Include cross-origin credentials" (see ``docs/sign-in.md``).
    """

    issuer: str = ""
    """The OpenID Provider's issuer URL; its discovery document is
    ``<issuer>/.well-known/openid-configuration``. Empty: no sign-in."""
    client_id: str = ""
    """This codec server's client id at the IdP."""
    client_secret_file: str = ""
    """File holding the client secret (confidential client); empty for a public
    client (PKCE only). Never put the secret itself in the config file."""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    """Scopes requested at sign-in (``openid`` is required)."""
    session_lifetime: float = 8 * 3600.0
    """Longest a session lasts, in seconds; never past the ID token's ``exp``."""
    allow_insecure_issuer: bool = False
    """Accept a plain-``http://`` issuer that is not on loopback (never over an
    open network: whoever answers for the issuer can sign anyone in)."""
    acr_values: tuple[str, ...] = ()
    """``acr`` values the sign-in may ask the IdP for when a step-up rule needs
    them (a request for any other value is refused)."""

    def __post_init__(self) -> None:
        if not self.issuer:
            return
        parts = urlsplit(self.issuer)
        if not parts.hostname or parts.query or parts.fragment:
            raise ConfigError("server.oidc.issuer must be the provider's issuer URL")
        if parts.scheme != "https" and not (
            parts.scheme == "http"
            and (self.allow_insecure_issuer or is_loopback_host(parts.hostname))
        ):
            raise ConfigError(
                "server.oidc.issuer must be https:// (http:// only on loopback, or with "
                "server.oidc.allow_insecure_issuer = true): whoever answers for the issuer "
                "can sign anyone in"
            )
        if not self.client_id:
            raise ConfigError("server.oidc.client_id is required with server.oidc.issuer")
        if "openid" not in self.scopes:
            raise ConfigError("server.oidc.scopes must include openid")
        if not (0 < self.session_lifetime < math.inf):
            raise ConfigError("server.oidc.session_lifetime must be a positive number of seconds")

    @property
    def enabled(self) -> bool:
        """Whether sign-in is configured."""
        return bool(self.issuer)


@dataclass(frozen=True, kw_only=True)
class GrantsConfig:
    """Just-in-time access grants, kept as Temporal workflows (see ``docs/grants.md``)."""

    enabled: bool = False
    """Honour and manage grants (needs a Temporal connection: the usual
    ``TEMPORAL_*`` settings or a profile, read by ``temporalio.envconfig``)."""
    namespace: str = "default"
    """Temporal namespace that holds the grant workflows (give it its own, to
    which only codec servers may write)."""
    task_queue: str = "temporal-shield-grants"
    """Task queue of the grant workflows (the codec server runs their worker)."""
    refresh_interval: float = 2.0
    """Seconds between two reads of the active grants: a grant is honoured, and
    a revoked one refused, within about this long on every replica."""
    stale_after: float = 30.0
    """Seconds after the last successful read at which every grant stops being
    honoured (fail closed when Temporal cannot be reached)."""
    requests_per_hour: float = 10.0
    """Grant requests one person may file per hour at one codec server process
    (a burst of as many; 429 above): every request is a workflow that runs for
    up to a day, and every replica reads them all at each refresh."""
    max_open_requests: int = 5
    """Grants one person may have pending or approved at once, counted over every
    replica at each refresh (429 above): requests that wait a day for a decision
    cannot pile up past what a refresh reads."""

    def __post_init__(self) -> None:
        if not (0 < self.refresh_interval < math.inf) or not (0 < self.stale_after < math.inf):
            raise ConfigError("server.grants.refresh_interval and stale_after must be positive")
        if self.stale_after < self.refresh_interval:
            raise ConfigError("server.grants.stale_after must be at least refresh_interval")
        if not (0 < self.requests_per_hour < math.inf):
            raise ConfigError("server.grants.requests_per_hour must be a positive number")
        if self.max_open_requests < 1:
            raise ConfigError("server.grants.max_open_requests must be at least 1")


PLACEHOLDER_MODES = ("browser", "always", "never")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The codec server's own settings."""

    host: str = "127.0.0.1"
    """Listen address."""
    port: int = 8081
    """Listen port (0 = any free port)."""
    insecure_dev: bool = False
    """Run without authentication (every request is the identity ``insecure-dev``,
    allowed everything unless a policy is configured), on a loopback host only.
    Never in production."""
    cors_origins: tuple[str, ...] = ()
    """Exact origins allowed to call from a browser (the Web UI's URL)."""
    cors_credentials: bool = False
    """Send ``Access-Control-Allow-Credentials: true`` (the UI's include-credentials mode)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body (413 above)."""
    max_payloads: int = 1000
    """Most payloads in one request (400 above)."""
    max_payload_bytes: int = 4 * 1024 * 1024
    """Largest single payload ``data`` after base64 decoding (413 above)."""
    max_decoded_payload_bytes: int = 4 * 1024 * 1024
    """Largest payload the server decodes (its authenticated original length);
    a larger one comes back unchanged and is counted as withheld."""
    max_decoded_request_bytes: int = 16 * 1024 * 1024
    """Most decoded bytes in one response; payloads past it come back unchanged."""
    max_decoded_bytes_in_flight: int = 256 * 1024 * 1024
    """Memory all requests of the process may hold until their responses are
    sent: each request's body twice (the body, and the response that echoes
    what it does not decode) and 3 bytes per decoded byte (the payload and its
    base64 response). A payload past it comes back unchanged; a request whose
    body does not fit is refused (503 ``server_busy``). Size the container for
    this plus about 150 MiB."""
    max_decoded_bytes_in_flight_per_caller: int = 64 * 1024 * 1024
    """The share of ``max_decoded_bytes_in_flight`` one caller (``sub``) may hold:
    it takes several identities, not one, to spend the whole budget."""
    max_unwraps_per_request: int = 32
    """Most data-key unwraps (KMS ``Decrypt`` calls) one request may cause; payloads
    needing more come back unchanged. Cached keys and known-bad keys cost none."""
    principal_unwraps_per_minute: float = 120.0
    """Sustained unwraps (and new data keys for ``/encode``) per caller (``sub``)."""
    principal_unwrap_burst: int = 60
    """Unwraps a caller may spend at once before the per-minute rate applies."""
    body_read_timeout: float = 10.0
    """Seconds allowed to receive a request body (a slow sender gets 408)."""
    send_timeout: float = 30.0
    """Seconds allowed to deliver a decoded response; a client that does not read
    it is disconnected (its decoded bytes count against
    ``max_decoded_bytes_in_flight`` until then)."""
    max_connections: int = 2048
    """Open connections the process accepts; more are closed at once (bounds the
    memory of requests still arriving; put a per-client limit in the proxy)."""
    header_timeout: float = 10.0
    """Seconds a request head (request line and headers) may take to arrive
    once it has started; a slower one is answered 408 and the connection closed."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection stays open between requests (nginx's
    default; each one counts against ``max_connections``)."""
    max_header_bytes: int = 65536
    """Largest request line and header field (IdP tokens with many groups exceed
    aiohttp's 8 KiB default); larger ones get 431 JSON. A whole request head
    (at most 64 fields) may be this plus 32 KiB."""
    workers: int = 1
    """Processes serving ``port`` (``0``: one per CPU this process may run on). With
    more than one, a supervisor starts them and restarts any that dies; each keeps
    its own audit chain, caches and budgets (see ``docs/server.md``, "Workers")."""
    worker_timeout: float = WORKER_TIMEOUT
    """With ``workers`` > 1: seconds a worker may go without its heartbeat (sent
    from its event loop several times per timeout) before the supervisor kills
    and restarts it, as a worker whose event loop is stuck."""
    metrics_port: int = 0
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` (and nothing else) also on
    ``metrics_port + k`` for worker ``k``, so that Prometheus scrapes every worker;
    0 = not at all."""
    policy_file: str = ""
    """RBAC policy (YAML or TOML). Required unless insecure_dev."""
    public_url: str = ""
    """This codec server's URL as browsers reach it (``https://codec.example.com``):
    sign-in redirects come back here, and readable placeholders link here. Needed
    by ``oidc``; must be ``https://`` (``http://`` only on loopback)."""
    secret_file: str = ""
    """File with at least 32 random bytes shared by every replica (``temporal-shield
    secret init``): seals session cookies and sign-in state, and vouches for grant
    approvals. Needed by ``oidc`` and ``grants``; mode 0600, never in git."""
    placeholders: str = "browser"
    """What a payload the caller may not read is replaced with: ``browser``, a
    readable ``json/plain`` placeholder for browser requests (those with an
    ``Origin`` header; the CLI gets the payload unchanged); ``always``; ``never``
    (always unchanged). A placeholder can never be encoded back (``/encode`` refuses it)."""
    oidc: OidcConfig = field(default_factory=OidcConfig)
    """Sign-in at the codec server (session cookies)."""
    grants: GrantsConfig = field(default_factory=GrantsConfig)
    """Just-in-time access grants."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """Authentication."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """Audit sinks."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """HTTPS and client certificates."""

    def __post_init__(self) -> None:
        limits = (
            self.max_body_bytes,
            self.max_payloads,
            self.max_payload_bytes,
            self.max_decoded_payload_bytes,
            self.max_decoded_request_bytes,
            self.max_decoded_bytes_in_flight,
            self.max_decoded_bytes_in_flight_per_caller,
            self.body_read_timeout,
            self.send_timeout,
            self.max_connections,
            self.header_timeout,
            self.keepalive_timeout,
            self.max_header_bytes,
        )
        if any(value <= 0 for value in limits):
            raise ConfigError("server limits must be positive")
        if not self.host.strip():
            # asyncio reads "" as every interface: say so explicitly if that is meant.
            raise ConfigError(
                "server.host must not be empty (0.0.0.0 or :: listens on every interface)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError("server.port must be a port number (0 = any free port)")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(
                f"server.workers must be 0 (one per CPU) or 1-{MAX_WORKERS} "
                "(more would be processes without a core to run on)"
            )
        if not 1 <= self.worker_timeout <= 3600:
            raise ConfigError("server.worker_timeout must be between 1 and 3600 seconds")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("server.metrics_port must be a port number (0 = off)")
        if (
            self.max_unwraps_per_request < 0
            or self.principal_unwraps_per_minute < 0
            or self.principal_unwrap_burst < 0
        ):
            raise ConfigError("KMS budgets must be zero or positive")
        if self.placeholders not in PLACEHOLDER_MODES:
            raise ConfigError("server.placeholders must be browser, always or never")
        if (self.oidc.enabled or self.grants.enabled) and not self.secret_file:
            raise ConfigError(
                "server.oidc and server.grants need server.secret_file "
                "(create one with: temporal-shield secret init PATH)"
            )
        if self.oidc.enabled:
            if self.auth.public_key_files:
                # Static keys cannot be checked against the IdP's discovery
                # document (jwks_url is): they could be anyone's.
                raise ConfigError(
                    "server.auth.public_key_files cannot be used with server.oidc: set "
                    "server.auth.jwks_url to the identity provider's jwks_uri"
                )
            if self.auth.enabled and self.auth.issuer != self.oidc.issuer:
                # A person is known by `sub`, which is unique only within its
                # issuer: with two, one IdP's "alice" would get the other's
                # bindings and grants (and the audit trail could not tell).
                raise ConfigError(
                    "server.auth.issuer must be server.oidc.issuer: bearer tokens and "
                    "sign-in must come from the same identity provider (a subject is "
                    f"only unique within its issuer; got {self.auth.issuer!r} and "
                    f"{self.oidc.issuer!r})"
                )
            if not self.public_url:
                raise ConfigError("server.oidc needs server.public_url (where sign-in comes back)")
            _check_public_url(self.public_url)
            if self.cors_origins and not self.cors_credentials:
                # The UI sends the session cookie only in include-credentials
                # mode, and the browser then needs this header to read the answer.
                raise ConfigError(
                    "server.oidc with server.cors_origins needs server.cors_credentials = true"
                )
        if self.insecure_dev and not is_loopback_host(self.host):
            # Without authentication anyone who reaches the port decrypts as the
            # identity `insecure-dev`: only processes on this machine may reach it.
            raise ConfigError(
                f"--insecure-dev listens on loopback only (server.host {self.host!r}): "
                "use 127.0.0.1, ::1 or localhost, or configure authentication"
            )
        if not self.insecure_dev:
            if not (self.auth.enabled or self.oidc.enabled):
                raise ConfigError(
                    "no authenticator configured: set server.auth.jwks_url, "
                    "server.auth.public_key_files or server.oidc.issuer "
                    "(or --insecure-dev for local development)"
                )
            if self.auth.enabled and (not self.auth.issuer or not self.auth.audience):
                raise ConfigError("server.auth.issuer and server.auth.audience are required")
            if not self.policy_file:
                raise ConfigError("server.policy_file is required")
            if not (self.audit.file or self.audit.stdout):
                raise ConfigError("an audit sink is required: server.audit.file or .stdout")


SERVER_ENV: dict[str, tuple[str, ...]] = env_names(ServerConfig, (SERVER_SECTION,))
"""Every ``[server]`` setting: ``TEMPORAL_SHIELD_SERVER_<...>`` -> TOML path."""


def load_server_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ServerConfig, ShieldConfig]:
    """Load the ``[server]`` table and the converter settings from one file.

    Precedence: TOML < environment < ``overrides`` (command-line flags), where
    ``overrides`` maps dotted names under ``[server]`` (``"auth.issuer"``) to values.
    Every ``TEMPORAL_SHIELD_*`` variable must name a setting of either schema.

    Raises:
        ConfigError: invalid or incomplete configuration.
    """
    env = os.environ if env is None else env
    doc = load_document(path, env, {**ENV_VARS, **SERVER_ENV})
    server_doc = doc.pop(SERVER_SECTION, {})
    if not isinstance(server_doc, dict):
        raise ConfigError("[server] must be a table")
    for dotted, value in (overrides or {}).items():
        set_dotted(server_doc, dotted, value)
    # The converter sections first: a misspelt table name ([sever]) is reported as
    # such, not as the server settings it was meant to hold being missing.
    shield = build_shield(doc, env)
    return build(ServerConfig, server_doc, SERVER_SECTION), shield


REFERENCE_BEGIN = "<!-- settings reference: generated by temporal_shield.server._config -->"
REFERENCE_END = "<!-- end of settings reference -->"


def settings_reference() -> str:
    """Every setting of both schemas as Markdown (the block in docs/configuration.md)."""
    renamed = "\n".join(f"| `{old}` | `{new}` |" for old, new in DEPRECATED_ENV.items())
    return "\n".join(
        [
            reference_markdown(ShieldConfig),
            reference_markdown(ServerConfig, (SERVER_SECTION,)),
            "### Renamed environment variables\n",
            "Still read, with a warning; setting an old name and its new name together is",
            "an error.\n",
            f"| old name | new name |\n|---|---|\n{renamed}",
        ]
    )


def update_reference(path: str | Path) -> None:
    """Rewrite the generated block of ``path`` (docs/configuration.md) from the schema."""
    doc = Path(path).read_text()
    head, _, rest = doc.partition(REFERENCE_BEGIN)
    _, _, tail = rest.partition(REFERENCE_END)
    block = f"{REFERENCE_BEGIN}\n\n{settings_reference()}\n{REFERENCE_END}"
    Path(path).write_text(head + block + tail)
