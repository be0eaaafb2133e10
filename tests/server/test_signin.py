"""Sign-in at the codec server against a real OpenID Provider (oidc-provider on 127.0.0.1).

Every test walks the provider's real login form (see ``tests/server/oidc.py``);
the codec server runs on a real port. Cookies are handled by hand: they are
``Secure`` and the test server speaks plain HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from temporal_shield._devserver import free_port
from temporal_shield._serve import _run as serve_app
from temporal_shield.codec import ConfigError
from temporal_shield.converter import ShieldConfig, build_codec
from temporal_shield.server import AuditConfig, AuditLog, AuthConfig, ServerConfig, create_app
from temporal_shield.server._config import OidcConfig
from temporal_shield.server._secrets import ServerSecret, create_secret_file
from temporal_shield.server._signin import LOGIN_COOKIE, SESSION_COOKIE, SignIn

from ..integration.codec_server import running
from .conftest import ORIGIN
from .idp import AUDIENCE, Idp
from .oidc import CLIENT_ID, OidcProvider, authorize, callback, idp_login, sign_in

SECRET = b'"SIGNED-IN-SECRET"'
POLICY = """
roles:
  engineer:
    namespaces: ["dev-*", "prod-*"]
    operations: [decode, encode]
    classifications: ["*"]
bindings:
  - role: engineer
    groups: [engineering]
step_up:
  - namespaces: ["prod-*"]
    amr: [mfa]
    acr: ["urn:example:mfa"]
"""


@dataclass
class Setup:
    url: str
    provider: OidcProvider
    audit: Path
    secret: ServerSecret
    shield: ShieldConfig
    idp: Idp


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(
    tmp_path: Path,
    port: int,
    provider: OidcProvider,
    *,
    session_lifetime: float = 3600.0,
    jwks_url: str = "",
) -> ServerConfig:
    """A codec server on ``port`` with sign-in at ``provider`` (and bearer tokens
    verified with ``jwks_url``, if given)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return ServerConfig(
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        secret_file=str(create_secret_file(tmp_path / "server.secret")),
        cors_origins=(ORIGIN,),
        cors_credentials=True,
        policy_file=str(policy),
        audit=AuditConfig(file=str(tmp_path / "audit.jsonl")),
        oidc=OidcConfig(
            issuer=provider.issuer,
            client_id=CLIENT_ID,
            session_lifetime=session_lifetime,
            acr_values=("urn:example:mfa",),
        ),
        auth=(
            AuthConfig(issuer=provider.issuer, audience=(AUDIENCE,), jwks_url=jwks_url)
            if jwks_url
            else AuthConfig()
        ),
    )


async def _serve(
    tmp_path: Path,
    shield: ShieldConfig,
    *,
    session_lifetime: float = 3600.0,
    bearer: Idp | None = None,
    id_token_ttl: int = 3600,
) -> AsyncIterator[Setup]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # With bearer tokens, the provider signs with the test IdP's key: the tokens
    # the test mints are ones this provider could have issued (its own JWKS).
    provider = OidcProvider(
        f"{url}/auth/callback",
        id_token_ttl=id_token_ttl,
        jwks=bearer.private_jwks() if bearer is not None else None,
    )
    await provider.start()
    config = _config(
        tmp_path,
        port,
        provider,
        session_lifetime=session_lifetime,
        # The sign-in IdP's issuer and JWKS (the server refuses any other).
        jwks_url=f"{provider.issuer}/jwks" if bearer is not None else "",
    )
    audit, secret_file = Path(config.audit.file), Path(config.secret_file)
    try:
        async with running(create_app(config, shield), port=port):
            yield Setup(url, provider, audit, ServerSecret.load(secret_file), shield, bearer)  # type: ignore[arg-type]
    finally:
        await provider.stop()


@pytest.fixture
async def setup(tmp_path: Path, shield_config: ShieldConfig, idp: Idp) -> AsyncIterator[Setup]:
    async for s in _serve(tmp_path, shield_config, bearer=idp):
        yield s


