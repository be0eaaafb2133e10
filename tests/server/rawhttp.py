"""HTTP/1.1 on a raw socket: for requests an HTTP client library refuses to send
(non-UTF-8 header bytes, malformed header lines, a body cut short)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def raw(
    host: str, port: int, request: bytes, *, pause: float = 0.0, tail: bytes = b""
) -> bytes:
    """Send ``request`` (then, after ``pause``, ``tail``) and read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    if pause:
        await asyncio.sleep(pause)
    if tail:
        writer.write(tail)
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def post(path: str, headers: dict[str, str] | list[bytes], body: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if isinstance(headers, dict):
        lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    else:
        lines += headers
    return b"\r\n".join([*lines, b"", b""]) + body
