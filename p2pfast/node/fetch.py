"""A verified get from the network: the leaf list first, checked against the content id; then the bytes,
in pieces from up to MAX_HOLDERS holders at once, each segment checked against its leaf as it completes
and written to the sink in order. A holder that fails, stalls or sends a segment that does not match is
dropped and another continues from the first unverified segment. Nothing unverified reaches the sink.
Which piece a holder takes, which segment is kept and which piece is written next is decided by the
sans-IO `proto.schedule.PieceSchedule` (its docstring has the rules); `_Fetch` does the I/O and reports
to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from p2pfast import wire
from p2pfast.counters import COUNTERS
from p2pfast.errors import IntegrityError, P2PError, PeerUnavailable
from p2pfast.net.session import Session, Stream, StreamError
from p2pfast.node.executors import Executors
from p2pfast.node.flow import (
    CHUNK,
    EXTRA_WINDOW,
    HANDOFF,
    REASON_WAIT,
    STALL_TIMEOUT,
    describe,
    settle,
    within,
)
from p2pfast.node.reports import Progress
from p2pfast.node.sources import Sink
from p2pfast.proto import messages as m
from p2pfast.proto.schedule import DONE, MAX_WORKERS, WAIT, Assignment, PieceSchedule
from p2pfast.store import contentid, segments
from p2pfast.store.durable import writev_all
from p2pfast.store.objects import Upload

log = logging.getLogger("p2pfast.transfer")


async def fetch_leaves(session: Session, cid: str) -> tuple[int, bytes]:
    """(size, leaves) of `cid` from one holder, checked against the content id."""
    stream = await session.open_stream_wait(STALL_TIMEOUT)
    parts: list[bytes] = []
    stream.set_sink(lambda view: parts.append(bytes(view)))
    reply = await session.request(m.Leaves(cid=cid, sid=stream.sid), timeout=STALL_TIMEOUT)
    await within(stream.wait_eof(), STALL_TIMEOUT)
    size, leaves = reply.size, b"".join(parts)
    if type(size) is not int or contentid.root(size, leaves) != cid:
        COUNTERS.integrity_failures += 1
        raise IntegrityError(f"the segment hashes from {session.peer_id[:12]} do not match {cid}")
    return size, leaves


# Parallel get: the object is cut into pieces of PIECE segments; each holder (MAX_HOLDERS at most) takes
# the next piece not taken, verifies every segment alone as it completes, and the pieces are written in
# order. Pieces are taken at most AHEAD beyond the first one not yet written, which bounds what waits in
# memory (AHEAD x PIECE MiB). A holder with nothing left to take helps with the oldest unfinished piece
# (BitTorrent's endgame): a slow holder's piece is then finished by a faster one, and the slow copy is
# dropped. A holder that fails or sends a bad segment is dropped; its piece goes back, from its first
# unverified segment. These rules are `proto.schedule.PieceSchedule`'s, unit-tested there without I/O.
# Measured on one 2-core machine where every holder shares the cores (500 MiB, MB/s, two runs each):
# 4 holders x 4-segment pieces 186-273, 2 x 8 206-305, 2 x 16 312-364, one holder 292-428. Holders on
# their own machines add bandwidth instead; 2 holders keep the gain from overtaking a slow one at a
# modest cost here, and 8 MiB pieces, 3 ahead, keep memory at 24 MiB.
PIECE = 8
AHEAD = 3
MAX_HOLDERS = 2


def _check_segment(parts: list[memoryview], leaves: bytes, index: int) -> None:
    if contentid.leaf_of(parts) != leaves[32 * index : 32 * index + 32]:
        raise IntegrityError(f"segment {index} does not match its hash")


def _take(pending: deque[memoryview], n: int) -> list[memoryview]:
    """The first n bytes of `pending`, as views of the received chunks: a segment is hashed and written
    from them, never joined (each copy of a get's bytes on the loop thread cost about as much as hashing
    them). What is left of a split chunk stays in `pending`."""
    parts = []
    while n:
        v = pending[0]
        if len(v) <= n:
            parts.append(v)
            pending.popleft()
            n -= len(v)
        else:
            parts.append(v[:n])
            pending[0] = v[n:]
            n = 0
    return parts


def _keep_piece(keep: Upload, parts: list[memoryview]) -> None:
    for part in parts:
        keep.write(part)


def _write_piece(fd: int, parts: list[memoryview], keep: Upload | None) -> None:
    writev_all(fd, parts)
    if keep is not None:
        _keep_piece(keep, parts)


# a segment being checked on the DB thread: its index, its views, the check
_Check = tuple[int, list[memoryview], asyncio.Future[None]]


async def _holder_reason(exc: BaseException, reply: asyncio.Future[m.Ok]) -> BaseException:
    """Why a holder failed: its own reason when its reply carries one, else `exc`."""
    if isinstance(exc, StreamError) and exc.code is not None and not reply.done():
        # A holder that refuses resets the stream, then replies with its reason: wait for that briefly,
        # so the failure says "integrity check failed", not "stream reset".
        await asyncio.wait([reply], timeout=REASON_WAIT)
    if reply.done() and not reply.cancelled() and reply.exception() is not None:
        return reply.exception()  # type: ignore[return-value]
    return exc


class _Fetch:
    """The I/O of one parallel get: a worker per holder fetches and checks what `plan` assigns it, and
    the verified pieces are written as `plan` releases them."""

    def __init__(
        self,
        cid: str,
        size: int,
        leaves: bytes,
        sink: Sink,
        ex: Executors,
        progress: Callable[[int], object] | None,
        keep: Upload | None,
        window: tuple[int, int] | None = None,
    ) -> None:
        self.cid, self.size, self.leaves = cid, size, leaves
        self.sink, self.ex, self.progress, self.keep = sink, ex, progress, keep
        self.seg = segments.SEGMENT_SIZE
        nsegs = segments.segment_count(size, self.seg)
        # the plan's segment i is the object's segment base + i (a window: a ranged read's segments)
        self.base, count = 0, nsegs
        if window is not None:
            end = min(nsegs, -(-window[1] // self.seg))
            self.base = min(window[0] // self.seg, max(0, end - 1))
            count = max(1, end - self.base)
        # each verified segment is kept as the views it was received in (`_take`). A ranged read is most
        # often one piece (a client's 8 MiB ranges, 10 at a time): no endgame copy of it from a second
        # holder, which would double every range's traffic; that holder still takes over a piece whose
        # holder fails or stalls (the schedule frees it)
        helpers = 1 if window is not None else MAX_WORKERS
        self.plan: PieceSchedule[list[memoryview]] = PieceSchedule(count, PIECE, AHEAD, helpers)
        self.changed = asyncio.Event()  # the plan changed: a piece released, failed or written
        self.failures: list[tuple[str, BaseException]] = []  # (holder, why it was dropped)
        self.served: dict[str, int] = {}
        self.complete = asyncio.Event()  # every piece written

    def seg_len(self, index: int) -> int:
        return max(0, min(self.seg, self.size - (self.base + index) * self.seg))

    async def worker(self, session: Session) -> None:
        peer = session.peer_id
        while True:
            job = self.plan.assign(peer)
            if job is DONE:
                return
            if job is WAIT:
                self.changed.clear()
                await self.changed.wait()
                continue
            assert isinstance(job, Assignment)
            try:
                await self.fetch_piece(session, job)
            except (P2PError, TimeoutError) as exc:
                self.failures.append((peer, exc))  # logged by fetch() if the get succeeds all the same
                self.plan.fail(peer)  # this holder is out; its piece is free for the others
                return
            finally:
                self.plan.release(peer)  # (nothing left to release after a failure)
                self.changed.set()
            if self.plan.is_done(job.piece):
                await self.write_ready()

    async def fetch_piece(self, session: Session, job: Assignment) -> None:
        """Ask `session` for the segments of `job` and verify them, until they are all in or another
        holder finished the piece."""
        offset = (self.base + job.first) * self.seg
        length = sum(self.seg_len(i) for i in range(job.first, job.end))
        stream = await session.open_stream_wait(STALL_TIMEOUT)
        request = m.Get(cid=self.cid, offset=offset, length=length, sid=stream.sid)
        reply = asyncio.ensure_future(session.request(request, timeout=365 * 86400.0))
        # segment checks run on the CPU pool while the stream keeps being read; settled in order
        checks: deque[_Check] = deque()
        finished = False
        try:
            finished = await self.receive_piece(session.peer_id, stream, job, checks)
            if finished:
                await within(reply, STALL_TIMEOUT)
        except (P2PError, TimeoutError) as exc:
            why = await _holder_reason(exc, reply)
            if why is not exc:
                raise why from None  # the holder's own reason
            raise
        finally:
            for _, _, pending in checks:
                if pending.done() and not pending.cancelled():
                    pending.exception()  # retrieved: another holder finished the piece meanwhile
                pending.cancel()
            if not finished:
                stream.reset(int(wire.ErrorCode.REFUSED))  # done by another holder, or failed
                reply.cancel()

    async def receive_piece(self, peer: str, stream: Stream, job: Assignment, checks: deque[_Check]) -> bool:
        """Read `job`'s range, cut it into segments and check those the plan still needs. True: the whole
        range is in and verified; False: another holder finished the piece first."""
        plan = self.plan
        index = job.first
        received: deque[memoryview] = deque()  # not yet cut into segments
        have = 0
        extended = False
        while index < job.end and not plan.is_done(job.piece):
            if self.seg_len(index) > 0:  # (the one empty segment of an empty object needs none)
                chunks = await within(stream.read_chunks(CHUNK, HANDOFF), STALL_TIMEOUT)
                if not chunks:
                    raise PeerUnavailable(f"{peer[:12]} ended the stream early")
                if not extended:
                    stream.extend_window(EXTRA_WINDOW)
                    extended = True
                for c in chunks:
                    received.append(memoryview(c))
                    have += len(c)
            while index < job.end and have >= self.seg_len(index):
                n = self.seg_len(index)
                data = _take(received, n)  # one copy: the frames' bytes joined into the segment
                have -= n
                if plan.needs(job.piece, index):  # not yet verified from another holder's copy
                    check = asyncio.ensure_future(
                        self.ex.cpu(_check_segment, data, self.leaves, self.base + index)
                    )
                    checks.append((index, data, check))
                index += 1
            await self.settle(peer, job, checks, wait_all=index >= job.end)
        return index >= job.end

    async def settle(self, peer: str, job: Assignment, checks: deque[_Check], wait_all: bool) -> None:
        """Report the checks that are done (with `wait_all`, every one), in order, to the plan."""
        while checks and (wait_all or checks[0][2].done()):
            i, data, check = checks.popleft()
            try:
                await check
            except IntegrityError:  # this holder sent a bad segment: counted, and it is dropped
                COUNTERS.integrity_failures += 1
                raise
            if self.plan.verified(peer, job.piece, i, data):  # the first copy of it: this one is kept
                self.served[peer] = self.served.get(peer, 0) + sum(len(v) for v in data)

    async def write_ready(self) -> None:
        """Write every finished piece at the front, in order. The plan hands out one piece at a time: a
        worker that finds a write under way leaves it to the writer, which takes the next piece itself."""
        while (ready := self.plan.take_write()) is not None:
            parts = [v for seg in ready.segments for v in seg]
            if self.sink.file is None:  # a pipe, a socket, memory: awaited on the loop, no thread held
                for part in parts:
                    await self.sink.write(part)
                if self.keep is not None:
                    await self.ex.db(_keep_piece, self.keep, parts)
            else:
                await self.ex.db(_write_piece, self.sink.file, parts, self.keep)
            if self.progress is not None:
                self.progress(sum(len(p) for p in parts))
            self.plan.written(ready.piece)
            self.changed.set()
        if self.plan.complete:
            self.complete.set()


async def fetch(
    holders: Sequence[Session],
    cid: str,
    sink: Sink,
    ex: Executors,
    progress: Callable[[int], object] | None = None,
    keep: Upload | None = None,
    on_size: Callable[[int], object] | None = None,
    window: tuple[int, int] | None = None,
) -> tuple[int, dict[str, int]]:
    """Write the verified plaintext of `cid` to `sink` (a file: at its position; in order), fetched from
    up to MAX_HOLDERS holders at once (see above); returns the size and the bytes each holder served
    (node id -> bytes). With `keep`, every verified segment also goes into that upload (the caller finishes
    it). Nothing unverified reaches the sink.

    `window` (start, end): only the segments that hold bytes [start, end) are fetched and written, from
    the first byte of the one `start` falls in (window_start tells where that is); not with `keep`."""
    failures: list[tuple[str, BaseException]] = []
    found = await _first_leaves(holders[:MAX_HOLDERS], cid, failures)
    if found is None:
        raise _no_holder(cid, failures, before_data=True)
    size, leaves = found
    if on_size is not None:  # what a progress bar needs for its total and ETA
        on_size(size)
    assert window is None or keep is None, "a replica is the whole object"
    job = _Fetch(cid, size, leaves, sink, ex, progress, keep, window)
    job.failures = failures
    workers = [asyncio.ensure_future(job.worker(s)) for s in holders[:MAX_HOLDERS]]
    try:
        # Done when every piece is written: a holder still stuck on a piece others finished is not waited
        # for. Or when every worker has given up.
        all_out: asyncio.Future[list[None]] = asyncio.ensure_future(asyncio.gather(*workers))
        # Once the workers are cancelled (the get is complete, or itself cancelled), this gather ends with
        # a worker's CancelledError as its *exception*, which the loop reports as never retrieved.
        all_out.add_done_callback(settle)
        complete: asyncio.Future[bool] = asyncio.ensure_future(job.complete.wait())
        waits: list[asyncio.Future[Any]] = [all_out, complete]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        complete.cancel()
        if all_out.done():
            all_out.result()  # an unexpected error in a worker surfaces here
    finally:
        for w in workers:
            w.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*workers, return_exceptions=True)
        # a job already running on the DB thread finishes anyway; wait for it before the sink is reused
        with contextlib.suppress(BaseException):
            await ex.db(_barrier)
    if not job.plan.complete:
        raise _no_holder(cid, failures)  # the failures are its one line: not logged as well
    for peer, exc in failures:  # the get succeeded without them: worth a warning each
        log.warning("event=holder_failed peer=%s cid=%s reason=%r", peer[:12], cid, describe(exc))
    return size, job.served


class NoGoodCopy(IntegrityError):
    """integrity check failed: {}"""

    # A get's summary of the bad copies it met: each was counted where it was found (the holder reading
    # its own copy, or our segment checks), so the command that fails with it counts nothing more.


class NoneServed(PeerUnavailable):
    """peer unavailable: {}"""

    # No holder asked sent the segment hashes, so nothing was fetched or written: the caller may ask
    # other holders (a get by key whose holders came from the key's metadata, node/getting.py).


def _is_integrity(exc: BaseException) -> bool:
    """The holder's copy, or what it sent, failed a check (ours, or its own as it read the copy)."""
    return isinstance(exc, IntegrityError) or getattr(exc, "code", None) == wire.ErrorCode.INTEGRITY


