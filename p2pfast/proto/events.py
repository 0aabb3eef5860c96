"""What `Connection.next_event()` returns: immutable, slotted, validated events, or `NEED_DATA`.

`DataReceived.data` is BORROWED: a read-only view into the Connection's decryption buffer, valid only
until the next `next_event()`, `receive_data()`, `get_buffer()` or `buffer_updated()` on that Connection.
Copy it (`bytes(ev.data)`) or finish with it before calling again (py-pgproto `_try_read_bytes`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NEED_DATA",
    "ConnectionClosed",
    "ControlReceived",
    "DataReceived",
    "Event",
    "HandshakeComplete",
    "NeedData",
    "StreamReset",
    "WindowUpdated",
]

_U32_MAX = 0xFFFFFFFF


class NeedData(enum.Enum):
    """The type of the `NEED_DATA` sentinel (an enum, so `ev is NEED_DATA` narrows for mypy)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


def _check_stream_id(stream_id: int) -> None:
    if type(stream_id) is not int or not 0 < stream_id <= _U32_MAX:
        raise ValueError(f"stream id must be an int in 1..{_U32_MAX}, not {stream_id!r}")


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The Noise handshake finished and the peer proved it holds the network key."""

    peer_key: bytes  # the peer's X25519 static public key (32 bytes)
    peer_id: str  # hex SHA-256 of peer_key
    hello: dict[str, Any]  # the peer's HELLO, validated by control.decode_hello

    def __post_init__(self) -> None:
        if len(self.peer_key) != 32 or len(self.peer_id) != 64:
            raise ValueError("peer_key must be 32 bytes and peer_id 64 hex digits")


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """A control message (stream 0), validated field by field by control.decode."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes on a stream. `data` is BORROWED (see the module docstring); report it with consumed()."""

    stream_id: int
    data: memoryview
    end_stream: bool

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """Our send credit on `stream_id` grew by `increment`."""

    stream_id: int
    increment: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        if self.increment <= 0:
            raise ValueError(f"window increment must be positive, not {self.increment}")


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer aborted `stream_id` with a wire error code (or refused it: ErrorCode.REFUSED)."""

    stream_id: int
    code: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer sent GOAWAY(code, reason), or closed after the handshake (code NO_ERROR, reason "eof")."""

    code: int
    reason: str


Event = HandshakeComplete | ControlReceived | DataReceived | WindowUpdated | StreamReset | ConnectionClosed
