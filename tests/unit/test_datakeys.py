"""Data-key cache bounds, single flight, and fail-closed behaviour on KMS failures."""

from __future__ import annotations

import asyncio

import pytest

from temporal_shield.codec import (
    ConfigError,
    DataKeyManager,
    DataKeyPolicy,
    DecryptionError,
    Envelope,
    KeyProviderError,
)

from ..helpers import FakeClock, FakeKms


async def test_one_dek_per_namespace_until_message_bound() -> None:
    kms = FakeKms()
    keys = DataKeyManager([kms], policy=DataKeyPolicy(max_messages=3))
    ids = [id(await keys.encryption_key("a", 10)) for _ in range(7)]
    assert kms.generate_calls == 3  # 3 + 3 + 1
    assert len(set(ids)) == 3
    await keys.encryption_key("b", 10)
    assert kms.generate_calls == 4  # another namespace, another DEK
    assert keys.stats.kms_generate_calls == 4


async def test_age_bound_with_fake_clock() -> None:
    kms, clock = FakeKms(), FakeClock()
    keys = DataKeyManager([kms], policy=DataKeyPolicy(max_age=60), clock=clock)
    first = await keys.encryption_key("a", 1)
    clock.now += 59
    assert await keys.encryption_key("a", 1) is first
    clock.now += 1
    assert await keys.encryption_key("a", 1) is not first
    assert kms.generate_calls == 2


async def test_byte_bound() -> None:
    kms = FakeKms()
    keys = DataKeyManager([kms], policy=DataKeyPolicy(max_bytes=100))
    first = await keys.encryption_key("a", 60)
    assert await keys.encryption_key("a", 40) is first
    assert await keys.encryption_key("a", 1) is not first
    # A message larger than the bound still gets a (fresh) key of its own.
    big = await keys.encryption_key("a", 1000)
    assert big is not first
    assert kms.generate_calls == 3


async def test_single_flight_burst_makes_one_kms_call() -> None:
    kms = FakeKms(delay=0.05)
    keys = DataKeyManager([kms])
    got = await asyncio.gather(*(keys.encryption_key("a", 10) for _ in range(200)))
    assert kms.generate_calls == 1
    assert len({id(k) for k in got}) == 1
    env = Envelope(keys)
    sealed = [await env.seal(b"x", namespace="a") for _ in range(50)]
    # A fresh reader decoding a burst unwraps once.
    reader_kms = kms
    reader = Envelope(DataKeyManager([reader_kms]))
    before = kms.decrypt_calls
    await asyncio.gather(*(reader.open(s.data, key_id=s.key_id, namespace="a") for s in sealed))
    assert kms.decrypt_calls - before == 1


async def test_own_keys_decrypt_without_kms() -> None:
    kms = FakeKms()
    env = Envelope(DataKeyManager([kms]))
    sealed = await env.seal(b"x", namespace="a")
    await env.open(sealed.data, key_id=sealed.key_id, namespace="a")
    assert kms.decrypt_calls == 0


async def test_decrypt_cache_lru_and_ttl() -> None:
    kms, clock = FakeKms(), FakeClock()
    writer = Envelope(DataKeyManager([kms], policy=DataKeyPolicy(max_messages=1)))
    sealed = [await writer.seal(b"x", namespace="a") for _ in range(3)]
    reader = Envelope(
        DataKeyManager(
            [kms], policy=DataKeyPolicy(decrypt_cache_size=2, decrypt_cache_ttl=30), clock=clock
        )
    )

    async def read(i: int) -> None:
        await reader.open(sealed[i].data, key_id=sealed[i].key_id, namespace="a")

    for i in (0, 1, 0, 1):
        await read(i)
    assert kms.decrypt_calls == 2
    await read(2)  # evicts the least recently used (0)
    await read(1)
    assert kms.decrypt_calls == 3
    await read(0)
    assert kms.decrypt_calls == 4
    clock.now += 31  # TTL expired
    await read(0)
    assert kms.decrypt_calls == 5


async def test_kms_outage_fails_closed() -> None:
    kms = FakeKms()
    kms.down = True
    env = Envelope(DataKeyManager([kms]))
    with pytest.raises(KeyProviderError):
        await env.seal(b"secret", namespace="a")
    assert env.keys.stats.kms_errors == 1
    kms.down = False
    sealed = await env.seal(b"secret", namespace="a")
    reader = Envelope(DataKeyManager([kms]))
    kms.down = True
    with pytest.raises(KeyProviderError):
        await reader.open(sealed.data, key_id=sealed.key_id, namespace="a")


