"""The asyncio glue over real loopback TCP, in one process, on uvloop and on asyncio's own loop (once in
debug mode): requests and replies, streams with sinks and with queues, flow control end to end, and a
failing test if anything reached the loop's exception handler."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any

import pytest
from loops import LOOPS, run_on

from p2pfast.counters import COUNTERS
from p2pfast.errors import P2PError, PeerUnavailable, RemoteProtocolError
from p2pfast.identity import node_id_of
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerEvents, PeerManager
from p2pfast.net.session import RequestFailed, Session
from p2pfast.proto import messages as m
from p2pfast.proto import noise


def manager(
    network_key: bytes, handler: Any = None, limits: NetLimits | None = None
) -> tuple[PeerManager, asyncio.Queue[Session]]:
    key = noise.generate_keypair()
    ready: asyncio.Queue[Session] = asyncio.Queue()

    async def on_ready(session: Session) -> None:
        ready.put_nowait(session)

    async def on_closed(session: Session) -> None:
        return None

    async def no_requests(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        return None

    mgr = PeerManager(
        node_id=node_id_of(noise.public_bytes(key)),
        static_key=key,
        network_key=network_key,
        limits=limits or NetLimits(),
        handler=handler or no_requests,
        events=PeerEvents(on_ready=on_ready, on_closed=on_closed),
    )
    return mgr, ready


async def connected_pair(server_handler: Any) -> tuple[PeerManager, PeerManager, Session, Session]:
    netkey = os.urandom(32)
    server, server_ready = manager(netkey, server_handler)
    client, client_ready = manager(netkey)
    addr = await server.listen("127.0.0.1:0")
    await client.listen("127.0.0.1:0")
    client.start()
    client.dial_soon(addr)
    c = await asyncio.wait_for(client_ready.get(), 10)
    s = await asyncio.wait_for(server_ready.get(), 10)
    return server, client, s, c


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_requests_replies_and_errors(loop_kind: str) -> None:
    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        if isinstance(msg, m.Ping):
            return m.Pong()
        if isinstance(msg, m.Leaves):
            return m.Pong()  # not what answers a leaves request: the requester refuses it
        return m.Error(8, "not here")

    async def main() -> None:
        server, client, s, c = await connected_pair(handler)
        try:
            assert c.peer_id == server.node_id and s.peer_id == client.node_id
            replies = await asyncio.gather(*(c.request(m.Ping()) for _ in range(100)))
            assert all(isinstance(r, m.Pong) for r in replies)
            with pytest.raises(RequestFailed, match="not here"):
                await c.request(m.WhoHas(cid="b3:" + "0" * 64))
            with pytest.raises(RemoteProtocolError, match="pong does not answer leaves"):
                await c.request(m.Leaves(cid="b3:" + "0" * 64))
        finally:
            await client.close()
            await server.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_streams_both_ways_byte_exact(loop_kind: str) -> None:
    size = 8 << 20
    blob = os.urandom(size)

    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        # A "get": stream `length` bytes of the blob back on the requester's stream id.
        assert isinstance(msg, m.Get)
        stream = session.stream(msg.sid)
        view = memoryview(blob)[: msg.length]
        for i in range(0, len(view), 300_001):  # odd chunk sizes: frames are cut by the Connection
            await stream.write(view[i : i + 300_001])
        await stream.write_eof()
        return m.Ok()

    async def main() -> None:
        server, client, _s, c = await connected_pair(handler)
        try:
            # Two concurrent downloads: one into a sink, one read through the queue.
            sink_stream, queue_stream = c.open_stream(), c.open_stream()
            got = bytearray()
            sink_stream.set_sink(lambda v: got.extend(v))

            async def fetch(sid: int, length: int) -> m.Ok:
                return await c.request(m.Get(cid="b3:" + "0" * 64, offset=0, length=length, sid=sid))

            replies = asyncio.gather(fetch(sink_stream.sid, size), fetch(queue_stream.sid, size // 2))
            queued = bytearray()
            while chunk := await queue_stream.read():
                queued.extend(chunk)
            await sink_stream.wait_eof()
            assert await replies == [m.Ok(), m.Ok()]
            assert bytes(got) == blob and bytes(queued) == blob[: size // 2]
            # Finished streams are forgotten on both ends: a long-lived session does not pile them up.
            assert c._streams == {} and _s._streams == {}
        finally:
            await client.close()
            await server.close()

    run_on(loop_kind, main)


def test_unread_bytes_are_bounded_by_credit() -> None:
    """A reader that does not read: every stream stops at its window, so the connection holds at most
    max_streams x initial_window unread bytes; reading the streams one after another then completes all."""
    proto_limits = NetLimits().proto
    window, streams = proto_limits.initial_window, proto_limits.max_streams
    started = asyncio.Event()

    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        started.set()
        assert isinstance(msg, m.Get)
        await session.stream(msg.sid).write(bytes(3 * window), end=True)
        return m.Ok()

    async def main() -> None:
        server, client, _s, c = await connected_pair(handler)
        try:
            opened = [c.open_stream() for _ in range(streams)]
            cid = "b3:" + "0" * 64
            pending = [
                asyncio.ensure_future(c.request(m.Get(cid=cid, offset=0, length=1, sid=st.sid)))
                for st in opened
            ]
            await started.wait()

            def held() -> int:
                return sum(len(chunk) for st in opened for chunk in st._queue)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while held() < streams * window and loop.time() < deadline:
                await asyncio.sleep(0.01)  # polling our own queues, bounded by the deadline
            # Exactly one window per stream: the peer had more to send and no credit for it.
            assert held() == streams * window, held()
            total = 0
            for st in opened:
                while chunk := await st.read():
                    total += len(chunk)
            assert total == streams * 3 * window
            assert all(isinstance(r, m.Ok) for r in await asyncio.gather(*pending))
        finally:
            await client.close()
            await server.close()

    run_on("uvloop", main)


def test_peer_going_away_fails_pending_work() -> None:
    serving = asyncio.Event()

    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        serving.set()
        await asyncio.Event().wait()  # never answers
        return None

    async def main() -> None:
        server, client, _s, c = await connected_pair(handler)
        try:
            req = asyncio.ensure_future(c.request(m.Ping()))
            await asyncio.wait_for(serving.wait(), 10)  # the request is in the server's hands
            await server.close()
            with pytest.raises(PeerUnavailable):
                await asyncio.wait_for(req, 10)
            with pytest.raises(PeerUnavailable):
                c.notify(m.Pex(()))
        finally:
            await client.close()

    run_on("uvloop", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_stream_nobody_announced_is_refused_not_held(loop_kind: str) -> None:
    async def pong(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        return m.Pong()

    async def main() -> None:
        server, client, s, c = await connected_pair(pong)
        try:
            stream = c.open_stream()  # data with no request announcing it: nothing would ever read it
            with pytest.raises(PeerUnavailable, match="reset by peer"):
                for _ in range(64):  # bounded: the refusal comes back within the first window
                    await stream.write(b"x" * 65536)
                    await asyncio.sleep(0)
            assert stream.sid not in s._streams
            assert await c.request(m.Ping(), timeout=10) == m.Pong()  # the link lives on
        finally:
            await client.close()
            await server.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("delay", [0.0, 0.0001, -1.0])
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_timer_rearm_for_a_deadline_due_at_once_keeps_the_connection(loop_kind: str, delay: float) -> None:
    """uvloop's call_at returns a plain Handle (no .when()) for a deadline under about 0.5 ms away; the
    protocol once asked that handle for its deadline on the next re-arm and dropped a live connection."""

    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        return m.Pong()

    async def main() -> None:
        server, client, _s, c = await connected_pair(handler)
        try:
            proto = c.proto
            loop = asyncio.get_running_loop()
            real = proto.conn.get_timer
            near = loop.time() + delay
            # The connection's next deadline, as its sans-IO state would report it just before a ping or
            # idle check falls due; the protocol arms for it, and re-arms as reads move it.
            proto.conn.get_timer = lambda: near  # type: ignore[method-assign]
            for _ in range(3):
                proto._arm_timer()
            proto.conn.get_timer = real  # type: ignore[method-assign]
            proto._arm_timer()
            await asyncio.sleep(0.01)  # let the near timer fire: the connection must still be there
            assert await c.request(m.Ping()) == m.Pong()
            assert not c.closed
        finally:
            await client.close()
            await server.close()

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_closed_connections_stop_counting_at_once(loop_kind: str) -> None:
    """More than max_connections connections opened and closed, then a member dials: it is admitted at
    once. The count once was a WeakSet, which kept closed connections (reference cycles) until the garbage
    collector ran, so a node with no live session refused every new peer; gc is off here to show it."""

    async def main() -> None:
        netkey = os.urandom(32)
        server, _ready = manager(netkey, limits=NetLimits(max_connections=3))
        client, client_ready = manager(netkey)
        try:
            addr = await server.listen("127.0.0.1:0")
            host, port = addr.rsplit(":", 1)
            for _ in range(8):
                _r, w = await asyncio.open_connection(host, int(port))
                w.close()
                await w.wait_closed()
            await client.listen("127.0.0.1:0")
            client.start()
            client.dial_soon(addr)
            session = await asyncio.wait_for(client_ready.get(), 10)
            assert session.peer_id == server.node_id
        finally:
            await client.close()
            await server.close()

    gc.disable()
    try:
        run_on(loop_kind, main)
    finally:
        gc.enable()


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """The other end closed (EOF, or a reset when it closed with our bytes unread), within 10 s."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_at_max_connections_a_newcomer_evicts_one_in_its_handshake(loop_kind: str) -> None:
    """With every connection slot taken, an incoming connection closes the oldest one still in its
    handshake and is served; with every slot a finished session, it is refused and no session is
    touched."""

    async def main() -> None:
        netkey = os.urandom(32)
        server, _ready = manager(netkey, limits=NetLimits(max_connections=2))
        members = [manager(netkey) for _ in range(2)]
        silent: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        evicted = COUNTERS.admission_evicted.get("max_connections", 0)
        refused = COUNTERS.admission_refused.get("max_connections", 0)
        try:
            addr = await server.listen("127.0.0.1:0")
            host, port = addr.rsplit(":", 1)
            # two connections that say nothing take both slots (accepted first: one listening socket's
            # queue is first in, first out)
            silent = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
            for (member, ready), (reader, _w) in zip(members, silent, strict=True):
                await member.listen("127.0.0.1:0")
                member.start()
                member.dial_soon(addr)
                session = await asyncio.wait_for(ready.get(), 10)
                assert session.peer_id == server.node_id
                assert await _closed_by_peer(reader), "the oldest in its handshake makes room"
            assert COUNTERS.admission_evicted.get("max_connections", 0) == evicted + 2
            assert len(server.sessions) == 2
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                assert await _closed_by_peer(reader), "no one to evict: refused"
            finally:
                writer.close()
            assert COUNTERS.admission_refused.get("max_connections", 0) == refused + 1
            assert len(server.sessions) == 2 and not any(s.closed for s in server.sessions.values())
        finally:
            for _r, w in silent:
                w.close()
            for member, _ready in members:
                await member.close()
            await server.close()

    run_on(loop_kind, main)


