"""Whether a host or URL stays on this machine (for the "plain http only to loopback" rules).

Kept out of the server package: the lean worker install and the ``grants``
command use it without aiohttp.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ``::1``)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is a loopback address (or ``localhost``)."""
    return is_loopback_host(urlsplit(url).hostname)
