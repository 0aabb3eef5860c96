"""`Connection`: one peer link, sans-IO (h11, aioquic). Bytes in, events out, frames to send.

Receiving: `get_buffer()` + `buffer_updated(n)` (asyncio.BufferedProtocol, no copy) or `receive_data(b)`
(`b""` is EOF); then `next_event(now)` until it returns `NEED_DATA`. Sending: `send_control`,
`open_stream`, `send_data`, `consumed`, `reset_stream`, `close` queue frames; `data_to_send()` drains
them, one buffer per frame (header + ciphertext), so the caller may hand them to `transport.writelines`:
nothing here writes to a buffer again while any view of it is alive (`_frame_buffer`). Time:
`get_timer()` is the deadline for the next `handle_timer(now)`; `now` is monotonic seconds, never read
from a clock here.

Protocol (docs/protocol.md has the long form):

* Handshake: Noise_XXpsk3_25519_AESGCM_SHA256, prologue b"p2pfast/1", the node's static key, the 32-byte
  network key as the psk, three HANDSHAKE frames on stream 0 carrying the raw Noise messages. Messages 2
  (responder) and 3 (initiator) carry each side's HELLO (control.encode_hello). The psk only enters at
  message 3, so the responder is the one that detects a wrong network key; it confirms the key by sending
  a PING as its first encrypted frame, and the initiator reports HandshakeComplete only once that first
  frame decrypts. Until then the initiator stays in HANDSHAKE and cannot send.
* After the handshake every frame's payload is a Noise transport message: AES-GCM over the plaintext with
  the 12-byte frame header (its length field = ciphertext length) as associated data, so the header is
  authenticated too. The initiator sends with split()[0], the responder with split()[1].
* Streams and credit: streams.py. Control messages: control.py. Transition tables: state.py.

Errors: anything wrong with received bytes raises RemoteProtocolError (wire error code in `.code`) from
next_event(), or from handle_timer() for timeouts. First the Connection moves to ERROR and, if it was
OPEN, queues an encrypted GOAWAY with that code and reason, so the caller can flush data_to_send() before
closing the transport. From then on every call re-raises that error (h11 `_process_error`), except
get_buffer() (never raises, per the BufferedProtocol contract), data_to_send(), get_timer() (None),
close() (a no-op) and the read-only properties.

Misuse on our side (sending before OPEN or after close, on a closed stream, an invalid control message,
...) raises LocalProtocolError before anything is queued and leaves the Connection as it was: one
stream's handler doing something wrong must not take down every other stream on the link (h2 does the
same with StreamClosedError). A LocalProtocolError from a receive path is re-raised as
RemoteProtocolError and poisons the connection, as in h11.
"""

from __future__ import annotations

import enum
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from p2pfast import errors, frames, wire
from p2pfast.proto import control, noise
from p2pfast.proto.events import (
    NEED_DATA,
    ConnectionClosed,
    ControlReceived,
    DataReceived,
    Event,
    HandshakeComplete,
    NeedData,
    StreamReset,
    WindowUpdated,
)
from p2pfast.proto.state import ConnEvent, ConnState, Role, conn_transition
from p2pfast.proto.streams import MAX_STREAM_ID, MAX_WINDOW, StreamTable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from p2pfast._frames_py import Frame

__all__ = [
    "MAX_GOAWAY_REASON",
    "MAX_PLAINTEXT",
    "NETWORK_KEY_SIZE",
    "PROLOGUE",
    "ConnState",
    "Connection",
    "Limits",
    "Role",
]

PROLOGUE = b"p2pfast/1"
NETWORK_KEY_SIZE = 32
HEADER_SIZE = wire.HEADER_SIZE
TAG = noise.TAG
MAX_PLAINTEXT = wire.MAX_PAYLOAD - TAG  # 65519: one frame carries one Noise transport message
# A GOAWAY reason is a diagnostic line; longer ones are cut (at a UTF-8 boundary) when sent.
MAX_GOAWAY_REASON = 1024
PING_SIZE = 8
_U32_MAX = 0xFFFFFFFF

