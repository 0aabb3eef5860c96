"""proto.schedule.PieceSchedule, the piece scheduler of a parallel get, fed events without any I/O.

First each rule on a small hand-made get; then `Sim`, which drives a schedule the way node/fetch.py's
`_Fetch` does (a holder receives its range in order, checks settle in order, a holder stops when its
piece is done or its range is in), checks every invariant after every event, and runs under a hypothesis
state machine and random interleavings: every segment written exactly once and in order, a piece given
to a second holder only in the endgame, a failed holder's piece resumed from its first unverified
segment, never more than `ahead` pieces taken and not yet written, and the get always finishing while
one holder stays healthy.
"""

from __future__ import annotations

import ast
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import p2pfast.proto.schedule
from p2pfast.errors import InternalError
from p2pfast.proto.schedule import DONE, WAIT, Assignment, Idle, PieceSchedule, PieceWrite

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

Seg = tuple[str, int]  # what the tests keep per verified segment: (the holder whose copy, the segment)


def verify_all(s: PieceSchedule[Seg], holder: str, job: Assignment | Idle) -> None:
    """`holder` fetched its whole piece: every segment from job.first verified, then released."""
    assert isinstance(job, Assignment)
    for i in range(job.first, job.end):
        s.verified(holder, job.piece, i, (holder, i))
    s.release(holder)


def write_one(s: PieceSchedule[Seg]) -> PieceWrite[Seg]:
    w = s.take_write()
    assert w is not None
    s.written(w.piece)
    return w


# -- the rules, one by one -----------------------------------------------------------------------------
def test_segments_are_cut_into_pieces_the_last_one_shorter() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(20, piece=8, ahead=3)
    assert s.pieces == 3
    assert [s.segments_of(p) for p in range(3)] == [range(0, 8), range(8, 16), range(16, 20)]


def test_an_empty_object_is_one_piece_of_its_one_empty_segment() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(1, piece=8, ahead=3)
    job = s.assign("a")
    assert job == Assignment(0, 0, 1)
    verify_all(s, "a", job)
    assert write_one(s) == PieceWrite(0, (("a", 0),))
    assert s.complete
    assert s.assign("a") is DONE


def test_idle_holders_take_the_next_piece_not_taken_in_order() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(40, piece=8, ahead=3)
    assert s.assign("a") == Assignment(0, 0, 8)
    assert s.assign("b") == Assignment(1, 8, 16)
    assert s.assign("c") == Assignment(2, 16, 24)
    assert s.workers(0) == {"a"} and s.workers(1) == {"b"} and s.working_on("c") == 2


def test_a_holder_that_finished_takes_the_next_free_piece_not_a_busy_one() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(40, piece=8, ahead=3)
    verify_all(s, "a", s.assign("a"))  # piece 0 done, not written
    s.assign("b")  # piece 1
    assert s.assign("a") == Assignment(2, 16, 24)


def test_read_ahead_takes_nothing_beyond_ahead_pieces_from_the_first_not_written() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(5, piece=1, ahead=2)
    verify_all(s, "a", s.assign("a"))  # piece 0
    verify_all(s, "a", s.assign("a"))  # piece 1
    assert s.window() == range(0, 2)
    assert s.assign("a") is WAIT  # pieces 0 and 1 wait in memory: piece 2 would be a third
    w = s.take_write()
    assert w is not None and w.piece == 0
    assert s.assign("a") is WAIT  # still held by the writer until written
    s.written(0)
    assert s.window() == range(1, 3)
    assert s.assign("a") == Assignment(2, 2, 3)


def test_endgame_helps_the_oldest_unfinished_piece_at_most_two_holders_each() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(24, piece=8, ahead=3)
    for h in "abc":
        s.assign(h)  # pieces 0, 1, 2: nothing left to take
    assert s.assign("d") == Assignment(0, 0, 8)  # helps the oldest
    assert s.assign("e") == Assignment(1, 8, 16)  # piece 0 has two already
    assert s.assign("f") == Assignment(2, 16, 24)
    assert s.assign("g") is WAIT
    assert s.workers(0) == {"a", "d"}