async def _sealed(shield: ShieldConfig, namespace: str) -> dict[str, Any]:
    from temporalio.api.common.v1 import Payload

    codec = build_codec(shield).with_namespace(namespace)
    (enc,) = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=SECRET)])
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in enc.metadata.items()},
                "data": base64.b64encode(enc.data).decode(),
            }
        ]
    }


async def _decode(
    setup: Setup, namespace: str, *, cookie: str = "", origin: str | None = ORIGIN, **headers: str
) -> tuple[int, Any, dict[str, str]]:
    hdrs = {"X-Namespace": namespace, **headers}
    if origin is not None:
        hdrs["Origin"] = origin
    if cookie:
        hdrs["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{setup.url}/decode", json=await _sealed(setup.shield, namespace), headers=hdrs
        )
        body = await resp.json()
        return resp.status, body, dict(resp.headers)


def _data(body: Any) -> bytes:
    return base64.b64decode(body["payloads"][0]["data"])


async def test_sign_in_sets_a_bounded_secure_session_that_decodes(setup: Setup) -> None:
    signed = await sign_in(setup.url, "alice")
    assert signed.status == 200
    assert signed.cookie
    session = next(h for h in signed.set_cookie if h.startswith(SESSION_COOKIE + "="))
    attributes = {a.strip().split("=")[0].lower() for a in session.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=None" in session
    assert "Path=/" in session
    assert "Domain" not in session  # __Host-: this origin only
    assert 0 < int(session.split("Max-Age=")[1].split(";")[0]) <= 3600
    # The cookie holds no token: nothing in it reads as a JWT or as the claims.
    assert "alice" not in signed.cookie
    assert signed.cookie.count(".") == 0
    status, body, headers = await _decode(setup, "dev-team", cookie=signed.cookie)
    assert status == 200
    assert _data(body) == SECRET
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    records = _records(setup.audit)
    assert [r["operation"] for r in records] == ["sign-in", "decode"]
    assert records[0]["subject"] == "alice"
    assert records[0]["decision"] == "allow"
    assert records[1]["auth"] == "session"
    assert records[1]["decision"] == "allow"


async def test_whoami_answers_for_the_session_only(setup: Setup) -> None:
    signed = await sign_in(setup.url, "alice+mfa")
    async with aiohttp.ClientSession() as http:
        cookie = {"Cookie": f"{SESSION_COOKIE}={signed.cookie}"}
        resp = await http.get(f"{setup.url}/auth/session", headers={**cookie, "Origin": ORIGIN})
        who = await resp.json()
        assert resp.status == 200
        assert (who["subject"], who["auth"], who["groups"]) == ("alice", "session", ["engineering"])
        assert (who["acr"], who["amr"]) == ("urn:example:mfa", ["mfa", "pwd"])
        assert resp.headers["Cache-Control"] == "no-store"
        # A page of another site cannot ask; without a cookie there is no one.
        evil = await http.get(
            f"{setup.url}/auth/session", headers={**cookie, "Origin": "https://evil.example"}
        )
        assert evil.status == 401
        nobody = await http.get(f"{setup.url}/auth/session", headers={"Origin": ORIGIN})
        assert nobody.status == 401


async def test_bearer_and_session_are_one_identity_and_the_record_says_which(setup: Setup) -> None:
    signed = await sign_in(setup.url, "alice")
    token = setup.idp.token(sub="alice", groups=["engineering"], iss=setup.provider.issuer)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{setup.url}/decode",
            json=await _sealed(setup.shield, "dev-team"),
            headers={"X-Namespace": "dev-team", "Authorization": f"Bearer {token}"},
        )
        assert _data(await resp.json()) == SECRET
    _status, body, _ = await _decode(setup, "dev-team", cookie=signed.cookie)
    assert _data(body) == SECRET
    decodes = [r for r in _records(setup.audit) if r["operation"] == "decode"]
    assert [(r["subject"], r["auth"], r["roles"]) for r in decodes] == [
        ("alice", "bearer", ["engineer"]),
        ("alice", "session", ["engineer"]),
    ]


