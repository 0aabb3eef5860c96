"""Serving one object's bytes over HTTP, as the S3 API's GET and the read-only gateway both do
(docs/gateway.md): the Range header (RFC 9110 §14, as S3 reads it), the conditional headers, and the
body streamed from the node's verified reads, cut short, never padded or silently truncated, when a read
fails after the status line is out; and the listener both run on."""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from p2pfast.errors import ListenError, P2PError
from p2pfast.net.peers import split_addr
from p2pfast.node import Node

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unsatisfiable(Exception):
    """A range that lies wholly beyond the end of the object (416)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the range lies beyond the object's {size} bytes")
        self.size = size


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a Range header against an object of `size` bytes; None to send the whole
    object (a header S3 ignores: not bytes=, or several ranges); Unsatisfiable (416) for one that lies
    wholly beyond the end."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    a, b = match.groups()
    if not a and not b:
        return None
    if not a:  # bytes=-N: the last N bytes
        n = int(b)
        if n == 0:
            raise Unsatisfiable(size)
        return max(0, size - n), size - 1
    first = int(a)
    last = min(int(b), size - 1) if b else size - 1
    if b and int(b) < first:
        return None  # RFC 9110: an invalid range-spec is ignored
    if first >= size:
        raise Unsatisfiable(size)
    return first, last


def conditional(request: web.Request, etag: str, modified: float | None) -> int | None:
    """304 or 412 for a conditional GET or HEAD that says so (If-Match, If-None-Match, If-Modified-Since,
    If-Unmodified-Since, as S3 applies them), else None. `modified` None: the dates are not compared
    (an object known only by content id has no date of its own)."""
    h = request.headers
    if_match, if_none = h.get("If-Match"), h.get("If-None-Match")
    if if_match is not None and not etag_in(etag, if_match):
        return 412
    if (
        if_match is None
        and modified is not None
        and (since := parse_date(h.get("If-Unmodified-Since"))) is not None
        and int(modified) > since
    ):
        return 412
    if if_none is not None:
        return 304 if etag_in(etag, if_none) else None
    since = parse_date(h.get("If-Modified-Since"))
    if modified is not None and since is not None and int(modified) <= since:
        return 304
    return None


def http_date(t: float) -> str:
    """The form of Last-Modified and Date headers (RFC 9110 IMF-fixdate)."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))


def etag_in(etag: str, header: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


def parse_date(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class _ResponseSink:
    """A read's sink that writes to the HTTP response (Node.read_range delivers exactly the range)."""

    file: int | None = None

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self.sent = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        # StreamResponse.write waits for the socket to drain: a slow client slows the read (bytes: aiohttp
        # 3.11, the floor, takes no view)
        await self._response.write(bytes(data))
        self.sent += len(data)


async def serve_object(
    node: Node,
    request: web.Request,
    headers: dict[str, str],
    cid: str,
    size: int,
    ranged: str | None,
    log: logging.Logger,
    event: str,
    rid: str,
) -> web.StreamResponse:
    """The answer to a GET or HEAD of object `cid` of `size` bytes, with `headers`: 200, or 206 for the
    Range header `ranged` (Unsatisfiable, before anything is sent, for one beyond the end). The body comes
    from a copy here, reading only the range, else from the holders, fetching only the segments the range
    lies in (Node.read_range). A read that fails, or bytes that fail their check, after the status line is
    out: the one thing left to say so is to stop short of Content-Length, which every client reports, so
    the connection is closed and `event` logged."""
    first, last, status = 0, size - 1, 200
    span = None if ranged is None else byte_range(ranged, size)
    if span is not None:
        first, last = span
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = last - first + 1
    await response.prepare(request)
    if request.method == "HEAD" or last < first:
        await response.write_eof()
        return response
    sink = _ResponseSink(response)
    try:
        await node.read_range(cid, sink, first, last + 1)
    except (P2PError, OSError) as exc:
        log.warning(
            "event=%s request_id=%s cid=%s sent=%d of=%d error=%r",
            event,
            rid,
            cid,
            sink.sent,
            last - first + 1,
            str(exc),
        )
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Listener:
    """An aiohttp listener in the node's loop, the base of the S3 API's and the gateway's: every request
    to `handler`, no access log (the handlers log what matters, in logfmt), no signal handlers (the
    daemon's)."""

    def __init__(self, handler: Handler, max_body: int, setting: str, flag: str) -> None:
        self._handler = handler
        self._max_body = max_body
        self._names = setting, flag  # what a ListenError names: the config setting and the flag
        self._runner: web.AppRunner | None = None
        self.addr = ""

    async def start(self, addr: str) -> str:
        """Listen on addr ([HOST]:PORT, host 127.0.0.1 when omitted); returns the bound HOST:PORT."""
        host, port = split_addr(addr, default_host="127.0.0.1")
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/{tail:.*}", self._handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise ListenError.of(f"{addr} ({self._names[0]})", exc, self._names[1]) from None
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.addr = f"{bound[0]}:{bound[1]}"
        return self.addr

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