def test_endgame_helper_starts_at_the_first_unverified_segment_and_skips_what_is_verified() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(8, piece=8, ahead=3)
    s.assign("slow")
    for i in range(3):
        assert s.verified("slow", 0, i, ("slow", i))
    help_ = s.assign("fast")
    assert help_ == Assignment(0, 3, 8)
    assert s.verified("fast", 0, 3, ("fast", 3))
    assert not s.needs(0, 3) and s.needs(0, 4)
    assert not s.verified("slow", 0, 3, ("slow", 3))  # a second copy: not kept
    for i in range(4, 8):
        s.verified("fast", 0, i, ("fast", i))
    assert s.is_done(0)  # the slow holder may stop
    assert not s.needs(0, 7)
    assert not s.verified("slow", 0, 4, ("slow", 4))
    s.release("fast")
    s.release("slow")
    w = write_one(s)
    assert w.segments == (*(("slow", i) for i in range(3)), *(("fast", i) for i in range(3, 8)))


def test_a_single_holder_never_helps_itself() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(8, piece=8, ahead=3)
    s.assign("a")
    s.release("a")  # overtaken, say: it may ask again, and gets its piece back
    assert s.assign("a") == Assignment(0, 0, 8)


def test_a_failed_holders_piece_goes_back_from_its_first_unverified_segment() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(16, piece=8, ahead=3)
    s.assign("a")  # piece 0
    s.assign("b")  # piece 1
    for i in range(5):
        s.verified("a", 0, i, ("a", i))
    s.fail("a")
    assert s.is_out("a") and s.workers(0) == frozenset()
    assert s.needs(0, 5) and not s.needs(0, 4)
    verify_all(s, "b", Assignment(1, 8, 16))
    assert s.assign("b") == Assignment(0, 5, 8)  # the rest of piece 0, not from its start
    verify_all(s, "b", Assignment(0, 5, 8))
    assert write_one(s).segments == (*(("a", i) for i in range(5)), *(("b", i) for i in range(5, 8)))
    assert [seg for _, seg in write_one(s).segments] == list(range(8, 16))
    assert s.complete


def test_a_failed_holder_gets_nothing_more() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(16, piece=8, ahead=3)
    s.assign("a")
    s.fail("a")
    with pytest.raises(InternalError):
        s.assign("a")
    with pytest.raises(InternalError):
        s.fail("a")


def test_failing_in_the_endgame_leaves_the_piece_to_its_other_holder() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(8, piece=8, ahead=3)
    s.assign("a")
    s.assign("b")  # helps piece 0
    s.fail("b")
    assert s.workers(0) == {"a"}
    assert s.assign("c") == Assignment(0, 0, 8)  # a third holder may take b's place


def test_pieces_are_written_in_order_one_at_a_time() -> None:
    s: PieceSchedule[Seg] = PieceSchedule(3, piece=1, ahead=3)
    jobs = {h: s.assign(h) for h in "abc"}
    verify_all(s, "b", jobs["b"])
    verify_all(s, "c", jobs["c"])
    assert s.take_write() is None  # pieces 1 and 2 wait for piece 0
    verify_all(s, "a", jobs["a"])
    w0 = s.take_write()
    assert w0 == PieceWrite(0, (("a", 0),))
    assert s.take_write() is None  # piece 1 is done, but the write of piece 0 is under way
    with pytest.raises(InternalError):
        s.written(1)
    s.written(0)
    assert write_one(s).piece == 1
    assert write_one(s).piece == 2
    assert s.complete and s.take_write() is None and s.next_write == 3