async def test_the_cookie_counts_only_from_an_allowed_origin(setup: Setup) -> None:
    signed = await sign_in(setup.url, "alice")
    # Replayed from another site (CSRF), or by a client that sends no Origin.
    for origin in ("https://evil.example", None, "null", ORIGIN + ".evil.example"):
        status, body, headers = await _decode(
            setup, "dev-team", cookie=signed.cookie, origin=origin
        )
        assert status == 401, origin
        assert "allowed origin" in body["message"]
        assert "Access-Control-Allow-Origin" not in headers
        assert SECRET.decode() not in json.dumps(body)
    # A bad bearer token is not rescued by a good cookie riding along: the
    # browser is invited to sign in, and reads nothing.
    status, body, _ = await _decode(
        setup, "dev-team", cookie=signed.cookie, Authorization="Bearer not.a.token"
    )
    assert json.loads(_data(body))["reason"] == "sign-in required"
    assert _records(setup.audit)[-1]["reason"] == "unauthenticated: malformed token"


async def test_a_forged_or_foreign_cookie_is_refused(setup: Setup) -> None:
    signed = await sign_in(setup.url, "alice")
    flipped = signed.cookie[:-2] + ("A" if signed.cookie[-2] != "A" else "B") + signed.cookie[-1]
    # A sealed value made for another purpose (the login transaction) is not a session.
    login = setup.secret.seal("login", b'{"sid":"x","claims":{"sub":"root"}}', ttl=60)
    for cookie in (flipped, login, "x" * 5000, "not-base64!"):
        # The browser is invited to sign in again, and reads nothing.
        _, body, _ = await _decode(setup, "dev-team", cookie=cookie)
        assert json.loads(_data(body))["reason"] == "sign-in required", cookie[:20]
        assert "sign in again" in _records(setup.audit)[-1]["reason"], cookie[:20]


async def test_state_nonce_and_code_are_checked(setup: Setup) -> None:
    # The state must be this browser's: another sign-in's login cookie does not match.
    url_a, cookie_a = await authorize(setup.url)
    url_b, cookie_b = await authorize(setup.url)
    back_a = await idp_login(url_a, "alice", setup.url)
    wrong = await callback(back_a, cookie_b)
    assert (wrong.status, wrong.cookie) == (400, "")
    # No login cookie at all (a link someone else started).
    assert (await callback(back_a, "")).status == 400
    # A transaction with the right state but another nonce (sealed by the server
    # key, as only a server compromise could): the ID token's nonce must match.
    transaction = json.loads(setup.secret.open("login", cookie_a))
    transaction["nonce"] = "another"
    forged = setup.secret.seal("login", json.dumps(transaction).encode(), ttl=60)
    bad_nonce = await callback(back_a, forged)
    assert (bad_nonce.status, bad_nonce.cookie) == (400, "")
    # The code is single use at the provider: a replayed callback fails.
    back_b = await idp_login(url_b, "alice", setup.url)
    assert (await callback(back_b, cookie_b)).status == 200
    replayed = await callback(back_b, cookie_b)
    assert (replayed.status, replayed.cookie) == (400, "")
    records = [r for r in _records(setup.audit) if r["operation"] == "sign-in"]
    assert [r["decision"] for r in records].count("deny") == 4
    assert all(r["status"] == 400 for r in records if r["decision"] == "deny")


