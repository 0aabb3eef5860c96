"""Moving objects between nodes: store fan-out, verified ranged get, and the peer side of both.

Blocking work (reading, decrypting, hashing, encrypting, writing, SQL) never runs on the event loop: every
call into the ContentStore goes through `run`, the node's DB thread (`Node.db`). Data moves in CHUNK
pieces, so one hand-off to that thread carries megabytes, not one 64 KiB frame.

Store (the sender): the object is read and decrypted once per CHUNK and that chunk is written to every
replica's stream at once. Each replica has its own stream credit; a replica that takes no data for
`stall_timeout` or fails is dropped from this transfer (its stream reset) and the rest go on, so one slow
replica holds the others back by at most one CHUNK and one stall timeout. A replica counts only once it
replied `ok`, which it does after the object is durable under its own keys and its content id checked.

Get (the fetcher): the leaf list first, checked against the content id; then the bytes from one holder,
each segment checked against its leaf as it completes, written to `out_fd` in order. A holder that fails,
stalls or sends a segment that does not match is dropped and the next holder continues from the last
verified segment. Nothing unverified reaches `out_fd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pfast import wire
from p2pfast.errors import (
    DiskFull,
    IntegrityError,
    LocalProtocolError,
    NotFound,
    P2PError,
    PeerUnavailable,
    RemoteProtocolError,
)
from p2pfast.net.session import Session, Stream
from p2pfast.store import contentid, segments
from p2pfast.store.durable import write_all
from p2pfast.store.objects import ContentStore, Upload, show_key

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


class _Collect:
    """A pump sink that keeps what it is given (one CHUNK at most)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, view: memoryview) -> None:
        self.buf += view


def _read_chunk(store: ContentStore, cid: str, offset: int, length: int) -> bytearray:
    sink = _Collect()
    store.read_object(cid, sink, offset, length)
    return sink.buf


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def _chunks(
    run: Run, store: ContentStore, cid: str, start: int, end: int
) -> AsyncGenerator[bytearray, None]:
    """The plaintext of [start, end) in CHUNK pieces (one empty piece for an empty range), each read on the
    DB thread while the caller sends the one before: reading and sending overlap, and at most two chunks
    are in memory."""
    pos = start
    ahead: asyncio.Future[bytearray] = asyncio.ensure_future(
        run(_read_chunk, store, cid, pos, min(CHUNK, end - pos))
    )
    try:
        while True:
            chunk = await ahead
            pos += len(chunk)
            last = pos >= end or not chunk
            if not last:
                ahead = asyncio.ensure_future(run(_read_chunk, store, cid, pos, min(CHUNK, end - pos)))
            yield chunk
            if last:
                return
    finally:
        ahead.cancel()


