"""Read-repair: a local copy that fails its check while a get reads it into a file is replaced by a
peer's verified copy, and the get goes on from that copy. (Into a pipe, what was written cannot be
taken back: there the integrity error stands at once.)"""

from __future__ import annotations

import logging
import os

from p2pfast.counters import COUNTERS
from p2pfast.errors import IntegrityError, NotFound, P2PError, PeerUnavailable
from p2pfast.node import fetch
from p2pfast.node.context import Context
from p2pfast.node.lookup import holders_of, locate
from p2pfast.node.reports import GetReport, Progress
from p2pfast.node.sources import Sink
from p2pfast.store.objects import show_key

log = logging.getLogger("p2pfast.node")


async def repair(
    ctx: Context,
    raw: bytes,
    cid: str,
    sink: Sink,
    start: int,
    progress: Progress | None,
    failure: IntegrityError,
    *,
    by_cid: bool = False,
) -> GetReport:
    """The local copy failed its check part way: take back what was written to the sink's file since
    `start`, fetch the object from the peers that hold it, verified, and put that copy in place of the
    bad one. With no peer to serve it, the integrity error stands. `by_cid`: the get named the content id
    (then `raw` is that id), so the holders are found by it rather than by a key."""
    out_fd = sink.file
    assert out_fd is not None  # only a file's bytes can be taken back

    def rewind() -> None:
        os.ftruncate(out_fd, start)
        os.lseek(out_fd, start, os.SEEK_SET)

    await ctx.ex.db(rewind)
    try:
        found, holders = await (holders_of(ctx, cid) if by_cid else locate(ctx, raw))
    except (NotFound, PeerUnavailable):
        raise failure from None  # nobody to repair it from: the one error line is the failure's
    if found != cid:  # the peers name other content under this key: not a copy of ours
        raise failure
    log.warning(
        "event=local_copy_corrupt key=%s cid=%s error=%r action=fetch_from_peers holders=%d",
        show_key(raw),
        cid,
        str(failure),
        len(holders),
    )
    upload = await ctx.ex.db(ctx.store.begin, raw)
    try:
        size, served = await fetch.fetch(holders, cid, sink, ctx.ex, progress, upload, fetch.sized(progress))
        await ctx.ex.db(upload.finish_repair, cid)
    except P2PError as exc:
        log.warning("event=repair_failed key=%s cid=%s error=%r", show_key(raw), cid, str(exc))
        await ctx.ex.db(rewind)
        raise failure from None
    finally:
        ctx.ex.db_later(upload.abort)  # after any job of the fetch; a no-op once finished
    COUNTERS.integrity_failures += 1  # recovered from, so commands.py never sees it: counted here
    source = fetch.main_source(served, holders)
    log.warning("event=local_copy_repaired key=%s cid=%s source=%s", show_key(raw), cid, source[:12])
    return GetReport(raw.decode(), cid, size, "peer", source, holder_count=len(served), repaired=True)
