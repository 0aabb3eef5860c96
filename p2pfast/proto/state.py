"""The transition tables: one for the connection, one for each stream (h11 `_state.py`).

Both are role-agnostic dicts `(state, event kind) -> new state`; "send"/"recv" are seen from the side
that owns the table, so initiator and responder run the same tables. A pair missing from a table is an
illegal transition: `transition()` raises LocalProtocolError, which the receive path re-raises as
RemoteProtocolError (the peer made the move). docs/protocol.md, "State machines", draws them.
"""

from __future__ import annotations

import enum

from p2pfast import errors, wire

__all__ = [
    "CONNECTION_TRANSITIONS",
    "STREAM_TRANSITIONS",
    "ConnEvent",
    "ConnState",
    "Role",
    "StreamEvent",
    "StreamState",
    "conn_transition",
    "stream_transition",
]


class Role(enum.Enum):
    INITIATOR = "initiator"  # dialled out; sends handshake message 1; opens odd stream ids
    RESPONDER = "responder"  # accepted; opens even stream ids


class ConnState(enum.Enum):
    HANDSHAKE = "handshake"  # Noise messages only; the initiator stays here until the key is confirmed
    OPEN = "open"  # encrypted frames both ways
    CLOSED = "closed"  # we sent or received GOAWAY, or the peer closed (EOF): nothing more is sent
    ERROR = "error"  # poisoned: every call re-raises the error that got us here


class ConnEvent(enum.Enum):
    HANDSHAKE_DONE = "handshake_done"  # keys split and (initiator) confirmed by the responder's first frame
    SEND_GOAWAY = "send_goaway"  # close() by the application
    RECV_GOAWAY = "recv_goaway"
    RECV_EOF = "recv_eof"  # the peer closed cleanly between frames
    FAIL = "fail"  # any protocol error or timeout


CONNECTION_TRANSITIONS: dict[tuple[ConnState, ConnEvent], ConnState] = {
    (ConnState.HANDSHAKE, ConnEvent.HANDSHAKE_DONE): ConnState.OPEN,
    (ConnState.HANDSHAKE, ConnEvent.SEND_GOAWAY): ConnState.CLOSED,  # nothing to send: no keys yet
    (ConnState.HANDSHAKE, ConnEvent.FAIL): ConnState.ERROR,  # EOF in the handshake is a FAIL
    (ConnState.OPEN, ConnEvent.SEND_GOAWAY): ConnState.CLOSED,
    (ConnState.OPEN, ConnEvent.RECV_GOAWAY): ConnState.CLOSED,
    (ConnState.OPEN, ConnEvent.RECV_EOF): ConnState.CLOSED,
    (ConnState.OPEN, ConnEvent.FAIL): ConnState.ERROR,
    (ConnState.CLOSED, ConnEvent.SEND_GOAWAY): ConnState.CLOSED,  # close() is idempotent
    (ConnState.CLOSED, ConnEvent.RECV_GOAWAY): ConnState.CLOSED,  # GOAWAYs may cross
    (ConnState.CLOSED, ConnEvent.RECV_EOF): ConnState.CLOSED,
    (ConnState.CLOSED, ConnEvent.FAIL): ConnState.ERROR,
    (ConnState.ERROR, ConnEvent.FAIL): ConnState.ERROR,
}


class StreamState(enum.Enum):
    RESERVED = "reserved"  # the id exists (open_stream, or first use) but no DATA has moved on it yet
    SENDING = "sending"  # this side sent the first DATA: DATA flows out, WINDOW flows in
    RECEIVING = "receiving"  # the peer sent the first DATA: DATA flows in, WINDOW flows out
    CLOSED = "closed"  # END_STREAM or RESET: the stream is forgotten (its id kept a while, see streams.py)


class StreamEvent(enum.Enum):
    SEND_DATA = "send_data"
    SEND_END = "send_end"  # DATA with END_STREAM
    RECV_DATA = "recv_data"
    RECV_END = "recv_end"
    SEND_RESET = "send_reset"
    RECV_RESET = "recv_reset"


_S = StreamState
_E = StreamEvent
STREAM_TRANSITIONS: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (_S.RESERVED, _E.SEND_DATA): _S.SENDING,
    (_S.RESERVED, _E.SEND_END): _S.CLOSED,
    (_S.RESERVED, _E.RECV_DATA): _S.RECEIVING,
    (_S.RESERVED, _E.RECV_END): _S.CLOSED,
    (_S.RESERVED, _E.SEND_RESET): _S.CLOSED,
    (_S.RESERVED, _E.RECV_RESET): _S.CLOSED,
    (_S.SENDING, _E.SEND_DATA): _S.SENDING,
    (_S.SENDING, _E.SEND_END): _S.CLOSED,
    (_S.SENDING, _E.SEND_RESET): _S.CLOSED,
    (_S.SENDING, _E.RECV_RESET): _S.CLOSED,
    (_S.RECEIVING, _E.RECV_DATA): _S.RECEIVING,
    (_S.RECEIVING, _E.RECV_END): _S.CLOSED,
    (_S.RECEIVING, _E.SEND_RESET): _S.CLOSED,
    (_S.RECEIVING, _E.RECV_RESET): _S.CLOSED,
}
del _S, _E


def conn_transition(state: ConnState, event: ConnEvent) -> ConnState:
    """The connection's next state; LocalProtocolError when the table has no such move."""
    try:
        return CONNECTION_TRANSITIONS[state, event]
    except KeyError:
        raise errors.LocalProtocolError(
            f"cannot {event.value} in connection state {state.value}", wire.ErrorCode.PROTOCOL
        ) from None


def stream_transition(state: StreamState, event: StreamEvent, stream_id: int) -> StreamState:
    """A stream's next state; LocalProtocolError when the table has no such move."""
    try:
        return STREAM_TRANSITIONS[state, event]
    except KeyError:
        raise errors.LocalProtocolError(
            f"cannot {event.value} on stream {stream_id} in state {state.value}", wire.ErrorCode.PROTOCOL
        ) from None
