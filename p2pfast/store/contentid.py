"""Content ids: a two-level BLAKE3 hash of the plaintext.

    leaf_i = BLAKE3(segment_i)              for each SEGMENT_SIZE slice (one empty leaf for 0 bytes)
    root   = BLAKE3("p2pfast cid v1\\0" || u64be(total length) || leaf_0 || ... || leaf_n-1)
    cid    = "b3:" + hex(root)

The shape of BitTorrent v2 piece layers: the leaf list is kept with the object, so any one segment can be
checked alone (ranged reads, ranged fetches from several peers) and the list itself is checked against the
cid. The domain label and the length keep a leaf list from passing as a different object. The "b3:" prefix
names the scheme so the format can evolve.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import blake3

from p2pfast.errors import IntegrityError

SCHEME = "b3"
PREFIX = SCHEME + ":"
DIGEST_SIZE = 32
ROOT_LABEL = b"p2pfast cid v1\x00"


def leaf(segment: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(segment).digest()


def leaf_of(parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """leaf() of the parts' concatenation, without making it."""
    h = blake3.blake3()
    for part in parts:
        h.update(part)
    return h.digest()


def root(total_length: int, leaves: bytes | bytearray | memoryview) -> str:
    if len(leaves) % DIGEST_SIZE or not leaves:
        raise IntegrityError(f"segment hash list of {len(leaves)} bytes is not a whole number of digests")
    h = blake3.blake3(ROOT_LABEL)
    h.update(struct.pack(">Q", total_length))
    h.update(leaves)
    return PREFIX + h.hexdigest()
