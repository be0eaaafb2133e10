"""Hostile JWTs: whatever a token carries, the answer is 401 JSON, never a 500.

Every token here is signed with the test IdP's real key, so each one reaches
the code that parses headers and claims, not just the signature check. Tokens
PyJWT refuses to mint (a non-string ``kid``, raw JSON) are assembled by hand.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from temporal_shield.server import AuthConfig
from temporal_shield.server._auth import Authenticator, AuthError

from .conftest import ORIGIN, ClientFactory
from .idp import AUDIENCE, ISSUER, Idp


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _signed(idp: Idp, header: Any, claims: Any) -> str:
    """A compact JWS over raw header and claims, RS256-signed with the IdP's key."""
    signing_input = f"{_b64(_json(header))}.{_b64(_json(claims))}"
    signature = idp.rsa.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


HEADER = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}
DEEP = b"[" * 2000 + b"]" * 2000  # deeper than json's recursion limit, < 8 KiB base64


def _claims_json(idp: Idp, **raw: str) -> bytes:
    """Valid claims with some values replaced by raw JSON text (NaN, 1e400, ...)."""
    text = json.dumps({**idp.claims(groups=["engineering"]), **dict.fromkeys(raw, 0)})
    for name, value in raw.items():
        text = text.replace(f'"{name}": 0', f'"{name}": {value}')
    return text.encode()


Case = Callable[[Idp], str]

CASES: dict[str, Case] = {
    # -- header ---------------------------------------------------------------------
    "kid int": lambda i: _signed(i, {**HEADER, "kid": 1}, i.claims()),
    "kid list": lambda i: _signed(i, {**HEADER, "kid": ["rsa-1"]}, i.claims()),
    "kid dict": lambda i: _signed(i, {**HEADER, "kid": {"k": "rsa-1"}}, i.claims()),
    "kid null": lambda i: _signed(i, {**HEADER, "kid": None}, i.claims()),
    "crit exp": lambda i: _signed(i, {**HEADER, "crit": ["exp"]}, i.claims()),
    "crit string": lambda i: _signed(i, {**HEADER, "crit": "b64"}, i.claims()),
    "crit empty": lambda i: _signed(i, {**HEADER, "crit": []}, i.claims()),
    # An extension PyJWT itself understands (RFC 7797): still not ours to accept.
    "crit b64": lambda i: _signed(i, {**HEADER, "crit": ["b64"], "b64": True}, i.claims()),
    "alg list": lambda i: _signed(i, {**HEADER, "alg": ["RS256"]}, i.claims()),
    "alg null": lambda i: _signed(i, {**HEADER, "alg": None}, i.claims()),
    "alg missing": lambda i: _signed(i, {"kid": "rsa-1"}, i.claims()),
    "header is a list": lambda i: _signed(i, ["RS256"], i.claims()),
    "header is a string": lambda i: _signed(i, "RS256", i.claims()),
    "header is a number": lambda i: _signed(i, 1, i.claims()),
    "header not json": lambda i: _signed(i, b"{alg: RS256", i.claims()),
    "header invalid utf-8": lambda i: _signed(i, b'{"alg":"RS256","kid":"\xff"}', i.claims()),
    "header deep nesting": lambda i: _signed(i, b'{"alg":"RS256","x":' + DEEP + b"}", i.claims()),
    # -- claims of the wrong type ---------------------------------------------------
    "exp string": lambda i: i.token(exp="tomorrow"),
    "exp numeric string": lambda i: i.token(exp=str(int(time.time()) + 300)),
    "exp true": lambda i: i.token(exp=True),
    "exp list": lambda i: i.token(exp=[1]),
    "exp huge int": lambda i: _signed(i, HEADER, _claims_json(i, exp="9" * 400)),
    "exp 1e400": lambda i: _signed(i, HEADER, _claims_json(i, exp="1e400")),
    "exp Infinity": lambda i: _signed(i, HEADER, _claims_json(i, exp="Infinity")),
    "exp NaN": lambda i: _signed(i, HEADER, _claims_json(i, exp="NaN")),
    "exp past year 9999": lambda i: i.token(exp=10**12),
    "nbf string": lambda i: i.token(nbf="now"),
    "iat string": lambda i: i.token(iat="now"),
    "iat huge": lambda i: _signed(i, HEADER, _claims_json(i, iat="9" * 400)),
    "iat numeric string": lambda i: i.token(iat=str(int(time.time()))),
    "iss list": lambda i: _signed(i, HEADER, {**i.claims(), "iss": [ISSUER]}),
    "iss dict": lambda i: _signed(i, HEADER, {**i.claims(), "iss": {"u": ISSUER}}),
    "iss int": lambda i: _signed(i, HEADER, {**i.claims(), "iss": 1}),
    "sub dict": lambda i: i.token(sub={"id": "user-1"}),
    "sub list": lambda i: i.token(sub=["user-1"]),
    "sub int": lambda i: i.token(sub=12),
    "sub float": lambda i: i.token(sub=1.5),
    "aud dict": lambda i: i.token(aud={"aud": AUDIENCE}),
    "aud int": lambda i: i.token(aud=7),
    "aud list of ints": lambda i: i.token(aud=[1, 2]),
    "email int": lambda i: i.token(email=5, groups=["engineering"]),
    "email list": lambda i: i.token(email=["cfo@example.com"], email_verified=True),
    "jti dict": lambda i: i.token(jti={"id": 1}, groups=["engineering"]),
    "groups string": lambda i: i.token(groups="engineering"),
    "groups with an int": lambda i: i.token(groups=["engineering", 1]),
    "groups nested list": lambda i: i.token(groups=[["engineering"]]),
    "groups dict": lambda i: i.token(groups={"engineering": True}),
    "permissions string": lambda i: i.token(permissions="dev-team:read"),
    "claims are a list": lambda i: _signed(i, HEADER, [i.claims()]),
    "claims are a string": lambda i: _signed(i, HEADER, "user-1"),
    "claims not json": lambda i: _signed(i, HEADER, b"{sub: 1"),
    "claims deep nesting": lambda i: _signed(i, HEADER, _claims_json(i, x=DEEP.decode())),
    # -- shape ----------------------------------------------------------------------
    "two segments": lambda i: i.token().rpartition(".")[0],
    "four segments": lambda i: i.token() + ".AAAA",
    "empty segments": lambda i: "..",
    "non-ascii": lambda i: i.token()[:-3] + "é日本",
    "padding and spaces": lambda i: i.token().replace(".", "=. ", 1),
}


