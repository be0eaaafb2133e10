"""The byte layout of an encrypted payload (format versions 1 and 2).

See ``docs/format.md`` for the normative description and ``tests/vectors/`` for
test vectors. Everything in the header is authenticated: the header bytes
(including the nonce) followed by the key id from the payload metadata form the
AES-GCM associated data, so no field can be changed unnoticed.

Layout (integers big-endian)::

    magic            2  b"TS"
    version          1  0x01
    algorithm        1  0x01 = AES-256-GCM, HKDF-SHA256 key derivation + commitment
    compression      1  0x00 none, 0x01 zstd
    original_length  4  length of the serialized inner payload before compression
    namespace        2 + n   u16 length, UTF-8
    workflow_id      2 + n   u16 length, UTF-8 (empty unless strict binding)
    classification   1 + n   u8 length, ASCII label (may be empty)
    wrapped_dek      2 + n   u16 length, bytes as returned by the key provider
    commitment       32 HKDF-derived key commitment of the data key
    origin           v2 only: 1 + 32, u8 length (32) and the SHA-256 of the
                     stored object this one re-encrypts (``keys rewrap``)
    nonce            12 AES-GCM nonce
    ciphertext       rest (ciphertext || 16-byte tag)

Writers produce version 1 unless an origin is recorded; readers accept both.
"""

from __future__ import annotations

import struct
import weakref
from typing import TYPE_CHECKING, NamedTuple

from ._errors import DecryptionError

if TYPE_CHECKING:
    from ._datakeys import CachedKey

MAGIC = b"TS"
VERSION = 1
VERSION_WITH_ORIGIN = 2
ORIGIN_SIZE = 32
ALG_AES256_GCM_HKDF_COMMIT = 1
COMMITMENT_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

ENCODING = b"binary/encrypted"
"""``encoding`` metadata value: the convention other Temporal encryption codecs use."""
KEY_ID_METADATA = "encryption-key-id"
"""Metadata key naming the key-encryption key (KEK) that wrapped the data key."""
CLASSIFICATION_METADATA = "temporal-shield-classification"
"""Metadata key repeating the (authenticated) classification label, so that the
codec server and the coverage scan can read it without decrypting."""

_FIXED = struct.Struct(">2sBBBI")
FIXED_SIZE = _FIXED.size
V1_PREFIXES = (
    MAGIC + bytes((VERSION, ALG_AES256_GCM_HKDF_COMMIT, 0)),
    MAGIC + bytes((VERSION, ALG_AES256_GCM_HKDF_COMMIT, 1)),
)
"""The first five header bytes of version 1 (magic, version, algorithm,
compression), by compression id."""
_U16 = struct.Struct(">H")
_MAX_U16 = 0xFFFF


class Header(NamedTuple):
    """The authenticated, self-describing header of one encrypted payload.

    (A named tuple rather than a dataclass: it is built once per payload on the
    hot path, where construction cost shows.)
    """

    compression: int
    """Compression algorithm id (see :class:`~._compression.Compression`)."""
    original_length: int
    """Length of the serialized inner payload before compression."""
    namespace: str
    """Temporal namespace the payload is bound to."""
    workflow_id: str
    """Workflow id the payload is bound to, or ``""`` when not strictly bound."""
    classification: str
    """Data classification label (e.g. ``phi``), or ``""``."""
    wrapped_dek: bytes
    """The data key, wrapped by the key-encryption key named in the metadata."""
    commitment: bytes
    """Key commitment: proves which data key the ciphertext was made for."""
    nonce: bytes
    """AES-GCM nonce."""
    algorithm: int = ALG_AES256_GCM_HKDF_COMMIT
    """Algorithm id; only :data:`ALG_AES256_GCM_HKDF_COMMIT` exists."""
    origin: bytes = b""
    """SHA-256 of the stored object this payload re-encrypts (version 2), else empty."""

    def pack(self) -> bytes:
        """Serialize the header.

        Raises:
            ValueError: a field does not fit its length prefix.
        """
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError("bad nonce size")
        middle = header_middle(
            namespace_field(self.namespace),
            self.workflow_id,
            self.classification,
            key_field(self.wrapped_dek, self.commitment),
        )
        return (
            pack_fixed(self.compression, self.original_length, self.algorithm) + middle + self.nonce
        )


def namespace_field(namespace: str) -> bytes:
    """The length-prefixed namespace (computed once per data key by the envelope)."""
    ns = namespace.encode()
    if len(ns) > _MAX_U16:
        raise ValueError("namespace too long")
    return _U16.pack(len(ns)) + ns


