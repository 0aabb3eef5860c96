"""The daemon's side of the control socket: an asyncio server on DATA_DIR/ctl.sock (the format:
codec.py). It binds the socket 0600 and serves only its own uid, one request per connection, with the
descriptors that came with it (SCM_RIGHTS), progress lines queued from any thread and bounded, the final
line, and the cancellation of a request whose client went away. Only the daemon imports it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import stat
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pfast.errors import (
    ConfigError,
    InternalError,
    LocalProtocolError,
    P2PError,
    PeerUnavailable,
    ProtocolError,
    RemoteProtocolError,
)
from p2pfast.front.ctl import codec
from p2pfast.front.ctl.client import running
from p2pfast.front.ctl.codec import MAX_FDS, MAX_REQUEST, ClientGone

__all__ = ["CtlServer", "Handler", "ProgressFn"]

log = logging.getLogger("p2pfast.ctl")

# Progress lines queued for a slow client beyond what the kernel buffers; past this they are dropped.
MAX_PENDING_PROGRESS = 64 * 1024
# Requests served at once; past this the daemon stops accepting and clients wait in the backlog.
MAX_CLIENTS = 32
BACKLOG = 16
# A client has this long to send its request line once connected (a probe that sends nothing and
# closes is answered at once).
REQUEST_TIMEOUT = 10.0
# How long the final line may take to leave for a client that does not read; then the daemon hangs up.
REPLY_TIMEOUT = 10.0
# On close(), what a request being cancelled gets to tell its client why.
SHUTDOWN_REPLY_TIMEOUT = 1.0
# After accept() fails (EMFILE, say), a pause, so the loop does not spin on it.
ACCEPT_RETRY = 0.1

_INT = array.array("i").itemsize
# Room for one descriptor more than allowed, so a client sending too many is told so (the kernel also
# sets MSG_CTRUNC and closes those that did not fit).
_FD_SPACE = socket.CMSG_SPACE((MAX_FDS + 1) * _INT)
# Received descriptors are close-on-exec from the start, like every fd Python opens itself.
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

ProgressFn = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], list[int], ProgressFn], Awaitable[dict[str, Any]]]
"""`handler(request, fds, progress) -> result`.

`request` is the parsed request object (with a str "cmd"). `fds` are the descriptors that came with it,
in the client's order, BORROWED for the duration of the call: the server closes every one of them when
the handler returns, raises or is cancelled. A handler that needs one afterwards `os.dup`s it and owns
the dup. Take care with threads: cancelling the handler (the client went away, or close()) does not stop
work it handed to an executor, and the server then closes the fd while that thread may still use it, or
a reused number; give such work a dup (closed by the thread) or wait for it before returning.

