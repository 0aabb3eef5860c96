"""PeerProtocol: one TCP connection, glued to a sans-IO proto.Connection.

Receive goes through asyncio.BufferedProtocol: the transport reads straight into the frame parser's
buffer (get_buffer/buffer_updated), so no bytes object is made per read. Events go to the Session; output
goes out with writelines(conn.data_to_send()); one call_at timer serves pings and timeouts. The class
derives from BufferedProtocol only: uvloop takes the buffered path only for a protocol that is not also an
asyncio.Protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from p2pfast.counters import COUNTERS
from p2pfast.errors import ProtocolError
from p2pfast.net import limits
from p2pfast.net.session import Handler, Session
from p2pfast.proto.connection import Connection, Role
from p2pfast.proto.events import NEED_DATA, ConnectionClosed, DataReceived, HandshakeComplete

log = logging.getLogger("p2pfast.net")


class PeerProtocol(asyncio.BufferedProtocol):
    def __init__(
        self,
        *,
        initiator: bool,
        static_key: Any,
        network_key: bytes,
        hello: dict[str, Any],
        handler: Handler,
        net_limits: limits.NetLimits,
        on_ready: Callable[[Session], None],
        on_closed: Callable[[Session], None],
        on_made: Callable[[PeerProtocol], bool] | None = None,
        on_lost: Callable[[PeerProtocol], None] | None = None,
        accept_keys: Sequence[bytes] = (),
        refuse: Callable[[str], bool] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.initiator = initiator
        self.conn = Connection(
            Role.INITIATOR if initiator else Role.RESPONDER,
            static_key,
            network_key,
            hello,
            now=self.loop.time(),
            limits=net_limits.proto,
            accept_keys=accept_keys,
            refuse=refuse,
        )
        self.peer_host = ""
        self.transport: asyncio.Transport | None = None
        self._handler = handler
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._on_made = on_made
        self._on_lost = on_lost
        # The armed timer and the deadline it was armed for. The deadline is kept here, not asked of the
        # handle: for a deadline under about 0.5 ms away uvloop's call_at returns a plain Handle, which
        # has no .when() (that AttributeError once dropped live connections).
        self._timer: asyncio.Handle | None = None
        self._timer_when = 0.0
        self._reading_paused = False
        self._pause_reasons: set[str] = set()
        self._closing = False
        self.session = Session(self, handler)

    # -- asyncio callbacks ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has the same methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_host = str(peer[0]) if peer else ""
        self.session.peer_host = self.peer_host
        self.transport.set_write_buffer_limits(high=limits.WRITE_HIGH, low=limits.WRITE_LOW)
        if self._on_made is not None and not self._on_made(self):
            self._closing = True
            self.transport.abort()
            return
        if self.initiator:
            self.conn.initiate()
        self.flush()
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        COUNTERS.bytes_in += nbytes
        self.conn.buffer_updated(nbytes)
        self._process()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reason = "closed" if exc is None else f"{type(exc).__name__}: {exc}"
        was_ready = self.session.ready.done() and self.session.ready.exception() is None
        self.session.connection_lost(self.session.close_reason or reason)
        if self._on_lost is not None:
            self._on_lost(self)
        if was_ready:
            self._on_closed(self.session)
        # nothing is sent or read from here on; the transport refers back to this protocol (a cycle
        # that would keep the connection's buffers until the collector's next full pass)
        self._closing = True
        self.transport = None

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

    # -- glue ----------------------------------------------------------------------------------------
    def _process(self) -> None:
        if self._closing:
            return
        conn, session = self.conn, self.session
        now = self.loop.time()  # one clock read per batch of frames: the idle timer needs no finer
        try:
            while True:
                event = conn.next_event(now)
                if type(event) is DataReceived:  # the bulk path: once per 64 KiB
                    session.on_data(event)
                    continue
                if event is NEED_DATA:
                    break
                session.handle(event)
                if isinstance(event, HandshakeComplete):
                    self._on_ready(session)
                elif isinstance(event, ConnectionClosed):
                    # A goodbye or an EOF after a finished exchange is not an error.
                    log.debug("event=peer_closed peer=%s reason=%r", session.peer_id[:12], event.reason)
                    self.close_transport()
                    return
        except ProtocolError as exc:
            self._fail(exc)
            return
        self.flush()
        self._arm_timer()

    def _fail(self, exc: ProtocolError) -> None:
        who = self.session.peer_id[:12] or f"{self.peer_host} (unauthenticated)"
        log.warning("event=peer_dropped peer=%s code=%d reason=%r", who, exc.code, str(exc))
        self.session.close_reason = str(exc)
        self.flush()
        self.close_transport()

    def flush(self) -> None:
        if self.transport is None or self._closing or self.transport.is_closing():
            return
        sent = self.conn.bytes_sent
        try:
            data = self.conn.data_to_send()
        except ProtocolError:
            return
        if data:
            COUNTERS.bytes_out += self.conn.bytes_sent - sent
            self.transport.writelines(data)

    def close_transport(self) -> None:
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.close()

    def pause_reading(self, reason: str) -> None:
        """Stop reading until every reason given here has been withdrawn with resume_reading."""
        self._pause_reasons.add(reason)
        if not self._reading_paused and self.transport is not None and not self._closing:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self, reason: str) -> None:
        self._pause_reasons.discard(reason)
        if (
            self._reading_paused
            and not self._pause_reasons
            and self.transport is not None
            and not self._closing
        ):
            self._reading_paused = False
            self.transport.resume_reading()

    def _arm_timer(self) -> None:
        if self._closing:
            return
        when = self.conn.get_timer()
        if self._timer is not None:
            # Received bytes push the idle deadline later on every read; a timer that fires early just
            # re-arms, which is far cheaper than replacing it per read.
            if when is not None and self._timer_when <= when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_when = when

    def _on_timer(self) -> None:
        self._timer = None
        when = self.conn.get_timer()
        if when is not None and when > self.loop.time():
            self._arm_timer()  # fired early: the deadline moved since it was set
            return
        try:
            self.conn.handle_timer(self.loop.time())
        except ProtocolError as exc:
            self._fail(exc)
            return
        self.flush()
        self._arm_timer()
