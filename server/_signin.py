"""Sign-in at the codec server: OpenID Connect authorization code flow with PKCE.

A person opens ``<public_url>/auth/login``, signs in at the organisation's
identity provider, and comes back to ``/auth/callback`` with a code. The
server exchanges it (with the PKCE verifier), verifies the ID token (signature
from the provider's JWKS, ``iss``, ``aud``, ``exp``, ``nonce``), and sets a
session cookie on its own origin that the Web UI sends with "Include
cross-origin credentials". See ``docs/sign-in.md``.

The protocol work (authorization URL, PKCE, code exchange, client
authentication) is Authlib's; the ID token is verified with PyJWT and the
provider's JWKS, the same way bearer tokens are.

Cookies (sealed with the server secret, see ``_secrets``):

* the login transaction (``state``, ``nonce``, PKCE verifier, where to return,
  what was asked for): ``SameSite=Lax``, ten minutes, bound to ``state``, used
  once;
* the session (the claims the policy needs, never a token):
  ``__Host-temporal-shield``, ``HttpOnly; Secure; SameSite=None; Path=/``, for
  at most ``oidc.session_lifetime`` and never past the ID token's ``exp``.

Cookie authentication is accepted only from the allowed origins (see
``_authn``), and nothing changes state on a GET but the sign-in itself.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from aiohttp import web

from temporal_shield.codec import ConfigError, ShieldError
from temporal_shield.converter._net import is_loopback_url

from ._auth import DEVELOPMENT_MARKER, AuthError, identity_from_claims
from ._config import ALGORITHMS, ServerConfig
from ._identity import AUTH_SESSION, Identity
from ._secrets import SealError, ServerSecret

if TYPE_CHECKING:
    from ._app import State

log = logging.getLogger("temporal_shield.server")

SESSION_COOKIE = "__Host-temporal-shield"
"""The session cookie (``__Host-``: Secure, path ``/``, no ``Domain``: only this origin)."""
LOGIN_COOKIE = "__Host-temporal-shield-login"
"""The login transaction cookie (state, nonce, PKCE verifier)."""
LOGIN_TTL = 600.0
"""Seconds a person has to finish signing in at the IdP."""
DISCOVERY_TTL = 3600.0
"""Seconds a discovery document is reused."""
HTTP_TIMEOUT = 5.0
"""Seconds for any call to the identity provider."""
MAX_PARAM_CHARS = 2048
"""Longest query parameter accepted on the sign-in routes."""
_SESSION_CLAIMS = (
    "sub",
    "email",
    "email_verified",
    "acr",
    "amr",
    "auth_time",
    "jti",
)


class SignInError(ShieldError):
    """A sign-in step was refused (HTTP 400): bad or replayed state, IdP error, bad token."""


class IdpUnavailable(ShieldError):
    """The identity provider could not be reached or answered nonsense (HTTP 503)."""


@dataclass(frozen=True)
class _Provider:
    """What discovery says about the identity provider."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    end_session_endpoint: str


