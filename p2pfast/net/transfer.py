"""Moving objects between nodes: store fan-out, verified ranged get, and the peer side of both.

Blocking work (reading, decrypting, hashing, encrypting, writing, SQL) never runs on the event loop: every
call into the ContentStore goes through `run`, the node's DB thread (`Node.db`). Data moves in pieces of
hundreds of KiB to a few MiB, so one hand-off to that thread carries far more than one 64 KiB frame.

Store (the sender): the object is read and decrypted once per CHUNK (the next one while this one is
sent) and each chunk is written to every replica's stream at once. Each replica has its own stream
credit; a replica that takes no data for STALL_TIMEOUT, fails or refuses is dropped from this transfer
(its stream reset, its own reason reported) and the rest go on, so one slow replica holds the others back
by at most one CHUNK and one stall timeout. A replica counts only once it replied `ok`, which it does
after the object is durable under its own keys and its content id checked (`receive`).

Get (the fetcher, `fetch`): the leaf list first, checked against the content id; then the bytes, in
pieces from up to MAX_HOLDERS holders at once, each segment checked against its leaf as it completes and
written to `out_fd` in order (the piece rules are above PIECE). A holder that fails, stalls or sends a
segment that does not match is dropped and another continues from the first unverified segment. Nothing
unverified reaches `out_fd`. Which piece a holder takes, which segment is kept and which piece is written
next is decided by the sans-IO `proto.schedule.PieceSchedule` (its docstring has the rules); `_Fetch`
does the I/O and reports to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from p2pfast import wire
from p2pfast.counters import COUNTERS
from p2pfast.errors import (
    DiskFull,
    IntegrityError,
    LocalProtocolError,
    NotFound,
    P2PError,
    PeerUnavailable,
    RemoteProtocolError,
)
from p2pfast.front import clientio
from p2pfast.net.session import Session, Stream, StreamError
from p2pfast.proto.schedule import DONE, WAIT, Assignment, PieceSchedule
from p2pfast.store import contentid, segments
from p2pfast.store.durable import writev_all
from p2pfast.store.objects import ContentStore, PutResult, Upload, show_key

T = TypeVar("T")
log = logging.getLogger("p2pfast.transfer")

Run = Callable[..., Awaitable[Any]]

# Plaintext per hand-off to the DB thread and per fan-out step: large enough that the thread hop is noise
# (~50 us against ~1 ms of AES for 4 MiB), small enough that a store holds little: one chunk in memory.
CHUNK = 4 * 1024 * 1024
# A replica or holder that takes or sends nothing for this long is dropped from the transfer.
STALL_TIMEOUT = 30.0
# After the last byte, a replica must seal, fsync and commit; a large object on a slow disk takes a while.
ACK_TIMEOUT = 120.0
# A receiver hands data to the DB thread once this much is queued (below the 1 MiB stream window, so the
# sender can always fill it), and keeps at most PIPELINE such jobs in flight: the network keeps receiving
# while the thread hashes and writes.
HANDOFF = 512 * 1024
PIPELINE = 3
# A replica takes an object up to this size whole from its stream, then stores it in one trip to the DB
# thread (_store_small); a larger one streams in HANDOFF pieces (_receive_large). It is HANDOFF because the
# question is the same one (how much to collect before a trip to the DB thread), not the store's
# small-object rule (store.upload.is_small: one segment): an object between the two streams in pieces here
# and is still sealed in one step by the store.
WHOLE_RECEIVE_MAX = HANDOFF
# Credit a bulk receiver adds on top of the stream's initial window once data flows: with 1 MiB in
# flight the sender waits on every hand-off; 4 MiB keeps it busy (bench_replication: get 343 -> 374 MB/s).
# Only streams we drain get it, so what a peer can make us queue unread stays at the initial window.
EXTRA_WINDOW = 3 * 1024 * 1024
# How long a failed replica's own reason (its error reply) is awaited after its stream broke.
REASON_WAIT = 2.0
# Free space a replica keeps after accepting an object: never fill a disk to the last byte.
FREE_RESERVE = 64 * 1024 * 1024


@dataclass(slots=True)
class StoreOutcome:
    cid: str
    size: int
    acked: list[str] = field(default_factory=list)  # node ids that replied ok
    failed: dict[str, str] = field(default_factory=dict)  # node id -> why


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def object_chunks(
    run: Run, store: ContentStore, cid: str, start: int, end: int, name: str | None = None
) -> AsyncGenerator[bytearray, None]:
    """The plaintext of [start, end) in CHUNK pieces (one empty piece for an empty range), each read on the
    DB thread while the caller sends the one before: reading and sending overlap, and at most two chunks
    are in memory."""
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
        _settle(ahead)  # a read ahead that failed while its caller stopped is retrieved, not reported


# -- store: the sender ---------------------------------------------------------------------------------
async def replicate(
    sessions: Sequence[Session],
    store: ContentStore,
    run: Run,
    key: bytes,
    cid: str,
    size: int,
    plaintext: bytes | None = None,
    progress: Callable[[int], object] | None = None,
    outcome: StoreOutcome | None = None,
) -> StoreOutcome:
    """Stream object `cid` (stored locally under `key`) to every session at once; see the module doc.
    `plaintext`, when the caller still holds the whole (small) object, saves reading it back. `progress`
    gets the bytes sent, summed over the replicas (a chunk sent to three counts three times). `outcome`,
    when given, is filled as replies come, so a caller that is cancelled midway knows who has a copy."""
    outcome = StoreOutcome(cid, size) if outcome is None else outcome
    live: dict[str, tuple[Session, Stream, asyncio.Task[dict[str, Any]]]] = {}
    opened = await asyncio.gather(
        *(s.open_stream_wait(STALL_TIMEOUT) for s in sessions), return_exceptions=True
    )
    for session, stream in zip(sessions, opened, strict=True):
        if isinstance(stream, BaseException):
            if not isinstance(stream, (PeerUnavailable, LocalProtocolError)):
                raise stream
            outcome.failed[session.peer_id] = str(stream)
            continue
        request = {"t": "store", "sid": stream.sid, "cid": cid, "size": size, "key": key.decode()}
        try:
            # Queued now, so that it precedes the stream's data on the wire (_fan_out may send that at
            # once, with no await in between)
            sent = session.send_request(request)
        except (PeerUnavailable, LocalProtocolError) as exc:  # the session closed meanwhile
            outcome.failed[session.peer_id] = str(exc)
            stream.reset(int(wire.ErrorCode.REFUSED))
            continue
        live[session.peer_id] = (session, stream, asyncio.ensure_future(session.replied(*sent)))

    def drop(peer: str, why: str) -> None:
        _, stream, ack = live.pop(peer)
        outcome.failed[peer] = why
        stream.reset(int(wire.ErrorCode.REFUSED))
        _settle(ack)
        log.warning("event=replica_dropped peer=%s cid=%s reason=%r", peer[:12], cid, why)

    try:
        await _fan_out(live, drop, run, store, cid, size, plaintext, progress)
        for peer, (_, _, ack) in list(live.items()):
            try:
                await _within(asyncio.shield(ack), ACK_TIMEOUT)
                outcome.acked.append(peer)
            except (P2PError, TimeoutError) as exc:
                drop(peer, _describe(exc))
    finally:
        for _, stream, ack in live.values():  # cancelled midway (a node shutting down, a client gone)
            if not ack.done():
                stream.reset(int(wire.ErrorCode.REFUSED))
            _settle(ack)
    return outcome


async def _fan_out(
    live: dict[str, tuple[Session, Stream, asyncio.Task[dict[str, Any]]]],
    drop: Callable[[str, str], None],
    run: Run,
    store: ContentStore,
    cid: str,
    size: int,
    plaintext: bytes | None,
    progress: Callable[[int], object] | None = None,
) -> None:
    async def send(stream: Stream, chunk: bytes | bytearray, end: bool) -> None:
        await _within(stream.write(chunk, end=end), STALL_TIMEOUT)

    offset = 0
    source = _one(plaintext) if plaintext is not None else object_chunks(run, store, cid, 0, size)
    async with contextlib.aclosing(source) as chunks:
        async for chunk in chunks:
            for peer, (_, _, ack) in list(live.items()):
                if ack.done():  # replied before the data ended: a refusal (no space, a tombstone, ...)
                    drop(peer, _reason(ack))
            if not live:
                return
            offset += len(chunk)
            end = offset >= size
            # Streams with credit for the whole chunk take it at once (a small object always): no task
            # and timer per replica. The others wait for credit, each on its own.
            peers = [p for p in live if not live[p][1].try_write(chunk, end)]
            results = await asyncio.gather(
                *(send(live[p][1], chunk, end) for p in peers), return_exceptions=True
            )
            for peer, result in zip(peers, results, strict=True):
                if isinstance(result, BaseException) and peer in live:
                    ack = live[peer][2]
                    # A replica that refuses resets the stream, then replies with its reason: wait for
                    # that reply briefly, so the report says "no space", not "stream reset".
                    await asyncio.wait([ack], timeout=REASON_WAIT)
                    done_with_error = ack.done() and not ack.cancelled() and ack.exception() is not None
                    drop(peer, _reason(ack) if done_with_error else _describe(result))
            if progress is not None:
                progress(len(chunk) * len(live))
            if end:
                return


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """wait_for without its task: on Python 3.11 wait_for can swallow a cancellation that arrives as
    its inner task completes (gh-86296), and a transfer cancelled by a graceful stop then ran to the
    end; asyncio.timeout() does not lose it (and saves a task per chunk)."""
    async with asyncio.timeout(seconds):
        return await aw


def _settle(ack: asyncio.Future[Any]) -> None:
    """Cancel a reply still awaited, or retrieve the error of one that failed (never left unread)."""
    if ack.done():
        if not ack.cancelled():
            ack.exception()
    else:
        ack.cancel()


def _reason(ack: asyncio.Task[dict[str, Any]]) -> str:
    if ack.cancelled():
        return "cancelled"
    exc = ack.exception()
    return _describe(exc) if exc is not None else "replied before receiving the data"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"stalled for {STALL_TIMEOUT:g}s"
    return str(exc) or type(exc).__name__


# -- store: the replica --------------------------------------------------------------------------------
async def receive(
    session: Session, msg: dict[str, Any], store: ContentStore, run: Run, max_object: int | None = None
) -> dict[str, Any]:
    """Serve a peer's "store": receive the plaintext, re-encrypt it with our keys, check the content id,
    commit (with the sender recorded as a holder), and only then reply ok."""
    stream = session.stream(msg["sid"])
    size, cid, key = msg["size"], msg["cid"], msg["key"]
    holders = (session.peer_id,)
    try:
        if max_object is not None and size > max_object:
            raise LocalProtocolError(
                f"object of {size} bytes is over this node's limit of {max_object}", wire.ErrorCode.REFUSED
            )
        free = _free_bytes(store.root, size)
        need = segments.file_size(size, store.segment_size) + FREE_RESERVE
        if need > free:
            raise DiskFull(
                f"an object of {_size(size)} does not fit: {_size(free)} free, and this node keeps"
                f" {_size(FREE_RESERVE)} free in reserve"
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
            result = await _receive_large(stream, size, cid, key, store, run, holders)
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
    return {"t": "ok", "size": size}


# A small object may be checked against a free-space reading up to FREE_CACHE_S old: statvfs per 4 KiB
# store was a measurable part of a replica's work, and FREE_RESERVE covers far more than what a second of
# small stores can add. "Small" here is FREE_CACHE_MAX, a bound on what such a reading may miss, so it
# follows FREE_RESERVE: that it equals the segment size (the store's small-object rule, is_small) is not
# a reason, and a change of either leaves the other as it is.
FREE_CACHE_S = 1.0
FREE_CACHE_MAX = 1024 * 1024
_free_seen: dict[Path, tuple[float, int]] = {}


def _size(n: float) -> str:
    """Bytes as the CLI's result lines show them (cli.human: 1024-based units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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
            chunk = await _within(stream.read_some(CHUNK), STALL_TIMEOUT)
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
) -> PutResult:
    upload = await run(store.begin, key, size)
    try:
        received = 0
        jobs: deque[asyncio.Future[None]] = deque()
        while True:
            # The frames as received, pushed one by one into the upload (which copies them into its
            # segment buffer anyway): joining them first was one more copy of every byte.
            chunks = await _within(stream.read_chunks(CHUNK, HANDOFF), STALL_TIMEOUT)
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


