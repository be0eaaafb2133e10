"""Load :class:`ShieldConfig` from a TOML file and environment variables.

Precedence, lowest first: built-in defaults, the TOML file, environment
variables, then values passed in code. Unknown keys are errors: a typo in a
security setting must not silently fall back to a default.

The environment names are derived from the schema, never listed by hand:
``TEMPORAL_SHIELD_<SECTION>_<FIELD>`` for a field of a ``[section]``
(``TEMPORAL_SHIELD_KEYS_AWS_ENDPOINT_URL``), ``TEMPORAL_SHIELD_<FIELD>`` for a
top-level one, and ``TEMPORAL_SHIELD_SERVER_<...>`` for the codec server's
``[server]`` table (validated by the server, which owns that schema). Any other
``TEMPORAL_SHIELD_*`` variable is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import logging
import math
import os
import re
import textwrap
import tomllib
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from temporal_shield.codec import ConfigError

from ._config import ShieldConfig, config_home, default_key_uri

log = logging.getLogger("temporal_shield.config")

ENV_PREFIX = "TEMPORAL_SHIELD_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
"""Environment variable naming the TOML file to read."""
GRANTS_CLI_ENV = (ENV_PREFIX + "SERVER_URL", ENV_PREFIX + "TOKEN")
"""The ``grants`` command's codec server URL and bearer token (see ``docs/grants.md``)."""
NON_SETTING_ENV = frozenset({CONFIG_ENV, *GRANTS_CLI_ENV})
"""``TEMPORAL_SHIELD_*`` variables that are not settings (and so not errors): an
approver who exports the grants command's variables can still run a worker or
``serve`` from the same shell."""
SERVER_SECTION = "server"
"""The codec server's table in the shared file; workers leave it to the server."""
SERVER_SHARED_NAMES = frozenset({"tls", "max_payload_bytes"})
"""Names that are settings both at the top level and under ``[server]`` (a test
checks this against both schemas); every other top-level name is the converter's."""
CONFIG_FILE_NAME = "shield.toml"
"""Name of the default configuration file under ``$XDG_CONFIG_HOME/temporal-shield/``."""


