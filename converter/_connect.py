"""Connection settings for ``Client.connect``: the SDK's ``envconfig`` plus our ``[tls]``.

Workers, ``scan``, ``keys rewrap`` and ``demo`` connect to Temporal the way the SDK
and the ``temporal`` CLI do: ``temporalio.envconfig`` reads ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS_*``, and TOML profiles
(``TEMPORAL_CONFIG_FILE``, ``TEMPORAL_PROFILE``). Our own ``[tls]`` section (a
cert-manager Secret folder) and explicit arguments (command-line flags) are laid
over that. Precedence, lowest first: the profile file, ``TEMPORAL_*`` variables,
our ``[tls]`` section, explicit ``address``/``namespace``.

Security settings never silently degrade: a TLS setting that cannot be honoured
(a missing folder or file, a certificate without its key, TLS configured both
ways, an unknown key in the profile file) is a
:class:`~temporal_shield.codec.ConfigError`, never a plaintext or half-configured
connection.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS
from temporalio.service import TLSConfig

from temporal_shield.codec import ConfigError

from ._config import ShieldConfig
from ._settings import load_config
from ._tls import temporal_tls

DEFAULT_ADDRESS = "localhost:7233"
"""The frontend address when neither a profile, ``TEMPORAL_ADDRESS`` nor an argument names one."""
CONFIG_FILE_ENV = "TEMPORAL_CONFIG_FILE"
"""The SDK's variable naming its TOML profile file."""
DEFAULT_NAMESPACE = "default"
"""The namespace when neither a profile, ``TEMPORAL_NAMESPACE`` nor an argument names one."""


def client_connect_config(
    config: ShieldConfig | None = None,
    *,
    address: str | None = None,
    namespace: str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    temporal_config_file: str | Path | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``temporalio.client.Client.connect``.

    Example::

        config = load_config()
        client = await Client.connect(
            **client_connect_config(config), plugins=[ShieldPlugin(config)]
        )

    Args:
        config: Our settings (their ``[tls]`` section is used); default
            :func:`load_config` (environment and ``TEMPORAL_SHIELD_CONFIG``).
        address: Frontend ``host:port``; overrides the profile and ``TEMPORAL_ADDRESS``.
        namespace: Namespace; overrides the profile and ``TEMPORAL_NAMESPACE``.
        profile: ``envconfig`` profile name; default ``TEMPORAL_PROFILE``, else ``default``.
        env: Environment mapping (default :data:`os.environ`); injectable for tests.
        temporal_config_file: The SDK's TOML profile file; default
            ``TEMPORAL_CONFIG_FILE``, else the SDK's default location.

    Returns:
        ``target_host`` and ``namespace`` always; ``tls``, ``api_key`` and
        ``rpc_metadata`` when configured.

    Raises:
        ConfigError: an unknown profile, an unreadable TLS file, a client
            certificate without its key (or the reverse), or TLS configured both
            in ``TEMPORAL_TLS_*``/the profile and in ``[tls]``.
    """
    if config is None:
        config = load_config(env=env)
    sdk = _load_profile(profile, env, temporal_config_file)
    kwargs: dict[str, Any] = {
        "target_host": address or sdk.address or DEFAULT_ADDRESS,
        "namespace": namespace or sdk.namespace or DEFAULT_NAMESPACE,
    }
    if sdk.api_key is not None:
        kwargs["api_key"] = sdk.api_key
        # The SDK's rule: an API key turns TLS on unless TLS is explicitly off
        # (TEMPORAL_TLS=false), which then sends the key in clear, as the SDK does.
        kwargs["tls"] = True
    if sdk.grpc_meta:
        kwargs["rpc_metadata"] = dict(sdk.grpc_meta)
    ours = temporal_tls(config)
    if ours is not None:
        if sdk.tls is not None and (sdk.tls.disabled is True or _has_material(sdk.tls)):
            raise ConfigError(
                "TLS to Temporal is configured twice (TEMPORAL_TLS_* or the profile, and "
                "temporal-shield's [tls]): use one of them"
            )
        if sdk.tls is not None and sdk.tls.server_name and not ours.domain:
            ours = TLSConfig(
                server_root_ca_cert=ours.server_root_ca_cert,
                client_cert=ours.client_cert,
                client_private_key=ours.client_private_key,
                domain=sdk.tls.server_name,
            )
        kwargs["tls"] = ours
    elif sdk.tls is not None:
        kwargs["tls"] = _sdk_tls(sdk.tls)
    return kwargs


def _load_profile(
    profile: str | None, env: Mapping[str, str] | None, path: str | Path | None
) -> ClientConfigProfile:
    named = path if path is not None else (os.environ if env is None else env).get(CONFIG_FILE_ENV)
    # The SDK skips a profile file that does not exist; a file someone named must exist,
    # or its TLS settings would be silently dropped.
    if named and not Path(named).is_file():
        raise ConfigError(f"Temporal connection settings: no such file {named}")
    try:
        return ClientConfigProfile.load(
            profile,
            config_source=Path(path) if path is not None else None,
            # Unknown keys are errors, as in our own file: a misspelt [profile.x.tls]
            # table or address was silently dropped (no TLS, or localhost:7233).
            # `temporal config set` writes nothing strict mode refuses.
            config_file_strict=True,
            override_env_vars=env,
        )
    except OSError as exc:
        raise ConfigError(f"Temporal connection settings: {exc.strerror}: {exc.filename}") from None
    except RuntimeError as exc:  # the bridge's ConfigError (no public import path)
        raise ConfigError(f"Temporal connection settings: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """The bridge's multi-line TOML errors as one line: the headline and the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # The middle lines quote the file; a type error quotes the value (an API key
    # in the wrong place): keep neither.
    text = lines[0] if len(lines) == 1 else f"{lines[0]}: {lines[-1]}"
    return _QUOTED_STRING.sub("string", text)


_QUOTED_STRING = re.compile(r'string "(?:[^"\\]|\\.)*"')


def _has_material(tls: ClientConfigTLS) -> bool:
    return any(
        source is not None
        for source in (tls.server_root_ca_cert, tls.client_cert, tls.client_private_key)
    )


def _sdk_tls(tls: ClientConfigTLS) -> bool | TLSConfig:
    """The profile's TLS, with the same checks as ours (files readable, cert and key paired)."""
    if (tls.client_cert is None) != (tls.client_private_key is None):
        raise ConfigError(
            "TEMPORAL_TLS_CLIENT_CERT_* and TEMPORAL_TLS_CLIENT_KEY_* must be given together"
        )
    try:
        return tls.to_connect_tls_config()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
