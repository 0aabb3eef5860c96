"""A user's get: the local copy if this node holds the file (verified as it is read, and replaced by a
peer's verified copy if it fails its check: readrepair.py), else fetched verified from the peers that
hold it (fetch.py), optionally kept as a local replica."""

from __future__ import annotations

import contextlib
import os

from p2pfast.errors import IntegrityError, NotFound
from p2pfast.node import fetch, readrepair
from p2pfast.node.chunks import object_chunks
from p2pfast.node.context import Context
from p2pfast.node.lookup import locate
from p2pfast.node.reports import GetReport, Progress
from p2pfast.node.sources import Sink
from p2pfast.store.objects import encode_key, show_key


async def get(
    ctx: Context, key: str, sink: Sink, progress: Progress | None = None, keep: bool = False
) -> GetReport:
    """Write the plaintext of `key` to `sink`: from the local store, else verified from a peer; with
    `keep`, a fetched file is also stored here (a local replica, under this node's keys)."""
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
    cid, holders = await locate(ctx, raw)
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