# -- get: the holder -----------------------------------------------------------------------------------
async def serve_get(session: Session, msg: dict[str, Any], store: ContentStore, run: Run) -> dict[str, Any]:
    """Serve a peer's "get": the plaintext range on its stream (our object is verified as it is read)."""
    cid, offset, length = msg["cid"], msg["offset"], msg["length"]
    stream = session.stream(msg["sid"])
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
                await _within(stream.write(chunk, end=pos >= end), STALL_TIMEOUT)
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
    return {"t": "ok", "size": pos - start}


async def serve_leaves(
    session: Session, msg: dict[str, Any], store: ContentStore, run: Run
) -> dict[str, Any]:
    size, leaves = await run(store.leaves, msg["cid"])
    sid = msg.get("sid")
    if sid is None:
        return {"t": "ok", "size": size, "leaves": leaves.hex()}
    await _within(session.stream(sid).write(leaves, end=True), STALL_TIMEOUT)
    return {"t": "ok", "size": size}


# -- get: the fetcher ----------------------------------------------------------------------------------
async def fetch_leaves(session: Session, cid: str) -> tuple[int, bytes]:
    """(size, leaves) of `cid` from one holder, checked against the content id."""
    stream = await session.open_stream_wait(STALL_TIMEOUT)
    parts: list[bytes] = []
    stream.set_sink(lambda view: parts.append(bytes(view)))
    reply = await session.request({"t": "leaves", "cid": cid, "sid": stream.sid}, timeout=STALL_TIMEOUT)
    await _within(stream.wait_eof(), STALL_TIMEOUT)
    size, leaves = reply.get("size"), b"".join(parts)
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


