"""Stream pump (compiled kernel; twin: p2pfast/_pump_py.py, whose docstring is the long form).

A Pump moves ONE byte stream from a source (run_fd, or push ... finish) to sinks through transforms, in
fixed-size chunks, through two chunk buffers allocated once in __init__. The last flag is exact: run_fd reads
the next chunk before processing the current one, push holds a full chunk until more data arrives. An empty
stream yields one empty chunk with last=True. Transforms t(view, index, last) return None (pass the view on)
or a memoryview (the new data). Sinks are int fds (written fully) or objects with .write(view). Views are
borrowed until the call returns. An exception while moving data propagates and poisons the Pump.

The chunk buffers are bytearrays, each with one memoryview made in __init__ that stays exported for the
Pump's life, so neither can be resized and the raw pointers taken in __init__ stay valid; transforms get
slices of those views. File-descriptor reads and writes run in `with nogil:` on those pointers (or on a
PyBUF_SIMPLE buffer held across the call), looping on short transfers. EINTR comes back to the GIL side,
which runs PyErr_CheckSignals (a handler's exception propagates) and retries, as PEP 475 does for os.*.
A busy flag, set and tested with the GIL held, refuses re-entry (a transform calling back into its Pump, or
another thread while this one is in a nogil read), so no buffer changes under a running syscall.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.long cimport PyLong_CheckExact
from cpython.memoryview cimport PyMemoryView_Check
from cpython.number cimport PyNumber_Index
from libc.errno cimport EINTR, errno
from libc.string cimport memmove
from posix.types cimport off_t
from posix.unistd cimport pread, read, write

cdef enum:
    MAX_CHUNK_SIZE_C = 64 * 1024 * 1024
    FD_MAX = 0x7FFFFFFF

cdef enum State:
    IDLE
    PUSHING
    DONE
    POISONED

# Both chunk buffers are allocated up front, per Pump: segments are KiB to a few MiB, so a bound this size
# catches a unit mistake before it asks for gigabytes.
MAX_CHUNK_SIZE = MAX_CHUNK_SIZE_C
_OFF_MAX = 2**63 - 1  # off_t

__all__ = ["MAX_CHUNK_SIZE", "Pump"]


cdef Py_ssize_t _read_full(int fd, char *p, Py_ssize_t want, off_t pos, int *err) noexcept nogil:
    """Read into p[:want] until full, EOF or an error (err set, EINTR included); pos < 0: read(), else
    pread() at pos. Returns the bytes read."""
    cdef Py_ssize_t got = 0
    cdef ssize_t r
    while got < want:
        if pos >= 0:
            r = pread(fd, p + got, <size_t>(want - got), pos + got)
        else:
            r = read(fd, p + got, <size_t>(want - got))
        if r < 0:
            err[0] = errno
            break
        if r == 0:
            break
        got += r
    return got


cdef Py_ssize_t _write_full(int fd, const char *p, Py_ssize_t n, int *err) noexcept nogil:
    """Write p[:n] until done or an error (err set, EINTR included). Returns the bytes written."""
    cdef Py_ssize_t done = 0
    cdef ssize_t r
    while done < n:
        r = write(fd, p + done, <size_t>(n - done))
        if r < 0:
            err[0] = errno
            break
        done += r
    return done


cdef int _raise_errno(int err) except -1:
    """EINTR: run the signal handlers (their exception propagates) and return 0 to retry; else OSError."""
    if err == EINTR:
        PyErr_CheckSignals()
        return 0
    errno = err
    PyErr_SetFromErrno(OSError)
    return -1


cdef int _write_all(int fd, object view) except -1:
    cdef Py_buffer buf
    cdef const char *p
    cdef Py_ssize_t n, r
    cdef int err
    PyObject_GetBuffer(view, &buf, PyBUF_SIMPLE)
    try:
        p = <const char *>buf.buf
        n = buf.len
        while n > 0:
            err = 0
            with nogil:
                r = _write_full(fd, p, n, &err)
            p += r
            n -= r
            if err:
                _raise_errno(err)
    finally:
        PyBuffer_Release(&buf)
    return 0


cdef int _as_fd(object fd, str what) except -1:
    fd = PyNumber_Index(fd)
    if not 0 <= fd <= FD_MAX:
        raise ValueError(f"{what} must be a file descriptor in 0..{FD_MAX}, got {fd}")
    return fd


cdef class Pump:
    """Move one stream from a source to sinks through transforms, in chunks of ``chunk_size`` bytes."""

    cdef readonly Py_ssize_t chunk_size
    cdef readonly long long moved
    cdef readonly long long chunks
    cdef tuple _transforms
    cdef tuple _sinks
    cdef tuple _bufs
    cdef tuple _views
    cdef char *_ptr[2]
    cdef Py_ssize_t _fill
    cdef State _state
    cdef bint _busy
    cdef str _error

    def __init__(self, chunk_size, transforms=(), sinks=()):
        cdef Py_ssize_t size
        cdef list slist = []
        if self._busy:
            raise RuntimeError("Pump.__init__ called while the pump is moving data")
        chunk_size = PyNumber_Index(chunk_size)
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE_C:  # compared as a Python int: no OverflowError
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE_C}, got {chunk_size}")
        size = chunk_size
        tlist = tuple(transforms)
        for t in tlist:
            if not callable(t):
                raise TypeError(f"a transform must be callable, got {type(t).__name__}")
        for s in sinks:
            if isinstance(s, int):
                slist.append(_as_fd(s, "an int sink"))
            else:
                write_ = getattr(s, "write", None)
                if not callable(write_):
                    raise TypeError(f"a sink must be an int fd or have .write(view), got {type(s).__name__}")
                slist.append(write_)
        b0 = PyByteArray_FromStringAndSize(NULL, size)
        b1 = PyByteArray_FromStringAndSize(NULL, size)
        self.chunk_size = size
        self._transforms = tlist
        self._sinks = tuple(slist)
        self._bufs = (b0, b1)
        self._views = (memoryview(b0), memoryview(b1))
        self._ptr[0] = PyByteArray_AS_STRING(b0)
        self._ptr[1] = PyByteArray_AS_STRING(b1)
        self._fill = 0
        self.moved = 0
        self.chunks = 0
        self._state = IDLE
        self._error = ""

    def run_fd(self, fd, offset=-1, length=-1):
        """Pump the whole stream from ``fd`` (pread at ``offset`` if >= 0, else read), up to ``length``
        bytes (-1: to EOF). Ends the stream; returns the bytes consumed."""
        cdef int cfd = _as_fd(fd, "fd")
        cdef long long total
        offset = PyNumber_Index(offset)
        length = PyNumber_Index(length)
        if not -1 <= offset <= _OFF_MAX:
            raise ValueError(f"offset must be -1 (current position) or in 0..{_OFF_MAX}, got {offset}")
        if not -1 <= length <= _OFF_MAX:
            raise ValueError(f"length must be -1 (to EOF) or in 0..{_OFF_MAX}, got {length}")
        self._check(True)
        self._busy = True
        try:
            total = self._run_fd(cfd, offset, length)
        except BaseException as exc:
            self._poison(exc)
            raise
        finally:
            self._busy = False
        self._state = DONE
        return total

    def push(self, data):
        """Copy ``data`` into the stream; full chunks are processed (last=False) once more data follows.
        Returns the number of bytes accepted: all of them."""
        cdef Py_buffer src
        self._check(False)
        PyObject_GetBuffer(data, &src, PyBUF_SIMPLE)
        try:
            self._state = PUSHING
            self._busy = True
            try:
                self._push(<const char *>src.buf, src.len)
            except BaseException as exc:
                self._poison(exc)
                raise
            finally:
                self._busy = False
            return src.len
        finally:
            PyBuffer_Release(&src)

    def finish(self):
        """Process the held chunk with last=True (an empty one if nothing was pushed); ends the stream.
        Returns the total bytes moved."""
        self._check(False)
        self._busy = True
        try:
            self._chunk(0, self._fill, True)
        except BaseException as exc:
            self._poison(exc)
            raise
        finally:
            self._busy = False
        self._fill = 0
        self._state = DONE
        return self.moved

    cdef int _check(self, bint run_fd) except -1:
        if self._views is None:
            raise RuntimeError("Pump.__init__ was not called")
        if self._busy:
            raise RuntimeError("Pump is not re-entrant: it is already moving data")
        if self._state == POISONED:
            raise RuntimeError(f"Pump is poisoned by an earlier error ({self._error}); use a new Pump")
        if self._state == DONE:
            raise RuntimeError("Pump is finished: it moves one stream (run_fd, or push... then finish)")
        if run_fd and self._state == PUSHING:
            raise RuntimeError("cannot mix run_fd with push/finish on one Pump")
        return 0

    cdef void _poison(self, BaseException exc) noexcept:
        self._state = POISONED
        try:
            self._error = f"{type(exc).__name__}: {exc}"
        except BaseException:  # a broken __str__ must not replace the error being raised
            self._error = type(exc).__name__

    cdef int _chunk(self, int b, Py_ssize_t n, bint last) except -1:
        """Hand buffer b[:n] through the transforms to the sinks."""
        cdef object view = self._views[b][:n]
        cdef object index = self.chunks
        cdef object out
        self.chunks += 1
        for t in self._transforms:
            out = t(view, index, last)
            if out is not None:
                if not PyMemoryView_Check(out):
                    raise TypeError(
                        f"a transform must return a memoryview or None, got {type(out).__name__}"
                    )
                view = out
        for s in self._sinks:
            if PyLong_CheckExact(s):
                _write_all(<int>s, view)
            else:
                s(view)
        return 0

    cdef Py_ssize_t _read(self, int fd, int b, Py_ssize_t want, off_t pos) except -1:
        """Fill buffer b[:want] from fd, looping on short reads; fewer bytes only at EOF."""
        cdef char *p = self._ptr[b]
        cdef Py_ssize_t got = 0, r
        cdef int err
        while got < want:
            err = 0
            with nogil:
                r = _read_full(fd, p + got, want - got, pos + got if pos >= 0 else -1, &err)
            got += r
            self.moved += r
            if not err:
                break  # full, or EOF
            _raise_errno(err)
        return got

    cdef long long _run_fd(self, int fd, long long offset, long long length) except -1:
        cdef Py_ssize_t size = self.chunk_size
        cdef off_t pos = <off_t>offset
        cdef Py_ssize_t want = size if length < 0 or length > size else <Py_ssize_t>length
        cdef Py_ssize_t n, nxt
        cdef long long total
        cdef int cur = 0
        cdef bint last
        n = self._read(fd, 0, want, pos)
        total = n
        while True:
            if pos >= 0:
                pos += n
            nxt = 0
            if n < size or total == length:
                last = True  # EOF (a short fill) or the range is done: no read needed to know
            else:
                if length >= 0 and length - total < size:
                    want = <Py_ssize_t>(length - total)
                else:
                    want = size
                nxt = self._read(fd, cur ^ 1, want, pos)
                total += nxt
                last = nxt == 0
            self._chunk(cur, n, last)
            if last:
                return total
            cur ^= 1
            n = nxt

    cdef int _push(self, const char *src, Py_ssize_t n) except -1:
        cdef Py_ssize_t size = self.chunk_size
        cdef Py_ssize_t pos = 0, take
        cdef char *buf = self._ptr[0]
        while pos < n:
            if self._fill == size:  # a held full chunk, and more data: it was not the last
                self._fill = 0
                self._chunk(0, size, False)
            take = size - self._fill
            if n - pos < take:
                take = n - pos
            memmove(buf + self._fill, src + pos, <size_t>take)
            self._fill += take
            self.moved += take
            pos += take
        return 0
