"""A client's pipe, terminal or socket (`store -`, `get` to stdout), read and written from the event loop.

A regular file is read and written on the DB thread by the store's pump: disk I/O ends. A pipe does not:
a client that stops writing (or reading) would hold the one DB thread, and with it every peer's transfer
and every other command, and a graceful stop could not abort it. So for those fds the loop waits for
readiness and then does only I/O that cannot block, without touching O_NONBLOCK (the open file
description is the client's own stdin or stdout, shared with its shell):

* a read() after the fd is readable returns what is there (or EOF) at once;
* a write() of at most PIPE_BUF bytes after it is writable finds room: a pipe reports writable while
  it has a free page, and a socket while its send buffer has a third free. Into a pipe, a write may
  be as large as the room it surely has (_pipe_room).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import select
import stat
import termios

from p2pfast.errors import OutputClosed
from p2pfast.store.durable import os_error

READ_CHUNK = 1 << 20
PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size for an unprivileged process
PAGE = 4096  # a pipe's slot
PIPE_BUF = select.PIPE_BUF  # 4096 on Linux


def is_stream(fd: int) -> bool:
    """A pipe, socket or terminal: I/O that can wait on the other end indefinitely."""
    mode = os.fstat(fd).st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISBLK(mode))


def widen(fd: int) -> int | None:
    """Enlarge a pipe as far as the system allows, so that each wake-up moves more than 64 KiB; returns
    its size (None for anything but a pipe)."""
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return None
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return None


def _pipe_room(fd: int, size: int) -> int:
    """Bytes a write can surely put in the pipe now. A pipe holds size/4096 page slots; the bytes
    queued (FIONREAD) fill at most one slot per page plus a partial one at each end, and only the
    reader changes them meanwhile, making more room. So the free slots, less two, are free for sure."""
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, queued)
    except OSError:
        return PIPE_BUF
    slots = size // PAGE - -(-queued[0] // PAGE) - 2
    return max(PIPE_BUF, slots * PAGE)


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        (loop.add_writer if write else loop.add_reader)(fd, wake)
    except PermissionError:
        # epoll refuses a file it cannot wait on (/dev/null, /dev/zero, other character devices with no
        # poll support): the kernel counts such a file always ready, so the read or write that follows
        # does not wait for anyone. (poll() says so too, which is why a Writer seldom gets here.)
        return
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def read_some(fd: int, limit: int = READ_CHUNK) -> bytes:
    """Up to `limit` bytes once the fd is readable; b"" at EOF. StorageError on a failed read."""
    await _ready(fd, write=False)
    try:
        return os.read(fd, limit)
    except OSError as exc:
        raise os_error(exc, "cannot read the input") from exc


class Writer:
    """One output stream (a get's stdout): the pipe is sized and the poller set up once, not per write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pipe_size = widen(fd)
        self.poller = select.poll()
        self.poller.register(fd, select.POLLOUT)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """All of `data`, each write as large as the pipe surely has room for (PIPE_BUF bytes for other
        streams), when the fd has room (poll() with no wait between writes keeps a fast reader from
        costing an event loop turn per write). StorageError (DiskFull for ENOSPC) on a failed write,
        OutputClosed when the reader closed its end."""
        fd, view = self.fd, memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if not self.poller.poll(0):
                await _ready(fd, write=True)
            n = PIPE_BUF if self.pipe_size is None else _pipe_room(fd, self.pipe_size)
            try:
                pos += os.write(fd, view[pos : pos + n])
            except BrokenPipeError as exc:  # `get KEY | head`: the reader had what it wanted
                raise OutputClosed("the reader of the output went away") from exc
            except OSError as exc:
                raise os_error(exc, "cannot write the output") from exc


class FdSource:
    """A client's fd as the source of a store (node.sources.Source): a regular file is read by the node
    on its DB thread; a pipe, socket or terminal is read from the loop when readable."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.file: int | None = None if is_stream(fd) else fd
        if self.file is None:
            widen(fd)

    async def read(self, limit: int) -> bytes:
        return await read_some(self.fd, limit)


class FdSink:
    """A client's fd as the sink of a get (node.sources.Sink): a regular file is written by the node on
    its DB thread (and can be rewound by a read-repair); a pipe, socket or terminal through a Writer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.file: int | None = None if is_stream(fd) else fd
        self._writer = Writer(fd) if self.file is None else None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._writer is not None, "a file sink is written by the node itself"
        await self._writer.write(data)