_T = wire.FrameType
_HANDSHAKE, _CONTROL, _DATA, _WINDOW, _RESET, _GOAWAY, _PING = (
    int(_T.HANDSHAKE),
    int(_T.CONTROL),
    int(_T.DATA),
    int(_T.WINDOW),
    int(_T.RESET),
    int(_T.GOAWAY),
    int(_T.PING),
)
_END_STREAM = int(wire.Flag.END_STREAM)
_ACK = int(wire.Flag.ACK)
_ErrorCode = wire.ErrorCode
# per frame type after the handshake: (flags allowed, payload on a stream (True) or on stream 0 (False))
_FRAME_RULES: dict[int, tuple[int, bool]] = {
    _CONTROL: (0, False),
    _DATA: (_END_STREAM, True),
    _WINDOW: (0, True),
    _RESET: (0, True),
    _GOAWAY: (0, False),
    _PING: (_ACK, False),
}


# Outgoing frame buffers: frames this large come from a pool of at most _POOL_MAX buffers (enough for
# the frames a transport holds below its write-buffer high-water mark, and then some). A pooled buffer
# is free when only the pool, the loop variable and getrefcount's own argument refer to it.
_POOL_MIN = 16 * 1024
_POOL_MAX = 64
_POOL_FREE_REFS = 3


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection bounds, each with its reason; net/limits.py picks the values a node runs with."""

    # largest frame payload accepted, checked on the header before anything is buffered; one Noise
    # message at most. There is no settings exchange: every node of a network should use the default.
    max_frame: int = wire.MAX_PAYLOAD
    # live streams on ids of each parity: one get/store each. 16 concurrent transfers keep any link busy,
    # and with initial_window they bound what one connection can make us hold unread: 16 x 1 MiB.
    max_streams: int = 16
    # credit per stream direction. Measured on loopback (bench_transfer.py, before frame buffers were
    # pooled): 256 KiB left the sender
    # waiting for WINDOW frames (0.72 GB/s), 1 MiB did not (1.07 GB/s), 4 MiB gained nothing more. What a
    # session queues unread is bounded by max_streams x initial_window.
    initial_window: int = 1024 * 1024
    # largest control message accepted and sent (wire.MAX_CONTROL_SIZE, 16 KiB)
    max_control_size: int = wire.MAX_CONTROL_SIZE
    # a peer that cannot finish three messages in this time is broken or hostile
    handshake_timeout: float = 10.0
    # nothing received for this long (PINGs unanswered): the link is dead
    idle_timeout: float = 60.0
    # silence before we send a PING to find out; a few PINGs fit in one idle_timeout
    ping_interval: float = 15.0

    def __post_init__(self) -> None:
        if not 1024 <= self.max_frame <= wire.MAX_PAYLOAD:
            raise ValueError(f"max_frame {self.max_frame} is not in 1024..{wire.MAX_PAYLOAD}")
        if not 1 <= self.max_streams <= 2**20:
            raise ValueError(f"max_streams {self.max_streams} is not in 1..2**20")
        if not 2 <= self.initial_window <= MAX_WINDOW:
            raise ValueError(f"initial_window {self.initial_window} is not in 2..{MAX_WINDOW}")
        if not 64 <= self.max_control_size <= MAX_PLAINTEXT:
            raise ValueError(f"max_control_size {self.max_control_size} is not in 64..{MAX_PLAINTEXT}")
        for name in ("handshake_timeout", "idle_timeout", "ping_interval"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value}")


def _remote(msg: str, code: int = _ErrorCode.PROTOCOL) -> errors.RemoteProtocolError:
    return errors.RemoteProtocolError(msg, code)


def _local(msg: str, code: int = _ErrorCode.PROTOCOL) -> errors.LocalProtocolError:
    return errors.LocalProtocolError(msg, code)


def _type_name(ftype: int) -> str:
    try:
        return wire.FrameType(ftype).name
    except ValueError:
        return str(ftype)


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")  # TypeError for a non-contiguous buffer: a caller bug
    return view


class _Phase(enum.Enum):
    """Where the handshake is, within ConnState.HANDSHAKE."""

    START = "start"  # initiator: before initiate(); responder: waiting for message 1
    WAIT_MSG2 = "wait_msg2"  # initiator sent message 1
    WAIT_MSG3 = "wait_msg3"  # responder sent message 2
    CONFIRMING = "confirming"  # initiator sent message 3; waiting for the responder's first frame
    DONE = "done"


class Connection:
    """One peer link. See the module docstring for the contract."""

    def __init__(
        self,
        role: Role,
        static_key: X25519PrivateKey,
        network_key: bytes,
        hello: dict[str, Any],
        *,
        now: float,
        limits: Limits = Limits(),
        accept_keys: Sequence[bytes] = (),
        refuse: Callable[[str], bool] | None = None,
    ) -> None:
        """`network_key` is the psk this side uses; `accept_keys` are further psks a responder accepts
        (a key rotation's overlap window). `refuse(peer_id)` true ends the handshake as soon as the
        peer's static key is known: a revoked node (node/revocation.py) gets no session either way, and
        as the responder's id is known at message 2 the initiator refuses before sending message 3."""
        if len(network_key) != NETWORK_KEY_SIZE:
            raise ValueError(f"the network key is {NETWORK_KEY_SIZE} bytes, not {len(network_key)}")
        self._role = role
        self._limits = limits
        self._hello_raw = control.encode_hello(hello)
        self._hs: noise.HandshakeState | None = noise.HandshakeState(
            noise.PROTOCOL_XXPSK3,
            role is Role.INITIATOR,
            static_key,
            prologue=PROLOGUE,
            psks=(bytes(network_key),),
            alt_psks=tuple(k for k in accept_keys if k != network_key) if role is Role.RESPONDER else (),
        )
        self._refuse = refuse
        self._psk_used = bytes(network_key)
        self._phase = _Phase.START
        self._state = ConnState.HANDSHAKE
        self._error: errors.ProtocolError | None = None
        self._parser = frames.FrameParser(limits.max_frame)
        self._streams = StreamTable(
            initiator=role is Role.INITIATOR,
            max_streams=limits.max_streams,
            initial_window=limits.initial_window,
        )
        self._send_cs: noise.CipherState | None = None
        self._recv_cs: noise.CipherState | None = None
        # plaintext of the last frame received; DataReceived.data borrows from it
        self._plain = bytearray(MAX_PLAINTEXT)
        self._plain_w = memoryview(self._plain)
        self._plain_r = self._plain_w.toreadonly()
        self._out: list[bytes | bytearray | memoryview] = []
        self._pool: list[bytearray] = []
        self._pending: Event | None = None  # an event held back behind HandshakeComplete
        self._peer_id: str | None = None
        self._peer_key: bytes | None = None
        self._peer_hello: dict[str, Any] | None = None
        self._created = now
        self._last_recv = now
        self._ping_sent = False
        self._ping_count = 0
        self._activity = False  # bytes arrived since next_event/handle_timer last looked
        self._eof = False
        self._closed_reported = False
        self._bytes_received = 0
        self._bytes_sent = 0

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def peer_id(self) -> str | None:
        """Hex SHA-256 of the peer's static key, once the handshake completed."""
        return self._peer_id

    @property
    def peer_key(self) -> bytes | None:
        return self._peer_key

    @property
    def network_key_used(self) -> bytes:
        """The psk this link's handshake used (of the accepted ones, the one the peer held)."""
        return self._psk_used

    @property
    def peer_hello(self) -> dict[str, Any] | None:
        return self._peer_hello

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    @property
    def bytes_sent(self) -> int:
        """Bytes handed out by data_to_send()."""
        return self._bytes_sent

    # -- errors ----------------------------------------------------------------------------------------------

    def _raise_error(self) -> NoReturn:
        assert self._error is not None
        raise self._error.with_traceback(None)

    def _fail(self, exc: errors.ProtocolError) -> NoReturn:
        """Poison the connection with exc (GOAWAY first if OPEN) and raise it."""
        was_open = self._state is ConnState.OPEN
        self._state = conn_transition(self._state, ConnEvent.FAIL)
        self._error = exc
        self._pending = None
        if was_open:
            self._queue_goaway(exc.code, str(exc.args[0]) if exc.args else "")
        raise exc

    def _check_open(self) -> None:
        if self._error is not None:
            self._raise_error()
        if self._state is not ConnState.OPEN:
            raise _local(f"the connection is {self._state.value}, not open")

    # -- receiving -------------------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable, never empty view to receive into (BufferedProtocol); never raises."""
        return self._parser.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._error is not None:
            self._raise_error()
        self._parser.buffer_updated(nbytes)
        if nbytes:
            self._bytes_received += nbytes
            self._activity = True

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; b"" means the peer closed (EOF)."""
        if self._error is not None:
            self._raise_error()
        n = memoryview(data).nbytes
        if not n:
            self._eof = True  # a second EOF is harmless
            return
        if self._eof:
            raise _local("receive_data() after EOF")
        self._parser.feed(data)
        self._bytes_received += n
        self._activity = True

    def _mark_activity(self, now: float) -> None:
        if self._activity:
            self._activity = False
            self._last_recv = now
            self._ping_sent = False

    def next_event(self, now: float) -> Event | NeedData:
        """The next event from the buffered bytes, or NEED_DATA. DataReceived.data is borrowed."""
        if self._error is not None:
            self._raise_error()
        self._mark_activity(now)
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        try:
            while True:
                frame = self._parser.next_frame()
                if frame is None:
                    return self._on_eof() if self._eof else NEED_DATA
                event = self._on_frame(frame)
                if event is not None:
                    return event
        except errors.LocalProtocolError as exc:  # a transition the peer made illegal
            self._fail(_remote(str(exc.args[0]) if exc.args else "protocol error", exc.code))
        except errors.ProtocolError as exc:
            self._fail(exc)

    def _on_eof(self) -> Event | NeedData:
        if self._closed_reported:
            return NEED_DATA
        self._parser.feed_eof()  # TRUNCATED inside a frame
        if self._state is ConnState.HANDSHAKE:
            raise _remote("the peer closed the connection during the handshake")
        self._state = conn_transition(self._state, ConnEvent.RECV_EOF)
        self._closed_reported = True
        return ConnectionClosed(int(_ErrorCode.NO_ERROR), "eof")

    def _on_frame(self, frame: Frame) -> Event | None:
        phase = self._phase
        if phase is not _Phase.DONE and phase is not _Phase.CONFIRMING:
            return self._on_handshake_frame(frame)
        ftype, flags, sid, payload = frame.type, frame.flags, frame.stream_id, frame.payload
        if ftype == _HANDSHAKE:
            raise _remote("HANDSHAKE frame after the handshake")
        size = len(payload)
        if size < TAG:
            raise _remote(f"{_type_name(ftype)} frame of {size} bytes is shorter than its {TAG}-byte tag")
        n = size - TAG
        assert self._recv_cs is not None
        ad = frames.pack_header(ftype, flags, sid, size)
        if n == MAX_PLAINTEXT:  # a full frame (bulk data): skip two slices
            self._recv_cs.decrypt_into(ad, payload, self._plain_w)
            plain = self._plain_r
        else:
            self._recv_cs.decrypt_into(ad, payload, self._plain_w[:n])
            plain = self._plain_r[:n]
        if ftype == _DATA and phase is _Phase.DONE:
            # The bulk path, inlined from _dispatch: this runs once per 64 KiB received.
            if flags & ~_END_STREAM:
                raise _remote(f"DATA frame with flags 0x{flags:04x}", _ErrorCode.BAD_FLAGS)
            if not sid:
                raise _remote("DATA frame on stream 0; it belongs on a stream")
            if self._state is not ConnState.OPEN:
                return None  # after close(), frames are checked and dropped
            verdict = self._streams.recv_data(sid, n, flags == _END_STREAM)
            if verdict == "deliver":
                return DataReceived(sid, plain, flags == _END_STREAM)
            if verdict == "refuse":  # over the stream limit
                self._queue_frame(_RESET, 0, sid, int(_ErrorCode.REFUSED).to_bytes(4, "big"))
            return None
        if phase is _Phase.CONFIRMING:  # the responder's first frame: it holds the network key
            done = self._complete()
            self._pending = self._dispatch(ftype, flags, sid, plain)
            return done
        return self._dispatch(ftype, flags, sid, plain)

    def _dispatch(self, ftype: int, flags: int, sid: int, plain: memoryview) -> Event | None:
        allowed_flags, on_stream = _FRAME_RULES[ftype]
        if flags & ~allowed_flags:
            raise _remote(f"{_type_name(ftype)} frame with flags 0x{flags:04x}", _ErrorCode.BAD_FLAGS)
        if on_stream != (sid != 0):
            where = "a stream" if on_stream else "stream 0"
            raise _remote(f"{_type_name(ftype)} frame on stream {sid}; it belongs on {where}")
        n = len(plain)
        open_ = self._state is ConnState.OPEN  # after close(), frames are checked and dropped
        if ftype == _DATA:
            end = bool(flags & _END_STREAM)
            if not open_:
                return None
            verdict = self._streams.recv_data(sid, n, end)
            if verdict == "deliver":
                return DataReceived(sid, plain, end)
            if verdict == "refuse":
                self._queue_frame(_RESET, 0, sid, int(_ErrorCode.REFUSED).to_bytes(4, "big"))
            return None
        if ftype == _CONTROL:
            if not open_:
                return None
            return ControlReceived(control.decode(plain, self._limits.max_control_size))
        if ftype in (_WINDOW, _RESET):
            if n != 4:
                raise _remote(f"{_type_name(ftype)} payload of {n} bytes (expected 4)")
            value = int.from_bytes(plain, "big")
            if not open_:
                return None
            if ftype == _WINDOW:
                return WindowUpdated(sid, value) if self._streams.recv_window(sid, value) else None
            return StreamReset(sid, value) if self._streams.recv_reset(sid) else None
        if ftype == _GOAWAY:
            if n < 4:
                raise _remote(f"GOAWAY payload of {n} bytes (expected at least 4)")
            code = int.from_bytes(plain[:4], "big")
            reason = bytes(plain[4:]).decode("utf-8", "replace")
            self._state = conn_transition(self._state, ConnEvent.RECV_GOAWAY)
            if self._closed_reported:
                return None
            self._closed_reported = True
            return ConnectionClosed(code, reason)
        assert ftype == _PING
        if n != PING_SIZE:
            raise _remote(f"PING payload of {n} bytes (expected {PING_SIZE})")
        if open_ and not flags & _ACK:
            self._queue_frame(_PING, _ACK, 0, plain)
        return None

    def _on_handshake_frame(self, frame: Frame) -> Event | None:
        if frame.type != _HANDSHAKE:
            raise _remote(f"{_type_name(frame.type)} frame before the handshake completed")
        if frame.stream_id != 0 or frame.flags != 0:
            raise _remote("HANDSHAKE frame with a stream id or flags")
        hs = self._hs
        assert hs is not None
        phase = self._phase
        if phase is _Phase.START and self._role is Role.INITIATOR:
            raise _remote("HANDSHAKE frame before we sent message 1")
        payload = hs.read_message(bytes(frame.payload))
        if phase is not _Phase.START:  # messages 2 and 3 revealed the peer's static key
            self._check_refused(hs)
        if phase is _Phase.START:  # responder, message 1
            if payload:
                raise _remote("handshake message 1 carries a payload")
            self._queue_plain(_HANDSHAKE, hs.write_message(self._hello_raw))
            self._phase = _Phase.WAIT_MSG3
            return None
        self._peer_hello = control.decode_hello(payload)
        if phase is _Phase.WAIT_MSG2:  # initiator, message 2: answer, then wait for key confirmation
            self._queue_plain(_HANDSHAKE, hs.write_message(self._hello_raw))
            self._split()
            self._phase = _Phase.CONFIRMING
            return None
        # responder, message 3: the psk checked out; confirm it to the initiator with a first frame
        assert phase is _Phase.WAIT_MSG3
        self._split()
        done = self._complete()
        self._queue_ping()
        return done

    def _check_refused(self, hs: noise.HandshakeState) -> None:
        rs = hs.remote_static
        if self._refuse is not None and rs is not None:
            peer_id = hashlib.sha256(rs).hexdigest()
            if self._refuse(peer_id):
                raise _remote(f"peer {peer_id[:12]} is revoked in this network", _ErrorCode.REFUSED)

    def _split(self) -> None:
        hs = self._hs
        assert hs is not None and hs.complete
        peer_key = hs.remote_static
        assert peer_key is not None
        self._peer_key = bytes(peer_key)
        if hs.psk is not None:
            self._psk_used = hs.psk
        c_i2r, c_r2i = hs.split()
        if self._role is Role.INITIATOR:
            self._send_cs, self._recv_cs = c_i2r, c_r2i
        else:
            self._send_cs, self._recv_cs = c_r2i, c_i2r

    def _complete(self) -> HandshakeComplete:
        assert self._peer_key is not None and self._peer_hello is not None
        self._state = conn_transition(self._state, ConnEvent.HANDSHAKE_DONE)
        self._phase = _Phase.DONE
        self._hs = None  # keys are split; the handshake state holds secrets we no longer need
        self._peer_id = hashlib.sha256(self._peer_key).hexdigest()
        return HandshakeComplete(self._peer_key, self._peer_id, self._peer_hello)

    # -- sending ---------------------------------------------------------------------------------------------

    def _queue_plain(self, ftype: int, payload: bytes) -> None:
        buf = bytearray(HEADER_SIZE + len(payload))
        frames.pack_header_into(buf, 0, ftype, 0, 0, len(payload))
        buf[HEADER_SIZE:] = payload
        self._out.append(buf)

    def _queue_frame(self, ftype: int, flags: int, sid: int, payload: bytes | bytearray | memoryview) -> None:
        """One encrypted frame: header, then ciphertext written in place after it."""
        size = len(payload) + TAG
        header = frames.pack_header(ftype, flags, sid, size)
        view = self._frame_buffer(HEADER_SIZE + size)
        view[:HEADER_SIZE] = header
        assert self._send_cs is not None
        self._send_cs.encrypt_into(header, payload, view[HEADER_SIZE:])
        self._out.append(view)

    def _frame_buffer(self, n: int) -> memoryview:
        """A writable buffer of n bytes for one outgoing frame.

        Large frames reuse pooled buffers: a fresh 64 KiB bytearray costs more than the AES-GCM of its
        contents (the kernel zero-fills new pages), measured at ~20 us a frame. A pooled buffer is reused
        only when nothing outside the pool refers to it any more (no view handed out by data_to_send()
        is alive: the transport has written it, py-pgproto's rule), so bytes in flight are never touched.
        """
        if n >= _POOL_MIN:
            pool = self._pool
            for buf in pool:
                if sys.getrefcount(buf) <= _POOL_FREE_REFS:
                    return memoryview(buf)[:n]
            if len(pool) < _POOL_MAX:
                buf = bytearray(HEADER_SIZE + MAX_PLAINTEXT + TAG)
                pool.append(buf)
                return memoryview(buf)[:n]
        return memoryview(bytearray(n))

    def _queue_goaway(self, code: int, reason: str) -> None:
        raw = reason.encode("utf-8", "replace")[:MAX_GOAWAY_REASON]
        raw = raw.decode("utf-8", "ignore").encode("utf-8")  # never cut inside a character
        self._queue_frame(_GOAWAY, 0, 0, (code & _U32_MAX).to_bytes(4, "big") + raw)

    def _queue_ping(self) -> None:
        self._ping_count += 1
        self._queue_frame(_PING, 0, 0, self._ping_count.to_bytes(PING_SIZE, "big"))

    def initiate(self) -> None:
        """INITIATOR only, once: queue handshake message 1."""
        if self._error is not None:
            self._raise_error()
        if self._role is not Role.INITIATOR or self._phase is not _Phase.START:
            raise _local("initiate() is for an initiator, once, before anything else")
        assert self._hs is not None
        self._queue_plain(_HANDSHAKE, self._hs.write_message(b""))
        self._phase = _Phase.WAIT_MSG2

    def send_control(self, message: dict[str, Any]) -> None:
        """Queue a control message (checked and size-capped by control.encode)."""
        self._check_open()
        self._queue_frame(_CONTROL, 0, 0, control.encode(message, self._limits.max_control_size))

    def send_control_encoded(self, raw: bytes) -> None:
        """Queue a control message `control.encode` made already: one encoding sent to several peers (a
        view's news goes to ln N + 3 members), checked once. Size-capped here too."""
        self._check_open()
        self._queue_frame(_CONTROL, 0, 0, control.capped(raw, self._limits.max_control_size))

    def open_stream(self) -> int:
        """Reserve the next stream id of ours, with fresh windows (announce it in a control message)."""
        self._check_open()
        return self._streams.open_local()

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> int:
        """Queue up to send_credit(stream_id) bytes of data; return how many were taken.

        Frames carry at most MAX_PLAINTEXT bytes each. END_STREAM goes out only with the last byte of data,
        i.e. when everything was taken; send_data(sid, b"", end_stream=True) sends an empty END_STREAM
        frame and needs no credit. A fresh stream id of the peer's (announced by it, e.g. in "get") is
        opened by sending on it.
        """
        self._check_open()
        view = _byte_view(data)
        total = len(view)
        if not total and not end_stream:
            return 0
        stream = self._streams.for_send(stream_id)
        take = min(total, stream.send_credit)
        if total and not take:
            return 0
        end = end_stream and take == total
        self._streams.sent(stream, take, end)
        pos = 0
        while True:
            k = min(take - pos, MAX_PLAINTEXT)
            last = pos + k == take
            self._queue_frame(_DATA, _END_STREAM if end and last else 0, stream_id, view[pos : pos + k])
            pos += k
            if last:
                return take

    def send_credit(self, stream_id: int) -> int:
        """How many bytes send_data(stream_id, ...) would take now."""
        self._check_open()
        return self._streams.credit(stream_id)

    def consumed(self, stream_id: int, nbytes: int) -> None:
        """The application processed nbytes received on stream_id; may queue a WINDOW frame."""
        if self._error is not None:
            self._raise_error()
        if self._state is ConnState.CLOSED:
            return  # nothing more will be sent: no credit to grant
        self._check_open()
        grant = self._streams.consumed(stream_id, nbytes)
        if grant:
            self._queue_frame(_WINDOW, 0, stream_id, grant.to_bytes(4, "big"))

    def grant(self, stream_id: int, nbytes: int) -> None:
        """Give the peer nbytes more credit on a stream it sends us (StreamTable.grant); may queue WINDOW."""
        self._check_open()
        increment = self._streams.grant(stream_id, nbytes)
        if increment:
            self._queue_frame(_WINDOW, 0, stream_id, increment.to_bytes(4, "big"))

    def reset_stream(self, stream_id: int, code: int) -> None:
        """Abort stream_id with a wire error code (idempotent on a closed stream)."""
        self._check_open()
        if not 0 <= code <= _U32_MAX:
            raise _local(f"error code {code} is not in 0..{_U32_MAX}")
        if not 0 < stream_id <= MAX_STREAM_ID:
            raise _local(f"stream id {stream_id} is not in 1..{MAX_STREAM_ID}")
        if self._streams.reset(stream_id):
            self._queue_frame(_RESET, 0, stream_id, code.to_bytes(4, "big"))

    def close(self, code: int = 0, reason: str = "") -> None:
        """Queue GOAWAY(code, reason) if OPEN and go CLOSED; a no-op when CLOSED or ERROR."""
        if self._state is ConnState.CLOSED or self._state is ConnState.ERROR:
            return
        if not 0 <= code <= _U32_MAX:
            raise _local(f"error code {code} is not in 0..{_U32_MAX}")
        if self._state is ConnState.OPEN:
            self._queue_goaway(code, reason)
        self._state = conn_transition(self._state, ConnEvent.SEND_GOAWAY)
        self._pending = None

    def data_to_send(self) -> list[bytes | bytearray | memoryview]:
        """Drain the queued frames (one buffer each, not written again while the caller holds it); works in
        every state."""
        out = self._out
        if not out:
            return []
        self._out = []
        self._bytes_sent += sum(len(b) for b in out)
        return out

    # -- timers ----------------------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The deadline for the next handle_timer() call, or None when none is needed."""
        if self._state is ConnState.HANDSHAKE:
            return self._created + self._limits.handshake_timeout
        if self._state is not ConnState.OPEN:
            return None
        idle = self._last_recv + self._limits.idle_timeout
        if self._ping_sent:
            return idle
        return min(idle, self._last_recv + self._limits.ping_interval)

    def handle_timer(self, now: float) -> None:
        """Send a PING after ping_interval of silence; fail after idle_timeout or handshake_timeout."""
        if self._error is not None:
            self._raise_error()
        self._mark_activity(now)
        limits = self._limits
        if self._state is ConnState.HANDSHAKE:
            if now >= self._created + limits.handshake_timeout:
                self._fail(
                    _remote(
                        f"handshake timeout: not complete after {limits.handshake_timeout:g}s",
                        _ErrorCode.HANDSHAKE_TIMEOUT,
                    )
                )
            return
        if self._state is not ConnState.OPEN:
            return
        if now >= self._last_recv + limits.idle_timeout:
            self._fail(
                _remote(
                    f"idle timeout: nothing received for {limits.idle_timeout:g}s", _ErrorCode.IDLE_TIMEOUT
                )
            )
        if not self._ping_sent and now >= self._last_recv + limits.ping_interval:
            self._ping_sent = True
            self._queue_ping()

    def __repr__(self) -> str:
        peer = self._peer_id[:12] if self._peer_id else "?"
        return f"<Connection {self._role.value} {self._state.value} peer={peer}>"
