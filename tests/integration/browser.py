"""Chromium for the Web UI tests: Debian's browser driven by Playwright (GUIDE §3)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from ..helpers import require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def require_browser() -> None:
    """Skip (fail under CI=true) without Chromium or Playwright."""
    require(Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        require(False, "playwright is not installed")


async def wait_for(page: Any, *texts: str, seconds: float = 40.0) -> str:
    """The page's text once it shows any of ``texts`` (or after ``seconds``)."""
    text = ""
    for _ in range(int(seconds * 2)):
        text = await page.inner_text("body")
        if any(t in text for t in texts):
            break
        await asyncio.sleep(0.5)
    return text
