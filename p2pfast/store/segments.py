"""The object envelope: how one object sits on disk, encrypted with its own data key.

    offset 0   header, 32 bytes
               +------+---+---+------+----------+-------------+---+----------------+--------+
               |"P2PO"|ver|alg| rsvd | seg size | nonce prefix| 0 | plaintext len  |  rsvd  |
               |  4   | 1 | 1 |  2   |  u32 BE  |   7 bytes   | 1 |    u64 BE      |   4    |
               +------+---+---+------+----------+-------------+---+----------------+--------+
    offset 32  segment 0 .. n-1: AES-256-GCM(data key, nonce_i, plaintext_i, AAD = header[0:20]) || tag
               each SEGMENT_SIZE bytes of plaintext + 16, the last one shorter (an empty object has one
               empty segment: just its tag)
    then       index: AES-256-GCM(data key, index nonce, leaf_0 || ... || leaf_n-1, AAD = header || cid)

Nonces follow the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár; Tink's streaming AEAD):
    nonce_i     = prefix(7) || u32be(i) || last(1)      last = 1 only for segment n-1
    index nonce = prefix(7) || ffffffff  || 02          a flag value segments never use
so flipping a bit, truncating, reordering or swapping segments all fail authentication: the index and the
last flag are inside the nonce, the header inside the AAD. Each object has its own random data key (wrapped
in the repo's `keys` table), so a segment or a whole file taken from another object never authenticates.
The total length is written when the stream ends (the header is rewritten before fsync), so segment AAD
covers only header[0:20]; the index AAD covers the whole header and binds the length and the content id.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from p2pfast.errors import IntegrityError

MAGIC = b"P2PO"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
ALG_AES256GCM_BLAKE3 = 1
ALGORITHM = "aes-256-gcm-stream+blake3"  # the `keys.algorithm` column
SEGMENT_SIZE = 1 << 20  # the format constant; recorded in every header
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
HEADER = struct.Struct(">4sBBHI7sxQ4x")
HEADER_SIZE = HEADER.size
FIXED_AAD_SIZE = 20  # header bytes known before the stream starts
MAX_SEGMENTS = 0xFFFFFFFF  # the index in the nonce is u32; 0xffffffff is reserved for the index block
_INDEX_TAIL = b"\xff\xff\xff\xff\x02"

assert HEADER_SIZE == 32


@dataclass(frozen=True, slots=True)
class Header:
    segment_size: int
    nonce_prefix: bytes
    length: int
    version: int = VERSION
    alg: int = ALG_AES256GCM_BLAKE3

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC, self.version, self.alg, 0, self.segment_size, self.nonce_prefix, self.length
        )

    @classmethod
    def unpack(cls, raw: bytes, what: str) -> Header:
        if len(raw) != HEADER_SIZE:
            raise IntegrityError(f"{what}: object header is {len(raw)} bytes, expected {HEADER_SIZE}")
        magic, version, alg, _, seg, prefix, length = HEADER.unpack(raw)
        if magic != MAGIC:
            raise IntegrityError(f"{what}: not a p2pfast object (bad magic)")
        if version not in SUPPORTED_VERSIONS:
            raise IntegrityError(f"{what}: object format version {version} is not supported")
        if alg != ALG_AES256GCM_BLAKE3:
            raise IntegrityError(f"{what}: unknown object algorithm {alg}")
        if seg <= 0:
            raise IntegrityError(f"{what}: bad segment size {seg}")
        return cls(segment_size=seg, nonce_prefix=prefix, length=length, version=version, alg=alg)


def segment_count(length: int, segment_size: int) -> int:
    return max(1, -(-length // segment_size))


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def index_nonce(prefix: bytes) -> bytes:
    return prefix + _INDEX_TAIL


def segment_offset(index: int, segment_size: int) -> int:
    return HEADER_SIZE + index * (segment_size + TAG_SIZE)


def data_end(length: int, segment_size: int) -> int:
    """Offset just past the last segment: where the index block starts."""
    return HEADER_SIZE + length + TAG_SIZE * segment_count(length, segment_size)


def index_size(length: int, segment_size: int) -> int:
    return 32 * segment_count(length, segment_size) + TAG_SIZE


def file_size(length: int, segment_size: int) -> int:
    return data_end(length, segment_size) + index_size(length, segment_size)
