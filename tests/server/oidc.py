"""A real OpenID Provider for sign-in tests, and a person signing in without a browser.

The provider is panva's ``oidc-provider`` (npm, installed by ``scripts/test.sh``
into ``tests/oidc/node_modules``) run by ``tests/oidc/provider.mjs`` on
127.0.0.1. :func:`sign_in` walks its real login form over HTTP, as a browser
would: the codec server's ``/auth/login``, the provider's redirects and form,
back to ``/auth/callback``.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

from temporal_shield._devserver import free_port
from temporal_shield.server._signin import LOGIN_COOKIE, SESSION_COOKIE

from ..helpers import require

HERE = Path(__file__).resolve().parent.parent / "oidc"
CLIENT_ID = "temporal-shield"


class OidcProvider:
    """``oidc-provider`` on a free 127.0.0.1 port, for one codec server's redirect URI."""

    def __init__(
        self,
        redirect_uri: str,
        *,
        client_secret: str = "",
        id_token_ttl: int = 3600,
        jwks: dict[str, Any] | None = None,
    ) -> None:
        """``jwks``: private signing keys for the provider (default: its own)."""
        self.redirect_uri = redirect_uri
        self.client_secret = client_secret
        self.id_token_ttl = id_token_ttl
        self.jwks = jwks
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        node = shutil.which("node")
        require(node is not None, "node is not installed (apt-get install nodejs npm)")
        require(
            (HERE / "node_modules" / "oidc-provider").is_dir(),
            "oidc-provider is not installed: npm ci --prefix tests/oidc",
        )
        assert node is not None
        args = [str(HERE / "provider.mjs"), str(self.port), self.redirect_uri]
        if self.client_secret:
            args.append(self.client_secret)
        self._proc = await asyncio.create_subprocess_exec(
            node,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={
                **os.environ,
                "ID_TOKEN_TTL": str(self.id_token_ttl),
                **({"JWKS": json.dumps(self.jwks)} if self.jwks else {}),
            },
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        assert line.strip() == b"ready", line

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()


@dataclass
class SignedIn:
    """What came back from ``/auth/callback``."""

    status: int
    cookie: str
    """The session cookie's value ("" if none was set)."""
    location: str
    set_cookie: list[str]
    """The callback's raw ``Set-Cookie`` headers (to check attributes)."""


_FORM = re.compile(r"<form[^>]*action=\"([^\"]+)\"[^>]*>(.*?)</form>", re.S | re.I)
_INPUT = re.compile(r"<input([^>]*)>", re.I)
_ATTRIBUTE = re.compile(r"(\w+)=\"([^\"]*)\"")


async def authorize(codec_url: str, query: str = "") -> tuple[str, str]:
    """Start a sign-in: the IdP URL the codec server redirects to, and the login cookie."""
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{codec_url}/auth/login{query}", allow_redirects=False)
        assert resp.status == 302, await resp.text()
        cookie = resp.cookies[LOGIN_COOKIE].value
        return resp.headers["Location"], cookie


async def idp_login(authorize_url: str, login: str, codec_url: str) -> str:
    """Fill the provider's login form as ``login``; the callback URL it sends back to."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        url = authorize_url
        body: dict[str, str] | None = None
        for _ in range(12):
            if body is None:
                resp = await http.get(url, allow_redirects=False)
            else:
                resp = await http.post(url, data=body, allow_redirects=False)
            body = None
            if resp.status in (302, 303):
                url = urljoin(url, resp.headers["Location"])
                if url.startswith(codec_url):
                    return url
                continue
            text = await resp.text()
            assert resp.status == 200, text[:500]
            form = _FORM.search(text)
            assert form is not None, text[:500]
            url = urljoin(url, html.unescape(form.group(1)))
            body = {}
            for tag in _INPUT.findall(form.group(2)):
                attributes = dict(_ATTRIBUTE.findall(tag))
                if "name" in attributes:
                    body[attributes["name"]] = html.unescape(attributes.get("value", ""))
            if "login" in body:
                body.update(login=login, password="any")
        raise AssertionError("the provider never sent the person back")


async def callback(callback_url: str, login_cookie: str) -> SignedIn:
    """Hand the provider's answer to the codec server, with the login cookie."""
    async with aiohttp.ClientSession() as http:
        resp = await http.get(
            callback_url,
            headers={"Cookie": f"{LOGIN_COOKIE}={login_cookie}"} if login_cookie else {},
            allow_redirects=False,
        )
        await resp.read()
        session = resp.cookies.get(SESSION_COOKIE)
        return SignedIn(
            status=resp.status,
            cookie=session.value if session is not None else "",
            location=resp.headers.get("Location", ""),
            set_cookie=resp.headers.getall("Set-Cookie", []),
        )


async def sign_in(codec_url: str, login: str, query: str = "") -> SignedIn:
    """The whole sign-in of ``login`` at the codec server, through the real login form."""
    authorize_url, login_cookie = await authorize(codec_url, query)
    return await callback(await idp_login(authorize_url, login, codec_url), login_cookie)
