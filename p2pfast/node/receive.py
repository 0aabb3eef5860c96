"""Replication, the replica's side: a peer's `store` received, re-encrypted with this node's keys, its
content id checked, committed with the sender recorded as a holder, and only then acknowledged.

A replica refuses before any byte is read what it cannot keep (over `max_object`, or past the free-space
reserve), with its reason in the reply.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from p2pfast import wire
from p2pfast.errors import DiskFull, LocalProtocolError, P2PError, PeerUnavailable, RemoteProtocolError
from p2pfast.net.session import Session, Stream
from p2pfast.node.chunks import Run
from p2pfast.node.flow import CHUNK, EXTRA_WINDOW, HANDOFF, PIPELINE, STALL_TIMEOUT, within
from p2pfast.proto import messages as m
from p2pfast.repo.repo import TombstoneRow
from p2pfast.store import segments
from p2pfast.store.objects import ContentStore, PutResult, Upload, encode_key, show_key
from p2pfast.units import iec

log = logging.getLogger("p2pfast.transfer")


class Deleted(LocalProtocolError):
    """{}"""

    # A repair copy of a file this node holds a tombstone for: the delete wins (node/repair.py).

    def __init__(self, stone: TombstoneRow) -> None:
        super().__init__(
            f"{show_key(stone.key)} ({stone.cid}) was deleted; a repair does not bring it back",
            wire.ErrorCode.REFUSED,
        )
        self.stone = stone


# A replica takes an object up to this size whole from its stream, then stores it in one trip to the DB
# thread (_store_small); a larger one streams in HANDOFF pieces (_receive_large). It is HANDOFF because the
# question is the same one (how much to collect before a trip to the DB thread), not the store's
# small-object rule (store.upload.is_small: one segment): an object between the two streams in pieces here
# and is still sealed in one step by the store.
WHOLE_RECEIVE_MAX = HANDOFF
# Free space a replica keeps after accepting an object: never fill a disk to the last byte.
FREE_RESERVE = 64 * 1024 * 1024


async def receive(
    session: Session,
    msg: m.Store,
    store: ContentStore,
    run: Run,
    max_object: int | None = None,
    max_storage: int | None = None,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> m.Ok:
    """Serve a peer's "store": receive the plaintext, re-encrypt it with our keys, check the content id,
    commit (with the sender recorded as a holder), and only then reply ok. `pace`, awaited with the bytes
    of each piece received, holds back a repair copy (node/repair.py) while users' transfers run here."""
    stream = session.stream(msg.sid)
    size, cid, key = msg.size, msg.cid, msg.key
    holders = (session.peer_id,)
    try:
        if msg.repair:
            stone = await run(store.repo.get_tombstone, encode_key(key))
            if stone is not None and stone.cid == cid:
                raise Deleted(stone)
        if max_object is not None and size > max_object:
            raise LocalProtocolError(
                f"object of {size} bytes is over this node's limit of {max_object}", wire.ErrorCode.REFUSED
            )
        if max_storage is not None:
            stored = await run(store.repo.stored_bytes)
            if stored + size > max_storage and await run(store.repo.get_object, cid) is None:
                raise DiskFull(
                    f"this node stores at most {iec(max_storage)} (max_storage) and holds {iec(stored)}:"
                    f" an object of {iec(size)} does not fit"
                )
        free = _free_bytes(store.root, size)
        need = segments.file_size(size, store.segment_size) + FREE_RESERVE
        if need > free:
            raise DiskFull(
                f"an object of {iec(size)} does not fit: {iec(free)} free, and this node keeps"
                f" {iec(FREE_RESERVE)} free in reserve"
            )
    except P2PError:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise
    try:
        if size <= WHOLE_RECEIVE_MAX:
            # It fits the stream window: take it all, then one trip to the DB thread.
            data = await _read_exactly(stream, size, cid)
            result = await run(_store_small, store, key, data, cid, holders)
        else:
            result = await _receive_large(stream, size, cid, key, store, run, holders, pace)
    except TimeoutError:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise PeerUnavailable(f"store of {cid} stalled for {STALL_TIMEOUT:g}s") from None
    except BaseException:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise
    log.info(
        "event=replica_stored peer=%s key=%s cid=%s size=%d dedup=%s",
        session.peer_id[:12],
        show_key(result.key),
        cid,
        size,
        result.deduplicated,
    )
    return m.Ok(size=size)