def env_names(cls: type[Any], path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every setting of dataclass ``cls``: ``TEMPORAL_SHIELD_...`` name -> TOML path.

    A nested dataclass is a ``[section]``; its fields are named
    ``<SECTION>_<FIELD>``. ``path`` is the section ``cls`` sits in.
    """
    names: dict[str, tuple[str, ...]] = {}
    for name, tp, _ in schema_fields(cls):
        if _is_section(tp):
            names.update(env_names(tp, (*path, name)))
        else:
            names[ENV_PREFIX + "_".join((*path, name)).upper()] = (*path, name)
    return names


def schema_fields(cls: type[Any]) -> Iterator[tuple[str, Any, dataclasses.Field[Any]]]:
    """``(name, resolved type, field)`` of every settable field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            yield f.name, hints[f.name], f


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


ENV_VARS: dict[str, tuple[str, ...]] = env_names(ShieldConfig)
"""Every converter setting: environment variable -> TOML path (lists are comma-separated)."""

DEPRECATED_ENV: dict[str, str] = {
    ENV_PREFIX + old: ENV_PREFIX + new
    for old, new in {
        "KEY_URI": "KEYS_URI",
        "DECRYPT_KEY_URIS": "KEYS_DECRYPT_URIS",
        "ALLOWED_KEY_IDS": "KEYS_ALLOWED_KEY_IDS",
        "AWS_REGION": "KEYS_AWS_REGION",
        "KMS_ENDPOINT_URL": "KEYS_AWS_ENDPOINT_URL",
        "KMS_CONNECT_TIMEOUT": "KEYS_KMS_CONNECT_TIMEOUT",
        "KMS_READ_TIMEOUT": "KEYS_KMS_READ_TIMEOUT",
        "KMS_MAX_ATTEMPTS": "KEYS_KMS_MAX_ATTEMPTS",
        "COMPRESSION": "COMPRESSION_ENABLED",
        "DEK_MAX_AGE": "DATA_KEYS_MAX_AGE",
        "DEK_MAX_MESSAGES": "DATA_KEYS_MAX_MESSAGES",
        "CLASSIFICATION": "CLASSIFICATION_DEFAULT",
        "S3_BUCKET": "STORAGE_S3_BUCKET",
        "S3_THRESHOLD": "STORAGE_THRESHOLD",
        "S3_REGION": "STORAGE_S3_REGION",
        "S3_ENDPOINT_URL": "STORAGE_S3_ENDPOINT_URL",
        "S3_CONNECT_TIMEOUT": "STORAGE_S3_CONNECT_TIMEOUT",
        "S3_READ_TIMEOUT": "STORAGE_S3_READ_TIMEOUT",
        "S3_MAX_ATTEMPTS": "STORAGE_S3_MAX_ATTEMPTS",
        "TLS_CA": "TLS_CA_FILE",
        "TLS_CERT": "TLS_CERT_FILE",
        "TLS_KEY": "TLS_KEY_FILE",
        "SERVER_JWKS_URL": "SERVER_AUTH_JWKS_URL",
        "SERVER_ALLOW_INSECURE_JWKS_URL": "SERVER_AUTH_ALLOW_INSECURE_JWKS_URL",
        "SERVER_JWT_ISSUER": "SERVER_AUTH_ISSUER",
        "SERVER_JWT_AUDIENCE": "SERVER_AUTH_AUDIENCE",
        "SERVER_JWT_PUBLIC_KEY_FILES": "SERVER_AUTH_PUBLIC_KEY_FILES",
    }.items()
}
"""Names from before the schema-derived ones (the server's too): still read, with a
warning; setting both an old and its new name is an error."""

T = TypeVar("T")


def config_path(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """The TOML file to read.

    ``path``, else ``$TEMPORAL_SHIELD_CONFIG``, else
    ``$XDG_CONFIG_HOME/temporal-shield/shield.toml`` if that file exists, else none.
    """
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    home = config_home(env)
    default = home / "temporal-shield" / CONFIG_FILE_NAME if home is not None else None
    return default if default is not None and default.is_file() else None


def load_document(
    path: str | Path | None,
    env: Mapping[str, str],
    names: Mapping[str, tuple[str, ...]],
    *,
    foreign_prefixes: Collection[str] = (),
) -> dict[str, Any]:
    """The TOML document with every ``TEMPORAL_SHIELD_*`` variable laid over it.

    Args:
        path: TOML file (see :func:`config_path` for the default).
        env: The environment.
        names: Known settings (:func:`env_names`), deprecated aliases included via
            :data:`DEPRECATED_ENV`.
        foreign_prefixes: Variable prefixes owned by a schema another component
            validates (left alone here).

    Raises:
        ConfigError: unreadable file, an unknown ``TEMPORAL_SHIELD_*`` variable, or
            a deprecated name set together with its new name.
    """
    file = config_path(path, env)
    doc: dict[str, Any] = read_toml(file) if file is not None else {}
    unknown: list[str] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            # Names are case-sensitive: ``temporal_shield_tls_dir`` would otherwise be
            # ignored and leave the setting at its default.
            if var.upper().startswith(ENV_PREFIX):
                unknown.append(var)
            continue
        if var in NON_SETTING_ENV:
            continue
        name = DEPRECATED_ENV.get(var, var)
        if name in names:
            if name != var:
                if name in env:
                    raise ConfigError(f"both {var} (deprecated) and {name} are set: keep {name}")
                log.warning("%s is deprecated: rename it to %s", var, name)
            _set(doc, names[name], EnvValue(env[var], var))
        elif not any(var.startswith(prefix) for prefix in foreign_prefixes):
            unknown.append(var)
    if unknown:
        known = [*names, *DEPRECATED_ENV, *NON_SETTING_ENV]
        hints = [
            f"{var} (did you mean {close[0]}?)" if close else var
            for var in unknown
            for close in [_close_name(var, known, foreign_prefixes)]
        ]
        raise ConfigError(f"unknown environment variable(s): {', '.join(hints)}")
    return doc


def _close_name(var: str, known: Collection[str], foreign_prefixes: Collection[str]) -> list[str]:
    """The known name ``var`` was probably meant to be (upper-case first)."""
    upper = var.upper()
    if upper != var and (upper in known or any(upper.startswith(p) for p in foreign_prefixes)):
        return [upper]
    return difflib.get_close_matches(upper, known, n=1)


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *parents, leaf = path
    for part in parents:
        doc = doc.setdefault(part, {})
        if not isinstance(doc, dict):
            raise ConfigError(f"[{part}] must be a table")
    doc[leaf] = value


def set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a TOML-like document (creating tables as needed)."""
    _set(doc, tuple(dotted.split(".")), value)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    other_sections: Collection[str] = (),
) -> ShieldConfig:
    """Build a :class:`ShieldConfig` from a TOML file and the environment.

    The codec server's ``[server]`` table and ``TEMPORAL_SHIELD_SERVER_*`` variables
    are left to the server (:func:`temporal_shield.server.load_server_config`
    checks them), so workers and the server share one file.

    Args:
        path: TOML file; default ``$TEMPORAL_SHIELD_CONFIG``, else
            ``$XDG_CONFIG_HOME/temporal-shield/shield.toml`` (``~/.config/...``)
            if it exists, else none.
        env: Environment mapping (default :data:`os.environ`); injectable for tests.
        other_sections: Further top-level TOML tables owned by other components,
            skipped here instead of rejected.

    Raises:
        ConfigError: unreadable file, unknown key or ``TEMPORAL_SHIELD_*`` variable,
            wrong type or invalid value.
    """
    env = os.environ if env is None else env
    doc = load_document(path, env, ENV_VARS, foreign_prefixes=[server_env_prefix()])
    _check_misplaced(doc.get(SERVER_SECTION))
    for name in (SERVER_SECTION, *other_sections):
        doc.pop(name, None)
    return build_shield(doc, env)


def _check_misplaced(server: Any) -> None:
    """Refuse converter settings written under ``[server]``, which workers skip.

    TOML puts every key after a ``[server]`` header into that table, so a
    ``require_encryption`` added at the end of the file would be dropped by every
    worker (the server, which checks ``[server]``, may not read this file).
    """
    if not isinstance(server, Mapping):
        return  # the server reports a [server] that is not a table
    ours = {name for name, _, _ in schema_fields(ShieldConfig)} - SERVER_SHARED_NAMES
    misplaced = sorted(set(server) & ours)
    if misplaced:
        names = ", ".join(f"server.{name}" for name in misplaced)
        raise ConfigError(
            f"{names} in the config: converter settings go above [server] "
            "(TOML puts every key after a [server] header into it)"
        )


def server_env_prefix() -> str:
    """``TEMPORAL_SHIELD_SERVER_``: the codec server's variables."""
    return ENV_PREFIX + SERVER_SECTION.upper() + "_"


def build_shield(doc: Mapping[str, Any], env: Mapping[str, str]) -> ShieldConfig:
    """:class:`ShieldConfig` from a document without ``[server]``.

    The keyring's default location follows ``env``'s ``XDG_CONFIG_HOME``.
    """
    keys = doc.get("keys", {})
    if isinstance(keys, Mapping) and "uri" not in keys:
        doc = {**doc, "keys": {**keys, "uri": default_key_uri(env)}}
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
    """A raw string from the environment, parsed according to the target type.

    Surrounding whitespace is ignored. An empty value unsets an optional setting
    and is an error for any other: it would silently replace the file's value
    (``TEMPORAL_SHIELD_TLS_DIR=""`` from a template once meant plaintext).
    """

    var: str
    """The variable it came from (for error messages)."""

    def __new__(cls, value: str, var: str = "") -> EnvValue:
        self = super().__new__(cls, value.strip())
        self.var = var
        return self


def build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Construct dataclass ``cls`` from a TOML-like mapping, checking every type.

    Raises:
        ConfigError: unknown key, wrong type, or the dataclass rejects a value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table")
    assert dataclasses.is_dataclass(cls)
    hints = {name: tp for name, tp, _ in schema_fields(cls)}
    names = set(hints)
    unknown = sorted(set(data) - names)
    if unknown:
        named = [
            f"{name} (did you mean {close[0]}?)" if close else name
            for name in unknown
            for close in [difflib.get_close_matches(str(name), sorted(names), n=1)]
        ]
        raise ConfigError(f"unknown setting(s) in {where or 'config'}: {', '.join(named)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        label = f"{where}.{key}" if where else key
        if _is_section(hints[key]):
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
        if value == "":  # from the file too: aws_endpoint_url = "" is no endpoint
            return None
        return _coerce(inner, value, label)
    if isinstance(value, EnvValue) and not any(v.strip() for v in value.split(",")):
        raise ConfigError(
            f"{value.var or label} is empty: unset it or give {label} a value "
            "(an empty value would replace the file's or the default)"
        )
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
                number = tp(value)
            except ValueError:
                raise ConfigError(f"{label} must be a number") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number")
        elif tp is int and not isinstance(value, int):
            raise ConfigError(f"{label} must be an integer")
        else:
            number = tp(value)
        # nan compares false with every bound (a JWT leeway of nan accepted expired
        # tokens; a data-key max_age of nan never reuses a key); TOML and float() take it.
        if not math.isfinite(number):
            raise ConfigError(f"{label} must be a finite number")
        return number
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
        if isinstance(value, EnvValue):  # "pattern=label,pattern=label"
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            if any(not sep or not k.strip() for k, sep, _ in pairs):
                raise ConfigError(f"{label} must be comma-separated pattern=label pairs")
            return tuple((k.strip(), v.strip()) for k, _, v in pairs)
        # A TOML table {pattern = "label"}; order is preserved (first match wins).
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{label} must be a table of strings")
        return tuple((str(k), v) for k, v in value.items())
    raise ConfigError(f"{label}: unsupported setting type")  # pragma: no cover


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The docstrings written under each field of dataclass ``cls`` (from its source)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _markdown(text: str) -> str:
    """A docstring as one Markdown table cell (reST roles and literals to code spans)."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(text.split()))
    return text.replace("``", "`").replace("|", "\\|")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return _type_name(next(a for a in args if a is not type(None))) + " (empty: unset)"
    if origin is tuple:
        if args[0] == tuple[str, str]:
            return "table of strings (env: `glob=label,...`)"
        return "list of strings (env: comma-separated)"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]


def _default(f: dataclasses.Field[Any], tp: Any) -> str:
    if f.default is dataclasses.MISSING:
        return "see description"  # computed at start-up (host name, XDG path)
    value = f.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == () and typing.get_args(tp)[0] == tuple[str, str]:
        return "`{}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f'`"{value}"`' if isinstance(value, str) else f"`{value}`"


def reference_markdown(cls: type[Any], path: tuple[str, ...] = ()) -> str:
    """Markdown tables of every setting of ``cls``, one per ``[section]``.

    Each row: the TOML key, its environment variable, type, default and the
    docstring under the field (docs/configuration.md is generated from this).
    """
    docs = field_docs(cls)
    rows: list[str] = []
    sections: list[str] = []
    for name, tp, f in schema_fields(cls):
        if _is_section(tp):
            sections.append(reference_markdown(tp, (*path, name)))
            continue
        env = ENV_PREFIX + "_".join((*path, name)).upper()
        doc = _markdown(docs.get(name, ""))
        rows.append(f"| `{name}` | `{env}` | {_type_name(tp)} | {_default(f, tp)} | {doc} |")
    title = f"### `[{'.'.join(path)}]`" if path else "### Top level"
    head = "| setting | environment | type | default | meaning |\n|---|---|---|---|---|"
    table = f"{title}\n\n{head}\n" + "\n".join(rows) + "\n" if rows else ""
    return "\n".join([table, *sections]) if table else "\n".join(sections)
