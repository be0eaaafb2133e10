"""Every way ``temporal-shield scan`` can fail: status 2, one line on stderr, no traceback.

Runs the real console script as a subprocess against a real dev server (or a
port nothing listens on).
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from temporal_shield._devserver import DevServer, free_port

from .test_scan_temporal_written import run_cli

pytestmark = pytest.mark.integration


def _self_signed_ca(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scan test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _assert_one_line_error(out: object, *, expect: str) -> None:
    import subprocess

    assert isinstance(out, subprocess.CompletedProcess)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert lines[0].startswith("temporal-shield")
    assert expect in lines[0], lines[0]


async def test_scan_error_paths_exit_2_with_one_line(dev_server: DevServer, tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    server = ["scan", "--address", dev_server.address]
    ca = _self_signed_ca(tmp_path / "ca.pem")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["scan", "--address", nowhere], {}, f"cannot connect to Temporal at {nowhere}"),
        ([*server, "--namespace", "no-such-namespace"], {}, "no-such-namespace"),
        ([*server, "--query", "WorkflowId ==== 'x'"], {}, "invalid visibility query"),
        ([*server, "--query", "NoSuchAttribute = 'x'"], {}, "invalid visibility query"),
        (
            server,
            {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(tmp_path / "missing-ca.pem")},
            "missing-ca.pem",
        ),
        # TLS configured, the server speaks plaintext: the handshake fails
        (server, {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(ca)}, "cannot connect to Temporal"),
        ([*server, "--config", str(tmp_path / "missing.toml")], {}, "missing.toml"),
        ([*server, "--concurrency", "0"], {}, "--concurrency"),
        ([*server, "--concurrency", "many"], {}, "--concurrency"),
        ([*server, "--limit", "-1"], {}, "--limit"),
        ([*server, "--output", "xml"], {}, "--output"),
        ([*server, "--no-such-flag"], {}, "--no-such-flag"),
    ]
    for argv, env, expect in cases:
        out = await asyncio.to_thread(run_cli, argv, env)
        _assert_one_line_error(out, expect=expect)
