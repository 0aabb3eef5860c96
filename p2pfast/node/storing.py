"""A user's store: sealed here under this node's keys and durable, then replicated to the placement's
peers (replicate.py), whose acknowledgements are recorded as shares, and the key's metadata sent to the
members ranked for the key (keymeta.py). Only then is the store reported."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from p2pfast.net.session import Session
from p2pfast.node import placement
from p2pfast.node.context import Context
from p2pfast.node.flow import CHUNK
from p2pfast.node.keymeta import KeyMetaService
from p2pfast.node.replicate import StoreOutcome, replicate
from p2pfast.node.reports import Progress, StoreReport
from p2pfast.node.sources import Source
from p2pfast.store.objects import PutResult, show_key
from p2pfast.store.userkey import check_storable, is_scratch

log = logging.getLogger("p2pfast.node")

# Input from a source collected while the DB thread seals the previous piece.
STREAM_CHUNK = CHUNK
# What one read of a source asks for.
READ_SIZE = 1 << 20


class GroupWrite:
    """Rows from concurrent callers written in one transaction (group commit): the first caller queues a
    job on the DB thread; callers that come before that job starts join its batch. Each caller returns
    once its rows are committed. With 16 small stores in flight, their `shares` rows then cost a few
    transactions instead of 16."""

    def __init__(self, ctx: Context, write: Callable[[list[Any]], None]) -> None:
        self._ctx = ctx
        self._write = write
        self._lock = threading.Lock()  # the loop appends, the DB thread closes the batch
        self._rows: list[Any] = []
        self._job: asyncio.Future[None] | None = None

    async def add(self, rows: list[Any]) -> None:
        if not rows:
            return
        with self._lock:
            self._rows.extend(rows)
            job = self._job
            if job is None:
                job = self._job = asyncio.ensure_future(self._ctx.ex.db(self._commit))
        await asyncio.shield(job)

    def _commit(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            self._job = None  # callers from now on start the next batch
        self._write(rows)


class Storing:
    def __init__(
        self,
        ctx: Context,
        on_stored: Callable[[int, int], object] | None = None,
        keymeta: KeyMetaService | None = None,
    ) -> None:
        self.ctx = ctx
        self.on_stored = on_stored  # (replicas that acknowledged, replicas chosen), after each store
        self.keymeta = keymeta
        self.shares = GroupWrite(ctx, lambda rows: ctx.repo.add_share_rows(rows))
        self.interrupted: StoreReport | None = None  # the last store cancelled while replicating

    async def put(self, key: str, source: Source, progress: Progress | None = None) -> StoreReport:
        """Store locally (durable), then replicate; returns who acknowledged a copy."""
        check_storable(key)  # before a byte is read: `get` would take such a key for a content id
        ctx = self.ctx
        if source.file is not None:
            result = await ctx.ex.db(ctx.store.put_fd, key, source.file, progress)
        else:
            result = await self._put_stream(key, source, progress)
        if is_scratch(result.key):  # kept here only (userkey.SCRATCH_PREFIX): durable, and done
            log.info(
                "event=stored key=%s cid=%s size=%d scratch=true",
                show_key(result.key),
                result.cid,
                result.size,
            )
            return _report(result, StoreOutcome(result.cid, result.size), 0, show_key(result.key))
        # The ranked members, those not connected dialled now (node/links.py): the first `replicas`
        # that answer take the copies, every connected one after them is a spare.
        members = placement.order(result.cid, ctx.links.members())
        order = await ctx.links.open(members, len(members) if ctx.replicas is None else ctx.replicas)
        want = len(order) if ctx.replicas is None else min(ctx.replicas, len(order))
        targets, spare = order[:want], order[want:]
        if progress is not None and targets:  # the second phase: what goes to the replicas
            progress.begin("replicate", result.size * len(targets), len(targets))
        outcome = StoreOutcome(result.cid, result.size)
        try:
            await self._replicate(result, targets, spare, want, progress, outcome)
        except asyncio.CancelledError:
            # Interrupted after the local copy is durable: the copies acknowledged so far count, and the
            # caller can say where the file is (the CLI with no daemon, on Ctrl-C).
            self.interrupted = _report(result, outcome, len(targets), show_key(result.key))
            log.info(
                "event=store_interrupted key=%s cid=%s replicas=%d/%d",
                show_key(result.key),
                result.cid,
                len(outcome.acked),
                len(targets),
            )
            if outcome.acked:
                await self.shares.add([(result.cid, peer, time.time()) for peer in outcome.acked])
            raise
        now = time.time()
        await self.shares.add([(result.cid, peer, now) for peer in outcome.acked])
        if self.keymeta is not None:  # so that a get from any member finds the key in one hop
            await self.keymeta.stored(result.key, result.cid, result.size, list(outcome.acked))
        if self.on_stored is not None:  # fewer than wanted (too few peers, one refused): repair follows
            self.on_stored(len(outcome.acked), len(targets) if ctx.replicas is None else ctx.replicas)
        log.info(
            "event=stored key=%s cid=%s size=%d replicas=%d/%d",
            show_key(result.key),
            result.cid,
            result.size,
            len(outcome.acked),
            len(targets),
        )
        return _report(result, outcome, len(targets), result.key.decode())

    async def _replicate(
        self,
        result: PutResult,
        targets: list[Session],
        spare: list[Session],
        want: int,
        progress: Progress | None,
        outcome: StoreOutcome,
    ) -> None:
        """The local copy to `targets` at once; a replica that refused (full, over its limits) or failed
        is replaced by the next-ranked of `spare`, so the store still reaches `want` copies when some
        members cannot hold it. `outcome` is filled as replies come."""
        ctx = self.ctx
        while targets:
            await replicate(
                targets,
                ctx.store,
                ctx.ex.db,
                result.key,
                result.cid,
                result.size,
                result.plaintext,
                progress,
                outcome,
            )
            short = want - len(outcome.acked)
            targets, spare = spare[: max(0, short)], spare[max(0, short) :]

    async def _put_stream(self, key: str, source: Source, progress: Progress | None) -> PutResult:
        """put_fd for a source the loop awaits (a pipe, a socket, memory): read on the loop, sealed on
        the DB thread. What has come in goes to the DB thread as soon as it is idle (a slow writer's bytes
        are sealed as they come, not held back), and while it is busy the input collects up to
        STREAM_CHUNK, so that memory stays bounded and a fast writer costs one DB-thread job per chunk."""
        ex = self.ctx.ex
        upload = await ex.db(self.ctx.store.begin, key, None, progress)
        pending = bytearray()
        eof = False
        reading: asyncio.Future[bytes | bytearray] | None = None
        sealing: asyncio.Future[None] | None = None
        try:
            while True:
                if sealing is not None and sealing.done():
                    sealing.result()  # a failed seal (disk full, client gone) ends the store here
                    sealing = None
                if sealing is None and pending:
                    sealing = asyncio.ensure_future(ex.db(upload.write, pending))
                    pending = bytearray()
                if eof and sealing is None:
                    break
                if reading is None and not eof and len(pending) < STREAM_CHUNK:
                    reading = asyncio.ensure_future(source.read(READ_SIZE))
                waits = [f for f in (reading, sealing) if f is not None]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if reading is not None and reading.done():
                    chunk = reading.result()
                    reading = None
                    pending += chunk
                    eof = not chunk
            return await ex.db(upload.finish)
        finally:
            for f in (reading, sealing):
                if f is not None:
                    f.cancel()
            if reading is not None:
                # A cancelled read unwinds on a later loop turn, and only then stops watching the fd: wait
                # for it, or the caller may close the fd first (front/commands.py closes its copy once the
                # store ends), and the loop is left polling a closed descriptor.
                await asyncio.wait([reading])
            ex.db_later(upload.abort)  # after any write still queued; a no-op once finished


def _report(result: PutResult, outcome: StoreOutcome, target: int, key: str) -> StoreReport:
    return StoreReport(
        key,
        result.cid,
        result.size,
        result.deduplicated,
        list(outcome.acked),
        dict(outcome.failed),
        target,
    )
