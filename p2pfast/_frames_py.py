"""Frame codec, pure-Python twin of ext/frames.pyx (p2pfast._frames_c). Same API, same errors, same bytes.

A frame is a 12-byte header (layout in p2pfast/wire.py and docs/protocol.md) followed by its payload.

Parser, sans-IO: bytes go in through `get_buffer(n)` + `buffer_updated(n)` (asyncio.BufferedProtocol, no
copy) or `feed(data)` (one copy); frames come out of `next_frame()`, which returns None when it needs more.

* Every header is validated as soon as its 12 bytes are at the head of the buffer, before next_frame()
  waits for the payload: bad version, unknown type, unknown flag bits or a length above `max_payload` raise
  RemoteProtocolError with the wire ErrorCode (BAD_VERSION, UNKNOWN_TYPE, BAD_FLAGS, FRAME_TOO_LARGE).
* After any error the parser is poisoned: next_frame, feed, buffer_updated and feed_eof raise the same
  exception again (h11). get_buffer never raises: asyncio and uvloop treat that as fatal to the transport.
* Nothing but RemoteProtocolError leaves feed/next_frame/buffer_updated/feed_eof for any input bytes.
  Wrong argument types are a TypeError, and buffer_updated(n) with n outside what the last get_buffer()
  lent is a ValueError: those are bugs in the caller, not in the peer.

Buffer and bounds: one bytearray of capacity max(4 * (12 + max_payload), 64 KiB), allocated in __init__ and
never resized. Unread bytes live in [start, end). Compaction moves them to the front (one memmove) only
when the free tail cannot take the frame at the head (or is empty); it never reallocates.

Borrow rule: `Frame.payload` is a read-only memoryview into that buffer, valid only until the next call to
next_frame(), feed(), get_buffer() or buffer_updated() on the same parser; any of them may compact or
overwrite the bytes behind it. Copy it (`bytes(frame.payload)`) or finish with it before calling again.
Likewise the view returned by get_buffer() is valid only until the next call on the parser.

feed(data) copies what fits into the buffer; the overflow is kept as pending input (a view of `data` itself
when it is immutable bytes, else a private copy of the overflow) and next_frame() pulls from it as frames
are consumed. Memory stays bounded by what the caller fed. Mixing the two input paths is allowed but not
useful: while pending input exists, get_buffer() lends a small scratch buffer whose bytes buffer_updated()
queues behind the pending input, so byte order is always preserved and the view is never empty.

feed_eof() raises RemoteProtocolError(code=TRUNCATED) when the buffered bytes end inside a frame (or the
header error a buffered frame has, whichever comes first in the stream); with only whole frames buffered
it is a no-op and they can still be read.

Encoder: pack_header_into(buf, offset, ...) writes a header into a buffer the caller owns (the network
layer then encrypts the payload right behind it); pack_header(...) returns it as bytes. Both raise
ValueError for values outside the wire format and TypeError for a read-only or non-contiguous buffer.
unpack_header(buf, offset) decodes and validates one header against wire.MAX_PAYLOAD.
"""

from __future__ import annotations

import collections
import operator
import struct
from typing import TYPE_CHECKING

from p2pfast import errors, wire

if TYPE_CHECKING:
    from typing_extensions import Buffer

VERSION = wire.VERSION
HEADER_SIZE = wire.HEADER_SIZE
MAX_PAYLOAD = wire.MAX_PAYLOAD
FRAME_TYPE_MIN = int(wire.FRAME_TYPE_MIN)
FRAME_TYPE_MAX = int(wire.FRAME_TYPE_MAX)
KNOWN_FLAGS = wire.KNOWN_FLAGS
# The largest max_payload a parser accepts (the parser can serve non-wire uses with bigger frames).
MAX_PARSER_PAYLOAD = 1 << 24
# The parser buffer holds at least this much, so small max_payloads still read in large chunks.
MIN_CAPACITY = 64 * 1024
# get_buffer() lends this much scratch space while feed() input is pending or the buffer is full.
SCRATCH_SIZE = 16 * 1024

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

_HEADER = struct.Struct(">BBHII")
_unpack_from = _HEADER.unpack_from
_UNKNOWN_FLAGS = 0xFFFF & ~KNOWN_FLAGS
_U32_MAX = 0xFFFFFFFF