def _no_holder(cid: str, failures: list[tuple[str, BaseException]], before_data: bool = False) -> P2PError:
    """Why a get found no holder that served it: an integrity failure (exit 4) when every holder tried
    had a bad copy (the object is damaged wherever we looked), else 'peer unavailable' (10: retry);
    `before_data`: none sent the segment hashes (NoneServed: nothing was written)."""
    why = "; ".join(f"{peer[:12]}: {describe(exc)}" for peer, exc in failures) or "no holder"
    if failures and all(_is_integrity(exc) for _, exc in failures):
        return NoGoodCopy(f"no holder has a good copy of {cid}: {why}")
    return (NoneServed if before_data else PeerUnavailable)(f"no holder could serve {cid}: {why}")


async def _first_leaves(
    holders: Sequence[Session], cid: str, failures: list[tuple[str, BaseException]]
) -> tuple[int, bytes] | None:
    """The segment hashes from whichever holder gives valid ones first: all are asked at once (a few
    KiB each), so one stalled holder costs nothing."""
    asks = {asyncio.ensure_future(fetch_leaves(s, cid)): s for s in holders}
    try:
        pending = set(asks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for ask in done:
                exc = ask.exception()
                if exc is None:
                    return ask.result()
                if not isinstance(exc, (P2PError, TimeoutError)):
                    raise exc
                failures.append((asks[ask].peer_id, exc))
        return None
    finally:
        for ask in asks:
            settle(ask)  # one that failed while we were cancelled is retrieved, not reported by the loop


def _barrier() -> None:
    return None


def window_start(start: int) -> int:
    """Where a fetch with window (start, end) begins writing: the first byte of `start`'s segment."""
    return start - start % segments.SEGMENT_SIZE


def main_source(served: dict[str, int], holders: list[Session]) -> str:
    """The holder a fetch names as its source: the one that served the most bytes (an empty object: the
    first asked)."""
    return max(served, key=lambda p: served[p]) if served else holders[0].peer_id


def sized(progress: Progress | None) -> Callable[[int], None] | None:
    """For a fetch: once the holders' segment list gives the object's size, the get phase begins."""
    return None if progress is None else functools.partial(progress.begin, "get")
