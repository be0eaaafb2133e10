"""Hostile tests of the envelope: every field authenticated, every failure opaque."""

from __future__ import annotations

import gc
import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temporal_shield.codec import (
    CompressionConfig,
    DataKeyManager,
    DataKeyPolicy,
    DecryptionError,
    Envelope,
    LocalKeyProvider,
    PayloadTooLargeError,
    parse,
)
from temporal_shield.codec._compression import Compression, compress
from temporal_shield.codec._datakeys import CachedKey, DataKey
from temporal_shield.codec._format import Header, HeaderCache

from ..helpers import make_keyring

JSONISH = b'{"patient":"Jane","ssn":"078-05-1120","notes":"' + b"lorem ipsum " * 200 + b'"}'


async def test_round_trip_small_and_compressed(envelope: Envelope) -> None:
    for plaintext in (b"", b"x", b"small", JSONISH):
        sealed = await envelope.seal(plaintext, namespace="default")
        assert len(plaintext) < 8 or plaintext not in sealed.data
        opened = await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
        assert opened.plaintext == plaintext
    header, _ = parse(sealed.data)
    assert header.compression == Compression.ZSTD  # the large one compressed
    assert len(sealed.data) < len(JSONISH)


async def test_compression_off_and_threshold(local_provider: LocalKeyProvider) -> None:
    off = Envelope(DataKeyManager([local_provider]), compression=CompressionConfig(enabled=False))
    sealed = await off.seal(JSONISH, namespace="default")
    assert parse(sealed.data)[0].compression == Compression.NONE
    high = Envelope(
        DataKeyManager([local_provider]), compression=CompressionConfig(threshold=10**6)
    )
    assert parse((await high.seal(JSONISH, namespace="ns")).data)[0].compression == 0
    # Incompressible data is stored uncompressed even above the threshold.
    noise = os.urandom(4096)
    sealed = await Envelope(DataKeyManager([local_provider])).seal(noise, namespace="ns")
    assert parse(sealed.data)[0].compression == Compression.NONE


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=5000),
    namespace=st.text(min_size=1, max_size=40),
    classification=st.sampled_from(["", "phi", "pci", "internal"]),
)
async def test_property_round_trip(
    envelope: Envelope, data: bytes, namespace: str, classification: str
) -> None:
    sealed = await envelope.seal(data, namespace=namespace, classification=classification)
    opened = await envelope.open(sealed.data, key_id=sealed.key_id, namespace=namespace)
    assert opened.plaintext == data
    assert opened.header.classification == classification


async def test_every_flipped_bit_is_rejected(envelope: Envelope) -> None:
    sealed = await envelope.seal(JSONISH, namespace="default", classification="phi")
    data = bytearray(sealed.data)
    for i in range(len(data)):
        for bit in (0, 7):
            data[i] ^= 1 << bit
            with pytest.raises(DecryptionError) as info:
                await envelope.open(bytes(data), key_id=sealed.key_id, namespace=None)
            assert str(info.value) == "payload could not be decrypted"
            data[i] ^= 1 << bit


async def test_every_truncation_is_rejected(envelope: Envelope) -> None:
    sealed = await envelope.seal(b"hello world" * 10, namespace="default")
    for n in range(len(sealed.data)):
        with pytest.raises(DecryptionError):
            await envelope.open(sealed.data[:n], key_id=sealed.key_id, namespace="default")
    with pytest.raises(DecryptionError):
        await envelope.open(sealed.data + b"\0", key_id=sealed.key_id, namespace="default")


async def test_wrong_namespace_is_rejected(envelope: Envelope) -> None:
    sealed = await envelope.seal(b"secret", namespace="payments")
    with pytest.raises(DecryptionError):
        await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")


async def test_namespace_rewritten_in_header_is_rejected(envelope: Envelope) -> None:
    # An attacker who edits the header's namespace (same length) to make it match
    # the target namespace fails: the wrap and the AEAD both bind the original.
    sealed = await envelope.seal(b"secret", namespace="prod-a")
    forged = sealed.data.replace(b"prod-a", b"prod-b", 1)
    with pytest.raises(DecryptionError):
        await envelope.open(forged, key_id=sealed.key_id, namespace="prod-b")


async def test_key_id_changes_are_rejected(tmp_path: Path, envelope: Envelope) -> None:
    sealed = await envelope.seal(b"secret", namespace="default")
    for key_id in ("local:nope", "", sealed.key_id + "x", "arn:aws:kms:us-east-1:1:key/x"):
        with pytest.raises(DecryptionError):
            await envelope.open(sealed.data, key_id=key_id, namespace="default")


