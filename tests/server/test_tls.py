"""HTTPS and mutual TLS for the codec server, with certificates from our own PKI code."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from temporal_shield.certs import (
    CLIENT_AUTH,
    LEAVES,
    SERVER_AUTH,
    dev_pki,
    issue,
    make_ca,
    write_secret,
)
from temporal_shield.server import ServerConfig, TlsConfig, create_app
from temporal_shield.server._tls import server_ssl_context

from ..integration.codec_server import running


def test_dev_pki_layout_and_usages(tmp_path: Path) -> None:
    folders = dev_pki(tmp_path)
    assert [f.name for f in folders][1:] == [spec.name for spec in LEAVES]
    ca = x509.load_pem_x509_certificate((tmp_path / "temporal-ca" / "tls.crt").read_bytes())
    for spec in LEAVES:
        folder = tmp_path / spec.name
        assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
        assert (folder / "ca.crt").read_bytes() == (
            tmp_path / "temporal-ca" / "tls.crt"
        ).read_bytes()
        cert.verify_directly_issued_by(ca)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        names = {"serverAuth": SERVER_AUTH, "clientAuth": CLIENT_AUTH}
        assert sorted(names[u._name] for u in eku) == sorted(spec.usages)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        local = ["localhost"] if SERVER_AUTH in spec.usages else []
        assert list(sans.get_values_for_type(x509.DNSName)) == [*spec.dns_names, *local]


def _client_context(ca_file: Path, cert_dir: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert_dir is not None:
        ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return ctx


async def _get(url: str, ctx: ssl.SSLContext) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz", ssl=ctx) as resp:
        return resp.status


async def test_https_and_mutual_tls(tmp_path: Path, shield_config: object) -> None:
    ca = make_ca()
    server_dir = tmp_path / "codec"
    write_secret(server_dir, issue(ca, dns_names=["localhost"], usages=[SERVER_AUTH]), ca.cert)
    clients = {
        "good": (issue(ca, dns_names=["temporal-ui"], usages=[CLIENT_AUTH]), ca),
        "expired": (issue(ca, dns_names=["temporal-ui"], usages=[CLIENT_AUTH], days=-1), ca),
    }
    other_ca = make_ca()
    clients["other-ca"] = (issue(other_ca, dns_names=["intruder"], usages=[CLIENT_AUTH]), other_ca)
    for name, (pair, issuer) in clients.items():
        write_secret(tmp_path / name, pair, issuer.cert)
    ca_file = server_dir / "ca.crt"
    config = ServerConfig(
        insecure_dev=True, tls=TlsConfig(dir=str(server_dir), client_auth="require")
    )
    app = create_app(config, shield_config)  # type: ignore[arg-type]
    ctx = server_ssl_context(config.tls, app)
    # TLS 1.2 or later, whatever the platform's OpenSSL defaults would allow (a
    # TLS 1.1 client cannot show it here: this OpenSSL refuses to offer 1.1).
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    async with running(app, ctx) as url:
        assert url.startswith("https://")
        assert await _get(url, _client_context(ca_file, tmp_path / "good")) == 200
        tls12 = _client_context(ca_file, tmp_path / "good")
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await _get(url, tls12) == 200
        for bad in (None, tmp_path / "expired", tmp_path / "other-ca"):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, OSError)):
                await _get(url, _client_context(ca_file, bad))


async def test_certificate_rotation_by_symlink_swap(tmp_path: Path, shield_config: object) -> None:
    """cert-manager/kubelet style: ..data -> timestamped dir, files are links into ..data."""
    ca = make_ca()
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(generation: int) -> x509.Certificate:
        pair = issue(ca, dns_names=["localhost"], usages=[SERVER_AUTH])
        target = mount / f"..{generation}"
        write_secret(target, pair, ca.cert)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, mount / "..data")  # atomic swap
        for name in ("tls.crt", "tls.key", "ca.crt"):
            if not (mount / name).is_symlink():
                (mount / name).symlink_to(f"..data/{name}")
        return pair.cert

    first = publish(1)
    config = ServerConfig(insecure_dev=True, tls=TlsConfig(dir=str(mount), reload_interval=0.2))
    app = create_app(config, shield_config)  # type: ignore[arg-type]
    ctx = server_ssl_context(config.tls, app)
    ca_file = mount / "ca.crt"

    async def served_serial(url: str) -> int:
        host, port = url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(host, int(port), ssl=_client_context(ca_file))
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return x509.load_der_x509_certificate(der).serial_number

    async with running(app, ctx) as url:
        assert await served_serial(url) == first.serial_number
        async with aiohttp.ClientSession() as session:
            # An in-flight keep-alive connection survives the swap.
            async with session.get(f"{url}/healthz", ssl=_client_context(ca_file)) as resp:
                assert resp.status == 200
            second = publish(2)
            for _ in range(50):
                if await served_serial(url) == second.serial_number:
                    break
                await asyncio.sleep(0.1)
            assert await served_serial(url) == second.serial_number
            async with session.get(f"{url}/healthz", ssl=_client_context(ca_file)) as resp:
                assert resp.status == 200
