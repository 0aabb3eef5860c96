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

Copies also move onto the placement: a file's ideal holders are the members a user stored it on
(`pinned`: never dropped) and then the best-ranked others up to its target (placement.ideal). A member
that joins and ranks among them for a file gets a copy from the first-ranked holder even when the file
is at its target, so files stored before it joined reach it. That leaves a copy too many, and a member
that returns after its files were repaired elsewhere does the same: a holder whose copy is one too many
(`target` others rank above it in placement.keep_order: the pinned, then by weight) drops it at its
next pass, after asking those others again that they hold it. The first `target` in that order never
drop theirs, so holders dropping at once still leave the target; a user's own store is never dropped.

A pass also keeps each file's key metadata on the members ranked for its key (node/keymeta.py): the
holder ranked first for the object among those the pass found holding it sends the metadata, with those
holders, to the key's ranked members as they are now, in batches; so a member that joins and ranks for a
key gets its metadata at the pass its arrival triggers. The pass also forgets the metadata that nobody
republished for a day.

Passes run every `repair_interval`, shortly after a member joins (a file that could not reach its
target before may now), `repair_grace` after a member goes, after a store that reached fewer replicas
than its target, and on `p2pfast repair`. Copies are throttled to `repair_bandwidth` (bytes sent per
second, summed over the replicas) and `repair_concurrency` objects at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
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
from p2pfast.node.flow import BUSY_SHARE, MESSAGE_ROOM, STALL_TIMEOUT, Activity, Throttle, by_size
from p2pfast.node.keymeta import KeyMetaService
from p2pfast.node.replicate import StoreOutcome, replicate
from p2pfast.proto import control
from p2pfast.proto import messages as m
from p2pfast.repo.repo import FileRow
from p2pfast.store.objects import show_key
from p2pfast.store.userkey import is_scratch

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
# A pass that leaves copies to be moved onto a member (one that joined) looks again this soon, to drop
# the copies those moves make surplus; again after that only while the moves progress.
FOLLOW_UP = 30.0
# Files listed by name in a report (status shows them): the count is always whole.
LISTED = 20


@dataclass(frozen=True, slots=True)
class Settings:
    interval: float = REPAIR_INTERVAL
    grace: float = REPAIR_GRACE
    bandwidth: int = REPAIR_BANDWIDTH
    concurrency: int = REPAIR_CONCURRENCY
    debounce: float = DEBOUNCE  # not a config key: tests that drive passes by hand set it long


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
    rebalanced: int = 0  # of the copies, those that moved a file at its target onto its placement
    dropped: int = 0  # surplus copies this node dropped (others hold the file at its target in its stead)
    moves_pending: int = 0  # files this node holds outside their ideal holders, one of whom lacks it yet


