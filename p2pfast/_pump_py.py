"""Stream pump, pure-Python twin of ext/pump.pyx (p2pfast._pump_c); same API, chunks and errors.

A Pump moves ONE byte stream from a source to sinks through transforms, in fixed-size chunks, through two
chunk buffers allocated once in __init__ (no new payload-sized object per chunk in steady state).

Source, one of two modes per Pump (mixing them is a RuntimeError):

* pull, ``run_fd(fd, offset=-1, length=-1)``: reads ``fd`` to EOF or for ``length`` bytes; with
  ``offset >= 0`` by positional reads (the fd position is untouched), else from the current position (pipes,
  stdin). Every chunk is filled completely (short reads are retried) except the final one. The next chunk is
  read before the current one is processed, so ``last`` is exact. run_fd ends the stream.
* push, ``push(data)`` ... ``finish()``: data of any sizes is copied into the chunk buffer; a full chunk is
  held until more data arrives (then processed with last=False) or until finish() (last=True).

An empty stream (empty file, EOF at once, a length-0 range, an offset past EOF, finish() without data) yields
exactly one empty chunk with last=True, so an empty object still produces one final segment.

Transforms ``t(view, index, last) -> memoryview | None`` run in order on each chunk. ``view`` is the previous
stage's output, ``index`` the chunk number over the Pump's life (0-based), ``last`` True exactly for the final
chunk. None passes the same view on (a hash update); a memoryview replaces it (a cipher's ``*_into`` output
buffer, a trimming slice); anything else is a TypeError. Sinks receive the final view of every chunk: an
int is a file descriptor, written fully (partial writes looped, EINTR retried); any other object must have
``write(view)`` and consume the whole view (its return value is ignored). Views are borrowed: they are valid
during the call only, as the buffers are reused for the next chunk; copy what you keep.

Any exception while moving data (a transform, a sink, an OSError from the source) propagates unchanged and
poisons the Pump: every later call raises RuntimeError. A finished Pump raises RuntimeError too.
"""

from __future__ import annotations

import operator
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# Both chunk buffers are allocated up front, per Pump: segments are KiB to a few MiB, so a bound this size
# catches a unit mistake before it asks for gigabytes.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_FD_MAX = 2**31 - 1  # a C int
_OFF_MAX = 2**63 - 1  # off_t

_IDLE, _PUSHING, _DONE, _POISONED = range(4)

__all__ = ["MAX_CHUNK_SIZE", "Pump"]


def _as_fd(fd: Any, what: str) -> int:
    n: int = operator.index(fd)
    if not 0 <= n <= _FD_MAX:
        raise ValueError(f"{what} must be a file descriptor in 0..{_FD_MAX}, got {n}")
    return n


def _write_all(fd: int, view: memoryview) -> None:
    n = view.nbytes
    if n == 0:
        return
    done = os.write(fd, view)  # os.write retries EINTR itself (PEP 475)
    if done < n:
        rest = view.cast("B")
        while done < n:
            done += os.write(fd, rest[done:])