async def test_disallowed_key_id_is_rejected(keyring_path: Path) -> None:
    writer = Envelope(DataKeyManager([LocalKeyProvider(keyring_path)]))
    sealed = await writer.seal(b"secret", namespace="default")
    reader = Envelope(
        DataKeyManager([LocalKeyProvider(keyring_path, allowed_key_ids=frozenset({"other"}))])
    )
    with pytest.raises(DecryptionError):
        await reader.open(sealed.data, key_id=sealed.key_id, namespace="default")


async def test_payload_from_another_keyring_is_rejected(tmp_path: Path) -> None:
    a = Envelope(DataKeyManager([make_keyring(tmp_path / "a.json")]))
    b = Envelope(DataKeyManager([make_keyring(tmp_path / "b.json")]))
    sealed = await a.seal(b"secret", namespace="default")
    with pytest.raises(DecryptionError):
        await b.open(sealed.data, key_id=sealed.key_id, namespace="default")


async def test_key_commitment_is_checked(envelope: Envelope) -> None:
    # Swap in the wrapped DEK of another message: the unwrap succeeds (same KEK and
    # namespace) and the payload is refused (by the commitment, or else by AES-GCM
    # under the wrong key: this test alone cannot tell which; the next one can).
    one = await envelope.seal(b"one", namespace="default")
    other = await Envelope(DataKeyManager(envelope.keys.providers)).seal(
        b"two", namespace="default"
    )
    h1, off1 = parse(one.data)
    h2, _ = parse(other.data)
    assert h1.wrapped_dek != h2.wrapped_dek
    forged_header = Header(
        compression=h1.compression,
        original_length=h1.original_length,
        namespace=h1.namespace,
        workflow_id=h1.workflow_id,
        classification=h1.classification,
        wrapped_dek=h2.wrapped_dek,
        commitment=h1.commitment,
        nonce=h1.nonce,
    ).pack()
    with pytest.raises(DecryptionError):
        await envelope.open(forged_header + one.data[off1:], key_id=one.key_id, namespace=None)


async def test_a_wrong_commitment_is_refused_even_where_aes_gcm_would_accept(
    envelope: Envelope,
) -> None:
    """The commitment check on its own (a swapped data key also fails AES-GCM).

    The payload is re-sealed under its own data key with a header that carries
    another commitment, authenticated as AAD like any header: AES-GCM accepts it,
    so only the commitment check can refuse it (the "invisible salamanders"
    attack needs exactly such a payload, under two keys).
    """
    sealed = await envelope.seal(b"one", namespace="default")
    header, offset = parse(sealed.data)
    key = await envelope.keys.decryption_key(sealed.key_id, header.wrapped_dek, header.namespace)
    body = key.aead.decrypt(
        header.nonce, sealed.data[offset:], sealed.data[:offset] + key.aad_suffix
    )

    def resealed(commitment: bytes) -> bytes:
        head = header._replace(commitment=commitment).pack()
        return head + key.aead.encrypt(header.nonce, body, head + key.aad_suffix)

    # The construction is sound: with the true commitment it opens.
    opened = await envelope.open(resealed(header.commitment), key_id=sealed.key_id, namespace=None)
    assert opened.plaintext == b"one"
    with pytest.raises(DecryptionError):
        await envelope.open(resealed(bytes(32)), key_id=sealed.key_id, namespace=None)


async def test_oversize_plaintext_is_refused(local_provider: LocalKeyProvider) -> None:
    env = Envelope(DataKeyManager([local_provider]), max_plaintext=1000)
    with pytest.raises(PayloadTooLargeError):
        await env.seal(b"x" * 1001, namespace="default")
    big = Envelope(DataKeyManager([local_provider]), max_plaintext=10_000)
    sealed = await big.seal(b"x" * 5000, namespace="default")
    with pytest.raises(DecryptionError):  # declared length over the reader's limit
        await env.open(sealed.data, key_id=sealed.key_id, namespace="default")