@dataclass(slots=True)
class _Seen:
    """What members answered to holds: who holds each (key, cid), who of those pinned it, who answered."""

    held: dict[tuple[bytes, str], set[str]] = field(default_factory=dict)
    pinned: dict[tuple[bytes, str], set[str]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)

    def by_cid(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for (_, cid), peers in self.held.items():
            out.setdefault(cid, set()).update(peers)
        return out


@dataclass(slots=True)
class _Plan:
    """A pass's decisions: the copies to make (file, copies it has, copies to make, members best first),
    the files below target (key -> cid, copies, holders), and this node's surplus copies."""

    target: int
    work: list[tuple[FileRow, int, int, list[Session]]] = field(default_factory=list)
    under: dict[bytes, tuple[str, int, set[str]]] = field(default_factory=dict)
    surplus: list[FileRow] = field(default_factory=list)


def _surplus(cid: str, me: str, holders: set[str], pinned: set[str], target: int) -> bool:
    """Whether `target` of the other holders rank above this node in keep order (so its copy is one too
    many, and theirs stay whatever the others decide)."""
    return me not in pinned and placement.keep_order(cid, holders, pinned).index(me) >= target


class _Pace:
    """One bandwidth budget for every repair copy this node sends: after n bytes went, the next may go
    n / bandwidth seconds later. While users' transfers run here (`activity`), bytes count BUSY_SHARE
    times, so repair yields to them and still moves; `when_busy` holds received copies to that share too
    (and does not hold them at all otherwise: the sender's budget paces them)."""

    def __init__(self, bandwidth: int, activity: Activity | None = None) -> None:
        self._throttle = Throttle(max(1, bandwidth))
        self._activity = activity

    async def __call__(self, n: int) -> None:
        now = time.monotonic()
        busy = self._activity is not None and self._activity.busy(now)
        await self._wait(n * BUSY_SHARE if busy else n, now)

    async def when_busy(self, n: int) -> None:
        now = time.monotonic()
        if self._activity is not None and self._activity.busy(now):
            await self._wait(n * BUSY_SHARE, now)

    async def _wait(self, n: int, now: float) -> None:
        # Never so long that the other side takes the copy for stalled (a 4 MiB piece at a low bandwidth,
        # times BUSY_SHARE): the budget still books every byte, so the average holds.
        delay = min(self._throttle.take(n, now), STALL_TIMEOUT / 2)
        if delay > 0:
            await asyncio.sleep(delay)


class Repair:
    def __init__(self, ctx: Context, settings: Settings, keymeta: KeyMetaService | None = None) -> None:
        self.ctx = ctx
        self.settings = settings
        self.keymeta = keymeta
        self.pace = _Pace(settings.bandwidth, ctx.activity)
        self.last: Report | None = None
        self.running: Report | None = None  # the pass under way
        self.queue = 0  # files of the pass under way still waiting for their copies
        self._lock = asyncio.Lock()  # one pass at a time
        self._wake = asyncio.Event()
        self._due: float | None = None  # loop time of the next triggered pass
        self._why = ""

    # -- triggers ------------------------------------------------------------------------------------
    def trigger(self, reason: str, delay: float | None = None) -> None:
        """Ask for a pass in `delay` seconds (the debounce when None), or sooner if one is already due."""
        due = asyncio.get_running_loop().time() + (self.settings.debounce if delay is None else delay)
        if self._due is None or due < self._due:
            self._due, self._why = due, reason
        self._wake.set()

    def on_ready(self, session: Session) -> None:
        self.trigger("member_joined")

    def on_closed(self, session: Session) -> None:
        self.member_gone(session.peer_id)

    def member_gone(self, node_id: str) -> None:
        """A member's link broke here, or the view declared it dead or gone (node/viewsync.py: every
        node hears that, linked to the member or not): its copies count until the grace period from
        then ends, and a pass then copies what it held."""
        self.trigger("member_gone", self.settings.grace + self.settings.debounce)

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
                previous, self.last = self.last, report
            if report.moves_pending and (
                reason != "moves_pending" or previous is None or report.moves_pending < previous.moves_pending
            ):
                self.trigger("moves_pending", min(FOLLOW_UP, self.settings.interval))
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
        if self.keymeta is not None:
            await self.keymeta.expire()
        # scratch files are one copy by design (userkey.SCRATCH_PREFIX): nothing to repair or publish
        files = [f for f in await ctx.ex.db(ctx.repo.list_files) if not is_scratch(f.key)]
        report.files = len(files)
        report.objects = len({f.cid for f in files})
        if not files:
            return
        began = time.time()
        live = await self._reach(files)
        seen = await self._ask(live, [(f.key, f.cid) for f in files], report)
        away = await self._recently_away(set(live))
        shares = await self._away_shares(seen, away, began)
        counted = (
            {ctx.node_id} | seen.answered | away
        )  # whose copies count: us, who answered, the not yet gone
        members = max(1 + len(live) + len(away), ctx.links.count())
        target = members if ctx.replicas is None else min(ctx.replicas + 1, members)
        plan = _Plan(target)
        publish: list[tuple[FileRow, set[str], set[str]]] = []  # files whose key metadata this node sends
        for f in files:
            holders = {ctx.node_id} | seen.held.get((f.key, f.cid), set())
            pinned = seen.pinned.get((f.key, f.cid), set()) | ({ctx.node_id} if f.origin is None else set())
            copies = len(holders | shares.get(f.cid, set()))
            first = max(holders, key=lambda n: placement.weight(f.cid, n))
            if first == ctx.node_id:
                publish.append((f, holders, pinned))
            if copies < target:
                report.under_replicated += 1
                plan.under[f.key] = (f.cid, copies, holders)
            elif ctx.node_id not in pinned and _surplus(f.cid, ctx.node_id, holders, pinned, target):
                plan.surplus.append(f)
                continue
            ideal = placement.ideal(f.cid, counted, pinned, target)
            lacking = [s for s in live.values() if s.peer_id in seen.answered and s.peer_id not in holders]
            # members of the ideal set that lack it come first in ranked(lacking): it is ranked by weight too
            moves = sum(1 for s in lacking if s.peer_id in ideal)
            if shares.get(f.cid, set()) - holders:
                # a holder away now (within its grace) counts as a copy, but whether a user stored the
                # file there is unknown: the ideal set is not known either, so nothing moves this pass
                moves = 0
            if moves and ctx.node_id not in ideal:
                report.moves_pending += 1  # once they hold it, this copy is surplus
            if copies >= target and not moves:
                continue
            if first != ctx.node_id:
                report.left_to += copies < target  # the holder ranked first for it makes the copies
                continue
            if lacking:
                need = max(target - copies, moves)
                plan.work.append((f, copies, need, placement.ranked(f.cid, lacking)))
        await self._make_copies(plan, report)
        dropped = await self._drop_surplus(plan.surplus, live, target, report)
        if self.keymeta is not None and publish:
            me = ctx.node_id
            await self.keymeta.publish([_meta(f, held, pins, plan, dropped, me) for f, held, pins in publish])
        for key, (cid, copies, holders) in sorted(plan.under.items()):
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

    async def _away_shares(self, seen: _Seen, away: set[str], began: float) -> dict[str, set[str]]:
        """The shares (cid -> members) of members away less than the grace period: their copies count. The
        shares of members that answered they hold no file of that object go: they dropped it (surplus) or
        lost it, and a stale share would count a copy that is not there."""
        ctx = self.ctx
        holding = seen.by_cid()
        shares: dict[str, set[str]] = {}
        stale: list[tuple[str, str]] = []
        for row in await ctx.ex.db(ctx.repo.list_shares):
            if row.peer in away:
                shares.setdefault(row.cid, set()).add(row.peer)
            elif (
                row.peer in seen.answered
                and row.peer not in holding.get(row.cid, ())
                and row.acked_at < began
            ):
                stale.append((row.cid, row.peer))  # acked before we asked: not a store still under way
        await ctx.ex.db(ctx.repo.remove_share_rows, stale)
        return shares

    async def _make_copies(self, plan: _Plan, report: Report) -> None:
        """The pass's copies, `repair_concurrency` objects at once. A file gets `need` copies, to the
        best-ranked members that lack it; one that refuses (full) or fails is replaced by the next, and is
        sent nothing more this pass (a full member refuses every copy)."""
        gate = asyncio.Semaphore(max(1, self.settings.concurrency))
        failed: set[str] = set()
        self.queue = len(plan.work)

        async def copy(f: FileRow, copies: int, need: int, order: list[Session]) -> None:
            async with gate:
                made = 0
                while order and made < need:
                    order = [s for s in order if s.peer_id not in failed]
                    to, order = order[: need - made], order[need - made :]
                    if not to:
                        break
                    acked = await self._copy(f.key, f.cid, f.size, to, report)
                    failed.update(s.peer_id for s in to if s.peer_id not in acked)
                    made += len(acked)
                    if f.key in plan.under:
                        cid, have, holders = plan.under[f.key]
                        plan.under[f.key] = (cid, have + len(acked), holders | acked)
                # copies past what the file lacked moved it onto its placement (a member that joined)
                report.rebalanced += max(0, made - max(0, plan.target - copies))
            self.queue -= 1

        await asyncio.gather(*(copy(*w) for w in plan.work))

    async def _drop_surplus(
        self, surplus: list[FileRow], live: dict[str, Session], target: int, report: Report
    ) -> set[bytes]:
        """Drop this node's copies of files that `target` others hold in its stead (they rank above it in
        placement.keep_order), asked again just before each goes: a copy goes only once that many others
        acknowledged theirs, and the `target` first in that order never drop theirs, so two holders
        dropping at once still leave `target`. A user's store here (pinned) is never dropped. Returns the
        keys whose copy went."""
        gone: set[bytes] = set()
        if not surplus:
            return gone
        ctx = self.ctx
        again = await self._ask(live, [(f.key, f.cid) for f in surplus], None)
        for f in surplus:
            holders = {ctx.node_id} | again.held.get((f.key, f.cid), set())
            pinned = again.pinned.get((f.key, f.cid), set())
            if not _surplus(f.cid, ctx.node_id, holders, pinned, target):
                continue
            dropped = await ctx.ex.db(ctx.repo.drop_copy, f.key, f.cid, f.created)
            if dropped is None:  # stored again, or by a user, since the pass looked: it stays
                continue
            if dropped[1]:
                await ctx.ex.db(ctx.store.unlink_orphan, dropped[0])
            gone.add(f.key)
            report.dropped += 1
            COUNTERS.repair_dropped += 1
            kept = placement.keep_order(f.cid, holders - {ctx.node_id}, pinned)[:target]
            log.info(
                "event=surplus_dropped key=%s cid=%s kept_by=%s",
                show_key(f.key),
                f.cid,
                ",".join(p[:12] for p in kept),
            )
        return gone

    async def _ask(
        self, live: dict[str, Session], files: Sequence[tuple[bytes, str]], report: Report | None
    ) -> _Seen:
        """Which connected member holds (and pinned) which of `files`, and the members that answered every
        batch (one that did not is neither counted as a holder nor sent a copy this pass)."""
        seen = _Seen()
        batches = _batches(files)

        async def ask(asking: Session) -> bool:
            session = await self._fresh(asking)  # (the surplus check asks again, later in the pass)
            if session is None:
                return False
            try:
                for batch in batches:
                    asked = m.Holds(tuple((key.decode(), cid) for key, cid in batch))
                    reply = await session.request(asked, timeout=HOLDS_TIMEOUT)
                    n = len(batch)
                    for f, has, pin in zip(batch, reply.held(n), reply.pins(n), strict=True):
                        if has:
                            seen.held.setdefault(f, set()).add(session.peer_id)
                            if pin:
                                seen.pinned.setdefault(f, set()).add(session.peer_id)
                return True
            except (P2PError, TimeoutError) as exc:
                log.info("event=repair_holds_unanswered peer=%s error=%r", session.peer_id[:12], str(exc))
                return False

        sessions = list(live.values())
        results = await asyncio.gather(*(ask(s) for s in sessions))
        if report is not None:
            report.members_asked = len(sessions)
            report.members_unanswered = results.count(False)
        seen.answered = {s.peer_id for s, ok in zip(sessions, results, strict=True) if ok}
        return seen

    async def _reach(self, files: Sequence[FileRow]) -> dict[str, Session]:
        """Sessions to the members that matter to this node's files: for each, the `replicas + 3`
        ranked first (its holders and those that should be; one spare), the node it came from, and the
        members that acknowledged a copy of it to this node (shares); dialled when not connected
        (node/links.py), and every connected member besides. In a network past the link bound, a pass
        talks to the members its files rank on, not to every member."""
        ctx = self.ctx
        members = ctx.links.members()
        if ctx.replicas is None:
            return {s.peer_id: s for s in await ctx.links.open(members, len(members))}
        k = ctx.replicas + 3
        wanted = dict.fromkeys(f.origin for f in files if f.origin)
        wanted.update(dict.fromkeys(r.peer for r in await ctx.ex.db(ctx.repo.list_shares)))
        for f in files:
            wanted.update(dict.fromkeys(heapq.nlargest(k, members, key=lambda n: placement.weight(f.cid, n))))
        wanted.pop(ctx.node_id, None)
        opened = await ctx.links.open(list(wanted), len(wanted))
        return {**ctx.peers.sessions, **{s.peer_id: s for s in opened}}

    async def _recently_away(self, live: set[str]) -> set[str]:
        """Members not connected now that went less than the grace period ago, or that the view says are
        alive (this pass had no session to them, or one that did not answer): their copies still count.
        A member declared dead or gone counts until the grace period from its declaration ends; the view
        triggers a pass then (root.py)."""
        ctx = self.ctx
        since = time.time() - self.settings.grace
        rows = await ctx.ex.db(ctx.repo.list_peers, since)
        recent = {r.node_id for r in rows if r.node_id and r.node_id != ctx.node_id}
        return (recent | ctx.links.away(since)) - live - {ctx.node_id}

    async def _fresh(self, session: Session) -> Session | None:
        return session if session.usable else await self.ctx.links.connect(session.peer_id)

    async def _copy(self, key: bytes, cid: str, size: int, to: list[Session], report: Report) -> set[str]:
        """File `key` (object `cid`) to each of `to`, as a repair copy; returns who acknowledged."""
        ctx = self.ctx
        # A session the pass asked on may have closed since, idle at the member's end (node/links.py:
        # the pass's copies come after all its questions): open another to that member.
        to = [s for s in [await self._fresh(s) for s in to] if s is not None]
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


def _meta(
    f: FileRow, holders: set[str], pinned: set[str], plan: _Plan, dropped: set[bytes], me: str
) -> tuple[bytes, m.Meta]:
    """The key metadata of `f` after the pass: the holders it counted, with the copies it made and
    without this node's copy if it dropped it, best first (placement.keep_order)."""
    if f.key in plan.under:
        holders = holders | plan.under[f.key][2]
    if f.key in dropped:
        holders = holders - {me}
    order = placement.keep_order(f.cid, holders, pinned)[: control.MAX_META_HOLDERS]
    return f.key, m.Meta(f.cid, f.size, f.created, tuple(order))


def _batches(files: Sequence[tuple[bytes, str]]) -> list[list[tuple[bytes, str]]]:
    """`files` cut into holds requests: at most MAX_HOLDS each, and each under the control message cap
    (keys of up to 1 KiB, JSON-escaped, would not fit 200 to a message)."""
    return by_size(
        files,
        lambda f: len(orjson.dumps([f[0].decode(), f[1]])) + 1,
        wire.MAX_CONTROL_SIZE - MESSAGE_ROOM,
        control.MAX_HOLDS,
    )
