"""The holder's side of a get: a peer's `who_has`, `leaves` and `get` answered from the local store.
What is sent is verified as it is read; a copy that fails its check is refused with INTEGRITY and logged,
never sent."""

from __future__ import annotations

import contextlib
import logging

from p2pfast import wire
from p2pfast.errors import IntegrityError, NotFound
from p2pfast.net.session import Session
from p2pfast.node.chunks import Run, object_chunks
from p2pfast.node.flow import STALL_TIMEOUT, within
from p2pfast.proto import messages as m
from p2pfast.repo.repo import Repo
from p2pfast.store.objects import ContentStore, encode_key

log = logging.getLogger("p2pfast.transfer")


async def who_has(msg: m.WhoHas, repo: Repo, run: Run, meta: bool = False) -> m.Have:
    """Whether this node holds an object, by content id or by key (messages.py: exactly one is set): its
    size and segment count if so. For a key not held here, with `meta` (the asker speaks "keymeta"):
    the key's metadata this node keeps for the network, if any (node/keymeta.py)."""
    cid = msg.cid
    if msg.key is not None:
        row = await run(repo.get_file, encode_key(msg.key))
        cid = None if row is None else row.cid
    obj = None if cid is None else await run(repo.get_object, cid)
    if obj is None:
        if meta and msg.key is not None:
            kept = await run(repo.get_keymeta, encode_key(msg.key))
            if kept is not None:
                return m.Have(None, None, None, m.Meta(kept.cid, kept.size, kept.stored_at, kept.holders))
        return m.Have(None, None, None)
    return m.Have(cid, obj.size, obj.segments)


async def holds(msg: m.Holds, repo: Repo, run: Run, pinned: bool = True) -> m.Held:
    """Which of the files asked this node holds, one bit each, and which of those a user stored here
    (node/repair.py's digest)."""
    files = [(encode_key(key), cid) for key, cid in msg.files]
    have = await run(repo.held_files, files)
    if not pinned:  # the asker's build does not know the field (proto/features.py)
        return m.Held.of([f in have for f in files])
    return m.Held.of([f in have for f in files], [have.get(f, False) for f in files])


async def serve_get(session: Session, msg: m.Get, store: ContentStore, run: Run) -> m.Ok:
    """Serve a peer's "get": the plaintext range on its stream (our object is verified as it is read)."""
    cid, offset, length = msg.cid, msg.offset, msg.length
    stream = session.stream(msg.sid)
    obj = await run(store.repo.get_object, cid)
    if obj is None:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise NotFound(f"object {cid} is not held here")
    end = obj.size if length < 0 else min(obj.size, offset + length)
    start = pos = min(offset, end)
    try:
        async with contextlib.aclosing(object_chunks(run, store, cid, start, end)) as chunks:
            async for chunk in chunks:
                pos += len(chunk)
                await within(stream.write(chunk, end=pos >= end), STALL_TIMEOUT)
    except IntegrityError as exc:
        # Our own copy failed its check as it was read: nothing unverified was sent, the getter is told
        # why (its reply says integrity), and the operator learns that this node holds a bad copy.
        stream.reset(int(wire.ErrorCode.INTEGRITY))
        log.warning(
            "event=served_copy_corrupt peer=%s cid=%s error=%r action=refused",
            session.peer_id[:12],
            cid,
            str(exc),
        )
        raise
    except BaseException:
        stream.reset(int(wire.ErrorCode.INTERNAL))
        raise
    return m.Ok(size=pos - start)


async def serve_leaves(session: Session, msg: m.Leaves, store: ContentStore, run: Run) -> m.Ok:
    size, leaves = await run(store.leaves, msg.cid)
    sid = msg.sid
    if sid is None:
        return m.Ok(size=size, leaves=leaves.hex())
    await within(session.stream(sid).write(leaves, end=True), STALL_TIMEOUT)
    return m.Ok(size=size)
