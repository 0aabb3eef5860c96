"""The composition root: the data dir, the network and the node's services wired together, and their
lifecycle. `p2pfast serve` runs Node.run(); the CLI with no daemon starts a short-lived Node.

Each job has its own room: membership.py (peers table, gossip, redials), placement.py (who holds an
object), storing.py and replicate.py (a user's store and its fan-out), receive.py (a peer's store),
getting.py, lookup.py, fetch.py and readrepair.py (a user's get), serve.py (a peer's get), tombstones.py
(deletes), keymeta.py (each key's metadata on the members ranked for the key). router.py is the one
table from message kind to handler. The event loop never blocks on a file or on SQLite: that work goes
to the named threads of executors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from p2pfast import wire
from p2pfast.counters import COUNTERS
from p2pfast.datadir import Layout, LocalNode
from p2pfast.errors import P2PError, PeerUnavailable, RemoteProtocolError
from p2pfast.identity import Identity
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerEvents, PeerManager
from p2pfast.net.session import Session
from p2pfast.node import getting, placement, receive, serve, status
from p2pfast.node.context import Context
from p2pfast.node.executors import Executors
from p2pfast.node.keymeta import KeyMetaService
from p2pfast.node.links import IDLE, Links
from p2pfast.node.listing import NetworkListing, network_files, serve_list
from p2pfast.node.lookup import find_key, holders_and_size
from p2pfast.node.membership import Membership
from p2pfast.node.repair import Repair
from p2pfast.node.repair import Settings as RepairSettings
from p2pfast.node.reports import DeleteReport, FileStat, GetReport, Progress, StoreReport
from p2pfast.node.revocation import Revocations
from p2pfast.node.router import Router
from p2pfast.node.scrub import SCRUB_BANDWIDTH, SCRUB_PERIOD, Scrub, ScrubReport
from p2pfast.node.sources import Sink, Source
from p2pfast.node.storing import Storing
from p2pfast.node.tombstones import TOMBSTONE_GRACE, Tombstones
from p2pfast.node.viewsync import ViewSync
from p2pfast.proto import messages as m
from p2pfast.repo.repo import Repo
from p2pfast.store.durable import write_file_durably
from p2pfast.store.objects import ContentStore, encode_key, show_key

log = logging.getLogger("p2pfast.node")
T = TypeVar("T")

# After a drain's deadline, how long cancelled transfers get to unwind.
ABORT_TIMEOUT = 10.0


class Node:
    def __init__(
        self,
        layout: Layout,
        identity: Identity,
        *,
        listen: str | None = ":3000",
        bootstrap: tuple[str, ...] = (),
        limits: NetLimits | None = None,
        replicas: int | None = None,
        tombstone_grace: float = TOMBSTONE_GRACE,
        max_object: int | None = None,
        max_storage: int | None = None,
        repair: RepairSettings | None = None,
        scrub_bandwidth: int | None = SCRUB_BANDWIDTH,
        scrub_period: float = SCRUB_PERIOD,
    ) -> None:
        self.layout = layout
        self.replicas = replicas  # None: every connected peer, as the original system does
        self.tombstone_grace = tombstone_grace
        self.max_object = max_object
        self.max_storage = max_storage
        self.repair_settings = repair or RepairSettings()
        self.identity = identity
        self.node_id = identity.node_id
        self.listen = listen
        self.bootstrap = list(bootstrap)
        self.limits = limits or NetLimits()
        self.local: LocalNode | None = None
        self.ex = Executors()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._work: set[asyncio.Task[Any]] = set()  # transfers and commands in flight (drain waits)
        self.draining = False  # stopping: no new work is taken
        self._runtime_info: dict[str, Any] = {}
        self.started = time.time()
        self.peers = PeerManager(
            node_id=self.node_id,
            static_key=identity.static_key,
            network_key=identity.network_key,
            limits=self.limits,
            handler=self._handle,
            events=PeerEvents(
                on_ready=self._on_ready, on_closed=self._on_closed, on_dial_failed=self._on_dial_failed
            ),
        )
        # the services, made once the data dir is open (start)
        self.ctx: Context | None = None
        self.membership: Membership | None = None
        self.tombstones: Tombstones | None = None
        self.storing: Storing | None = None
        self.repair: Repair | None = None
        self.router: Router | None = None
        self.scrub_bandwidth, self.scrub_period = scrub_bandwidth, scrub_period
        self.scrub: Scrub | None = None
        self.viewsync: ViewSync | None = None
        self.links: Links | None = None
        self._met: set[str] = set()  # members with a session since their last link failure (_on_ready)
        self.revocations: Revocations | None = None
        self.keymeta: KeyMetaService | None = None

    # -- worker threads ------------------------------------------------------------------------------
    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.ex.db(fn, *args)

    def db_later(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue fn on the DB thread without waiting: it runs after every job queued before it."""
        self.ex.db_later(fn, *args)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> str:
        self.local = await self.db(LocalNode, self.layout)
        self.links = links = Links(self.node_id, self.peers, self.limits, bounded=self.replicas is not None)
        links.gone = lambda n: self.viewsync is not None and self.viewsync.gone(n)
        links.revoked = lambda n: self.revocations is not None and self.revocations.revoked(n)
        ctx = self.ctx = Context(
            node_id=self.node_id,
            layout=self.layout,
            local=self.local,
            ex=self.ex,
            peers=self.peers,
            limits=self.limits,
            replicas=self.replicas,
            max_object=self.max_object,
            tombstone_grace=self.tombstone_grace,
            spawn=self._spawn,
            working=self.working,
            draining=lambda: self.draining,
            links=links,
        )
        self.tombstones = Tombstones(ctx)
        self.membership = Membership(ctx, self.bootstrap, self.tombstones)
        self.keymeta = keymeta = KeyMetaService(ctx, self.repair_settings.interval)
        self.repair = Repair(ctx, self.repair_settings, keymeta)
        self.storing = Storing(ctx, on_stored=self.repair.after_store, keymeta=keymeta)
        self.router = router = Router()
        router.route(m.Ping, self._ping)
        router.route(m.Pex, self._pex)
        router.route(m.WhoHas, self._who_has)
        router.route(m.Store, self._receive)
        router.route(m.Get, self._serve_get)
        router.route(m.Leaves, self._serve_leaves)
        router.route(m.Delete, self.tombstones.on_delete)
        router.route(m.Holds, self._holds)
        router.route(m.ListFiles, self._list_files)
        # revocations are enforced before the first connection either way (node/revocation.py)
        self.revocations = Revocations(ctx, self.identity.static_key)
        await self.revocations.start()
        router.route(m.Revoked, self.revocations.on_revoked)
        router.route(m.NetKey, self.revocations.on_net_key)
        router.route(m.KeyMeta, keymeta.on_key_meta)
        addr = ""
        if self.listen is not None:  # None: a short-lived node that only dials out (CLI, no daemon)
            addr = await self.peers.listen(self.listen)
            # node.json's fields; the daemon writes the file once it is ready (set_runtime_info)
            self._runtime_info = {
                "pid": os.getpid(),
                "listen": addr,
                "node_id": self.node_id,
                "started": self.started,
            }
            log.info("event=listening addr=%s node=%s", addr, self.node_id)
        # the view begins with this node's own record, which needs the address just bound
        lim = self.limits
        self.viewsync = ViewSync(
            ctx,
            lim.gossip_interval,
            suspect_after=lim.suspect_after,
            dead_after=lim.dead_after,
            sign_key=self.revocations.sign_key,
        )
        links.view = self.viewsync.view
        if self.listen is not None:
            self.viewsync.on_gone = self.repair.member_gone
        router.route(m.ViewNews, self.viewsync.on_news)
        if self.listen is not None:  # a short-lived CLI node is no member: it answers no exchange (REFUSED)
            router.route(m.ViewSync, self.viewsync.on_sync)
            router.route(m.ViewPull, self.viewsync.on_pull)
            router.route(m.Probe, self.viewsync.on_probe)
        self.peers.start()
        await self.membership.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self.membership.maintain()))
        if self.listen is not None:  # a short-lived CLI node does not keep the network's copies
            self._tasks.append(asyncio.get_running_loop().create_task(self.repair.run()))
            self._tasks.append(asyncio.get_running_loop().create_task(self.viewsync.run()))
            self._tasks.append(asyncio.get_running_loop().create_task(links.run()))
        # The background scrub (scrub.py) runs in the daemon; a CLI command's short-lived node only
        # runs `scrub --now` when asked.
        self.scrub = Scrub(ctx, self.scrub_bandwidth, self.scrub_period)
        if self.listen is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.scrub.run()))
        return addr

    def stop(self) -> None:
        self._stop.set()
        if self.membership is not None:
            self.membership.closing = True

    @contextlib.contextmanager
    def working(self, what: str) -> Iterator[None]:
        """Mark the current task as work in flight, which a graceful stop lets finish (drain)."""
        if self.draining:
            raise PeerUnavailable(f"{self.node_id[:12]} is shutting down: {what} refused")
        task = asyncio.current_task()
        assert task is not None
        self._work.add(task)
        try:
            yield
        finally:
            self._work.discard(task)

    def in_flight(self) -> list[asyncio.Task[Any]]:
        return [t for t in self._work if not t.done()]

    async def drain(self, timeout: float) -> int:
        """Take no new work (no new connections, commands or transfers), let what is in flight finish
        for up to `timeout` seconds, then cancel the rest; returns how many were cancelled. A cancelled
        transfer aborts its upload, so no partial object remains (store/objects.py)."""
        self.draining = True
        self.peers.stop_listening()
        pending = {t for t in self._work if not t.done()}
        log.info("event=shutdown phase=drain in_flight=%d timeout=%s", len(pending), timeout)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        left = [t for t in self._work if not t.done()]
        for t in left:
            t.cancel()
        if left:
            # Bounded too: a cancelled transfer only unwinds (closes streams, queues its abort).
            await asyncio.wait(left, timeout=ABORT_TIMEOUT)
            log.warning("event=shutdown phase=abort aborted=%d reason=%s", len(left), "drain timeout")
        return len(left)

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        if self.viewsync is not None and self.listen is not None:
            self.viewsync.leave()  # before the sessions close: they carry the news
        if self.membership is not None:
            self.membership.closing = True
        for t in [*self._tasks, *self._bg]:
            t.cancel()
        for t in [*self._tasks, *self._bg]:
            with contextlib.suppress(asyncio.CancelledError, P2PError):
                await t
        sessions = list(self.peers.sessions.items())
        await self.peers.close()
        if self.listen is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.runtime_file)
        if self.local is not None:
            now = time.time()
            for peer_id, session in sessions:
                if session.address:
                    await self.db(self.repo.upsert_peer, session.address, peer_id, now, "disconnected")
            await self.db(self.local.close)
        self.ex.shutdown()

    async def run(self) -> None:
        try:
            await self.start()
            await self.wait_stopped()
        finally:
            await self.close()

    @property
    def runtime_file(self) -> Path:
        return self.layout.root / "node.json"

    def set_runtime_info(self, **extra: Any) -> None:
        """Write node.json, for tools and tests: which process serves this data dir, and where (port 0
        binds a free port), plus `extra` (the metrics address, say). The daemon writes it only once its
        control socket and metrics listener answer, so whoever finds it with a live pid can talk to the
        node at once (daemon.py); a node that is not a daemon (listen None) never writes it."""
        self._runtime_info.update(extra)
        write_file_durably(self.layout.root, self.runtime_file, orjson.dumps(self._runtime_info), mode=0o600)

    async def status(self) -> dict[str, Any]:
        """`p2pfast status`: the repo's part (status.of_repo) and what only the running node knows."""
        from p2pfast import __version__

        base = await self.db(status.of_repo, self.repo, self.layout, self.node_id, self.replicas)
        repair = None if self.repair is None else self.repair.status()
        if repair is not None and repair["last_pass"] is not None:
            # a pass counted every file's copies on the members: better than the shares estimate
            base["under_replicated"] = repair["last_pass"]["still_under_count"]
        return {
            **base,
            "repair": repair,
            "running": True,
            "pid": os.getpid(),
            "version": __version__,
            "listen": self.peers.listen_addr or None,
            "uptime_s": round(time.time() - self.started, 1),
            "peers_connected": len(self.peers.sessions),
            # the sessions it keeps once idle (node/links.py)
            "link_target": None if self.links is None else self.links.target(),
            # the membership view (node/viewsync.py): members by state, this node included
            "members": None if self.viewsync is None else self.viewsync.counts(),
            "in_flight": len(self._work),
            "draining": self.draining,
            # (the file's, read with the repo, until the scrub has loaded its state)
            "scrub": base["scrub"] if self.scrub is None or self.scrub.state is None else self.scrub.status(),
        }

    @property
    def repo(self) -> Repo:
        assert self.local is not None
        return self.local.repo

    @property
    def store(self) -> ContentStore:
        assert self.local is not None
        return self.local.store

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def _started(self) -> Context:
        assert self.ctx is not None, "Node.start() first"
        return self.ctx

    # -- what front ends ask for ---------------------------------------------------------------------
    async def put(self, key: str, source: Source, progress: Progress | None = None) -> StoreReport:
        """Store `source` under `key`: sealed here and durable, then replicated; returns who acknowledged
        a copy."""
        assert self.storing is not None and self.ctx is not None, "Node.start() first"
        with self.ctx.activity.user():
            return await self.storing.put(key, source, progress)

    async def get(
        self, key: str, sink: Sink, progress: Progress | None = None, keep: bool = False
    ) -> GetReport:
        """Write the verified plaintext of `key` to `sink`, from the local copy or the network."""
        ctx = self._started()
        with ctx.activity.user():
            return await getting.get(ctx, key, sink, progress, keep)

    async def stat(self, key: str) -> FileStat:
        """What `key` names (content id, size, when it was stored here), from this node's files or, when
        it holds none under that key, from the key's metadata or holders (lookup.py); NotFound else."""
        ctx = self._started()
        raw = encode_key(key)
        row = await self.db(self.repo.get_file, raw)
        if row is not None:
            return FileStat(key, row.cid, row.size, row.created, True)
        found = await find_key(ctx, raw)
        if found.size is None:  # every answer names a size; an older member's may not
            raise PeerUnavailable(f"the peers that know {show_key(key)} did not say its size: try again")
        return FileStat(key, found.cid, found.size, None, False)

    async def stat_object(self, cid: str) -> FileStat:
        """Object `cid`'s size (FileStat keyed by the cid itself), from this node's objects or from the
        peers that hold it (lookup.holders_and_size); NotFound when nobody does."""
        ctx = self._started()
        obj = await self.db(self.repo.get_object, cid)
        if obj is not None:
            return FileStat(cid, cid, obj.size, obj.created, True)
        _, size = await holders_and_size(ctx, cid)
        if size is None:
            raise PeerUnavailable(f"the peers that hold {cid} did not say its size: try again")
        return FileStat(cid, cid, size, None, False)

    async def read_range(self, cid: str, sink: Sink, start: int, end: int) -> None:
        """Bytes [start, end) of object `cid`, verified, from a copy here or the holders' segments that
        hold the range (getting.read_range)."""
        ctx = self._started()
        with ctx.activity.user():
            await getting.read_range(ctx, cid, sink, start, end)

    async def scrub_now(self, progress: Progress | None = None) -> ScrubReport:
        """One scrub pass over every local object, now (scrub.py): bad copies repaired from peers."""
        assert self.scrub is not None, "Node.start() first"
        return await self.scrub.now(progress)

    async def delete(self, key: str) -> DeleteReport:
        assert self.tombstones is not None, "Node.start() first"
        return await self.tombstones.delete(key)

    async def network_files(self) -> NetworkListing:
        """`files --network`: every file this node and its connected members hold, merged (listing.py)."""
        return await network_files(self._started())

    @property
    def interrupted_store(self) -> StoreReport | None:
        """The last store cancelled while replicating (what the CLI reports on Ctrl-C)."""
        return None if self.storing is None else self.storing.interrupted

    def replica_set(self, cid: str) -> list[Session]:
        """The connected peers a new object `cid` goes to (placement.py), when every member ranked for
        it is connected (a small network, or a test that made sure)."""
        return placement.replica_set(cid, list(self.peers.sessions.values()), self.replicas)

    async def wait_settled(self, timeout: float) -> int:
        assert self.membership is not None and self.viewsync is not None, "Node.start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        n = await self.membership.wait_settled(timeout)
        # and the view of the members it places and looks up by (one exchange with a member)
        if n and any(s.speaks("view") for s in self.peers.sessions.values()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self.viewsync.synced.wait()
        return n

    # -- what peers ask for (router.py's table) ------------------------------------------------------
    async def _handle(self, session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        assert self.router is not None  # set before the node listens or dials
        return await self.router(session, msg)

    async def _on_ready(self, session: Session) -> None:
        # Met again: a session to a member whose last one closed because idle (node/links.py opens and
        # closes them as requests need), not one that joined or came back. Such a session replays no
        # tombstones and starts no repair pass: it missed nothing, and a pass that opens sessions must
        # not trigger the next.
        fresh = session.peer_id not in self._met
        self._met.add(session.peer_id)
        if self.revocations is not None:
            self.revocations.on_ready(session)
        if self.membership is not None:
            await self.membership.on_ready(session, replay=fresh)
        if self.viewsync is not None and (self.listen is not None or not self.viewsync.synced.is_set()):
            self.viewsync.on_ready(session)  # a CLI node learns the view from its first member
        # A member met for the first time triggers a pass, while every member links to every other (in a
        # larger network most first meetings are a request's sessions: the periodic pass moves copies
        # onto joiners there)
        full_mesh = self.links is None or not self.links.partial()
        if self.repair is not None and self.listen is not None and fresh and full_mesh:
            self.repair.on_ready(session)
        if self.scrub is not None:
            self.scrub.peer_ready()  # it may hold a good copy of what the scrub could not repair

    async def _on_dial_failed(self, addr: str) -> None:
        if self.membership is not None:
            await self.membership.on_dial_failed(addr)

    async def _on_closed(self, session: Session) -> None:
        idle = session.close_reason == IDLE
        if not idle:
            self._met.discard(session.peer_id)
        if self.membership is not None:
            await self.membership.on_closed(session)
        if self.viewsync is not None and self.listen is not None and not self._stop.is_set():
            self.viewsync.on_closed(session)
        if self.repair is not None and self.listen is not None and not self._stop.is_set() and not idle:
            self.repair.on_closed(session)

    async def _ping(self, session: Session, msg: m.Ping) -> m.Pong:
        return m.Pong()

    async def _pex(self, session: Session, msg: m.Pex) -> None:
        assert self.membership is not None
        await self.membership.on_pex(session, msg)

    async def _who_has(self, session: Session, msg: m.WhoHas) -> m.Have:
        return await serve.who_has(msg, self.repo, self.db, meta=session.speaks("keymeta"))

    async def _list_files(self, session: Session, msg: m.ListFiles) -> m.FileList:
        return await serve_list(msg, self.repo, self.db, self.limits.proto.max_control_size)

    async def _receive(self, session: Session, msg: m.Store) -> m.Ok:
        # A store is a user's deliberate act, newer than any tombstone for its key: accept it. What a
        # tombstone prevents is an old copy outliving its delete (Repo.delete_file_with_tombstone), and a
        # repair copy is such a copy: receive() refuses it, and the sender hears of the delete.
        assert self.ctx is not None and self.repair is not None
        activity, pace = self.ctx.activity, self.repair.pace.when_busy

        async def run() -> m.Ok:
            if msg.repair:  # repair yields to users' transfers here, as the sender's does there
                return await receive.receive(
                    session, msg, self.store, self.db, self.max_object, self.max_storage, pace
                )
            with activity.user():
                return await receive.receive(
                    session, msg, self.store, self.db, self.max_object, self.max_storage
                )

        try:
            return await self._transfer(session, "store", run, counted="receive")
        except receive.Deleted as exc:
            assert self.tombstones is not None
            s = exc.stone
            self._spawn(self.tombstones.send(session, s.key, s.cid, s.deleted_at, s.origin))
            raise

    async def _holds(self, session: Session, msg: m.Holds) -> m.Held:
        return await serve.holds(msg, self.repo, self.db, pinned=session.speaks("held_pinned"))

    async def _serve_get(self, session: Session, msg: m.Get) -> m.Ok:
        assert self.ctx is not None
        activity = self.ctx.activity

        async def run() -> m.Ok:
            with activity.user():  # a peer's get serves a user there (or a scrub's repair)
                return await serve.serve_get(session, msg, self.store, self.db)

        return await self._transfer(session, "get", run, counted="serve")

    async def _serve_leaves(self, session: Session, msg: m.Leaves) -> m.Ok:
        async def run() -> m.Ok:
            return await serve.serve_leaves(session, msg, self.store, self.db)

        return await self._transfer(session, "leaves", run, counted=None)

    async def _transfer(
        self,
        session: Session,
        kind: str,
        run: Callable[[], Coroutine[Any, Any, m.Ok]],
        counted: str | None,
    ) -> m.Ok:
        """A peer's transfer, as work in flight that a graceful stop lets finish (or refused when
        stopping), counted in the metrics."""
        if self.draining:
            raise RemoteProtocolError(f"{self.node_id[:12]} is shutting down", code=wire.ErrorCode.REFUSED)
        ok = False
        try:
            with self.working(f"{kind} from {session.peer_id[:12]}"):
                reply = await run()
            ok = True
            return reply
        finally:
            if counted is not None:
                COUNTERS.transfer(counted, ok)