def _write_piece(out_fd: int, parts: list[memoryview], keep: Upload | None) -> None:
    writev_all(out_fd, parts)
    if keep is not None:
        _keep_piece(keep, parts)


# a segment being checked on the DB thread: its index, its views, the check
_Check = tuple[int, list[memoryview], asyncio.Future[None]]


async def _holder_reason(exc: BaseException, reply: asyncio.Future[dict[str, Any]]) -> BaseException:
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
        out_fd: int,
        run: Run,
        progress: Callable[[int], object] | None,
        keep: Upload | None,
    ) -> None:
        self.cid, self.size, self.leaves = cid, size, leaves
        self.out_fd, self.run, self.progress, self.keep = out_fd, run, progress, keep
        self.stream_out = clientio.Writer(out_fd) if clientio.is_stream(out_fd) else None
        self.seg = segments.SEGMENT_SIZE
        nsegs = segments.segment_count(size, self.seg)
        # each verified segment is kept as the views it was received in (`_take`)
        self.plan: PieceSchedule[list[memoryview]] = PieceSchedule(nsegs, PIECE, AHEAD)
        self.changed = asyncio.Event()  # the plan changed: a piece released, failed or written
        self.failures: list[tuple[str, BaseException]] = []  # (holder, why it was dropped)
        self.served: dict[str, int] = {}
        self.complete = asyncio.Event()  # every piece written

    def seg_len(self, index: int) -> int:
        return max(0, min(self.seg, self.size - index * self.seg))

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
        offset = job.first * self.seg
        length = sum(self.seg_len(i) for i in range(job.first, job.end))
        stream = await session.open_stream_wait(STALL_TIMEOUT)
        request = {"t": "get", "cid": self.cid, "offset": offset, "length": length, "sid": stream.sid}
        reply = asyncio.ensure_future(session.request(request, timeout=365 * 86400.0))
        # segment checks run on the DB thread while the stream keeps being read; settled in order
        checks: deque[_Check] = deque()
        finished = False
        try:
            finished = await self.receive_piece(session.peer_id, stream, job, checks)
            if finished:
                await _within(reply, STALL_TIMEOUT)
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
                chunks = await _within(stream.read_chunks(CHUNK, HANDOFF), STALL_TIMEOUT)
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
                    check = asyncio.ensure_future(self.run(_check_segment, data, self.leaves, index))
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
            if self.stream_out is not None:  # a pipe: written from the loop, never blocking the DB thread
                for part in parts:
                    await self.stream_out.write(part)
                if self.keep is not None:
                    await self.run(_keep_piece, self.keep, parts)
            else:
                await self.run(_write_piece, self.out_fd, parts, self.keep)
            if self.progress is not None:
                self.progress(sum(len(p) for p in parts))
            self.plan.written(ready.piece)
            self.changed.set()
        if self.plan.complete:
            self.complete.set()


