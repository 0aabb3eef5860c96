"""A user's get: the local copy if this node holds the file (verified as it is read, and replaced by a
peer's verified copy if it fails its check: readrepair.py), else fetched verified from the peers that
hold it (found in one hop through the key's metadata where it is placed: lookup.py), optionally kept as
a local replica. A name with the content-id prefix ("b3:…",
store/userkey.py) asks for the content itself: the object if this node holds it under any key, else
from the peers that hold it, the same way."""

from __future__ import annotations

import contextlib
import os

from p2pfast.errors import BadInput, IntegrityError, NotFound
from p2pfast.net.session import Session
from p2pfast.node import fetch, readrepair
from p2pfast.node.chunks import object_chunks
from p2pfast.node.context import Context
from p2pfast.node.lookup import find_key, holders_of
from p2pfast.node.reports import GetReport, Progress
from p2pfast.node.sources import Sink
from p2pfast.store.objects import encode_key, show_key
from p2pfast.store.userkey import content_id_of


async def get(
    ctx: Context, key: str, sink: Sink, progress: Progress | None = None, keep: bool = False
) -> GetReport:
    """Write the plaintext of `key` to `sink`: from the local store, else verified from a peer; with
    `keep`, a fetched file is also stored here (a local replica, under this node's keys). `key` may be a
    content id instead (then `keep` is refused: see `_get_cid`)."""
    cid_asked = content_id_of(key)
    if cid_asked is not None:
        return await _get_cid(ctx, key, cid_asked, sink, progress, keep)
    raw = encode_key(key)
    try:
        _, cid, size = await ctx.ex.db(ctx.store.stat, raw)
    except NotFound:
        pass
    else:
        if progress is not None:
            progress.begin("get", size)
        if sink.file is None:
            await _read_to_sink(ctx, raw, cid, size, sink, progress)
            return GetReport(key, cid, size, "local")
        start = os.lseek(sink.file, 0, os.SEEK_CUR)
        try:
            await ctx.ex.db(ctx.store.read, raw, sink.file, 0, -1, progress)
        except IntegrityError as exc:
            return await readrepair.repair(ctx, raw, cid, sink, start, progress, exc)
        return GetReport(key, cid, size, "local")
    found = await find_key(ctx, raw)
    try:
        if found.holders:
            return await _fetch_key(ctx, key, raw, found.cid, found.holders, sink, progress, keep)
    except fetch.NoneServed:
        if not found.hinted:
            raise
    # The key's metadata named holders that did not serve it (the copies moved or went since it was
    # written), or none that is connected: nothing was written yet, so ask for its content id, and if
    # nobody holds that, for the key itself as if there were no metadata.
    try:
        cid, holders = await holders_of(ctx, found.cid)
    except NotFound:
        wide = await find_key(ctx, raw, use_meta=False)
        cid, holders = wide.cid, wide.holders
    return await _fetch_key(ctx, key, raw, cid, holders, sink, progress, keep)


async def _fetch_key(
    ctx: Context,
    key: str,
    raw: bytes,
    cid: str,
    holders: list[Session],
    sink: Sink,
    progress: Progress | None,
    keep: bool,
) -> GetReport:
    """The file under `key` (object `cid`) fetched verified from `holders`; with `keep`, stored here."""
    upload = await ctx.ex.db(ctx.store.begin, raw) if keep else None
    try:
        size, served = await fetch.fetch(holders, cid, sink, ctx.ex, progress, upload, fetch.sized(progress))
        source = fetch.main_source(served, holders)
        if upload is not None:
            await ctx.ex.db(upload.finish, cid, [source])  # its holder goes into shares with it
    finally:
        if upload is not None:
            ctx.ex.db_later(upload.abort)  # after any job of the fetch; a no-op once finished
    return GetReport(key, cid, size, "peer", source, upload is not None, len(served))