def test_a_piece_can_be_assigned_again_after_its_only_holder_released_it_unfinished() -> None:
    # _Fetch releases on cancellation too: the piece must not stay taken by a holder that is gone
    s: PieceSchedule[Seg] = PieceSchedule(8, piece=8, ahead=1)
    s.assign("a")
    s.verified("a", 0, 0, ("a", 0))
    s.release("a")
    assert s.assign("b") == Assignment(0, 1, 8)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.verified("b", 0, 0, ("b", 0)),  # b works on nothing
        lambda s: s.verified("a", 1, 8, ("a", 8)),  # a works on piece 0
        lambda s: s.verified("a", 0, 8, ("a", 8)),  # segment 8 is piece 1's
        lambda s: s.assign("a"),  # a already fetches piece 0
        lambda s: s.written(0),  # nothing handed to the writer
        lambda s: s.is_done(2),  # there are two pieces
        lambda s: s.needs(-1, 0),
    ],
)
def test_calls_that_make_no_sense_are_internal_errors(call: Callable[[PieceSchedule[Seg]], object]) -> None:
    s: PieceSchedule[Seg] = PieceSchedule(16, piece=8, ahead=3)
    s.assign("a")
    with pytest.raises(InternalError):
        call(s)


@pytest.mark.parametrize("args", [(0, 8, 3), (8, 0, 3), (8, 8, 0)])
def test_a_schedule_needs_a_segment_a_piece_size_and_a_read_ahead(args: tuple[int, int, int]) -> None:
    with pytest.raises(InternalError):
        PieceSchedule(*args)


