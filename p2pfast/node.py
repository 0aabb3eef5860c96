"""The composition root: data dir + repo + store + the network. `p2pfast serve` runs Node.run().

The event loop never blocks on a file or on SQLite: repo calls go to one DB thread (the repo's owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from p2pfast import wire
from p2pfast.datadir import Layout, LocalNode
from p2pfast.errors import LocalProtocolError, PeerUnavailable, RemoteProtocolError, StorageError
from p2pfast.identity import Identity
from p2pfast.net import gossip
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerEvents, PeerManager
from p2pfast.net.session import Session
from p2pfast.store.durable import write_file_durably

log = logging.getLogger("p2pfast.node")
T = TypeVar("T")


class Node:
    def __init__(
        self,
        layout: Layout,
        identity: Identity,
        *,
        listen: str = ":3000",
        bootstrap: tuple[str, ...] = (),
        limits: NetLimits | None = None,
    ) -> None:
        self.layout = layout
        self.identity = identity
        self.node_id = identity.node_id
        self.listen = listen
        self.bootstrap = list(bootstrap)
        self.limits = limits or NetLimits()
        self.local: LocalNode | None = None
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pfast-db")
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
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

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> str:
        self.local = await self.db(LocalNode, self.layout)
        addr = await self.peers.listen(self.listen)
        self.peers.start()
        self._write_runtime_file(addr)
        log.info("event=listening addr=%s node=%s", addr, self.node_id)
        for a in self.bootstrap:
            self.peers.dial_soon(a)
        for a in await self._known_addrs():
            self.peers.dial_soon(a)
        self._tasks.append(asyncio.get_running_loop().create_task(self._maintain()))
        return addr

    def stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        sessions = list(self.peers.sessions.items())
        await self.peers.close()
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

    def _write_runtime_file(self, addr: str) -> None:
        # For tools and tests: which process serves this data dir, and where (port 0 binds a free port).
        info = {"pid": os.getpid(), "listen": addr, "node_id": self.node_id, "started": self.started}
        write_file_durably(self.layout.root, self.runtime_file, orjson.dumps(info), mode=0o644)

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
        try:
            known = await self._recent_peers()
        except StorageError as exc:
            log.warning("event=gossip_skipped peer=%s reason=%r", session.peer_id[:12], str(exc))
            return
        with contextlib.suppress(PeerUnavailable, LocalProtocolError):
            session.notify(gossip.pex_message(known, self.peers, exclude=session.peer_id))

    async def _on_closed(self, session: Session) -> None:
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
                known = await self._recent_peers()  # one query a round, not one per peer
                for session in list(self.peers.sessions.values()):
                    with contextlib.suppress(PeerUnavailable, LocalProtocolError):
                        session.notify(gossip.pex_message(known, self.peers, exclude=session.peer_id))
                wanted = [a for a, nid, _ in known if nid not in self.peers.sessions and nid != self.node_id]
                if not self.peers.sessions:
                    wanted = [*self.bootstrap, *await self._known_addrs()]
                for a in wanted:
                    self.peers.dial_soon(a)
                log.debug("event=gossip peers=%d redial=%d", len(self.peers.sessions), len(wanted))
            except StorageError as exc:
                log.warning("event=gossip_skipped reason=%r", str(exc))

    # -- requests from peers -------------------------------------------------------------------------
    async def handle(self, session: Session, msg: dict[str, Any]) -> dict[str, Any] | None:
        kind = msg["t"]
        if kind == "ping":
            return {"t": "pong"}
        if kind == "pex":
            fresh = gossip.new_peers(msg, self.peers)
            for addr, node_id, seen in fresh:
                await self.db(self.repo.learn_peer, addr, node_id, seen)
                self.peers.dial_soon(addr)
            return None
        if kind == "who_has":
            obj = await self.db(self.repo.get_object, msg["cid"])
            return {
                "t": "have",
                "cid": msg["cid"],
                "size": None if obj is None else obj.size,
                "segments": None if obj is None else obj.segments,
            }
        raise RemoteProtocolError(
            f"request {kind!r} is not served by this node yet", code=wire.ErrorCode.REFUSED
        )