def _groups_engineering(claims: dict[str, Any]) -> dict[str, Any]:
    return {**claims, "groups": ["engineering"]}


async def test_every_hostile_token_is_401_json_without_the_token(
    make_client: ClientFactory, idp: Idp, audit_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client()
    tokens = {name: make(idp) for name, make in CASES.items()}
    for name, token in tokens.items():
        resp = await client.post(
            "/decode",
            json={"payloads": []},
            headers={
                "Authorization": f"Bearer {token}",
                "X-Namespace": "dev-team",
                "Origin": ORIGIN,
            },
        )
        assert resp.status == 401, name
        assert resp.content_type == "application/json", name
        assert resp.headers.get("Access-Control-Allow-Origin") == ORIGIN, name
        body = await resp.json()
        assert body["error"] == "unauthorized", name
        assert _leaks(token, json.dumps(body)) is None, name
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audited = audit_path.read_text()
    for name, token in tokens.items():
        assert _leaks(token, logged) is None, name
        assert _leaks(token, audited) is None, name
    assert "error" not in {json.loads(line)["decision"] for line in audited.splitlines()}


def _leaks(token: str, text: str) -> str | None:
    """The first segment of ``token`` (16+ characters) found in ``text``, if any."""
    for part in token.split("."):
        if len(part) >= 16 and part in text:
            return part
    return None


async def test_undecodable_header_bytes_in_the_token_are_401(
    make_client: ClientFactory, idp: Idp
) -> None:
    """aiohttp hands invalid UTF-8 header bytes over as lone surrogates."""
    client = await make_client()
    assert client.server.port is not None
    token = idp.token(groups=["engineering"]).encode() + b"\xff\xfe"
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Namespace: dev-team\r\nContent-Length: 15\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token + b'\r\n\r\n{"payloads":[]}'
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split()[1] == b"401"
    _, _, body = rest.partition(b"\r\n\r\n")
    assert json.loads(body)["error"] == "unauthorized"


async def test_verify_raises_only_auth_error(idp: Idp) -> None:
    auth = Authenticator(AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url))
    for token in (
        "x" * 1_000_000,  # huge
        idp.token()[:-2] + "\udcff",  # lone surrogate
        "",
        "a.b.c",
    ):
        with pytest.raises(AuthError):
            await auth.verify(token)


async def test_an_unexpected_failure_is_a_generic_401_logged_by_type_only(
    idp: Idp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The root guard: a failure nobody foresaw in PyJWT or our code is still a 401."""
    auth = Authenticator(AuthConfig(issuer=ISSUER, audience=(AUDIENCE,), jwks_url=idp.url))
    token = idp.token()

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise OverflowError(f"cannot handle {token}")

    monkeypatch.setattr(jwt, "decode", explode)
    with pytest.raises(AuthError, match=r"^invalid token$"):
        await auth.verify(token)
    assert "OverflowError" in caplog.text
    assert _leaks(token, caplog.text) is None


async def test_odd_but_valid_claims_still_authenticate(
    make_client: ClientFactory, idp: Idp
) -> None:
    """The checks refuse wrong types, not legitimate variety."""
    client = await make_client()
    now = time.time()
    valid: list[dict[str, Any]] = [
        {"exp": now + 300.5, "iat": now - 0.5},  # fractional NumericDates
        {"aud": [AUDIENCE, "other"]},
        {"permissions": []},
        {"email_verified": "true"},  # not a boolean: just not verified
    ]
    for claims in valid:
        token = idp.token(**_groups_engineering(claims))
        resp = await client.post(
            "/decode",
            json={"payloads": []},
            headers={"Authorization": f"Bearer {token}", "X-Namespace": "dev-team"},
        )
        assert resp.status == 200, claims