def test_the_schedule_imports_no_io() -> None:
    # proto/ is sans-IO (STYLE.md 1; tests/test_layers.py walks every proto module): the schedule too
    tree = ast.parse(Path(p2pfast.proto.schedule.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "enum", "dataclasses", "typing", "p2pfast.errors"}


# -- the model: a get driven as _Fetch drives it, every invariant checked after every event -------------
class Sim:
    def __init__(self, segments: int, piece: int, ahead: int, max_workers: int, holders: int) -> None:
        self.s: PieceSchedule[Seg] = PieceSchedule(segments, piece, ahead, max_workers)
        self.holders = [f"h{i}" for i in range(holders)]
        self.healthy = self.holders[0]  # never fails
        self.job: dict[str, int] = {}  # a working holder: its piece
        self.cursor: dict[str, int] = {}  # a working holder: the next segment it receives
        self.end: dict[str, int] = {}  # a working holder: one past the last segment it asked for
        self.pending: dict[str, deque[int]] = {}  # a working holder: received, being checked, in order
        self.kept: dict[int, Seg] = {}  # the copy of each segment the schedule kept
        self.out: list[Seg] = []  # what was written, in order
        self.writing: PieceWrite[Seg] | None = None
        self.taken: set[int] = set()  # pieces assigned at least once and not yet written
        self.failed: set[str] = set()

    # which events may come now
    def alive(self) -> list[str]:
        return [h for h in self.holders if h not in self.failed]

    def idle(self) -> list[str]:
        return [h for h in self.alive() if h not in self.cursor]

    def can_receive(self) -> list[str]:
        return [h for h in self.cursor if self.cursor[h] < self.end[h] and not self.s.is_done(self._piece(h))]

    def can_settle(self) -> list[str]:
        return [h for h in self.cursor if self.pending[h]]

    def can_finish(self) -> list[str]:
        # _Fetch stops a holder once its piece is done (by anyone), or once its whole range is in and
        # checked
        return [
            h
            for h in self.cursor
            if self.s.is_done(self._piece(h)) or (self.cursor[h] >= self.end[h] and not self.pending[h])
        ]

    def can_fail(self) -> list[str]:
        return [h for h in self.alive() if h != self.healthy]

    # the events
    def assign(self, h: str) -> None:
        window = self.s.window()
        free = [p for p in window if not self.s.is_done(p) and not self.s.workers(p)]
        helpable = [
            p
            for p in window
            if not self.s.is_done(p)
            and h not in self.s.workers(p)
            and len(self.s.workers(p)) < self.s.max_workers
        ]
        job = self.s.assign(h)
        if job is DONE:
            assert self.s.complete
            return
        if job is WAIT:
            assert not self.s.complete and not helpable
            return
        assert isinstance(job, Assignment)
        assert job.piece in window  # read-ahead
        if free:  # a piece goes to a second holder only when none is free: the endgame
            assert job.piece == free[0]
        else:
            assert job.piece == helpable[0]  # the oldest unfinished piece
        segs = self.s.segments_of(job.piece)
        # from the first segment nobody verified: what a failed holder left is fetched again, and only that
        assert job.first == next(i for i in segs if i not in self.kept)
        assert job.end == segs.stop
        assert h in self.s.workers(job.piece) and self.s.working_on(h) == job.piece
        self.job[h], self.cursor[h], self.end[h], self.pending[h] = job.piece, job.first, job.end, deque()
        self.taken.add(job.piece)

    def receive(self, h: str) -> None:
        i = self.cursor[h]
        self.cursor[h] += 1
        if self.s.needs(self._piece(h), i):
            self.pending[h].append(i)
        else:
            assert i in self.kept

    def settle(self, h: str) -> None:
        i = self.pending[h].popleft()
        done_before = self.s.is_done(self._piece(h))
        kept = self.s.verified(h, self._piece(h), i, (h, i))
        assert kept == (i not in self.kept and not done_before)  # each segment kept once, the first copy
        if kept:
            self.kept[i] = (h, i)

    def finish(self, h: str) -> None:
        piece = self._piece(h)
        self.s.release(h)
        assert h not in self.s.workers(piece) and self.s.working_on(h) is None
        self._forget(h)

    def fail(self, h: str) -> None:
        piece = self.job.get(h)
        # its piece's first segment nobody verified (None: it has none, or its piece is done)
        first = (
            None
            if piece is None
            else next((i for i in self.s.segments_of(piece) if i not in self.kept), None)
        )
        self.s.fail(h)
        self.failed.add(h)
        assert self.s.is_out(h) and self.s.working_on(h) is None
        if piece is not None:
            assert h not in self.s.workers(piece)
            # what it verified stays kept; the rest of its piece is needed again
            assert first is None or self.s.needs(piece, first) or self.s.is_done(piece)
        self._forget(h)

    def take_write(self) -> None:
        w = self.s.take_write()
        if w is None:
            nxt = self.s.next_write
            assert self.writing is not None or self.s.complete or not self.s.is_done(nxt)
            return
        assert self.writing is None and w.piece == self.s.next_write  # in order, one at a time
        assert w.segments == tuple(self.kept[i] for i in self.s.segments_of(w.piece))
        self.writing = w

    def written(self) -> None:
        assert self.writing is not None
        self.s.written(self.writing.piece)
        self.out.extend(self.writing.segments)
        self.taken.discard(self.writing.piece)
        self.writing = None

    def check(self) -> None:
        s = self.s
        window = set(s.window())
        # memory: only the window's pieces were taken, hold data or are being written; at most `ahead`
        assert self.taken <= window and len(self.taken) <= s.ahead
        unwritten = {p for p in range(s.pieces) if any(i in self.kept for i in s.segments_of(p))} - set(
            range(s.next_write)
        )
        assert unwritten <= window
        # every segment written exactly once, in order, the copy that was kept
        assert [i for _, i in self.out] == list(range(len(self.out)))
        assert self.out == [self.kept[i] for i in range(len(self.out))]
        assert len(self.out) == sum(len(s.segments_of(p)) for p in range(s.next_write))
        for p in range(s.pieces):
            workers = s.workers(p)
            assert len(workers) <= s.max_workers
            # a holder may still be on a piece another finished and the writer wrote (it stops at its next
            # read), but nothing it verifies now is kept: the memory bound holds
            assert not workers or p in window or s.is_done(p)
            assert not workers & self.failed
            assert workers == {h for h, q in self.job.items() if q == p}
        for h in self.holders:
            assert s.working_on(h) == self.job.get(h)
        assert s.complete == (s.next_write == s.pieces)

    def step(self, rng: random.Random, failures: bool) -> None:
        """One event, chosen at random among those that may come now."""
        moves = [(self.assign, h) for h in self.idle()]
        moves += [(self.receive, h) for h in self.can_receive()]
        moves += [(self.settle, h) for h in self.can_settle()]
        moves += [(self.finish, h) for h in self.can_finish()]
        if failures:
            moves += [(self.fail, h) for h in self.can_fail()]
        event, h = rng.choice(moves)
        event(h)
        if self.writing is None and rng.random() < 0.5:
            self.take_write()
        elif self.writing is not None and rng.random() < 0.5:
            self.written()
        self.check()

    def run_to_end(self, rng: random.Random, failures: bool = False) -> None:
        """Random events until the get is complete: it must be, within a generous bound."""
        bound = 100 * (self.s.segments + self.s.pieces) * len(self.holders)
        for _ in range(bound):
            if self.s.complete:
                break
            self.step(rng, failures)
        assert self.s.complete, f"not complete after {bound} events"
        assert self.out == [self.kept[i] for i in range(self.s.segments)]
        for h in self.idle():
            assert self.s.assign(h) is DONE

    def _piece(self, h: str) -> int:
        return self.job[h]

    def _forget(self, h: str) -> None:
        self.job.pop(h, None)
        self.cursor.pop(h, None)
        self.end.pop(h, None)
        self.pending.pop(h, None)


sizes = {
    "segments": st.integers(1, 40),
    "piece": st.integers(1, 9),
    "ahead": st.integers(1, 4),
    "max_workers": st.integers(1, 3),
    "holders": st.integers(1, 4),
}


@settings(max_examples=300, deadline=None)
@given(rng=st.randoms(use_true_random=False), failures=st.booleans(), **sizes)
def test_random_gets_finish_with_every_segment_written_once_in_order(
    rng: random.Random, failures: bool, segments: int, piece: int, ahead: int, max_workers: int, holders: int
) -> None:
    sim = Sim(segments, piece, ahead, max_workers, holders)
    sim.run_to_end(rng, failures)


def test_with_every_other_holder_failed_at_once_the_healthy_one_finishes() -> None:
    sim = Sim(30, 4, 3, 2, 4)
    rng = random.Random(7)
    for h in sim.holders:
        sim.assign(h)
    for _ in range(10):  # some of each piece verified, none finished
        h = rng.choice(sim.can_receive())
        sim.receive(h)
        while sim.pending[h]:
            sim.settle(h)
        sim.check()
    for h in sim.can_fail():
        sim.fail(h)
        sim.check()
    sim.run_to_end(rng)


class ScheduleMachine(RuleBasedStateMachine):
    """Events in any order hypothesis finds, then (teardown) the get run to its end."""

    sim: Sim

    @initialize(**sizes)
    def start(self, segments: int, piece: int, ahead: int, max_workers: int, holders: int) -> None:
        self.sim = Sim(segments, piece, ahead, max_workers, holders)

    @precondition(lambda self: self.sim.idle())
    @rule(k=st.integers(0, 3))
    def holder_idle(self, k: int) -> None:
        idle = self.sim.idle()
        self.sim.assign(idle[k % len(idle)])

    @precondition(lambda self: self.sim.can_receive())
    @rule(k=st.integers(0, 3))
    def segment_received(self, k: int) -> None:
        hs = self.sim.can_receive()
        self.sim.receive(hs[k % len(hs)])

    @precondition(lambda self: self.sim.can_settle())
    @rule(k=st.integers(0, 3))
    def segment_verified(self, k: int) -> None:
        hs = self.sim.can_settle()
        self.sim.settle(hs[k % len(hs)])

    @precondition(lambda self: self.sim.can_finish())
    @rule(k=st.integers(0, 3))
    def holder_stops(self, k: int) -> None:
        hs = self.sim.can_finish()
        self.sim.finish(hs[k % len(hs)])

    @precondition(lambda self: self.sim.can_fail())
    @rule(k=st.integers(0, 3))
    def holder_fails(self, k: int) -> None:
        hs = self.sim.can_fail()
        self.sim.fail(hs[k % len(hs)])

    @precondition(lambda self: self.sim.writing is None)
    @rule()
    def write_taken(self) -> None:
        self.sim.take_write()

    @precondition(lambda self: self.sim.writing is not None)
    @rule()
    def piece_written(self) -> None:
        self.sim.written()

    @invariant()
    def invariants_hold(self) -> None:
        if hasattr(self, "sim"):
            self.sim.check()

    def teardown(self) -> None:
        if hasattr(self, "sim"):  # whatever happened, the healthy holder (and any other left) finishes
            self.sim.run_to_end(random.Random(0))


TestScheduleMachine = ScheduleMachine.TestCase
TestScheduleMachine.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
