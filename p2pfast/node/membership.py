"""Who the node knows and talks to: the peers table kept up to date as sessions come and go, peer
exchange on connect and every gossip interval (net/gossip.py builds and reads the messages), redials of
known peers, and the wait for a short-lived node's peer table to settle.

Addresses (docs/protocol.md, Discovery): the table says which addresses this node verified itself (it
completed a handshake there, or the peer connected from the host it advertises). Only those are sent in a
peer exchange and redialled every round; one merely heard of is dialled when heard (the dialer's backoff
bounds how often), which verifies it or, if the dial fails, leaves it out of every exchange."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from p2pfast.errors import LocalProtocolError, PeerUnavailable, StorageError
from p2pfast.net import gossip
from p2pfast.net.session import Session
from p2pfast.node import links
from p2pfast.node.context import Context
from p2pfast.node.tombstones import Tombstones
from p2pfast.proto import messages as m
from p2pfast.repo.repo import PeerRow

log = logging.getLogger("p2pfast.node")

# Entries of a peer exchange to a member that speaks the view: it learns the members from the view, and
# a sample this size, sent on connect and to one member a round, keeps their addresses fresh.
PEX_SAMPLE = 16


class Membership:
    def __init__(
        self,
        ctx: Context,
        bootstrap: list[str],
        tombstones: Tombstones,
    ) -> None:
        self.ctx = ctx
        self.bootstrap = bootstrap
        self.tombstones = tombstones
        # Dials ask ctx.links.gone, whether the membership view (node/viewsync.py) says a member died or
        # left: it is not redialled every round (a dead member's address would take a dial every backoff
        # period from every node); one that comes back dials its known peers itself, and its new
        # incarnation makes it alive again. Once every dead_retry, one gone member taken at random is
        # tried all the same: after a partition, where each side declared the other dead, one such dial
        # is enough to merge the views. And ctx.links.revoked: a revoked member (node/revocation.py) is
        # never dialled, every dial would be refused.
        self.rounds = 0  # gossip rounds done (tests wait for rounds, not for time)
        self._retry_at = 0.0  # the first round with a gone member may try one at once
        self._pex_from: set[str] = set()  # peers whose first peer exchange arrived
        self._pex_truncated_logged = False
        self.closing = False  # the node is closing: a session that closes now is recorded by close()
        # Whether a session with a bootstrap node was had (a node with none is its own network's
        # first), the next attempt to get one or, once alone, any session (_retry_join), and the wait
        # before it
        self._joined = not bootstrap
        self._rejoin: asyncio.TimerHandle | None = None
        self._rejoin_delay = ctx.limits.backoff_min

    async def start(self) -> None:
        """Dial the bootstrap nodes and the peers the table knows (as many as the link target takes:
        node/links.py; the bootstrap nodes first)."""
        await self._dial_known()

    async def _dial_known(self) -> int:
        """start()'s dials, and those of a node left alone (_dial_again); returns how many were queued."""
        ctx = self.ctx
        rows = await self._known_rows()
        for r in rows:
            if r.verified and r.node_id:
                ctx.links.addrs.setdefault(r.node_id, r.address)
        known = self._addrs(rows)
        random.shuffle(known)
        wanted = [*self.bootstrap, *known[: max(0, ctx.links.target() - len(self.bootstrap))]]
        return sum(ctx.peers.dial_soon(a) for a in wanted)

    async def known_addrs(self) -> list[str]:
        return self._addrs(await self._known_rows())

    async def _known_rows(self) -> list[PeerRow]:
        """The peers table's rows seen within `stale_after`."""
        ctx = self.ctx
        return await ctx.ex.db(ctx.repo.list_peers, time.time() - ctx.limits.stale_after)

    def _addrs(self, rows: list[PeerRow]) -> list[str]:
        """Their addresses worth a dial: not this node's, not a revoked member's."""
        ctx = self.ctx
        return [
            r.address for r in rows if r.node_id != ctx.node_id and not ctx.links.revoked(r.node_id or "")
        ]

    async def recent_peers(self) -> list[tuple[str, str, float]]:
        """(address, node id, last seen) of the peers seen within the gossip window at an address this
        node verified, and no dial there failed since: what it may gossip."""
        return _verified(await self._recent_rows())

    async def _recent_rows(self) -> list[PeerRow]:
        ctx = self.ctx
        return await ctx.ex.db(ctx.repo.list_peers, time.time() - ctx.limits.gossip_window)

    async def _sample_rows(self, n: int, failed: bool = False) -> list[PeerRow]:
        """Up to `n` of the rows _recent_rows would give at a verified address, at random."""
        ctx = self.ctx
        return await ctx.ex.db(ctx.repo.sample_peers, time.time() - ctx.limits.gossip_window, n, failed)

    async def on_ready(self, session: Session, replay: bool = True) -> None:
        # Record first: this task's first repo write then precedes that of a later on_closed task for the
        # same peer (the DB thread runs them in order), so the table ends with the last word.
        if session.dialed in self.bootstrap or session.address in self.bootstrap:
            self._joined = True
        if self._joined:  # the next time it is alone starts afresh
            self._rejoin_delay = self.ctx.limits.backoff_min
        await self.record(session, "connected")
        if not replay:  # a member met again after an idle close: it missed nothing meanwhile
            return
        self.ctx.spawn(self.tombstones.replay(session))
        try:
            if session.speaks("view"):  # a sample, read as one: not the whole table per session
                known = _verified(await self._sample_rows(PEX_SAMPLE))
            else:
                known = await self.recent_peers()
        except StorageError as exc:
            log.warning("event=gossip_skipped peer=%s reason=%r", session.peer_id[:12], str(exc))
            return
        self._send_pex(session, known)

    async def on_closed(self, session: Session) -> None:
        self._pex_from.discard(session.peer_id)
        self._retry_join()
        if not self.closing:
            await self.record(session, "disconnected")

    async def on_dial_failed(self, addr: str) -> None:
        """Not verified any more: the address leaves this node's peer exchange until a handshake there."""
        if self.closing:
            return  # a dial the close cut short: the repo may be closed already
        ctx = self.ctx
        self._retry_join()
        try:
            await ctx.ex.db(ctx.repo.peer_dial_failed, addr, time.time())
        except StorageError as exc:
            log.warning("event=peer_not_recorded addr=%s status=dial_failed reason=%r", addr, str(exc))

    def _retry_join(self) -> None:
        """Until this node reached one of its bootstrap nodes, and whenever it has no session left, try
        again after 1, 2, 4 … s, at most a gossip interval, rather than at the next gossip round: the
        bootstrap nodes may have been down, or too busy to finish a handshake in time (a network that
        boots at once), and a node that has sessions only to members that joined through it, none of
        which reached the network either, is an island that would stay one. One attempt per period."""
        if self.closing or self._rejoin is not None or (self._joined and self.ctx.peers.sessions):
            return
        delay = self._rejoin_delay
        self._rejoin_delay = min(2 * delay, self.ctx.limits.gossip_interval)
        self._rejoin = asyncio.get_running_loop().call_later(delay, self._try_again)

    def _try_again(self) -> None:
        self._rejoin = None
        if not self.closing:
            self.ctx.spawn(self._dial_again())

    async def _dial_again(self) -> None:
        ctx = self.ctx
        if self.closing or (self._joined and ctx.peers.sessions):
            return
        if ctx.peers.sessions:  # an island: only the bootstrap nodes lead to the network
            queued = sum(ctx.peers.dial_soon(a) for a in self.bootstrap)
        else:  # alone: as at start, any member it knows will do as well
            queued = await self._dial_known()
        log.debug("event=rejoin dials=%d joined=%s", queued, self._joined)
        # a dial that fails asks again (on_dial_failed); the dialer's backoff per address holds too
        if not queued:
            self._retry_join()

    async def on_pex(self, session: Session, msg: m.Pex) -> None:
        """A peer's peer exchange: new peers recorded (unverified, unless this node verified them) and
        dialled, which verifies them; the dialer's backoff bounds the dials to one address however often
        it is heard."""
        ctx = self.ctx
        heard = gossip.new_peers(msg, ctx.peers)
        if heard:  # one transaction (and one hop to the DB thread) for the whole exchange
            await ctx.ex.db(ctx.repo.learn_peers, heard)
        # dial only what the link target and its slack lack (sessions within them are not closed idle,
        # so a small network is still a full mesh), counting the dials already on their way: a joiner
        # hears a sample from each member it reaches, and dialling every one of them, then closing the
        # extra sessions once idle, would cost each of those members a handshake per join (links.py)
        room = ctx.links.target() + links.SLACK - len(ctx.peers.sessions) - ctx.peers.pending()
        for addr, node_id, _ in random.sample(heard, len(heard)):
            # named by a member that verified it: where a session to it is dialled (node/links.py)
            ctx.links.addrs[node_id] = addr
            wanted = room > 0 and not ctx.links.gone(node_id) and not ctx.links.revoked(node_id)
            if wanted and ctx.peers.dial_soon(addr):
                room -= 1
        self._pex_from.add(session.peer_id)
        ctx.peers.changed.set()

    def _send_pex(self, session: Session, known: list[tuple[str, str, float]]) -> None:
        sample = PEX_SAMPLE if session.speaks("view") else None
        msg, left_out = gossip.pex_message(known, self.ctx.peers, exclude=session.peer_id, sample=sample)
        if left_out and sample is None and not self._pex_truncated_logged:
            self._pex_truncated_logged = True  # once per process: it stays true while the network is big
            log.warning(
                "event=pex_truncated sent=%d left_out=%d reason=%s",
                len(msg.peers),
                left_out,
                "the peer list is larger than one control message; the freshest entries go",
            )
        with contextlib.suppress(PeerUnavailable, LocalProtocolError):
            session.notify(msg)

    async def record(self, session: Session, status: str) -> None:
        addr = session.address
        if not addr:
            return
        ctx = self.ctx
        verified = status == "connected" and addr == session.verified_addr
        if verified:
            ctx.links.addrs[session.peer_id] = addr
        try:
            await ctx.ex.db(ctx.repo.upsert_peer, addr, session.peer_id, time.time(), status, verified)
        except StorageError as exc:
            # A busy or failing repo must not stop the node talking to its peers; the next event records.
            log.warning(
                "event=peer_not_recorded peer=%s status=%s reason=%r", session.peer_id[:12], status, str(exc)
            )

    async def maintain(self) -> None:
        """Every gossip interval: re-gossip to every peer, and dial the peers of the table (seen within
        the gossip window) that we are not connected to, so a peer exchange lost in a race heals by
        itself. When alone, go back to the bootstrap nodes too."""
        ctx = self.ctx
        peers = ctx.peers
        while True:
            await asyncio.sleep(ctx.limits.gossip_interval)
            try:
                # Connected peers are seen now: `cleanup --older-than` must never forget a live peer.
                live = [(a, p, a == s.verified_addr) for p, s in peers.sessions.items() if (a := s.address)]
                await ctx.ex.db(ctx.repo.touch_peers, live, time.time())
                # Every peer of an older build (it learns members from nothing else), one member of the
                # view at random (HyParView's shuffle: the view spreads members, a sample heals the rest)
                old = [s for s in peers.sessions.values() if not s.speaks("view")]
                new = [s for s in peers.sessions.values() if s.speaks("view")]
                # one query a round, not one per peer; with no older build connected, a sample (the
                # pex sample and the redials below need no more, and the table holds every member)
                if old:
                    rows = await self._recent_rows()
                else:
                    rows = await self._sample_rows(PEX_SAMPLE + 2 * ctx.links.target(), failed=True)
                known = _verified(rows)
                for session in [*old, *random.sample(new, min(1, len(new)))]:
                    self._send_pex(session, known)
                # Members this node reached before (even if a dial there failed since: one that comes
                # back is found again); an address only heard of was dialled when heard, not every round.
                wanted: list[str] = []
                dead: list[str] = []
                for r in rows:
                    nid = r.node_id or ""
                    if (
                        r.verified_at is None
                        or nid in peers.sessions
                        or nid == ctx.node_id
                        or ctx.links.revoked(nid)
                    ):
                        continue
                    (dead if ctx.links.gone(nid) else wanted).append(r.address)
                # only as many as the link target lacks (node/links.py fills from the view as well)
                random.shuffle(wanted)
                wanted = wanted[: max(0, ctx.links.target() - len(peers.sessions))]
                now = time.monotonic()
                if dead and now >= self._retry_at:
                    self._retry_at = now + ctx.limits.dead_retry
                    wanted.append(random.choice(dead))
                if not peers.sessions:
                    wanted = [*self.bootstrap, *await self.known_addrs()]
                for a in wanted:
                    peers.dial_soon(a)
                self.rounds += 1
                expired = await self.tombstones.expire()
                log.debug(
                    "event=gossip peers=%d redial=%d tombstones_expired=%d",
                    len(peers.sessions),
                    len(wanted),
                    expired,
                )
            except StorageError as exc:
                log.warning("event=gossip_skipped reason=%r", str(exc))

    async def wait_settled(self, timeout: float) -> int:
        """Wait until the peer table stops growing (no dial queued or in flight, and every connected peer
        has sent its first peer exchange, which may name more peers) or `timeout` passes; returns the
        number of connected peers. A short-lived node (a CLI command with no daemon) calls this before
        storing, so its store reaches the whole network, not only the bootstrap node."""
        peers = self.ctx.peers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while peers.busy() or not set(peers.sessions) <= self._pex_from:
            left = deadline - loop.time()
            if left <= 0:
                break
            peers.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # not wait_for: it can lose a cancellation (3.11)
                    await peers.changed.wait()
        return len(peers.sessions)


def _verified(rows: list[PeerRow]) -> list[tuple[str, str, float]]:
    return [(r.address, r.node_id or "", r.last_seen) for r in rows if r.verified]
