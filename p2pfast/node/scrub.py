"""Scrub: every local object read back and verified, in the background, once per `scrub_period`, at most
`scrub_bandwidth` bytes a second; a bad copy is replaced by a peer's verified copy (docs/operations.md,
"Scrub").

What is read is what a get reads (ContentStore.read_object, a range at a time): the file's size, the
header, the segment index against the content id, and every segment against its leaf. A copy that fails
is logged once (`event=scrub_bad_copy`), counted, and fetched again, verified, from a peer that says it
holds the object (`who_has` by content id), into an upload that `Upload.finish_repair` renames over the
bad file, as a get's read-repair does (readrepair.py). The bad copy is never removed without that
verified replacement: with no peer to serve one it stays, is reported (`unrepaired_cids`) and tried
again when a peer connects and on the next pass.

Each object is read as work in flight (ctx.working), one at a time, so a graceful stop waits for at
most one object, never a pass: the pass stops between objects and its place (`cursor`, objects in
content id order) is kept in the state file, where the next start resumes it.

The state is a small JSON file, DATA_DIR/scrub.json, written with store/durable.py's one durable write
path, rather than rows in the repo: it is the node's own housekeeping, not anything the repo accounts
for, so it needs no schema version (an older p2pfast still opens the repo), and losing it costs only an
early pass (an unreadable file makes a pass due at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from p2pfast.counters import COUNTERS
from p2pfast.datadir import Layout
from p2pfast.errors import IntegrityError, NotFound, P2PError, PeerUnavailable, StorageError
from p2pfast.node import fetch
from p2pfast.node.context import Context
from p2pfast.node.flow import CHUNK, Throttle
from p2pfast.node.lookup import holding
from p2pfast.node.reports import Progress
from p2pfast.repo.repo import ObjectRow
from p2pfast.store.durable import write_file_durably
from p2pfast.store.userkey import encode_key
from p2pfast.units import rfc3339

log = logging.getLogger("p2pfast.node")

# The defaults of config's scrub_bandwidth and scrub_period (docs/operations.md says why).
SCRUB_BANDWIDTH = 32 << 20
SCRUB_PERIOD = 30 * 86400.0
STATE_FILE = "scrub.json"
STATE_VERSION = 1
# An unfinished pass records its place at most this often (one small durable write), so a restart
# re-reads at most this much of it.
CHECKPOINT_S = 60.0
# The background loop wakes at least this often to look at the state again (`scrub --now` moves the
# next pass; the clock may jump).
RECHECK_S = 3600.0


def pass_seconds(total_bytes: int, bandwidth: int | None) -> float:
    """How long a pass over `total_bytes` takes at `bandwidth` bytes a second (None: unthrottled, 0)."""
    return 0.0 if bandwidth is None else total_bytes / bandwidth


@dataclass(slots=True)
class PassCounts:
    started: float
    ended: float | None = None
    checked: int = 0  # objects read through
    bytes: int = 0  # their plaintext bytes
    bad: int = 0  # copies that failed their check
    repaired: int = 0  # of those, replaced by a peer's verified copy
    cursor: str | None = None  # the last content id checked (objects go in content id order)


@dataclass(slots=True)
class ScrubState:
    """What DATA_DIR/scrub.json holds."""

    created: float  # when this data dir's scrub schedule began: the first pass is due a period later
    next_due: float  # when the next pass starts (written for `status` with no daemon)
    last: PassCounts | None = None  # the last pass that finished
    current: PassCounts | None = None  # a pass begun and not finished (resumed at the next start)
    unrepaired: list[str] = field(default_factory=list)  # bad copies no peer could replace yet

    def due(self, period: float) -> float:
        if self.current is not None:
            return self.current.started  # an unfinished pass: due already
        return (self.last.started if self.last is not None else self.created) + period

    def to_json(self) -> bytes:
        return orjson.dumps({"version": STATE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, data: bytes) -> ScrubState:
        d = orjson.loads(data)
        if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
            raise ValueError("not a scrub state of version 1")
        last, current = d.get("last"), d.get("current")
        return cls(
            created=float(d["created"]),
            next_due=float(d["next_due"]),
            last=None if last is None else PassCounts(**last),
            current=None if current is None else PassCounts(**current),
            unrepaired=[str(c) for c in d.get("unrepaired", [])],
        )


def state_path(layout: Layout) -> Path:
    return layout.root / STATE_FILE


def load_state(layout: Layout, period: float, now: float) -> ScrubState:
    """The saved state; a fresh schedule (first pass a period from now) when there is none; a pass due at
    once when the file cannot be read (the safe side: it only costs reading the objects)."""
    path = state_path(layout)
    try:
        return ScrubState.from_json(path.read_bytes())
    except FileNotFoundError:
        return ScrubState(created=now, next_due=now + period)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("event=scrub_state_unreadable path=%s error=%r action=pass_due_now", path, str(exc))
        return ScrubState(created=now - period, next_due=now)


def save_state(layout: Layout, data: bytes) -> None:
    """Write the state (ScrubState.to_json(), made on the loop thread that owns the state)."""
    # the temp file goes where every other write's does (objects/tmp, removed at open), not in the root
    write_file_durably(layout.objects / "tmp", state_path(layout), data, mode=0o600)


def report(state: ScrubState | None, running: bool) -> dict[str, Any]:
    """The `scrub` object of `status` (docs/cli.md)."""
    last = None if state is None else state.last
    return {
        "running": running,
        "last_pass_started_at": None if last is None else rfc3339(last.started),
        "last_pass_ended_at": None if last is None or last.ended is None else rfc3339(last.ended),
        "next_due_at": None if state is None else rfc3339(state.next_due),
        "checked": 0 if last is None else last.checked,
        "bytes_checked": 0 if last is None else last.bytes,
        "bad": 0 if last is None else last.bad,
        "repaired": 0 if last is None else last.repaired,
        "unrepaired": 0 if state is None else len(state.unrepaired),
        "unrepaired_cids": [] if state is None else list(state.unrepaired),
    }


def report_of_file(layout: Layout) -> dict[str, Any]:
    """`status` with no daemon: what the state file says (nothing yet: every count 0, no pass)."""
    path = state_path(layout)
    try:
        state: ScrubState | None = ScrubState.from_json(path.read_bytes())
    except (OSError, ValueError, TypeError, KeyError):
        state = None
    return report(state, running=False)


class _Discard:
    """A sink for objects read only to be checked: the scrub's own reads, and the peer's copy that goes
    into the repair upload (`keep`), not anywhere else."""

    file: int | None = None

    def __init__(self) -> None:
        self.n = 0

    def write(self, view: Any) -> None:  # the store's pump calls it (a memoryview, synchronously)
        self.n += len(view)


class _DiscardAsync:
    file: int | None = None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ScrubReport:
    """`scrub --now`'s result (docs/cli.md)."""

    checked: int
    bytes_checked: int
    bad: int
    repaired: int
    unrepaired: int  # bad copies no peer could replace, this pass and before
    unrepaired_cids: list[str]
    duration_s: float


