"""The byte layout of an encrypted payload (format version 1).

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
    nonce            12 AES-GCM nonce
    ciphertext       rest (ciphertext || 16-byte tag)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._errors import DecryptionError

MAGIC = b"TS"
VERSION = 1
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
_U16 = struct.Struct(">H")
_MAX_U16 = 0xFFFF


@dataclass(frozen=True, kw_only=True)
class Header:
    """The authenticated, self-describing header of one encrypted payload."""

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
    """Algorithm id; only :data:`ALG_AES256_GCM_HKDF_COMMIT` exists in version 1."""

    def pack(self) -> bytes:
        """Serialize the header.

        Raises:
            ValueError: a field does not fit its length prefix.
        """
        ns = self.namespace.encode()
        wf = self.workflow_id.encode()
        cls = self.classification.encode("ascii")
        if max(len(ns), len(wf), len(self.wrapped_dek)) > _MAX_U16 or len(cls) > 0xFF:
            raise ValueError("header field too long")
        if len(self.commitment) != COMMITMENT_SIZE or len(self.nonce) != NONCE_SIZE:
            raise ValueError("bad commitment or nonce size")
        return b"".join(
            (
                _FIXED.pack(MAGIC, VERSION, self.algorithm, self.compression, self.original_length),
                _U16.pack(len(ns)),
                ns,
                _U16.pack(len(wf)),
                wf,
                bytes((len(cls),)),
                cls,
                _U16.pack(len(self.wrapped_dek)),
                self.wrapped_dek,
                self.commitment,
                self.nonce,
            )
        )


def parse(data: bytes) -> tuple[Header, int]:
    """Parse the header at the start of ``data``.

    Returns:
        The header and the offset where the ciphertext starts.

    Raises:
        DecryptionError: the bytes are not a version-1 envelope (bad magic,
            unknown version or algorithm, truncation, invalid text).
    """
    view = memoryview(data)
    try:
        magic, version, algorithm, compression, original_length = _FIXED.unpack_from(view, 0)
        if magic != MAGIC or version != VERSION or algorithm != ALG_AES256_GCM_HKDF_COMMIT:
            raise DecryptionError()
        pos = _FIXED.size
        ns, pos = _field(view, pos, 2)
        wf, pos = _field(view, pos, 2)
        cls, pos = _field(view, pos, 1)
        wrapped, pos = _field(view, pos, 2)
        end = pos + COMMITMENT_SIZE + NONCE_SIZE
        if len(view) < end + TAG_SIZE:
            raise DecryptionError()
        header = Header(
            algorithm=algorithm,
            compression=compression,
            original_length=original_length,
            namespace=ns.decode(),
            workflow_id=wf.decode(),
            classification=cls.decode("ascii"),
            wrapped_dek=wrapped,
            commitment=bytes(view[pos : pos + COMMITMENT_SIZE]),
            nonce=bytes(view[pos + COMMITMENT_SIZE : end]),
        )
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise DecryptionError() from exc
    return header, end


def _field(view: memoryview, pos: int, width: int) -> tuple[bytes, int]:
    if width == 1:
        size = view[pos]
    else:
        (size,) = _U16.unpack_from(view, pos)
    start = pos + width
    end = start + size
    if end > len(view):
        raise DecryptionError()
    return bytes(view[start:end]), end
