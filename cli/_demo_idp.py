"""The demo's identity provider: OpenID Connect on Python alone. DEVELOPMENT ONLY.

``temporal-shield demo`` must run on a fresh machine with nothing but Python, so
it cannot start the organisation's IdP or the Node provider the tests use. This
module is the smallest OpenID Provider the codec server's real sign-in client
(Authlib, PKCE, ID token checked by PyJWT against the JWKS) can complete a
sign-in with: a discovery document, an authorization endpoint with a login
page, a token endpoint and a JWKS. It is written by hand because Python's
provider libraries (Authlib's server side, pyop) need a framework integration
and a storage layer of their own that would be larger than this and add a
dependency the product does not otherwise need.

**Anyone who can open its page signs in as anyone, by clicking a name.** That is
the point of a demo and why it must never stand in for a real IdP: its discovery
document carries ``temporal_shield_development_only: true``, and the codec server
refuses such a provider at start unless ``create_app(allow_development_idp=True)``
— which only the demo passes (``temporal-shield serve`` never does). It binds
127.0.0.1 only and keeps everything in memory.

What it does check, because the codec server's client must be seen to work
against a provider that checks: the client id and the exact redirect URI (never
a redirect anywhere else), ``response_type=code``, an S256 PKCE challenge and
its verifier, single-use codes that expire after a minute, the ``nonce`` echoed
into the ID token.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from temporal_shield.server._auth import DEVELOPMENT_MARKER

ACR_PASSWORD = "urn:temporal-shield:demo:password"  # noqa: S105 - an acr value, not a secret
"""``acr`` of a sign-in with a name only (the demo's stand-in for a password)."""
ACR_SECURITY_KEY = "urn:temporal-shield:demo:security-key"
"""``acr`` of a sign-in that also "touched a security key" (``amr`` ``hwk``, ``mfa``)."""

TOKEN_LIFETIME = 8 * 3600
"""Seconds an ID token (and so a session) and a demo bearer token last."""
CODE_LIFETIME = 60.0
MAX_CODES = 1000
MAX_FORM_BYTES = 16 * 1024


@dataclass(frozen=True)
class DemoUser:
    """A person of the demo organisation."""

    sub: str
    name: str
    groups: tuple[str, ...]
    about: str

    @property
    def email(self) -> str:
        """The person's (verified, fictional) address."""
        return f"{self.sub}@example.com"


USERS = (
    DemoUser("alice", "Alice Engineer", ("engineering",), "engineer: reads internal data"),
    DemoUser("bob", "Bob Security", ("security",), "security on call: approves grants"),
    DemoUser("carol", "Carol Clinician", ("clinical",), "clinical: reads patient (phi) data"),
)
"""Who can sign in (no password: this is a development-only provider)."""


@dataclass(frozen=True)
class _Code:
    user: DemoUser
    security_key: bool
    redirect_uri: str
    challenge: str
    nonce: str
    auth_time: int
    expires: float


class DemoIdentityProvider:
    """An in-memory OpenID Provider on 127.0.0.1 for one client (the demo's codec server)."""

    def __init__(self, *, client_id: str, redirect_uri: str, audience: str, port: int) -> None:
        """Describe the provider.

        Args:
            client_id: The one client it serves (a public client: PKCE, no secret).
            redirect_uri: That client's only redirect URI (compared exactly).
            audience: ``aud`` of the bearer tokens :meth:`token` mints.
            port: Port on 127.0.0.1 to listen on.
        """
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.audience = audience
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = secrets.token_hex(8)
        self._codes: dict[str, _Code] = {}
        self._runner: web.AppRunner | None = None

    # -- running ----------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1."""
        app = web.Application(client_max_size=MAX_FORM_BYTES)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/authorize", self._sign_in)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- tokens -----------------------------------------------------------------

    def token(self, sub: str, *, security_key: bool = False) -> str:
        """A bearer token for ``sub`` (what the organisation's IdP would give the CLI)."""
        user = _user(sub)
        if user is None:
            raise KeyError(sub)
        now = int(time.time())
        return self._sign(
            {**self._claims(user, security_key, now), "aud": self.audience, "iat": now}
        )

    def _claims(self, user: DemoUser, security_key: bool, auth_time: int) -> dict[str, Any]:
        return {
            "iss": self.issuer,
            "sub": user.sub,
            "exp": auth_time + TOKEN_LIFETIME,
            "auth_time": auth_time,
            "acr": ACR_SECURITY_KEY if security_key else ACR_PASSWORD,
            "amr": ["pwd", "hwk", "mfa"] if security_key else ["pwd"],
            "name": user.name,
            "email": user.email,
            "email_verified": True,
            "groups": list(user.groups),
            "jti": secrets.token_hex(16),
            # Every token says where it comes from: a codec server outside the
            # demo refuses it even when configured for bearer tokens only.
            DEVELOPMENT_MARKER: True,
        }

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid})

    # -- endpoints --------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": ["openid", "email", "profile"],
                "acr_values_supported": [ACR_PASSWORD, ACR_SECURITY_KEY],
                "claims_supported": ["sub", "name", "email", "groups", "acr", "amr"],
                DEVELOPMENT_MARKER: True,
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self._kid, "use": "sig", "alg": "ES256"})
        return web.json_response({"keys": [jwk]})

    def _request(self, params: Any) -> dict[str, str]:
        """The validated authorization request; an error page for anything else.

        Errors are shown here, never sent to the redirect URI, unless the client
        and redirect URI are the registered ones (RFC 6749 §4.1.2.1).
        """
        wanted = ("client_id", "redirect_uri", "response_type", "scope", "state", "nonce")
        got = {name: str(params.get(name, ""))[:2048] for name in wanted}
        got["code_challenge"] = str(params.get("code_challenge", ""))[:256]
        got["code_challenge_method"] = str(params.get("code_challenge_method", ""))[:16]
        got["acr_values"] = str(params.get("acr_values", ""))[:512]
        if got["client_id"] != self.client_id or got["redirect_uri"] != self.redirect_uri:
            raise _page(
                web.HTTPBadRequest, "Unknown client or redirect URI", "Start from the codec server."
            )
        if got["response_type"] != "code" or "openid" not in got["scope"].split():
            raise _page(
                web.HTTPBadRequest, "Unsupported request", "Only response_type=code with openid."
            )
        if got["code_challenge_method"] != "S256" or not got["code_challenge"]:
            raise _page(web.HTTPBadRequest, "PKCE required", "Send an S256 code_challenge.")
        return got

    async def _authorize(self, request: web.Request) -> web.Response:
        got = self._request(request.query)
        wants_key = ACR_SECURITY_KEY in got["acr_values"].split()
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
            for name, value in got.items()
        )
        people = "".join(
            f'<p><button type="submit" name="user" value="{u.sub}">Sign in as {u.sub}</button>'
            f" {html.escape(u.name)} — {html.escape(u.about)}</p>"
            for u in USERS
        )
        asked = (
            "<p><strong>The codec server asks for a stronger sign-in (a security key).</strong></p>"
            if wants_key
            else ""
        )
        checked = " checked" if wants_key else ""
        body = (
            "<h1>temporal-shield demo sign-in</h1>"
            "<p><strong>DEVELOPMENT ONLY:</strong> anyone who can open this page signs in as"
            " anyone. The codec server refuses this provider outside <code>temporal-shield"
            " demo</code>.</p>"
            f"{asked}<form method=post action=/authorize>{hidden}"
            f'<p><label><input type="checkbox" name="security_key" value="1"{checked}>'
            " I touch my security key (multi-factor: <code>acr</code> "
            f"{ACR_SECURITY_KEY}, <code>amr</code> hwk, mfa)</label></p>{people}</form>"
        )
        return _html(200, "Sign in", body)

    async def _sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        got = self._request(form)
        user = _user(str(form.get("user", "")))
        if user is None:
            raise _page(web.HTTPBadRequest, "Unknown person", "Pick one of the listed people.")
        now = time.time()
        for code, entry in list(self._codes.items()):
            if entry.expires < now:
                del self._codes[code]
        if len(self._codes) >= MAX_CODES:
            raise _page(
                web.HTTPServiceUnavailable,
                "Busy",
                "Too many sign-ins in progress; try again in a minute.",
            )
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(
            user=user,
            security_key=form.get("security_key") == "1",
            redirect_uri=got["redirect_uri"],
            challenge=got["code_challenge"],
            nonce=got["nonce"],
            auth_time=int(now),
            expires=now + CODE_LIFETIME,
        )
        query = {"code": code, "iss": self.issuer}
        if got["state"]:
            query["state"] = got["state"]
        raise web.HTTPFound(f"{got['redirect_uri']}?{urlencode(query)}")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        entry = self._codes.pop(str(form.get("code", "")), None)  # single use
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if (
            form.get("grant_type") != "authorization_code"
            or entry is None
            or entry.expires < time.time()
            or form.get("client_id") != self.client_id
            or form.get("redirect_uri") != entry.redirect_uri
            or not secrets.compare_digest(challenge, entry.challenge)
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        claims = self._claims(entry.user, entry.security_key, entry.auth_time)
        id_token = {**claims, "aud": self.client_id, "iat": int(time.time())}
        if entry.nonce:
            id_token["nonce"] = entry.nonce
        return web.json_response(
            {
                "token_type": "Bearer",
                "access_token": self._sign({**claims, "aud": self.audience}),
                "id_token": self._sign(id_token),
                "expires_in": TOKEN_LIFETIME,
            },
            headers={"Cache-Control": "no-store"},
        )


def _user(sub: str) -> DemoUser | None:
    return next((u for u in USERS if u.sub == sub), None)


def _html(status: int, title: str, body: str) -> web.Response:
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"</head><body>{body}</body></html>"
    )
    return web.Response(
        status=status,
        text=page,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def _page(kind: type[web.HTTPException], title: str, text: str) -> web.HTTPException:
    """An error page to raise (never a redirect)."""
    page = _html(
        kind.status_code, title, f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return kind(text=page.text, content_type="text/html", headers={"Cache-Control": "no-store"})