async def test_an_error_from_the_provider_is_a_clear_400_that_echoes_nothing(
    setup: Setup,
) -> None:
    url, cookie = await authorize(setup.url)
    state = parse_qs(urlsplit(url).query)["state"][0]
    async with aiohttp.ClientSession() as http:
        for error, shown in (("access_denied", True), ("<script>alert(1)</script>", False)):
            resp = await http.get(
                f"{setup.url}/auth/callback",
                params={"error": error, "error_description": "<b>evil</b>", "state": state},
                headers={"Cookie": f"{LOGIN_COOKIE}={cookie}"},
            )
            body = await resp.json()
            assert resp.status == 400
            assert body["error"] == "sign_in_failed"
            assert ("access_denied" in body["message"]) is shown
            assert "<" not in body["message"]
            assert "evil" not in body["message"]


async def test_return_to_only_goes_to_an_allowed_origin(setup: Setup) -> None:
    async with aiohttp.ClientSession() as http:
        for target in (
            "https://evil.example/",
            "//evil.example",
            ORIGIN + ".evil.example/",
            "javascript:alert(1)",
            ORIGIN.replace("http://", "http://user@evil.example\\@"),
            # Control characters and spaces would break the redirect after sign-in.
            ORIGIN + "/\x00x",
            ORIGIN + "/a\tb",
            ORIGIN + "/a b",
            ORIGIN + "/\u00e9",
        ):
            resp = await http.get(
                f"{setup.url}/auth/login", params={"return_to": target}, allow_redirects=False
            )
            assert resp.status == 400, target
    signed = await sign_in(setup.url, "alice", f"?return_to={ORIGIN}/namespaces/dev-team")
    assert signed.status == 303
    assert signed.location == f"{ORIGIN}/namespaces/dev-team"
    assert signed.cookie


async def test_step_up_asks_the_provider_and_a_stronger_sign_in_reads(setup: Setup) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.get(
            f"{setup.url}/auth/login", params={"acr_values": "urn:other"}, allow_redirects=False
        )
        assert resp.status == 400
        # max_age: ASCII digits only (str.isdigit also takes "²" and Arabic-Indic digits).
        for max_age in ("²", "\u0663\u0660", "-1", "1e3", "9" * 10):
            resp = await http.get(
                f"{setup.url}/auth/login", params={"max_age": max_age}, allow_redirects=False
            )
            assert resp.status == 400, max_age
    signed = await sign_in(setup.url, "alice")
    status, body, _ = await _decode(setup, "prod-pay", cookie=signed.cookie)
    notice = json.loads(_data(body))
    assert status == 200
    assert notice["temporal-shield"] == "withheld"
    assert notice["reason"].startswith("step-up required")
    (link,) = [r for r in notice["how to get access"] if "/auth/login?" in r]
    login_url = link[link.index(setup.url) :]
    query = parse_qs(urlsplit(login_url).query)
    assert query["acr_values"] == ["urn:example:mfa"]
    assert query["return_to"] == [ORIGIN]  # back to the UI that showed the notice
    # The link the placeholder offers starts a sign-in that asks the provider for it.
    idp_url, cookie = await authorize(setup.url, "?" + urlsplit(login_url).query)
    asked = parse_qs(urlsplit(idp_url).query)
    assert asked["acr_values"] == ["urn:example:mfa"]
    assert asked["prompt"] == ["login"]
    assert asked["code_challenge_method"] == ["S256"]
    assert asked["nonce"]
    stronger = await callback(await idp_login(idp_url, "alice+mfa", setup.url), cookie)
    status, body, _ = await _decode(setup, "prod-pay", cookie=stronger.cookie)
    assert _data(body) == SECRET


