"""A local PKI in the cert-manager Secret layout, matching ``deploy/`` by name and usage.

``temporal-shield certs dev --out DIR`` writes one folder per certificate with
``tls.crt``, ``tls.key`` (mode 0600) and ``ca.crt`` — exactly what cert-manager
puts into a Secret and what a pod sees where that Secret is mounted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_AUTH = "server auth"
CLIENT_AUTH = "client auth"
_EKU = {SERVER_AUTH: ExtendedKeyUsageOID.SERVER_AUTH, CLIENT_AUTH: ExtendedKeyUsageOID.CLIENT_AUTH}


@dataclass(frozen=True, kw_only=True)
class LeafSpec:
    """One leaf certificate, named like its cert-manager ``Certificate`` and Secret."""

    name: str
    """Secret (and folder) name."""
    dns_names: tuple[str, ...]
    """Subject alternative DNS names (the first is also the common name)."""
    usages: tuple[str, ...]
    """cert-manager usages beyond ``digital signature``/``key encipherment``."""


LOCAL_NAMES = ("localhost",)
"""Added by :func:`dev_pki` to server certificates so they also work on loopback."""

LEAVES: tuple[LeafSpec, ...] = (
    LeafSpec(
        name="temporal-frontend-tls",
        dns_names=("temporal-frontend", "temporal-frontend.temporal.svc.cluster.local"),
        usages=(SERVER_AUTH,),
    ),
    LeafSpec(
        name="temporal-internode-tls",
        dns_names=("temporal-internode", "temporal-history", "temporal-matching"),
        usages=(SERVER_AUTH, CLIENT_AUTH),
    ),
    LeafSpec(name="temporal-worker-tls", dns_names=("temporal-worker",), usages=(CLIENT_AUTH,)),
    LeafSpec(name="temporal-ui-tls", dns_names=("temporal-ui",), usages=(CLIENT_AUTH,)),
    LeafSpec(name="temporal-admin-tls", dns_names=("temporal-admin",), usages=(CLIENT_AUTH,)),
    LeafSpec(
        name="temporal-shield-codec-tls",
        dns_names=("temporal-shield-codec", "temporal-shield-codec.temporal.svc.cluster.local"),
        usages=(SERVER_AUTH, CLIENT_AUTH),
    ),
)
"""The same set, names, DNS names and usages as the Certificates in
``deploy/base/pki`` (a test keeps the two in step)."""

CA_NAME = "temporal-ca"


@dataclass(frozen=True)
class IssuedPair:
    """A key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """CA: certificate and CRL signing; leaf: signatures (ECDSA handshakes)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "temporal-shield dev PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(*, days: int = 365, now: dt.datetime | None = None) -> IssuedPair:
    """A self-signed root CA (``isCA: true``)."""
    now = now or dt.datetime.now(dt.UTC)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedPair(key, cert)


def issue(
    ca: IssuedPair,
    *,
    dns_names: Sequence[str],
    usages: Sequence[str],
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 90,
    now: dt.datetime | None = None,
) -> IssuedPair:
    """A leaf certificate signed by ``ca`` with explicit extended key usages.

    ``days`` may be negative to make an already-expired certificate (tests).
    """
    now = now or dt.datetime.now(dt.UTC)
    key = _key()
    start, end = sorted((now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)))
    if days < 0:
        start = end - dt.timedelta(days=1)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([_EKU[u] for u in usages]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return IssuedPair(key, cert)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode does not apply to an existing file


def write_secret(folder: Path, pair: IssuedPair, ca: x509.Certificate) -> None:
    """Write ``tls.crt``, ``tls.key`` (0600) and ``ca.crt`` like a mounted Secret."""
    folder.mkdir(parents=True, exist_ok=True)
    key_pem = pair.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(folder / "tls.key", key_pem, 0o600)
    _write(folder / "tls.crt", _pem_cert(pair.cert), 0o644)
    _write(folder / "ca.crt", _pem_cert(ca), 0o644)


def dev_pki(out: Path) -> list[Path]:
    """Create the CA and every leaf of :data:`LEAVES` under ``out``.

    Returns:
        The folders written, CA first.
    """
    ca = make_ca()
    write_secret(out / CA_NAME, ca, ca.cert)
    folders = [out / CA_NAME]
    for spec in LEAVES:
        names = spec.dns_names + (LOCAL_NAMES if SERVER_AUTH in spec.usages else ())
        pair = issue(ca, dns_names=names, usages=spec.usages)
        write_secret(out / spec.name, pair, ca.cert)
        folders.append(out / spec.name)
    return folders