class Pump:
    """Move one stream from a source to sinks through transforms, in chunks of ``chunk_size`` bytes."""

    __slots__ = (
        "_busy",
        "_chunk_size",
        "_chunks",
        "_error",
        "_fill",
        "_moved",
        "_sinks",
        "_state",
        "_transforms",
        "_views",
    )

    def __init__(self, chunk_size: int, transforms: Iterable[Any] = (), sinks: Iterable[Any] = ()) -> None:
        if getattr(self, "_busy", False):
            raise RuntimeError("Pump.__init__ called while the pump is moving data")
        size = operator.index(chunk_size)
        if not 1 <= size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, got {size}")
        tlist = tuple(transforms)
        for t in tlist:
            if not callable(t):
                raise TypeError(f"a transform must be callable, got {type(t).__name__}")
        slist: list[int | Callable[[memoryview], object]] = []
        for s in sinks:
            if isinstance(s, int):
                slist.append(_as_fd(s, "an int sink"))
            else:
                write = getattr(s, "write", None)
                if not callable(write):
                    raise TypeError(f"a sink must be an int fd or have .write(view), got {type(s).__name__}")
                slist.append(write)
        self._chunk_size = size
        self._transforms = tlist
        self._sinks = tuple(slist)
        self._views = (memoryview(bytearray(size)), memoryview(bytearray(size)))
        self._fill = 0
        self._moved = 0
        self._chunks = 0
        self._state = _IDLE
        self._busy = False
        self._error = ""

    @property
    def chunk_size(self) -> int:
        """Bytes per chunk; every chunk but the final one has exactly this size."""
        return self._chunk_size

    @property
    def moved(self) -> int:
        """Source bytes consumed so far (read by run_fd, or accepted by push)."""
        return self._moved

    @property
    def chunks(self) -> int:
        """Chunks handed to the transforms so far (the next chunk's index)."""
        return self._chunks

    def run_fd(self, fd: int, offset: int = -1, length: int = -1) -> int:
        """Pump the whole stream from ``fd`` (pread at ``offset`` if >= 0, else read), up to ``length``
        bytes (-1: to EOF). Ends the stream; returns the bytes consumed."""
        fd = _as_fd(fd, "fd")
        offset = operator.index(offset)
        length = operator.index(length)
        if not -1 <= offset <= _OFF_MAX:
            raise ValueError(f"offset must be -1 (current position) or in 0..{_OFF_MAX}, got {offset}")
        if not -1 <= length <= _OFF_MAX:
            raise ValueError(f"length must be -1 (to EOF) or in 0..{_OFF_MAX}, got {length}")
        self._check(run_fd=True)
        self._busy = True
        try:
            total = self._run_fd(fd, offset, length)
        except BaseException as exc:
            self._poison(exc)
            raise
        finally:
            self._busy = False
        self._state = _DONE
        return total

    def push(self, data: bytes | bytearray | memoryview) -> int:
        """Copy ``data`` into the stream; full chunks are processed (last=False) once more data follows.
        Returns the number of bytes accepted: all of them."""
        self._check()
        with memoryview(data) as mv:
            if not mv.c_contiguous:
                raise BufferError("push() needs a C-contiguous buffer")
            with mv.cast("B") as src:
                self._state = _PUSHING
                self._busy = True
                try:
                    self._push(src)
                except BaseException as exc:
                    self._poison(exc)
                    raise
                finally:
                    self._busy = False
                return src.nbytes

    def finish(self) -> int:
        """Process the held chunk with last=True (an empty one if nothing was pushed); ends the stream.
        Returns the total bytes moved."""
        self._check()
        self._busy = True
        try:
            self._chunk(self._views[0][: self._fill], True)
        except BaseException as exc:
            self._poison(exc)
            raise
        finally:
            self._busy = False
        self._fill = 0
        self._state = _DONE
        return self._moved

    def _check(self, run_fd: bool = False) -> None:
        if self._busy:
            raise RuntimeError("Pump is not re-entrant: it is already moving data")
        if self._state == _POISONED:
            raise RuntimeError(f"Pump is poisoned by an earlier error ({self._error}); use a new Pump")
        if self._state == _DONE:
            raise RuntimeError("Pump is finished: it moves one stream (run_fd, or push... then finish)")
        if run_fd and self._state == _PUSHING:
            raise RuntimeError("cannot mix run_fd with push/finish on one Pump")

    def _poison(self, exc: BaseException) -> None:
        self._state = _POISONED
        try:
            self._error = f"{type(exc).__name__}: {exc}"
        except BaseException:  # a broken __str__ must not replace the error being raised
            self._error = type(exc).__name__

    def _chunk(self, view: memoryview, last: bool) -> None:
        index = self._chunks
        self._chunks = index + 1
        for t in self._transforms:
            out = t(view, index, last)
            if out is not None:
                if type(out) is not memoryview:
                    raise TypeError(f"a transform must return a memoryview or None, got {type(out).__name__}")
                view = out
        for s in self._sinks:
            if isinstance(s, int):
                _write_all(s, view)
            else:
                s(view)

    def _read(self, fd: int, view: memoryview, want: int, pos: int) -> int:
        """Fill view[:want] from fd, looping on short reads; fewer bytes only at EOF."""
        got = 0
        while got < want:
            target = [view[got:want]]
            n = os.preadv(fd, target, pos + got) if pos >= 0 else os.readv(fd, target)
            if n == 0:
                break
            got += n
            self._moved += n
        return got

    def _run_fd(self, fd: int, offset: int, length: int) -> int:
        size = self._chunk_size
        views = self._views
        pos = offset
        want = size if length < 0 else min(size, length)
        n = self._read(fd, views[0], want, pos)
        total = n
        cur = 0
        while True:
            if pos >= 0:
                pos += n
            nxt = 0
            if n < size or total == length:
                last = True  # EOF (a short fill) or the range is done: no read needed to know
            else:
                want = size if length < 0 else min(size, length - total)
                nxt = self._read(fd, views[cur ^ 1], want, pos)
                total += nxt
                last = nxt == 0
            self._chunk(views[cur][:n], last)
            if last:
                return total
            cur ^= 1
            n = nxt

    def _push(self, src: memoryview) -> None:
        size = self._chunk_size
        buf = self._views[0]
        n = src.nbytes
        pos = 0
        while pos < n:
            if self._fill == size:  # a held full chunk, and more data: it was not the last
                self._fill = 0
                self._chunk(buf[:size], False)
            fill = self._fill
            take = min(size - fill, n - pos)
            buf[fill : fill + take] = src[pos : pos + take]
            self._fill = fill + take
            self._moved += take
            pos += take
