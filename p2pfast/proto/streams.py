"""Streams: ids, per-stream credit, and what to do with frames for streams that are gone.

Ids: the initiator opens odd ids (1, 3, 5, ...), the responder even ids (2, 4, ...), each side in
increasing order; id 0 is the connection. A stream is opened by the first DATA frame on it, or reserved
with `open_local()` and then announced in a control message (e.g. "get" with "sid"); either side may send
the first DATA on a reserved id. Each stream carries DATA one way: from the side that sent its first
DATA frame (state SENDING there, RECEIVING at the peer); the other side sends WINDOW frames back. It ends
with END_STREAM or RESET, and is then forgotten: nothing is left for a reserved id that nobody used, so
release one with a RESET (`reset()`). The transitions are `state.STREAM_TRANSITIONS`.

Because a peer may use ids of ours in any order (it answers "get" requests as they complete), a receiver
does not require increasing ids. Instead it remembers the last `RECENT_CLOSED` ids it closed, and whether
it reset them itself: DATA on an id we reset is dropped quietly (our RESET may have crossed it); DATA on
any other closed id is a protocol error; WINDOW and RESET on a closed id are dropped quietly (they cross
END_STREAM). An id of ours that we never handed out is an error for every frame.

Credit: each stream starts with `initial_window` bytes of credit for its sender. The receiver counts what
the application reports with `consumed()`, and grants that amount back with one WINDOW frame once it
reaches half the initial window. A sender never exceeds its credit (send_data sends what fits); a
receiver that gets more than it granted raises RemoteProtocolError(FLOW_CONTROL). Credit never exceeds
MAX_WINDOW (2**31 - 1, as HTTP/2).

Concurrency: at most `max_streams` live streams on ids of each parity. open_local() over the limit raises
LocalProtocolError(STREAM_LIMIT); a peer opening one more is refused with RESET(REFUSED), which is not a
connection error.
"""

from __future__ import annotations

import collections
from typing import Literal

from p2pfast import errors, wire
from p2pfast.proto.state import StreamEvent, StreamState, stream_transition

__all__ = ["MAX_STREAM_ID", "MAX_WINDOW", "RECENT_CLOSED", "Stream", "StreamTable"]

MAX_STREAM_ID = 0xFFFFFFFF
MAX_WINDOW = 2**31 - 1
# Closed ids remembered to classify late frames: a crossing frame arrives within one round trip, when at
# most a few windows of streams can have closed; 1024 ids cost ~100 KiB at most.
RECENT_CLOSED = 1024

_E = StreamEvent
_ErrorCode = wire.ErrorCode

RecvVerdict = Literal["deliver", "drop", "refuse"]


def _remote(msg: str, code: int = _ErrorCode.PROTOCOL) -> errors.RemoteProtocolError:
    return errors.RemoteProtocolError(msg, code)


def _local(msg: str, code: int = _ErrorCode.PROTOCOL) -> errors.LocalProtocolError:
    return errors.LocalProtocolError(msg, code)


class Stream:
    """One live stream's state and credit, from this side's point of view."""

    __slots__ = ("id", "recv_credit", "recv_unacked", "recv_unconsumed", "send_credit", "state")

    def __init__(self, stream_id: int, initial_window: int) -> None:
        self.id = stream_id
        self.state = StreamState.RESERVED
        self.send_credit = initial_window  # bytes we may still send
        self.recv_credit = initial_window  # bytes the peer may still send us
        self.recv_unconsumed = 0  # received, not yet reported by consumed()
        self.recv_unacked = 0  # consumed, not yet granted back with WINDOW

    def __repr__(self) -> str:
        return f"Stream({self.id}, {self.state.value}, send={self.send_credit}, recv={self.recv_credit})"


