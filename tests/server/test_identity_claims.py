"""Identity claims count only as much as they prove (issue 9 §3).

An email binding needs ``email_verified: true``; a groups claim must be a list
of strings; the JWKS that vouches for every token must come over https.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload

from temporal_shield.codec import ConfigError
from temporal_shield.converter import ShieldConfig, build_codec
from temporal_shield.server import AuthConfig
from temporal_shield.server._config import load_server_config
from temporal_shield.server._identity import Identity
from temporal_shield.server._policy import Policy

from .conftest import ClientFactory, wire_body
from .idp import AUDIENCE, ISSUER, Idp

SECRET = b'"card-number"'
ROLES = {"finance": {"namespaces": ["*"], "operations": ["decode"], "classifications": ["*"]}}


def _policy(**extra: Any) -> Policy:
    return Policy.from_mapping(
        {"roles": ROLES, "bindings": [{"role": "finance", "emails": ["CFO@example.com"]}], **extra}
    )


def test_email_binding_needs_a_verified_email() -> None:
    policy = _policy()
    unverified = Identity(subject="x", email="cfo@example.com")
    verified = Identity(subject="x", email="cfo@example.com", email_verified=True)
    assert not policy.decide(unverified, "pay", "decode", "pci").allowed
    assert policy.decide(verified, "pay", "decode", "pci").allowed


def test_trust_unverified_email_is_an_explicit_policy_opt_out() -> None:
    policy = _policy(trust_unverified_email=True)
    assert policy.decide(
        Identity(subject="x", email="cfo@example.com"), "p", "decode", "pci"
    ).allowed
    with pytest.raises(ConfigError, match="trust_unverified_email must be true or false"):
        _policy(trust_unverified_email="yes")


async def _decode_as(client: Any, token: str, payload: Payload) -> list[bytes]:
    resp = await client.post(
        "/decode",
        json=wire_body(payload),
        headers={"Authorization": f"Bearer {token}", "X-Namespace": "pay-eu"},
    )
    assert resp.status == 200
    return [base64.b64decode(p["data"]) for p in (await resp.json())["payloads"]]


async def test_unverified_email_grants_nothing_over_http(
    make_client: ClientFactory, idp: Idp, shield_config: ShieldConfig
) -> None:
    client = await make_client()
    plain = Payload(metadata={"encoding": b"json/plain"}, data=SECRET)
    (sealed,) = await build_codec(shield_config).with_namespace("pay-eu").encode([plain])
    for claims, visible in (
        ({"email": "cfo@example.com"}, False),  # no email_verified claim
        ({"email": "cfo@example.com", "email_verified": False}, False),
        ({"email": "cfo@example.com", "email_verified": "true"}, False),  # a string, not true
        ({"email": "cfo@example.com", "email_verified": True}, True),
    ):
        data = await _decode_as(client, idp.token(**claims), sealed)
        assert (data == [SECRET]) is visible, claims
        if not visible:
            assert data == [sealed.data]


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"groups": "engineering"}, "groups claim must be a list of strings"),
        ({"groups": "engineering finance"}, "groups claim must be a list of strings"),
        ({"groups": ["engineering", 7]}, "groups claim must be a list of strings"),
        ({"permissions": "dev-team:read"}, "permissions claim must be a list of strings"),
    ],
)
async def test_groups_claim_must_be_a_list_of_strings(
    make_client: ClientFactory, idp: Idp, claims: dict[str, Any], message: str
) -> None:
    client = await make_client()
    resp = await client.post(
        "/decode",
        json={"payloads": []},
        headers={"Authorization": f"Bearer {idp.token(**claims)}", "X-Namespace": "dev-team"},
    )
    assert resp.status == 401
    assert (await resp.json())["message"] == message


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks",
        "http://127.9.9.9/jwks",
        "http://[::1]:8080/jwks",
        "http://localhost/jwks",
        "http://LOCALHOST:9000/jwks",
    ],
)
def test_jwks_url_https_or_loopback_is_accepted(url: str) -> None:
    AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/.well-known/jwks.json",
        "http://10.0.0.5/jwks",
        "http://127.0.0.1.evil.example/jwks",  # a name, not a loopback address
        "http://localhost.evil.example/jwks",
        "file:///etc/temporal-shield/jwks.json",  # urllib would open it
        "ftp://idp.example.com/jwks",
        "https:///jwks",  # no host
        "idp.example.com/jwks",
    ],
)
def test_jwks_url_over_an_open_network_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="jwks_url"):
        AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=url)


def test_allow_insecure_jwks_url_opts_in_to_plain_http_only() -> None:
    AuthConfig(jwks_url="http://idp.mesh.internal/jwks", allow_insecure_jwks_url=True)
    with pytest.raises(ConfigError, match="https"):
        AuthConfig(jwks_url="file:///etc/jwks.json", allow_insecure_jwks_url=True)


def test_allow_insecure_jwks_url_from_toml_and_environment(
    tmp_path: Path, policy_file: Path
) -> None:
    path = tmp_path / "shield.toml"
    path.write_text(
        f'[server]\npolicy_file = "{policy_file}"\n[server.auth]\nissuer = "{ISSUER}"\n'
        f'audience = ["{AUDIENCE}"]\njwks_url = "http://idp.mesh.internal/jwks"\n'
        "[server.audit]\nstdout = true\n"
    )
    with pytest.raises(ConfigError, match="allow_insecure_jwks_url"):
        load_server_config(path, env={})
    server, _ = load_server_config(
        path, env={"TEMPORAL_SHIELD_SERVER_AUTH_ALLOW_INSECURE_JWKS_URL": "true"}
    )
    assert server.auth.allow_insecure_jwks_url
