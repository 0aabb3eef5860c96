"""A stored object's plaintext read in pieces on the DB thread while the caller sends the one before:
what a replication, a served get and a local get into a pipe all send."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from p2pfast.node.flow import CHUNK, settle
from p2pfast.store.objects import ContentStore

Run = Callable[..., Awaitable[Any]]


async def object_chunks(
    run: Run, store: ContentStore, cid: str, start: int, end: int, name: str | None = None
) -> AsyncGenerator[bytearray, None]:
    """The plaintext of [start, end) in CHUNK pieces (one empty piece for an empty range), each read on the
    DB thread (`run`) while the caller sends the one before: reading and sending overlap, and at most two
    chunks are in memory. Each piece is verified as it is read (IntegrityError otherwise)."""
    pos = start
    read = functools.partial(store.read_object_bytes, name=name)  # `name`: what an error calls it
    ahead: asyncio.Future[bytearray] = asyncio.ensure_future(run(read, cid, pos, min(CHUNK, end - pos)))
    try:
        while True:
            chunk = await ahead
            pos += len(chunk)
            last = pos >= end or not chunk
            if not last:
                ahead = asyncio.ensure_future(run(read, cid, pos, min(CHUNK, end - pos)))
            yield chunk
            if last:
                return
    finally:
        settle(ahead)  # a read ahead that failed while its caller stopped is retrieved, not reported
