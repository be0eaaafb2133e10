"""Load :class:`ShieldConfig` from a TOML file and environment variables.

Precedence, lowest first: built-in defaults, the TOML file, environment
variables, then values passed in code. Unknown keys are errors: a typo in a
security setting must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from temporal_shield.codec import ConfigError

from ._config import ShieldConfig

ENV_PREFIX = "TEMPORAL_SHIELD_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
"""Environment variable naming the TOML file to read."""

ENV_VARS: dict[str, tuple[str | None, str]] = {
    "KEY_URI": ("keys", "uri"),
    "DECRYPT_KEY_URIS": ("keys", "decrypt_uris"),
    "ALLOWED_KEY_IDS": ("keys", "allowed_key_ids"),
    "AWS_REGION": ("keys", "aws_region"),
    "KMS_ENDPOINT_URL": ("keys", "aws_endpoint_url"),
    "KMS_CONNECT_TIMEOUT": ("keys", "kms_connect_timeout"),
    "KMS_READ_TIMEOUT": ("keys", "kms_read_timeout"),
    "KMS_MAX_ATTEMPTS": ("keys", "kms_max_attempts"),
    "COMPRESSION": ("compression", "enabled"),
    "COMPRESSION_THRESHOLD": ("compression", "threshold"),
    "COMPRESSION_LEVEL": ("compression", "level"),
    "DEK_MAX_AGE": ("data_keys", "max_age"),
    "DEK_MAX_MESSAGES": ("data_keys", "max_messages"),
    "CLASSIFICATION": ("classification", "default"),
    "S3_BUCKET": ("storage", "s3_bucket"),
    "S3_THRESHOLD": ("storage", "threshold"),
    "S3_REGION": ("storage", "s3_region"),
    "S3_ENDPOINT_URL": ("storage", "s3_endpoint_url"),
    "S3_CONNECT_TIMEOUT": ("storage", "s3_connect_timeout"),
    "S3_READ_TIMEOUT": ("storage", "s3_read_timeout"),
    "S3_MAX_ATTEMPTS": ("storage", "s3_max_attempts"),
    "TLS_DIR": ("tls", "dir"),
    "TLS_CA": ("tls", "ca_file"),
    "TLS_CERT": ("tls", "cert_file"),
    "TLS_KEY": ("tls", "key_file"),
    "TLS_SERVER_NAME": ("tls", "server_name"),
    "NAMESPACE": (None, "namespace"),
    "STRICT_WORKFLOW_BINDING": (None, "strict_workflow_binding"),
    "ENCRYPT_FAILURES": (None, "encrypt_failures"),
    "MAX_PAYLOAD_BYTES": (None, "max_payload_bytes"),
}
"""``TEMPORAL_SHIELD_<NAME>`` → (section, field); lists are comma-separated."""

T = TypeVar("T")


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    other_sections: Collection[str] = (),
) -> ShieldConfig:
    """Build a :class:`ShieldConfig` from a TOML file and the environment.

    Args:
        path: TOML file; defaults to ``$TEMPORAL_SHIELD_CONFIG`` if set, else none.
        env: Environment mapping (default :data:`os.environ`); injectable for tests.
        other_sections: Top-level TOML tables owned by other components (e.g. the
            codec server's ``server``), skipped here instead of rejected.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    doc: dict[str, Any] = {}
    if path is not None:
        doc = read_toml(Path(path))
        for name in other_sections:
            doc.pop(name, None)
    for name, (section, key) in ENV_VARS.items():
        raw = env.get(ENV_PREFIX + name)
        if raw is None:
            continue
        target = doc.setdefault(section, {}) if section else doc
        if not isinstance(target, dict):
            raise ConfigError(f"[{section}] must be a table")
        target[key] = EnvValue(raw)
    return build(ShieldConfig, doc, "")


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a :class:`ConfigError`."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


class EnvValue(str):
    """A raw string from the environment, parsed according to the target type."""

    __slots__ = ()


def build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Construct dataclass ``cls`` from a TOML-like mapping, checking every type.

    Raises:
        ConfigError: unknown key, wrong type, or the dataclass rejects a value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where or 'config'}: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        label = f"{where}.{key}" if where else key
        if isinstance(hints[key], type) and dataclasses.is_dataclass(hints[key]):
            kwargs[key] = build(hints[key], value, label)  # a nested [section]
        else:
            kwargs[key] = _coerce(hints[key], value, label)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {where or 'config'}: {exc}") from None


def _coerce(tp: Any, value: Any, label: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if isinstance(value, EnvValue) and value == "":
            return None
        return _coerce(inner, value, label)
    if tp is bool:
        if isinstance(value, EnvValue):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
        raise ConfigError(f"{label} must be a boolean")
    if tp in (int, float):
        if isinstance(value, EnvValue):
            try:
                return tp(value)
            except ValueError:
                raise ConfigError(f"{label} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number")
        if tp is int and not isinstance(value, int):
            raise ConfigError(f"{label} must be an integer")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string")
        return str(value)
    if origin is tuple and args == (str, Ellipsis):
        if isinstance(value, EnvValue):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{label} must be a list of strings")
        return tuple(value)
    if origin is tuple and args == (tuple[str, str], Ellipsis):
        # A TOML table {pattern = "label"}; order is preserved (first match wins).
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{label} must be a table of strings")
        return tuple((str(k), v) for k, v in value.items())
    raise ConfigError(f"{label}: unsupported setting type")  # pragma: no cover
