"""Frame codec (compiled kernel; twin: p2pfast/_frames_py.py, whose docstring has the full contract).

A frame is a 12-byte header (layout in p2pfast/wire.py and docs/protocol.md; constants from _common.pxd)
followed by its payload. FrameParser is sans-IO: get_buffer(n)/buffer_updated(n) or feed(data) in,
next_frame() -> Frame | None out.

* Headers are validated as soon as their 12 bytes are at the head, before next_frame() waits for the
  payload (BAD_VERSION, UNKNOWN_TYPE, BAD_FLAGS, FRAME_TOO_LARGE), and any error poisons the parser:
  next_frame/feed/buffer_updated/feed_eof raise it again. get_buffer never raises and never lends an
  empty view. Only RemoteProtocolError comes out for any input bytes; TypeError/ValueError mean a caller bug.
* One bytearray of capacity max(4 * (12 + max_payload), 64 KiB), allocated in __init__, never resized;
  unread bytes are [start, end) and are moved to the front (memmove) only when the free tail cannot take
  the frame at the head.
* Frame.payload is a read-only memoryview slice of that buffer, BORROWED until the next call to
  next_frame(), feed(), get_buffer() or buffer_updated() on the same parser.
* feed() copies what fits; the overflow waits as pending input (a view of immutable bytes, else a private
  copy) and next_frame() pulls from it. While input is pending, get_buffer() lends a scratch buffer whose
  bytes buffer_updated() queues behind it.

Raw pointers index the buffer only inside [start, end) after the lengths were compared, so the module
needs no bounds checks: it has no typed-memoryview or list indexing at all. Integer arguments go through
PyNumber_AsSsize_t(v, NULL), which clamps huge values instead of raising OverflowError, so an absurd value
is the same ValueError as in the twin.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy, memmove

from _common cimport (
    P2P_DEBUG,
    WIRE_FRAME_TYPE_MAX,
    WIRE_FRAME_TYPE_MIN,
    WIRE_HEADER_SIZE,
    WIRE_KNOWN_FLAGS,
    WIRE_MAX_PAYLOAD,
    WIRE_VERSION,
    p2p_load_be16,
    p2p_load_be32,
    p2p_store_be16,
    p2p_store_be32,
)

import collections

from p2pfast import errors, wire

cdef extern from "Python.h":
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject *exc) except? -1
    object PyMemoryView_FromObject(object o)
    Py_buffer *PyMemoryView_GET_BUFFER(object mv) noexcept

cdef enum:
    UNKNOWN_FLAGS_C = 0xFFFF & ~WIRE_KNOWN_FLAGS
    MAX_PARSER_PAYLOAD_C = 1 << 24
    MIN_CAPACITY_C = 64 * 1024
    SCRATCH_SIZE_C = 16 * 1024

VERSION = WIRE_VERSION
HEADER_SIZE = WIRE_HEADER_SIZE
MAX_PAYLOAD = WIRE_MAX_PAYLOAD
FRAME_TYPE_MIN = WIRE_FRAME_TYPE_MIN
FRAME_TYPE_MAX = WIRE_FRAME_TYPE_MAX
KNOWN_FLAGS = WIRE_KNOWN_FLAGS
MAX_PARSER_PAYLOAD = MAX_PARSER_PAYLOAD_C
MIN_CAPACITY = MIN_CAPACITY_C
SCRATCH_SIZE = SCRATCH_SIZE_C

__all__ = [
    "FRAME_TYPE_MAX",
    "FRAME_TYPE_MIN",
    "HEADER_SIZE",
    "KNOWN_FLAGS",
    "MAX_PARSER_PAYLOAD",
    "MAX_PAYLOAD",
    "MIN_CAPACITY",
    "SCRATCH_SIZE",
    "VERSION",
    "Frame",
    "FrameParser",
    "pack_header",
    "pack_header_into",
    "unpack_header",
]

cdef uint32_t U32_MAX = 0xFFFFFFFFu


cdef inline bint _header_bad(const unsigned char *p, Py_ssize_t max_payload) noexcept nogil:
    """True when the header at p (12 readable bytes) breaks a wire rule."""
    return (
        p[0] != WIRE_VERSION
        or p[1] < WIRE_FRAME_TYPE_MIN
        or p[1] > WIRE_FRAME_TYPE_MAX
        or (p2p_load_be16(p + 2) & UNKNOWN_FLAGS_C) != 0
        or <Py_ssize_t>p2p_load_be32(p + 8) > max_payload
    )


cdef object _header_error(const unsigned char *p, Py_ssize_t max_payload):
    """The RemoteProtocolError for a header _header_bad() rejected (same text as the twin)."""
    cdef int version = p[0]
    cdef int type_ = p[1]
    cdef unsigned int flags = p2p_load_be16(p + 2)
    cdef uint32_t length = p2p_load_be32(p + 8)
    if version != WIRE_VERSION:
        return errors.RemoteProtocolError(
            f"frame version {version} is not supported (expected {WIRE_VERSION})", wire.ErrorCode.BAD_VERSION
        )
    if type_ < WIRE_FRAME_TYPE_MIN or type_ > WIRE_FRAME_TYPE_MAX:
        return errors.RemoteProtocolError(
            f"frame type {type_} is unknown (expected {WIRE_FRAME_TYPE_MIN}..{WIRE_FRAME_TYPE_MAX})",
            wire.ErrorCode.UNKNOWN_TYPE,
        )
    if flags & UNKNOWN_FLAGS_C:
        return errors.RemoteProtocolError(
            f"frame flags 0x{flags:04x} have unknown bits 0x{flags & UNKNOWN_FLAGS_C:04x}",
            wire.ErrorCode.BAD_FLAGS,
        )
    return errors.RemoteProtocolError(
        f"frame payload {length} bytes exceeds max {max_payload}", wire.ErrorCode.FRAME_TOO_LARGE
    )


cdef object _truncated(Py_ssize_t have, Py_ssize_t need):
    if need == WIRE_HEADER_SIZE and have < WIRE_HEADER_SIZE:
        msg = f"connection closed inside a frame header ({have} of {WIRE_HEADER_SIZE} bytes received)"
    else:
        msg = f"connection closed inside a frame ({have} of {need} bytes received)"
    return errors.RemoteProtocolError(msg, wire.ErrorCode.TRUNCATED)


cdef inline object _subview(object base, unsigned char *start, Py_ssize_t n):
    """base[start - base.buf : ... + n] for a 1-D unsigned-byte memoryview `base`, without a slice object.

    A new view of base's managed buffer, narrowed in place before anyone else sees it: what memoryview's
    own slicing does (CPython memoryobject.c, init_slice) minus the two ints and the slice it needs to be
    told the bounds. It keeps the exporter alive like any slice, so a payload held past the parser's life
    is stale, never dangling. Halves the cost of next_frame() on small frames.
    """
    cdef object view = PyMemoryView_FromObject(base)
    cdef Py_buffer *vb = PyMemoryView_GET_BUFFER(view)
    if P2P_DEBUG:
        assert vb.ndim == 1 and vb.itemsize == 1 and vb.suboffsets == NULL and vb.strides[0] == 1
        assert <char *>vb.buf <= <char *>start and <char *>start + n <= <char *>vb.buf + vb.len
    vb.buf = start
    vb.len = n
    vb.shape[0] = n
    return view


@cython.freelist(8)
@cython.no_gc  # ints and one memoryview of a parser buffer: nothing that could refer back to a Frame
@cython.final
cdef class Frame:
    """One parsed frame. `payload` is BORROWED from the parser's buffer (see the module docstring)."""

    cdef readonly int type
    cdef readonly int flags
    cdef readonly uint32_t stream_id
    cdef readonly object payload

    def __init__(self, type, flags, stream_id, payload):
        self.type = type
        self.flags = flags
        self.stream_id = stream_id
        self.payload = memoryview(payload)

    def __repr__(self):
        return (
            f"Frame(type={self.type}, flags={self.flags}, stream_id={self.stream_id}, "
            f"len={len(self.payload)})"
        )


