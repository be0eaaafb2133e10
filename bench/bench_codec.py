"""Codec round trips against the peers a user would pick instead, measured in one run.

Payloads are realistic JSON: order records with customer names, e-mail addresses,
postal addresses, line items, amounts and free-text notes (:func:`json_like`,
deterministic). For each size (256 B, 4 KiB, 64 KiB, 1 MiB) every contender does
one-payload ``encode`` + ``decode`` round trips in interleaved rounds (the order
rotates each round); the figures are medians over the rounds, and each ratio is
the median of the per-round ratios, so load from other processes hits both sides
of a ratio alike. Time is this process's CPU time (``time.process_time``): on a
shared machine wall-clock rates move with the neighbours' load, CPU time per
round trip much less. Contenders:

* ``shield``   — temporal-shield with its defaults (local keyring, zstd at the
  configured level above the threshold, key commitment, namespace binding);
* ``no-zstd``  — the same codec with compression switched off (so compression is
  never applied);
* ``sample``   — the shape of Temporal's samples-python ``encryption/codec.py``
  (written here, not imported): one static AES-256-GCM key, no compression;
  ``encode`` builds ``Payload(metadata={encoding, encryption-key-id}, data=nonce
  || AESGCM.encrypt(nonce, p.SerializeToString(), None))`` in a list
  comprehension; ``decode`` reads ``encoding`` and ``encryption-key-id`` with
  ``metadata.get(..., b"").decode()``, checks the key id and returns
  ``Payload.FromString(AESGCM.decrypt(data[:12], data[12:], None))``. (The real
  sample's codec *server* converts with protobuf ``json_format``; that cost belongs
  to ``bench/bench_server.py``, not here.)
* ``temporalcodec`` — the PyPI codec of that name (``EncryptionCodec``), installed
  into this interpreter with pip by the bench itself when missing;
* ``raw``      — zstd at shield's level + AES-256-GCM on the serialized payload,
  no envelope and no Temporal objects: the ceiling for large payloads.

Then the goals of issue 13 as ratios, compressed sizes, a compression-level table
(the measurement the defaults come from), the KMS calls for 100,000 payloads and
the bytes of overhead per payload.

glibc's malloc returns freed megabyte buffers to the kernel and page-faults them
back in on the next allocation; at 1 MiB that costs more than the cryptography
and lands on whichever codec happens to hold one more live buffer. The script
therefore re-runs itself with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` raised (the same tuning is recommended for workers
that move large payloads); ``--system-malloc`` measures without it.

    .venv/bin/python -m bench.bench_codec [--quick] [--system-malloc]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from temporal_shield.codec import CompressionConfig, Keyring
from temporal_shield.converter import KeysConfig, ShieldCodec, ShieldConfig, build_codec

SIZES = [256, 4 * 1024, 64 * 1024, 1024 * 1024]
TEMPORALCODEC = "temporalcodec==0.6.1"
LZ4 = "lz4==4.4.5"


class StaticKeyCodec(PayloadCodec):
    """The shape of Temporal's samples-python ``encryption/codec.py`` (see module docs)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key_id = "test-key-id"
        self.key = key or os.urandom(32)
        self.encryptor = AESGCM(self.key)

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [
            Payload(
                metadata={
                    "encoding": b"binary/encrypted",
                    "encryption-key-id": self.key_id.encode(),
                },
                data=self.encrypt(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        ret: list[Payload] = []
        for p in payloads:
            if p.metadata.get("encoding", b"").decode() != "binary/encrypted":
                ret.append(p)
                continue
            key_id = p.metadata.get("encryption-key-id", b"").decode()
            if key_id != self.key_id:
                raise ValueError(f"Unrecognized key ID {key_id}")
            ret.append(Payload.FromString(self.decrypt(p.data)))
        return ret

    def encrypt(self, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.encryptor.encrypt(nonce, data, None)

    def decrypt(self, data: bytes) -> bytes:
        return self.encryptor.decrypt(data[:12], data[12:], None)


# -- realistic data ------------------------------------------------------------------------

_FIRST = [
    "Maria",
    "James",
    "Aisha",
    "Wei",
    "Olivia",
    "Liam",
    "Sofia",
    "Noah",
    "Priya",
    "Lucas",
    "Emma",
    "Mateo",
    "Yuki",
    "Omar",
    "Chloe",
    "Diego",
    "Hannah",
    "Ivan",
    "Fatima",
    "Ethan",
]
_LAST = [
    "Garcia",
    "Smith",
    "Chen",
    "Okafor",
    "Muller",
    "Rossi",
    "Tanaka",
    "Kowalski",
    "Nguyen",
    "Johnson",
    "Silva",
    "Dubois",
    "Novak",
    "Haddad",
    "Larsen",
    "Brown",
    "Patel",
    "Kim",
    "Lopez",
    "Walker",
]
_STREETS = [
    "Maple",
    "Oak",
    "Cedar",
    "Elm",
    "Pine",
    "Willow",
    "Lakeview",
    "Hillcrest",
    "Sunset",
    "Riverside",
    "Park",
    "Church",
    "Station",
    "Mill",
    "Highland",
]
_KINDS = ["Street", "Avenue", "Road", "Lane", "Drive", "Court", "Way", "Boulevard"]
_CITIES = [
    ("Springfield", "IL", "62701", "US"),
    ("Portland", "OR", "97205", "US"),
    ("Austin", "TX", "73301", "US"),
    ("Toronto", "ON", "M5V 2T6", "CA"),
    ("Manchester", "", "M1 1AE", "GB"),
    ("Berlin", "", "10115", "DE"),
    ("Lyon", "", "69001", "FR"),
    ("Denver", "CO", "80202", "US"),
]
_PRODUCTS = [
    ("Wireless Mouse", 24.99),
    ("USB-C Charger 65W", 39.0),
    ("Noise Cancelling Headphones", 199.0),
    ("Standing Desk Mat", 45.5),
    ("Ergonomic Keyboard", 89.99),
    ("27in Monitor", 279.0),
    ("Laptop Sleeve 14in", 29.95),
    ("HDMI Cable 2m", 12.49),
    ("Webcam 1080p", 64.0),
    ("Desk Lamp LED", 34.75),
]
_NOTE = [
    "please",
    "leave",
    "the",
    "parcel",
    "at",
    "the",
    "back",
    "door",
    "customer",
    "asked",
    "for",
    "a",
    "call",
    "before",
    "delivery",
    "gift",
    "wrap",
    "requested",
    "invoice",
    "to",
    "accounts",
    "payable",
    "fragile",
    "handle",
    "with",
    "care",
    "deliver",
    "after",
    "5pm",
    "on",
    "weekdays",
    "signature",
    "required",
    "address",
    "verified",
    "by",
    "phone",
]
_STATUS = ["pending", "paid", "packed", "shipped", "delivered"]


def _order(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    city, region, postal, country = rng.choice(_CITIES)
    items = []
    amount = 0.0
    for _ in range(rng.randint(1, 4)):
        name, price = rng.choice(_PRODUCTS)
        quantity = rng.randint(1, 5)
        amount += quantity * price
        items.append(
            {
                "sku": f"SKU-{rng.randrange(10000, 99999)}",
                "name": name,
                "quantity": quantity,
                "unit_price": price,
            }
        )
    return {
        "order_id": f"ORD-{rng.randrange(10**7, 10**8)}",
        "created_at": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
        "customer": {
            "id": f"cus_{rng.getrandbits(48):012x}",
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com",
            "phone": f"+1-555-{rng.randrange(10000):04d}",
        },
        "shipping_address": {
            "line1": f"{rng.randint(1, 9999)} {rng.choice(_STREETS)} {rng.choice(_KINDS)}",
            "city": city,
            "region": region,
            "postal_code": postal,
            "country": country,
        },
        "items": items,
        "amount": round(amount, 2),
        "currency": "USD" if country == "US" else "EUR",
        "status": rng.choice(_STATUS),
        "notes": " ".join(rng.choice(_NOTE) for _ in range(rng.randint(0, 14))).capitalize(),
    }


def json_like(size: int, seed: int = 7) -> bytes:
    """``size`` bytes of deterministic JSON order records (the start of a JSON list)."""
    rng = random.Random(seed)
    records = []
    length = 0
    while length < size:
        record = _order(rng)
        records.append(record)
        length += len(json.dumps(record)) + 2
    return json.dumps(records).encode()[:size]


def payload_of(size: int) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json_like(size))


# -- peers ---------------------------------------------------------------------------------


def import_or_install(module: str, requirement: str) -> Any:
    """``module``, pip-installed into this interpreter from ``requirement`` if missing.

    Returns ``None`` (after saying why) when pip fails: the contender is left out.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", requirement],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"{requirement}: pip install failed, left out:\n{done.stderr[-500:]}")
            return None
        importlib.invalidate_caches()
        return importlib.import_module(module)


def temporalcodec_peer() -> PayloadCodec | None:
    """``temporalcodec.encryption.EncryptionCodec``, pip-installed here if missing."""
    module = import_or_install("temporalcodec.encryption", TEMPORALCODEC)
    if module is None:
        return None
    # Its keys are 32-character strings used as AES-256 keys (``key.encode()``).
    codec: PayloadCodec = module.EncryptionCodec([{"id": "bench", "key": os.urandom(16).hex()}])
    return codec


class RawCodec:
    """zstd at ``level`` + AES-256-GCM on the serialized payload (no envelope)."""

    def __init__(self, compression: CompressionConfig) -> None:
        self.aead = AESGCM(os.urandom(32))
        self.cctx = zstandard.ZstdCompressor(level=compression.level, write_content_size=True)
        self.dctx = zstandard.ZstdDecompressor()
        self.threshold = compression.threshold

    def round_trip(self, payload: Payload) -> Payload:
        data = payload.SerializeToString()
        squeeze = len(data) >= self.threshold
        nonce = os.urandom(12)
        ct = self.aead.encrypt(nonce, self.cctx.compress(data) if squeeze else data, None)
        body = self.aead.decrypt(nonce, ct, None)
        return Payload.FromString(self.dctx.decompress(body) if squeeze else body)


# -- timing --------------------------------------------------------------------------------

RoundTrip = Callable[[], Awaitable[None]]


def codec_round_trip(codec: PayloadCodec, payload: Payload) -> RoundTrip:
    async def once() -> None:
        decoded = await codec.decode(await codec.encode([payload]))
        assert decoded[0].data == payload.data

    return once


def codec_encode(codec: PayloadCodec, payload: Payload) -> RoundTrip:
    async def once() -> None:
        await codec.encode([payload])

    return once


def codec_decode(codec: PayloadCodec, encoded: list[Payload]) -> RoundTrip:
    async def once() -> None:
        await codec.decode(encoded)

    return once


def raw_round_trip(raw: RawCodec, payload: Payload) -> RoundTrip:
    async def once() -> None:
        assert raw.round_trip(payload).data == payload.data

    return once


async def timed(fn: RoundTrip, n: int) -> float:
    """Round trips per CPU second over ``n`` calls (see module docs)."""
    t0 = time.process_time()
    for _ in range(n):
        await fn()
    return n / (time.process_time() - t0)


async def interleaved(
    contenders: dict[str, RoundTrip], rounds: int, round_seconds: float
) -> dict[str, list[float]]:
    """Per-round rates of every contender, in rounds whose order rotates."""
    counts = {}
    for name, fn in contenders.items():
        await timed(fn, 3)  # warm caches (data keys, zstd contexts)
        rate = await timed(fn, 20)
        counts[name] = max(3, int(rate * round_seconds))
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        gc.collect()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(await timed(contenders[name], counts[name]))
    return rates


def ratio(rates: dict[str, list[float]], a: str, b: str) -> float | None:
    """Median of the per-round ratios ``a`` ÷ ``b``."""
    if a not in rates or b not in rates:
        return None
    return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


async def encoded_size(codec: PayloadCodec, payload: Payload) -> int:
    return len((await codec.encode([payload]))[0].SerializeToString())


async def main(quick: bool) -> None:
    rounds, round_seconds = (5, 0.05) if quick else (15, 0.15)
    peer = temporalcodec_peer()
    with tempfile.TemporaryDirectory() as tmp:
        ring = Path(tmp) / "keyring.json"
        Keyring.new().save(ring)
        keys = KeysConfig(uri=f"local://{ring}")
        config = ShieldConfig(keys=keys)
        shield = build_codec(config)
        no_zstd = build_codec(ShieldConfig(keys=keys, compression=CompressionConfig(enabled=False)))
        sample = StaticKeyCodec()
        raw = RawCodec(config.compression)
        level = config.compression.level
        print(
            f"shield compression: zstd level {level} from {config.compression.threshold} B\n"
            f"round trips (encode + decode, one payload per call): median payloads per CPU "
            f"second over {rounds} interleaved rounds; ratios = median of per-round ratios\n"
        )
        head = (
            f"{'size':>7} | {'shield/s':>8} {'no-zstd/s':>9} {'sample/s':>8} {'tcodec/s':>8}"
            f" {'raw/s':>8} | {'nozstd/sample':>13} {'nozstd/tcodec':>13} {'shield/sample':>13}"
            f" {'shield/tcodec':>13} {'shield/raw':>10} | {'plain B':>7} {'shield B':>8} {'smaller':>7}"
        )
        print(head)
        print("-" * len(head))
        results: dict[int, dict[str, list[float]]] = {}
        smaller: dict[int, float] = {}
        for size in SIZES:
            payload = payload_of(size)
            contenders = {
                "shield": codec_round_trip(shield, payload),
                "no-zstd": codec_round_trip(no_zstd, payload),
                "sample": codec_round_trip(sample, payload),
                "raw": raw_round_trip(raw, payload),
            }
            if peer is not None:
                contenders["temporalcodec"] = codec_round_trip(peer, payload)
            rates = results[size] = await interleaved(contenders, rounds, round_seconds)
            med = {name: statistics.median(r) for name, r in rates.items()}
            plain = len(payload.SerializeToString())
            sealed = await encoded_size(shield, payload)
            smaller[size] = plain / sealed
            print(
                f"{label(size):>7} | {med['shield']:8.0f} {med['no-zstd']:9.0f} {med['sample']:8.0f}"
                f" {fmt(med.get('temporalcodec'), '8.0f'):>8} {med['raw']:8.0f}"
                f" | {fmt(ratio(rates, 'no-zstd', 'sample')):>13}"
                f" {fmt(ratio(rates, 'no-zstd', 'temporalcodec')):>13}"
                f" {fmt(ratio(rates, 'shield', 'sample')):>13}"
                f" {fmt(ratio(rates, 'shield', 'temporalcodec')):>13}"
                f" {fmt(ratio(rates, 'shield', 'raw')):>10}"
                f" | {plain:7d} {sealed:8d} {smaller[size]:6.2f}x"
            )
        print_goals(results, smaller)
        await encode_and_decode(no_zstd, sample, rounds, round_seconds)
        compression_levels(3 if rounds < 9 else 9)
        await kms_and_overhead(ring)


def print_goals(results: dict[int, dict[str, list[float]]], smaller: dict[int, float]) -> None:
    print("\nissue 13 goals (ratio, target, met?)")

    def line(name: str, value: float | None, target: float) -> None:
        verdict = "n/a" if value is None else ("met" if value >= target else "MISSED")
        print(f"  {name:<44} {fmt(value):>6}  >= {target:<4}  {verdict}")

    for size in SIZES:
        line(f"1. {label(size)} no-zstd / sample", ratio(results[size], "no-zstd", "sample"), 1.0)
        line(
            f"1. {label(size)} no-zstd / temporalcodec",
            ratio(results[size], "no-zstd", "temporalcodec"),
            1.0,
        )
    for size in (4 * 1024, 64 * 1024):
        line(f"2. {label(size)} shield / sample", ratio(results[size], "shield", "sample"), 0.6)
        line(f"2. {label(size)} payload smaller by", smaller[size], 2.5)
    line("2. 1 MiB shield / raw zstd + AES-GCM", ratio(results[SIZES[-1]], "shield", "raw"), 0.9)


async def encode_and_decode(
    no_zstd: PayloadCodec, sample: PayloadCodec, rounds: int, round_seconds: float
) -> None:
    """Goal 1's round trip taken apart: encode and decode each, against the sample."""
    print(
        "\nencode and decode apart, compression not applied: µs per call (median),"
        " and no-zstd ÷ sample in time (median of per-round ratios; < 1 is faster)"
    )
    print(
        f"{'size':>7} | {'no-zstd':>8} {'sample':>8} {'ratio':>6} (encode) |"
        f" {'no-zstd':>8} {'sample':>8} {'ratio':>6} (decode)"
    )
    for size in SIZES[:2]:
        payload = payload_of(size)
        contenders = {}
        for name, codec in (("no-zstd", no_zstd), ("sample", sample)):
            contenders[f"{name} encode"] = codec_encode(codec, payload)
            contenders[f"{name} decode"] = codec_decode(codec, await codec.encode([payload]))
        rates = await interleaved(contenders, rounds, round_seconds)
        cells = []
        for op in ("encode", "decode"):
            ours, theirs = rates[f"no-zstd {op}"], rates[f"sample {op}"]
            cells.append(
                f"{1e6 / statistics.median(ours):8.2f} {1e6 / statistics.median(theirs):8.2f}"
                f" {fmt(ratio(rates, f'sample {op}', f'no-zstd {op}')):>6}"
            )
        print(f"{label(size):>7} | {cells[0]} (encode) | {cells[1]} (decode)")


def compression_levels(rounds: int = 9) -> None:
    """zstd cost and ratio per level on the same data: where the defaults come from.

    With an lz4 column (block format, acceleration 1, pip-installed here if
    missing) for comparison: the fastest common compressor, which shield does
    not use (see docs/benchmarks.md, "Compression that pays for itself").
    Interleaved like the round trips (the order rotates every round), so load
    from other processes hits every column alike; each cell also gives the
    median per-round time relative to zstd level 1, shield's default.
    """
    print(
        "\nzstd (and lz4) on the same data, one reused context, "
        f"{rounds} interleaved rounds: compress + decompress µs, size ratio, "
        "time ÷ zstd 1 (median of per-round ratios)"
    )
    levels = (-1, 1, 3)
    lz4_block = import_or_install("lz4.block", LZ4)
    names = [f"zstd {lv}" for lv in levels] + (["lz4"] if lz4_block is not None else [])
    sizes = [512, 1024, 2048, *SIZES[1:]]
    print(f"{'size':>7} | " + " | ".join(f"{name:>24}" for name in names))
    dctx = zstandard.ZstdDecompressor()
    default = levels.index(1)
    for size in sizes:
        data = json_like(size)
        n = max(3, 300_000 // size)
        pairs: list[tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = []
        for lv in levels:
            cctx = zstandard.ZstdCompressor(level=lv, write_content_size=True)
            pairs.append((cctx.compress, dctx.decompress))
        if lz4_block is not None:
            pairs.append(
                (
                    functools.partial(lz4_block.compress, store_size=False),
                    functools.partial(lz4_block.decompress, uncompressed_size=len(data)),
                )
            )
        times: list[list[float]] = [[] for _ in pairs]
        for r in range(rounds):
            for i in (*range(r % len(pairs), len(pairs)), *range(r % len(pairs))):
                compress, decompress = pairs[i]
                t0 = time.process_time()
                for _ in range(n):
                    decompress(compress(data))
                times[i].append((time.process_time() - t0) / n)
        cells = []
        for (compress, _), spent in zip(pairs, times, strict=True):
            relative = statistics.median(t / d for t, d in zip(spent, times[default], strict=True))
            cells.append(
                f"{statistics.median(spent) * 1e6:8.1f} µs {len(data) / len(compress(data)):5.2f}x"
                f" {relative:4.2f}"
            )
        print(f"{label(size):>7} | " + " | ".join(cells))


async def kms_and_overhead(ring: Path) -> None:
    codec: ShieldCodec = build_codec(ShieldConfig(keys=KeysConfig(uri=f"local://{ring}")))
    payload = payload_of(256)
    batch = [payload] * 100
    for _ in range(1000):
        await codec.decode(await codec.encode(batch))
    stats = codec.envelope.keys.stats
    print(f"\nKMS calls for 100,000 payloads (encode+decode) in one namespace: {stats.kms_calls}")
    fresh = build_codec(ShieldConfig(keys=KeysConfig(uri=f"local://{ring}")))
    encoded = (await codec.encode(batch))[:1]
    for _ in range(1000):
        await fresh.decode(encoded * 100)
    print(
        f"KMS calls for a new reader decoding 100,000 payloads: {fresh.envelope.keys.stats.kms_calls}"
    )
    for size in (0, 256, 4096):
        p = payload_of(size) if size else Payload(metadata={"encoding": b"json/plain"}, data=b"")
        enc = (await codec.encode([p]))[0]
        print(
            f"overhead at {size:>5} B: {len(enc.SerializeToString()) - len(p.SerializeToString()):4d} bytes"
            f" (encoded {len(enc.SerializeToString())} vs {len(p.SerializeToString())})"
        )


MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def run(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short timing budget")
    ap.add_argument("--system-malloc", action="store_true", help="keep glibc malloc defaults")
    args = ap.parse_args(argv)
    if not args.system_malloc and any(os.environ.get(k) != v for k, v in MALLOC_TUNING.items()):
        argv = [sys.executable, "-m", "bench.bench_codec", *sys.argv[1:]]
        os.execve(sys.executable, argv, {**os.environ, **MALLOC_TUNING})  # noqa: S606
    print(f"malloc: {'glibc defaults' if args.system_malloc else 'mmap/trim thresholds 256 MiB'}")
    asyncio.run(main(args.quick))


if __name__ == "__main__":
    run()
