"""The peer table in memory: the listener, the dialer (rate-limited, with backoff per address), one session
per peer id, and reconnecting to bootstrap nodes when alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from p2pfast.counters import COUNTERS
from p2pfast.errors import ConfigError, ListenError, PeerUnavailable
from p2pfast.net.admission import Admission, Admitted, LogThrottle
from p2pfast.net.limits import NetLimits
from p2pfast.net.protocol import PeerProtocol
from p2pfast.net.session import Handler, Session

log = logging.getLogger("p2pfast.net")

# The agent tag of a verification dial's hello: "p2pfast/X.Y.Z+verify" (docs/protocol.md, Discovery).
VERIFY_TAG = "+verify"


def split_addr(addr: str, default_host: str = "") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad address {addr!r}: expected HOST:PORT")
    host = host.strip("[]") or default_host
    return host, int(port)


@dataclass(slots=True)
class _Backoff:
    delay: float
    not_before: float


@dataclass(slots=True)
class PeerEvents:
    """What the node hears from the peer table."""

    on_ready: Callable[[Session], Coroutine[Any, Any, None]]
    on_closed: Callable[[Session], Coroutine[Any, Any, None]]
    # a dial to this address failed (refused, timed out, or no handshake with a member there)
    on_dial_failed: Callable[[str], Coroutine[Any, Any, None]] | None = None


class PeerManager:
    def __init__(
        self,
        *,
        node_id: str,
        static_key: Any,
        network_key: bytes,
        limits: NetLimits,
        handler: Handler,
        events: PeerEvents,
    ) -> None:
        self.node_id = node_id
        self.static_key = static_key
        self.network_key = network_key
        # Keys accepted besides network_key in a rotation's overlap window, and the ids refused at the
        # handshake (revoked): both set by node/revocation.py, read by every new connection.
        self.accept_keys: tuple[bytes, ...] = ()
        self.refused: set[str] = set()
        self.limits = limits
        self.handler = handler
        self.events = events
        self.sessions: dict[str, Session] = {}
        self.listen_addr = ""  # host:port actually bound
        self.bootstrap: list[str] = []
        self._server: asyncio.Server | None = None
        # Every connection from the moment it is admitted until its transport is lost, counted explicitly
        # (a WeakSet kept closed ones until the garbage collector ran, refusing peers meanwhile).
        self._protocols: set[PeerProtocol] = set()
        self._bg_tasks: set[asyncio.Task[None]] = set()
        # incoming connections in their handshake (outgoing ones are ours, bounded by the dialer)
        self._admission: Admission[PeerProtocol] = Admission(
            limits.max_pre_handshake_per_address,
            limits.max_pre_handshake_per_prefix,
            limits.max_pre_handshake,
        )
        self._evict_log = LogThrottle(limits.admission_log_interval)
        self._refuse_log = LogThrottle(limits.admission_log_interval)
        self._dialing: set[str] = set()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._self_addrs: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._dial_slots = asyncio.Semaphore(limits.max_dials_in_flight)
        self._next_dial: str | None = None  # taken from the queue, waiting for its rate-limit slot
        self._connecting: dict[str, asyncio.Task[None]] = {}  # on-demand dials (connect) by address
        # set on every connect, disconnect and finished dial: waiters re-check what they wait for
        self.changed = asyncio.Event()

    def pending(self) -> int:
        """Dials queued or in flight."""
        return len(self._queued) + len(self._dialing)

    def busy(self) -> bool:
        """Dials are queued or in flight: the peer table may still grow."""
        return bool(self._queued or self._dialing or self._next_dial)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def listen(self, addr: str) -> str:
        host, port = split_addr(addr)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: self._protocol(initiator=False), host or None, port, reuse_address=True, backlog=128
            )
        except OSError as exc:  # a port in use, a name that does not resolve, an address not ours
            raise ListenError.of(addr, exc, "--listen") from exc
        sock = self._server.sockets[0].getsockname()
        bound_host = host or ("0.0.0.0" if ":" not in sock[0] else "::")
        self.listen_addr = f"{bound_host}:{sock[1]}"
        if host:
            self._self_addrs.add(f"{host}:{sock[1]}")
        self._self_addrs.update({f"127.0.0.1:{sock[1]}", f"localhost:{sock[1]}"})
        return self.listen_addr

    def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._dialer()))

    def stop_listening(self) -> None:
        """Accept no new connection and dial no more; the sessions open now go on (a graceful stop)."""
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for c in list(self._connecting.values()):
            c.cancel()
        for session in list(self.sessions.values()):
            session.close(0, "shutting down")
        for proto in list(self._protocols):
            proto.close_transport()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()

    # -- connections ---------------------------------------------------------------------------------
    def _hello(self) -> dict[str, Any]:
        from p2pfast import __version__

        return {"v": 1, "listen": self.listen_addr, "agent": f"p2pfast/{__version__}"}

    def _protocol(self, initiator: bool, verify: bool = False) -> PeerProtocol:
        hello = self._hello()
        if verify:  # a build's metadata tag, which every build's version parsing allows (features.py)
            hello["agent"] += VERIFY_TAG
        proto = PeerProtocol(
            initiator=initiator,
            static_key=self.static_key,
            network_key=self.network_key,
            hello=hello,
            handler=self.handler,
            net_limits=self.limits,
            on_ready=self._ready,
            on_closed=self._closed,
            on_made=self._admit,
            on_lost=self._protocols.discard,
            accept_keys=self.accept_keys,
            refuse=self.refused.__contains__,
        )
        return proto

    def _admit(self, proto: PeerProtocol) -> bool:
        """Called when a transport is made: enforce the connection limits before any crypto runs. An
        incoming connection over a limit closes the oldest one still in its handshake near it (same
        address, else prefix, else any: net/admission.py) rather than be refused."""
        now = asyncio.get_running_loop().time()
        incoming = not proto.initiator
        if len(self._protocols) >= self.limits.max_connections:
            made = self._admission.make_room(proto.peer_host, "max_connections", now) if incoming else None
            if made is None or made.evicted is None:
                COUNTERS.refused("max_connections")
                if (left_out := self._refuse_log.allow(now)) is not None:
                    log.warning(
                        "event=connection_refused peer=%s reason=max_connections left_out=%d",
                        proto.peer_host,
                        left_out,
                    )
                return False
            self._evict(proto, made, now)
        if incoming:
            self._evict(proto, self._admission.admit(proto, proto.peer_host, now), now)
        self._protocols.add(proto)
        # `ready` resolves when the handshake completes and fails when the connection goes first.
        proto.session.ready.add_done_callback(lambda ready: self._handshake_over(proto, ready))
        return True

    def _evict(self, newcomer: PeerProtocol, made: Admitted[PeerProtocol], now: float) -> None:
        victim = made.evicted
        if victim is None or made.limit is None:
            return
        # Out of the count at once, not when its transport reports it lost (a loop turn later), so the
        # next connect of a burst sees the room this one made.
        self._protocols.discard(victim)
        victim.session.close_reason = f"evicted in its handshake for a newer connection ({made.limit})"
        victim.close_transport()
        COUNTERS.evicted(made.limit)
        if (left_out := self._evict_log.allow(now)) is not None:
            log.warning(
                "event=connection_evicted peer=%s reason=%s evicted_peer=%s evicted_age=%.1f left_out=%d",
                newcomer.peer_host,
                made.limit,
                made.evicted_host,
                made.evicted_age,
                left_out,
            )

    def _handshake_over(self, proto: PeerProtocol, ready: asyncio.Future[None]) -> None:
        self._admission.done(proto)
        if ready.cancelled() or ready.exception() is not None:
            COUNTERS.handshake_failures += 1

    def _ready(self, session: Session) -> None:
        if isinstance(session.proto, PeerProtocol):
            # Out of admission now, as the handshake completes: `ready`'s callbacks run a loop turn
            # later, and a newcomer accepted in between must not find this session evictable.
            self._admission.done(session.proto)
        # Verified: the address we dialed and completed the handshake at (whatever id answered there, it
        # is that node's), or for a peer that dialed us, its listen address on the host it came from.
        session.verified_addr = session.dialed or session.listen_addr_observed
        if session.agent.endswith(VERIFY_TAG) or session.verifying:
            # a verification dial (verify()): it only shows who answers at an address, and becomes no
            # session (so it is no duplicate of one either end has: that one stays as it is)
            session.close(0, "verified")
            return
        if session.peer_id == self.node_id:
            # We dialled ourselves through an address someone gossiped: remember it, never again.
            self._self_addrs.update(a for a in (session.listen_addr, session.dialed) if a)
            session.close(0, "self")
            return
        other = self.sessions.get(session.peer_id)
        # (one closing, after a GOAWAY, is no rival: the new one takes its place)
        if other is not None and other.usable:
            # Both sides dialled at once: keep the connection whose initiator has the smaller id, both ends.
            def initiator_id(s: Session) -> str:
                return self.node_id if s.initiator else s.peer_id

            keep, drop = (
                (other, session) if initiator_id(other) <= initiator_id(session) else (session, other)
            )
            drop.close(0, "duplicate connection")
            # the dropped one may be the one that verified the peer's address (our dial to it)
            keep.verified_addr = keep.verified_addr or drop.verified_addr
            if keep is other:
                return
        self.sessions[session.peer_id] = session
        self.changed.set()
        addr = session.address
        if session.verified_addr:  # only a verified address: a hello naming one must not lift its backoff
            self._backoff.pop(session.verified_addr, None)
        log.info(
            "event=peer_connected peer=%s addr=%s initiator=%s verified=%s",
            session.peer_id[:12],
            addr,
            session.initiator,
            session.verified_addr is not None,
        )
        self._spawn(self.events.on_ready(session))

    def _closed(self, session: Session) -> None:
        if self.sessions.get(session.peer_id) is session:
            del self.sessions[session.peer_id]
            self.changed.set()
            log.info("event=peer_disconnected peer=%s reason=%r", session.peer_id[:12], session.close_reason)
            self._spawn(self.events.on_closed(session))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        task = asyncio.get_running_loop().create_task(coro)
        self._bg_tasks.add(task)
        task.add_done_callback(self._bg_tasks.discard)

    # -- dialing -------------------------------------------------------------------------------------
    def connected_addrs(self) -> set[str]:
        """The verified addresses of the peers connected now (what a hello claims does not count: a
        member naming another's address must not keep us from dialing it)."""
        return {a for s in self.sessions.values() if (a := s.verified_addr)}

    def failed(self, addr: str) -> bool:
        """The last dial to `addr` failed (and none succeeded since)."""
        return addr in self._backoff

    def dial_soon(self, addr: str) -> bool:
        """Queue a dial to `addr` (rate-limited); False when it is this node, queued, in flight or
        connected already."""
        if addr in self._self_addrs or addr in self._queued or addr in self._dialing:
            log.debug("event=dial_skipped addr=%s why=self_queued_or_dialing", addr)
            return False
        if addr in self.connected_addrs():
            return False
        self._queued.add(addr)
        self._queue.put_nowait(addr)
        return True

    async def _dialer(self) -> None:
        interval = 1.0 / self.limits.dials_per_second
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            addr = await self._queue.get()
            self._queued.discard(addr)
            b = self._backoff.get(addr)
            if b is not None and b.not_before > loop.time():
                log.debug(
                    "event=dial_skipped addr=%s why=backoff left=%.1fs", addr, b.not_before - loop.time()
                )
                continue  # dialled again when it comes up again after its backoff
            if addr in self.connected_addrs() or addr in self._self_addrs:
                continue
            # Rate limit: at most dials_per_second new dials, at most max_dials_in_flight at once.
            self._next_dial = addr
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(loop.time(), next_at) + interval
            await self._dial_slots.acquire()
            log.debug("event=dialing addr=%s", addr)
            self._dialing.add(addr)
            self._next_dial = None
            self._spawn(self._dial(addr))

    async def connect(self, addr: str, node_id: str) -> Session | None:
        """A session to member `node_id` at `addr`, dialled now if there is none: what a request that
        needs that member does (node/links.py). Not through the dial queue, whose rate limit paces
        discovery: a caller dials only the few members it needs. None when the dial fails, the address
        is backing off after a failure, or another node answers there."""
        session = self.sessions.get(node_id)
        if (session is not None and session.usable) or addr in self._self_addrs or node_id == self.node_id:
            return session
        if self._backing_off(addr):
            return None
        loop = asyncio.get_running_loop()
        task = self._connecting.get(addr)
        if task is None:
            task = self._connecting[addr] = loop.create_task(self._connect_now(addr))
        await asyncio.shield(task)
        session = self.sessions.get(node_id)
        return session if session is not None and session.usable else None

    def _backing_off(self, addr: str) -> bool:
        """A dial to `addr` failed and its backoff period has not ended."""
        b = self._backoff.get(addr)
        return b is not None and b.not_before > asyncio.get_running_loop().time()

    async def verify(self, addr: str, node_id: str) -> bool:
        """Whether `node_id` answers at `addr`: a dial there whose handshake must complete with that id,
        closed at once; node/viewsync.py's vouches need one when the member has only dialled in. A failed
        one backs off as any dial does."""
        if node_id == self.node_id or addr in self._self_addrs or self._backing_off(addr):
            return False
        session = await self._try_dial(addr, verify=True)
        return session is not None and session.peer_id == node_id

    async def _connect_now(self, addr: str) -> None:
        self._dialing.add(addr)
        try:
            await self._try_dial(addr)
        finally:
            self._dialing.discard(addr)
            self._connecting.pop(addr, None)
            self.changed.set()

    async def _dial(self, addr: str) -> None:
        try:
            await self._try_dial(addr)
        finally:
            self._dialing.discard(addr)
            self._dial_slots.release()
            self.changed.set()

    async def _try_dial(self, addr: str, verify: bool = False) -> Session | None:
        loop = asyncio.get_running_loop()
        try:
            host, port = split_addr(addr, "127.0.0.1")
            deadline = self.limits.proto.handshake_timeout

            def dialing() -> PeerProtocol:
                proto = self._protocol(initiator=True, verify=verify)
                proto.session.dialed = addr if split_addr(addr)[0] else f"{host}:{port}"
                proto.session.verifying = verify
                return proto

            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation (gh-86296), and a
            # dial cancelled by close() would then connect after it.
            async with asyncio.timeout(deadline):
                _, proto = await loop.create_connection(dialing, host, port)
            async with asyncio.timeout(deadline):
                await asyncio.shield(proto.session.ready)
            return proto.session
        except (TimeoutError, OSError, PeerUnavailable, ConfigError) as exc:
            why = str(exc) or type(exc).__name__
            b = self._backoff.get(addr)
            delay = self.limits.backoff_min if b is None else min(b.delay * 2, self.limits.backoff_max)
            self._backoff[addr] = _Backoff(delay, loop.time() + delay)
            log.info("event=dial_failed addr=%s retry_in=%.1fs reason=%r", addr, delay, why)
            if self.events.on_dial_failed is not None:
                self._spawn(self.events.on_dial_failed(addr))
            return None