@cython.final
cdef class FrameParser:
    """Incremental frame parser over one preallocated buffer; see the module docstring for the rules."""

    cdef bytearray _buf
    cdef object _view        # writable memoryview of _buf, lent by get_buffer()
    cdef object _roview      # read-only memoryview of _buf, sliced for payloads
    cdef unsigned char *_data  # _buf's storage: stable, since _buf is never resized (and _view pins it)
    cdef Py_ssize_t _cap, _start, _end, _max_payload, _pending_len, _lent
    cdef bint _lent_scratch
    cdef object _pending     # deque of memoryviews, in stream order
    cdef bytearray _scratch
    cdef object _error

    def __cinit__(self, *args, **kwargs):
        # Until __init__ has allocated the buffer (FrameParser.__new__ alone), the parser is poisoned.
        self._error = TypeError("FrameParser.__init__() was not called")

    def __init__(self, max_payload=65535):
        cdef Py_ssize_t mp = PyNumber_AsSsize_t(max_payload, NULL)
        if mp < 1 or mp > MAX_PARSER_PAYLOAD_C:
            raise ValueError(f"max_payload {max_payload} is not in 1..{MAX_PARSER_PAYLOAD_C}")
        self._max_payload = mp
        self._cap = max(4 * (WIRE_HEADER_SIZE + mp), <Py_ssize_t>MIN_CAPACITY_C)
        self._buf = bytearray(self._cap)
        self._view = memoryview(self._buf)
        self._roview = self._view.toreadonly()
        self._data = <unsigned char *>PyByteArray_AS_STRING(self._buf)
        self._start = 0
        self._end = 0
        self._pending = collections.deque()
        self._pending_len = 0
        self._error = None
        self._lent = 0
        self._lent_scratch = False
        self._scratch = None

    @property
    def max_payload(self):
        return self._max_payload

    @property
    def buffered(self):
        """Bytes received and not yet returned as frames, pending feed() input included."""
        return self._end - self._start + self._pending_len

    cdef int _fail(self, error) except -1:
        self._error = error
        raise error

    cdef int _raise_error(self) except -1:
        raise self._error.with_traceback(None)

    cdef void _compact(self) noexcept:
        cdef Py_ssize_t n = self._end - self._start
        if n:
            memmove(self._data, self._data + self._start, <size_t>n)
        self._start = 0
        self._end = n

    cdef Py_ssize_t _head_need(self) noexcept:
        """Total size of the frame at the head as far as known: 12 until its header is complete."""
        if self._end - self._start < WIRE_HEADER_SIZE:
            return WIRE_HEADER_SIZE
        return WIRE_HEADER_SIZE + <Py_ssize_t>p2p_load_be32(self._data + self._start + 8)

    cdef int _push_pending(self, data, const unsigned char *rest, Py_ssize_t n, Py_ssize_t skip) except -1:
        """Queue n bytes at `rest` (`skip` bytes into data): a view of immutable bytes, else a copy."""
        if type(data) is bytes:
            self._pending.append(memoryview(data)[skip:skip + n])
        else:
            self._pending.append(memoryview(PyBytes_FromStringAndSize(<const char *>rest, n)))
        self._pending_len += n
        return 0

    cdef int _refill(self, Py_ssize_t need) except -1:
        """Move pending input into the buffer; `need` (<= 12 + max_payload) is the head frame's size."""
        cdef Py_buffer src
        cdef Py_ssize_t room, n
        if self._cap - self._start < need:
            self._compact()
        room = self._cap - self._end  # > 0: the head frame fits and is incomplete
        while room > 0 and self._pending_len > 0:
            chunk = self._pending[0]
            PyObject_GetBuffer(chunk, &src, PyBUF_SIMPLE)
            try:
                n = min(room, src.len)
                memcpy(self._data + self._end, src.buf, <size_t>n)
                partial = n < src.len
            finally:
                PyBuffer_Release(&src)
            self._end += n
            room -= n
            self._pending_len -= n
            if partial:
                self._pending[0] = chunk[n:]
            else:
                self._pending.popleft()
        return 0

    def get_buffer(self, sizehint=-1) -> memoryview:
        """A writable, never empty view to receive into; `sizehint` is advisory and ignored."""
        cdef Py_ssize_t free
        self._lent = 0
        if self._pending_len == 0:
            free = self._cap - self._end
            if self._start and (free == 0 or self._cap - self._start < self._head_need()):
                self._compact()
                free = self._cap - self._end
            if free:
                self._lent = free
                self._lent_scratch = False
                return self._view[self._end:]
        if self._scratch is None:
            self._scratch = bytearray(SCRATCH_SIZE_C)
        self._lent = SCRATCH_SIZE_C
        self._lent_scratch = True
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes) -> None:
        """`nbytes` bytes were written into the view the last get_buffer() returned."""
        cdef Py_ssize_t n
        if self._error is not None:
            self._raise_error()
        n = PyNumber_AsSsize_t(nbytes, NULL)
        if n < 0 or n > self._lent:
            raise ValueError(f"buffer_updated({nbytes}) but the last get_buffer() lent {self._lent} bytes")
        self._lent = 0
        if self._lent_scratch:
            if n:
                copy = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._scratch), n)
                self._pending.append(memoryview(copy))
                self._pending_len += n
        else:
            self._end += n

    def feed(self, data) -> None:
        """Append any bytes-like object, of any size; bytes that do not fit wait as pending input."""
        cdef Py_buffer pb
        cdef Py_ssize_t n, k, free
        if self._error is not None:
            self._raise_error()
        self._lent = 0
        try:
            PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
        except BufferError:  # not C-contiguous (TypeError, for non-buffers, propagates)
            data = memoryview(data).tobytes()
            PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
        try:
            n = pb.len
            if n == 0:
                return
            if self._pending_len:
                self._push_pending(data, <const unsigned char *>pb.buf, n, 0)
                return
            free = self._cap - self._end
            if free < n and self._start:
                self._compact()
                free = self._cap - self._end
            k = min(n, free)
            memmove(self._data + self._end, pb.buf, <size_t>k)  # data may even be a view of _buf
            self._end += k
            if k < n:
                self._push_pending(data, <const unsigned char *>pb.buf + k, n - k, k)
        finally:
            PyBuffer_Release(&pb)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed. Its payload is borrowed."""
        cdef Py_ssize_t start, avail, need
        cdef const unsigned char *p
        cdef Frame frame
        if self._error is not None:
            self._raise_error()
        self._lent = 0
        while True:
            start = self._start
            avail = self._end - start
            need = WIRE_HEADER_SIZE
            if avail >= WIRE_HEADER_SIZE:
                p = self._data + start
                if _header_bad(p, self._max_payload):
                    self._fail(_header_error(p, self._max_payload))
                need = WIRE_HEADER_SIZE + <Py_ssize_t>p2p_load_be32(p + 8)
                if avail >= need:
                    frame = Frame.__new__(Frame)
                    frame.type = p[1]
                    frame.flags = p2p_load_be16(p + 2)
                    frame.stream_id = p2p_load_be32(p + 4)
                    frame.payload = _subview(
                        self._roview, self._data + start + WIRE_HEADER_SIZE, need - WIRE_HEADER_SIZE
                    )
                    if avail == need:  # empty: restart at the front, no compaction needed later
                        self._start = self._end = 0
                    else:
                        self._start = start + need
                    return frame
            if self._pending_len == 0:
                return None
            self._refill(need)

    cdef int _peek(self, Py_ssize_t pos, unsigned char *out) except -1:
        """Copy the 12 bytes at logical offset pos of the buffered stream (buffer, then pending) to out."""
        cdef Py_ssize_t got = 0, inbuf = self._end - self._start, k
        cdef Py_buffer src
        if pos < inbuf:
            got = min(inbuf - pos, <Py_ssize_t>WIRE_HEADER_SIZE)
            memcpy(out, self._data + self._start + pos, <size_t>got)
        pos = max(pos - inbuf, 0)
        for chunk in self._pending:
            if got == WIRE_HEADER_SIZE:
                break
            PyObject_GetBuffer(chunk, &src, PyBUF_SIMPLE)
            try:
                if pos < src.len:
                    k = min(src.len - pos, WIRE_HEADER_SIZE - got)
                    memcpy(out + got, <const unsigned char *>src.buf + pos, <size_t>k)
                    got += k
                pos = max(pos - src.len, 0)
            finally:
                PyBuffer_Release(&src)
        return 0

    def feed_eof(self) -> None:
        """The peer closed: RemoteProtocolError(TRUNCATED) if the bytes end inside a frame, else no-op."""
        cdef Py_ssize_t total, pos = 0, have, need
        cdef unsigned char hdr[WIRE_HEADER_SIZE]
        if self._error is not None:
            self._raise_error()
        self._lent = 0
        total = self._end - self._start + self._pending_len
        while pos < total:
            have = total - pos
            if have < WIRE_HEADER_SIZE:
                self._fail(_truncated(have, WIRE_HEADER_SIZE))
            self._peek(pos, hdr)
            if _header_bad(hdr, self._max_payload):
                self._fail(_header_error(hdr, self._max_payload))
            need = WIRE_HEADER_SIZE + <Py_ssize_t>p2p_load_be32(hdr + 8)
            if have < need:
                self._fail(_truncated(have, need))
            pos += need


cdef int _check_fields(object type, object flags, object stream_id, object length,
                       unsigned char *out) except -1:
    """Validate the encoder's arguments and write the header to out (12 bytes)."""
    cdef Py_ssize_t t = PyNumber_AsSsize_t(type, NULL)
    cdef Py_ssize_t f = PyNumber_AsSsize_t(flags, NULL)
    cdef Py_ssize_t s = PyNumber_AsSsize_t(stream_id, NULL)
    cdef Py_ssize_t n = PyNumber_AsSsize_t(length, NULL)
    if t < WIRE_FRAME_TYPE_MIN or t > WIRE_FRAME_TYPE_MAX:
        raise ValueError(f"frame type {type} is not in {WIRE_FRAME_TYPE_MIN}..{WIRE_FRAME_TYPE_MAX}")
    if f < 0 or f > 0xFFFF or (f & UNKNOWN_FLAGS_C):
        raise ValueError(f"frame flags {flags:#x} are not a subset of {WIRE_KNOWN_FLAGS:#06x}")
    if s < 0 or s > <Py_ssize_t>U32_MAX:
        raise ValueError(f"stream id {stream_id} is not in 0..{U32_MAX}")
    if n < 0 or n > WIRE_MAX_PAYLOAD:
        raise ValueError(f"frame payload length {length} is not in 0..{WIRE_MAX_PAYLOAD}")
    out[0] = WIRE_VERSION
    out[1] = <unsigned char>t
    p2p_store_be16(out + 2, <uint16_t>f)
    p2p_store_be32(out + 4, <uint32_t>s)
    p2p_store_be32(out + 8, <uint32_t>n)
    return 0