async def test_sign_out_refuses_the_cookie_and_needs_post_from_an_allowed_origin(
    setup: Setup,
) -> None:
    signed = await sign_in(setup.url, "alice")
    cookie = {"Cookie": f"{SESSION_COOKIE}={signed.cookie}"}
    async with aiohttp.ClientSession() as http:
        # No state change on GET, and none from another site.
        resp = await http.get(f"{setup.url}/auth/logout", headers={**cookie, "Origin": ORIGIN})
        assert resp.status == 405
        resp = await http.post(
            f"{setup.url}/auth/logout", headers={**cookie, "Origin": "https://evil.example"}
        )
        assert resp.status == 401
        assert (await _decode(setup, "dev-team", cookie=signed.cookie))[0] == 200
        resp = await http.post(f"{setup.url}/auth/logout", headers={**cookie, "Origin": ORIGIN})
        assert resp.status == 200
        assert (await resp.json())["signed_out"] is True
        assert (
            f'{SESSION_COOKIE}=""' in resp.headers["Set-Cookie"]
            or "Max-Age=0" in (resp.headers["Set-Cookie"])
        )
    _, body, _ = await _decode(setup, "dev-team", cookie=signed.cookie)
    assert json.loads(_data(body))["reason"] == "sign-in required"
    assert _records(setup.audit)[-1]["reason"] == "unauthenticated: signed out: sign in again"
    assert [r["operation"] for r in _records(setup.audit)].count("sign-out") == 1


async def test_an_unauthenticated_browser_is_invited_to_sign_in(setup: Setup) -> None:
    status, body, headers = await _decode(setup, "dev-team")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    notice = json.loads(_data(body))
    assert notice["reason"] == "sign-in required"
    assert f"{setup.url}/auth/login?return_to=" in notice["how to get access"][0]
    assert "Include cross-origin credentials" in notice["how to get access"][1]
    assert SECRET.decode() not in json.dumps(body)
    record = _records(setup.audit)[-1]
    assert record["decision"] == "deny"
    assert record["reason"].startswith("unauthenticated")
    # Not for the CLI (no Origin), not for another site, not for /encode.
    assert (await _decode(setup, "dev-team", origin=None))[0] == 401
    assert (await _decode(setup, "dev-team", origin="https://evil.example"))[0] == 401
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{setup.url}/encode",
            json={"payloads": []},
            headers={"Origin": ORIGIN, "X-Namespace": "dev-team"},
        )
        assert resp.status == 401


async def test_a_session_ends_with_its_lifetime(
    tmp_path: Path, shield_config: ShieldConfig
) -> None:
    async for setup in _serve(tmp_path, shield_config, session_lifetime=2):
        signed = await sign_in(setup.url, "alice")
        session = next(h for h in signed.set_cookie if h.startswith(SESSION_COOKIE + "="))
        assert "Max-Age=1" in session or "Max-Age=2" in session
        assert (await _decode(setup, "dev-team", cookie=signed.cookie))[0] == 200
        await asyncio.sleep(3)
        _, body, _ = await _decode(setup, "dev-team", cookie=signed.cookie)
        assert json.loads(_data(body))["reason"] == "sign-in required"
        assert "sign in again" in _records(setup.audit)[-1]["reason"]


async def test_the_demo_identity_provider_is_refused_outside_the_demo(
    tmp_path: Path, shield_config: ShieldConfig
) -> None:
    async def discovery(request: web.Request) -> web.Response:
        base = f"http://127.0.0.1:{request.url.port}"
        return web.json_response(
            {
                "issuer": base,
                "authorization_endpoint": base + "/authorize",
                "token_endpoint": base + "/token",
                "jwks_uri": base + "/jwks",
                "id_token_signing_alg_values_supported": ["ES256"],
                "temporal_shield_development_only": True,
            }
        )

    dev = web.Application()
    dev.router.add_get("/.well-known/openid-configuration", discovery)
    async with running(dev) as issuer:
        config = ServerConfig(
            port=free_port(),
            public_url="http://127.0.0.1:1",
            secret_file=str(create_secret_file(tmp_path / "s")),
            policy_file=str(tmp_path / "p.yaml"),
            audit=AuditConfig(file=str(tmp_path / "a.jsonl")),
            oidc=OidcConfig(issuer=issuer, client_id="x"),
        )
        (tmp_path / "p.yaml").write_text(POLICY)
        with pytest.raises(ConfigError, match="development identity provider"):
            async with running(create_app(config, shield_config)):
                pass
        # `serve` itself: the refused start closes the audit log (and its lock),
        # so a corrected start in the same process opens the file at once.
        with pytest.raises(ConfigError, match="development identity provider"):
            await serve_app(create_app(config, shield_config), config, None)
        AuditLog(replace(config.audit, lock_wait=0)).close()
        async with running(create_app(config, shield_config, allow_development_idp=True)):
            pass


