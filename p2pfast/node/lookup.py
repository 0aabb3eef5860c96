"""Finding who holds a file: every connected peer is asked `who_has` for the key, and the holders of
the content id most of them name come back best first (those `shares` records as holders first). For a
get by content id, `who_has` names the cid itself (`holders_of`), and goes first to the members
placement ranks highest for it, the ones a store or a repair put it on: only when none of those holds
it are the others asked (docs/protocol.md, "Membership that scales": O(replicas) contacts, not N)."""

from __future__ import annotations

import asyncio

from p2pfast.errors import NotFound, P2PError, PeerUnavailable
from p2pfast.net.session import Session
from p2pfast.node import placement
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

    replies = await _ask_all(sessions, m.WhoHas(key=key.decode()))
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


async def holders_of(ctx: Context, cid: str) -> tuple[str, list[Session]]:
    """`cid` and the connected peers that hold that object, best first: as `locate`, for a get by content
    id. A peer that names another object is not a holder (it would fail the leaves check anyway). The
    `first_asked(ctx)` best-ranked peers are asked first; the rest only if none of them holds it."""
    sessions = placement.ranked(cid, list(ctx.peers.sessions.values()))
    if not sessions:
        raise PeerUnavailable(f"object {cid} is not held here, and no peer is connected to ask")
    found: list[Session] = []
    first = first_asked(ctx)
    for group in (sessions[:first], sessions[first:]):
        if not group:
            continue
        replies = await _ask_all(group, m.WhoHas(cid=cid))
        found = [s for s, r in zip(group, replies, strict=True) if r is not None and r.cid == cid]
        if found:
            break
    if not found:
        raise NotFound(f"object {cid} is held neither by this node nor by its {len(sessions)} peers")
    shared = {r.peer for r in await ctx.ex.db(ctx.repo.shares_for, cid)}
    return cid, sorted(found, key=lambda s: s.peer_id not in shared)


def first_asked(ctx: Context) -> int:
    """How many of the best-ranked peers a content-id lookup asks before the others: the `replicas` a
    store sends to, plus two (the origin, which need not rank among them, and one spare for a member that
    joined since and ranks above a holder until repair moves the copy)."""
    return len(ctx.peers.sessions) if ctx.replicas is None else ctx.replicas + 2


async def _ask_all(sessions: list[Session], question: m.WhoHas) -> list[m.Have | None]:
    """Every session's answer to `question`, None for one that failed or did not answer in time."""

    async def ask(s: Session) -> m.Have | None:
        try:
            return await s.request(question, timeout=LOOKUP_TIMEOUT)
        except (P2PError, TimeoutError):
            return None

    return list(await asyncio.gather(*(ask(s) for s in sessions)))


async def holding(ctx: Context, cid: str) -> list[Session]:
    """The connected peers that say they hold the object `cid`, those `shares` records as holders first;
    empty when none does or no peer is connected (the scrub's repair, which then keeps the bad copy)."""
    try:
        _, holders = await holders_of(ctx, cid)
    except (NotFound, PeerUnavailable):
        return []
    return holders