def _header_error(
    version: int, type: int, flags: int, length: int, max_payload: int
) -> errors.RemoteProtocolError:
    """The error for an invalid header, checked in wire order: version, type, flags, length."""
    if version != VERSION:
        return errors.RemoteProtocolError(
            f"frame version {version} is not supported (expected {VERSION})", wire.ErrorCode.BAD_VERSION
        )
    if not FRAME_TYPE_MIN <= type <= FRAME_TYPE_MAX:
        return errors.RemoteProtocolError(
            f"frame type {type} is unknown (expected {FRAME_TYPE_MIN}..{FRAME_TYPE_MAX})",
            wire.ErrorCode.UNKNOWN_TYPE,
        )
    if flags & _UNKNOWN_FLAGS:
        return errors.RemoteProtocolError(
            f"frame flags 0x{flags:04x} have unknown bits 0x{flags & _UNKNOWN_FLAGS:04x}",
            wire.ErrorCode.BAD_FLAGS,
        )
    return errors.RemoteProtocolError(
        f"frame payload {length} bytes exceeds max {max_payload}", wire.ErrorCode.FRAME_TOO_LARGE
    )


def _truncated(have: int, need: int) -> errors.RemoteProtocolError:
    if need == HEADER_SIZE and have < HEADER_SIZE:
        msg = f"connection closed inside a frame header ({have} of {HEADER_SIZE} bytes received)"
    else:
        msg = f"connection closed inside a frame ({have} of {need} bytes received)"
    return errors.RemoteProtocolError(msg, wire.ErrorCode.TRUNCATED)


def _byte_view(data: Buffer) -> memoryview:
    """A flat unsigned-byte view of any bytes-like object (TypeError for anything else)."""
    view = memoryview(data)
    if view.ndim == 1 and view.itemsize == 1 and view.c_contiguous:
        return view if view.format == "B" else view.cast("B")
    if view.c_contiguous:
        try:
            return view.cast("B")
        except TypeError:
            pass
    return memoryview(view.tobytes())


class Frame:
    """One parsed frame. `payload` is BORROWED from the parser's buffer (see the module docstring)."""

    __slots__ = ("_flags", "_payload", "_stream_id", "_type")

    def __init__(self, type: int, flags: int, stream_id: int, payload: Buffer) -> None:
        self._type = type
        self._flags = flags
        self._stream_id = stream_id
        self._payload = memoryview(payload)

    @property
    def type(self) -> int:
        return self._type

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def stream_id(self) -> int:
        return self._stream_id

    @property
    def payload(self) -> memoryview:
        return self._payload

    def __repr__(self) -> str:
        return (
            f"Frame(type={self._type}, flags={self._flags}, stream_id={self._stream_id}, "
            f"len={len(self._payload)})"
        )


_new_frame = object.__new__  # the parser fills the slots itself: no __init__ call per frame