def pack_header_into(buf, offset, type, flags, stream_id, length) -> None:
    """Write the 12-byte header into the caller's writable buffer at `offset`."""
    cdef Py_buffer pb
    cdef Py_ssize_t off
    cdef unsigned char hdr[WIRE_HEADER_SIZE]
    try:
        PyObject_GetBuffer(buf, &pb, PyBUF_WRITABLE)
    except BufferError:
        raise TypeError(
            f"pack_header_into needs a writable contiguous buffer, not {buf.__class__.__name__}"
        ) from None
    try:
        off = PyNumber_AsSsize_t(offset, NULL)
        _check_fields(type, flags, stream_id, length, hdr)
        if off < 0 or off > pb.len - WIRE_HEADER_SIZE:
            raise ValueError(
                f"a {WIRE_HEADER_SIZE}-byte header does not fit at offset {offset} of {pb.len} bytes"
            )
        memcpy(<unsigned char *>pb.buf + off, hdr, WIRE_HEADER_SIZE)
    finally:
        PyBuffer_Release(&pb)


def pack_header(type, flags, stream_id, length) -> bytes:
    """The 12-byte header as bytes."""
    cdef unsigned char hdr[WIRE_HEADER_SIZE]
    _check_fields(type, flags, stream_id, length, hdr)
    return PyBytes_FromStringAndSize(<const char *>hdr, WIRE_HEADER_SIZE)


def unpack_header(buf, offset=0) -> tuple[int, int, int, int]:
    """(type, flags, stream_id, length) of the header at `offset`, validated against wire.MAX_PAYLOAD."""
    cdef Py_buffer pb
    cdef Py_ssize_t off
    cdef const unsigned char *p
    try:
        PyObject_GetBuffer(buf, &pb, PyBUF_SIMPLE)
    except BufferError:
        buf = memoryview(buf).tobytes()
        PyObject_GetBuffer(buf, &pb, PyBUF_SIMPLE)
    try:
        off = PyNumber_AsSsize_t(offset, NULL)
        if off < 0 or off > pb.len - WIRE_HEADER_SIZE:
            raise ValueError(
                f"a {WIRE_HEADER_SIZE}-byte header does not fit at offset {offset} of {pb.len} bytes"
            )
        p = <const unsigned char *>pb.buf + off
        if _header_bad(p, WIRE_MAX_PAYLOAD):
            raise _header_error(p, WIRE_MAX_PAYLOAD)
        return (p[1], p2p_load_be16(p + 2), p2p_load_be32(p + 4), p2p_load_be32(p + 8))
    finally:
        PyBuffer_Release(&pb)