`progress(obj)` queues the line {"progress": obj}; it never blocks, may be called from any thread, drops
the line when the client is far behind, and raises ClientGone once the client has gone away (so a
thread stops at its next call). The result must be a JSON-serialisable dict (front/jsontext.py). A
P2PError becomes an error reply with its exit code and message; any other exception is logged and
replied as InternalError.
"""


def _clear_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket (remove it if no daemon uses it)")
    if running(path):
        raise ConfigError(f"another daemon is serving {path.parent} already (its socket {path} answers)")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("event=ctl_stale_socket_removed path=%s", path)


def _bind(path: Path) -> socket.socket:
    # Why not umask: it is process-wide, and the daemon's other threads (DB, executor) create files
    # meanwhile, which would get our umask. Instead: bind a private temp name, chmod it to 0600, and only
    # then listen(); a connect to a bound socket that does not listen yet is refused, so nobody gets in
    # while the mode is still the umask's. rename() then publishes it: ctl.sock only ever names a socket
    # that is 0600 and listening, so a client never sees it half made.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(tmp))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot create the control socket {path}: {exc.strerror or exc}") from exc
    try:
        os.chmod(tmp, 0o600)
        sock.listen(BACKLOG)
        os.rename(tmp, path)
        sock.setblocking(False)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        sock.close()
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot create the control socket {path}: {exc.strerror or exc}") from exc
        raise
    return sock


def _check_peer(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_PEERCRED"):
        return  # elsewhere the 0600 mode (and the 0700 data dir) are the guard
    fmt = "3i"  # struct ucred: pid, uid, gid
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    _, uid, _ = struct.unpack(fmt, cred)
    own = os.geteuid()
    if uid != own:
        raise ConfigError(f"uid {uid} may not use this control socket (the daemon runs as uid {own})")


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    # add_reader/add_writer exist on uvloop and asyncio alike; uvloop has no sock_recvmsg, which is why
    # the reads below call recvmsg themselves when the socket is readable.
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _recv_with_fds(sock: socket.socket, n: int) -> tuple[bytes, list[int], bool]:
    """Up to n bytes and the descriptors that came with them; True when the kernel had more fds than
    room (MSG_CTRUNC: it closed the rest)."""
    data, ancdata, flags, _ = sock.recvmsg(n, _FD_SPACE, _RECV_FLAGS)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _INT])
    return data, list(fds), bool(flags & socket.MSG_CTRUNC)


async def _read_request(loop: asyncio.AbstractEventLoop, sock: socket.socket, fds: list[int]) -> bytes | None:
    """The request line without its newline, or None when the client closed having sent nothing.
    Received descriptors go into `fds` as they arrive, so the caller closes them whatever happens."""
    lines = codec.LineBuffer(MAX_REQUEST, "the request line")
    while True:
        try:
            data, got, truncated = _recv_with_fds(sock, lines.room)
        except BlockingIOError:
            await _ready(loop, sock.fileno(), write=False)
            continue
        fds.extend(got)
        if truncated or len(fds) > MAX_FDS:
            raise RemoteProtocolError(f"more than {MAX_FDS} file descriptors attached")
        if not data:
            if not lines.buffered and not fds:
                return None
            raise RemoteProtocolError("the request line has no newline")
        lines.feed(data)
        line = lines.next_line()
        if line is not None:
            if lines.buffered:
                raise RemoteProtocolError("data after the request line")
            return line


class _Reply:
    """The daemon's side of one connection's output: progress lines (from any thread, bounded, dropped
    when the client lags), then the final line, sent by one writer task on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()  # progress() may run in an executor thread
        self._pending = bytearray()
        self._wake = asyncio.Event()
        self._signalled = False  # a wake-up is on its way: one is enough
        self._open = True  # progress lines still accepted; False once the final line is queued
        self.gone = False
        self.dropped = 0
        self.on_gone: Callable[[], object] | None = None
        self._writer = loop.create_task(self._write_loop())

    def progress(self, obj: dict[str, Any]) -> None:
        line = codec.encode_progress(obj)
        with self._lock:
            if self.gone:
                raise ClientGone("the client closed its control connection")
            if not self._open:
                return
            if len(self._pending) + len(line) > MAX_PENDING_PROGRESS:
                self.dropped += 1
                return
            self._pending += line
            if self._signalled:
                return
            self._signalled = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed under a straggling thread
                self._loop.call_soon_threadsafe(self._wake.set)

    def client_gone(self) -> None:
        with self._lock:
            if self.gone:
                return
            self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    async def finish(self, line: bytes, timeout: float) -> bool:
        """Queue the final line (once: later calls only wait) and wait, at most `timeout`, for it to go.
        False when the client did not take it in time."""
        with self._lock:
            if self._open:
                self._open = False
                self._pending += line
        self._wake.set()
        done, _ = await asyncio.wait({self._writer}, timeout=timeout)
        return bool(done)

    async def close(self) -> None:
        with self._lock:
            self._open = False
        if not self._writer.done():
            self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write_loop(self) -> None:
        fd = self._sock.fileno()
        while True:
            await self._wake.wait()
            with self._lock:
                self._wake.clear()
                self._signalled = False
                data = bytes(self._pending)
                self._pending.clear()
                last = not self._open
            view = memoryview(data)
            while view:
                try:
                    view = view[self._sock.send(view) :]
                except BlockingIOError:
                    await _ready(self._loop, fd, write=True)
                except OSError:  # EPIPE, ECONNRESET: the client is gone
                    self.client_gone()
                    return
            if last:
                return