def test_sign_in_settings_are_validated(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "policy_file": "p",
        "audit": AuditConfig(stdout=True),
        "secret_file": "s",
    }
    with pytest.raises(ConfigError, match="public_url"):
        ServerConfig(oidc=OidcConfig(issuer="https://idp.example", client_id="c"), **base)
    with pytest.raises(ConfigError, match="https"):
        ServerConfig(
            public_url="http://codec.example",
            oidc=OidcConfig(issuer="https://idp.example", client_id="c"),
            **base,
        )
    with pytest.raises(ConfigError, match="public_key_files cannot be used with"):
        ServerConfig(
            public_url="https://codec.example",
            oidc=OidcConfig(issuer="https://idp.example", client_id="c"),
            auth=AuthConfig(
                issuer="https://idp.example", audience=("codec",), public_key_files=("k.pem",)
            ),
            **base,
        )
    with pytest.raises(ConfigError, match="same identity provider"):
        ServerConfig(
            public_url="https://codec.example",
            oidc=OidcConfig(issuer="https://idp.example", client_id="c"),
            auth=AuthConfig(
                issuer="https://other-idp.example",
                audience=("codec",),
                jwks_url="https://other-idp.example/jwks",
            ),
            **base,
        )
    assert ServerConfig(
        public_url="https://codec.example",
        oidc=OidcConfig(issuer="https://idp.example", client_id="c"),
        auth=AuthConfig(
            issuer="https://idp.example", audience=("codec",), jwks_url="https://idp.example/jwks"
        ),
        **base,
    ).auth.enabled
    with pytest.raises(ConfigError, match="issuer must be https"):
        OidcConfig(issuer="http://idp.example", client_id="c")
    with pytest.raises(ConfigError, match="client_id"):
        OidcConfig(issuer="https://idp.example")
    with pytest.raises(ConfigError, match="openid"):
        OidcConfig(issuer="https://idp.example", client_id="c", scopes=("email",))
    with pytest.raises(ConfigError, match="cors_credentials"):
        ServerConfig(
            public_url="https://codec.example",
            cors_origins=("https://ui.example",),
            oidc=OidcConfig(issuer="https://idp.example", client_id="c"),
            **base,
        )
    with pytest.raises(ConfigError, match="secret_file"):
        ServerConfig(
            public_url="https://codec.example",
            oidc=OidcConfig(issuer="https://idp.example", client_id="c"),
            policy_file="p",
            audit=AuditConfig(stdout=True),
        )


def _sign_in(tmp_path: Path, issuer: str) -> SignIn:
    """A :class:`SignIn` for ``issuer`` (discovery happens on first use)."""
    config = ServerConfig(
        public_url="https://codec.example",
        secret_file=str(create_secret_file(tmp_path / "s")),
        policy_file="p",
        audit=AuditConfig(stdout=True),
        oidc=OidcConfig(issuer=issuer, client_id=CLIENT_ID),
    )
    return SignIn(config, ServerSecret.load(Path(config.secret_file)))


