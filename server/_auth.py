"""JWT bearer-token authentication (PyJWT, JWKS or static public keys).

Every check comes from configuration: the algorithm allow-list (asymmetric
only), required ``exp``/``iss``/``aud``/``sub``, issuer, audience and clock
skew. The algorithm named in a token header is only ever compared against the
allow-list and the key's own algorithm, never trusted to pick the verifier.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from temporal_shield.codec import ConfigError, ShieldError

from ._config import AuthConfig
from ._identity import Identity


class AuthError(ShieldError):
    """The request is not authenticated (HTTP 401). Messages never echo a token."""


class Authenticator:
    """Validates bearer tokens and turns their claims into an :class:`Identity`."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        groups_claim: str = "groups",
        permissions_claim: str = "permissions",
    ) -> None:
        """Load static keys and prepare the JWKS client.

        Raises:
            ConfigError: a public key file cannot be read.
        """
        self._config = config
        self._cache_ttl = 60.0
        self._cache_size = 10_000
        self._verified: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._groups_claim = groups_claim
        self._permissions_claim = permissions_claim
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
                return await self.verify(token)
            except AuthError as exc:
                error = error or exc
        assert error is not None
        raise error

    async def verify(self, token: str) -> Identity:
        """Verify one JWT (or reuse a recent verification) and return its identity.

        The Web UI sends one request per payload with the same token, so a
        successful verification is cached for at most ``verified_cache_ttl``
        seconds and never past the token's own ``exp`` (keyed by the token's
        SHA-256; the token itself is not kept).

        Raises:
            AuthError: malformed, unsigned, wrongly signed, expired, not yet
                valid, wrong issuer/audience, unknown key or missing claims.
        """
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._verified.get(digest)
        if cached is not None and cached[0] > now:
            self._verified.move_to_end(digest)
            return cached[1]
        identity, expires = await self._verify(token)
        self._verified[digest] = (
            min(expires + self._config.leeway, now + self._cache_ttl),
            identity,
        )
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if alg not in self._config.algorithms:
            raise AuthError("token algorithm not allowed")
        key = await self._key_for(header.get("kid"), str(alg))
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
        return self._identity(claims), float(claims["exp"])

    async def _key_for(self, kid: object, alg: str) -> Any:
        if isinstance(kid, str) and kid in self._static:
            return self._static[kid]
        if self._jwks is not None and isinstance(kid, str):
            try:
                jwk = await asyncio.to_thread(self._jwks.get_signing_key, kid)
            except jwt.PyJWKClientError:
                raise AuthError("unknown signing key") from None
            # A key that declares its algorithm only verifies that algorithm.
            if jwk.algorithm_name and jwk.algorithm_name != alg:
                raise AuthError("token algorithm not allowed for this key")
            return jwk.key
        if kid is None and len(self._static) == 1:
            return next(iter(self._static.values()))
        raise AuthError("unknown signing key")

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        return Identity(
            subject=str(claims["sub"]),
            email=str(claims.get("email", "")),
            groups=_claim_set(claims.get(self._groups_claim)),
            permissions=_claim_set(claims.get(self._permissions_claim)),
            token_id=str(claims.get("jti", "")),
        )


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _claim_set(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    return frozenset()
