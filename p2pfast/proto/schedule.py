"""The piece scheduler of a parallel get, sans-IO: which piece a holder fetches next, which verified
segment is kept, and which piece may be written.

`node/fetch.py` (`_Fetch`) does the I/O (streams, segment checks, writes) and tells a `PieceSchedule`
what happened; the schedule answers with decisions. It sees no bytes, sockets, tasks or clock (a stall is
the caller's timeout, reported as a failure), so every rule is tested by feeding it events
(tests/proto/test_schedule.py), as h11 keeps its rules apart from the I/O that drives them.

The rules (docs/protocol.md, "Get"; the sizes and their measurements are beside PIECE in node/fetch.py):

- The object's segments are cut into pieces of `piece` segments (the last may be shorter).
- Read-ahead: pieces are taken only from the window of `ahead` pieces that starts at the first piece not
  yet written. A piece holds memory from the time it is first taken until it is written, so at most
  `ahead` pieces of verified or in-flight segments wait in memory.
- An idle holder (`assign`) takes the first piece in the window that nobody works on and that is not done.
- Endgame (BitTorrent's): with no such piece, it helps with the oldest unfinished piece in the window
  that fewer than `max_workers` holders work on; a slow holder's piece is then finished by a faster one,
  and the slow holder learns from `needs`/`is_done` that it may stop. With nothing to help either, it waits
  (`WAIT`) for a change: a holder releasing or failing its piece, or a piece written. `DONE`: all written.
- A holder asks from the piece's first segment not yet verified. A verified segment (`verified`) is kept
  once, from whichever holder verified it first; a piece is done when all its segments are kept.
- A holder that fails (`fail`) is out for good; its piece goes back, from its first unverified segment
  (the segments it had verified are kept), to the next idle holder.
- Done pieces are written in order, one at a time: `take_write` hands out the first piece not yet written
  once it is done and no write is under way, and `written` moves the window on.

Calls that make no sense (a holder asking twice, reporting a segment of a piece it does not work on,
writing out of turn) are bugs in the caller and raise InternalError.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pfast.errors import InternalError

__all__ = ["DONE", "MAX_WORKERS", "WAIT", "Assignment", "Idle", "PieceSchedule", "PieceWrite"]

T = TypeVar("T")

# An endgame piece is fetched by at most this many holders at once: a second copy overtakes a slow
# holder; more copies would only multiply the traffic for one piece.
MAX_WORKERS = 2


class Idle(enum.Enum):
    """What `assign` returns when it has no piece for the holder (an enum, so `is WAIT` narrows)."""

    WAIT = "wait"  # nothing to take or help with now: wait for a piece released, failed or written
    DONE = "done"  # every piece is written: the holder is finished

    def __repr__(self) -> str:
        return self.name


WAIT = Idle.WAIT
DONE = Idle.DONE


@dataclass(frozen=True, slots=True)
class Assignment:
    """Piece `piece` for one holder: it asks for segments [first, end)."""

    piece: int
    first: int  # the piece's first segment not yet verified (by anyone)
    end: int  # one past the piece's last segment


@dataclass(frozen=True, slots=True)
class PieceWrite(Generic[T]):
    """A done piece to write now: every segment's data, in segment order. Until `written(piece)` it still
    counts against the read-ahead, because the caller holds its data while writing."""

    piece: int
    segments: tuple[T, ...]


@dataclass(slots=True)
class _Piece(Generic[T]):
    start: int  # its first segment
    end: int  # one past its last segment
    first: int  # first segment not yet verified
    kept: dict[int, T] = field(default_factory=dict)  # verified, not yet handed to the writer
    workers: set[str] = field(default_factory=set)  # holders fetching it now

    @property
    def done(self) -> bool:
        return self.first >= self.end


class PieceSchedule(Generic[T]):
    """The schedule of one get over `segments` segments (at least one: an empty object has one empty
    segment). `T` is whatever the caller keeps per verified segment (node/fetch.py: its views)."""

    def __init__(self, segments: int, piece: int, ahead: int, max_workers: int = MAX_WORKERS) -> None:
        if segments < 1 or piece < 1 or ahead < 1 or max_workers < 1:
            raise InternalError(
                f"a schedule needs at least one of each: {segments=} {piece=} {ahead=} {max_workers=}"
            )
        self.piece_size = piece
        self.ahead = ahead
        self.max_workers = max_workers
        self._pieces: list[_Piece[T]] = [
            _Piece(start, min(start + piece, segments), start) for start in range(0, segments, piece)
        ]
        self._segments = segments
        self._next_write = 0  # the first piece not yet written
        self._writing: int | None = None  # the piece handed to the writer and not yet written
        self._working: dict[str, int] = {}  # holder -> the piece it fetches now
        self._out: set[str] = set()  # holders that failed

    # -- what the caller may read -----------------------------------------------------------------------
    @property
    def pieces(self) -> int:
        return len(self._pieces)

    @property
    def segments(self) -> int:
        return self._segments

    @property
    def next_write(self) -> int:
        """The first piece not yet written (`pieces` once all are)."""
        return self._next_write

    @property
    def complete(self) -> bool:
        """Every piece is written."""
        return self._next_write >= len(self._pieces)

    def window(self) -> range:
        """The pieces that may be taken now: `ahead` from the first not yet written."""
        return range(self._next_write, min(self._next_write + self.ahead, len(self._pieces)))

    def segments_of(self, piece: int) -> range:
        p = self._piece(piece)
        return range(p.start, p.end)

    def is_done(self, piece: int) -> bool:
        """Every segment of `piece` is verified: a holder still fetching it may stop."""
        return self._piece(piece).done

    def needs(self, piece: int, segment: int) -> bool:
        """Whether `segment` of `piece` still wants checking: no holder has verified it yet."""
        p = self._piece(piece)
        return p.start <= segment < p.end and segment >= p.first and segment not in p.kept

    def workers(self, piece: int) -> frozenset[str]:
        """The holders fetching `piece` now."""
        return frozenset(self._piece(piece).workers)

    def working_on(self, holder: str) -> int | None:
        """The piece `holder` fetches now, if any."""
        return self._working.get(holder)

    def is_out(self, holder: str) -> bool:
        """`holder` failed and gets nothing more."""
        return holder in self._out

    # -- events -----------------------------------------------------------------------------------------
    def assign(self, holder: str) -> Assignment | Idle:
        """`holder` is idle: the piece it fetches next (it now works on it), or WAIT, or DONE."""
        self._check_idle(holder)
        if self.complete:
            return DONE
        window = [self._pieces[i] for i in self.window()]
        piece = next((p for p in window if not p.done and not p.workers), None)
        if piece is None:  # endgame: help with the oldest unfinished piece
            piece = next((p for p in window if self._may_help(p, holder)), None)
        if piece is None:
            return WAIT
        piece.workers.add(holder)
        index = piece.start // self.piece_size
        self._working[holder] = index
        return Assignment(index, piece.first, piece.end)

    def verified(self, holder: str, piece: int, segment: int, data: T) -> bool:
        """`holder` verified `segment` of `piece` (the piece it works on). True: the segment is kept (the
        first copy); False: another holder's copy was kept first, and `data` is not needed."""
        p = self._piece(piece)
        if self._working.get(holder) != piece:
            raise InternalError(
                f"holder {holder[:12]} reports segment {segment} of piece {piece}, which it does not fetch"
            )
        if not p.start <= segment < p.end:
            raise InternalError(f"segment {segment} is not in piece {piece} ({p.start}..{p.end - 1})")
        if p.done or segment in p.kept:
            return False
        p.kept[segment] = data
        while p.first < p.end and p.first in p.kept:
            p.first += 1
        return True

    def release(self, holder: str) -> None:
        """`holder` stopped fetching its piece, if it had one: it finished it, or another holder did. It may
        `assign` again."""
        piece = self._working.pop(holder, None)
        if piece is not None:
            self._pieces[piece].workers.discard(holder)

    def fail(self, holder: str) -> None:
        """`holder` failed (an error, a stall, a bad segment): it is out for good, and its piece goes back
        from its first unverified segment."""
        if holder in self._out:
            raise InternalError(f"holder {holder[:12]} failed twice")
        self.release(holder)
        self._out.add(holder)

    def take_write(self) -> PieceWrite[T] | None:
        """The next piece to write, in order: the first not yet written once it is done and no write is
        under way; else None. The schedule drops its data: the caller holds it until `written`."""
        if self.complete or self._writing is not None:
            return None
        p = self._pieces[self._next_write]
        if not p.done:
            return None
        data = tuple(p.kept[i] for i in range(p.start, p.end))
        p.kept = {}
        self._writing = self._next_write
        return PieceWrite(self._next_write, data)

    def written(self, piece: int) -> None:
        """The write of `piece` (from `take_write`) is done: the window moves on by one."""
        if self._writing != piece:
            raise InternalError(f"piece {piece} written, but the write under way is {self._writing}")
        self._writing = None
        self._next_write += 1

    def _check_idle(self, holder: str) -> None:
        if holder in self._out:
            raise InternalError(f"holder {holder[:12]} failed and asks for a piece")
        if holder in self._working:
            busy = self._working[holder]
            raise InternalError(f"holder {holder[:12]} asks for a piece while it fetches piece {busy}")

    def _may_help(self, p: _Piece[T], holder: str) -> bool:
        return not p.done and holder not in p.workers and len(p.workers) < self.max_workers

    def _piece(self, piece: int) -> _Piece[T]:
        if not 0 <= piece < len(self._pieces):
            raise InternalError(f"no piece {piece} (the object has {len(self._pieces)})")
        return self._pieces[piece]