class FrameParser:
    """Incremental frame parser over one preallocated buffer; see the module docstring for the rules."""

    __slots__ = (
        "_buf",
        "_cap",
        "_end",
        "_error",
        "_lent",
        "_lent_scratch",
        "_max_payload",
        "_pending",
        "_pending_len",
        "_roview",
        "_scratch",
        "_start",
        "_view",
    )

    def __init__(self, max_payload: int = 65535) -> None:
        max_payload = operator.index(max_payload)
        if not 1 <= max_payload <= MAX_PARSER_PAYLOAD:
            raise ValueError(f"max_payload {max_payload} is not in 1..{MAX_PARSER_PAYLOAD}")
        self._max_payload = max_payload
        self._cap = max(4 * (HEADER_SIZE + max_payload), MIN_CAPACITY)
        self._buf = bytearray(self._cap)
        self._view = memoryview(self._buf)  # writable, lent by get_buffer()
        self._roview = self._view.toreadonly()  # sliced for payloads
        self._start = 0
        self._end = 0
        self._pending: collections.deque[memoryview] = collections.deque()
        self._pending_len = 0
        self._error: errors.RemoteProtocolError | None = None
        self._lent = 0  # size of the view the last get_buffer() lent, until buffer_updated()
        self._lent_scratch = False
        self._scratch: bytearray | None = None

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames, pending feed() input included."""
        return self._end - self._start + self._pending_len

    def _fail(self, error: errors.RemoteProtocolError) -> None:
        self._error = error
        raise error

    def _raise_error(self) -> None:
        assert self._error is not None
        raise self._error.with_traceback(None)

    def _compact(self) -> None:
        n = self._end - self._start
        if n:
            self._view[:n] = self._view[self._start : self._end]
        self._start = 0
        self._end = n

    def _head_need(self) -> int:
        """Total size of the frame at the head as far as known: 12 until its header is complete."""
        if self._end - self._start < HEADER_SIZE:
            return HEADER_SIZE
        return HEADER_SIZE + int.from_bytes(self._buf[self._start + 8 : self._start + 12], "big")

    def _push_pending(self, data: object, rest: memoryview) -> None:
        # Immutable bytes can be referenced; anything else may change under us, so copy the overflow.
        self._pending.append(rest if type(data) is bytes else memoryview(rest.tobytes()))
        self._pending_len += len(rest)

    def _refill(self, need: int) -> None:
        """Move pending input into the buffer; `need` (<= 12 + max_payload) is the head frame's size."""
        if self._cap - self._start < need:
            self._compact()
        room = self._cap - self._end  # > 0: the head frame fits and is incomplete
        pending = self._pending
        while room and pending:
            chunk = pending[0]
            n = min(room, len(chunk))
            end = self._end
            self._view[end : end + n] = chunk[:n]
            self._end = end + n
            room -= n
            self._pending_len -= n
            if n == len(chunk):
                pending.popleft()
            else:
                pending[0] = chunk[n:]

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable, never empty view to receive into; `sizehint` is advisory and ignored."""
        self._lent = 0
        if not self._pending_len:
            free = self._cap - self._end
            if self._start and (not free or self._cap - self._start < self._head_need()):
                self._compact()
                free = self._cap - self._end
            if free:
                self._lent = free
                self._lent_scratch = False
                return self._view[self._end :]
        if self._scratch is None:
            self._scratch = bytearray(SCRATCH_SIZE)
        self._lent = SCRATCH_SIZE
        self._lent_scratch = True
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` bytes were written into the view the last get_buffer() returned."""
        if self._error is not None:
            self._raise_error()
        nbytes = operator.index(nbytes)
        if not 0 <= nbytes <= self._lent:
            raise ValueError(f"buffer_updated({nbytes}) but the last get_buffer() lent {self._lent} bytes")
        self._lent = 0
        if self._lent_scratch:
            if nbytes:
                assert self._scratch is not None
                self._pending.append(memoryview(bytes(self._scratch[:nbytes])))
                self._pending_len += nbytes
        else:
            self._end += nbytes

    def feed(self, data: Buffer) -> None:
        """Append any bytes-like object, of any size; bytes that do not fit wait as pending input."""
        if self._error is not None:
            self._raise_error()
        self._lent = 0
        view = _byte_view(data)
        n = len(view)
        if not n:
            return
        if self._pending_len:
            self._push_pending(data, view)
            return
        free = self._cap - self._end
        if free < n and self._start:
            self._compact()
            free = self._cap - self._end
        k = min(n, free)
        end = self._end
        self._view[end : end + k] = view[:k]
        self._end = end + k
        if k < n:
            self._push_pending(data, view[k:])

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed. Its payload is borrowed."""
        if self._error is not None:
            self._raise_error()
        self._lent = 0
        while True:
            start = self._start
            avail = self._end - start
            need = HEADER_SIZE
            if avail >= HEADER_SIZE:
                version, type_, flags, stream_id, length = _unpack_from(self._buf, start)
                if (
                    version != VERSION
                    or not FRAME_TYPE_MIN <= type_ <= FRAME_TYPE_MAX
                    or flags & _UNKNOWN_FLAGS
                    or length > self._max_payload
                ):
                    self._fail(_header_error(version, type_, flags, length, self._max_payload))
                need = HEADER_SIZE + length
                if avail >= need:
                    end = start + need
                    frame = _new_frame(Frame)
                    frame._type = type_
                    frame._flags = flags
                    frame._stream_id = stream_id
                    frame._payload = self._roview[start + HEADER_SIZE : end]
                    if end == self._end:  # empty: restart at the front, no compaction needed later
                        self._start = self._end = 0
                    else:
                        self._start = end
                    return frame
            if not self._pending_len:
                return None
            self._refill(need)

    def _peek(self, pos: int, n: int) -> bytes:
        """n bytes at logical offset pos of the buffered stream (buffer, then pending input)."""
        out = bytearray()
        inbuf = self._end - self._start
        if pos < inbuf:
            out += self._buf[self._start + pos : self._start + min(inbuf, pos + n)]
        pos = max(pos - inbuf, 0)
        for chunk in self._pending:
            if len(out) == n:
                break
            if pos < len(chunk):
                out += chunk[pos : pos + n - len(out)]
            pos = max(pos - len(chunk), 0)
        return bytes(out)

    def feed_eof(self) -> None:
        """The peer closed: RemoteProtocolError(TRUNCATED) if the bytes end inside a frame, else no-op."""
        if self._error is not None:
            self._raise_error()
        self._lent = 0
        total = self.buffered
        pos = 0
        while pos < total:
            have = total - pos
            if have < HEADER_SIZE:
                self._fail(_truncated(have, HEADER_SIZE))
            version, type_, flags, _, length = _unpack_from(self._peek(pos, HEADER_SIZE))
            if (
                version != VERSION
                or not FRAME_TYPE_MIN <= type_ <= FRAME_TYPE_MAX
                or flags & _UNKNOWN_FLAGS
                or length > self._max_payload
            ):
                self._fail(_header_error(version, type_, flags, length, self._max_payload))
            if have < HEADER_SIZE + length:
                self._fail(_truncated(have, HEADER_SIZE + length))
            pos += HEADER_SIZE + length


def _check_fields(type: int, flags: int, stream_id: int, length: int) -> tuple[int, int, int, int]:
    """The encoder's arguments as ints, each checked against the wire format (ValueError)."""
    type, flags, stream_id, length = (
        operator.index(type),
        operator.index(flags),
        operator.index(stream_id),
        operator.index(length),
    )
    if not FRAME_TYPE_MIN <= type <= FRAME_TYPE_MAX:
        raise ValueError(f"frame type {type} is not in {FRAME_TYPE_MIN}..{FRAME_TYPE_MAX}")
    if not 0 <= flags <= 0xFFFF or flags & _UNKNOWN_FLAGS:
        raise ValueError(f"frame flags {flags:#x} are not a subset of {KNOWN_FLAGS:#06x}")
    if not 0 <= stream_id <= _U32_MAX:
        raise ValueError(f"stream id {stream_id} is not in 0..{_U32_MAX}")
    if not 0 <= length <= MAX_PAYLOAD:
        raise ValueError(f"frame payload length {length} is not in 0..{MAX_PAYLOAD}")
    return type, flags, stream_id, length


