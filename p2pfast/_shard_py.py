"""Sharded path transform, pure-Python twin of ext/shard.pyx (p2pfast._shard_c); same API and errors.

A 32-byte digest becomes a relative path in borgstore "nest" style: `depth` directory levels of `width`
lowercase hex characters each, taken from the start of the hex digest, then the full 64-character hex name
(width=2, depth=2: "ab/cd/abcd…"; depth=0: the name alone). The output alphabet is [0-9a-f/] by construction:
it never starts with "/" and never contains "..". Bounds: 1 <= width <= 8, 0 <= depth <= 8 (so
width * depth <= 64); anything else is a ValueError, as is a digest that is not exactly 32 bytes.
Inputs are any C-contiguous buffer (a non-contiguous one is a BufferError, as PyBUF_SIMPLE is in C).
"""

from __future__ import annotations

import operator

DIGEST_SIZE = 32
MAX_WIDTH = 8
MAX_DEPTH = 8
_HEX_SIZE = 2 * DIGEST_SIZE

__all__ = ["DIGEST_SIZE", "MAX_DEPTH", "MAX_WIDTH", "shard_path", "shard_paths"]


def _params(width: int, depth: int) -> tuple[int, int]:
    w = operator.index(width)
    d = operator.index(depth)
    if not (1 <= w <= MAX_WIDTH and 0 <= d <= MAX_DEPTH and w * d <= _HEX_SIZE):
        raise ValueError(
            f"shard width must be in 1..{MAX_WIDTH} and depth in 0..{MAX_DEPTH}, "
            f"got width={width!r}, depth={depth!r}"
        )
    return w, d


def _hex(buf: bytes | bytearray | memoryview) -> tuple[str, int]:
    with memoryview(buf) as mv:
        if not mv.c_contiguous:
            raise BufferError("shard input must be a C-contiguous buffer")
        return mv.hex(), mv.nbytes


def _nest(name: str, w: int, d: int) -> str:
    if d == 0:
        return name
    return "/".join([name[i : i + w] for i in range(0, w * d, w)]) + "/" + name


def shard_path(digest: bytes | bytearray | memoryview, width: int = 2, depth: int = 2) -> str:
    """Relative nest path of one 32-byte digest: `depth` levels of `width` hex chars, then the 64-hex name.

    ValueError for a digest that is not exactly 32 bytes or for width/depth out of bounds.
    """
    w, d = _params(width, depth)
    name, n = _hex(digest)
    if n != DIGEST_SIZE:
        raise ValueError(f"digest must be {DIGEST_SIZE} bytes, got {n}")
    return _nest(name, w, d)


def shard_paths(digests: bytes | bytearray | memoryview, width: int = 2, depth: int = 2) -> list[str]:
    """Batch form: one buffer of n concatenated 32-byte digests -> list of n paths (as shard_path).

    ValueError when the buffer length is not a multiple of 32 or width/depth are out of bounds.
    """
    w, d = _params(width, depth)
    text, n = _hex(digests)
    if n % DIGEST_SIZE:
        raise ValueError(f"digests buffer must hold a multiple of {DIGEST_SIZE} bytes, got {n}")
    return [_nest(text[i : i + _HEX_SIZE], w, d) for i in range(0, len(text), _HEX_SIZE)]