class CtlServer:
    """Serves the control socket at `path` (DATA_DIR/ctl.sock) with `handler` (see Handler)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CLIENTS)

    async def start(self) -> None:
        """Listen. A stale socket file is replaced; a live one (another daemon) raises ConfigError."""
        _clear_stale(self.path)  # a local connect(): at once, unless the other daemon's backlog is full
        self._listener = _bind(self.path)
        st = os.lstat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())
        log.info("event=ctl_listening path=%s", self.path)

    async def close(self) -> None:
        """Stop listening, remove the socket file, cancel the requests in flight and wait for them."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._inode is not None:
            # Only our own socket: if another daemon has since replaced the file, it is not ours to remove.
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None
        conns = list(self._conns)
        for task in conns:
            task.cancel()
        if conns:
            await asyncio.wait(conns)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        listener = self._listener
        while True:
            await self._slots.acquire()
            try:
                conn = await self._accept(loop, listener)
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._serve(conn))
            self._conns.add(task)
            # Closed here too: a task cancelled by close() before its first step never runs its finally.
            task.add_done_callback(functools.partial(self._done, conn))

    @staticmethod
    async def _accept(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> socket.socket:
        # accept() is called only once the listener is readable, and its socket handed on with no await
        # in between: with loop.sock_accept, a cancel (close()) could land after the accept and lose the
        # accepted socket in the cancelled future.
        while True:
            try:
                conn, _ = listener.accept()
                return conn
            except BlockingIOError:
                await _ready(loop, listener.fileno(), write=False)
            except OSError as exc:  # EMFILE, say: wait, rather than spin on it
                log.warning("event=ctl_accept_failed error=%r", exc.strerror or str(exc))
                await asyncio.sleep(ACCEPT_RETRY)

    def _done(self, conn: socket.socket, task: asyncio.Task[None]) -> None:
        conn.close()
        self._conns.discard(task)
        self._slots.release()

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        fds: list[int] = []
        reply: _Reply | None = None
        try:
            sock.setblocking(False)
            reply = _Reply(loop, sock)
            line = await self._answer(loop, sock, fds, reply)
            if line is not None and not await reply.finish(line, REPLY_TIMEOUT):
                why = "client not reading"
                log.info("event=ctl_reply_abandoned reason=%s timeout=%s", why, REPLY_TIMEOUT)
        except asyncio.CancelledError:
            # close(): the handler is cancelled by now; tell the client why, briefly, then go.
            if reply is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await reply.finish(
                        codec.encode_error(PeerUnavailable("the daemon is shutting down")),
                        SHUTDOWN_REPLY_TIMEOUT,
                    )
            raise
        except Exception as exc:  # a bug here must not take the server down
            log.error("event=ctl_connection_failed error=%r", exc)
        finally:
            if reply is not None:
                await reply.close()
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            sock.close()

    async def _answer(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, fds: list[int], reply: _Reply
    ) -> bytes | None:
        """The final line for this connection, or None when there is nobody to send it to."""
        cmd = "-"
        try:
            _check_peer(sock)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):  # not wait_for: it can lose a cancellation
                    raw = await _read_request(loop, sock, fds)
            except TimeoutError:
                raise RemoteProtocolError(f"no request line within {REQUEST_TIMEOUT} s") from None
            except OSError:
                return None
            if raw is None:
                return None  # connected and left: running() or another daemon's start probing
            request = codec.decode_request(raw)
            cmd = request["cmd"]
            log.debug("event=ctl_request cmd=%r fds=%d", cmd, len(fds))
            result = await self._run_handler(loop, sock, request, fds, reply)
            if result is None:
                log.info("event=ctl_client_gone cmd=%r", cmd)
                return None
            if reply.dropped:
                log.debug("event=ctl_progress_dropped cmd=%r lines=%d", cmd, reply.dropped)
            if not isinstance(result, dict):
                raise InternalError(f"the {cmd!r} handler returned {type(result).__name__}, not a dict")
            try:
                return codec.encode_result(result)
            except LocalProtocolError as exc:  # the handler's bug, not a limit of the protocol
                raise InternalError(f"the {cmd!r} result is not JSON: {exc.__cause__}") from exc
        except P2PError as exc:
            # The client's own errors (not found, bad input) are routine; a refused uid or a malformed
            # request is worth a look.
            warn = isinstance(exc, (ProtocolError, ConfigError, InternalError))
            log.log(
                logging.WARNING if warn else logging.INFO,
                "event=ctl_error cmd=%r exit_code=%d error=%r",
                cmd,
                exc.exit_code,
                codec.Error.of(exc).message,
            )
            return codec.encode_error(exc)
        except Exception as exc:
            log.error(
                "event=ctl_handler_failed cmd=%r error=%r",
                cmd,
                exc,
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
            )
            return codec.encode_error(InternalError(f"{type(exc).__name__}: {exc}"))

    async def _run_handler(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        request: dict[str, Any],
        fds: list[int],
        reply: _Reply,
    ) -> dict[str, Any] | None:
        """The handler's result (its exception raised), or None when the client went away first."""

        async def handle() -> dict[str, Any]:
            # A copy: whatever the handler does to its list, the server closes what it received.
            return await self._handler(request, list(fds), reply.progress)

        task = loop.create_task(handle())
        reply.on_gone = task.cancel
        fd = sock.fileno()

        def on_readable() -> None:
            # The client sends nothing after its request: whatever comes (its close, usually) means it
            # gave up on the reply.
            try:
                sock.recv(1)
            except BlockingIOError:
                return
            except OSError:
                pass
            loop.remove_reader(fd)
            reply.client_gone()

        loop.add_reader(fd, on_readable)
        try:
            # wait(), not `await task`: the handler's own cancellation (client gone) must not look like
            # ours, and ours (close()) must reach the handler and wait for it.
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: it has nowhere to go now, and must not reach the loop's handler
            raise
        finally:
            loop.remove_reader(fd)
            reply.on_gone = None
        if task.cancelled():
            if reply.gone:
                return None
            raise InternalError(f"the {request['cmd']!r} handler was cancelled")
        return task.result()
