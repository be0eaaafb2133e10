"""JWT bearer-token authentication (PyJWT, JWKS or static public keys).

Every check comes from configuration: the algorithm allow-list (asymmetric
only), required ``exp``/``iss``/``aud``/``sub``, issuer, audience and clock
skew. The algorithm named in a token header is only ever compared against the
allow-list and the key's own algorithm, never trusted to pick the verifier.

A token is untrusted input: whatever it contains (wrong types, odd headers,
non-ASCII, nesting, sizes), verifying it raises :class:`AuthError` and nothing
else, and claims are used only with the types the JWT and OIDC specifications
give them (a string ``groups`` claim is refused, not split).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from temporal_shield.codec import ConfigError, ShieldError

from ._config import AuthConfig
from ._identity import AUTH_BEARER, Identity

log = logging.getLogger("temporal_shield.server")

MAX_TOKEN_CHARS = 64 * 1024
"""Longest token verified at all (real IdP tokens with many groups stay far below)."""
MAX_SUBJECT_CHARS = 255
"""The longest ``sub`` claim accepted (OpenID Connect Core 1.0, section 2)."""
_MAX_NUMERIC_DATE = 253402300799
"""9999-12-31T23:59:59Z: a NumericDate beyond it is not a date (and overflows floats
or datetimes further on)."""


class AuthError(ShieldError):
    """The request is not authenticated (HTTP 401). Messages never echo a token."""


DEVELOPMENT_MARKER = "temporal_shield_development_only"
"""Marks the demo's development identity provider: a member of its discovery
document and a claim in every token it issues (refused outside the demo)."""


class Authenticator:
    """Validates bearer tokens and turns their claims into an :class:`Identity`."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        groups_claim: str = "groups",
        permissions_claim: str = "permissions",
        allow_development_idp: bool = False,
    ) -> None:
        """Load static keys and prepare the JWKS client.

        ``allow_development_idp`` accepts tokens of the demo's development
        identity provider (only ``temporal-shield demo`` passes it).

        Raises:
            ConfigError: a public key file cannot be read.
        """
        self._config = config
        self._cache_ttl = 60.0
        self._cache_size = 10_000
        self._verified: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._groups_claim = groups_claim
        self._permissions_claim = permissions_claim
        self._allow_development_idp = allow_development_idp
        self._static: dict[str, Any] = {}
        for name in config.public_key_files:
            path = Path(name)
            try:
                self._static[path.stem] = load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load JWT public key {path}: {exc}") from None
        self._jwks = (
            jwt.PyJWKClient(
                config.jwks_url,
                cache_jwk_set=True,
                lifespan=config.jwks_cache_ttl,
                cooldown_duration=config.jwks_min_refresh_interval,
                timeout=5,
            )
            if config.jwks_url
            else None
        )

    def recall(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity of the request's access token if it was verified recently.

        The hot path without a coroutine: most requests carry a token the
        cache holds (see :meth:`verify`). ``None`` says nothing about the
        request: call :meth:`authenticate`, which does every check.
        """
        token = _bearer(headers.get("Authorization"))
        if token is None or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return None
        return self._recall(hashlib.sha256(token.encode()).digest(), time.time())

    def _recall(self, digest: bytes, now: float) -> Identity | None:
        cached = self._verified.get(digest)
        if cached is None or cached[0] <= now:
            return None
        self._verified.move_to_end(digest)
        return cached[1]

    async def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """Authenticate a request from its ``Authorization`` header.

        With ``accept_id_token`` the Web UI's ``Authorization-Extras`` id token
        is tried as well (same checks).

        Raises:
            AuthError: no token, or no token that passes every check.
        """
        access = _bearer(headers.get("Authorization"))
        id_token = headers.get("Authorization-Extras") if self._config.accept_id_token else None
        if access is None and not id_token:
            raise AuthError("missing bearer token")
        error: AuthError | None = None
        for token in (access, id_token):
            if not token:
                continue
            try:
                return await self.verify(token, id_token=token is id_token)
            except AuthError as exc:
                error = error or exc
        assert error is not None
        raise error

    async def verify(self, token: str, *, id_token: bool = False) -> Identity:
        """Verify one JWT (or reuse a recent verification) and return its identity.

        ``id_token``: the token is an OpenID Connect ID token (the Web UI's
        ``Authorization-Extras``), which must also name one of our audiences as
        its authorized party (``azp``) when it lists several audiences.

        The Web UI sends one request per payload with the same token, so a
        successful verification is cached for at most ``verified_cache_ttl``
        seconds and never past the token's own ``exp`` (keyed by the token's
        SHA-256; the token itself is not kept).

        Raises:
            AuthError: malformed, unsigned, wrongly signed, expired, not yet
                valid, wrong issuer/audience, unknown key, missing claims or
                claims of the wrong type. Nothing else: any other failure while
                looking at a hostile token is logged by type only and becomes a
                generic "invalid token".
        """
        # A JWS compact token is three base64url segments: ASCII only. Checked
        # before hashing (aiohttp hands over undecodable header bytes as lone
        # surrogates, which cannot be encoded). Nothing up to the cache lookup
        # can raise anything else, so the hot path needs no wrapper.
        if len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
            raise AuthError("malformed token")
        # An ID token is cached apart: as an access token it skipped the azp check.
        digest = hashlib.sha256((b"id-token:" if id_token else b"") + token.encode()).digest()
        now = time.time()
        identity = self._recall(digest, now)
        if identity is not None:
            return identity
        try:
            identity, expires = await self._verify(token, id_token=id_token)
        except AuthError:
            raise
        except Exception as exc:
            # Type only: a message could quote the token or its claims.
            log.warning("token verification failed unexpectedly: %s", type(exc).__name__)
            raise AuthError("invalid token") from None
        self._verified[digest] = (
            min(expires + self._config.leeway, now + self._cache_ttl),
            identity,
        )
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str, *, id_token: bool = False) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:  # also a non-string kid or a bad crit list
            raise AuthError("malformed token") from None
        if "crit" in header:
            # Identity providers issue plain JWTs; a token that makes an extension
            # critical asks for processing we have not reviewed (PyJWT would
            # accept "b64", RFC 7797): refused, whatever it lists.
            raise AuthError("malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise AuthError("token algorithm not allowed")
        key = await self._key_for(header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self._config.algorithms),
                audience=list(self._config.audience),
                issuer=self._config.issuer,
                leeway=self._config.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim} claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise AuthError("token issued for another issuer or audience") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        # PyJWT accepts numeric strings ("exp": "1700000000") and any magnitude;
        # RFC 7519 NumericDates are JSON numbers, and ours feed float arithmetic.
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _numeric_date(claims[name]):
                raise AuthError(f"token {name} claim must be a NumericDate")
        if id_token:
            # OIDC Core 3.1.3.7, as at sign-in: an ID token also meant for other
            # clients must say it was issued to us.
            audience, azp = claims["aud"], claims.get("azp")
            several = isinstance(audience, list) and len(audience) > 1
            if (several or azp is not None) and azp not in self._config.audience:
                raise AuthError("ID token was issued to another client")
        if DEVELOPMENT_MARKER in claims and not self._allow_development_idp:
            # Anyone can get such a token by clicking a name: never outside the demo.
            raise AuthError(
                "token from the demo's development identity provider: refused outside "
                "temporal-shield demo"
            )
        return self._identity(claims), float(claims["exp"])

    async def _key_for(self, kid: object, alg: str) -> Any:
        if isinstance(kid, str) and kid in self._static:
            return self._static[kid]
        if self._jwks is not None and isinstance(kid, str):
            try:
                jwk = await asyncio.to_thread(self._jwks.get_signing_key, kid)
            except jwt.PyJWTError:  # unknown kid, JWKS unreachable or unusable
                raise AuthError("unknown signing key") from None
            # A key that declares its algorithm only verifies that algorithm.
            if jwk.algorithm_name and jwk.algorithm_name != alg:
                raise AuthError("token algorithm not allowed for this key")
            return jwk.key
        if kid is None and len(self._static) == 1:
            return next(iter(self._static.values()))
        raise AuthError("unknown signing key")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        return identity_from_claims(
            claims, groups_claim=self._groups_claim, permissions_claim=self._permissions_claim
        )


def identity_from_claims(
    claims: Mapping[str, Any],
    *,
    groups_claim: str = "groups",
    permissions_claim: str = "permissions",
    auth_method: str = AUTH_BEARER,
    session_id: str = "",
) -> Identity:
    """The identity verified claims describe (a bearer token's or an ID token's).

    One function for both sign-in paths, so a session and a bearer token with
    the same claims are the same identity to the policy.

    Raises:
        AuthError: a claim we use is missing or has the wrong type.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not any(
        ch.isprintable() and not ch.isspace() for ch in subject
    ):
        # An empty (or invisible: zero-width, BOM) subject would read as
        # "no identity" in audit records, and share one budget with others.
        raise AuthError("token has an empty sub claim")
    if len(subject) > MAX_SUBJECT_CHARS or not subject.isprintable():
        # OIDC Core: at most 255 characters. Nothing unprintable (controls,
        # format characters such as bidi overrides and zero-width joiners, line
        # separators, spaces other than U+0020): such a name reads like another
        # one in a record or a policy (and NUL separates a grant tag's fields).
        raise AuthError("token sub claim is too long or holds unprintable characters")
    return Identity(
        subject=subject,
        email=_optional_string(claims, "email"),
        # OIDC: only the JSON boolean true says the address was verified.
        email_verified=claims.get("email_verified") is True,
        groups=_string_set(claims, groups_claim),
        permissions=_string_set(claims, permissions_claim),
        token_id=_optional_string(claims, "jti"),
        auth_method=auth_method,
        acr=_optional_string(claims, "acr"),
        amr=_string_set(claims, "amr"),
        auth_time=_optional_date(claims, "auth_time"),
        session_id=session_id,
    )


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _numeric_date(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= _MAX_NUMERIC_DATE
    )


def _optional_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if not _numeric_date(value):
        raise AuthError(f"token {name} claim must be a NumericDate")
    return float(value)


def _optional_string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AuthError(f"{name} claim must be a string")
    return value


def _string_set(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    """A list-of-strings claim (groups, permissions); absent or null is empty.

    A single string is refused rather than split: splitting on whitespace would
    turn one group named ``"a b"`` into two grants.
    """
    value = claims.get(name)
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthError(f"{name} claim must be a list of strings")
    return frozenset(value)
