"""An awaitable API over one authenticated connection: requests with replies, notices, and streams.

The protocol logic is in p2pfast.proto.Connection; this module only turns its events into futures and
queues, and its credit into awaits. Producers wait on `writable` (cleared by pause_writing) and on stream
credit before each chunk, so memory stays bounded whatever is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, overload

from p2pfast import wire
from p2pfast.counters import COUNTERS
from p2pfast.errors import IntegrityError, LocalProtocolError, P2PError, PeerUnavailable, ProtocolError
from p2pfast.net import limits
from p2pfast.proto import events as ev
from p2pfast.proto import features
from p2pfast.proto import messages as m
from p2pfast.proto.connection import Connection
from p2pfast.proto.state import ConnState

log = logging.getLogger("p2pfast.net")


class Transport(Protocol):
    """What a session needs of the connection under it (net/protocol.py's PeerProtocol): named here so
    that the session does not import the protocol, which makes it."""

    conn: Connection
    peer_host: str
    initiator: bool

    def flush(self) -> None: ...

    def close_transport(self) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...


class _Detached:
    """The transport of a session whose connection is gone: nothing left to flush, close or pause.
    connection_lost swaps it in so that the session and its protocol stop referring to each other: that
    cycle kept every closed connection, with its ~160 KiB of frame buffers, until the collector's next
    full pass, which in a long-lived process comes rarely (and never for objects gc.freeze() kept)."""

    __slots__ = ("conn", "initiator", "peer_host")

    def __init__(self, conn: Connection, peer_host: str, initiator: bool) -> None:
        self.conn = conn
        self.peer_host = peer_host
        self.initiator = initiator

    def flush(self) -> None:
        pass

    def close_transport(self) -> None:
        pass

    def pause_reading(self, reason: str) -> None:
        pass

    def resume_reading(self, reason: str) -> None:
        pass


# A request's handler answers with a reply, or None for a notice (which gets none).
Handler = Callable[["Session", m.Request | m.Notice], Awaitable[m.Reply | None]]


def wildcard_host(host: str) -> bool:
    """A listen host that names no host to dial (any address of the machine)."""
    return host in ("", "0.0.0.0", "::", "[::]")


class RequestFailed(PeerUnavailable):
    """peer refused: {}"""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code  # the wire.ErrorCode of the peer's error reply (INTEGRITY: its copy is bad)


class StreamError(PeerUnavailable):
    """stream failed: {}"""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code  # the wire.ErrorCode of the peer's RESET, when it reset the stream


class Stream:
    """One stream of a session. Received bytes go to a sink callback (no copy) or are queued (one copy,
    bounded by the stream window, since the peer cannot send beyond the credit we grant: a connection
    holds at most max_streams x initial_window unread bytes). There is deliberately no connection-wide
    pause on unread bytes: with per-stream credit it would deadlock a reader that reads one stream at a
    time while the bytes it waits for sit behind other streams' in the socket."""

    def __init__(self, session: Session, sid: int) -> None:
        self.session = session
        self.sid = sid
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue
        self._sink: Callable[[memoryview], object] | None = None
        self._readable = asyncio.Event()
        self._credit = asyncio.Event()
        self.eof = False
        self.error: BaseException | None = None
        self.received = 0

    # -- receiving -----------------------------------------------------------------------------------
    def set_sink(self, sink: Callable[[memoryview], object]) -> None:
        """Hand every received chunk to `sink` as it arrives (borrowed view: consume it in the call)."""
        self._sink = sink
        while self._queue:
            chunk = self._queue.popleft()
            self._queued -= len(chunk)
            sink(memoryview(chunk))
            self.session._consumed(self.sid, len(chunk))

    def _deliver(self, data: memoryview, end: bool) -> None:
        self.received += len(data)
        if data:
            if self._sink is not None:
                self._sink(data)
                self.session._consumed(self.sid, len(data))
            else:
                self._queue.append(bytes(data))
                self._queued += len(data)
        if end:
            self.eof = True
            self.session._forget(self)
        self._readable.set()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._readable.set()
        self._credit.set()

    async def read(self) -> bytes:
        """The next received chunk; b"" at the end of the stream."""
        while True:
            if self._queue:
                chunk = self._queue.popleft()
                self._queued -= len(chunk)
                self.session._consumed(self.sid, len(chunk))
                return chunk
            if self.error is not None:
                raise self.error
            if self.eof:
                return b""
            self._readable.clear()
            await self._readable.wait()

    def ready(self) -> bool:
        """read() would return at once: data is queued, or the stream ended or failed."""
        return bool(self._queue) or self.eof or self.error is not None

    async def read_some(self, limit: int, at_least: int = 0) -> bytes:
        """Queued chunks joined, up to about `limit` bytes, once `at_least` bytes are queued (or the stream
        ended); b"" at the end. A consumer working on a thread makes one hand-off per `at_least` bytes
        instead of one per 64 KiB frame. `at_least` must stay below the stream window (the peer cannot
        send more than that before we read)."""
        parts = await self.read_chunks(limit, at_least)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_chunks(self, limit: int, at_least: int = 0) -> list[bytes]:
        """read_some() without the join: the chunks as received, for a reader that cuts them up anyway
        (every copy of a bulk transfer's bytes on the loop thread costs about as much as its hashing)."""
        while self._queued < at_least and not self.eof and self.error is None:
            self._readable.clear()
            await self._readable.wait()
        first = await self.read()
        if not first:
            return []
        parts, size = [first], len(first)
        while self._queue and size < limit:
            chunk = self._queue.popleft()
            self._queued -= len(chunk)
            self.session._consumed(self.sid, len(chunk))
            parts.append(chunk)
            size += len(chunk)
        return parts

    def extend_window(self, nbytes: int) -> None:
        """Let the peer send nbytes more than the initial window ahead of what we read: for a reader that
        drains a bulk transfer promptly (it only takes effect once the peer's first DATA arrived)."""
        if self.session.closed:
            return
        with contextlib.suppress(LocalProtocolError):
            self.session.conn.grant(self.sid, nbytes)
            self.session.flush()

    async def wait_eof(self) -> None:
        while not self.eof:
            if self.error is not None:
                raise self.error
            self._readable.clear()
            await self._readable.wait()
        if self.error is not None:
            raise self.error

    # -- sending -------------------------------------------------------------------------------------
    async def write(self, data: bytes | bytearray | memoryview, end: bool = False) -> None:
        """Send all of `data`, waiting for stream credit and transport writability as needed."""
        view = memoryview(data).cast("B")
        s = self.session
        while True:
            if self.error is not None:
                raise self.error
            await s.wait_writable()
            taken = s.conn.send_data(self.sid, view, end_stream=end)
            s.flush()
            view = view[taken:]
            if not view:
                if end:
                    s._forget(self)
                return
            if s.conn.send_credit(self.sid) == 0:
                self._credit.clear()
                await self._credit.wait()

    def try_write(self, data: bytes | bytearray | memoryview, end: bool = False) -> bool:
        """write() without waiting, when it would not wait: the session is writable and the stream has
        credit for all of `data`. False (nothing sent) otherwise. The frames go out with the rest of
        this loop turn's (flush_soon): a small store's request and data in one write."""
        s = self.session
        # a connection no longer open (the peer reset it, and the session has not heard yet): write()
        # says so the way the caller expects, as send_credit() here would raise instead of answering
        if (
            self.error is not None
            or s.closed
            or not s._writable.is_set()
            or s.conn.state is not ConnState.OPEN
        ):
            return False
        if s.conn.send_credit(self.sid) < len(data):
            return False
        s.conn.send_data(self.sid, data, end_stream=end)
        s.flush_soon()
        if end:
            s._forget(self)
        return True

    async def write_eof(self) -> None:
        await self.write(b"", end=True)

    def reset(self, code: int = wire.ErrorCode.NO_ERROR) -> None:
        if self.session.closed:
            return
        try:
            self.session.conn.reset_stream(self.sid, code)
            self.session.flush()
        except ProtocolError:
            pass
        self.session._streams.pop(self.sid, None)
        self.session._slot_freed.set()
        self.session.active_at = asyncio.get_running_loop().time()


class Session:
    def __init__(self, proto: Transport, handler: Handler) -> None:
        self.proto = proto
        self.conn = proto.conn
        self.handler = handler
        self.peer_id: str = ""
        self.hello: dict[str, Any] = {}
        self.peer_host: str = proto.peer_host
        # The address this node dialed to reach the peer ("" when the peer connected to us), and the
        # peer's address as this node verified it (PeerManager sets both; docs/protocol.md, Discovery).
        self.dialed = ""
        self.verified_addr: str | None = None
        self.verifying = False  # a verification dial (PeerManager.verify): never a session in use
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[m.Reply]] = {}
        self._streams: dict[int, Stream] = {}
        # streams the peer announced in a request, kept until its handler claims them with stream(sid):
        # all their data (END_STREAM included) may arrive before the handler task first runs
        self._announced: dict[int, Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writable = asyncio.Event()
        self._writable.set()
        self._flush_scheduled = False
        self._slot_freed = asyncio.Event()  # set whenever a stream ends: open_stream_wait() retries
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed_event = asyncio.Event()
        self.close_reason: str = ""
        self.closed = False
        # When this session last carried a request or a stream, either way (loop time): a session kept
        # over the node's link target closes once idle (node/links.py). Notices (gossip) do not count.
        self.active_at = asyncio.get_running_loop().time()

    # -- API -----------------------------------------------------------------------------------------
    @property
    def initiator(self) -> bool:
        return self.proto.initiator

    @property
    def agent(self) -> str:
        """The peer's software and version, from its hello ("p2pfast/X.Y.Z")."""
        return str(self.hello.get("agent") or "")

    def speaks(self, feature: str) -> bool:
        """Whether the peer's build has `feature` (proto/features.py): what a later build added goes
        only to peers that speak it."""
        return features.speaks(self.agent, feature)

    @property
    def listen_addr(self) -> str | None:
        """host:port where the peer accepts connections, from its hello and the address it came from."""
        listen = str(self.hello.get("listen") or "")
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) == 0:
            return None
        if wildcard_host(host):
            host = self.peer_host
        return f"{host}:{port}"

    @property
    def listen_addr_observed(self) -> str | None:
        """listen_addr when this connection shows it: the peer connected to us from the host it names
        (a wildcard host is replaced by that host), so the address is the peer's own. None otherwise:
        a member can name any host in its hello, and only a dial there can tell whether it listens."""
        addr = self.listen_addr
        if self.initiator or addr is None:
            return None
        return addr if _same_host(addr.rpartition(":")[0], self.peer_host) else None

    @property
    def address(self) -> str | None:
        """The address to record for this peer: the verified one, else what its hello says."""
        return self.verified_addr or self.listen_addr

    @overload
    async def request(self, message: m.Ping, timeout: float = ...) -> m.Pong: ...
    @overload
    async def request(self, message: m.WhoHas, timeout: float = ...) -> m.Have: ...
    @overload
    async def request(
        self, message: m.Get | m.Leaves | m.Store | m.Delete | m.Probe | m.KeyMeta, timeout: float = ...
    ) -> m.Ok: ...
    @overload
    async def request(self, message: m.Holds, timeout: float = ...) -> m.Held: ...
    @overload
    async def request(self, message: m.ListFiles, timeout: float = ...) -> m.FileList: ...
    @overload
    async def request(self, message: m.ViewSync, timeout: float = ...) -> m.ViewDiff: ...
    @overload
    async def request(self, message: m.ViewPull, timeout: float = ...) -> m.ViewPush: ...
    async def request(self, message: m.Request, timeout: float = limits.REQUEST_TIMEOUT) -> m.Reply:
        """Send a request (an "id" is assigned) and await its reply; an error reply raises RequestFailed,
        a reply of a kind that does not answer it RemoteProtocolError."""
        self._check_open()
        await self.wait_writable()
        rid, fut = self.send_request(message)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancellation (3.11)
                reply = await fut
        finally:
            self._pending.pop(rid, None)
            self.active_at = asyncio.get_running_loop().time()
        return _reply(message, reply)

    def send_request(self, message: m.Request) -> tuple[int, asyncio.Future[m.Reply]]:
        """Queue a request now (its frame goes before any sent after it, such as the data of the stream
        it announces) and return (its id, the future of its reply). The caller pops _pending[id] when it
        stops waiting; replied() turns the reply into a result or RequestFailed."""
        self._check_open()
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        self.active_at = loop.time()
        fut: asyncio.Future[m.Reply] = loop.create_future()
        self._pending[rid] = fut
        self.conn.send_control(m.to_wire(message, id=rid))
        self.flush_soon()
        return rid, fut

    async def replied(self, request: m.Request, rid: int, fut: asyncio.Future[m.Reply]) -> m.Reply:
        """Await the reply to `request` of send_request(); an error reply raises RequestFailed."""
        try:
            return _reply(request, await fut)
        finally:
            self._pending.pop(rid, None)

    def notify(self, message: m.Notice) -> None:
        """Send a message that gets no reply (peer exchange)."""
        self._check_open()
        self.conn.send_control(m.to_wire(message))
        self.flush_soon()

    def notify_encoded(self, raw: bytes) -> None:
        """notify() of a message encoded once for several sessions (control.encode's bytes)."""
        self._check_open()
        self.conn.send_control_encoded(raw)
        self.flush_soon()

    def open_stream(self) -> Stream:
        """A new stream of ours; LocalProtocolError(STREAM_LIMIT) when max_streams are open already."""
        self._check_open()
        sid = self.conn.open_stream()
        stream = self._streams[sid] = Stream(self, sid)
        return stream

    async def open_stream_wait(self, timeout: float = limits.REQUEST_TIMEOUT) -> Stream:
        """open_stream(), waiting up to `timeout` for a slot when max_streams are open: many transfers
        to one peer queue here instead of failing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                return self.open_stream()
            except LocalProtocolError as exc:
                if exc.code != wire.ErrorCode.STREAM_LIMIT:
                    raise
                left = deadline - loop.time()
                if left <= 0:
                    raise
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: it can lose a cancellation (3.11)
                    await self._slot_freed.wait()

    def stream(self, sid: int) -> Stream:
        """The stream with this id (one the peer announced in a request), created on first use."""
        stream = self._announced.pop(sid, None) or self._streams.get(sid)
        if stream is None:
            stream = self._streams[sid] = Stream(self, sid)
        return stream

    def _forget(self, stream: Stream) -> None:
        """Drop a finished stream (its END_STREAM went out or came in); the caller may still hold it."""
        if self._streams.get(stream.sid) is stream:
            del self._streams[stream.sid]
        self._slot_freed.set()

    async def wait_writable(self) -> None:
        await self._writable.wait()  # connection_lost sets it too, so a closed session never blocks here
        self._check_open()

    def flush(self) -> None:
        self.proto.flush()

    def flush_soon(self) -> None:
        """Flush once the tasks ready now have run: a request and the first data of the stream it
        announces (a small store's whole object) then leave in one write. On loopback each write also
        runs the receiver's TCP path, so a small store to 3 peers saved 3 of its 9 writes this way."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        self.proto.flush()

    def busy(self) -> bool:
        """A request or a stream is under way, either way."""
        return bool(self._pending or self._streams or self._announced or self._tasks)

    def idle_for(self, now: float) -> float:
        """Seconds since the session last carried a request or a stream; 0 while one is under way."""
        return 0.0 if self.busy() else max(0.0, now - self.active_at)

    def close(self, code: int = wire.ErrorCode.NO_ERROR, reason: str = "") -> None:
        if not self.closed:
            self.close_reason = self.close_reason or reason
            with contextlib.suppress(ProtocolError):
                self.conn.close(code, reason)
            self.proto.flush()
            self.proto.close_transport()

    # -- from the protocol ---------------------------------------------------------------------------
    def _gone(self) -> PeerUnavailable:
        return PeerUnavailable(
            f"connection to {self.peer_id[:12] or self.peer_host} closed: {self.close_reason}"
        )

    @property
    def usable(self) -> bool:
        """Open both ways: not closed, and no GOAWAY sent or received (the transport may still be
        draining; nothing more can be sent on it)."""
        return not self.closed and self.conn.state not in (ConnState.CLOSED, ConnState.ERROR)

    def _check_open(self) -> None:
        if not self.usable:  # a GOAWAY came (the peer closed it idle, say) before the transport went
            raise self._gone()

    def _consumed(self, sid: int, n: int) -> None:
        if not self.closed:
            try:
                self.conn.consumed(sid, n)
            except LocalProtocolError:
                return  # the stream is gone (reset); nothing to grant
            self.proto.flush()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def on_data(self, event: ev.DataReceived) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if sid & 1 != (1 if self.initiator else 0):
                # The peer opened a stream without announcing it in a request: nothing will ever read
                # it, so refuse it rather than hold its data for the life of the connection.
                with contextlib.suppress(ProtocolError):
                    self.conn.reset_stream(sid, int(wire.ErrorCode.REFUSED))
                    self.flush()
                log.debug("event=stream_refused peer=%s sid=%d reason=unannounced", self.peer_id[:12], sid)
                return
            stream = self._streams[sid] = Stream(self, sid)
        stream._deliver(event.data, event.end_stream)

    def handle(self, event: object) -> None:
        if isinstance(event, ev.DataReceived):
            self.on_data(event)
        elif isinstance(event, ev.ControlReceived):
            try:
                env = m.from_wire(event.message)
            except ProtocolError as exc:  # valid JSON of a known kind, but it breaks a rule of messages.py
                self._refuse(event.message.get("id"), exc)
                return
            if env.re is not None:
                fut = self._pending.get(env.re)
                if fut is not None and not fut.done():
                    fut.set_result(env.msg)  # type: ignore[arg-type]  # a reply: it carries re
                return
            if env.id is not None:  # a request (a notice is gossip: it keeps no session in use)
                self.active_at = asyncio.get_running_loop().time()
            sid = m.inbound_stream(env.msg)
            if sid is not None:  # data flows from the peer on sid, maybe before the handler runs
                self._announced[sid] = self.stream(sid)
            self._spawn(env.msg, env.id, sid)  # type: ignore[arg-type]  # a request or a notice
        elif isinstance(event, ev.WindowUpdated):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._credit.set()
        elif isinstance(event, ev.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            self._slot_freed.set()
            if stream is not None:
                stream._fail(
                    StreamError(f"stream {event.stream_id} reset by peer (code {event.code})", event.code)
                )
        elif isinstance(event, ev.HandshakeComplete):
            self.peer_id = event.peer_id
            self.hello = dict(event.hello)
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, ev.ConnectionClosed):
            self.close_reason = event.reason or f"code {event.code}"

    def _refuse(self, rid: object, exc: ProtocolError) -> None:
        if type(rid) is int and not self.closed:
            with contextlib.suppress(ProtocolError):
                self.conn.send_control(m.to_wire(m.Error.of(int(exc.code), str(exc)), re=rid))
                self.flush()

    def _spawn(self, msg: m.Request | m.Notice, rid: int | None, sid: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(msg, rid, sid))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self._tasks) >= limits.MAX_INFLIGHT_REQUESTS:
            self.proto.pause_reading("requests")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.active_at = asyncio.get_running_loop().time()
        if len(self._tasks) < limits.MAX_INFLIGHT_REQUESTS:
            self.proto.resume_reading("requests")

    async def _serve(self, msg: m.Request | m.Notice, rid: int | None, sid: int | None) -> None:
        reply: m.Reply | None
        try:
            reply = await self.handler(self, msg)
        except ProtocolError as exc:
            reply = m.Error.of(int(exc.code), str(exc))
        except PeerUnavailable:
            return  # the connection went away while we served it
        except P2PError as exc:  # a refusal with its reason: integrity, storage, input
            code = wire.ErrorCode.REFUSED
            if isinstance(exc, IntegrityError):  # a peer's bytes, or our own object on disk, were bad
                code = wire.ErrorCode.INTEGRITY
                COUNTERS.integrity_failures += 1
            reply = m.Error.of(int(code), str(exc))
        except Exception as exc:
            kind = m.KIND[type(msg)]
            log.error("event=handler_failed peer=%s type=%s error=%r", self.peer_id[:12], kind, exc)
            reply = m.Error(int(wire.ErrorCode.INTERNAL), type(exc).__name__)
        finally:
            if sid is not None:
                self._announced.pop(sid, None)
        if reply is None or rid is None or self.closed:
            return
        try:
            await self.wait_writable()
            self.conn.send_control(m.to_wire(reply, re=rid))
            self.flush()
        except PeerUnavailable:
            pass

    def connection_lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        exc = self._gone()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
                # Marked retrieved: a caller that stopped waiting in this same loop turn (cancelled, or
                # its timeout fired) would leave it to the loop's "never retrieved" handler; one still
                # awaiting it gets it raised all the same.
                fut.exception()
        for stream in self._streams.values():
            if not stream.eof:
                stream._fail(exc)
        self._writable.set()
        self._slot_freed.set()
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: a failed handshake is logged by the protocol, not here
        for task in self._tasks:
            task.cancel()
        self.closed_event.set()
        self.proto = _Detached(self.conn, self.peer_host, self.proto.initiator)


def _same_host(a: str, b: str) -> bool:
    """Two spellings of one host: IP addresses compare as addresses (an IPv4-mapped IPv6 source as its
    IPv4 address, as a dual-stack listener reports it), names as lower-case text."""
    return _canonical_host(a) == _canonical_host(b)


def _canonical_host(host: str) -> str:
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _reply(request: m.Request, reply: m.Reply) -> m.Reply:
    reply = m.check_reply(request, reply)
    if isinstance(reply, m.Error):
        raise RequestFailed(f"{reply.reason} (code {reply.code})", reply.code)
    return reply