def pack_header_into(buf: Buffer, offset: int, type: int, flags: int, stream_id: int, length: int) -> None:
    """Write the 12-byte header into the caller's writable buffer at `offset`."""
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous:
        raise TypeError(f"pack_header_into needs a writable contiguous buffer, not {buf.__class__.__name__}")
    offset = operator.index(offset)
    fields = _check_fields(type, flags, stream_id, length)
    size = view.nbytes
    if not 0 <= offset <= size - HEADER_SIZE:
        raise ValueError(f"a {HEADER_SIZE}-byte header does not fit at offset {offset} of {size} bytes")
    _HEADER.pack_into(view, offset, VERSION, *fields)


def pack_header(type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12-byte header as bytes."""
    return _HEADER.pack(VERSION, *_check_fields(type, flags, stream_id, length))


def unpack_header(buf: Buffer, offset: int = 0) -> tuple[int, int, int, int]:
    """(type, flags, stream_id, length) of the header at `offset`, validated against wire.MAX_PAYLOAD."""
    view = _byte_view(buf)
    offset = operator.index(offset)
    if not 0 <= offset <= len(view) - HEADER_SIZE:
        raise ValueError(f"a {HEADER_SIZE}-byte header does not fit at offset {offset} of {len(view)} bytes")
    version, type_, flags, stream_id, length = _unpack_from(view, offset)
    if (
        version != VERSION
        or not FRAME_TYPE_MIN <= type_ <= FRAME_TYPE_MAX
        or flags & _UNKNOWN_FLAGS
        or length > MAX_PAYLOAD
    ):
        raise _header_error(version, type_, flags, length, MAX_PAYLOAD)
    return type_, flags, stream_id, length