@pytest.mark.parametrize("content_size", [True, False])
async def test_decompression_bomb_is_refused(envelope: Envelope, content_size: bool) -> None:
    # A sender that lies about the original length: the frame expands beyond it.
    bomb = zstandard.ZstdCompressor(write_content_size=content_size).compress(b"\0" * 10_000_000)
    key = await envelope.keys.encryption_key("default", 0)
    header = Header(
        compression=Compression.ZSTD,
        original_length=100,
        namespace="default",
        workflow_id="",
        classification="",
        wrapped_dek=key.wrapped,
        commitment=key.commitment,
        nonce=os.urandom(12),
    ).pack()
    data = header + key.aead.encrypt(header[-12:], bomb, header + key.key_id.encode())
    with pytest.raises(DecryptionError):
        await envelope.open(data, key_id=key.key_id, namespace="default")


async def test_strict_workflow_binding(envelope: Envelope) -> None:
    sealed = await envelope.seal(b"x", namespace="default", workflow_id="wf-1")
    ok = await envelope.open(
        sealed.data, key_id=sealed.key_id, namespace="default", workflow_id="wf-1"
    )
    assert ok.plaintext == b"x"
    with pytest.raises(DecryptionError):
        await envelope.open(
            sealed.data, key_id=sealed.key_id, namespace="default", workflow_id="wf-2"
        )
    # A reader that does not know the workflow (the codec server) still reads it.
    assert (await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")).plaintext


async def test_garbage_and_wrong_types(envelope: Envelope) -> None:
    for data in (b"", b"TS", b"TS\x02", b"XX" + b"\0" * 100, os.urandom(300)):
        with pytest.raises(DecryptionError):
            await envelope.open(data, key_id="local:x", namespace="default")
    fixed = struct.pack(">2sBBBI", b"TS", 1, 1, 9, 5)  # unknown compression id
    with pytest.raises(DecryptionError):
        await envelope.open(fixed + b"\xff" * 200, key_id="local:x", namespace="default")


async def test_origin_is_version_2_and_authenticated(envelope: Envelope) -> None:
    origin = bytes(range(32))
    sealed = await envelope.seal(b"payload", namespace="default", origin=origin)
    assert sealed.data[2] == 2  # version
    opened = await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    assert opened.header.origin == origin
    assert opened.plaintext == b"payload"
    at = sealed.data.index(origin)
    forged = bytearray(sealed.data)
    forged[at + 5] ^= 0x80
    with pytest.raises(DecryptionError):
        await envelope.open(bytes(forged), key_id=sealed.key_id, namespace="default")
    with pytest.raises(ValueError, match="32-byte"):
        await envelope.seal(b"x", namespace="default", origin=b"short")
    plain = await envelope.seal(b"payload", namespace="default")
    assert plain.data[2] == 1  # no origin: version 1


# -- the synchronous hot path: cached data keys and cached header middles ------------------


async def test_open_cached_needs_a_payload_opened_before(envelope: Envelope) -> None:
    sealed = await envelope.seal(JSONISH, namespace="default", classification="phi")
    args: dict[str, Any] = {
        "key_id": sealed.key_id,
        "namespace": "default",
        "classification": "phi",
    }
    assert envelope.open_cached(sealed.data, **args) is None  # header not seen yet
    assert (await envelope.open(sealed.data, **args)).plaintext == JSONISH
    again = await envelope.seal(JSONISH, namespace="default", classification="phi")
    assert again.data != sealed.data  # fresh nonce
    assert envelope.open_cached(again.data, **args) == JSONISH


async def test_open_cached_refuses_every_flipped_bit_like_open(envelope: Envelope) -> None:
    sealed = await envelope.seal(JSONISH, namespace="default", classification="phi")
    await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    data = bytearray(sealed.data)
    for i in range(len(data)):
        for bit in (0, 7):
            data[i] ^= 1 << bit
            tampered = bytes(data)
            # Either the shortcut does not apply, or it refuses: never plaintext.
            try:
                shortcut = envelope.open_cached(tampered, key_id=sealed.key_id, namespace=None)
            except DecryptionError:
                shortcut = None
            assert shortcut is None
            with pytest.raises(DecryptionError):
                await envelope.open(tampered, key_id=sealed.key_id, namespace=None)
            data[i] ^= 1 << bit
    # The untouched payload still takes the shortcut afterwards.
    assert envelope.open_cached(sealed.data, key_id=sealed.key_id, namespace=None) == JSONISH


async def test_a_different_header_middle_takes_the_full_path(envelope: Envelope) -> None:
    first = await envelope.seal(b"one", namespace="default", classification="phi")
    await envelope.open(first.data, key_id=first.key_id, namespace="default")
    for other in (
        await envelope.seal(b"two", namespace="default", classification="pci"),
        await envelope.seal(b"two", namespace="payments", classification="phi"),
        await envelope.seal(b"two", namespace="default", workflow_id="wf", classification="phi"),
        await envelope.seal(b"two", namespace="default", origin=bytes(32)),  # version 2
    ):
        namespace = parse(other.data)[0].namespace
        assert envelope.open_cached(other.data, key_id=other.key_id, namespace=namespace) is None
        opened = await envelope.open(other.data, key_id=other.key_id, namespace=namespace)
        assert opened.plaintext == b"two"
    # A cached middle of another data key is no shortcut either.
    fresh = Envelope(DataKeyManager(envelope.keys.providers))
    foreign = await fresh.seal(b"one", namespace="default", classification="phi")
    assert envelope.open_cached(foreign.data, key_id=foreign.key_id, namespace="default") is None


async def test_open_cached_applies_every_binding_check(envelope: Envelope) -> None:
    sealed = await envelope.seal(
        b"x", namespace="default", workflow_id="wf-1", classification="phi"
    )
    await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    ok: dict[str, Any] = {"key_id": sealed.key_id, "namespace": "default", "workflow_id": "wf-1"}
    assert envelope.open_cached(sealed.data, **ok, classification="phi") == b"x"
    wrongs: tuple[dict[str, Any], ...] = (
        {"namespace": "payments"},
        {"workflow_id": "wf-2"},
        {"classification": "pci"},
        {"classification": ""},
    )
    for wrong in wrongs:
        with pytest.raises(DecryptionError):
            envelope.open_cached(sealed.data, **{**ok, **wrong})
        with pytest.raises(DecryptionError):
            await envelope.open(sealed.data, **{**ok, **wrong})
    # A key id with no cached data key is left to open(), which refuses it.
    other_key = {**ok, "key_id": sealed.key_id + "x"}
    assert envelope.open_cached(sealed.data, **other_key) is None
    with pytest.raises(DecryptionError):
        await envelope.open(sealed.data, **other_key)
    small = Envelope(envelope.keys, max_plaintext=1)
    big = await envelope.seal(b"xy", namespace="default", workflow_id="wf-1", classification="phi")
    await small.open(sealed.data, **ok)  # fills small's header cache
    with pytest.raises(DecryptionError):  # declared length over the reader's limit
        small.open_cached(big.data, **ok)


async def test_open_cached_leaves_expired_keys_to_the_full_path(
    local_provider: LocalKeyProvider,
) -> None:
    now = [0.0]
    keys = DataKeyManager(
        [local_provider], policy=DataKeyPolicy(decrypt_cache_ttl=10), clock=lambda: now[0]
    )
    envelope = Envelope(keys)
    sealed = await envelope.seal(b"x", namespace="default")
    await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    assert envelope.open_cached(sealed.data, key_id=sealed.key_id, namespace="default") == b"x"
    now[0] = 11.0
    assert envelope.open_cached(sealed.data, key_id=sealed.key_id, namespace="default") is None
    calls = keys.stats.kms_decrypt_calls
    assert (await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")).plaintext
    assert keys.stats.kms_decrypt_calls == calls + 1


def test_header_cache_is_bounded() -> None:
    cache = HeaderCache(size=2)
    headers = []
    entries = []
    for namespace in ("a", "b", "c"):
        header = Header(0, 1, namespace, "", "", b"w" * 40, b"c" * 32, b"n" * 12)
        data = header.pack() + b"t" * 17
        key = DataKey(key_id="k", wrapped=b"w" * 40, namespace=namespace, plaintext=bytes(32))
        entry = CachedKey(key, math.inf, ("k", b"w" * 40, namespace))
        entries.append(entry)  # alive: the cache holds its entries weakly
        cache.remember(header, data, len(data) - 17, b"k", entry)
        headers.append(data)
    assert [cache.find(d) is not None for d in headers] == [False, True, True]


async def test_a_data_key_evicted_from_the_cache_ends_the_shortcut(
    local_provider: LocalKeyProvider,
) -> None:
    keys = DataKeyManager([local_provider], policy=DataKeyPolicy(decrypt_cache_size=1))
    envelope = Envelope(keys)
    reader = Envelope(keys)
    first = await envelope.seal(b"one", namespace="a")
    await reader.open(first.data, key_id=first.key_id, namespace="a")
    assert reader.open_cached(first.data, key_id=first.key_id, namespace="a") == b"one"
    # Another namespace's data key takes the only place in the decryption cache.
    other = await envelope.seal(b"two", namespace="b")
    await reader.open(other.data, key_id=other.key_id, namespace="b")
    assert reader.open_cached(first.data, key_id=first.key_id, namespace="a") is None
    calls = keys.stats.kms_decrypt_calls
    assert (await reader.open(first.data, key_id=first.key_id, namespace="a")).plaintext == b"one"
    assert keys.stats.kms_decrypt_calls == calls + 1


async def test_seal_cached_needs_a_cached_data_key(local_provider: LocalKeyProvider) -> None:
    keys = DataKeyManager([local_provider], policy=DataKeyPolicy(max_messages=2))
    envelope = Envelope(keys)
    assert envelope.seal_cached(b"x", namespace="default") is None
    assert keys.stats.kms_generate_calls == 0
    first = await envelope.seal(b"x", namespace="default")
    second = envelope.seal_cached(b"y", namespace="default", classification="phi")
    assert second is not None
    assert parse(second.data)[0].wrapped_dek == parse(first.data)[0].wrapped_dek
    assert (await envelope.open(second.data, key_id=second.key_id, namespace="default")).plaintext
    # Each shortcut counts against the data key's bounds: the third message needs a new one.
    assert envelope.seal_cached(b"z", namespace="default") is None
    with pytest.raises(PayloadTooLargeError):
        Envelope(keys, max_plaintext=1).seal_cached(b"xy", namespace="default")


def test_large_incompressible_payloads_are_not_compressed() -> None:
    config = CompressionConfig()
    assert compress(os.urandom(300_000), config)[0] == Compression.NONE
    assert compress(JSONISH * 40, config)[0] == Compression.ZSTD
    # The probe samples the middle: compressible text around random bytes is kept whole.
    mixed = os.urandom(140_000) + JSONISH * 40 + os.urandom(140_000)
    assert compress(mixed, config)[0] == Compression.ZSTD


async def test_large_ciphertexts_round_trip_and_are_authenticated(envelope: Envelope) -> None:
    # Large ciphertexts are decrypted from a view rather than a copy.
    data = os.urandom(100_000)
    sealed = await envelope.seal(data, namespace="default")
    opened = await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    assert opened.plaintext == data
    assert envelope.open_cached(sealed.data, key_id=sealed.key_id, namespace="default") == data
    tampered = bytearray(sealed.data)
    tampered[-1000] ^= 1
    with pytest.raises(DecryptionError):
        envelope.open_cached(bytes(tampered), key_id=sealed.key_id, namespace="default")
    with pytest.raises(DecryptionError):
        await envelope.open(bytes(tampered), key_id=sealed.key_id, namespace="default")


async def test_parse_from_the_header_cache_equals_parse(envelope: Envelope) -> None:
    sealed = await envelope.seal(JSONISH, namespace="default", classification="phi")
    assert envelope.parse(sealed.data) == parse(sealed.data)  # nothing cached yet
    await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    again = await envelope.seal(b"other", namespace="default", classification="phi")
    assert envelope._headers.parse(again.data) is not None  # the cached path applies
    assert envelope.parse(again.data) == parse(again.data)
    data = bytearray(again.data)
    for i in range(len(data)):
        data[i] ^= 0x01
        tampered = bytes(data)
        try:
            expected: object = parse(tampered)
        except DecryptionError:
            expected = DecryptionError
        try:
            got: object = envelope.parse(tampered)
        except DecryptionError:
            got = DecryptionError
        assert got == expected, i
        data[i] ^= 0x01


async def test_the_header_cache_keeps_no_key_the_decryption_cache_dropped(
    local_provider: LocalKeyProvider,
) -> None:
    writer = Envelope(DataKeyManager([local_provider]))
    reader = Envelope(DataKeyManager([local_provider], policy=DataKeyPolicy(decrypt_cache_size=1)))
    for i in range(20):  # twenty data keys, one per namespace
        sealed = await writer.seal(b"x", namespace=f"ns-{i}")
        await reader.open(sealed.data, key_id=sealed.key_id, namespace=f"ns-{i}")
    gc.collect()
    middles = list(reader._headers._by_raw.values())
    assert len(middles) == 20  # the middles stay; the keys they opened with do not
    assert sum(middle.key() is not None for middle in middles) == 1


async def test_a_key_in_constant_use_stays_in_the_decryption_cache(
    local_provider: LocalKeyProvider,
) -> None:
    writer = Envelope(DataKeyManager([local_provider]))
    keys = DataKeyManager([local_provider], policy=DataKeyPolicy(decrypt_cache_size=2))
    reader = Envelope(keys)
    hot = await writer.seal(b"hot", namespace="hot")
    args: dict[str, Any] = {"key_id": hot.key_id, "namespace": "hot"}
    assert (await reader.open(hot.data, **args)).plaintext == b"hot"
    for i in range(30):
        cold = await writer.seal(b"cold", namespace=f"cold-{i}")
        await reader.open(cold.data, key_id=cold.key_id, namespace=f"cold-{i}")
        # Used through the shortcut, the hot key is the most recently used each time.
        assert reader.open_cached(hot.data, **args) == b"hot"
    assert keys.stats.kms_decrypt_calls == 31  # the hot key was unwrapped once


async def test_open_cached_compares_labels_as_text(envelope: Envelope) -> None:
    sealed = await envelope.seal(b"x", namespace="default", classification="ph?")
    await envelope.open(sealed.data, key_id=sealed.key_id, namespace="default")
    args: dict[str, Any] = {"key_id": sealed.key_id, "namespace": "default"}
    assert envelope.open_cached(sealed.data, **args, classification="ph?") == b"x"
    for label in ("phé", "ph\udce9"):
        with pytest.raises(DecryptionError):
            envelope.open_cached(sealed.data, **args, classification=label)
        with pytest.raises(DecryptionError):
            await envelope.open(sealed.data, **args, classification=label)


_MUTATIONS = ("none", "flip", "truncate", "version", "compression", "length", "splice")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mutation=st.sampled_from(_MUTATIONS),
    at=st.integers(min_value=0, max_value=10_000),
    key_id_suffix=st.sampled_from(["", "x"]),
    label=st.sampled_from([None, "phi", "pci", "", "phé"]),
    namespace=st.sampled_from([None, "default", "payments"]),
    workflow_id=st.sampled_from([None, "wf-1", "wf-2"]),
)
async def test_the_shortcut_and_the_full_path_agree(
    local_provider: LocalKeyProvider,
    mutation: str,
    at: int,
    key_id_suffix: str,
    label: str | None,
    namespace: str | None,
    workflow_id: str | None,
) -> None:
    """Differential: a warm reader (shortcut first) and a cold one (full path only)."""
    writer = Envelope(DataKeyManager([local_provider]))
    one = await writer.seal(JSONISH, namespace="default", classification="phi")
    other = await writer.seal(
        b"short", namespace="default", workflow_id="wf-1", classification="pci"
    )
    warm = Envelope(DataKeyManager([local_provider]), max_plaintext=len(JSONISH) + 100)
    for sealed in (one, other):  # both header middles remembered
        await warm.open(sealed.data, key_id=sealed.key_id, namespace=None)
    data = bytearray(one.data)
    if mutation == "flip":
        data[at % len(data)] ^= 1 << (at % 8)
    elif mutation == "truncate":
        del data[at % len(data) :]
    elif mutation == "version":
        data[2] = 2
    elif mutation == "compression":
        data[4] = at % 4
    elif mutation == "length":
        data[5:9] = (len(JSONISH) + at % 200 - 100).to_bytes(4, "big")
    elif mutation == "splice":  # the other payload's header before this ciphertext
        _, offset = parse(one.data)
        _, other_offset = parse(other.data)
        data = bytearray(other.data[:other_offset]) + data[offset:]
    args: dict[str, Any] = {
        "key_id": one.key_id + key_id_suffix,
        "namespace": namespace,
        "workflow_id": workflow_id,
        "classification": label,
    }

    async def outcome(reader: Envelope, shortcut: bool) -> object:
        try:
            if shortcut:
                found = reader.open_cached(bytes(data), **args)
                if found is not None:
                    return found
            return (await reader.open(bytes(data), **args)).plaintext
        except DecryptionError:
            return DecryptionError

    if (
        mutation == "none"
        and not key_id_suffix
        and label in (None, "phi")
        and namespace != "payments"
    ):
        assert warm.open_cached(bytes(data), **args) == JSONISH  # the shortcut does apply
    cold = Envelope(DataKeyManager([local_provider]), max_plaintext=len(JSONISH) + 100)
    assert await outcome(warm, True) == await outcome(cold, False)
    try:
        cached: object = warm.parse(bytes(data))
    except DecryptionError:
        cached = DecryptionError
    try:
        full: object = parse(bytes(data))
    except DecryptionError:
        full = DecryptionError
    assert cached == full