async def _get_cid(
    ctx: Context, asked: str, cid: str, sink: Sink, progress: Progress | None, keep: bool
) -> GetReport:
    """A get by content id: the object if held here (under whatever key), verified as it is read and
    read-repaired like a key's; else fetched verified from the peers that hold it.

    `keep` is refused, before anything is read: a replica is a file, and a file needs a key. The cid
    itself as that key would be a second name for content another key names, and it would outlive a
    delete of that key on every node that kept it (a delete removes a key, not content)."""
    if keep:
        raise BadInput(
            f"--keep stores a replica under a key, and {cid[:15]}… is a content id: get it by a key that "
            "names it, or store the output under a key of your own"
        )
    obj = await ctx.ex.db(ctx.repo.get_object, cid)
    if obj is not None:
        if progress is not None:
            progress.begin("get", obj.size)
        if sink.file is None:
            await _read_to_sink(ctx, cid.encode(), cid, obj.size, sink, progress)
            return GetReport(asked, cid, obj.size, "local")
        start = os.lseek(sink.file, 0, os.SEEK_CUR)
        try:
            await ctx.ex.db(ctx.store.read_object, cid, sink.file, 0, -1, progress)
        except IntegrityError as exc:
            return await readrepair.repair(ctx, cid.encode(), cid, sink, start, progress, exc, by_cid=True)
        return GetReport(asked, cid, obj.size, "local")
    _, holders = await holders_of(ctx, cid)
    size, served = await fetch.fetch(holders, cid, sink, ctx.ex, progress, None, fetch.sized(progress))
    return GetReport(asked, cid, size, "peer", fetch.main_source(served, holders), False, len(served))


async def read_local(ctx: Context, cid: str, sink: Sink, start: int, end: int) -> bool:
    """Bytes [start, end) of object `cid` to `sink`, verified as they are read, if this node holds the
    object (True); False, having written nothing, if it does not. A ranged read costs only its range."""
    obj = await ctx.ex.db(ctx.repo.get_object, cid)
    if obj is None:
        return False
    chunks = object_chunks(ctx.ex.db, ctx.store, cid, start, min(end, obj.size))
    async with contextlib.aclosing(chunks) as source:
        async for data in source:
            if data:
                await sink.write(data)
    return True


async def read_range(ctx: Context, cid: str, sink: Sink, start: int, end: int) -> None:
    """Bytes [start, end) of object `cid` to `sink`, verified: from a copy here, reading only the range;
    else from the holders, fetching only the segments the range lies in (a client that reads an object
    in ranges, as boto3's download_file and rclone do, costs the object once, not once per range)."""
    if await read_local(ctx, cid, sink, start, end):
        return
    _, holders = await holders_of(ctx, cid)
    trim = _Trim(sink, start - fetch.window_start(start), end - start)
    await fetch.fetch(holders, cid, trim, ctx.ex, window=(start, end))


class _Trim:
    """A sink that passes on `length` bytes after the first `skip`: a windowed fetch writes whole
    segments."""

    file: int | None = None

    def __init__(self, sink: Sink, skip: int, length: int) -> None:
        self._sink, self._skip, self._left = sink, skip, length

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self._skip:
            cut = min(self._skip, len(view))
            view, self._skip = view[cut:], self._skip - cut
        if self._left > 0 and view:
            view = view[: self._left]
            self._left -= len(view)
            await self._sink.write(view)


async def _read_to_sink(
    ctx: Context, key: bytes, cid: str, size: int, sink: Sink, progress: Progress | None
) -> None:
    """store.read for a sink the loop awaits: chunks decrypted and verified on the DB thread (the next
    one read while this one is written), written from the loop."""
    chunks = object_chunks(ctx.ex.db, ctx.store, cid, 0, size, name=show_key(key))
    async with contextlib.aclosing(chunks) as source:
        async for data in source:
            await sink.write(data)
            if progress is not None:
                progress(len(data))
