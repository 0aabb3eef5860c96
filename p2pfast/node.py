"""The composition root: data dir + repo + store + the network. `p2pfast serve` runs Node.run().

The event loop never blocks on a file or on SQLite: repo calls go to one DB thread (the repo's owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import blake3
import orjson

from p2pfast import wire
from p2pfast.counters import COUNTERS
from p2pfast.datadir import Layout, LocalNode
from p2pfast.errors import (
    IntegrityError,
    LocalProtocolError,
    NotFound,
    P2PError,
    PeerUnavailable,
    RemoteProtocolError,
    StorageError,
)
from p2pfast.front import clientio, status
from p2pfast.identity import Identity
from p2pfast.net import gossip, transfer
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerEvents, PeerManager
from p2pfast.net.session import Session
from p2pfast.store.durable import write_file_durably
from p2pfast.store.objects import ContentStore, PutResult, encode_key, show_key

log = logging.getLogger("p2pfast.node")
T = TypeVar("T")

# How long a delete is remembered, so a peer that was offline cannot bring the file back (config).
TOMBSTONE_GRACE = 7 * 86400.0
# who_has answers waited for, per peer, when looking for a holder.
LOOKUP_TIMEOUT = 10.0
# Tombstone requests in flight to a peer that just connected (below its MAX_INFLIGHT_REQUESTS, so the
# peer never has to stop reading for them).
TOMBSTONE_WINDOW = 16
# Input from a client's pipe collected while the DB thread seals the previous piece.
STREAM_CHUNK = 4 * 1024 * 1024
# After a drain's deadline, how long cancelled transfers get to unwind.
ABORT_TIMEOUT = 10.0


# The reports' fields are the `--json` results of store, get and delete (docs/cli.md): node ids are
# `peer_id`s, a list is named for what it holds and a count says it counts, keys are the exact string.
@dataclass(frozen=True, slots=True)
class StoreReport:
    key: str
    cid: str
    size: int
    deduplicated: bool
    replicated_to: list[str]  # peer ids that acknowledged a durable copy
    failed: dict[str, str]  # peer id -> why it holds no copy
    replica_target: int  # peers chosen as replicas


@dataclass(frozen=True, slots=True)
class GetReport:
    key: str
    cid: str
    size: int
    source: str  # "local" (this node's copy) or "peer" (fetched)
    peer_id: str | None = None  # with source "peer": the holder that served the most bytes
    kept: bool = False  # a local replica was stored (get --keep)
    holder_count: int = 0  # peers that served part of it (a get fetches from several at once)
    repaired: bool = False  # the local copy failed its check; a peer's verified copy replaced it


@dataclass(frozen=True, slots=True)
class DeleteReport:
    key: str
    cid: str
    local: bool  # this node held the file
    object_removed: bool  # its object went too (no other key here referred to it)
    confirmed_by: list[str]  # peer ids that confirmed the delete


class Progress(Protocol):
    """What a store or get reports its progress to (commands._Meter): bytes as they are done, in phases
    (docs/cli.md, "Progress")."""

    def __call__(self, n: int) -> None: ...

    def begin(self, phase: str, total: int | None, peers: int = 1) -> None: ...


def _main_source(served: dict[str, int], holders: list[Session]) -> str:
    """The holder a fetch names as its source: the one that served the most bytes (an empty object: the
    first asked)."""
    return max(served, key=lambda p: served[p]) if served else holders[0].peer_id


def _sized(progress: Progress | None) -> Callable[[int], None] | None:
    """For a fetch: once the holders' segment list gives the object's size, the get phase begins."""
    return None if progress is None else functools.partial(progress.begin, "get")


class _GroupWrite:
    """Rows from concurrent callers written in one transaction (group commit): the first caller queues a
    job on the DB thread; callers that come before that job starts join its batch. Each caller returns
    once its rows are committed. With 16 small stores in flight, their `shares` rows then cost a few
    transactions instead of 16."""

    def __init__(self, node: Node, write: Callable[[list[Any]], None]) -> None:
        self._node = node
        self._write = write
        self._lock = threading.Lock()  # the loop appends, the DB thread closes the batch
        self._rows: list[Any] = []
        self._job: asyncio.Future[None] | None = None

    async def add(self, rows: list[Any]) -> None:
        if not rows:
            return
        with self._lock:
            self._rows.extend(rows)
            job = self._job
            if job is None:
                job = self._job = asyncio.ensure_future(self._node.db(self._commit))
        await asyncio.shield(job)

    def _commit(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            self._job = None  # callers from now on start the next batch
        self._write(rows)


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
    ) -> None:
        self.layout = layout
        self.replicas = replicas  # None: every connected peer, as the original system does
        self.tombstone_grace = tombstone_grace
        self.max_object = max_object
        self.identity = identity
        self.node_id = identity.node_id
        self.listen = listen
        self.bootstrap = list(bootstrap)
        self.limits = limits or NetLimits()
        self.local: LocalNode | None = None
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pfast-db")
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._bg: set[asyncio.Task[Any]] = set()
        self._pex_from: set[str] = set()  # peers whose first peer exchange arrived
        self._pex_truncated_logged = False
        self._work: set[asyncio.Task[Any]] = set()  # transfers and commands in flight (drain waits)
        self.draining = False  # stopping: no new work is taken
        self.interrupted_store: StoreReport | None = None  # the last store cancelled while replicating
        self._runtime_info: dict[str, Any] = {}
        self._shares = _GroupWrite(self, lambda rows: self.repo.add_share_rows(rows))
        self.started = time.time()
        self.peers = PeerManager(
            node_id=self.node_id,
            static_key=identity.static_key,
            network_key=identity.network_key,
            limits=self.limits,
            handler=self.handle,
            events=PeerEvents(on_ready=self._on_ready, on_closed=self._on_closed),
        )

    # -- DB thread -----------------------------------------------------------------------------------
    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def db_later(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue fn on the DB thread without waiting: it runs after every job queued before it."""
        self._db.submit(fn, *args)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> str:
        self.local = await self.db(LocalNode, self.layout)
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
        self.peers.start()
        for a in self.bootstrap:
            self.peers.dial_soon(a)
        for a in await self._known_addrs():
            self.peers.dial_soon(a)
        self._tasks.append(asyncio.get_running_loop().create_task(self._maintain()))
        return addr

    def stop(self) -> None:
        self._stop.set()

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
                if session.listen_addr:
                    await self.db(self.repo.upsert_peer, session.listen_addr, peer_id, now, "disconnected")
            await self.db(self.local.close)
        self._db.shutdown(wait=True)

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
        return {
            **base,
            "running": True,
            "pid": os.getpid(),
            "version": __version__,
            "listen": self.peers.listen_addr or None,
            "uptime_s": round(time.time() - self.started, 1),
            "peers_connected": len(self.peers.sessions),
            "in_flight": len(self._work),
            "draining": self.draining,
        }

    # -- peers ---------------------------------------------------------------------------------------
    @property
    def repo(self) -> Any:
        assert self.local is not None
        return self.local.repo

    async def _known_addrs(self) -> list[str]:
        since = time.time() - self.limits.stale_after
        rows = await self.db(self.repo.list_peers, since)
        return [r.address for r in rows if r.node_id != self.node_id]

    async def _recent_peers(self) -> list[tuple[str, str, float]]:
        """(address, node id, last seen) of the peers seen within the gossip window."""
        rows = await self.db(self.repo.list_peers, time.time() - self.limits.gossip_window)
        return [(r.address, r.node_id or "", r.last_seen) for r in rows]

    async def _on_ready(self, session: Session) -> None:
        # Record first: this task's first repo write then precedes that of a later on_closed task for the
        # same peer (the DB thread runs them in order), so the table ends with the last word.
        await self._record(session, "connected")
        self._spawn(self._send_tombstones(session))
        try:
            known = await self._recent_peers()
        except StorageError as exc:
            log.warning("event=gossip_skipped peer=%s reason=%r", session.peer_id[:12], str(exc))
            return
        self._send_pex(session, known)

    def _send_pex(self, session: Session, known: list[tuple[str, str, float]]) -> None:
        msg, left_out = gossip.pex_message(known, self.peers, exclude=session.peer_id)
        if left_out and not self._pex_truncated_logged:
            self._pex_truncated_logged = True  # once per process: it stays true while the network is big
            log.warning(
                "event=pex_truncated sent=%d left_out=%d reason=%s",
                len(msg["peers"]),
                left_out,
                "the peer list is larger than one control message; the freshest entries go",
            )
        with contextlib.suppress(PeerUnavailable, LocalProtocolError):
            session.notify(msg)

    async def _on_closed(self, session: Session) -> None:
        self._pex_from.discard(session.peer_id)
        if self.local is not None and not self._stop.is_set():
            await self._record(session, "disconnected")

    async def _record(self, session: Session, status: str) -> None:
        addr = session.listen_addr
        if not addr:
            return
        try:
            await self.db(self.repo.upsert_peer, addr, session.peer_id, time.time(), status)
        except StorageError as exc:
            # A busy or failing repo must not stop the node talking to its peers; the next event records.
            log.warning(
                "event=peer_not_recorded peer=%s status=%s reason=%r", session.peer_id[:12], status, str(exc)
            )

    async def _maintain(self) -> None:
        """Every gossip interval: re-gossip to every peer, and dial the peers of the table (seen within
        the gossip window) that we are not connected to, so a peer exchange lost in a race heals by
        itself. When alone, go back to the bootstrap nodes too."""
        while True:
            await asyncio.sleep(self.limits.gossip_interval)
            try:
                # Connected peers are seen now: `cleanup --older-than` must never forget a live peer.
                live = [(s.listen_addr, p) for p, s in self.peers.sessions.items() if s.listen_addr]
                await self.db(self.repo.touch_peers, live, time.time())
                known = await self._recent_peers()  # one query a round, not one per peer
                for session in list(self.peers.sessions.values()):
                    self._send_pex(session, known)
                wanted = [a for a, nid, _ in known if nid not in self.peers.sessions and nid != self.node_id]
                if not self.peers.sessions:
                    wanted = [*self.bootstrap, *await self._known_addrs()]
                for a in wanted:
                    self.peers.dial_soon(a)
                expired = await self.db(self.repo.expire_tombstones, time.time() - self.tombstone_grace)
                log.debug(
                    "event=gossip peers=%d redial=%d tombstones_expired=%d",
                    len(self.peers.sessions),
                    len(wanted),
                    expired,
                )
            except StorageError as exc:
                log.warning("event=gossip_skipped reason=%r", str(exc))

    # -- requests from peers -------------------------------------------------------------------------
    @property
    def store(self) -> ContentStore:
        assert self.local is not None
        return self.local.store

    async def handle(self, session: Session, msg: dict[str, Any]) -> dict[str, Any] | None:
        kind = msg["t"]
        if kind == "ping":
            return {"t": "pong"}
        if kind == "pex":
            fresh = gossip.new_peers(msg, self.peers)
            for addr, node_id, seen in fresh:
                await self.db(self.repo.learn_peer, addr, node_id, seen)
                self.peers.dial_soon(addr)
            self._pex_from.add(session.peer_id)
            self.peers.changed.set()
            return None
        if kind == "who_has":
            return await self._who_has(msg)
        if kind in ("store", "get", "leaves"):
            return await self._transfer(session, kind, msg)
        if kind == "delete":
            changed, _ = await self._apply_delete(
                encode_key(msg["key"]), msg["cid"], float(msg["at"]), msg["origin"]
            )
            if changed:  # news to us: pass it on, so it reaches peers the origin is not connected to
                self._spawn(
                    self._propagate_delete(msg, exclude={session.peer_id, msg["origin"]}, forwarded=True)
                )
            return {"t": "ok"}
        raise RemoteProtocolError(f"request {kind!r} is not served by this node", code=wire.ErrorCode.REFUSED)

    async def _transfer(self, session: Session, kind: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        if self.draining:
            raise RemoteProtocolError(f"{self.node_id[:12]} is shutting down", code=wire.ErrorCode.REFUSED)
        ok = False
        try:
            with self.working(f"{kind} from {session.peer_id[:12]}"):
                if kind == "store":
                    # A store is a user's deliberate act, newer than any tombstone for its key: accept it.
                    # What a tombstone prevents is an old copy outliving its delete
                    # (Repo.delete_file_with_tombstone).
                    reply = await transfer.receive(session, msg, self.store, self.db, self.max_object)
                elif kind == "get":
                    reply = await transfer.serve_get(session, msg, self.store, self.db)
                else:
                    reply = await transfer.serve_leaves(session, msg, self.store, self.db)
            ok = True
            return reply
        finally:
            if kind != "leaves":
                COUNTERS.transfer("receive" if kind == "store" else "serve", ok)

    async def _who_has(self, msg: dict[str, Any]) -> dict[str, Any]:
        cid = msg.get("cid")
        if (cid is None) == (msg.get("key") is None):
            raise RemoteProtocolError("who_has needs exactly one of cid and key")
        if cid is None:
            row = await self.db(self.repo.get_file, encode_key(msg["key"]))
            cid = None if row is None else row.cid
        obj = None if cid is None else await self.db(self.repo.get_object, cid)
        return {
            "t": "have",
            "cid": cid if obj is not None else None,
            "size": None if obj is None else obj.size,
            "segments": None if obj is None else obj.segments,
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- store, get, delete: what the CLI asks for ---------------------------------------------------
    def replica_set(self, cid: str) -> list[Session]:
        """The peers a new object goes to: every connected peer, or with `replicas = N` the N connected
        peers ranked highest by rendezvous hashing of (cid, node id), so each object's placement is stable
        and spreads evenly without any coordination."""
        sessions = list(self.peers.sessions.values())
        if self.replicas is None or self.replicas >= len(sessions):
            return sessions
        ranked = sorted(
            sessions, key=lambda s: blake3.blake3(f"{cid}/{s.peer_id}".encode()).digest(), reverse=True
        )
        return ranked[: self.replicas]

    async def store_fd(self, key: str, fd: int, progress: Progress | None = None) -> StoreReport:
        """Store locally (durable), then replicate; returns who acknowledged a copy."""
        if clientio.is_stream(fd):
            result = await self._put_stream(key, fd, progress)
        else:
            result = await self.db(self.store.put_fd, key, fd, progress)
        targets = self.replica_set(result.cid)
        if progress is not None and targets:  # the second phase: what goes to the replicas
            progress.begin("replicate", result.size * len(targets), len(targets))
        outcome = transfer.StoreOutcome(result.cid, result.size)
        try:
            await transfer.replicate(
                targets,
                self.store,
                self.db,
                result.key,
                result.cid,
                result.size,
                result.plaintext,
                progress,
                outcome,
            )
        except asyncio.CancelledError:
            # Interrupted after the local copy is durable: the copies acknowledged so far count, and the
            # caller can say where the file is (the CLI with no daemon, on Ctrl-C).
            self.interrupted_store = StoreReport(
                show_key(result.key),
                result.cid,
                result.size,
                result.deduplicated,
                list(outcome.acked),
                dict(outcome.failed),
                len(targets),
            )
            log.info(
                "event=store_interrupted key=%s cid=%s replicas=%d/%d",
                show_key(result.key),
                result.cid,
                len(outcome.acked),
                len(targets),
            )
            if outcome.acked:
                await self._shares.add([(result.cid, peer, time.time()) for peer in outcome.acked])
            raise
        now = time.time()
        await self._shares.add([(result.cid, peer, now) for peer in outcome.acked])
        log.info(
            "event=stored key=%s cid=%s size=%d replicas=%d/%d",
            show_key(result.key),
            result.cid,
            result.size,
            len(outcome.acked),
            len(targets),
        )
        return StoreReport(
            result.key.decode(),
            result.cid,
            result.size,
            result.deduplicated,
            outcome.acked,
            outcome.failed,
            len(targets),
        )

    async def _put_stream(self, key: str, fd: int, progress: Any) -> PutResult:
        """put_fd for a pipe or socket: read on the loop (clientio), sealed on the DB thread. What has
        come in goes to the DB thread as soon as it is idle (a slow writer's bytes are sealed as they
        come, not held back), and while it is busy the input collects up to STREAM_CHUNK, so that
        memory stays bounded and a fast writer costs one DB-thread job per chunk."""
        clientio.widen(fd)
        upload = await self.db(self.store.begin, key, None, progress)
        pending = bytearray()
        eof = False
        reading: asyncio.Future[bytes] | None = None
        sealing: asyncio.Future[None] | None = None
        try:
            while True:
                if sealing is not None and sealing.done():
                    sealing.result()  # a failed seal (disk full, client gone) ends the store here
                    sealing = None
                if sealing is None and pending:
                    sealing = asyncio.ensure_future(self.db(upload.write, pending))
                    pending = bytearray()
                if eof and sealing is None:
                    break
                if reading is None and not eof and len(pending) < STREAM_CHUNK:
                    reading = asyncio.ensure_future(clientio.read_some(fd))
                waits = [f for f in (reading, sealing) if f is not None]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if reading is not None and reading.done():
                    chunk = reading.result()
                    reading = None
                    pending += chunk
                    eof = not chunk
            return await self.db(upload.finish)
        finally:
            for f in (reading, sealing):
                if f is not None:
                    f.cancel()
            self.db_later(upload.abort)  # after any write still queued; a no-op once finished

    async def locate(self, key: bytes) -> tuple[str, list[Session]]:
        """The content id under `key` and the connected peers that hold it, best first: those `shares`
        names, then the others that answer who_has."""
        sessions = list(self.peers.sessions.values())
        if not sessions:  # not "not found": nobody could be asked, and a peer may hold it (exit 10)
            raise PeerUnavailable(f"no file under key {show_key(key)} here, and no peer is connected to ask")

        async def ask(s: Session) -> dict[str, Any] | None:
            try:
                return await s.request({"t": "who_has", "key": key.decode()}, timeout=LOOKUP_TIMEOUT)
            except (P2PError, TimeoutError):
                return None

        replies = await asyncio.gather(*(ask(s) for s in sessions))
        by_cid: dict[str, list[Session]] = {}
        for s, reply in zip(sessions, replies, strict=True):
            if reply is not None and reply.get("cid") is not None:
                by_cid.setdefault(reply["cid"], []).append(s)
        if not by_cid:
            raise NotFound(f"no file under key {show_key(key)} on this node or its {len(sessions)} peers")
        cid = max(by_cid, key=lambda c: len(by_cid[c]))  # peers disagree only after a re-store raced
        shared = {r.peer for r in await self.db(self.repo.shares_for, cid)}
        holders = sorted(by_cid[cid], key=lambda s: s.peer_id not in shared)
        return cid, holders

    async def get_fd(
        self, key: str, out_fd: int, progress: Progress | None = None, keep: bool = False
    ) -> GetReport:
        """Write the plaintext of `key` to out_fd: from the local store, else verified from a peer; with
        `keep`, a fetched file is also stored here (a local replica, under this node's keys)."""
        raw = encode_key(key)
        try:
            _, cid, size = await self.db(self.store.stat, raw)
        except NotFound:
            pass
        else:
            if progress is not None:
                progress.begin("get", size)
            if clientio.is_stream(out_fd):
                await self._read_to_stream(raw, cid, size, out_fd, progress)
                return GetReport(key, cid, size, "local")
            start = os.lseek(out_fd, 0, os.SEEK_CUR)
            try:
                await self.db(self.store.read, raw, out_fd, 0, -1, progress)
            except IntegrityError as exc:
                return await self._repair(raw, cid, out_fd, start, progress, exc)
            return GetReport(key, cid, size, "local")
        cid, holders = await self.locate(raw)
        upload = await self.db(self.store.begin, raw) if keep else None
        try:
            size, served = await transfer.fetch(
                holders, cid, out_fd, self.db, progress, upload, _sized(progress)
            )
            source = _main_source(served, holders)
            if upload is not None:
                await self.db(upload.finish, cid, [source])  # its holder goes into shares with it
        finally:
            if upload is not None:
                self.db_later(upload.abort)  # after any job of the fetch; a no-op once finished
        return GetReport(key, cid, size, "peer", source, upload is not None, len(served))

    async def _repair(
        self,
        raw: bytes,
        cid: str,
        out_fd: int,
        start: int,
        progress: Progress | None,
        failure: IntegrityError,
    ) -> GetReport:
        """The local copy failed its check part way: take back what was written (the output is a file),
        fetch the object from the peers that hold it, verified, and put that copy in place of the bad
        one. With no peer to serve it, the integrity error stands. (To a pipe, what was written cannot be
        taken back: there the error stands at once.)"""

        def rewind() -> None:
            os.ftruncate(out_fd, start)
            os.lseek(out_fd, start, os.SEEK_SET)

        await self.db(rewind)
        try:
            found, holders = await self.locate(raw)
        except (NotFound, PeerUnavailable):
            raise failure from None  # nobody to repair it from: the one error line is the failure's
        if found != cid:  # the peers name other content under this key: not a copy of ours
            raise failure
        log.warning(
            "event=local_copy_corrupt key=%s cid=%s error=%r action=fetch_from_peers holders=%d",
            show_key(raw),
            cid,
            str(failure),
            len(holders),
        )
        upload = await self.db(self.store.begin, raw)
        try:
            size, served = await transfer.fetch(
                holders, cid, out_fd, self.db, progress, upload, _sized(progress)
            )
            await self.db(upload.finish_repair, cid)
        except P2PError as exc:
            log.warning("event=repair_failed key=%s cid=%s error=%r", show_key(raw), cid, str(exc))
            await self.db(rewind)
            raise failure from None
        finally:
            self.db_later(upload.abort)  # after any job of the fetch; a no-op once finished
        COUNTERS.integrity_failures += 1  # recovered from, so commands.py never sees it: counted here
        source = _main_source(served, holders)
        log.warning("event=local_copy_repaired key=%s cid=%s source=%s", show_key(raw), cid, source[:12])
        return GetReport(raw.decode(), cid, size, "peer", source, holder_count=len(served), repaired=True)

    async def _read_to_stream(self, key: bytes, cid: str, size: int, out_fd: int, progress: Any) -> None:
        """store.read for a pipe or socket: chunks decrypted and verified on the DB thread (the next one
        read while this one is written), written from the loop (clientio)."""
        out = clientio.Writer(out_fd)
        chunks = transfer.object_chunks(self.db, self.store, cid, 0, size, name=show_key(key))
        async with contextlib.aclosing(chunks) as source:
            async for data in source:
                await out.write(data)
                if progress is not None:
                    progress(len(data))

    async def delete(self, key: str) -> DeleteReport:
        """Delete locally (row, tombstone, then the object if unreferenced) and on every peer."""
        raw = encode_key(key)
        row = await self.db(self.repo.get_file, raw)
        if row is not None:
            cid = row.cid
        else:
            cid, _ = await self.locate(raw)
        at = time.time()
        _, orphaned = await self._apply_delete(raw, cid, at, self.node_id)
        msg = {"t": "delete", "key": raw.decode(), "cid": cid, "origin": self.node_id, "at": at}
        peers = await self._propagate_delete(msg, exclude=set())
        log.info(
            "event=deleted key=%s cid=%s local=%s peers=%d", show_key(raw), cid, row is not None, len(peers)
        )
        return DeleteReport(key, cid, row is not None, orphaned, peers)

    async def _apply_delete(self, key: bytes, cid: str, at: float, origin: str) -> tuple[bool, bool]:
        """Record the tombstone and drop the file (row first, then the object); returns (news to us,
        the object was removed). A file stored here after the delete happened (a re-store of the same
        key) stays: the delete only removes what existed when it was issued, as clocks allow
        (Repo.delete_file_with_tombstone)."""
        removed, orphaned, changed = await self.db(
            self.repo.delete_file_with_tombstone, key, cid, at, origin, time.time()
        )
        if orphaned:
            await self.db(self.store.unlink_orphan, removed)
        return removed is not None or changed, orphaned

    async def _propagate_delete(
        self, msg: dict[str, Any], exclude: set[str], forwarded: bool = False
    ) -> list[str]:
        """Send a delete to every connected peer but `exclude`; returns those that confirmed. A peer for
        which the delete is news forwards it (flooding, stopped by the tombstone), so a miss here is only
        worth a warning at the origin."""
        sessions = [s for s in self.peers.sessions.values() if s.peer_id not in exclude]
        level = logging.DEBUG if forwarded else logging.WARNING

        async def send(s: Session) -> str | None:
            try:
                await s.request(msg, timeout=LOOKUP_TIMEOUT)
                return s.peer_id
            except (P2PError, TimeoutError) as exc:
                log.log(level, "event=delete_not_confirmed peer=%s reason=%r", s.peer_id[:12], str(exc))
                return None

        return [p for p in await asyncio.gather(*(send(s) for s in sessions)) if p is not None]

    async def _send_tombstones(self, session: Session) -> None:
        """A peer that was offline hears about the deletes it missed (within the grace period). Up to
        TOMBSTONE_WINDOW requests are in flight at once: one at a time, a week of deletes took one
        round trip each, on every reconnect."""
        pending = iter(await self.db(self.repo.list_tombstones))

        async def sender() -> None:
            for t in pending:  # shared by the senders: each tombstone goes once
                msg = {
                    "t": "delete",
                    "key": t.key.decode(),
                    "cid": t.cid,
                    "origin": t.origin,
                    "at": t.deleted_at,
                }
                try:
                    await session.request(msg, timeout=LOOKUP_TIMEOUT)
                except (P2PError, TimeoutError):
                    return  # the peer went or does not answer: it hears the rest when it reconnects

        await asyncio.gather(*(sender() for _ in range(TOMBSTONE_WINDOW)))

    async def wait_settled(self, timeout: float) -> int:
        """Wait until the peer table stops growing (no dial queued or in flight, and every connected peer
        has sent its first peer exchange, which may name more peers) or `timeout` passes; returns the
        number of connected peers. A short-lived node (a CLI command with no daemon) calls this before
        storing, so its store reaches the whole network, not only the bootstrap node."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.peers.busy() or not set(self.peers.sessions) <= self._pex_from:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.peers.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: it can lose a cancellation (3.11)
                    await self.peers.changed.wait()
        return len(self.peers.sessions)
