"""Bounded zstd compression of serialized payloads, applied before encryption.

Compression is only kept when it helps: payloads under a size threshold are not
compressed, large payloads whose sample does not compress are not compressed
(already compressed or encrypted content), and a compressed form that is not
smaller is discarded. Decompression
is bounded by the *authenticated* original length recorded in the envelope
header, so a hostile frame can never expand beyond what the sender declared
(no decompression bombs) — and a frame that expands to any other length is
rejected outright.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import IntEnum

import zstandard

from ._errors import ConfigError, DecryptionError


class Compression(IntEnum):
    """Compression algorithm ids as written in the envelope header."""

    NONE = 0
    ZSTD = 1


@dataclass(frozen=True, kw_only=True)
class CompressionConfig:
    """How payloads are compressed before they are encrypted."""

    enabled: bool = True
    """Compress at all. Turn off where payload sizes must not depend on content
    (compression-length side channels, see docs/threat-model.md)."""

    threshold: int = 1024
    """Serialized payloads shorter than this many bytes are never compressed. On JSON
    records below 1 KiB zstd saves under 30% (a few hundred bytes at most) for
    about two thirds of the CPU of the rest of the round trip (docs/benchmarks.md)."""

    level: int = 1
    """zstd compression level (1-19). On JSON records level 1 compresses within 3%
    of level 3 at 4 KiB-1 MiB in 0.84-0.92x its time (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ConfigError("compression threshold must be >= 0")
        if not 1 <= self.level <= 19:
            raise ConfigError("compression level must be between 1 and 19")


class _Contexts(threading.local):
    """Per-thread zstd contexts.

    Contexts are costly to create (a fresh decompressor costs more than
    decompressing 4 KiB) and are not thread-safe, so each thread keeps its own.
    """

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        found = self.compressors.get(level)
        if found is None:
            # The frame records its content size; decompress() checks it against
            # the authenticated original length before allocating anything.
            found = self.compressors[level] = zstandard.ZstdCompressor(
                level=level, write_content_size=True
            )
        return found


_contexts = _Contexts()

_PROBE_FROM = 256 * 1024
"""Payloads this large are probed before they are compressed. zstd passes over
incompressible input quickly (about 6 µs per 64 KiB here), so below this size a
probe would cost compressible payloads more than it saves incompressible ones."""
_PROBE_SIZE = 4096
_PROBE_MIN_SAVING = 0.1
"""A probe that saves less than this fraction says the payload will not pay."""


def compress(data: bytes, config: CompressionConfig) -> tuple[Compression, bytes]:
    """Compress ``data`` if the configuration asks for it and it pays.

    Returns:
        The algorithm used and the (possibly unchanged) bytes.
    """
    size = len(data)
    if not config.enabled or size < config.threshold:
        return Compression.NONE, data
    compressor = _contexts.compressor(config.level)
    if size >= _PROBE_FROM:
        # A window from the middle, past the protobuf metadata at the start.
        start = size // 2
        probe = compressor.compress(data[start : start + _PROBE_SIZE])
        if len(probe) > _PROBE_SIZE * (1 - _PROBE_MIN_SAVING):
            return Compression.NONE, data
    packed = compressor.compress(data)
    if len(packed) >= len(data):
        return Compression.NONE, data
    return Compression.ZSTD, packed


def decompress(algorithm: int, data: bytes, original_length: int) -> bytes:
    """Undo :func:`compress`, producing exactly ``original_length`` bytes.

    Raises:
        DecryptionError: the frame is malformed, expands beyond or short of the
            authenticated original length, or names an unknown algorithm. (The
            bytes were authenticated, so this only happens for a hostile or buggy
            sender; it is reported like any other unopenable payload.)
    """
    if algorithm == Compression.NONE:
        if len(data) != original_length:
            raise DecryptionError()
        return data
    if algorithm != Compression.ZSTD:
        raise DecryptionError()
    try:
        # The frame must declare exactly the authenticated length; zstd then
        # refuses to write past it, so nothing larger is ever allocated.
        if zstandard.frame_content_size(data) != original_length:
            raise DecryptionError()
        out = _contexts.decompressor.decompress(
            data, max_output_size=original_length, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise DecryptionError() from exc
    if len(out) != original_length:
        raise DecryptionError()
    return out
