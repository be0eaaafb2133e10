"""A real mutual-TLS hop: nginx terminates mTLS in front of the dev server and proxies gRPC."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from temporal_shield._devserver import DevServer, free_port
from temporal_shield.certs import CLIENT_AUTH, SERVER_AUTH, issue, make_ca, write_secret
from temporal_shield.codec import Keyring
from temporal_shield.converter import (
    KeysConfig,
    ShieldConfig,
    ShieldPlugin,
    TemporalTlsConfig,
    temporal_tls,
)

from ..helpers import require
from .workflows import MARK, EchoWorkflow, mark

pytestmark = pytest.mark.integration

NGINX_CONF = """
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{}}
http {{
  access_log off;
  client_body_temp_path {run}/body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {pki}/frontend/tls.crt;
    ssl_certificate_key {pki}/frontend/tls.key;
    ssl_client_certificate {pki}/frontend/ca.crt;
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      grpc_pass grpc://{upstream};
      grpc_read_timeout 300s;
      grpc_send_timeout 300s;
    }}
  }}
}}
"""


@contextmanager
def nginx_mtls_hop(nginx: str, tmp_path: Path, pki: Path, upstream: str) -> Iterator[str]:
    """nginx on a free port with :data:`NGINX_CONF` (server certificate
    ``pki/frontend``, client certificates required); yields its address."""
    run = tmp_path / "nginx"
    run.mkdir()
    port = free_port()
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, port=port, pki=pki, upstream=upstream))
    proc = subprocess.Popen(
        [nginx, "-p", str(run), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def mtls_proxy(dev_server: DevServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    require(Path(nginx).exists(), "nginx is not installed (apt-get install nginx)")
    pki = tmp_path / "pki"
    ca = make_ca()
    write_secret(
        pki / "frontend", issue(ca, dns_names=["localhost"], usages=[SERVER_AUTH]), ca.cert
    )
    write_secret(
        pki / "worker", issue(ca, dns_names=["temporal-worker"], usages=[CLIENT_AUTH]), ca.cert
    )
    write_secret(
        pki / "expired",
        issue(ca, dns_names=["temporal-worker"], usages=[CLIENT_AUTH], days=-1),
        ca.cert,
    )
    other = make_ca()
    write_secret(
        pki / "foreign", issue(other, dns_names=["intruder"], usages=[CLIENT_AUTH]), ca.cert
    )
    with nginx_mtls_hop(nginx, tmp_path, pki, dev_server.address) as address:
        yield address, pki


async def test_encrypted_workflow_through_mtls_and_rejections(
    mtls_proxy: tuple[str, Path], dev_server: DevServer, tmp_path: Path
) -> None:
    address, pki = mtls_proxy
    ring = tmp_path / "keyring.json"
    Keyring.new().save(ring)
    config = ShieldConfig(
        keys=KeysConfig(uri=f"local://{ring}"),
        tls=TemporalTlsConfig(dir=str(pki / "worker"), server_name="localhost"),
    )
    tls = temporal_tls(config)
    assert tls is not None
    client = await Client.connect(address, tls=tls, plugins=[ShieldPlugin(config)])
    workflow_id = f"mtls-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=workflow_id, workflows=[EchoWorkflow]):
        result = await client.execute_workflow(
            EchoWorkflow.run, mark("mtls"), id=workflow_id, task_queue=workflow_id
        )
    assert result == mark("mtls")
    # What the server stored (read directly, behind the proxy) is ciphertext.
    raw = await Client.connect(dev_server.address)
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    assert MARK.encode() not in b"".join(e.SerializeToString() for e in history.events)

    ca = (pki / "frontend" / "ca.crt").read_bytes()
    rejected = {
        "no client certificate": TLSConfig(server_root_ca_cert=ca, domain="localhost"),
        "certificate from another CA": _tls_from(pki / "foreign", ca),
        "expired certificate": _tls_from(pki / "expired", ca),
    }
    for name, bad in rejected.items():
        with pytest.raises(Exception) as info:  # noqa: PT011 - the SDK raises RuntimeError/RPCError
            await asyncio.wait_for(Client.connect(address, tls=bad), 30)
        assert not isinstance(info.value, asyncio.TimeoutError), name


def _tls_from(folder: Path, ca: bytes) -> TLSConfig:
    return TLSConfig(
        server_root_ca_cert=ca,
        client_cert=(folder / "tls.crt").read_bytes(),
        client_private_key=(folder / "tls.key").read_bytes(),
        domain="localhost",
    )