class SignIn:
    """The sign-in routes and the session cookie of one codec server."""

    def __init__(
        self,
        config: ServerConfig,
        secret: ServerSecret,
        *,
        groups_claim: str = "groups",
        permissions_claim: str = "permissions",
        allow_development_idp: bool = False,
    ) -> None:
        """Prepare sign-in from ``config.oidc`` (discovery happens on first use).

        Raises:
            ConfigError: unreadable client secret, or an issuer over plain HTTP.
        """
        self._config = config
        self._oidc = config.oidc
        self._secret = secret
        self._groups_claim = groups_claim
        self._permissions_claim = permissions_claim
        self._allow_development_idp = allow_development_idp
        self._client_secret = ""
        if self._oidc.client_secret_file:
            try:
                self._client_secret = Path(self._oidc.client_secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read server.oidc.client_secret_file: {exc.strerror}"
                ) from None
        public = urlsplit(config.public_url)
        self.public_origin = f"{public.scheme}://{public.netloc}"
        self.redirect_uri = config.public_url.rstrip("/") + "/auth/callback"
        self.login_url = config.public_url.rstrip("/") + "/auth/login"
        self.allowed_origins = frozenset({*config.cors_origins, self.public_origin})
        # The sign-in link a notice offers a UI on each allowed origin (built
        # once: every decode request from a browser carries one).
        self.login_links = {
            origin: f"{self.login_url}?{urlencode({'return_to': origin})}"
            for origin in self.allowed_origins
        }
        self._provider: _Provider | None = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()
        self._jwks: jwt.PyJWKClient | None = None
        self.bearer_keys_confirmed = False
        """Whether discovery has shown ``server.auth.jwks_url`` to be this IdP's keys."""
        # Sessions signed out here: id -> when its cookie would have expired.
        self._revoked: dict[str, float] = {}

    # -- the identity provider --------------------------------------------------

    async def confirm_bearer_keys(self) -> None:
        """Before the first bearer token is verified: discovery, once, must pass.

        Raises:
            IdpUnavailable: the IdP cannot be reached yet, or its discovery
                shows that ``server.auth.jwks_url`` holds another party's keys.
        """
        if self.bearer_keys_confirmed:
            return
        try:
            await self.provider()
        except ConfigError as exc:
            log.error("refusing bearer tokens: %s", exc)
            raise IdpUnavailable("the bearer-token keys are not the identity provider's") from None

    async def provider(self) -> _Provider:
        """The provider's endpoints from its discovery document (cached).

        Raises:
            IdpUnavailable: unreachable, or the document is not usable.
            ConfigError: the provider is the demo's development IdP and this
                server was not started by the demo.
        """
        now = time.monotonic()
        if self._provider is not None and now - self._fetched < DISCOVERY_TTL:
            return self._provider
        async with self._lock:
            if self._provider is not None and time.monotonic() - self._fetched < DISCOVERY_TTL:
                return self._provider
            self._provider = await self._discover()
            self._fetched = time.monotonic()
            self.bearer_keys_confirmed = True
            self._jwks = jwt.PyJWKClient(
                self._provider.jwks_uri,
                cache_jwk_set=True,
                lifespan=3600,
                timeout=int(HTTP_TIMEOUT),
            )
            return self._provider

    async def _discover(self) -> _Provider:
        issuer = self._oidc.issuer
        # OIDC Discovery 4.1: a terminating "/" is removed before the suffix; 4.3:
        # the document's issuer is then the configured one exactly (with its "/",
        # if it has one: ID tokens carry it so, and PyJWT compares exactly).
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
                response = await http.get(url)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("OIDC discovery failed: %s", type(exc).__name__)
            raise IdpUnavailable("the identity provider cannot be reached") from None
        if not isinstance(doc, Mapping):
            raise IdpUnavailable("the identity provider's discovery document is not an object")
        if doc.get(DEVELOPMENT_MARKER) is True and not self._allow_development_idp:
            raise ConfigError(
                "server.oidc.issuer is the demo's development identity provider; "
                "it is refused outside `temporal-shield demo`"
            )
        if doc.get("issuer") != issuer:
            # OIDC Discovery 4.3: the document must name the issuer it was fetched for.
            raise IdpUnavailable("the discovery document names another issuer")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not _acceptable_url(
                value, self._oidc.allow_insecure_issuer
            ):
                raise IdpUnavailable(f"the discovery document's {name} is missing or not https")
            endpoints[name] = value
        bearer_keys = self._config.auth.jwks_url
        if bearer_keys and bearer_keys != endpoints["jwks_uri"]:
            # Bearer tokens name this issuer too (see ServerConfig): keys from
            # anywhere else would let another key holder speak for its people.
            raise ConfigError(
                f"server.auth.jwks_url {bearer_keys!r} is not the sign-in identity "
                f"provider's jwks_uri {endpoints['jwks_uri']!r}: bearer tokens must be "
                "verified with the keys of the issuer they name"
            )
        offered = doc.get("id_token_signing_alg_values_supported", ["RS256"])
        algorithms = tuple(
            a for a in (offered if isinstance(offered, list) else []) if a in ALGORITHMS
        )
        if not algorithms:
            raise IdpUnavailable("the identity provider signs ID tokens with no allowed algorithm")
        end_session = doc.get("end_session_endpoint")
        return _Provider(
            issuer=issuer,
            algorithms=algorithms,
            end_session_endpoint=end_session if isinstance(end_session, str) else "",
            **endpoints,
        )

    def _client(self) -> Any:
        with warnings.catch_warnings():
            # Authlib 1.x warns at import that its httpx integration will move
            # (to httpx2) in 2.x; we pin <2, and the warning would alarm users.
            # Its deprecate module adds an "always" filter when imported: first
            # that, then ours in front of it.
            import authlib.deprecate  # noqa: F401

            warnings.simplefilter("ignore", DeprecationWarning)
            from authlib.integrations.httpx_client import AsyncOAuth2Client

        return AsyncOAuth2Client(
            client_id=self._oidc.client_id,
            client_secret=self._client_secret or None,
            scope=" ".join(self._oidc.scopes),
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=("client_secret_basic" if self._client_secret else "none"),
            timeout=HTTP_TIMEOUT,
        )

    # -- the routes -------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        """``GET /auth/login``: start a sign-in (redirect to the identity provider).

        Query: ``return_to`` (an allowed origin's URL), ``acr_values`` (each
        listed in ``oidc.acr_values``), ``max_age`` (seconds): the last two ask
        the IdP for a stronger or fresher sign-in (step-up).

        Raises:
            SignInError: a parameter is not acceptable.
            IdpUnavailable: the IdP cannot be reached.
        """
        query = request.query
        if any(len(v) > MAX_PARAM_CHARS for v in query.values()):
            raise SignInError("sign-in parameter too long")
        return_to = query.get("return_to", "")
        if return_to and not self._may_return_to(return_to):
            raise SignInError("return_to must be a URL of an allowed origin")
        acr_values = query.get("acr_values", "").split()
        unknown = [v for v in acr_values if v not in self._oidc.acr_values]
        if unknown:
            raise SignInError("acr_values not offered by this server")
        max_age = query.get("max_age", "")
        if max_age and (not (max_age.isascii() and max_age.isdigit()) or len(max_age) > 9):
            raise SignInError("max_age must be a number of seconds")
        provider = await self.provider()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        extra: dict[str, str] = {}
        if acr_values:
            extra["acr_values"] = " ".join(acr_values)
        if max_age:
            extra["max_age"] = max_age
        if acr_values or max_age:
            extra["prompt"] = "login"  # a step-up must authenticate again
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                provider.authorization_endpoint,
                state=state,
                nonce=nonce,
                code_verifier=verifier,
                **extra,
            )
        transaction = json.dumps(
            {"state": state, "nonce": nonce, "verifier": verifier, "return_to": return_to}
        ).encode()
        response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
        response.set_cookie(
            LOGIN_COOKIE,
            self._secret.seal("login", transaction, ttl=LOGIN_TTL),
            max_age=int(LOGIN_TTL),
            path="/",
            secure=True,
            httponly=True,
            # Lax: the IdP sends the person back with a top-level GET navigation.
            samesite="Lax",
        )
        return response

    async def callback(self, request: web.Request) -> tuple[web.Response, Identity]:
        """``GET /auth/callback``: finish a sign-in and set the session cookie.

        Returns:
            The response (a redirect to ``return_to`` or a short page) and the
            signed-in identity (for the audit record).

        Raises:
            SignInError: no or another transaction, an IdP error, a bad token.
            IdpUnavailable: the IdP cannot be reached.
        """
        query = request.query
        if any(len(v) > MAX_PARAM_CHARS for v in query.values()):
            raise SignInError("sign-in parameter too long")
        sealed = request.cookies.get(LOGIN_COOKIE, "")
        try:
            transaction = json.loads(self._secret.open("login", sealed))
        except (SealError, ValueError):
            raise SignInError("no sign-in in progress here (start again)") from None
        if "error" in query:
            # Never echoed: error_description is the IdP's (or an attacker's) text.
            code = query["error"]
            raise SignInError(
                f"the identity provider refused the sign-in ({code})"
                if code.replace("_", "").isalnum() and len(code) <= 64
                else "the identity provider refused the sign-in"
            )
        state = query.get("state", "")
        if not secrets.compare_digest(state.encode(), str(transaction["state"]).encode()):
            raise SignInError("sign-in state does not match (start again)")
        code = query.get("code", "")
        if not code:
            raise SignInError("sign-in response has no code")
        provider = await self.provider()
        try:
            async with self._client() as client:
                token = await client.fetch_token(
                    provider.token_endpoint,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=transaction["verifier"],
                )
        except httpx.HTTPError as exc:
            log.warning("OIDC code exchange failed: %s", type(exc).__name__)
            raise IdpUnavailable("the identity provider cannot be reached") from None
        except Exception as exc:  # Authlib's OAuth errors: the IdP refused the code
            log.warning("OIDC code exchange refused: %s", type(exc).__name__)
            raise SignInError("the identity provider refused the code") from None
        id_token = token.get("id_token") if isinstance(token, Mapping) else None
        if not isinstance(id_token, str):
            raise SignInError("the identity provider returned no ID token")
        claims = await self._verify_id_token(id_token, provider, str(transaction["nonce"]))
        identity, cookie, lifetime = self._session(claims)
        return_to = str(transaction.get("return_to") or "")
        if return_to:
            response = web.Response(
                status=303, headers={"Location": return_to, "Cache-Control": "no-store"}
            )
        else:
            response = web.Response(
                text=_page(
                    "Signed in",
                    f"Signed in as {identity.subject}. You can go back to the Temporal UI "
                    "and reload the page.",
                ),
                content_type="text/html",
                headers={"Cache-Control": "no-store"},
            )
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(lifetime),
            path="/",
            secure=True,
            httponly=True,
            samesite="None",
        )
        response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
        return response, identity

    async def _verify_id_token(
        self, id_token: str, provider: _Provider, nonce: str
    ) -> dict[str, Any]:
        assert self._jwks is not None
        try:
            header = jwt.get_unverified_header(id_token)
            alg = header.get("alg")
            if not isinstance(alg, str) or alg not in provider.algorithms:
                raise SignInError("ID token algorithm not allowed")
            key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, id_token)
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key.key,
                algorithms=list(provider.algorithms),
                audience=self._oidc.client_id,
                issuer=provider.issuer,
                leeway=self._config.auth.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except SignInError:
            raise
        except jwt.PyJWTError as exc:
            raise SignInError(f"ID token refused ({type(exc).__name__})") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise SignInError("ID token nonce does not match this sign-in")
        azp = claims.get("azp")
        if azp is not None and azp != self._oidc.client_id:
            raise SignInError("ID token was issued to another client")
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and azp is None:
            # OIDC Core 3.1.3.7: a token also meant for other clients must say
            # which one it was issued to; we trust no other audience.
            raise SignInError("ID token has several audiences and no azp")
        return claims

    def _session(self, claims: Mapping[str, Any]) -> tuple[Identity, str, float]:
        """The identity, sealed cookie and lifetime of a new session."""
        now = time.time()
        lifetime = min(self._oidc.session_lifetime, float(claims["exp"]) - now)
        if lifetime <= 0:
            raise SignInError("ID token already expired")
        kept = {
            name: claims[name]
            for name in (*_SESSION_CLAIMS, self._groups_claim, self._permissions_claim)
            if name in claims
        }
        session_id = secrets.token_urlsafe(16)
        try:
            identity = self._identity(kept, session_id)
        except AuthError as exc:
            raise SignInError(f"ID token refused: {exc}") from None
        body = json.dumps({"sid": session_id, "claims": kept}).encode()
        return identity, self._secret.seal("session", body, ttl=lifetime, now=now), lifetime

    def _identity(self, claims: Mapping[str, Any], session_id: str) -> Identity:
        return identity_from_claims(
            claims,
            groups_claim=self._groups_claim,
            permissions_claim=self._permissions_claim,
            auth_method=AUTH_SESSION,
            session_id=session_id,
        )

    def session(self, request: web.Request, *, read_only: bool = False) -> Identity | None:
        """The identity of the request's session cookie (``None``: no cookie).

        The cookie rides along with any site's request, so it counts only on
        requests from an allowed origin (the UI, this server's own pages): the
        CSRF defence. With ``read_only`` (a look at the session that changes
        nothing) a same-origin page load without an ``Origin`` header counts too.

        Raises:
            AuthError: a cookie that is invalid, expired, signed out, or sent
                from an origin that may not use it.
        """
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        origin = request.headers.get("Origin")
        navigation = (
            read_only
            and origin is None
            and request.headers.get("Sec-Fetch-Site", "none") in ("none", "same-origin")
        )
        if not navigation and (origin is None or origin not in self.allowed_origins):
            raise AuthError("session cookie refused: request not from an allowed origin")
        try:
            body = json.loads(self._secret.open("session", cookie))
            session_id = str(body["sid"])
            claims = body["claims"]
        except (SealError, ValueError, KeyError, TypeError):
            raise AuthError("session expired or invalid: sign in again") from None
        if session_id in self._revoked:
            raise AuthError("signed out: sign in again")
        return self._identity(claims, session_id)

    def sign_out(self, identity: Identity) -> None:
        """Refuse ``identity``'s session from now on, in this process."""
        now = time.time()
        for sid, until in list(self._revoked.items()):
            if until < now:
                del self._revoked[sid]
        self._revoked[identity.session_id] = now + self._oidc.session_lifetime

    def _may_return_to(self, url: str) -> bool:
        # Visible ASCII only: urlsplit drops tabs and newlines and keeps NUL,
        # but the raw string becomes the Location header after the sign-in.
        if not all("!" <= c <= "~" for c in url):
            return False
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or "\\" in url:
            return False
        return f"{parts.scheme}://{parts.netloc}" in self.allowed_origins


def _acceptable_url(url: str, insecure_ok: bool) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and bool(parts.hostname) and (insecure_ok or is_loopback_url(url))


def _page(title: str, text: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )


def install(app: web.Application, state: State, *, allow_development_idp: bool = False) -> None:
    """Add the sign-in routes to ``app`` when ``state.config.oidc`` is enabled."""
    config = state.config
    if not config.oidc.enabled:
        return
    from ._app import _edge, audit_sign_in

    policy_claims = state.claims
    sign_in = SignIn(
        config,
        ServerSecret.load(config.secret_file),
        groups_claim=policy_claims[0],
        permissions_claim=policy_claims[1],
        allow_development_idp=allow_development_idp,
    )
    state.sign_in = sign_in

    async def login(request: web.Request, state: State) -> web.StreamResponse:
        return await sign_in.login(request)

    async def callback(request: web.Request, state: State) -> web.StreamResponse:
        try:
            response, identity = await sign_in.callback(request)
        except (SignInError, IdpUnavailable) as exc:
            await audit_sign_in(request, state, "sign-in", None, "deny", 400, str(exc))
            raise
        await audit_sign_in(request, state, "sign-in", identity, "allow", response.status, "")
        return response

    async def logout(request: web.Request, state: State) -> web.StreamResponse:
        identity = sign_in.session(request)  # origin-checked: no cross-site sign-out
        response = web.json_response({"signed_out": identity is not None})
        if identity is not None:
            sign_in.sign_out(identity)
            await audit_sign_in(request, state, "sign-out", identity, "allow", 200, "")
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="None")
        return response

    async def whoami(request: web.Request, state: State) -> web.StreamResponse:
        identity = sign_in.session(request, read_only=True)
        if identity is None:
            raise AuthError("not signed in")
        return web.json_response(
            {
                "subject": identity.subject,
                "email": identity.email,
                "groups": sorted(identity.groups),
                "acr": identity.acr,
                "amr": sorted(identity.amr),
                "auth_time": identity.auth_time,
                "auth": identity.auth_method,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def discover(app: web.Application) -> None:
        # At start: a refused provider (the demo's development IdP) stops the
        # server; an unreachable one is tried again at the first sign-in.
        try:
            await sign_in.provider()
        except IdpUnavailable as exc:
            log.warning("sign-in: %s; will retry at the first sign-in", exc)

    app.on_startup.append(discover)
    app.router.add_get("/auth/login", _edge(login, state))
    app.router.add_get("/auth/callback", _edge(callback, state))
    app.router.add_post("/auth/logout", _edge(logout, state))
    app.router.add_get("/auth/session", _edge(whoami, state))
