"""Anti-entropy: every node keeps the files it holds at their target number of copies, with no command
typed (docs/operations.md, "Self-healing").

A pass walks the files this node holds. It asks every connected member which of them it holds, in
batches (`holds`: up to 200 (key, content id) pairs per request, answered with one bit each), so a pass
costs files/200 small requests per member, not one per file. A file's copies are this node's, the members
that said they hold it, and the members that acknowledged a copy (`shares`) and went away less than
`repair_grace` ago: a member that restarts or blips is not yet counted out, so short outages cause no
copy storm. When a file has fewer copies than its target, the holder ranked first for its content id
(rendezvous hashing, placement.py) among those that hold it copies it to the best-ranked connected
members that lack it; the others leave it to that one, so one copy is sent per missing replica. The
copy is an ordinary replication (replicate.py), marked as a repair: the receiver verifies it exactly
like a store, and refuses it if it holds a tombstone for the file (a deleted file is never brought
back), sending the tombstone back so the holder deletes its copy too.

Passes run every `repair_interval`, shortly after a member joins (a file that could not reach its
target before may now), `repair_grace` after a member goes, after a store that reached fewer replicas
than its target, and on `p2pfast repair`. Copies are throttled to `repair_bandwidth` (bytes sent per
second, summed over the replicas) and `repair_concurrency` objects at once.

Nothing is ever dropped here: a member that returns after its files were repaired elsewhere makes
them one copy over their target until an operator deletes or a later version moves copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from p2pfast import wire
from p2pfast.counters import COUNTERS
from p2pfast.errors import P2PError, PeerUnavailable
from p2pfast.net.session import Session
from p2pfast.node import placement
from p2pfast.node.context import Context
from p2pfast.node.flow import Throttle
from p2pfast.node.replicate import StoreOutcome, replicate
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.store.objects import show_key

log = logging.getLogger("p2pfast.repair")

# Defaults of the config keys of the same names (docs/operations.md says why each).
REPAIR_INTERVAL = 600.0
REPAIR_GRACE = 300.0
REPAIR_BANDWIDTH = 32 * 1024 * 1024
REPAIR_CONCURRENCY = 2
# A trigger waits this long for others: a burst of joins or departures costs one pass.
DEBOUNCE = 2.0
# A member's answer to one holds request.
HOLDS_TIMEOUT = 30.0
# Files listed by name in a report (status shows them): the count is always whole.
LISTED = 20


@dataclass(frozen=True, slots=True)
class Settings:
    interval: float = REPAIR_INTERVAL
    grace: float = REPAIR_GRACE
    bandwidth: int = REPAIR_BANDWIDTH
    concurrency: int = REPAIR_CONCURRENCY


@dataclass(slots=True)
class Report:
    """What one pass found and did (`p2pfast repair --json`, and status's `repair`)."""

    reason: str
    started_at: float
    files: int = 0  # files (keys) held here and checked
    objects: int = 0  # their distinct objects
    under_replicated: int = 0  # of those, below their target when the pass began
    copies: int = 0  # copies made (one per replica that acknowledged)
    bytes: int = 0  # bytes those copies sent
    failed: int = 0  # copies tried that did not land
    members_asked: int = 0
    members_unanswered: int = 0
    seconds: float = 0.0
    # files still below their target at the end: {key, cid, copies, target, holders}, the first LISTED
    still_under: list[dict[str, Any]] = field(default_factory=list)
    still_under_count: int = 0
    left_to: int = 0  # under-replicated objects whose copying another holder ranks first for


class _Pace:
    """One bandwidth budget for every repair copy of this node: after n bytes went out, the next may go
    n / bandwidth seconds later."""

    def __init__(self, bandwidth: int) -> None:
        self._throttle = Throttle(max(1, bandwidth))

    async def __call__(self, n: int) -> None:
        delay = self._throttle.take(n, time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)


class Repair:
    def __init__(self, ctx: Context, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.pace = _Pace(settings.bandwidth)
        self.last: Report | None = None
        self.running: Report | None = None  # the pass under way
        self.queue = 0  # files of the pass under way still waiting for their copies
        self._lock = asyncio.Lock()  # one pass at a time
        self._wake = asyncio.Event()
        self._due: float | None = None  # loop time of the next triggered pass
        self._why = ""

    # -- triggers ------------------------------------------------------------------------------------
    def trigger(self, reason: str, delay: float = DEBOUNCE) -> None:
        """Ask for a pass in `delay` seconds (or sooner, if one is already due sooner)."""
        due = asyncio.get_running_loop().time() + delay
        if self._due is None or due < self._due:
            self._due, self._why = due, reason
        self._wake.set()

    def on_ready(self, session: Session) -> None:
        self.trigger("member_joined")

    def on_closed(self, session: Session) -> None:
        # Its copies count until the grace period ends; then a pass copies what it held.
        self.trigger("member_gone", self.settings.grace + DEBOUNCE)

    def after_store(self, acked: int, target: int) -> None:
        if acked < target:
            self.trigger("store_short")

    async def run(self) -> None:
        """The background loop: a pass every interval, or when a trigger falls due."""
        loop = asyncio.get_running_loop()
        next_periodic = loop.time() + self.settings.interval
        while True:
            due = min(next_periodic, self._due if self._due is not None else next_periodic)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    await self._wake.wait()
                    continue  # a new trigger: recompute when the next pass is due
            if self._due is not None and self._due <= loop.time():
                reason, self._due = self._why, None
            else:
                reason, next_periodic = "periodic", loop.time() + self.settings.interval
            try:
                await self.pass_now(reason)
            except PeerUnavailable:  # the node is stopping
                return
            except P2PError as exc:
                log.warning("event=repair_pass_failed reason=%s error=%r", reason, str(exc))

    # -- a pass --------------------------------------------------------------------------------------
    async def pass_now(self, reason: str) -> Report:
        async with self._lock:
            report = self.running = Report(reason, time.time())
            t0 = time.monotonic()
            try:
                await self._pass(report)
            finally:
                report.seconds = round(time.monotonic() - t0, 3)
                self.running = None
                self.last = report
            level = (
                logging.INFO if report.copies or report.still_under_count or report.failed else logging.DEBUG
            )
            log.log(
                level,
                "event=repair_pass reason=%s objects=%d under_replicated=%d copies=%d bytes=%d failed=%d"
                " still_under=%d seconds=%s",
                reason,
                report.objects,
                report.under_replicated,
                report.copies,
                report.bytes,
                report.failed,
                report.still_under_count,
                report.seconds,
            )
            return report

    async def _pass(self, report: Report) -> None:
        ctx = self.ctx
        files = [(f.key, f.cid, f.size) for f in await ctx.ex.db(ctx.repo.list_files)]
        report.files = len(files)
        report.objects = len({cid for _, cid, _ in files})
        if not files:
            return
        live = dict(ctx.peers.sessions)
        held, answered = await self._ask(live, [(key, cid) for key, cid, _ in files], report)
        away = await self._recently_away(set(live))
        shares: dict[str, set[str]] = {}
        for row in await ctx.ex.db(ctx.repo.list_shares):
            if row.peer in away:
                shares.setdefault(row.cid, set()).add(row.peer)
        members = 1 + len(live) + len(away)  # everyone who counts: us, the connected, the not yet gone
        target = members if ctx.replicas is None else min(ctx.replicas + 1, members)
        work: list[tuple[bytes, str, int, list[Session]]] = []
        under: dict[bytes, tuple[str, int, set[str]]] = {}
        for key, cid, size in files:
            holders = {ctx.node_id} | held.get((key, cid), set())
            copies = len(holders | shares.get(cid, set()))
            if copies >= target:
                continue
            report.under_replicated += 1
            under[key] = (cid, copies, holders)
            first = max(holders, key=lambda n: placement.weight(cid, n))
            if first != ctx.node_id:
                report.left_to += 1  # the holder ranked first for it makes the copies
                continue
            lacking = [s for s in live.values() if s.peer_id in answered and s.peer_id not in holders]
            if lacking:
                work.append((key, cid, size, placement.ranked(cid, lacking)))
        gate = asyncio.Semaphore(max(1, self.settings.concurrency))
        self.queue = len(work)

        async def copy(key: bytes, cid: str, size: int, order: list[Session]) -> None:
            async with gate:
                # the best-ranked first; one that refuses (full) or fails is replaced by the next
                while order and under[key][1] < target:
                    need = target - under[key][1]
                    to, order = order[:need], order[need:]
                    acked = await self._copy(key, cid, size, to, report)
                    _, copies, holders = under[key]
                    under[key] = (cid, copies + len(acked), holders | acked)
            self.queue -= 1

        await asyncio.gather(*(copy(*w) for w in work))
        for key, (cid, copies, holders) in sorted(under.items()):
            if copies >= target:
                continue
            report.still_under_count += 1
            if len(report.still_under) < LISTED:
                report.still_under.append(
                    {
                        "key": show_key(key),
                        "cid": cid,
                        "copies": copies,
                        "target": target,
                        "holders": sorted(holders),
                    }
                )

    async def _ask(
        self, live: dict[str, Session], files: Sequence[tuple[bytes, str]], report: Report
    ) -> tuple[dict[tuple[bytes, str], set[str]], set[str]]:
        """Which connected member holds which of `files`; and the members that answered every batch (one
        that did not is neither counted as a holder nor sent a copy this pass)."""
        held: dict[tuple[bytes, str], set[str]] = {}
        batches = _batches(files)

        async def ask(session: Session) -> bool:
            try:
                for batch in batches:
                    asked = m.Holds(tuple((key.decode(), cid) for key, cid in batch))
                    reply = await session.request(asked, timeout=HOLDS_TIMEOUT)
                    for f, has in zip(batch, reply.held(len(batch)), strict=True):
                        if has:
                            held.setdefault(f, set()).add(session.peer_id)
                return True
            except (P2PError, TimeoutError) as exc:
                log.info("event=repair_holds_unanswered peer=%s error=%r", session.peer_id[:12], str(exc))
                return False

        sessions = list(live.values())
        results = await asyncio.gather(*(ask(s) for s in sessions))
        report.members_asked = len(sessions)
        report.members_unanswered = results.count(False)
        return held, {s.peer_id for s, ok in zip(sessions, results, strict=True) if ok}

    async def _recently_away(self, live: set[str]) -> set[str]:
        """Members not connected now that went less than the grace period ago: their copies still count."""
        ctx = self.ctx
        since = time.time() - self.settings.grace
        rows = await ctx.ex.db(ctx.repo.list_peers, since)
        return {r.node_id for r in rows if r.node_id and r.node_id not in live and r.node_id != ctx.node_id}

    async def _copy(self, key: bytes, cid: str, size: int, to: list[Session], report: Report) -> set[str]:
        """File `key` (object `cid`) to each of `to`, as a repair copy; returns who acknowledged."""
        ctx = self.ctx
        with ctx.working(f"repair of {show_key(key)}"):
            outcome = StoreOutcome(cid, size)
            await replicate(
                to, ctx.store, ctx.ex.db, key, cid, size, None, None, outcome, repair=True, pace=self.pace
            )
        now = time.time()
        await ctx.ex.db(ctx.repo.add_share_rows, [(cid, peer, now) for peer in outcome.acked])
        acked = set(outcome.acked)
        report.failed += len(outcome.failed)
        report.copies += len(acked)
        report.bytes += size * len(acked)
        COUNTERS.repair_failed += len(outcome.failed)
        COUNTERS.repair_copies += len(acked)
        COUNTERS.repair_bytes += size * len(acked)
        for peer, why in outcome.failed.items():
            log.warning(
                "event=repair_copy_failed key=%s cid=%s peer=%s reason=%r", show_key(key), cid, peer[:12], why
            )
        if acked:
            log.info(
                "event=repaired key=%s cid=%s size=%d to=%s",
                show_key(key),
                cid,
                size,
                ",".join(sorted(p[:12] for p in acked)),
            )
        return acked

    def status(self) -> dict[str, Any]:
        """For `status`: the last pass and the one under way."""
        return {
            "last_pass": None if self.last is None else asdict(self.last),
            "running": self.running is not None,
            "queue": self.queue if self.running is not None else 0,
            "interval_s": self.settings.interval,
            "grace_s": self.settings.grace,
            "bandwidth": self.settings.bandwidth,
        }


def _batches(files: Sequence[tuple[bytes, str]]) -> list[list[tuple[bytes, str]]]:
    """`files` cut into holds requests: at most MAX_HOLDS each, and each under the control message cap
    (keys of up to 1 KiB, JSON-escaped, would not fit 200 to a message)."""
    room = wire.MAX_CONTROL_SIZE - 256  # the message's own fields
    out: list[list[tuple[bytes, str]]] = []
    batch: list[tuple[bytes, str]] = []
    used = 0
    for key, cid in files:
        size = len(orjson.dumps([key.decode(), cid])) + 1
        if batch and (len(batch) == control.MAX_HOLDS or used + size > room):
            out.append(batch)
            batch, used = [], 0
        batch.append((key, cid))
        used += size
    if batch:
        out.append(batch)
    return out
