"""Which members a node keeps sessions with, and the sessions a request opens (docs/protocol.md,
"Membership that scales").

* A bounded active set, after HyParView (Leitão, Pereira & Rodrigues 2007): a node keeps about
  `target(N)` = min(max_links - SLACK, ceil(log2 N) + 2) sessions open, to members taken at random
  from its membership view (its passive view: every member it knows, node/viewsync.py). It dials more
  when it has fewer and closes, once idle for `idle_close`, those beyond target + SLACK. A random graph
  whose degree stays above ln N is connected with high probability (Erdős & Rényi 1960), and news and
  anti-entropy run over these links only, so a node's links and its idle traffic grow with log N.
* On-demand sessions: a store, a get, a repair or a probe that needs a member it has no session to
  opens one (open(), by rank: the first `want` members that answer), which closes again once idle over
  the target. The close says "idle": the peer knows it was no failure (node/viewsync.py suspects a
  member only for a link that broke).
* Small networks are full meshes still: a network of up to target + 1 members has every node link to
  every other, as before. With `replicas = all` a store goes to every member, so there is no bound
  (target: max_connections).

Addresses: a member is dialled at the address this node or a member it heard it from verified (the peer
table, node/membership.py), else the one its view record advertises once another member vouched for it
(proto/view.py: the voucher dialled it and met that member there, and signed so), when it names a host (a
wildcard listen address names none). A member that advertises an address it does not listen on is never
vouched for, so nobody dials it from the view; a dial that fails backs off per address (net/peers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Sequence

from p2pfast.errors import P2PError
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerManager
from p2pfast.net.session import Session, wildcard_host
from p2pfast.proto import view

log = logging.getLogger("p2pfast.links")

# Sessions a node keeps beyond its target before it closes idle ones: room for the members that link to
# it while it links to others, so two nodes do not close and redial each other's links in turn.
SLACK = 4
# The reason an idle session closes with: the peer takes it for no failure.
IDLE = "idle"
# How often the links are checked: fill when short, close what is idle over the bound.
TICK = 1.0
# On-demand dials one open() makes at once (a repair pass may want many members).
DIALS_AT_ONCE = 16
# Idle seconds after which a session beyond max_links closes (beyond the target + SLACK: idle_close).
PRESSED = 2.0


# Wildcard hosts: a record with one names no address to dial.
def names_host(addr: str) -> bool:
    """Whether a listen address names a host to dial (a wildcard one names none)."""
    return bool(addr) and not wildcard_host(addr.rpartition(":")[0])


def _never(node_id: str) -> bool:
    return False


class Links:
    def __init__(
        self,
        node_id: str,
        peers: PeerManager,
        limits: NetLimits,
        bounded: bool,
        rnd: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.limits = limits
        self.bounded = bounded  # False with replicas = all: every member takes every store
        self.rnd = rnd or random.Random()
        self.view: view.View | None = None  # set once the view exists (root.py)
        self.gone: Callable[[str], bool] = _never
        self.revoked: Callable[[str], bool] = _never
        # node id -> address a member verified (this node, or the member whose peer exchange named it)
        self.addrs: dict[str, str] = {}
        self.opened = 0  # on-demand dials made (tests, bench/simulate.py)
        self.closed_idle = 0

    # -- who the members are ------------------------------------------------------------------------
    def members(self, feature: str | None = None) -> list[str]:
        """Serving members other than this node that may hold data: alive or suspect in the view, with
        an address, not revoked; and every connected serving peer (an older build has no view record).
        With `feature`, a connected peer only if its build speaks it (proto/features.py); a member in
        the view speaks the view, so every feature of the release that brought it."""
        sessions = self.peers.sessions
        out = dict.fromkeys(
            s.peer_id
            for s in sessions.values()
            if s.hello.get("listen") and (feature is None or s.speaks(feature))
        )
        if self.view is not None:
            for r in self.view:
                nid = r.node_id
                if nid == self.node_id or r.gone or not r.addr or self.revoked(nid):
                    continue
                s = sessions.get(nid)
                if s is None or feature is None or s.speaks(feature):  # a connected one says what it speaks
                    out[nid] = None
        return list(out)

    def away(self, since: float) -> set[str]:
        """Members of the view this node has no session to that are alive or suspect, or went (died,
        left) at or after `since` (Unix time): a repair pass counts their copies (node/repair.py)."""
        if self.view is None:
            return set()
        sessions = self.peers.sessions
        return {
            r.node_id
            for r in self.view
            if r.node_id != self.node_id and r.node_id not in sessions and (not r.gone or r.at >= since)
        }

    def count(self) -> int:
        """Members this node knows, itself included (what target() is of)."""
        if self.view is None:
            return len(self.peers.sessions) + 1
        # dead and left members count until forgotten: O(1), and the target moves by log2 of it only
        return max(len(self.peers.sessions) + 1, len(self.view))

    def target(self) -> int:
        """Sessions to keep open: ceil(log2 N) + 2, at most max_links - SLACK (16 - 4 = 12 at 1000
        members); unbounded with replicas = all."""
        lim = self.limits
        if not self.bounded:
            return lim.max_connections
        n = self.count()
        return max(1, min(lim.max_links - SLACK, math.ceil(math.log2(max(n, 2))) + 2))

    def partial(self) -> bool:
        """More other members than this node keeps sessions with once idle: no full mesh."""
        return self.count() - 1 > self.target() + SLACK

    def addr_of(self, node_id: str) -> str | None:
        s = self.peers.sessions.get(node_id)
        if s is not None and s.address:
            return s.address
        known = self.addrs.get(node_id)
        if known:
            return known
        r = None if self.view is None else self.view.get(node_id)
        # the record's address only when another member vouched for it (proto/view.py): its owner's
        # word alone sends nobody anywhere
        if r is not None and r.voucher and not self.revoked(r.voucher) and names_host(r.addr):
            return r.addr
        return None

    # -- on-demand sessions -------------------------------------------------------------------------
    async def connect(self, node_id: str) -> Session | None:
        """A session to `node_id`: the open one, else one dialled now; None when it cannot be had (no
        address known, revoked, or gone in the view: a dead member is dialled no more)."""
        s = self.peers.sessions.get(node_id)
        if s is not None and s.usable:
            return s
        addr = self.addr_of(node_id)
        if addr is None or self.revoked(node_id) or self.gone(node_id):
            return None
        self.opened += 1
        try:
            return await self.peers.connect(addr, node_id)
        except P2PError:
            return None

    async def open(self, ranked: Sequence[str], want: int) -> list[Session]:
        """Sessions to the first `want` members of `ranked` that can be reached, in its order, dialling
        those not connected (up to DIALS_AT_ONCE at a time); then every other connected member of
        `ranked`, in its order too (a spare costs nothing when a session is open already)."""
        got: dict[str, Session] = {}
        sessions = self.peers.sessions
        i = 0
        while i < len(ranked) and len(got) < want:
            batch: list[str] = []
            while i < len(ranked) and len(got) + len(batch) < want and len(batch) < DIALS_AT_ONCE:
                nid = ranked[i]
                i += 1
                if nid == self.node_id:
                    continue
                s = sessions.get(nid)
                if s is not None and s.usable:
                    got[nid] = s
                elif self.addr_of(nid) is not None:  # connect() says whether it may be dialled
                    batch.append(nid)
            if batch:
                for nid, s2 in zip(
                    batch, await asyncio.gather(*(self.connect(n) for n in batch)), strict=True
                ):
                    if s2 is not None and s2.usable:
                        got[nid] = s2
        for nid in ranked[i:]:
            s = sessions.get(nid)
            if s is not None and s.usable and nid not in got:
                got[nid] = s
        order = {nid: k for k, nid in enumerate(ranked)}
        return sorted(got.values(), key=lambda s: order[s.peer_id])

    # -- the active set -----------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK * (0.5 + self.rnd.random()))  # jitter: no lockstep across nodes
            self.tick(asyncio.get_running_loop().time())

    def tick(self, now: float) -> None:
        target = self.target()
        sessions = self.peers.sessions
        if len(sessions) < target:
            self._fill(target - len(sessions))
        elif len(sessions) > target:
            self._trim(now, target)

    def _fill(self, need: int) -> None:
        if self.view is None:
            return
        candidates = [
            r.node_id
            for r in self.view
            if r.state == view.State.ALIVE
            and r.node_id != self.node_id
            and r.node_id not in self.peers.sessions
            and not self.revoked(r.node_id)
        ]
        self.rnd.shuffle(candidates)
        # Not one whose last dial failed: it may have died, and the view will say so soon (each such
        # dial would be one more to a dead member, from every node short of links).
        for nid in candidates:
            if need <= 0:
                break
            addr = self.addr_of(nid)
            if addr is not None and not self.peers.failed(addr):
                self.peers.dial_soon(addr)
                need -= 1

    def _trim(self, now: float, target: int) -> None:
        """Close sessions idle for idle_close beyond target + SLACK (a session idle that long beyond the
        target but within the slack stays: a link another member keeps to this one), and those idle for
        PRESSED beyond max_links: a node that many members joined through (a bootstrap node) sheds them
        as soon as their first exchanges are over, as HyParView drops a link when its active view is
        full, and they link to others from the view they learnt."""
        if not self.bounded:
            return
        sessions = list(self.peers.sessions.values())
        lim = self.limits
        for keep, after in ((lim.max_links, PRESSED), (target + SLACK, lim.idle_close)):
            excess = len(sessions) - keep
            if excess <= 0:
                continue
            idle = [s for s in sessions if s.idle_for(now) >= after]
            # the newest go first: the oldest links are the overlay's, the newest a request's
            idle.sort(key=lambda s: -s.active_at)
            shut = idle[:excess]
            for s in shut:
                self.closed_idle += 1
                log.debug("event=link_closed peer=%s reason=idle links=%d", s.peer_id[:12], len(sessions))
                with contextlib.suppress(P2PError):
                    s.close(0, IDLE)
            sessions = [s for s in sessions if s not in shut]