async def test_id_token_audiences_and_authorized_party(tmp_path: Path, idp: Idp) -> None:
    """OIDC Core 3.1.3.7: with several audiences the token must name us as its azp."""
    import jwt as pyjwt

    from temporal_shield.server._signin import SignInError, _Provider

    from .idp import ISSUER

    sign_in_ = _sign_in(tmp_path, ISSUER)
    sign_in_._jwks = pyjwt.PyJWKClient(idp.url)
    provider = _Provider(ISSUER, "", "", idp.url, ("RS256",), "")

    async def verify(**claims: Any) -> dict[str, Any]:
        token = idp.token(nonce="n-1", **{"aud": CLIENT_ID, **claims})
        return await sign_in_._verify_id_token(token, provider, "n-1")

    assert (await verify(sub="alice"))["sub"] == "alice"
    assert (await verify(aud=[CLIENT_ID, "other"], azp=CLIENT_ID))["sub"] == "user-1"
    refused: dict[str, dict[str, Any]] = {
        "another client's azp": {"azp": "other"},
        "several audiences, no azp": {"aud": [CLIENT_ID, "other"]},
        "several audiences, another azp": {"aud": [CLIENT_ID, "other"], "azp": "other"},
        "not for us": {"aud": "other"},
    }
    accepted = []
    for name, claims in refused.items():
        try:
            await verify(**claims)
        except SignInError:
            continue
        accepted.append(name)
    assert accepted == []


async def test_bearer_tokens_need_the_sign_in_idps_own_keys(
    tmp_path: Path, shield_config: ShieldConfig, idp: Idp, caplog: pytest.LogCaptureFixture
) -> None:
    """Same issuer name, keys from elsewhere: whoever holds those keys would speak for
    the IdP's people (bindings, grants). Refused at start, or until discovery says so."""
    port = free_port()
    provider = OidcProvider(f"http://127.0.0.1:{port}/auth/callback", jwks=idp.private_jwks())
    # Another URL serving even the same key is not the IdP's jwks_uri.
    config = _config(tmp_path, port, provider, jwks_url=idp.url)
    token = idp.token(sub="alice", groups=["engineering"], iss=provider.issuer)
    body = await _sealed(shield_config, "dev-team")
    headers = {"X-Namespace": "dev-team", "Authorization": f"Bearer {token}"}

    async def decode(url: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{url}/decode", json=body, headers=headers)
            return resp.status, await resp.json()

    # The IdP is down at start: the server starts, but takes no bearer token yet.
    async with running(create_app(config, shield_config), port=port) as url:
        status, answer = await decode(url)
        assert (status, answer["error"]) == (503, "idp_unavailable")
        await provider.start()
        try:
            status, answer = await decode(url)  # discovery now shows other keys
            assert (status, answer["error"]) == (503, "idp_unavailable")
            assert "is not the sign-in identity provider's jwks_uri" in caplog.text
        finally:
            await provider.stop()
    await provider.start()
    try:
        with pytest.raises(ConfigError, match="jwks_uri"):  # the IdP is up: no start
            async with running(create_app(config, shield_config), port=port):
                pass
        right = replace(config, auth=replace(config.auth, jwks_url=f"{provider.issuer}/jwks"))
        async with running(create_app(right, shield_config), port=port) as url:
            status, answer = await decode(url)
            assert status == 200
            assert _data(answer) == SECRET
    finally:
        await provider.stop()


@pytest.mark.parametrize("slash", ["/", ""])
async def test_discovery_keeps_the_issuer_exactly_as_configured(
    tmp_path: Path, idp: Idp, slash: str
) -> None:
    """Auth0's issuer ends in "/" and its ID tokens carry it so: stripping it broke
    sign-in. The document must name the configured issuer exactly (Discovery 4.3)."""
    from temporal_shield.server._signin import IdpUnavailable

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issuer = base + "/"  # what this IdP's documents and tokens say

    async def document(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/oauth/token",
                "jwks_uri": idp.url,
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", document)
    configured = base + slash
    sign_in_ = _sign_in(tmp_path, configured)
    async with running(app, port=port):
        if configured == issuer:
            provider = await sign_in_.provider()
            assert provider.issuer == issuer
            token = idp.token(iss=issuer, aud=CLIENT_ID, nonce="n-1", sub="alice")
            claims = await sign_in_._verify_id_token(token, provider, "n-1")
            assert claims["sub"] == "alice"
        else:
            with pytest.raises(IdpUnavailable, match="another issuer"):
                await sign_in_.provider()
