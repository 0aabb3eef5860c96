"""How the node's transfers pace themselves: piece sizes, stream windows and timeouts, and the waits
that every service uses the same way.

Data moves in pieces of hundreds of KiB to a few MiB, so one hand-off to a worker thread carries far more
than one 64 KiB frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

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
# How long a failed peer's own reason (its error reply) is awaited after its stream broke.
REASON_WAIT = 2.0


async def within(aw: Awaitable[T], seconds: float) -> T:
    """wait_for without its task: on Python 3.11 wait_for can swallow a cancellation that arrives as
    its inner task completes (gh-86296), and a transfer cancelled by a graceful stop then ran to the
    end; asyncio.timeout() does not lose it (and saves a task per chunk)."""
    async with asyncio.timeout(seconds):
        return await aw


def settle(fut: asyncio.Future[Any]) -> None:
    """Cancel a future still awaited, or retrieve the error of one that failed (never left unread)."""
    if fut.done():
        if not fut.cancelled():
            fut.exception()
    else:
        fut.cancel()


def describe(exc: BaseException) -> str:
    """A failure as a report's reason: a stall says how long."""
    if isinstance(exc, TimeoutError):
        return f"stalled for {STALL_TIMEOUT:g}s"
    return str(exc) or type(exc).__name__


class Throttle:
    """Paces work to `rate` bytes a second on average (the scrub's reads, repair's copies): each n bytes
    book n / rate seconds, and `take` says how long to wait so the work done never runs ahead of that. Idle
    time is not saved up: after a pause the rate starts again from now, so a pass never bursts above its
    bandwidth."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._free_at = 0.0  # when the bytes read so far have been paid for

    def take(self, n: int, now: float) -> float:
        """Seconds to wait after reading `n` bytes at time `now` (monotonic)."""
        if self.rate is None:
            return 0.0
        self._free_at = max(self._free_at, now) + n / self.rate
        return self._free_at - now


# While a user's transfer runs on a node (and for LINGER after the last one ends, so a script's
# back-to-back stores count as one busy spell), its repair copies, sent and received, are charged
# BUSY_SHARE times their bytes: repair yields to users but keeps moving, at 1/BUSY_SHARE of its bandwidth.
BUSY_SHARE = 8
LINGER = 1.0


class Activity:
    """The user transfers under way on this node: its own stores and gets, a peer's store (a user's
    replication) and a peer's get. Background work asks `busy` to yield to them."""

    def __init__(self) -> None:
        self.active = 0
        self._ended = float("-inf")

    @contextlib.contextmanager
    def user(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._ended = time.monotonic()

    def busy(self, now: float) -> bool:
        return self.active > 0 or now - self._ended < LINGER


# What a message's own fields take, beside the items a sender packs into it.
MESSAGE_ROOM = 256


def by_size(items: Iterable[T], size: Callable[[T], int], room: int, most: int) -> list[list[T]]:
    """`items` cut into batches of at most `most`, each of total `size` at most `room` (one item that
    is larger alone still goes, alone): requests that stay under the control message cap whatever the
    keys, for the repair's holds, the key metadata and the view's records."""
    out: list[list[T]] = []
    batch: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if batch and (len(batch) == most or used + n > room):
            out.append(batch)
            batch, used = [], 0
        batch.append(item)
        used += n
    if batch:
        out.append(batch)
    return out