def test_try_write_on_a_connection_no_longer_open_sends_nothing_and_raises_nothing() -> None:
    # The peer reset the connection and the session has not heard yet (a replica killed mid-store):
    # try_write, the no-wait path, answers False so the caller's write() fails the stream the way the
    # caller handles; it raised LocalProtocolError instead, and a store exited 9 with it.
    async def main() -> None:
        server, client, _s, c = await connected_pair(None)
        try:
            stream = c.open_stream()
            c.conn.close()  # the connection's state, not yet the session's
            assert not c.closed
            assert stream.try_write(b"data") is False
            with pytest.raises(P2PError):
                await stream.write(b"data")
        finally:
            await client.close()
            await server.close()

    run_on("uvloop", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_closed_session_is_freed_without_the_cycle_collector(loop_kind: str) -> None:
    """Once both ends let go of a closed session, it and its protocol (with the connection's ~160 KiB of
    frame buffers) are freed by reference counting alone. The session and its protocol once referred to
    each other, so every closed connection waited for the collector's next full pass: in the simulator
    that held most of its memory (a few hundred MiB per 100 nodes). gc is off here to show it."""
    gone: list[weakref.ref[Any]] = []

    async def main() -> None:
        server, client, s, c = await connected_pair(None)
        try:
            gone.extend(weakref.ref(x) for x in (s, c, s.proto, c.proto))
            c.close()
            await asyncio.wait_for(c.closed_event.wait(), 10)
            await asyncio.wait_for(s.closed_event.wait(), 10)
        finally:
            await client.close()
            await server.close()

    gc.collect()
    gc.disable()
    try:
        run_on(loop_kind, main)
        assert [r() for r in gone] == [None] * 4
    finally:
        gc.enable()