def key_field(wrapped_dek: bytes, commitment: bytes) -> bytes:
    """The length-prefixed wrapped key followed by the commitment (once per data key)."""
    if len(wrapped_dek) > _MAX_U16 or len(commitment) != COMMITMENT_SIZE:
        raise ValueError("bad wrapped key or commitment size")
    return _U16.pack(len(wrapped_dek)) + wrapped_dek + commitment


def header_middle(namespace: bytes, workflow_id: str, classification: str, key: bytes) -> bytes:
    """The header between the fixed part and the nonce.

    ``namespace`` and ``key`` come prebuilt from :func:`namespace_field` and
    :func:`key_field`; the envelope caches the result per data key and label.

    Raises:
        ValueError: a field does not fit its length prefix.
    """
    wf = workflow_id.encode()
    cls = classification.encode("ascii")
    if len(wf) > _MAX_U16 or len(cls) > 0xFF:
        raise ValueError("header field too long")
    return b"".join((namespace, _U16.pack(len(wf)), wf, bytes((len(cls),)), cls, key))


def pack_fixed(
    compression: int,
    original_length: int,
    algorithm: int = ALG_AES256_GCM_HKDF_COMMIT,
    *,
    origin: bool = False,
) -> bytes:
    """The fixed 9-byte start of a header (version 2 when an origin follows)."""
    version = VERSION_WITH_ORIGIN if origin else VERSION
    return _FIXED.pack(MAGIC, version, algorithm, compression, original_length)


def origin_field(origin: bytes) -> bytes:
    """The version-2 origin field, or nothing for version 1.

    Raises:
        ValueError: ``origin`` is neither empty nor 32 bytes.
    """
    if not origin:
        return b""
    if len(origin) != ORIGIN_SIZE:
        raise ValueError("origin must be a 32-byte SHA-256 digest")
    return bytes((ORIGIN_SIZE,)) + origin


class Middle(NamedTuple):
    """What a reader knows about a version-1 header middle that opened before.

    The fields between a header's fixed part and its nonce are the same for
    every payload sealed under one data key with one namespace, workflow id and
    label, so a reader parses them once (:class:`HeaderCache`) instead of once
    per payload, and keeps the data key they opened with.
    """

    raw: bytes
    """The exact header bytes the fields were parsed from."""
    namespace: str
    workflow_id: str
    classification: str
    label: bytes
    """``classification`` as the metadata carries it (ASCII bytes)."""
    key_id: bytes
    """The ``encryption-key-id`` metadata the payload opened with."""
    key: weakref.ref[CachedKey]
    """The decryption-cache entry of the data key it opened with, held weakly: the
    header cache never keeps a key in memory that the decryption cache let go.
    The middle holds the wrapped key and the commitment, so the commitment check
    passed for this pair once and for all; the entry's ``expires`` still bounds
    the shortcut (see :class:`CachedKey`)."""
    offset: int
    """Where the ciphertext starts in a payload with this middle."""