async def test_outage_is_shared_by_single_flight_waiters() -> None:
    kms = FakeKms(delay=0.02)
    kms.down = True
    keys = DataKeyManager([kms])
    results = await asyncio.gather(
        *(keys.encryption_key("a", 1) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, KeyProviderError) for r in results)
    assert kms.generate_calls == 1


async def test_disabled_key_is_operational_error_not_plaintext() -> None:
    kms = FakeKms()
    env = Envelope(DataKeyManager([kms]))
    sealed = await env.seal(b"secret", namespace="a")
    kms.disabled.add(kms.key_id)
    with pytest.raises(KeyProviderError):
        await Envelope(DataKeyManager([kms])).seal(b"more", namespace="a")
    with pytest.raises(KeyProviderError):
        await Envelope(DataKeyManager([kms])).open(sealed.data, key_id=sealed.key_id, namespace="a")


async def test_tampered_wrapped_key_is_decryption_error() -> None:
    kms = FakeKms()
    writer = Envelope(DataKeyManager([kms]))
    sealed = await writer.seal(b"secret", namespace="a")
    reader = Envelope(DataKeyManager([kms]))
    with pytest.raises(DecryptionError):
        await reader.open(sealed.data, key_id=sealed.key_id, namespace="b")


def test_policy_validation() -> None:
    with pytest.raises(ConfigError):
        DataKeyPolicy(max_messages=2**32 + 1)
    with pytest.raises(ConfigError):
        DataKeyPolicy(max_age=0)
    with pytest.raises(ConfigError):
        DataKeyManager([])


async def test_encryption_cache_is_bounded_per_namespace() -> None:
    kms = FakeKms()
    keys = DataKeyManager([kms], policy=DataKeyPolicy(encrypt_cache_size=2))
    for ns in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        await keys.encryption_key(ns, 1)
    assert kms.generate_calls == 3
    await keys.encryption_key("a", 1)
    assert kms.generate_calls == 3  # still cached
    await keys.encryption_key("b", 1)
    assert kms.generate_calls == 4  # was evicted
    with pytest.raises(ConfigError):
        DataKeyPolicy(encrypt_cache_size=0)


async def test_wrapped_keys_that_failed_to_unwrap_are_remembered_bounded_and_expire() -> None:
    kms, clock = FakeKms(), FakeClock()
    keys = DataKeyManager(
        [kms], policy=DataKeyPolicy(failed_cache_size=2, failed_cache_ttl=60), clock=clock
    )
    bogus = [bytes([i]) * 60 for i in range(3)]
    assert keys.needs_unwrap(kms.key_id, bogus[0], "ns")
    for _ in range(5):
        with pytest.raises(DecryptionError):
            await keys.decryption_key(kms.key_id, bogus[0], "ns")
    assert kms.decrypt_calls == 1  # then answered from the negative cache
    assert keys.stats.failed_cache_hits == 4
    assert not keys.needs_unwrap(kms.key_id, bogus[0], "ns")
    assert keys.needs_unwrap(kms.key_id, bogus[0], "other-ns")  # bound to the triple
    # Bounded: two more failures evict the oldest.
    for wrapped in bogus[1:]:
        with pytest.raises(DecryptionError):
            await keys.decryption_key(kms.key_id, wrapped, "ns")
    assert keys.needs_unwrap(kms.key_id, bogus[0], "ns")
    assert not keys.needs_unwrap(kms.key_id, bogus[2], "ns")
    # Expires: a KMS refusal for a transient reason is retried later.
    clock.now += 61
    assert keys.needs_unwrap(kms.key_id, bogus[2], "ns")
    # Outages are not remembered as bad keys.
    kms.down = True
    with pytest.raises(KeyProviderError):
        await keys.decryption_key(kms.key_id, bogus[2], "ns")
    assert keys.needs_unwrap(kms.key_id, bogus[2], "ns")


async def test_needs_unwrap_and_needs_data_key_report_kms_calls_without_side_effects() -> None:
    kms = FakeKms()
    keys = DataKeyManager([kms])
    assert keys.needs_data_key("a")
    key = await keys.encryption_key("a", 1)
    assert not keys.needs_data_key("a")
    # Our own new key is cached for decryption; an unknown KEK never reaches the KMS.
    assert not keys.needs_unwrap(kms.key_id, key.wrapped, "a")
    assert not keys.needs_unwrap("someone-else:kek", key.wrapped, "a")
    before = keys.stats.snapshot()
    keys.needs_unwrap(kms.key_id, b"x" * 40, "a")
    keys.needs_data_key("b")
    assert keys.stats.snapshot() == before
