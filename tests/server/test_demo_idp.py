"""The demo's development-only identity provider: refused by `serve`, strict where it counts.

It lets anyone sign in as anyone (that is the demo), so the tests are about
what keeps it a demo: `temporal-shield serve` will not start against it, and
the protocol checks the codec server's real client relies on (exact redirect
URI, PKCE, single-use codes, nonce) hold against a hostile caller.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest

from temporal_shield._demo_idp import ACR_PASSWORD, ACR_SECURITY_KEY, DemoIdentityProvider
from temporal_shield._devserver import free_port
from temporal_shield.codec import Keyring
from temporal_shield.converter import ShieldConfig
from temporal_shield.server import AuditConfig, AuthConfig, ServerConfig, create_app
from temporal_shield.server._secrets import create_secret_file
from tests.integration.codec_server import running

CLIENT = "demo-client"
REDIRECT = "http://localhost:1/auth/callback"
AUDIENCE = "codec"
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=")


@pytest.fixture
async def idp() -> AsyncIterator[DemoIdentityProvider]:
    provider = DemoIdentityProvider(
        client_id=CLIENT, redirect_uri=REDIRECT, audience=AUDIENCE, port=free_port()
    )
    await provider.start()
    yield provider
    await provider.stop()


def _authorize(**overrides: str) -> dict[str, str]:
    params = {
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "openid email",
        "state": "st",
        "nonce": "no",
        "code_challenge": CHALLENGE.decode(),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v != "-"}


async def _sign_in(
    http: aiohttp.ClientSession, idp: DemoIdentityProvider, user: str = "alice", **form: str
) -> aiohttp.ClientResponse:
    data = {**_authorize(), "user": user, **form}
    return await http.post(f"{idp.issuer}/authorize", data=data, allow_redirects=False)


async def _code(http: aiohttp.ClientSession, idp: DemoIdentityProvider, **form: str) -> str:
    response = await _sign_in(http, idp, **form)
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["st"]
    assert query["iss"] == [idp.issuer]
    return query["code"][0]


async def _exchange(
    http: aiohttp.ClientSession, idp: DemoIdentityProvider, code: str, **overrides: str
) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
        **overrides,
    }
    response = await http.post(f"{idp.issuer}/token", data=form)
    return response.status, await response.json()


async def _verify(idp: DemoIdentityProvider, token: str, audience: str) -> dict[str, Any]:
    """The token's claims, checked against the provider's published JWKS."""
    jwks = jwt.PyJWKClient(f"{idp.issuer}/jwks")
    # PyJWKClient blocks: off the loop that serves the provider.
    key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=idp.issuer
    )
    return claims


def test_serve_refuses_the_demo_identity_provider(tmp_path: Path) -> None:
    """`temporal-shield serve` with the demo IdP as its issuer does not start."""

    async def main() -> subprocess.CompletedProcess[str]:
        port = free_port()
        provider = DemoIdentityProvider(
            client_id="temporal-shield-demo",
            redirect_uri=f"http://localhost:{port}/auth/callback",
            audience="codec",
            port=free_port(),
        )
        await provider.start()
        ring = tmp_path / "keyring.json"
        Keyring.new().save(ring)
        (tmp_path / "policy.yaml").write_text("roles: {}\nbindings: []\n")
        env = {
            **os.environ,
            "TEMPORAL_SHIELD_KEYS_URI": f"local://{ring}",
            "TEMPORAL_SHIELD_SERVER_PORT": str(port),
            "TEMPORAL_SHIELD_SERVER_PUBLIC_URL": f"http://localhost:{port}",
            "TEMPORAL_SHIELD_SERVER_SECRET_FILE": str(create_secret_file(tmp_path / "secret")),
            "TEMPORAL_SHIELD_SERVER_POLICY_FILE": str(tmp_path / "policy.yaml"),
            "TEMPORAL_SHIELD_SERVER_AUDIT_FILE": str(tmp_path / "audit.jsonl"),
            "TEMPORAL_SHIELD_SERVER_AUTH_ISSUER": provider.issuer,
            "TEMPORAL_SHIELD_SERVER_AUTH_AUDIENCE": "codec",
            "TEMPORAL_SHIELD_SERVER_AUTH_JWKS_URL": f"{provider.issuer}/jwks",
            "TEMPORAL_SHIELD_SERVER_OIDC_ISSUER": provider.issuer,
            "TEMPORAL_SHIELD_SERVER_OIDC_CLIENT_ID": "temporal-shield-demo",
        }
        try:
            return await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "temporal_shield", "serve"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
        finally:
            await provider.stop()

    out = asyncio.run(main())
    assert out.returncode != 0, out.stdout[-2000:]
    assert "development identity provider" in out.stdout + out.stderr


async def test_a_sign_in_gives_tokens_for_the_client_with_nonce_acr_and_amr(
    idp: DemoIdentityProvider,
) -> None:
    async with aiohttp.ClientSession() as http:
        status, tokens = await _exchange(http, idp, await _code(http, idp))
        assert status == 200
        claims = await _verify(idp, tokens["id_token"], CLIENT)
        assert claims["sub"] == "alice"
        assert claims["nonce"] == "no"
        assert claims["acr"] == ACR_PASSWORD
        assert claims["amr"] == ["pwd"]
        assert (await _verify(idp, tokens["access_token"], AUDIENCE))["sub"] == "alice"
        # The security key: a stronger acr and amr, what the step-up rule asks for.
        code = await _code(http, idp, security_key="1")
        status, tokens = await _exchange(http, idp, code)
        claims = await _verify(idp, tokens["id_token"], CLIENT)
        assert claims["acr"] == ACR_SECURITY_KEY
        assert {"hwk", "mfa"} <= set(claims["amr"])


async def test_codes_are_single_use_and_bound_to_the_verifier_and_redirect(
    idp: DemoIdentityProvider,
) -> None:
    async with aiohttp.ClientSession() as http:
        code = await _code(http, idp)
        assert (await _exchange(http, idp, code, code_verifier="w" * 64))[0] == 400
        # A failed attempt spends the code too: no guessing the verifier.
        assert (await _exchange(http, idp, code))[0] == 400
        code = await _code(http, idp)
        assert (await _exchange(http, idp, code, redirect_uri=REDIRECT + "x"))[0] == 400
        code = await _code(http, idp)
        assert (await _exchange(http, idp, code, client_id="other"))[0] == 400
        code = await _code(http, idp)
        assert (await _exchange(http, idp, code))[0] == 200
        status, body = await _exchange(http, idp, code)
        assert (status, body) == (400, {"error": "invalid_grant"})
        assert (await _exchange(http, idp, "made-up"))[0] == 400


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": REDIRECT + "/../../x"},
        {"client_id": "someone-else"},
        {"response_type": "token"},
        {"scope": "email"},
        {"code_challenge": "-"},
        {"code_challenge_method": "plain"},
    ],
)
async def test_a_bad_authorization_request_is_an_error_page_never_a_redirect(
    idp: DemoIdentityProvider, overrides: dict[str, str]
) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{idp.issuer}/authorize?{urlencode(_authorize(**overrides))}"
        page = await http.get(url, allow_redirects=False)
        assert page.status == 400
        assert "Location" not in page.headers
        signed = await http.post(
            f"{idp.issuer}/authorize",
            data={**_authorize(**overrides), "user": "alice"},
            allow_redirects=False,
        )
        assert signed.status == 400
        assert "Location" not in signed.headers


async def test_the_login_page_escapes_what_it_reflects_and_refuses_unknown_people(
    idp: DemoIdentityProvider,
) -> None:
    hostile = '"><script>alert(1)</script>'
    async with aiohttp.ClientSession() as http:
        url = f"{idp.issuer}/authorize?{urlencode(_authorize(state=hostile, nonce=hostile))}"
        page = await http.get(url)
        text = await page.text()
        assert page.status == 200
        assert "<script>" not in text
        assert "&lt;script&gt;" in text
        assert "DEVELOPMENT ONLY" in text
        assert page.headers["X-Frame-Options"] == "DENY"
        refused = await _sign_in(http, idp, user="mallory")
        assert refused.status == 400
        assert "Location" not in refused.headers


@pytest.mark.parametrize("allowed", [False, True])
async def test_bearer_tokens_of_the_demo_idp_are_refused_outside_the_demo(
    idp: DemoIdentityProvider, tmp_path: Path, shield_config: ShieldConfig, allowed: bool
) -> None:
    """A codec server set for bearer tokens only, with the demo IdP's JWKS: still refused."""
    (tmp_path / "policy.yaml").write_text(
        "roles:\n  r: {namespaces: ['*'], operations: [decode], classifications: ['*']}\n"
        "bindings:\n  - {role: r, subjects: [carol]}\n"
    )
    config = ServerConfig(
        policy_file=str(tmp_path / "policy.yaml"),
        audit=AuditConfig(file=str(tmp_path / "audit.jsonl")),
        auth=AuthConfig(
            issuer=idp.issuer,
            audience=(AUDIENCE,),
            algorithms=("ES256",),
            jwks_url=f"{idp.issuer}/jwks",
        ),
    )
    app = create_app(config, shield_config, allow_development_idp=allowed)
    async with running(app) as url, aiohttp.ClientSession() as http:
        response = await http.post(
            f"{url}/decode",
            json={"payloads": []},
            headers={"Authorization": f"Bearer {idp.token('carol')}", "X-Namespace": "default"},
        )
        body = await response.json()
    if allowed:  # the demo
        assert response.status == 200, body
    else:
        assert response.status == 401
        assert "development identity provider" in body["message"]
