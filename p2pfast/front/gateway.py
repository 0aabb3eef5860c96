"""The read-only HTTP gateway (docs/gateway.md, "HTTP gateway"): the network's content for browsers and
curl, with no signature, in the node's own event loop.

    GET|HEAD /cid/b3:HEX        the object with that content id
    GET|HEAD /b/BUCKET/KEY      the file BUCKET/KEY (an S3 object, or a file stored under that name)

Whoever reaches the listener reads whatever they can name, so it is off by default and a bare `:PORT`
binds 127.0.0.1 only. Only verified bytes go out (httpread.serve_object): a read that fails after the status
line ends the response short of its Content-Length, with a log line. The ETag is the content id, which
changes whenever the bytes do; an object by content id never changes, so it may be cached for good.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable
from urllib.parse import unquote

from aiohttp import web

from p2pfast.errors import (
    BadInput,
    DiskFull,
    IntegrityError,
    NotFound,
    P2PError,
    PeerUnavailable,
)
from p2pfast.front import httpread
from p2pfast.front.s3 import attrs, names
from p2pfast.front.s3.attrfiles import AttrFiles
from p2pfast.node import Node
from p2pfast.node.reports import FileStat

log = logging.getLogger("p2pfast.gateway")

_CID = re.compile(r"b3:[0-9a-f]{64}")
USAGE = "GET /cid/b3:HEX (a content id) or /b/BUCKET/KEY (a file of the network)"


class GatewayError(Exception):
    """An answer other than the object: its status and one line that says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Gateway(httpread.Listener):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.attrs = AttrFiles(node)
        super().__init__(self._handle, 0, "gateway_listen", "--gateway-listen")  # (no request has a body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rid = secrets.token_hex(8)
        try:
            if request.method not in ("GET", "HEAD"):
                raise GatewayError(405, f"the gateway is read-only: {USAGE}")
            with self.node.working("gateway"):
                return await self._serve(request, rid)
        except GatewayError as exc:
            return _error(request, rid, exc)
        except P2PError as exc:
            return _error(request, rid, _gateway_error(exc))
        except ConnectionError:
            raise  # the client went away: aiohttp ends the request, there is nobody to answer
        except Exception:
            log.exception("event=gateway_internal_error request_id=%s", rid)
            return _error(request, rid, GatewayError(500, "internal error (a bug): see the node's log"))

    async def _serve(self, request: web.Request, rid: str) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        try:
            path = unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise GatewayError(400, "the path is not UTF-8 once percent-decoded") from None
        kind, _, rest = path.lstrip("/").partition("/")
        headers: dict[str, str] = {"x-request-id": rid, "Server": "p2pfast", "Accept-Ranges": "bytes"}
        modified: float | None = None
        if kind == "cid" and _CID.fullmatch(rest):
            st = await self._lone(self.node.stat_object(rest), rest)
            headers["Content-Type"] = "application/octet-stream"  # (nothing names what it holds)
            headers["Cache-Control"] = "public, max-age=31536000, immutable"  # its bytes cannot change
        elif kind == "b" and (found := names.split_file(rest)) is not None:
            st = await self._lone(self.node.stat(rest), rest)
            a = await self.attrs.get(*found, st.cid)
            if a is None:
                headers["Content-Type"] = attrs.implied_type(found[1])
                modified = st.created
            else:
                headers.update(a.response_headers(found[1]))
                modified = a.modified
        else:
            raise GatewayError(404, f"no such path: {USAGE}")
        headers["ETag"] = f'"{st.cid}"'
        headers["x-p2pfast-cid"] = st.cid
        if modified is not None:
            headers["Last-Modified"] = httpread.http_date(modified)
        status = httpread.conditional(request, headers["ETag"], modified)
        if status is not None:
            return web.Response(status=status, headers=headers if status == 304 else {"x-request-id": rid})
        try:
            return await httpread.serve_object(
                self.node,
                request,
                headers,
                st.cid,
                st.size,
                request.headers.get("Range"),
                log,
                "gateway_get_failed",
                rid,
            )
        except httpread.Unsatisfiable as exc:
            return web.Response(
                status=416,
                text=f"{exc}: ask for a range that starts before byte {st.size}\n",
                headers={"x-request-id": rid, "Server": "p2pfast", "Content-Range": f"bytes */{st.size}"},
            )

    async def _lone(self, stat: Awaitable[FileStat], name: str) -> FileStat:
        """`stat`'s answer; on a node with no peer, what it does not hold does not exist (404), where a
        node whose peers did not answer cannot say (503: try again)."""
        try:
            return await stat
        except PeerUnavailable:
            if self.node.peers.sessions:
                raise
            raise NotFound(f"{name} is not held here, and this node has no peer to ask") from None


def _error(request: web.Request, rid: str, exc: GatewayError) -> web.Response:
    level = logging.WARNING if exc.status >= 500 else logging.DEBUG
    log.log(level, "event=gateway_error request_id=%s status=%d message=%r", rid, exc.status, str(exc))
    headers = {"x-request-id": rid, "Server": "p2pfast"}
    if request.method == "HEAD":
        return web.Response(status=exc.status, headers=headers)
    return web.Response(status=exc.status, text=f"{exc}\n", headers=headers)


def _gateway_error(exc: P2PError) -> GatewayError:
    """A node error as HTTP says it: 4xx for what the request named, 5xx (try again) for the rest."""
    if isinstance(exc, NotFound):
        return GatewayError(404, f"{exc}: check the content id or the file's name (p2pfast files --network)")
    if isinstance(exc, BadInput):
        return GatewayError(400, str(exc))
    if isinstance(exc, PeerUnavailable):
        return GatewayError(503, f"{exc}: try again once the node's peers are back")
    if isinstance(exc, DiskFull):
        return GatewayError(507, str(exc))
    if isinstance(exc, IntegrityError):
        return GatewayError(502, f"no verified copy could be read: {exc}")
    return GatewayError(500, str(exc))
