"""Deletes: applied here (row, tombstone, then the object if no other key refers to it), sent to every
connected peer, forwarded by each peer for which it is news (flooding, stopped by the tombstone), and
replayed to a peer that reconnects within the grace period, so a peer that was offline cannot bring the
file back. Expired tombstones are dropped by the gossip round (membership.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from p2pfast.errors import P2PError
from p2pfast.net.session import Session
from p2pfast.node.context import Context
from p2pfast.node.lookup import LOOKUP_TIMEOUT, locate
from p2pfast.node.reports import DeleteReport
from p2pfast.proto import messages as m
from p2pfast.store.objects import encode_key, show_key

log = logging.getLogger("p2pfast.node")

# How long a delete is remembered, so a peer that was offline cannot bring the file back (config).
TOMBSTONE_GRACE = 7 * 86400.0
# Tombstone requests in flight to a peer that just connected (below its MAX_INFLIGHT_REQUESTS, so the
# peer never has to stop reading for them).
TOMBSTONE_WINDOW = 16


class Tombstones:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def delete(self, key: str) -> DeleteReport:
        """Delete locally (row, tombstone, then the object if unreferenced) and on every peer."""
        ctx = self.ctx
        raw = encode_key(key)
        row = await ctx.ex.db(ctx.repo.get_file, raw)
        if row is not None:
            cid = row.cid
        else:
            cid, _ = await locate(ctx, raw)
        at = time.time()
        _, orphaned = await self.apply(raw, cid, at, ctx.node_id)
        msg = m.Delete(key=raw.decode(), cid=cid, origin=ctx.node_id, at=at)
        peers = await self._propagate(msg, exclude=set())
        log.info(
            "event=deleted key=%s cid=%s local=%s peers=%d", show_key(raw), cid, row is not None, len(peers)
        )
        return DeleteReport(key, cid, row is not None, orphaned, peers)

    async def on_delete(self, session: Session, msg: m.Delete) -> m.Ok:
        """A peer's delete: applied, and passed on if it was news to us, so that it reaches peers the
        origin is not connected to."""
        changed, _ = await self.apply(encode_key(msg.key), msg.cid, msg.at, msg.origin)
        if changed:
            self.ctx.spawn(self._propagate(msg, exclude={session.peer_id, msg.origin}, forwarded=True))
        return m.Ok()

    async def apply(self, key: bytes, cid: str, at: float, origin: str) -> tuple[bool, bool]:
        """Record the tombstone and drop the file (row first, then the object); returns (news to us,
        the object was removed). A file stored here after the delete happened (a re-store of the same
        key) stays: the delete only removes what existed when it was issued, as clocks allow
        (Repo.delete_file_with_tombstone)."""
        ctx = self.ctx
        removed, orphaned, changed = await ctx.ex.db(
            ctx.repo.delete_file_with_tombstone, key, cid, at, origin, time.time()
        )
        if orphaned:
            await ctx.ex.db(ctx.store.unlink_orphan, removed)
        return removed is not None or changed, orphaned

    async def _propagate(self, msg: m.Delete, exclude: set[str], forwarded: bool = False) -> list[str]:
        """Send a delete to every connected peer but `exclude`; returns those that confirmed. A miss here
        is only worth a warning at the origin: the peers it reached forward it."""
        sessions = [s for s in self.ctx.peers.sessions.values() if s.peer_id not in exclude]
        level = logging.DEBUG if forwarded else logging.WARNING

        async def send(s: Session) -> str | None:
            try:
                await s.request(msg, timeout=LOOKUP_TIMEOUT)
                return s.peer_id
            except (P2PError, TimeoutError) as exc:
                log.log(level, "event=delete_not_confirmed peer=%s reason=%r", s.peer_id[:12], str(exc))
                return None

        return [p for p in await asyncio.gather(*(send(s) for s in sessions)) if p is not None]

    async def send(self, session: Session, key: bytes, cid: str, at: float, origin: str) -> None:
        """One tombstone to one peer (a repair copy it sent us of a file deleted here: it deletes its
        copy too, and passes the delete on if it is news to it)."""
        msg = m.Delete(key=key.decode(), cid=cid, origin=origin, at=at)
        try:
            await session.request(msg, timeout=LOOKUP_TIMEOUT)
        except (P2PError, TimeoutError) as exc:
            log.info(
                "event=tombstone_not_sent peer=%s key=%s reason=%r",
                session.peer_id[:12],
                show_key(key),
                str(exc),
            )

    async def replay(self, session: Session) -> None:
        """A peer that was offline hears about the deletes it missed (within the grace period). Up to
        TOMBSTONE_WINDOW requests are in flight at once: one at a time, a week of deletes took one
        round trip each, on every reconnect."""
        pending = iter(await self.ctx.ex.db(self.ctx.repo.list_tombstones))

        async def sender() -> None:
            for t in pending:  # shared by the senders: each tombstone goes once
                msg = m.Delete(key=t.key.decode(), cid=t.cid, origin=t.origin, at=t.deleted_at)
                try:
                    await session.request(msg, timeout=LOOKUP_TIMEOUT)
                except (P2PError, TimeoutError):
                    return  # the peer went or does not answer: it hears the rest when it reconnects

        await asyncio.gather(*(sender() for _ in range(TOMBSTONE_WINDOW)))

    async def expire(self) -> int:
        """Forget the tombstones older than the grace period; returns how many went."""
        ctx = self.ctx
        return await ctx.ex.db(ctx.repo.expire_tombstones, time.time() - ctx.tombstone_grace)
