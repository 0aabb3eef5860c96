"""Sharded path transform (compiled kernel; twin: p2pfast/_shard_py.py).

A 32-byte digest becomes a relative path in borgstore "nest" style: `depth` directory levels of `width`
lowercase hex characters each, taken from the start of the hex digest, then the full 64-character hex name::

    shard_path(bytes.fromhex("abcd" + "00" * 30))          == "ab/cd/abcd0000…00"
    shard_path(d, width=1, depth=3)                        == "a/b/c/abcd…"
    shard_path(d, depth=0)                                 == "abcd…"

The alphabet is [0-9a-f/] by construction: no leading "/", no "..", no separators in the name. Bounds are
1 <= width <= 8, 0 <= depth <= 8 (so width * depth <= 64); anything else is a ValueError.

Inputs are any C-contiguous buffer (bytes, bytearray, memoryview, ...), taken with PyObject_GetBuffer and
released in `finally` (borg `ro_buffer`), and read through raw pointers only after the length check (no
typed-memoryview indexing, so no bounds-check directive is involved). Parameters go through
PyNumber_AsSsize_t(v, NULL), which clamps huge integers instead of raising OverflowError, so an absurd width
is the same ValueError as in the twin.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF, PyObject
from libc.string cimport memcpy

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    unsigned char *PyUnicode_1BYTE_DATA(object o)
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject *exc) except? -1

cdef enum:
    DIGEST_SIZE_C = 32
    HEX_SIZE = 64
    MAX_WIDTH_C = 8
    MAX_DEPTH_C = 8

DIGEST_SIZE = DIGEST_SIZE_C
MAX_WIDTH = MAX_WIDTH_C
MAX_DEPTH = MAX_DEPTH_C

__all__ = ["DIGEST_SIZE", "MAX_DEPTH", "MAX_WIDTH", "shard_path", "shard_paths"]

# Two hex characters per byte value: one 2-byte copy per input byte.
cdef char _HEX_PAIRS[512]


cdef void _init_pairs() noexcept:
    cdef const char *digits = b"0123456789abcdef"
    cdef int i
    for i in range(256):
        _HEX_PAIRS[2 * i] = digits[i >> 4]
        _HEX_PAIRS[2 * i + 1] = digits[i & 15]


_init_pairs()


cdef inline void _nest(const unsigned char *src, unsigned char *out,
                       Py_ssize_t width, Py_ssize_t depth) noexcept nogil:
    """Write the nest path of one digest: hex name at the tail first, then copy the levels from it."""
    cdef unsigned char *name = out + depth * (width + 1)
    cdef Py_ssize_t i
    for i in range(DIGEST_SIZE_C):
        memcpy(name + 2 * i, &_HEX_PAIRS[2 * <Py_ssize_t>src[i]], 2)
    for i in range(depth):
        memcpy(out + i * (width + 1), name + i * width, <size_t>width)
        out[i * (width + 1) + width] = b'/'


cdef int _check(object width, object depth, Py_ssize_t w, Py_ssize_t d) except -1:
    if w < 1 or w > MAX_WIDTH_C or d < 0 or d > MAX_DEPTH_C or w * d > HEX_SIZE:
        raise ValueError(
            f"shard width must be in 1..{MAX_WIDTH_C} and depth in 0..{MAX_DEPTH_C}, "
            f"got width={width!r}, depth={depth!r}"
        )
    return 0


cdef inline object _one(const unsigned char *src, Py_ssize_t size, Py_ssize_t w, Py_ssize_t d):
    cdef object s = PyUnicode_New(size, 127)
    _nest(src, PyUnicode_1BYTE_DATA(s), w, d)
    return s


def shard_path(digest, width=2, depth=2):
    """Relative nest path of one 32-byte digest: `depth` levels of `width` hex chars, then the 64-hex name.

    ValueError for a digest that is not exactly 32 bytes or for width/depth out of bounds.
    """
    cdef Py_ssize_t w = PyNumber_AsSsize_t(width, NULL)
    cdef Py_ssize_t d = PyNumber_AsSsize_t(depth, NULL)
    cdef Py_buffer view
    _check(width, depth, w, d)
    PyObject_GetBuffer(digest, &view, PyBUF_SIMPLE)
    try:
        if view.len != DIGEST_SIZE_C:
            raise ValueError(f"digest must be {DIGEST_SIZE_C} bytes, got {view.len}")
        return _one(<const unsigned char *>view.buf, d * (w + 1) + HEX_SIZE, w, d)
    finally:
        PyBuffer_Release(&view)


def shard_paths(digests, width=2, depth=2):
    """Batch form: one buffer of n concatenated 32-byte digests -> list of n paths (as shard_path).

    ValueError when the buffer length is not a multiple of 32 or width/depth are out of bounds.
    """
    cdef Py_ssize_t w = PyNumber_AsSsize_t(width, NULL)
    cdef Py_ssize_t d = PyNumber_AsSsize_t(depth, NULL)
    cdef Py_ssize_t n, i, size
    cdef Py_buffer view
    cdef const unsigned char *src
    cdef object out, s
    _check(width, depth, w, d)
    PyObject_GetBuffer(digests, &view, PyBUF_SIMPLE)
    try:
        if view.len % DIGEST_SIZE_C:
            raise ValueError(f"digests buffer must hold a multiple of {DIGEST_SIZE_C} bytes, got {view.len}")
        n = view.len // DIGEST_SIZE_C
        size = d * (w + 1) + HEX_SIZE
        src = <const unsigned char *>view.buf
        out = PyList_New(n)
        for i in range(n):
            s = _one(src + i * DIGEST_SIZE_C, size, w, d)
            Py_INCREF(s)  # PyList_SET_ITEM steals the reference
            PyList_SET_ITEM(out, i, s)
        return out
    finally:
        PyBuffer_Release(&view)
