"""Key metadata placed by rendezvous on the key, so that a get of a key this node does not hold asks
the few members that should know its content id instead of every member (docs/protocol.md, "One-hop
lookups").

* Where: on the `replicas + 1` members that rank first for the key by placement.key_weight, among the
  serving members that speak "keymeta" (this node too, when it serves). A getter asks its `replicas +
  2` best-ranked (node/lookup.py): the metadata's holders, and one spare for a member that joined since
  and ranks above one of them until the next pass moves the metadata.
* What: key -> content id, size, when it was stored (the holder's files row), and the members known to
  hold the object, best first; so the getter goes from the metadata straight to those holders, one hop
  in all. The holders are hints: a get checks every segment against the content id anyway, and falls
  back to asking by content id when none of them serves it (node/getting.py).
* Who writes: the storing node, once its copy is durable and its replicas have answered (the holders are
  it and those that acknowledged). Then every repair pass: the holder ranked first for the object among
  those the pass found holding it (node/repair.py; one node per file, like the copies it makes) sends the
  metadata, with the holders just counted, to the key's ranked members as they are now. So metadata
  follows the members that come and go: a member that joins and ranks for a key has it after the pass
  its arrival triggers. Requests carry up to MAX_KEY_META entries and stay under the control cap, so a
  pass costs (its files) / 64 small requests per ranked member, less than its holds digest.
* Expiry: a row nobody republished for `ttl` (24 h, or four repair intervals if longer) goes: this node
  no longer ranks for the key, or nobody holds the file.
* Deletes: the tombstone wins. Applying a delete removes the key's metadata that names the deleted
  content and is no newer (repo._put_tombstone), an entry a tombstone beats is never recorded after it,
  and a getter ignores metadata that its own tombstone beats. Deletes already reach every member
  (node/tombstones.py), so the tombstone state needs no placement of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import orjson

from p2pfast import wire
from p2pfast.errors import P2PError
from p2pfast.net.session import Session
from p2pfast.node import placement
from p2pfast.node.context import Context
from p2pfast.node.flow import MESSAGE_ROOM, by_size
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.store.objects import encode_key, show_key

log = logging.getLogger("p2pfast.keymeta")

# A member's answer to one key_meta request.
KEYMETA_TIMEOUT = 10.0
# Metadata not republished for this long is forgotten. Every repair pass (10 min by default) refreshes
# what is still true, so a day leaves room for many missed passes and a long restart.
KEYMETA_TTL = 86400.0

Entry = tuple[bytes, m.Meta]


class KeyMetaService:
    def __init__(self, ctx: Context, repair_interval: float = 600.0) -> None:
        self.ctx = ctx
        self.ttl = max(KEYMETA_TTL, 4 * repair_interval)

    @property
    def copies(self) -> int | None:
        """Members that keep each key's metadata; None when every member holds every file (replicas
        all: a get asks them all anyway, and nothing is placed)."""
        return None if self.ctx.replicas is None else self.ctx.replicas + 1

    def ranked(self, key: bytes, ids: Sequence[str]) -> list[str]:
        """The members (of `ids`, this node added when it serves) that keep `key`'s metadata."""
        n = self.copies
        if n is None:
            return []
        ctx = self.ctx
        if ctx.peers.listen_addr:  # a serving node is a member itself
            ids = [*ids, ctx.node_id]
        return placement.key_order(key, ids)[:n]

    async def stored(self, key: bytes, cid: str, size: int, acked: Sequence[str]) -> None:
        """After a user's store here (durable, replicated): the metadata to the key's ranked members,
        with this node and the replicas that acknowledged as holders. A failure costs the getter a wider
        lookup until the next repair pass, never the store."""
        if self.copies is None:
            return
        ctx = self.ctx
        row = await ctx.ex.db(ctx.repo.get_file, key)
        if row is None or row.cid != cid:  # deleted or stored again meanwhile: that one publishes
            return
        holders = placement.keep_order(cid, {ctx.node_id, *acked}, {ctx.node_id})
        meta = m.Meta(cid, size, row.created, tuple(holders[: control.MAX_META_HOLDERS]))
        try:
            await self.publish([(key, meta)])
        except P2PError as exc:  # this node's own row (the repo busy, the disk full): the store stands
            log.warning("event=keymeta_not_recorded key=%s cid=%s reason=%r", show_key(key), cid, str(exc))

    async def publish(self, entries: Sequence[Entry]) -> int:
        """Each entry to the members ranked for its key (recorded here when this node is one of them);
        returns how many requests failed (logged)."""
        if not entries or self.copies is None:
            return 0
        ctx = self.ctx
        local: list[Entry] = []
        remote: dict[str, list[Entry]] = {}
        ids = ctx.links.members("keymeta")
        for entry in entries:
            for p in self.ranked(entry[0], ids):
                if p == ctx.node_id:
                    local.append(entry)
                else:
                    remote.setdefault(p, []).append(entry)
        # those not connected are dialled (node/links.py); one that cannot be reached gets it next pass
        sessions = {s.peer_id: s for s in await ctx.links.open(list(remote), len(remote))}
        remote = {p: e for p, e in remote.items() if p in sessions}
        if local:
            await ctx.ex.db(ctx.repo.put_keymeta, [_row(e) for e in local], time.time())

        async def send(session: Session, batch: list[Entry]) -> bool:
            try:
                await session.request(
                    m.KeyMeta(tuple((k.decode(), x) for k, x in batch)), timeout=KEYMETA_TIMEOUT
                )
                return True
            except (P2PError, TimeoutError) as exc:
                log.info(
                    "event=keymeta_not_sent peer=%s keys=%d first=%s reason=%r",
                    session.peer_id[:12],
                    len(batch),
                    show_key(batch[0][0]),
                    str(exc),
                )
                return False

        async def send_all(peer: str) -> int:
            failed = 0
            for batch in _batches(remote[peer]):
                if not await send(sessions[peer], batch):
                    failed += 1
                    break  # the member went or does not answer: the next pass tries again
            return failed

        return sum(await asyncio.gather(*(send_all(p) for p in remote)))

    async def on_key_meta(self, session: Session, msg: m.KeyMeta) -> m.Ok:
        """A member's metadata for keys this node ranks for: recorded (a tombstone still wins)."""
        ctx = self.ctx
        rows = [_row((encode_key(key), meta)) for key, meta in msg.entries]
        await ctx.ex.db(ctx.repo.put_keymeta, rows, time.time())
        return m.Ok()

    async def expire(self) -> int:
        """Forget the metadata nobody republished within the ttl; returns how many rows went."""
        ctx = self.ctx
        return await ctx.ex.db(ctx.repo.expire_keymeta, time.time() - self.ttl)


def _row(entry: Entry) -> tuple[bytes, str, int, float, tuple[str, ...]]:
    key, meta = entry
    return key, meta.cid, meta.size, meta.at, meta.holders


def _batches(entries: Sequence[Entry]) -> list[list[Entry]]:
    """`entries` cut into key_meta requests: at most MAX_KEY_META each, and each under the control cap
    (keys of up to 1 KiB, JSON-escaped, would not fit 64 to a message)."""

    def size(e: Entry) -> int:
        key, meta = e
        return len(orjson.dumps([key.decode(), meta.cid, meta.size, meta.at, list(meta.holders)])) + 1

    return by_size(entries, size, wire.MAX_CONTROL_SIZE - MESSAGE_ROOM, control.MAX_KEY_META)
