"""The CLI's side of the control socket: blocking, one request per connection (the format: codec.py).

What a CLI command imports to ask a running daemon, so it stays light: sockets and the codec, no asyncio,
no apsw, no cryptography (tests/test_layers.py checks it).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pfast.errors import ConfigError, PeerUnavailable
from p2pfast.front.ctl import codec
from p2pfast.front.ctl.codec import MAX_REPLY, DaemonNotRunning

__all__ = ["PROBE_TIMEOUT", "call", "running"]

# The client's wait for a connect in running() and in the server's stale check at start.
PROBE_TIMEOUT = 2.0
_RECV = 1 << 16


def _connect(path: Path, timeout: float | None) -> socket.socket:
    # With a timeout the socket is non-blocking inside, and a connect to a Unix socket whose listen
    # queue is full fails at once with EAGAIN instead of waiting as a blocking connect does: retry it,
    # briefly backing off, until the timeout (a busy daemon is there, just behind on accepting).
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.002
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonNotRunning(f"nothing serves {path} (start one with 'p2pfast serve')") from exc
        except TimeoutError as exc:
            sock.close()
            raise PeerUnavailable(f"the daemon at {path} did not accept within {timeout} s") from exc
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EAGAIN and (deadline is None or time.monotonic() < deadline):
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            if exc.errno == errno.EAGAIN:
                raise PeerUnavailable(f"the daemon at {path} did not accept within {timeout} s") from exc
            if exc.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
                raise DaemonNotRunning(f"nothing serves {path} (start one with 'p2pfast serve')") from exc
            raise ConfigError(f"cannot connect to {path}: {exc.strerror or exc}") from exc


def running(path: Path) -> bool:
    """True when a daemon accepts connections on the control socket at `path`. Raises ConfigError when
    it cannot tell (a socket this user may not connect to, a path too long for AF_UNIX)."""
    try:
        sock = _connect(path, PROBE_TIMEOUT)
    except DaemonNotRunning:
        return False
    except PeerUnavailable:
        return True  # there, but its backlog is full
    sock.close()
    return True


def call(
    path: Path,
    request: dict[str, Any],
    fds: Sequence[int] = (),
    *,
    timeout: float | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Send `request` (with `fds` attached) to the daemon at `path`; return its result.

    `on_progress` gets each progress object. `timeout` bounds the connect and every wait for the daemon
    (each line received starts a new wait); None waits as long as the daemon works. Raises
    DaemonNotRunning when no daemon listens, the errors.py class of the daemon's exit code when it
    replies with an error, RemoteProtocolError when what answers does not speak the format, and
    PeerUnavailable when it goes away without a final line. The caller keeps its fds (the daemon gets
    copies)."""
    line = codec.encode_request(request, len(fds))  # checked before anything is connected
    with _connect(path, timeout) as sock:
        try:
            sent = socket.send_fds(sock, [line], list(fds)) if fds else 0
            sock.sendall(line[sent:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may have refused us with a reply: read it
        except TimeoutError as exc:
            raise PeerUnavailable(f"the daemon at {path} took no request for {timeout} s") from exc
        return _read_reply(sock, path, timeout, on_progress)


def _read_reply(
    sock: socket.socket,
    path: Path,
    timeout: float | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    lines = codec.LineBuffer(MAX_REPLY, "a line from the daemon")
    while True:
        line = lines.next_line()
        if line is None:
            try:
                chunk = sock.recv(_RECV)
            except TimeoutError as exc:
                raise PeerUnavailable(f"the daemon at {path} sent nothing for {timeout} s") from exc
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise PeerUnavailable(
                    f"the daemon at {path} closed the connection without a reply (was it stopped?)"
                )
            lines.feed(chunk)
            continue
        msg = codec.decode_reply(line)
        if isinstance(msg, codec.Result):
            return msg.result
        if isinstance(msg, codec.Error):
            raise msg.exception()
        if msg is not None and on_progress is not None:
            on_progress(msg.data)