class HeaderCache:
    """Header middles of payloads that opened, looked up by their bytes.

    A payload whose header continues, after the fixed part, with the exact bytes
    of a remembered middle parses to the same fields: every field is length
    prefixed inside those bytes. Only the fixed part and the nonce are then read
    from the payload itself. Nothing here authenticates: the caller still passes
    every header byte to AES-GCM as associated data, so a cached middle only
    saves parsing, never a check.
    """

    def __init__(self, size: int = 256) -> None:
        """Keep at most ``size`` middles (first in, first out)."""
        self._size = size
        self._by_raw: dict[bytes, Middle] = {}
        self._last: Middle | None = None
        """The middle found last: the common case is that the next payload has it too."""

    def remember(
        self, header: Header, data: bytes, offset: int, key_id: bytes, key: CachedKey
    ) -> None:
        """Remember the middle of ``parse(data) == (header, offset)`` (version 1 only).

        Only for a payload that just opened under ``key`` with metadata ``key_id``:
        the middle then stands for a passed commitment check.
        """
        if header.origin or self._size == 0:
            return
        raw = data[FIXED_SIZE : offset - NONCE_SIZE]
        found = self._by_raw.get(raw)
        if found is not None:
            if found.key() is key and found.key_id == key_id:
                self._last = found
                return
            del self._by_raw[raw]  # replaced below: a newer cache entry of the data key
        elif len(self._by_raw) >= self._size:
            del self._by_raw[next(iter(self._by_raw))]
        middle = Middle(
            raw,
            header.namespace,
            header.workflow_id,
            header.classification,
            header.classification.encode("ascii"),
            key_id,
            weakref.ref(key),
            offset,
        )
        self._by_raw[raw] = self._last = middle

    def find(self, data: bytes) -> Middle | None:
        """The remembered middle that ``data``'s header continues with, if any.

        Never raises: whatever is not a remembered header is left to
        :func:`parse`, which gives the reasons. The caller checks the fixed part.
        """
        middle = self._last
        if middle is not None and data.startswith(middle.raw, FIXED_SIZE):
            return middle
        try:
            # Walk the four length prefixes to the end of the middle.
            pos = 11 + (data[9] << 8 | data[10])
            pos += 2 + (data[pos] << 8 | data[pos + 1])
            pos += 1 + data[pos]
            end = pos + 2 + (data[pos] << 8 | data[pos + 1]) + COMMITMENT_SIZE
        except IndexError:
            return None
        middle = self._by_raw.get(data[FIXED_SIZE:end])
        if middle is not None:
            self._last = middle
        return middle

    def known(self, data: bytes) -> tuple[Middle, CachedKey] | None:
        """The remembered middle of ``data``'s well-formed version-1 header, with its key.

        ``None`` unless the fixed part says version 1 and a known compression,
        the data is long enough for a tag, and the middle's data key is still in
        the decryption cache (its expiry is the caller's to check). Never raises.
        """
        middle = self.find(data)
        if middle is None:
            return None
        prefix = data[:5]
        if (prefix != V1_PREFIXES[0] and prefix != V1_PREFIXES[1]) or len(
            data
        ) < middle.offset + TAG_SIZE:
            return None
        entry = middle.key()
        return None if entry is None else (middle, entry)

    def parse(self, data: bytes) -> tuple[Header, int] | None:
        """:func:`parse` for a version-1 header whose middle is remembered, else ``None``.

        The result equals ``parse(data)``: the middle's fields are those its
        bytes parse to, and its commitment is the one its data key was checked
        against. Never raises.
        """
        found = self.known(data)
        if found is None:
            return None
        middle, entry = found
        offset = middle.offset
        header = Header(
            data[4],
            int.from_bytes(data[5:FIXED_SIZE]),
            middle.namespace,
            middle.workflow_id,
            middle.classification,
            entry.key.wrapped,
            entry.key.commitment,
            data[offset - NONCE_SIZE : offset],
        )
        return header, offset


def parse(data: bytes) -> tuple[Header, int]:
    """Parse the header at the start of ``data``.

    Returns:
        The header and the offset where the ciphertext starts.

    Raises:
        DecryptionError: the bytes are not a version-1/2 envelope (bad magic,
            unknown version or algorithm, truncation, invalid text).
    """
    try:
        magic, version, algorithm, compression, original_length = _FIXED.unpack_from(data, 0)
        if (
            magic != MAGIC
            or version not in (VERSION, VERSION_WITH_ORIGIN)
            or algorithm != ALG_AES256_GCM_HKDF_COMMIT
        ):
            raise DecryptionError()
        (size,) = _U16.unpack_from(data, 9)
        pos = 11 + size
        namespace = data[11:pos]
        (size,) = _U16.unpack_from(data, pos)
        workflow_id = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
        size = data[pos]
        classification = data[pos + 1 : pos + 1 + size]
        pos += 1 + size
        (size,) = _U16.unpack_from(data, pos)
        wrapped = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
        commitment = data[pos : pos + COMMITMENT_SIZE]
        pos += COMMITMENT_SIZE
        origin = b""
        if version == VERSION_WITH_ORIGIN:
            if data[pos] != ORIGIN_SIZE:
                raise DecryptionError()
            origin = data[pos + 1 : pos + 1 + ORIGIN_SIZE]
            pos += 1 + ORIGIN_SIZE
        end = pos + NONCE_SIZE
        # Slices stop silently at the end: one bound check covers every field.
        if len(data) < end + TAG_SIZE:
            raise DecryptionError()
        header = Header(
            compression,
            original_length,
            namespace.decode(),
            workflow_id.decode(),
            classification.decode("ascii"),
            wrapped,
            commitment,
            data[pos:end],
            algorithm,
            origin,
        )
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise DecryptionError() from exc
    return header, end


def is_envelope(data: bytes) -> bool:
    """Whether ``data`` starts with a well-formed temporal-shield header.

    Tells our envelopes apart from other codecs' ``binary/encrypted`` payloads
    (Temporal's sample codec uses the same label) by the bytes, not the label.
    It does not authenticate anything: only decryption does.
    """
    try:
        parse(data)
    except DecryptionError:
        return False
    return True
