"""The control socket's format, sans-IO: JSON lines in, messages out, for both sides (h11's split).

The socket is a Unix stream socket, DATA_DIR/ctl.sock, mode 0600, and only processes of the daemon's
own uid are served (SO_PEERCRED, on Linux). One request per connection:

  client -> daemon   one line: a JSON object ending in "\\n", at most MAX_REQUEST bytes with the
                     newline, with a string field "cmd" (the command; the other fields are its
                     arguments). Up to MAX_FDS open file descriptors may ride on it as SCM_RIGHTS
                     ancillary data (`socket.send_fds`): the file to store or stdin, the temp file a
                     get writes into. So the daemon opens no path of the user's: relative paths,
                     pipes and stdin mean what they mean to the CLI, and the CLI owns its output.
  daemon -> client   zero or more progress lines      {"progress": {...}}
                     then exactly one final line       {"ok": true, "result": {...}}
                                                  or   {"ok": false, "error": "<one line>", "exit_code": N,
                                                        "code": "<P2PError.name>"}
                     and the daemon closes the connection.

N is the exit code of the P2PError the daemon raised (errors.py) and "code" its class's name; the client
raises that class again (by code, else the most general class of the exit code), with the daemon's
message. Progress lines are advisory: a client that reads slowly loses some (the daemon keeps a bounded
queue of them, server.py), never the final line. After its request the client sends nothing and keeps
the connection open until the final line: the daemon reads a close (or anything else) before then as
the client having gone away, cancels the request, and makes the request's `progress` raise ClientGone,
so that work in a thread stops too. A malformed request (not JSON, not an object, over MAX_REQUEST, no
string "cmd", more than MAX_FDS descriptors, anything after the request line) gets a final error line
with the exit code of a protocol error.

This module is the only place the lines are built and parsed. What is wrong with what we are about to
send raises LocalProtocolError, what is wrong with what we received RemoteProtocolError, on either side
(h11's rule: only the receive path blames the peer). It does no I/O and imports no asyncio: the blocking
client (client.py, what the CLI imports) and the daemon's asyncio server (server.py) both use it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from p2pfast import errors
from p2pfast.errors import LocalProtocolError, P2PError, PeerUnavailable, RemoteProtocolError
from p2pfast.front import jsontext

__all__ = [
    "MAX_ERROR",
    "MAX_FDS",
    "MAX_REPLY",
    "MAX_REQUEST",
    "SOCKET_NAME",
    "ClientGone",
    "DaemonNotRunning",
    "Error",
    "LineBuffer",
    "Progress",
    "Result",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_progress",
    "encode_request",
    "encode_result",
    "exception_for",
    "remote_error",
]

SOCKET_NAME = "ctl.sock"
# A request names a command and a key (at most 1024 bytes, JSON-escaped at most 6x) and a few options;
# 64 KiB leaves room and is read before parsing, so a runaway client costs at most this much.
MAX_REQUEST = 64 * 1024
# store needs one (the input), get one (the output); 4 leaves room without letting a client pin many.
MAX_FDS = 4
# The longest reply line the client accepts: a `files` listing of ~100k keys at ~150 bytes each.
MAX_REPLY = 16 << 20
# An error message longer than this is cut: it is one line for a terminal.
MAX_ERROR = 4096


class DaemonNotRunning(PeerUnavailable):
    """daemon not running: {}"""


class ClientGone(PeerUnavailable):
    """client gone: {}"""


# -- framing -----------------------------------------------------------------------------------------


class LineBuffer:
    """Bytes in, lines out: each line at most `limit` bytes with its newline, else RemoteProtocolError
    naming `what`. The consumed prefix is deleted and the search goes on where it stopped, so no byte is
    scanned twice however the stream is cut (h11 `_receivebuffer.py`)."""

    __slots__ = ("_buf", "_scanned", "limit", "what")

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a line."""
        return len(self._buf)

    @property
    def room(self) -> int:
        """How much to read next: never more than one byte past the limit, enough to know it was passed."""
        return max(1, self.limit + 1 - len(self._buf))

    def next_line(self) -> bytes | None:
        """The next complete line without its newline, or None until more data comes."""
        nl = self._buf.find(b"\n", self._scanned)
        if nl < 0:
            if len(self._buf) >= self.limit:  # even a newline next would make it one byte too long
                raise RemoteProtocolError(f"{self.what} is over {self.limit} bytes")
            self._scanned = len(self._buf)
            return None
        if nl + 1 > self.limit:
            raise RemoteProtocolError(f"{self.what} is over {self.limit} bytes")
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        self._scanned = 0
        return line


# -- requests ----------------------------------------------------------------------------------------


