"""Finding who holds a file (docs/protocol.md, "Membership that scales": O(replicas) contacts, not N).

By key (`find_key`): the key's metadata (node/keymeta.py) is kept by the members ranked first for the
key, so `who_has` for the key goes first to the `first_asked(ctx)` members ranked highest for it; one
that holds the file says so, one that keeps the metadata answers with the content id and the members
that hold the object, and the get goes to those: one hop. Only when none of them knows the key (a
network partly on an older build, metadata not yet placed on a member that joined since) are the others
asked, as before: every peer, and the content id most of them name wins. Metadata that a tombstone here
beats is ignored (the delete wins). This node's own metadata, when it ranks for the key, comes first
and costs no request.

By content id (`holders_of`): `who_has` names the cid itself, and goes first to the members placement
ranks highest for it, the ones a store or a repair put it on: only when none of those holds it are the
others asked. Either way the holders come back best first (those `shares` records as holders first)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from p2pfast.errors import NotFound, P2PError, PeerUnavailable
from p2pfast.net.session import Session
from p2pfast.node import placement
from p2pfast.node.context import Context
from p2pfast.proto import messages as m
from p2pfast.repo.repo import TombstoneRow
from p2pfast.store.objects import show_key

# who_has answers waited for, per peer, when looking for a holder.
LOOKUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Found:
    """A key's content id and the connected peers to fetch it from, best first: those that said they
    hold it, then those the key's metadata names. `hinted`: some of them (or all, or none being
    connected) come only from the metadata, so a get that none of them serves may ask by content id."""

    cid: str
    holders: list[Session]
    hinted: bool
    size: int | None = None  # the plaintext size, as a holder or the metadata gave it


async def locate(ctx: Context, key: bytes) -> tuple[str, list[Session]]:
    """The content id under `key` and the connected peers that hold it, best first (`find_key`)."""
    found = await find_key(ctx, key)
    return found.cid, found.holders


async def find_key(ctx: Context, key: bytes, use_meta: bool = True) -> Found:
    """Where the file under `key` is: this node's metadata for it, else the answers of the members
    ranked first for the key, else those of every peer (see above). Without `use_meta`, every peer is
    asked and only their files count (the metadata named content nobody holds)."""
    if not ctx.peers.sessions and not ctx.links.members():
        # not "not found": nobody could be asked, and a peer may hold it (exit 10)
        raise PeerUnavailable(f"no file under key {show_key(key)} here, and no peer is connected to ask")
    metas: list[m.Meta] = []
    if use_meta:
        kept = await ctx.ex.db(ctx.repo.get_keymeta, key)  # (a tombstone here beats it already)
        if kept is not None:
            metas.append(m.Meta(kept.cid, kept.size, kept.stored_at, kept.holders))
    groups: list[list[Session]] = []
    if not metas:
        first: list[Session] = []
        if use_meta and ctx.replicas is not None:
            # the members ranked for the key, dialled when not connected (node/links.py)
            ranked = placement.key_order(key, ctx.links.members("keymeta"))
            want = first_asked(ctx)
            first = (await ctx.links.open(ranked, want))[:want]
        asked = {s.peer_id for s in first}
        # then every connected member: a bounded set (node/links.py), never a broadcast to the network
        groups = [first, [s for s in ctx.peers.sessions.values() if s.peer_id not in asked]]
    stone = await ctx.ex.db(ctx.repo.get_tombstone, key) if groups and use_meta else None
    by_cid: dict[str, list[Session]] = {}
    sizes: dict[str, int] = {}
    for group in groups:
        if not group:
            continue
        replies = await _ask_all(group, m.WhoHas(key=key.decode()))
        for s, reply in zip(group, replies, strict=True):
            if reply is None:
                continue
            if reply.cid is not None:
                by_cid.setdefault(reply.cid, []).append(s)
                if reply.size is not None:
                    sizes[reply.cid] = reply.size
            elif use_meta and reply.meta is not None and not _beaten(reply.meta, stone):
                metas.append(reply.meta)
        if by_cid or metas:
            break
    if metas:  # the newest store wins, as in every member's metadata (Repo.put_keymeta)
        cid = max(metas, key=lambda x: (x.at, x.cid)).cid
    elif by_cid:
        cid = max(by_cid, key=lambda c: len(by_cid[c]))  # peers disagree only after a re-store raced
    else:
        asked_n = sum(len(g) for g in groups)
        raise NotFound(f"no file under key {show_key(key)} on this node or the {asked_n} peers asked")
    holders = await _shared_first(ctx, cid, by_cid.get(cid, []))
    said = {s.peer_id for s in holders}
    named = [p for p in dict.fromkeys(p for x in metas if x.cid == cid for p in x.holders) if p not in said]
    hints = await ctx.links.open(named, len(named)) if named else []
    size = sizes.get(cid, next((x.size for x in metas if x.cid == cid), None))
    return Found(cid, holders + hints, bool(hints) or not holders, size)


def _beaten(meta: m.Meta, stone: TombstoneRow | None) -> bool:
    """A delete of that content, no older than the store the metadata records, wins over it."""
    return stone is not None and stone.cid == meta.cid and stone.deleted_at >= meta.at


async def holders_of(ctx: Context, cid: str) -> tuple[str, list[Session]]:
    """`cid` and the connected peers that hold that object, best first: as `locate`, for a get by content
    id. A peer that names another object is not a holder (it would fail the leaves check anyway). The
    `first_asked(ctx)` best-ranked peers are asked first; the rest only if none of them holds it."""
    holders, _ = await holders_and_size(ctx, cid)
    return cid, holders


async def holders_and_size(ctx: Context, cid: str) -> tuple[list[Session], int | None]:
    """`holders_of`'s holders, and the object's size as the first of them said it (None: an older
    member's answer may not name one)."""
    first = first_asked(ctx)
    # the members ranked first for it, dialled when not connected (node/links.py), then every other
    # connected member
    sessions = await ctx.links.open(placement.order(cid, ctx.links.members()), first)
    if not sessions:
        raise PeerUnavailable(f"object {cid} is not held here, and no peer is connected to ask")
    found: list[Session] = []
    size: int | None = None
    for group in (sessions[:first], sessions[first:]):
        if not group:
            continue
        replies = await _ask_all(group, m.WhoHas(cid=cid))
        held = [(s, r) for s, r in zip(group, replies, strict=True) if r is not None and r.cid == cid]
        if held:
            found = [s for s, _ in held]
            size = next((r.size for _, r in held if r.size is not None), None)
            break
    if not found:
        raise NotFound(f"object {cid} is held neither by this node nor by its {len(sessions)} peers")
    return await _shared_first(ctx, cid, found), size


async def _shared_first(ctx: Context, cid: str, holders: list[Session]) -> list[Session]:
    """`holders`, those `shares` records as holders of `cid` first (they acknowledged a copy to us)."""
    shared = {r.peer for r in await ctx.ex.db(ctx.repo.shares_for, cid)}
    return sorted(holders, key=lambda s: s.peer_id not in shared)


def first_asked(ctx: Context) -> int:
    """How many of the best-ranked peers a lookup asks before the others: for a content id, the
    `replicas` a store sends to, plus two (the origin, which need not rank among them, and one spare for
    a member that joined since and ranks above a holder until repair moves the copy); for a key, the
    `replicas + 1` members its metadata is placed on (this node need not be one), and the same spare."""
    return len(ctx.links.members()) if ctx.replicas is None else ctx.replicas + 2


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
