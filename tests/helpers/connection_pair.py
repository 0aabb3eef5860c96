"""ConnectionPair (h11 style): two proto Connections wired together in memory, no loop, socket or clock.

    pair = ConnectionPair()           # an initiator and a responder with fresh keys and one network key
    pair.handshake()                  # pumps until both reported HandshakeComplete
    pair.client.send_control({...})
    events = pair.pump()              # moves data_to_send() across until quiet; returns (client, server)
                                      # events, each DataReceived copied to bytes (the views are borrowed)

`now` is a plain float the test advances (`pair.now += 15`). `transfer(src, dst)` moves the bytes of one
direction, optionally through a `mangle` function (to flip bits or cut the stream) and in chunks through
get_buffer/buffer_updated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pfast.proto import noise
from p2pfast.proto.connection import Connection, Limits, Role
from p2pfast.proto.events import (
    NEED_DATA,
    DataReceived,
    Event,
    HandshakeComplete,
)

NETWORK_KEY = bytes(range(32))
CLIENT_HELLO = {"v": 1, "listen": "", "agent": "p2pfast/test-client"}
SERVER_HELLO = {"v": 1, "listen": "127.0.0.1:7400", "agent": "p2pfast/test-server"}


@dataclass(frozen=True)
class Data:
    """A DataReceived with its bytes copied out (the event's view is only valid until the next call)."""

    stream_id: int
    data: bytes
    end_stream: bool


def drain(conn: Connection, now: float) -> list[Any]:
    """Every event conn has now; DataReceived becomes Data (a copy)."""
    out: list[Any] = []
    while True:
        ev = conn.next_event(now)
        if ev is NEED_DATA:
            return out
        out.append(copy_event(ev))


def copy_event(ev: Event) -> Any:
    if isinstance(ev, DataReceived):
        return Data(ev.stream_id, bytes(ev.data), ev.end_stream)
    return ev


def feed_buffered(
    conn: Connection, data: bytes, rng: random.Random | None = None, max_chunk: int = 0
) -> None:
    """data into conn through get_buffer/buffer_updated, in chunks of random size when rng is given."""
    pos = 0
    while pos < len(data):
        buf = conn.get_buffer(-1)
        n = min(len(buf), len(data) - pos)
        if rng is not None:
            n = min(n, rng.randint(1, max_chunk or 70000))
        buf[:n] = data[pos : pos + n]
        conn.buffer_updated(n)
        pos += n


@dataclass
class ConnectionPair:
    limits: Limits = field(default_factory=Limits)
    server_limits: Limits | None = None
    client_key: bytes = NETWORK_KEY
    server_key: bytes = NETWORK_KEY
    now: float = 1000.0
    buffered: bool = False  # receive through get_buffer/buffer_updated instead of receive_data
    client: Connection = field(init=False)
    server: Connection = field(init=False)

    def __post_init__(self) -> None:
        self.client_static = noise.generate_keypair()
        self.server_static = noise.generate_keypair()
        self.client = Connection(
            Role.INITIATOR,
            self.client_static,
            self.client_key,
            CLIENT_HELLO,
            now=self.now,
            limits=self.limits,
        )
        self.server = Connection(
            Role.RESPONDER,
            self.server_static,
            self.server_key,
            SERVER_HELLO,
            now=self.now,
            limits=self.server_limits or self.limits,
        )

    def peer_of(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def transfer(
        self, src: Connection, mangle: Callable[[bytes], bytes] | None = None, *, chunk: int = 0
    ) -> int:
        """Move src's queued bytes to its peer; returns how many moved."""
        data = b"".join(src.data_to_send())
        if mangle is not None:
            data = mangle(data)
        if not data:
            return 0
        dst = self.peer_of(src)
        if self.buffered or chunk:
            feed_buffered(dst, data, random.Random(len(data)) if chunk else None, chunk)
        else:
            dst.receive_data(data)
        return len(data)

    def pump(self, rounds: int = 100) -> tuple[list[Any], list[Any]]:
        """Move bytes both ways and collect events until neither side has anything to send."""
        client_events: list[Any] = []
        server_events: list[Any] = []
        for _ in range(rounds):
            moved = self.transfer(self.client)
            server_events += drain(self.server, self.now)
            moved += self.transfer(self.server)
            client_events += drain(self.client, self.now)
            if not moved:
                return client_events, server_events
        raise AssertionError(f"pump did not go quiet in {rounds} rounds")

    def handshake(self) -> tuple[HandshakeComplete, HandshakeComplete]:
        self.client.initiate()
        client_events, server_events = self.pump()
        assert isinstance(client_events[0], HandshakeComplete), client_events
        assert isinstance(server_events[0], HandshakeComplete), server_events
        return client_events[0], server_events[0]
