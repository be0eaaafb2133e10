"""Map the converter's TLS settings onto ``temporalio.service.TLSConfig``."""

from __future__ import annotations

from pathlib import Path

from temporalio.service import TLSConfig

from temporal_shield.codec import ConfigError

from ._config import ShieldConfig


def temporal_tls(config: ShieldConfig) -> TLSConfig | None:
    """The SDK TLS settings for connecting to the Temporal frontend, or ``None``.

    Most callers want :func:`client_connect_config`, which also reads the SDK's
    ``envconfig`` (``TEMPORAL_ADDRESS``, ``TEMPORAL_TLS_*``, profiles) and uses this.

    Raises:
        ConfigError: ``dir`` is not a folder or holds none of the files, a named
            file is missing, or only one of certificate and key is set.
    """
    tls = config.tls
    if not tls.enabled:
        return None
    folder = Path(tls.dir) if tls.dir else None
    if folder is not None and not folder.is_dir():
        # Once this yielded TLS with no CA and no client certificate.
        raise ConfigError(f"tls.dir {folder} is not a folder")

    def pick(explicit: str, name: str) -> Path | None:
        if explicit:
            return Path(explicit)
        if folder is not None and (folder / name).exists():
            return folder / name
        return None

    ca, cert, key = (
        pick(tls.ca_file, "ca.crt"),
        pick(tls.cert_file, "tls.crt"),
        pick(tls.key_file, "tls.key"),
    )
    if (cert is None) != (key is None):
        raise ConfigError("TLS client certificate and key must be given together")
    if folder is not None and ca is None and cert is None:
        raise ConfigError(f"tls.dir {folder} has none of ca.crt, tls.crt and tls.key")

    def read(path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read TLS file {path}: {exc.strerror}") from None

    return TLSConfig(
        server_root_ca_cert=read(ca),
        client_cert=read(cert),
        client_private_key=read(key),
        domain=tls.server_name or None,
    )