async def fetch(
    holders: Sequence[Session],
    cid: str,
    out_fd: int,
    run: Run,
    progress: Callable[[int], object] | None = None,
    keep: Upload | None = None,
    on_size: Callable[[int], object] | None = None,
) -> tuple[int, dict[str, int]]:
    """Write the verified plaintext of `cid` to out_fd (at its current position, in order), fetched from
    up to MAX_HOLDERS holders at once (see above); returns the size and the bytes each holder served
    (node id -> bytes). With `keep`, every verified segment also goes into that upload (the caller finishes
    it). Nothing unverified reaches out_fd."""
    failures: list[tuple[str, BaseException]] = []
    found = await _first_leaves(holders[:MAX_HOLDERS], cid, failures)
    if found is None:
        raise _no_holder(cid, failures)
    size, leaves = found
    if on_size is not None:  # what a progress bar needs for its total and ETA
        on_size(size)
    job = _Fetch(cid, size, leaves, out_fd, run, progress, keep)
    job.failures = failures
    workers = [asyncio.ensure_future(job.worker(s)) for s in holders[:MAX_HOLDERS]]
    try:
        # Done when every piece is written: a holder still stuck on a piece others finished is not waited
        # for. Or when every worker has given up.
        all_out: asyncio.Future[list[None]] = asyncio.ensure_future(asyncio.gather(*workers))
        # Once the workers are cancelled (the get is complete, or itself cancelled), this gather ends with
        # a worker's CancelledError as its *exception*, which the loop reports as never retrieved.
        all_out.add_done_callback(_settle)
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
        # a job already running on the DB thread finishes anyway; wait for it before out_fd is reused
        with contextlib.suppress(BaseException):
            await run(_barrier)
    if not job.plan.complete:
        raise _no_holder(cid, failures)  # the failures are its one line: not logged as well
    for peer, exc in failures:  # the get succeeded without them: worth a warning each
        log.warning("event=holder_failed peer=%s cid=%s reason=%r", peer[:12], cid, _describe(exc))
    return size, job.served


class NoGoodCopy(IntegrityError):
    """integrity check failed: {}"""

    # A get's summary of the bad copies it met: each was counted where it was found (the holder reading
    # its own copy, or our segment checks), so the command that fails with it counts nothing more.


def _is_integrity(exc: BaseException) -> bool:
    """The holder's copy, or what it sent, failed a check (ours, or its own as it read the copy)."""
    return isinstance(exc, IntegrityError) or getattr(exc, "code", None) == wire.ErrorCode.INTEGRITY


def _no_holder(cid: str, failures: list[tuple[str, BaseException]]) -> P2PError:
    """Why a get found no holder that served it: an integrity failure (exit 4) when every holder tried
    had a bad copy (the object is damaged wherever we looked), else 'peer unavailable' (10: retry)."""
    why = "; ".join(f"{peer[:12]}: {_describe(exc)}" for peer, exc in failures) or "no holder"
    if failures and all(_is_integrity(exc) for _, exc in failures):
        return NoGoodCopy(f"no holder has a good copy of {cid}: {why}")
    return PeerUnavailable(f"no holder could serve {cid}: {why}")


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
            _settle(ask)  # one that failed while we were cancelled is retrieved, not reported by the loop


def _barrier() -> None:
    return None