def encode_request(request: dict[str, Any], nfds: int = 0) -> bytes:
    """The request line (with its newline) for `request` sent with `nfds` descriptors."""
    if nfds > MAX_FDS:
        raise LocalProtocolError(f"{nfds} file descriptors, at most {MAX_FDS} go with a request")
    try:
        line = jsontext.line(request)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"request is not JSON: {exc}") from exc
    if len(line) > MAX_REQUEST:
        raise LocalProtocolError(f"request is {len(line)} bytes, over {MAX_REQUEST}")
    return line


def decode_request(line: bytes) -> dict[str, Any]:
    """The request object of a request line (without its newline): a dict with a str "cmd"."""
    try:
        request = jsontext.loads(line)
    except ValueError as exc:
        raise RemoteProtocolError(f"the request is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise RemoteProtocolError("the request is not a JSON object")
    if not isinstance(request.get("cmd"), str):
        raise RemoteProtocolError('the request has no "cmd" string')
    return request


# -- replies -----------------------------------------------------------------------------------------


# The messages are NamedTuples, immutable like the frozen dataclasses of proto/, but made at import for a
# tenth of the cost (~0.2 ms, against 1-2 ms for a dataclass): this module is on every CLI call's path.


class Progress(NamedTuple):
    """A progress line's object (advisory)."""

    data: dict[str, Any]


class Result(NamedTuple):
    """The final line of a request that succeeded."""

    result: dict[str, Any]


class Error(NamedTuple):
    """The final line of a request that failed: the P2PError's one-line message, exit code and name."""

    message: str
    exit_code: int
    code: str | None = None

    @classmethod
    def of(cls, exc: P2PError) -> Error:
        text = " ".join(str(exc).splitlines())
        if len(text) > MAX_ERROR:
            text = text[: MAX_ERROR - 1] + "…"
        return cls(text, exc.exit_code, exc.name)

    def exception(self) -> P2PError:
        """The exception this reply stands for (remote_error)."""
        return remote_error(self.exit_code, self.message, self.code)


def encode_progress(data: dict[str, Any]) -> bytes:
    try:
        return jsontext.line({"progress": data})
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"progress is not JSON: {exc}") from exc


def encode_result(result: dict[str, Any]) -> bytes:
    try:
        return jsontext.line({"ok": True, "result": result})
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"the result is not JSON: {exc}") from exc


def encode_error(error: Error | P2PError) -> bytes:
    e = error if isinstance(error, Error) else Error.of(error)
    reply = {"ok": False, "error": e.message, "exit_code": e.exit_code, "code": e.code}
    return jsontext.line(reply)


def decode_reply(line: bytes) -> Progress | Result | Error | None:
    """The message of one line from the daemon (without its newline). None for a progress line whose
    value is not an object: progress is advisory, so it is skipped rather than failing the request."""
    try:
        msg = jsontext.loads(line)
    except ValueError as exc:
        raise RemoteProtocolError(f"the daemon sent a line that is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise RemoteProtocolError("the daemon sent a line that is not an object")
    if "progress" in msg and "ok" not in msg:
        data = msg["progress"]
        return Progress(data) if isinstance(data, dict) else None
    if msg.get("ok") is True and isinstance(msg.get("result"), dict):
        return Result(msg["result"])
    error, exit_code, code = msg.get("error"), msg.get("exit_code"), msg.get("code")
    if msg.get("ok") is False and isinstance(error, str) and type(exit_code) is int:
        return Error(error, exit_code, code if isinstance(code, str) else None)
    raise RemoteProtocolError(f"the daemon sent a malformed reply: {line[:200]!r}")


# -- exit codes back to classes ----------------------------------------------------------------------


def _exception_table() -> dict[int, type[P2PError]]:
    # Walked rather than listed, so a class added to errors.py is known here without a second edit. Per
    # code the most general class wins (ProtocolError, not its Local/Remote children).
    table: dict[int, type[P2PError]] = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, P2PError) and obj.__module__ == errors.__name__:
            best = table.get(obj.exit_code)
            if best is None or len(obj.__mro__) < len(best.__mro__):
                table[obj.exit_code] = obj
    return table


_BY_EXIT_CODE = _exception_table()


def exception_for(exit_code: int) -> type[P2PError]:
    """The errors.py class with this exit code (the most general one); P2PError for an unknown code."""
    return _BY_EXIT_CODE.get(exit_code, P2PError)


_BY_CODE = {c.name: c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, P2PError)}


def remote_error(exit_code: int, message: str, code: object = None) -> P2PError:
    """The exception a daemon's error reply stands for, whose str() is the daemon's message: the class's
    own prefix ("not found: ") is taken off the message, since the class puts it back."""
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None or cls.exit_code != exit_code:
        cls = exception_for(exit_code)
    template = (cls.__doc__ or "{}").strip().splitlines()[0]
    prefix = template.partition("{}")[0]
    if prefix and message.startswith(prefix):
        message = message[len(prefix) :]
    return cls(message)