# -- store: the sender ---------------------------------------------------------------------------------
async def replicate(
    sessions: Sequence[Session],
    store: ContentStore,
    run: Run,
    key: bytes,
    cid: str,
    size: int,
    plaintext: bytes | None = None,
) -> StoreOutcome:
    """Stream object `cid` (stored locally under `key`) to every session at once; see the module doc.
    `plaintext`, when the caller still holds the whole (small) object, saves reading it back."""
    outcome = StoreOutcome(cid, size)
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
        ack = asyncio.ensure_future(session.request(request, timeout=365 * 86400.0))
        live[session.peer_id] = (session, stream, ack)

    def drop(peer: str, why: str) -> None:
        _, stream, ack = live.pop(peer)
        outcome.failed[peer] = why
        stream.reset(int(wire.ErrorCode.REFUSED))
        ack.cancel()
        log.warning("event=replica_dropped peer=%s cid=%s reason=%r", peer[:12], cid, why)

    async def send(stream: Stream, chunk: bytes | bytearray, end: bool) -> None:
        await asyncio.wait_for(stream.write(chunk, end=end), STALL_TIMEOUT)

    offset = 0
    source = _one(plaintext) if plaintext is not None else _chunks(run, store, cid, 0, size)
    async with contextlib.aclosing(source) as chunks:
        async for chunk in chunks:
            for peer, (_, _, ack) in list(live.items()):
                if ack.done():  # replied before the data ended: a refusal (no space, a tombstone, ...)
                    drop(peer, _reason(ack))
            if not live:
                break
            offset += len(chunk)
            end = offset >= size
            peers = list(live)
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
            if end:
                break
    for peer, (_, _, ack) in list(live.items()):
        try:
            await asyncio.wait_for(asyncio.shield(ack), ACK_TIMEOUT)
            outcome.acked.append(peer)
        except (P2PError, TimeoutError) as exc:
            drop(peer, _describe(exc))
    return outcome


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
    commit, and only then reply ok."""
    stream = session.stream(msg["sid"])
    size, cid, key = msg["size"], msg["cid"], msg["key"]
    try:
        if max_object is not None and size > max_object:
            raise LocalProtocolError(
                f"object of {size} bytes is over this node's limit of {max_object}", wire.ErrorCode.REFUSED
            )
        free = shutil.disk_usage(store.root if store.root.exists() else store.root.parent).free
        need = segments.file_size(size, store.segment_size) + FREE_RESERVE
        if need > free:
            raise DiskFull(f"object of {size} bytes does not fit: {free} bytes free")
        upload = await run(store.begin, key, size)
    except P2PError:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise
    try:
        received = 0
        jobs: deque[asyncio.Future[None]] = deque()
        while True:
            chunk = await asyncio.wait_for(stream.read_some(CHUNK, HANDOFF), STALL_TIMEOUT)
            if not chunk:
                break
            if not received:
                stream.extend_window(EXTRA_WINDOW)
            received += len(chunk)
            if received > size:
                raise RemoteProtocolError(f"sent more than the {size} bytes announced for {cid}")
            jobs.append(asyncio.ensure_future(run(upload.write, chunk)))  # one thread: in order
            while len(jobs) >= PIPELINE:
                await jobs.popleft()
        while jobs:
            await jobs.popleft()
        if received != size:
            raise RemoteProtocolError(f"sent {received} of the {size} bytes announced for {cid}")
        result = await run(upload.finish, cid)
    except TimeoutError:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise PeerUnavailable(f"store of {cid} stalled for {STALL_TIMEOUT:g}s") from None
    except BaseException:
        stream.reset(int(wire.ErrorCode.REFUSED))
        raise
    finally:
        await run(upload.abort)  # a no-op once finished; otherwise no partial object is left
    log.info(
        "event=replica_stored peer=%s key=%s cid=%s size=%d dedup=%s",
        session.peer_id[:12],
        show_key(result.key),
        cid,
        size,
        result.deduplicated,
    )
    return {"t": "ok", "size": size}


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
        async with contextlib.aclosing(_chunks(run, store, cid, start, end)) as chunks:
            async for chunk in chunks:
                pos += len(chunk)
                await asyncio.wait_for(stream.write(chunk, end=pos >= end), STALL_TIMEOUT)
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
    await asyncio.wait_for(session.stream(sid).write(leaves, end=True), STALL_TIMEOUT)
    return {"t": "ok", "size": size}


# -- get: the fetcher ----------------------------------------------------------------------------------
async def fetch_leaves(session: Session, cid: str) -> tuple[int, bytes]:
    """(size, leaves) of `cid` from one holder, checked against the content id."""
    stream = await session.open_stream_wait(STALL_TIMEOUT)
    parts: list[bytes] = []
    stream.set_sink(lambda view: parts.append(bytes(view)))
    reply = await session.request({"t": "leaves", "cid": cid, "sid": stream.sid}, timeout=STALL_TIMEOUT)
    await asyncio.wait_for(stream.wait_eof(), STALL_TIMEOUT)
    size, leaves = reply.get("size"), b"".join(parts)
    if type(size) is not int or contentid.root(size, leaves) != cid:
        raise IntegrityError(f"the segment hashes from {session.peer_id[:12]} do not match {cid}")
    return size, leaves


class _Verifier:
    """Collects one segment at a time, checks it against its leaf and writes it to out_fd (on the DB
    thread: hashing and writing are blocking work)."""

    def __init__(
        self, out_fd: int, leaves: bytes, segment_size: int, start_segment: int, keep: Upload | None = None
    ) -> None:
        self.out_fd = out_fd
        self.keep = keep  # a local copy being stored as the verified segments go by (get --keep)
        self.leaves = leaves
        self.seg = segment_size
        self.index = start_segment
        self.buf = bytearray()
        self.verified = start_segment * segment_size  # bytes of verified plaintext written so far

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= self.seg:
            self._segment(self.seg)

    def finish(self, size: int) -> None:
        if self.buf or size == 0:
            self._segment(len(self.buf))
        if self.verified != size:
            raise IntegrityError(f"got {self.verified} of {size} bytes")

    def _segment(self, n: int) -> None:
        piece = memoryview(self.buf)[:n]
        try:
            if contentid.leaf(piece) != self.leaves[32 * self.index : 32 * self.index + 32]:
                raise IntegrityError(f"segment {self.index} does not match its hash")
            write_all(self.out_fd, piece)
            if self.keep is not None:
                self.keep.write(piece)
        finally:
            piece.release()
        del self.buf[:n]
        self.index += 1
        self.verified += n


def _barrier() -> None:
    return None


async def fetch(
    holders: Sequence[Session],
    cid: str,
    out_fd: int,
    run: Run,
    progress: Callable[[int], object] | None = None,
    keep: Upload | None = None,
) -> tuple[int, str]:
    """Write the verified plaintext of `cid` to out_fd (at its current position, in order); returns the
    size and the node id of the holder that finished it. Holders are tried in order; each continues from
    the last verified segment of the one before. With `keep`, every verified segment also goes into that
    upload (the caller finishes it)."""
    failures: list[str] = []
    leaves: bytes | None = None
    size = 0
    seg = segments.SEGMENT_SIZE
    done = 0  # segments verified and written
    for session in holders:
        who = session.peer_id[:12]
        try:
            if leaves is None:
                size, leaves = await fetch_leaves(session, cid)
            verifier = _Verifier(out_fd, leaves, seg, done, keep)
            stream = await session.open_stream_wait(STALL_TIMEOUT)
            request = {"t": "get", "cid": cid, "offset": done * seg, "length": -1, "sid": stream.sid}
            reply = asyncio.ensure_future(session.request(request, timeout=365 * 86400.0))
            jobs: deque[asyncio.Future[None]] = deque()
            extended = False
            try:
                reported = verifier.verified
                while True:
                    chunk = await asyncio.wait_for(stream.read_some(CHUNK, HANDOFF), STALL_TIMEOUT)
                    if not chunk:
                        break
                    if not extended:
                        stream.extend_window(EXTRA_WINDOW)
                        extended = True
                    jobs.append(asyncio.ensure_future(run(verifier.feed, chunk)))  # one thread: in order
                    while len(jobs) >= PIPELINE:
                        await jobs.popleft()
                    if progress is not None and verifier.verified > reported:
                        progress(verifier.verified - reported)
                        reported = verifier.verified
                while jobs:
                    await jobs.popleft()
                if progress is not None and verifier.verified > reported:
                    progress(verifier.verified - reported)
                before = verifier.verified
                await run(verifier.finish, size)
                if progress is not None:
                    progress(verifier.verified - before)
                await asyncio.wait_for(reply, STALL_TIMEOUT)
                return size, session.peer_id
            except BaseException:
                for job in jobs:
                    job.cancel()
                # A job already running finishes anyway; once a no-op queued behind it has run on the one
                # DB thread, verifier.index is final and the next holder resumes exactly there.
                with contextlib.suppress(BaseException):
                    await run(_barrier)
                stream.reset(int(wire.ErrorCode.REFUSED))
                if reply.done() and not reply.cancelled() and reply.exception() is not None:
                    raise reply.exception() from None  # type: ignore[misc]  # the holder's reason
                reply.cancel()
                raise
            finally:
                done = verifier.index
        except (P2PError, TimeoutError) as exc:
            failures.append(f"{who}: {_describe(exc)}")
            log.warning("event=holder_failed peer=%s cid=%s reason=%r", who, cid, _describe(exc))
    raise PeerUnavailable(f"no holder could serve {cid}: " + "; ".join(failures or ["no holder"]))
