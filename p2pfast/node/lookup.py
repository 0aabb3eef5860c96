"""Finding who holds a file: every connected peer is asked `who_has` for the key, and the holders of
the content id most of them name come back best first (those `shares` records as holders first)."""

from __future__ import annotations

import asyncio

from p2pfast.errors import NotFound, P2PError, PeerUnavailable
from p2pfast.net.session import Session
from p2pfast.node.context import Context
from p2pfast.proto import messages as m
from p2pfast.store.objects import show_key

# who_has answers waited for, per peer, when looking for a holder.
LOOKUP_TIMEOUT = 10.0


async def locate(ctx: Context, key: bytes) -> tuple[str, list[Session]]:
    """The content id under `key` and the connected peers that hold it, best first."""
    sessions = list(ctx.peers.sessions.values())
    if not sessions:  # not "not found": nobody could be asked, and a peer may hold it (exit 10)
        raise PeerUnavailable(f"no file under key {show_key(key)} here, and no peer is connected to ask")

    async def ask(s: Session) -> m.Have | None:
        try:
            return await s.request(m.WhoHas(key=key.decode()), timeout=LOOKUP_TIMEOUT)
        except (P2PError, TimeoutError):
            return None

    replies = await asyncio.gather(*(ask(s) for s in sessions))
    by_cid: dict[str, list[Session]] = {}
    for s, reply in zip(sessions, replies, strict=True):
        if reply is not None and reply.cid is not None:
            by_cid.setdefault(reply.cid, []).append(s)
    if not by_cid:
        raise NotFound(f"no file under key {show_key(key)} on this node or its {len(sessions)} peers")
    cid = max(by_cid, key=lambda c: len(by_cid[c]))  # peers disagree only after a re-store raced
    shared = {r.peer for r in await ctx.ex.db(ctx.repo.shares_for, cid)}
    holders = sorted(by_cid[cid], key=lambda s: s.peer_id not in shared)
    return cid, holders


async def holders_of(ctx: Context, cid: str) -> list[Session]:
    """The connected peers that say they hold the object `cid` (`who_has` by content id), those `shares`
    records as holders first; empty when none does or no peer is connected."""
    sessions = list(ctx.peers.sessions.values())

    async def ask(s: Session) -> m.Have | None:
        try:
            return await s.request(m.WhoHas(cid=cid), timeout=LOOKUP_TIMEOUT)
        except (P2PError, TimeoutError):
            return None

    replies = await asyncio.gather(*(ask(s) for s in sessions))
    holders = [s for s, r in zip(sessions, replies, strict=True) if r is not None and r.cid == cid]
    shared = {r.peer for r in await ctx.ex.db(ctx.repo.shares_for, cid)} if holders else set()
    return sorted(holders, key=lambda s: s.peer_id not in shared)