class Scrub:
    def __init__(self, ctx: Context, bandwidth: int | None, period: float) -> None:
        self.ctx = ctx
        self.bandwidth = bandwidth
        self.period = period
        self.state: ScrubState | None = None
        self._lock = asyncio.Lock()  # one pass at a time
        self._pass: asyncio.Task[ScrubReport] | None = None  # the background pass, cancelled by --now
        self._loading = asyncio.Lock()
        self._retrying = False
        self.running = False

    # -- state ---------------------------------------------------------------------------------------
    async def _load(self) -> ScrubState:
        async with self._loading:
            if self.state is None:
                state = await self.ctx.ex.db(load_state, self.ctx.layout, self.period, time.time())
                state.next_due = state.due(self.period)  # under this period, which may have changed
                self.state = state
                await self._save()
        return self.state

    async def _save(self) -> None:
        assert self.state is not None
        await self.ctx.ex.db(save_state, self.ctx.layout, self.state.to_json())

    def status(self) -> dict[str, Any]:
        return report(self.state, self.running)

    # -- the background ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Start a pass whenever one is due, until cancelled (Node.close)."""
        state = await self._load()
        if state.current is not None:
            log.info(
                "event=scrub_resume started=%s cursor=%s",
                rfc3339(state.current.started),
                state.current.cursor,
            )
        while True:
            wait = state.due(self.period) - time.time()
            if wait > 0:
                await asyncio.sleep(min(wait, RECHECK_S))
                continue
            if self.ctx.draining():
                return
            async with self._lock:
                if state.due(self.period) > time.time():
                    continue  # a `scrub --now` ran while this waited for the lock: it was the pass
                task = self._pass = asyncio.ensure_future(self._run_pass(None, resume=True))
                try:
                    await asyncio.wait([task])  # not `await`: a pass cancelled by --now is not our end
                finally:
                    task.cancel()  # (a no-op once done) this loop cancelled: Node.close
                    self._pass = None
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                if self.ctx.draining():
                    return  # the node is stopping; the pass's place is saved
                log.warning("event=scrub_pass_failed error=%r", str(exc))
                await asyncio.sleep(RECHECK_S)  # (a full disk for the state file, say): not in a loop

    async def now(self, progress: Progress | None) -> ScrubReport:
        """`scrub --now`: one whole pass from the first object, now (a background pass under way is
        stopped at its next object; this pass stands in for it)."""
        await self._load()
        if self._pass is not None:
            self._pass.cancel()
        async with self._lock:
            return await self._run_pass(progress, resume=False)

    def peer_ready(self) -> None:
        """A peer connected: it may hold a good copy of what no peer could replace so far."""
        if self.state is None or not self.state.unrepaired or self.ctx.draining():
            return
        if not self._retrying:
            self._retrying = True
            self.ctx.spawn(self._retry_unrepaired())

    async def _retry_unrepaired(self) -> None:
        assert self.state is not None
        try:
            await self._retry_each(self.state)
        finally:
            self._retrying = False

    async def _retry_each(self, state: ScrubState) -> None:
        async with self._lock:
            for cid in list(state.unrepaired):
                obj = await self.ctx.ex.db(self.ctx.repo.get_object, cid)
                try:
                    with self.ctx.working("scrub retry"):
                        if obj is None or await self._verify(obj, None, Throttle(self.bandwidth)) is None:
                            state.unrepaired.remove(cid)  # gone, or repaired meanwhile (a get)
                        elif await self._repair(cid):
                            state.unrepaired.remove(cid)
                except NotFound:
                    state.unrepaired.remove(cid)  # deleted meanwhile
                except PeerUnavailable:
                    if self.ctx.draining():
                        return
            await self._save()

    # -- a pass --------------------------------------------------------------------------------------
    async def _run_pass(self, progress: Progress | None, resume: bool) -> ScrubReport:
        ctx, state = self.ctx, await self._load()
        t0 = time.monotonic()
        current = state.current if resume and state.current is not None else PassCounts(started=time.time())
        state.current = current
        objects = sorted(await ctx.ex.db(ctx.repo.list_objects), key=lambda o: o.cid)
        if current.cursor is not None:
            objects = [o for o in objects if o.cid > current.cursor]
        total = sum(o.size for o in objects)
        needs = pass_seconds(total, self.bandwidth)
        log.info(
            "event=scrub_start objects=%d bytes=%d resumed=%s",
            len(objects),
            total,
            current.cursor is not None,
        )
        if needs > self.period:
            log.warning(
                "event=scrub_slow bytes=%d seconds_needed=%.0f scrub_period=%.0f hint=%s",
                total,
                needs,
                self.period,
                "raise scrub_bandwidth or scrub_period",
            )
        if progress is not None:
            progress.begin("scrub", total)
        throttle = Throttle(self.bandwidth)
        checkpoint = time.monotonic()
        self.running = True
        finished = False
        try:
            for i, obj in enumerate(objects):
                try:
                    with ctx.working("scrub"):  # refused once the node drains: the pass stops here
                        await self._check(obj, current, progress, throttle)
                except PeerUnavailable:
                    if ctx.draining():
                        raise PeerUnavailable(
                            f"the node is shutting down: the scrub stopped after {i} of {len(objects)} "
                            "objects (the next start goes on from there)"
                        ) from None
                    raise
                current.cursor = obj.cid
                if time.monotonic() - checkpoint >= CHECKPOINT_S:
                    checkpoint = time.monotonic()
                    await self._save()
            finished = True
        finally:
            self.running = False
            if not finished:  # stopped or cancelled: its place is kept, after any job queued before
                ctx.ex.db_later(save_state, ctx.layout, state.to_json())
        current.ended = time.time()
        current.cursor = None
        state.last, state.current = current, None
        state.next_due = state.due(self.period)
        await self._save()
        log.info(
            "event=scrub_done checked=%d bytes=%d bad=%d repaired=%d unrepaired=%d",
            current.checked,
            current.bytes,
            current.bad,
            current.repaired,
            len(state.unrepaired),
        )
        return ScrubReport(
            current.checked,
            current.bytes,
            current.bad,
            current.repaired,
            len(state.unrepaired),
            list(state.unrepaired),
            round(time.monotonic() - t0, 3),
        )

    async def _check(
        self, obj: ObjectRow, counts: PassCounts, progress: Progress | None, throttle: Throttle
    ) -> None:
        assert self.state is not None
        cid = obj.cid
        try:
            failure = await self._verify(obj, progress, throttle)
        except NotFound:
            return  # deleted while the pass ran
        counts.checked += 1
        counts.bytes += obj.size
        if failure is None:
            if cid in self.state.unrepaired:  # replaced meanwhile (a get's read-repair)
                self.state.unrepaired.remove(cid)
            return
        counts.bad += 1
        COUNTERS.integrity_failures += 1
        log.warning("event=scrub_bad_copy cid=%s error=%r", cid, str(failure))
        if await self._repair(cid):
            counts.repaired += 1
            if cid in self.state.unrepaired:
                self.state.unrepaired.remove(cid)
        elif cid not in self.state.unrepaired:
            self.state.unrepaired.append(cid)
        await self._save()  # a bad copy found is worth a write at once (status shows it)

    async def _verify(self, obj: ObjectRow, progress: Progress | None, throttle: Throttle) -> P2PError | None:
        """Read `obj` through, a range at a time on the DB thread, paced by `throttle`; the failure, if
        its copy is bad. NotFound: it went meanwhile."""
        ctx, cid = self.ctx, obj.cid
        pos = 0
        while True:
            sink = _Discard()
            length = min(CHUNK, obj.size - pos)
            try:
                await ctx.ex.db(ctx.store.read_object, cid, sink, pos, length)
            except (IntegrityError, StorageError) as exc:
                if isinstance(exc, NotFound):
                    raise
                return exc  # an unreadable copy is as lost as a corrupt one
            pos += length
            if progress is not None:
                progress(length)
            delay = throttle.take(length, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
            if pos >= obj.size:
                return None

    async def _repair(self, cid: str) -> bool:
        """Replace the bad copy of `cid` with a peer's verified one; False (the bad copy kept) when no
        peer has a good one to give."""
        ctx = self.ctx
        holders = await holding(ctx, cid)
        if not holders:
            log.info("event=scrub_unrepaired cid=%s reason=%s", cid, "no connected peer holds it")
            return False
        raw = await ctx.ex.db(_key_naming, ctx, cid)
        try:
            upload = await ctx.ex.db(ctx.store.begin, raw)
        except P2PError as exc:  # no room for the new copy (disk full), say: the bad one stays
            log.warning("event=scrub_repair_failed cid=%s error=%r", cid, str(exc))
            return False
        try:
            _size, served = await fetch.fetch(holders, cid, _DiscardAsync(), ctx.ex, None, upload)
            await ctx.ex.db(upload.finish_repair, cid)
        except P2PError as exc:
            log.warning("event=scrub_repair_failed cid=%s error=%r", cid, str(exc))
            return False
        finally:
            ctx.ex.db_later(upload.abort)  # after any job of the fetch; a no-op once finished
        source = fetch.main_source(served, holders)
        log.warning("event=scrub_repaired cid=%s source=%s", cid, source[:12])
        return True


def _key_naming(ctx: Context, cid: str) -> bytes:
    """A key that names `cid` (what the repair upload is begun for; no files row changes), or the
    content id itself for an object no key names."""
    for row in ctx.repo.list_files():
        if row.cid == cid:
            return row.key
    return encode_key(cid)
