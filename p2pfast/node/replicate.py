"""Replication, the sender's side: one stored object streamed to its replicas at once.

The object is read and decrypted once per CHUNK (the next one while this one is sent) and each chunk is
written to every replica's stream at once. Each replica has its own stream credit; a replica that takes
no data for STALL_TIMEOUT, fails or refuses is dropped from this transfer (its stream reset, its own
reason reported) and the rest go on, so one slow replica holds the others back by at most one CHUNK and
one stall timeout. A replica counts only once it replied `ok`, which it does after the object is durable
under its own keys and its content id checked (receive.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from p2pfast import wire
from p2pfast.errors import LocalProtocolError, P2PError, PeerUnavailable
from p2pfast.net.session import Session, Stream
from p2pfast.node.chunks import Run, object_chunks
from p2pfast.node.flow import ACK_TIMEOUT, REASON_WAIT, STALL_TIMEOUT, describe, settle, within
from p2pfast.proto import messages as m
from p2pfast.store.objects import ContentStore

log = logging.getLogger("p2pfast.transfer")


@dataclass(slots=True)
class StoreOutcome:
    cid: str
    size: int
    acked: list[str] = field(default_factory=list)  # node ids that replied ok
    failed: dict[str, str] = field(default_factory=dict)  # node id -> why


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


_Live = dict[str, tuple[Session, Stream, "asyncio.Future[m.Reply]"]]


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
    *,
    repair: bool = False,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> StoreOutcome:
    """Stream object `cid` (stored locally under `key`) to every session at once; see the module doc.
    `plaintext`, when the caller still holds the whole (small) object, saves reading it back. `progress`
    gets the bytes sent, summed over the replicas (a chunk sent to three counts three times). `outcome`,
    when given, is filled as replies come, so a caller that is cancelled midway knows who has a copy.
    `repair` marks the copies as repair copies (a tombstone for the key wins over them); `pace`, awaited
    with the bytes of each chunk once it is sent to every replica, holds a throttled transfer back."""
    outcome = StoreOutcome(cid, size) if outcome is None else outcome
    live: _Live = {}
    opened = await asyncio.gather(
        *(s.open_stream_wait(STALL_TIMEOUT) for s in sessions), return_exceptions=True
    )
    for session, stream in zip(sessions, opened, strict=True):
        if isinstance(stream, BaseException):
            if not isinstance(stream, (PeerUnavailable, LocalProtocolError)):
                raise stream
            outcome.failed[session.peer_id] = str(stream)
            continue
        request = m.Store(sid=stream.sid, cid=cid, size=size, key=key.decode(), repair=repair)
        try:
            # Queued now, so that it precedes the stream's data on the wire (_fan_out may send that at
            # once, with no await in between)
            sent = session.send_request(request)
        except (PeerUnavailable, LocalProtocolError) as exc:  # the session closed meanwhile
            outcome.failed[session.peer_id] = str(exc)
            stream.reset(int(wire.ErrorCode.REFUSED))
            continue
        live[session.peer_id] = (session, stream, asyncio.ensure_future(session.replied(request, *sent)))

    def drop(peer: str, why: str) -> None:
        _, stream, ack = live.pop(peer)
        outcome.failed[peer] = why
        stream.reset(int(wire.ErrorCode.REFUSED))
        settle(ack)
        log.warning("event=replica_dropped peer=%s cid=%s reason=%r", peer[:12], cid, why)

    try:
        await _fan_out(live, drop, run, store, cid, size, plaintext, progress, pace)
        for peer, (_, _, ack) in list(live.items()):
            try:
                await within(asyncio.shield(ack), ACK_TIMEOUT)
                outcome.acked.append(peer)
            except (P2PError, TimeoutError) as exc:
                drop(peer, describe(exc))
    finally:
        for _, stream, ack in live.values():  # cancelled midway (a node shutting down, a client gone)
            if not ack.done():
                stream.reset(int(wire.ErrorCode.REFUSED))
            settle(ack)
    return outcome


async def _fan_out(
    live: _Live,
    drop: Callable[[str, str], None],
    run: Run,
    store: ContentStore,
    cid: str,
    size: int,
    plaintext: bytes | None,
    progress: Callable[[int], object] | None = None,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    async def send(stream: Stream, chunk: bytes | bytearray, end: bool) -> None:
        await within(stream.write(chunk, end=end), STALL_TIMEOUT)

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
                    drop(peer, _reason(ack) if done_with_error else describe(result))
            if progress is not None:
                progress(len(chunk) * len(live))
            if pace is not None:
                await pace(len(chunk) * len(live))
            if end:
                return


def _reason(ack: asyncio.Future[m.Reply]) -> str:
    if ack.cancelled():
        return "cancelled"
    exc = ack.exception()
    return describe(exc) if exc is not None else "replied before receiving the data"
