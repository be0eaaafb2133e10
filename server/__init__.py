"""The remote codec server for the Temporal Web UI and CLI.

JWT-authenticated, RBAC-authorised (per namespace, operation and data
classification), audited (hash-chained JSON Lines), traced and metered
(OpenTelemetry), over HTTPS with optional client certificates.
"""

from ._app import STATE, State, create_app
from ._audit import AuditError, AuditLog
from ._auth import Authenticator, AuthError
from ._config import AuditConfig, AuthConfig, ServerConfig, TlsConfig, load_server_config
from ._identity import DEV_IDENTITY, Identity
from ._policy import Decision, Policy, Role
from ._service import CodecService, Forbidden, Outcome
from ._telemetry import Telemetry
from ._verify import VerifyResult, verify

__all__ = [
    "DEV_IDENTITY",
    "STATE",
    "AuditConfig",
    "AuditError",
    "AuditLog",
    "AuthConfig",
    "AuthError",
    "Authenticator",
    "CodecService",
    "Decision",
    "Forbidden",
    "Identity",
    "Outcome",
    "Policy",
    "Role",
    "ServerConfig",
    "State",
    "Telemetry",
    "TlsConfig",
    "VerifyResult",
    "create_app",
    "load_server_config",
    "verify",
]
