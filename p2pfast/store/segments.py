"""The geometry of an object file of format version 1: segment size, where each block starts, how large a
file is. Plain arithmetic on sizes; envelope.py draws the format and holds its other rules (header,
nonces, associated data). EnvelopeV1 answers these through its own methods, which the store calls;
callers that only size things (a replica's free-space check, tests) use the functions here.

    header (HEADER_SIZE) | segment 0 .. n-1 (plaintext + TAG_SIZE each) | index (32 per segment + TAG_SIZE)
"""

from __future__ import annotations

SEGMENT_SIZE = 1 << 20  # the format constant; recorded in every header
TAG_SIZE = 16
HEADER_SIZE = 32
LEAF_SIZE = 32  # one BLAKE3 digest per segment in the index
MAX_SEGMENTS = 0xFFFFFFFF  # the index in the nonce is u32; 0xffffffff is reserved for the index block


def segment_count(length: int, segment_size: int) -> int:
    return max(1, -(-length // segment_size))


def segment_offset(index: int, segment_size: int) -> int:
    return HEADER_SIZE + index * (segment_size + TAG_SIZE)


def data_end(length: int, segment_size: int) -> int:
    """Offset just past the last segment: where the index block starts."""
    return HEADER_SIZE + length + TAG_SIZE * segment_count(length, segment_size)


def index_size(length: int, segment_size: int) -> int:
    return LEAF_SIZE * segment_count(length, segment_size) + TAG_SIZE


def file_size(length: int, segment_size: int) -> int:
    return data_end(length, segment_size) + index_size(length, segment_size)
