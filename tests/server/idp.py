"""A stand-in identity provider: signing keys, a real JWKS endpoint, token minting."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test/"
AUDIENCE = "temporal-codec"


class Idp:
    """RSA and EC signing keys published as a JWKS over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def private_jwks(self) -> dict[str, Any]:
        """The RSA signing key as a private JWKS (for an OpenID Provider to sign with)."""
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa))
        return {"keys": [{**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"}]}

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk.update(kid="rsa-1", use="sig", alg="RS256")
        ec_jwk.update(kid="ec-1", use="sig", alg="ES256")
        return {"keys": [rsa_jwk, ec_jwk]}

    async def start(self) -> None:
        async def handler(request: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": "user-1",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, *, alg: str = "RS256", kid: str | None = None, key: Any = None, **claims: Any
    ) -> str:
        if key is None:
            key = self.ec if alg == "ES256" else self.rsa
        kid = kid if kid is not None else ("ec-1" if alg == "ES256" else "rsa-1")
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers={"kid": kid})