# A small object may be checked against a free-space reading up to FREE_CACHE_S old: statvfs per 4 KiB
# store was a measurable part of a replica's work, and FREE_RESERVE covers far more than what a second of
# small stores can add. "Small" here is FREE_CACHE_MAX, a bound on what such a reading may miss, so it
# follows FREE_RESERVE: that it equals the segment size (the store's small-object rule, is_small) is not
# a reason, and a change of either leaves the other as it is.
FREE_CACHE_S = 1.0
FREE_CACHE_MAX = 1024 * 1024
_free_seen: dict[Path, tuple[float, int]] = {}


def _free_bytes(root: Path, size: int) -> int:
    now = time.monotonic()
    seen = _free_seen.get(root)
    if size <= FREE_CACHE_MAX and seen is not None and now - seen[0] < FREE_CACHE_S:
        return seen[1]
    try:
        free = shutil.disk_usage(root).free
    except FileNotFoundError:  # no object stored yet: its parent, the data dir, is where it will go
        free = shutil.disk_usage(root.parent).free
    _free_seen[root] = (now, free)
    return free


async def _read_exactly(stream: Stream, size: int, cid: str) -> bytes:
    parts: list[bytes] = []
    received = 0
    while True:
        if stream.ready():  # a small object has usually arrived whole: no task and timer to read it
            chunk = await stream.read_some(CHUNK)
        else:
            chunk = await within(stream.read_some(CHUNK), STALL_TIMEOUT)
        if not chunk:
            break
        received += len(chunk)
        if received > size:
            raise RemoteProtocolError(f"sent more than the {size} bytes announced for {cid}")
        parts.append(chunk)
    if received != size:
        raise RemoteProtocolError(f"sent {received} of the {size} bytes announced for {cid}")
    return b"".join(parts)


def _write_chunks(upload: Upload, chunks: list[bytes]) -> None:
    for chunk in chunks:
        upload.write(chunk)


def _store_small(store: ContentStore, key: str, data: bytes, cid: str, holders: Sequence[str]) -> PutResult:
    upload = store.begin(key, len(data))
    try:
        upload.write(data)
        return upload.finish(cid, holders)
    finally:
        upload.abort()  # a no-op once finished


async def _receive_large(
    stream: Stream,
    size: int,
    cid: str,
    key: str,
    store: ContentStore,
    run: Run,
    holders: Sequence[str],
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> PutResult:
    upload = await run(store.begin, key, size)
    try:
        received = 0
        jobs: deque[asyncio.Future[None]] = deque()
        while True:
            # The frames as received, pushed one by one into the upload (which copies them into its
            # segment buffer anyway): joining them first was one more copy of every byte.
            chunks = await within(stream.read_chunks(CHUNK, HANDOFF), STALL_TIMEOUT)
            if not chunks:
                break
            if not received:
                stream.extend_window(EXTRA_WINDOW)
            received += sum(len(c) for c in chunks)
            if received > size:
                raise RemoteProtocolError(f"sent more than the {size} bytes announced for {cid}")
            jobs.append(asyncio.ensure_future(run(_write_chunks, upload, chunks)))  # one thread: in order
            while len(jobs) >= PIPELINE:
                await jobs.popleft()
            if pace is not None:  # not reading meanwhile: the sender's credit runs out, and it waits too
                await pace(sum(len(c) for c in chunks))
        while jobs:
            await jobs.popleft()
        if received != size:
            raise RemoteProtocolError(f"sent {received} of the {size} bytes announced for {cid}")
        result: PutResult = await run(upload.finish, cid, holders)
        return result
    finally:
        # A no-op once finished; otherwise no partial object is left. Queued behind any write still
        # running on the DB thread.
        await run(upload.abort)