class StreamTable:
    """Every live stream of one connection, keyed by id; see the module docstring for the rules."""

    __slots__ = ("_closed", "_counts", "_parity", "initial_window", "max_streams", "next_local", "streams")

    def __init__(self, *, initiator: bool, max_streams: int, initial_window: int) -> None:
        self.max_streams = max_streams
        self.initial_window = initial_window
        self._parity = 1 if initiator else 0
        self.next_local = 1 if initiator else 2
        self.streams: dict[int, Stream] = {}
        self._counts = [0, 0]  # live streams by parity (index = id & 1)
        # recently closed id -> True when we reset it (late DATA is then dropped quietly)
        self._closed: collections.OrderedDict[int, bool] = collections.OrderedDict()

    def is_local(self, stream_id: int) -> bool:
        return stream_id & 1 == self._parity

    def live(self, stream_id: int) -> Stream | None:
        return self.streams.get(stream_id)

    def _known_gone(self, stream_id: int) -> bool:
        """The id was live once (as far as we can tell) and is not now."""
        if stream_id in self._closed:
            return True
        # ours below next_local were handed out; the peer's we cannot tell apart from fresh ones
        return self.is_local(stream_id) and stream_id < self.next_local

    def _add(self, stream_id: int) -> Stream:
        stream = Stream(stream_id, self.initial_window)
        self.streams[stream_id] = stream
        self._counts[stream_id & 1] += 1
        self._closed.pop(stream_id, None)
        return stream

    def _close(self, stream: Stream, reset_by_us: bool) -> None:
        del self.streams[stream.id]
        self._counts[stream.id & 1] -= 1
        self._remember(stream.id, reset_by_us)

    def _remember(self, stream_id: int, reset_by_us: bool) -> None:
        closed = self._closed
        closed[stream_id] = reset_by_us
        if len(closed) > RECENT_CLOSED:
            closed.popitem(last=False)

    def _move(self, stream: Stream, event: StreamEvent, remote: bool) -> None:
        try:
            stream.state = stream_transition(stream.state, event, stream.id)
        except errors.LocalProtocolError as exc:
            if remote:
                raise _remote(str(exc.args[0])) from None
            raise

    # -- local actions (LocalProtocolError on misuse; nothing changes then) ----------------------------------

    def open_local(self) -> int:
        """Reserve the next id of ours."""
        sid = self.next_local
        if sid > MAX_STREAM_ID:
            raise _local("stream ids are exhausted on this connection", _ErrorCode.STREAM_LIMIT)
        if self._counts[self._parity] >= self.max_streams:
            raise _local(f"{self.max_streams} streams are open already", _ErrorCode.STREAM_LIMIT)
        self.next_local = sid + 2
        self._add(sid)
        return sid

    def for_send(self, stream_id: int) -> Stream:
        """The stream to send DATA on: live and not receiving, or a fresh id the peer announced."""
        if not 0 < stream_id <= MAX_STREAM_ID:
            raise _local(f"stream id {stream_id} is not in 1..{MAX_STREAM_ID}")
        stream = self.streams.get(stream_id)
        if stream is None:
            if self.is_local(stream_id):
                what = "closed" if stream_id < self.next_local else "not open"
                raise _local(f"stream {stream_id} is {what}")
            if stream_id in self._closed:
                raise _local(f"stream {stream_id} is closed")
            if self._counts[stream_id & 1] >= self.max_streams:
                raise _local(f"{self.max_streams} streams of the peer are open", _ErrorCode.STREAM_LIMIT)
            return self._add(stream_id)
        if stream.state is StreamState.RECEIVING:
            raise _local(f"stream {stream_id} carries data from the peer; it cannot send on it")
        return stream

    def credit(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream.send_credit if stream.state is not StreamState.RECEIVING else 0
        if 0 < stream_id <= MAX_STREAM_ID and not self.is_local(stream_id) and stream_id not in self._closed:
            return self.initial_window  # a fresh id of the peer's: for_send() would open it
        return 0

    def sent(self, stream: Stream, nbytes: int, end: bool) -> None:
        """Account for DATA just queued on `stream` (nbytes <= its credit)."""
        stream.send_credit -= nbytes
        self._move(stream, _E.SEND_END if end else _E.SEND_DATA, remote=False)
        if end:
            self._close(stream, reset_by_us=False)

    def consumed(self, stream_id: int, nbytes: int) -> int:
        """The application processed nbytes of stream_id; return a WINDOW increment to send (0: none)."""
        if nbytes < 0:
            raise _local(f"consumed({nbytes}) is negative")
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._known_gone(stream_id) or not self.is_local(stream_id):
                return 0  # the stream ended; no more credit is needed
            raise _local(f"stream {stream_id} was never open")
        if nbytes > stream.recv_unconsumed:
            raise _local(
                f"consumed({nbytes}) on stream {stream_id} but only {stream.recv_unconsumed} bytes are unread"
            )
        stream.recv_unconsumed -= nbytes
        stream.recv_unacked += nbytes
        if stream.recv_unacked * 2 < self.initial_window or stream.recv_unacked == 0:
            return 0
        grant = min(stream.recv_unacked, MAX_WINDOW - stream.recv_credit)
        stream.recv_unacked -= grant
        stream.recv_credit += grant
        return grant

    def grant(self, stream_id: int, nbytes: int) -> int:
        """Extra credit for a stream we are receiving on, beyond what consumed() returns: a reader that
        drains a bulk transfer promptly lets the peer keep more in flight. Returns the WINDOW increment to
        send (0 when the stream is not receiving, e.g. before its first DATA or after its end)."""
        if nbytes < 0:
            raise _local(f"grant({nbytes}) is negative")
        stream = self.streams.get(stream_id)
        if stream is None or stream.state is not StreamState.RECEIVING:
            return 0
        increment = min(nbytes, MAX_WINDOW - stream.recv_credit - stream.recv_unacked)
        if increment <= 0:
            return 0
        stream.recv_credit += increment
        return increment

    def reset(self, stream_id: int) -> bool:
        """Close stream_id because we reset it; True when a RESET frame should go out."""
        if not 0 < stream_id <= MAX_STREAM_ID:
            raise _local(f"stream id {stream_id} is not in 1..{MAX_STREAM_ID}")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._move(stream, _E.SEND_RESET, remote=False)
            self._close(stream, reset_by_us=True)
            return True
        if self._known_gone(stream_id):
            return False  # already closed: reset is idempotent
        if self.is_local(stream_id):
            raise _local(f"stream {stream_id} was never open")
        # a fresh id of the peer's (announced in a control message, unused so far): refuse it
        self._remember(stream_id, True)
        return True

    # -- frames from the peer (RemoteProtocolError on faults) ------------------------------------------------

    def recv_data(self, stream_id: int, nbytes: int, end: bool) -> RecvVerdict:
        """Account for a DATA frame: "deliver" it, "drop" it quietly, or "refuse" its stream (RESET)."""
        stream = self.streams.get(stream_id)
        if stream is not None and not end and stream.state is StreamState.RECEIVING:
            # the bulk path (RECEIVING + RECV_DATA stays RECEIVING): once per 64 KiB received
            if nbytes > stream.recv_credit:
                raise self._over_credit(stream, nbytes)
            stream.recv_credit -= nbytes
            stream.recv_unconsumed += nbytes
            return "deliver"
        if stream is None:
            gone = self._closed.get(stream_id)
            if gone is not None:
                if gone:
                    return "drop"
                raise _remote(f"DATA on closed stream {stream_id}")
            if self.is_local(stream_id):
                what = "closed" if stream_id < self.next_local else "not open"
                raise _remote(f"DATA on stream {stream_id}, which is {what}")
            if self._counts[stream_id & 1] >= self.max_streams:
                self._remember(stream_id, True)
                return "refuse"
            stream = self._add(stream_id)
        if nbytes > stream.recv_credit:
            raise self._over_credit(stream, nbytes)
        self._move(stream, _E.RECV_END if end else _E.RECV_DATA, remote=True)
        stream.recv_credit -= nbytes
        stream.recv_unconsumed += nbytes
        if end:
            self._close(stream, reset_by_us=False)
        return "deliver"

    @staticmethod
    def _over_credit(stream: Stream, nbytes: int) -> errors.RemoteProtocolError:
        return _remote(
            f"DATA of {nbytes} bytes on stream {stream.id} exceeds its credit of {stream.recv_credit}",
            _ErrorCode.FLOW_CONTROL,
        )

    def recv_window(self, stream_id: int, increment: int) -> bool:
        """Account for a WINDOW frame; True when our credit grew (False: a late frame, dropped)."""
        if increment <= 0:
            raise _remote(f"WINDOW with increment {increment} on stream {stream_id}")
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._known_gone(stream_id) or not self.is_local(stream_id):
                return False
            raise _remote(f"WINDOW on stream {stream_id}, which is not open")
        if stream.state is not StreamState.SENDING:
            raise _remote(f"WINDOW on stream {stream_id}, which we have not sent on")
        if stream.send_credit + increment > MAX_WINDOW:
            raise _remote(
                f"WINDOW on stream {stream_id} takes its credit above {MAX_WINDOW}", _ErrorCode.FLOW_CONTROL
            )
        stream.send_credit += increment
        return True

    def recv_reset(self, stream_id: int) -> bool:
        """Account for a RESET frame; True to report it (False: a late frame for a closed stream, dropped)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._known_gone(stream_id):
                return False
            if self.is_local(stream_id):
                raise _remote(f"RESET on stream {stream_id}, which is not open")
            # a fresh id of the peer's, which it may have announced in a control message: it withdraws it
            self._remember(stream_id, False)
            return True
        self._move(stream, _E.RECV_RESET, remote=True)
        self._close(stream, reset_by_us=False)
        return True
