"""Data keys (DEKs): derivation, key commitment, and the bounded caches around the KMS.

Encryption uses one cached DEK per namespace (per primary KEK), replaced when it
reaches a bound on age, messages or bytes. Replacement is single-flight: a burst
of payloads that all find the DEK exhausted makes one KMS call, not one each.
Unwrapped DEKs are cached for decryption in a bounded LRU with a TTL, keyed by
the (KEK id, wrapped DEK, namespace) triple, also filled single-flight.

Nonce budget: every message draws a fresh random 96-bit AES-GCM nonce. NIST SP
800-38D caps random-nonce use at 2**32 messages per key (collision probability
<= 2**-32). The default of 2**20 messages per DEK keeps the collision
probability below 2**-57, and :class:`DataKeyPolicy` refuses anything above 2**32.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._clock import Clock, monotonic
from ._errors import ConfigError, DecryptionError
from ._format import header_middle, key_field, namespace_field
from ._provider import KeyProvider

_DERIVE_INFO = b"temporal-shield/v1/aes-256-gcm+commitment"
MAX_MESSAGES_HARD_LIMIT = 2**32


def _failure_key(cache_key: tuple[str, bytes, str]) -> bytes:
    """A fixed-size digest of (KEK id, wrapped DEK, namespace) for the negative cache.

    Failed unwraps come from hostile input: their fields can be up to 64 KiB each,
    so the negative cache keeps 32-byte digests, never the attacker's bytes.
    """
    h = hashlib.sha256()
    for part in (
        cache_key[0].encode("utf-8", "surrogatepass"),
        cache_key[1],
        cache_key[2].encode("utf-8", "surrogatepass"),
    ):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


class DataKey:
    """An unwrapped DEK, reduced to what the envelope needs.

    The raw DEK is fed once through HKDF-SHA256 into a 32-byte AES-256-GCM key and
    a 32-byte *commitment*; the raw DEK itself is not kept. Storing the commitment
    in every header makes the format key-committing: a ciphertext only opens under
    the one DEK whose commitment it carries.
    """

    __slots__ = (
        "aad_suffix",
        "aead",
        "commitment",
        "header_key",
        "header_namespace",
        "headers",
        "key_id",
        "namespace",
        "wrapped",
    )

    def __init__(self, *, key_id: str, wrapped: bytes, namespace: str, plaintext: bytes) -> None:
        """Derive the encryption key and commitment from ``plaintext`` (32 bytes)."""
        if len(plaintext) != 32:
            raise DecryptionError()
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_DERIVE_INFO).derive(
            plaintext
        )
        self.aead = AESGCM(okm[:32])
        self.commitment = okm[32:]
        self.key_id = key_id
        self.wrapped = wrapped
        self.namespace = namespace
        # Header parts and AAD suffix that are the same for every message under
        # this key: built once here instead of once per payload.
        self.header_key = key_field(wrapped, self.commitment)
        self.header_namespace = namespace_field(namespace)
        self.aad_suffix = key_id.encode()
        self.headers: dict[str, bytes] = {}
        """Header middles by classification label (not workflow-bound)."""

    def header_middle(self, workflow_id: str, classification: str) -> bytes:
        """The header bytes between fixed part and nonce for one message."""
        if workflow_id:  # strict binding: unbounded ids, not cached
            return header_middle(
                self.header_namespace, workflow_id, classification, self.header_key
            )
        found = self.headers.get(classification)
        if found is None:
            found = header_middle(self.header_namespace, "", classification, self.header_key)
            self.headers[classification] = found
        return found

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, namespace={self.namespace!r})"


@dataclass(frozen=True, kw_only=True)
class DataKeyPolicy:
    """Bounds on data-key reuse and on the decrypted-key cache."""

    max_age: float = 600.0
    """Seconds an encryption DEK is used before a new one is generated."""
    max_messages: int = 2**20
    """Payloads encrypted under one DEK (nonce budget, see module docs)."""
    max_bytes: int = 2**36
    """Plaintext bytes encrypted under one DEK (64 GiB)."""
    encrypt_cache_size: int = 1024
    """Namespaces with a cached encryption DEK (LRU): bounds memory and KMS calls
    when callers name many namespaces (e.g. the codec server's ``/encode``)."""
    decrypt_cache_size: int = 1024
    """Unwrapped DEKs kept for decryption (LRU)."""
    decrypt_cache_ttl: float = 3600.0
    """Seconds an unwrapped DEK stays in the decryption cache."""
    failed_cache_size: int = 4096
    """Wrapped keys remembered as not unwrappable (LRU): a flood of forged payloads
    that all carry the same wrapped key costs one KMS call, not one each."""
    failed_cache_ttl: float = 300.0
    """Seconds a wrapped key that failed to unwrap is refused without asking the KMS
    (short: a key the KMS refused because of a transient state is retried)."""

    def __post_init__(self) -> None:
        if not 0 < self.max_messages <= MAX_MESSAGES_HARD_LIMIT:
            raise ConfigError(f"max_messages must be in 1..{MAX_MESSAGES_HARD_LIMIT}")
        if self.max_age <= 0 or self.max_bytes <= 0 or self.decrypt_cache_ttl < 0:
            raise ConfigError("data-key bounds must be positive")
        if self.decrypt_cache_size < 0 or self.encrypt_cache_size < 1:
            raise ConfigError("decrypt_cache_size must be >= 0, encrypt_cache_size >= 1")
        if self.failed_cache_size < 0 or self.failed_cache_ttl < 0:
            raise ConfigError("failed_cache_size and failed_cache_ttl must be >= 0")


@dataclass
class KeyStats:
    """Counters of key-provider traffic and cache effectiveness (read as metrics)."""

    kms_generate_calls: int = 0
    kms_decrypt_calls: int = 0
    kms_errors: int = 0
    encrypt_cache_hits: int = 0
    encrypt_cache_misses: int = 0
    decrypt_cache_hits: int = 0
    decrypt_cache_misses: int = 0
    failed_cache_hits: int = 0
    """Unwraps refused from the negative cache, without a KMS call."""

    @property
    def kms_calls(self) -> int:
        """All key-provider round trips."""
        return self.kms_generate_calls + self.kms_decrypt_calls

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters as a plain mapping."""
        return {
            "kms_calls": self.kms_calls,
            "kms_generate_calls": self.kms_generate_calls,
            "kms_decrypt_calls": self.kms_decrypt_calls,
            "kms_errors": self.kms_errors,
            "encrypt_cache_hits": self.encrypt_cache_hits,
            "encrypt_cache_misses": self.encrypt_cache_misses,
            "decrypt_cache_hits": self.decrypt_cache_hits,
            "decrypt_cache_misses": self.decrypt_cache_misses,
            "failed_cache_hits": self.failed_cache_hits,
        }


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Collapse concurrent calls for the same key into one in-flight call."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        """Run ``fn`` unless a call for ``key`` is already running; share its outcome."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await fn()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: the caller below re-raises it
            raise
        finally:
            del self._inflight[key]
        fut.set_result(value)
        return value


@dataclass
class _Active:
    key: DataKey
    created: float
    messages: int = 0
    nbytes: int = 0


@dataclass
class CachedKey:
    """An unwrapped DEK in the decryption cache, and when it stops counting.

    Readers that keep their own shortcut to it (the envelope's header cache) hold
    it by a weak reference only, so it leaves memory when the cache drops it, and
    check ``expires`` like the cache itself (set to ``-inf`` when the cache drops
    it, for a reference that is still alive at that moment). A hit through such
    a shortcut goes through :meth:`DataKeyManager.hit`.
    """

    key: DataKey
    expires: float
    cache_key: tuple[str, bytes, str]
    """Its key in the decryption cache: (KEK id, wrapped DEK, namespace)."""


@dataclass
class DataKeyManager:
    """Hands out DEKs for encryption and decryption, with caching and bounds.

    The first provider's primary KEK wraps new DEKs; any provider may unwrap the
    KEK ids it allows. Not thread-safe: use it from one event loop.
    """

    providers: Sequence[KeyProvider]
    """Key providers; ``providers[0]`` encrypts."""
    policy: DataKeyPolicy = field(default_factory=DataKeyPolicy)
    """Reuse and cache bounds."""
    clock: Clock = monotonic
    """Monotonic time source (injectable for tests)."""
    stats: KeyStats = field(default_factory=KeyStats)
    """Counters, read by the metrics exporters."""
    _active: OrderedDict[str, _Active] = field(default_factory=OrderedDict, init=False, repr=False)
    _decrypted: OrderedDict[tuple[str, bytes, str], CachedKey] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    _failed: OrderedDict[bytes, float] = field(default_factory=OrderedDict, init=False, repr=False)
    _gen_flight: SingleFlight[str, _Active] = field(
        default_factory=SingleFlight, init=False, repr=False
    )
    _dec_flight: SingleFlight[tuple[str, bytes, str], DataKey] = field(
        default_factory=SingleFlight, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigError("at least one key provider is required")

    async def encryption_key(self, namespace: str, nbytes: int) -> DataKey:
        """A DEK for one message of ``nbytes`` plaintext bytes in ``namespace``.

        Raises:
            KeyProviderError: a new DEK was needed and the provider failed.
        """
        while True:
            key = self.cached_encryption_key(namespace, nbytes)
            if key is not None:
                return key
            self.stats.encrypt_cache_misses += 1
            fresh = await self._gen_flight.do(
                namespace,
                functools.partial(self._generate, namespace, self._active.get(namespace)),
            )
            if fresh.messages == 0:
                # A new DEK always admits its first message, whatever its size.
                fresh.messages = 1
                fresh.nbytes = nbytes
                return fresh.key

    def cached_encryption_key(self, namespace: str, nbytes: int) -> DataKey | None:
        """The cached DEK for one more message, or ``None`` (then call :meth:`encryption_key`).

        The synchronous half of :meth:`encryption_key`, for the per-payload hot
        path: a cache hit needs no coroutine. A hit counts the message against
        the DEK's bounds.
        """
        entry = self._active.get(namespace)
        if entry is None or not self._admits(entry, nbytes):
            return None
        self._active.move_to_end(namespace)
        entry.messages += 1
        entry.nbytes += nbytes
        self.stats.encrypt_cache_hits += 1
        return entry.key

    def needs_data_key(self, namespace: str) -> bool:
        """Whether encrypting in ``namespace`` now would ask the KMS for a new DEK.

        For callers that budget KMS calls (the codec server's ``/encode``); it
        changes no counter and no cache order.
        """
        entry = self._active.get(namespace)
        return entry is None or not self._admits(entry, 0)

    def _admits(self, entry: _Active, nbytes: int) -> bool:
        p = self.policy
        return (
            self.clock() - entry.created < p.max_age
            and entry.messages < p.max_messages
            and entry.nbytes + nbytes <= p.max_bytes
        )

    async def _generate(self, namespace: str, stale: _Active | None) -> _Active:
        current = self._active.get(namespace)
        if current is not stale and current is not None:
            return current  # someone replaced it while we waited
        self.stats.kms_generate_calls += 1
        try:
            gen = await self.providers[0].generate_data_key(namespace)
        except Exception:
            self.stats.kms_errors += 1
            raise
        key = DataKey(
            key_id=gen.key_id, wrapped=gen.wrapped, namespace=namespace, plaintext=gen.plaintext
        )
        entry = _Active(key=key, created=self.clock())
        self._active[namespace] = entry
        self._active.move_to_end(namespace)
        while len(self._active) > self.policy.encrypt_cache_size:
            self._active.popitem(last=False)
        # Our own payloads decode without a round trip to the KMS (when the
        # allow-list lets this process decrypt them at all).
        if any(p.can_decrypt(gen.key_id) for p in self.providers):
            self._remember((gen.key_id, gen.wrapped, namespace), key)
        return entry

    async def decryption_key(self, key_id: str, wrapped: bytes, namespace: str) -> DataKey:
        """The DEK that ``wrapped`` holds, unwrapped by the provider owning ``key_id``.

        Raises:
            DecryptionError: the key id is unknown or not allowed, or the wrapped key
                does not authenticate for this namespace.
            KeyProviderError: the provider failed.
        """
        cache_key = (key_id, wrapped, namespace)
        cached = self.cached_decryption_key(key_id, wrapped, namespace)
        if cached is not None:
            return cached
        provider = self._provider_for(key_id)
        if provider is None:
            raise DecryptionError()
        failure_key = _failure_key(cache_key)
        if self._known_bad(failure_key):
            self.stats.failed_cache_hits += 1
            raise DecryptionError()
        self.stats.decrypt_cache_misses += 1

        async def unwrap() -> DataKey:
            self.stats.kms_decrypt_calls += 1
            try:
                plaintext = await provider.decrypt_data_key(key_id, wrapped, namespace)
            except DecryptionError:
                self._remember_failure(failure_key)
                raise
            except Exception:
                self.stats.kms_errors += 1
                raise
            try:
                key = DataKey(
                    key_id=key_id, wrapped=wrapped, namespace=namespace, plaintext=plaintext
                )
            except DecryptionError:
                self._remember_failure(failure_key)
                raise
            self._remember(cache_key, key)
            return key

        return await self._dec_flight.do(cache_key, unwrap)

    def cached_decryption_key(self, key_id: str, wrapped: bytes, namespace: str) -> DataKey | None:
        """The cached DEK for these arguments, or ``None`` (then call :meth:`decryption_key`).

        The synchronous half of :meth:`decryption_key`, for the per-payload hot
        path: a cache hit needs no coroutine.
        """
        cache_key = (key_id, wrapped, namespace)
        cached = self._decrypted.get(cache_key)
        # Only keys that an allowing provider unwrapped are ever cached, and the
        # providers' allow-lists are fixed at construction: a hit is allowed.
        if cached is not None and cached.expires > self.clock():
            self._decrypted.move_to_end(cache_key)
            self.stats.decrypt_cache_hits += 1
            return cached.key
        return None

    def cache_entry(self, key_id: str, wrapped: bytes, namespace: str) -> CachedKey | None:
        """The decryption cache's entry for these arguments, without touching its order.

        For a reader that keeps its own (weak) reference (see :class:`CachedKey`).
        """
        return self._decrypted.get((key_id, wrapped, namespace))

    def hit(self, entry: CachedKey) -> None:
        """Count a use of ``entry`` through a reader's own reference, as a cache hit.

        Like a hit of :meth:`cached_decryption_key`, it makes ``entry`` the most
        recently used, so a key in constant use is not evicted (and unwrapped
        again) in favour of rarely used ones. Only for an entry that has not
        expired, which is still in the cache.
        """
        self._decrypted.move_to_end(entry.cache_key)
        self.stats.decrypt_cache_hits += 1

    def needs_unwrap(self, key_id: str, wrapped: bytes, namespace: str) -> bool:
        """Whether :meth:`decryption_key` would call a key provider for these arguments.

        False when the DEK is cached, when no provider may unwrap ``key_id``,
        or when this wrapped key recently failed to unwrap: those are answered
        without a KMS call. Callers that budget KMS calls (the codec server)
        ask this first; it changes no counter and no cache order.
        """
        cache_key = (key_id, wrapped, namespace)
        cached = self._decrypted.get(cache_key)
        if cached is not None and cached.expires > self.clock():
            return False
        return self._provider_for(key_id) is not None and not self._known_bad(
            _failure_key(cache_key)
        )

    def can_decrypt(self, key_id: str) -> bool:
        """Whether a configured provider may unwrap data keys under ``key_id`` (no KMS call)."""
        return self._provider_for(key_id) is not None

    def _provider_for(self, key_id: str) -> KeyProvider | None:
        return next((p for p in self.providers if p.can_decrypt(key_id)), None)

    def _known_bad(self, failure_key: bytes) -> bool:
        expires = self._failed.get(failure_key)
        if expires is None:
            return False
        if expires <= self.clock():
            del self._failed[failure_key]
            return False
        return True

    def _remember_failure(self, failure_key: bytes) -> None:
        if self.policy.failed_cache_size == 0:
            return
        self._failed[failure_key] = self.clock() + self.policy.failed_cache_ttl
        self._failed.move_to_end(failure_key)
        while len(self._failed) > self.policy.failed_cache_size:
            self._failed.popitem(last=False)

    def _remember(self, cache_key: tuple[str, bytes, str], key: DataKey) -> None:
        if self.policy.decrypt_cache_size == 0:
            return
        replaced = self._decrypted.get(cache_key)
        if replaced is not None:
            replaced.expires = -math.inf
        expires = self.clock() + self.policy.decrypt_cache_ttl
        self._decrypted[cache_key] = CachedKey(key, expires, cache_key)
        self._decrypted.move_to_end(cache_key)
        while len(self._decrypted) > self.policy.decrypt_cache_size:
            self._decrypted.popitem(last=False)[1].expires = -math.inf

    async def check(self) -> None:
        """Readiness: every provider answers (see :meth:`KeyProvider.check`)."""
        for provider in self.providers:
            await provider.check()
